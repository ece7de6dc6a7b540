/* balancer.c - the load balancer's indexes (see balancer.h); the strategies are vtables
 * (policy.h) it calls for keys and reactions. */
#include "sched/balancer.h"

#include "util/alloc.h"
#include "util/log.h"
#include "util/map.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PICK_RETRIES 8  /* stale heap tops re-indexed before a pick gives up */
#define SEG_SCAN_MAX 64 /* a segment with at most this many agents is scanned, not pooled */
#define EXT_ALIGN 16    /* alignment of each strategy's per-agent block */

typedef struct sched_pool sched_pool;
typedef struct sched_node sched_node;

typedef struct sched_rec {
  sched_agent_view v;       /* what strategies see; first member */
  char *id;                 /* own copy: the map key */
  size_t slot;              /* position in lb->recs */
  int available;            /* in the pools' heaps */
  uint64_t fp;              /* fingerprint of capabilities + segment: membership changes */
  char seg[64];             /* normalized segment, "" when none or unparsable */
  size_t seg_pos;           /* position in its segment group */
  unsigned char segkey[18]; /* binary segment: family, length, masked address (group key) */
  sched_node **nodes;       /* pools it belongs to */
  size_t nnodes, cnodes;
  alignas(EXT_ALIGN) unsigned char ext[]; /* the strategies' per-agent blocks */
} sched_rec;

/* One agent in one pool. */
struct sched_node {
  sched_rec *r;
  sched_pool *p;
  size_t midx;  /* position in p->members */
  size_t pos[]; /* position in the pool's heap of each ordering (lb->nord); NOPOS outside */
};

#define NOPOS ((size_t)-1)

/* The pools' heaps keep each entry's key inline, so sifting reads one array and never chases
 * pointers into nodes or agent records: at 100,000 agents that is the difference between a
 * cache hit and a miss per comparison. This is why they are not util/heap.h (an array of
 * element pointers with a compare callback, keys in the nodes): with it a pick measured 1.3-1.5x
 * slower at 10,000-100,000 agents (bench-sched select, issue 10: e.g. round_robin at 100,000
 * 1.46-1.54 us against 1.08-1.14 us median). Same algorithm; invariants in sched_lb_check. */
typedef struct hent {
  sched_key k;
  size_t slot; /* last tie-break: the record's position, unique */
  sched_node *n;
} hent;

typedef struct kheap {
  hent *v;
  size_t len, cap;
} kheap;

struct sched_pool {
  char *sig;   /* map key: requirement signature */
  sm_kv *reqs; /* owned; value NULL: any value */
  size_t nreqs;
  char *seg;    /* normalized segment required, or NULL */
  char *anchor; /* bucket key: "" / "k:<key>" / "s:<segment>" */
  sched_node **members;
  size_t nmembers, cmembers;
  uint64_t used; /* lb clock of the last use */
  kheap heap[];  /* one per ordering (lb->nord); used only while active */
};

typedef struct bucket {
  char *key;
  sched_pool **pools;
  size_t n, cap;
} bucket;

/* The agents of one segment (locality): small groups are scanned, large ones pooled. */
typedef struct seg_group {
  char *seg;
  sched_rec **recs;
  size_t n, cap;
} seg_group;

/* One strategy driven by the balancer. */
typedef struct pol_inst {
  const sched_policy *p;
  void *state;    /* p->state_size bytes */
  size_t ext_off; /* its block in sched_rec.ext */
  int ord;        /* its ordering index, -1: none */
  int started;
} pol_inst;

struct sched_lb {
  uv_loop_t *loop;
  sched_lb_config cfg;
  sm_map by_id; /* agent id -> rec */
  sched_rec **recs;
  size_t nrecs, crecs;
  sm_map pools;   /* signature -> pool */
  sm_map buckets; /* anchor -> bucket */
  sm_map segs;    /* binary segment -> seg_group */
  uint64_t clock;
  size_t v4lens[33], v6lens[129]; /* agents per segment prefix length */
  pol_inst pol[SCHED_POLICIES_MAX];
  size_t npol;
  pol_inst *ord[SCHED_POLICIES_MAX]; /* ordering index -> strategy */
  size_t nord;
  unsigned active;     /* bit per ordering maintained in the pools' heaps */
  unsigned dep_load;   /* orderings whose key reads load/assigned */
  unsigned dep_served; /* orderings whose key reads served */
  size_t ext_size;     /* bytes of sched_rec.ext */
  size_t node_size;    /* bytes of a sched_node */
  size_t pool_size;    /* bytes of a sched_pool */
};

static void *ext_of(const pol_inst *pi, const sched_rec *r) {
  return pi->p->agent_size ? (void *)(r->ext + pi->ext_off) : NULL;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t mix(uint64_t h, const char *s) {
  return (h ^ sm_hash(s, strlen(s))) * 0x100000001b3ULL + 0x9e3779b97f4a7c15ULL;
}

static uint64_t fingerprint(const agent *a) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < a->ncaps; i++)
    h = mix(mix(h, a->caps[i].key), a->caps[i].value);
  return mix(h, a->segment ? a->segment : "");
}

/* Parses "addr" or "addr/len" into bytes (masked to len). Returns 0 or SM_EINVAL. */
SM_MUST_CHECK static int cidr_parse(const char *text, unsigned char addr[16], int *v6, int *len) {
  char buf[64];
  size_t tl = text ? strlen(text) : 0;
  if (tl == 0 || tl >= sizeof(buf))
    return SM_EINVAL;
  memcpy(buf, text, tl + 1);
  char *slash = strchr(buf, '/');
  long l = -1;
  if (slash) {
    *slash = '\0';
    char *end;
    l = strtol(slash + 1, &end, 10);
    if (end == slash + 1 || *end != '\0' || l < 0)
      return SM_EINVAL;
  }
  *v6 = strchr(buf, ':') != NULL;
  if (inet_pton(*v6 ? AF_INET6 : AF_INET, buf, addr) != 1)
    return SM_EINVAL;
  int bits = *v6 ? 128 : 32;
  if (l < 0)
    l = bits;
  if (l > bits)
    return SM_EINVAL;
  *len = (int)l;
  return 0;
}

/* Writes addr masked to len as "a.b.c.d/len" into out (64 bytes). */
SM_MUST_CHECK static int cidr_format(const unsigned char addr[16], int v6, int len, char out[64]) {
  unsigned char m[16];
  int bytes = v6 ? 16 : 4;
  for (int i = 0; i < bytes; i++) {
    int keep = len - i * 8;
    m[i] = keep <= 0 ? 0 : keep < 8 ? (unsigned char)(addr[i] & (0xff << (8 - keep))) : addr[i];
  }
  char a[INET6_ADDRSTRLEN];
  if (inet_ntop(v6 ? AF_INET6 : AF_INET, m, a, sizeof(a)) == NULL)
    return SM_EINVAL;
  snprintf(out, 64, "%s/%d", a, len);
  return 0;
}

#define SEGKEY_LEN 18

/* The binary form of a segment: hashing 18 bytes beats formatting text on every pick. */
static void seg_key(const unsigned char addr[16], int v6, int len, unsigned char key[18]) {
  memset(key, 0, SEGKEY_LEN);
  key[0] = (unsigned char)(v6 ? 6 : 4);
  key[1] = (unsigned char)len;
  int bytes = v6 ? 16 : 4;
  for (int i = 0; i < bytes; i++) {
    int keep = len - i * 8;
    key[2 + i] = keep <= 0  ? 0
                 : keep < 8 ? (unsigned char)(addr[i] & (0xff << (8 - keep)))
                            : addr[i];
  }
}

int sched_cidr_normalize(const char *text, char out[64]) {
  unsigned char addr[16];
  int v6, len;
  if (cidr_parse(text, addr, &v6, &len) != 0)
    return SM_EINVAL;
  return cidr_format(addr, v6, len, out);
}

static void seg_count(sched_lb *lb, const char *seg, int delta);

/* Puts r into the group of its segment r->seg ("" : none). Returns 0 or SM_ENOMEM (then
 * r->seg is "" and r is in no group). */
SM_MUST_CHECK static int seg_join(sched_lb *lb, sched_rec *r) {
  if (r->seg[0] == '\0')
    return 0;
  unsigned char addr[16];
  int v6, len;
  if (cidr_parse(r->seg, addr, &v6, &len) != 0) {
    r->seg[0] = '\0';
    return 0;
  }
  seg_key(addr, v6, len, r->segkey);
  seg_group *g = sm_map_get(&lb->segs, (const char *)r->segkey, SEGKEY_LEN);
  int fresh = g == NULL;
  if (fresh) {
    g = sm_calloc(1, sizeof(*g));
    if (g == NULL || (g->seg = sm_malloc(SEGKEY_LEN)) == NULL)
      goto oom;
    memcpy(g->seg, r->segkey, SEGKEY_LEN);
  }
  if (g->n == g->cap) {
    size_t nc = g->cap ? g->cap * 2 : 4;
    sched_rec **n = sm_realloc(g->recs, nc * sizeof(*n));
    if (n == NULL)
      goto oom;
    g->recs = n;
    g->cap = nc;
  }
  if (fresh && sm_map_put(&lb->segs, g->seg, SEGKEY_LEN, g) != 0)
    goto oom;
  r->seg_pos = g->n;
  g->recs[g->n++] = r;
  seg_count(lb, r->seg, 1);
  return 0;
oom:
  if (fresh && g) {
    free(g->recs);
    free(g->seg);
    free(g);
  }
  r->seg[0] = '\0';
  return SM_ENOMEM;
}

static void seg_leave(sched_lb *lb, sched_rec *r) {
  if (r->seg[0] == '\0')
    return;
  seg_group *g = sm_map_get(&lb->segs, (const char *)r->segkey, SEGKEY_LEN);
  seg_count(lb, r->seg, -1);
  assert(g != NULL && r->seg_pos < g->n && g->recs[r->seg_pos] == r);
  sched_rec *last = g->recs[--g->n];
  g->recs[r->seg_pos] = last;
  last->seg_pos = r->seg_pos;
  if (g->n == 0) {
    sm_map_del(&lb->segs, g->seg, SEGKEY_LEN);
    free(g->recs);
    free(g->seg);
    free(g);
  }
}

static void seg_count(sched_lb *lb, const char *seg, int delta) {
  if (*seg == '\0')
    return;
  const char *slash = strrchr(seg, '/');
  int len = slash ? atoi(slash + 1) : 0;
  size_t *c = strchr(seg, ':') ? &lb->v6lens[len] : &lb->v4lens[len];
  *c = delta > 0 ? *c + 1 : (*c ? *c - 1 : 0);
}

int sched_lb_segment_for(const sched_lb *lb, const char *target, int below, char seg[64],
                         int *len) {
  unsigned char addr[16];
  int v6, tlen;
  if (cidr_parse(target, addr, &v6, &tlen) != 0)
    return SM_ENOENT;
  const size_t *lens = v6 ? lb->v6lens : lb->v4lens;
  for (int l = tlen < below - 1 ? tlen : below - 1; l >= 0; l--) {
    if (lens[l] == 0)
      continue; /* no agent has a segment of this length */
    if (cidr_format(addr, v6, l, seg) == 0) {
      *len = l;
      return 0;
    }
  }
  return SM_ENOENT;
}

/* ---- orderings and heaps ------------------------------------------------------------------ */

static inline int ent_before(const hent *a, const hent *b) {
  if (a->k.k0 != b->k.k0)
    return a->k.k0 < b->k.k0;
  if (a->k.k1 != b->k.k1)
    return a->k.k1 < b->k.k1;
  if (a->k.k2 != b->k.k2)
    return a->k.k2 < b->k.k2;
  return a->slot < b->slot;
}

static void kh_up(kheap *h, size_t o, size_t i) {
  hent e = h->v[i];
  while (i > 0 && ent_before(&e, &h->v[(i - 1) / 2])) {
    h->v[i] = h->v[(i - 1) / 2];
    h->v[i].n->pos[o] = i;
    i = (i - 1) / 2;
  }
  h->v[i] = e;
  e.n->pos[o] = i;
}

static void kh_down(kheap *h, size_t o, size_t i) {
  hent e = h->v[i];
  for (;;) {
    size_t l = 2 * i + 1, b = i;
    const hent *be = &e;
    if (l < h->len && ent_before(&h->v[l], be))
      b = l, be = &h->v[l];
    if (l + 1 < h->len && ent_before(&h->v[l + 1], be))
      b = l + 1;
    if (b == i)
      break;
    h->v[i] = h->v[b];
    h->v[i].n->pos[o] = i;
    i = b;
  }
  h->v[i] = e;
  e.n->pos[o] = i;
}

static void kh_fix(kheap *h, size_t o, size_t i) {
  if (i > 0 && ent_before(&h->v[i], &h->v[(i - 1) / 2]))
    kh_up(h, o, i);
  else
    kh_down(h, o, i);
}

/* Room for want entries. Returns 0 or SM_ENOMEM (unchanged). */
SM_MUST_CHECK static int kh_reserve(kheap *h, size_t want) {
  if (want <= h->cap)
    return 0;
  size_t nc = h->cap ? h->cap : 8;
  while (nc < want)
    nc *= 2;
  hent *v = sm_realloc(h->v, nc * sizeof(*v));
  if (v == NULL)
    return SM_ENOMEM;
  h->v = v;
  h->cap = nc;
  return 0;
}

/* Writes the key of n's agent in ordering o into e. */
static void node_key(const sched_lb *lb, size_t o, sched_node *n, hent *e) {
  const pol_inst *pi = lb->ord[o];
  e->slot = n->r->slot;
  e->n = n;
  pi->p->key(pi->state, &n->r->v, ext_of(pi, n->r), &e->k);
}

/* Capacity for every member is reserved in each active heap (node_add, activate), so an insert
 * cannot fail. */
static void hinsert(sched_lb *lb, size_t o, sched_node *n) {
  if (n->pos[o] != NOPOS)
    return;
  kheap *h = &n->p->heap[o];
  assert(h->len < h->cap && "heap capacity reserved for every member");
  size_t i = h->len++;
  node_key(lb, o, n, &h->v[i]);
  n->pos[o] = i;
  kh_up(h, o, i);
}

static void hremove(sched_node *n, size_t o) {
  size_t i = n->pos[o];
  if (i == NOPOS)
    return;
  kheap *h = &n->p->heap[o];
  assert(i < h->len && h->v[i].n == n);
  n->pos[o] = NOPOS;
  size_t last = --h->len;
  if (i < last) {
    h->v[i] = h->v[last];
    h->v[i].n->pos[o] = i;
    kh_fix(h, o, i);
  }
}

/* Re-keys n in heap o after its record changed. */
static void hfix(sched_lb *lb, size_t o, sched_node *n) {
  size_t i = n->pos[o];
  if (i == NOPOS)
    return;
  kheap *h = &n->p->heap[o];
  assert(i < h->len && h->v[i].n == n);
  node_key(lb, o, n, &h->v[i]);
  kh_fix(h, o, i);
}

/* Makes room in every active heap of p for all its members (plus extra). */
SM_MUST_CHECK static int pool_reserve(sched_lb *lb, sched_pool *p, unsigned mask, size_t extra) {
  for (size_t o = 0; o < lb->nord; o++) {
    if (!(mask & (1u << o)))
      continue;
    if (kh_reserve(&p->heap[o], p->nmembers + extra) != 0)
      return SM_ENOMEM;
  }
  return 0;
}

/* ---- pools -------------------------------------------------------------------------------- */

static int rec_in_pool(const sched_pool *p, const sched_rec *r) {
  const agent *a = r->v.a;
  if (p->seg && strcmp(p->seg, r->seg) != 0)
    return 0;
  for (size_t i = 0; i < p->nreqs; i++) {
    const char *have = agent_cap_value(a, p->reqs[i].key);
    if (have == NULL)
      return 0;
    if (p->reqs[i].value && strcmp(p->reqs[i].value, have) != 0)
      return 0;
  }
  return 1;
}

static void node_heaps(sched_lb *lb, sched_node *n, int in) {
  for (size_t o = 0; o < lb->nord; o++) {
    if (!(lb->active & (1u << o)))
      continue;
    if (in)
      hinsert(lb, o, n);
    else
      hremove(n, o);
  }
}

/* Adds r to pool p: all or nothing. Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK static int node_add(sched_lb *lb, sched_pool *p, sched_rec *r) {
  if (p->nmembers == p->cmembers) {
    size_t nc = p->cmembers ? p->cmembers * 2 : 8;
    sched_node **m = sm_realloc(p->members, nc * sizeof(*m));
    if (m == NULL)
      return SM_ENOMEM;
    p->members = m;
    p->cmembers = nc;
  }
  if (r->nnodes == r->cnodes) {
    size_t nc = r->cnodes ? r->cnodes * 2 : 4;
    sched_node **m = sm_realloc(r->nodes, nc * sizeof(*m));
    if (m == NULL)
      return SM_ENOMEM;
    r->nodes = m;
    r->cnodes = nc;
  }
  if (pool_reserve(lb, p, lb->active, 1) != 0)
    return SM_ENOMEM;
  sched_node *n = sm_malloc(lb->node_size);
  if (n == NULL)
    return SM_ENOMEM;
  n->r = r;
  n->p = p;
  for (size_t o = 0; o < lb->nord; o++)
    n->pos[o] = NOPOS;
  n->midx = p->nmembers;
  p->members[p->nmembers++] = n;
  r->nodes[r->nnodes++] = n;
  if (r->available)
    node_heaps(lb, n, 1);
  return 0;
}

/* Takes n out of its pool (not out of r->nodes). */
static void node_unlink(sched_lb *lb, sched_node *n) {
  node_heaps(lb, n, 0);
  sched_pool *p = n->p;
  assert(n->midx < p->nmembers && p->members[n->midx] == n);
  sched_node *last = p->members[--p->nmembers];
  p->members[n->midx] = last;
  last->midx = n->midx;
}

static void rec_drop_nodes(sched_lb *lb, sched_rec *r) {
  for (size_t i = 0; i < r->nnodes; i++) {
    node_unlink(lb, r->nodes[i]);
    free(r->nodes[i]);
  }
  r->nnodes = 0;
}

static bucket *bucket_get(sched_lb *lb, const char *key, int create) {
  bucket *b = sm_map_get(&lb->buckets, key, strlen(key));
  if (b || !create)
    return b;
  b = sm_calloc(1, sizeof(*b));
  if (b == NULL || (b->key = sm_strdup(key)) == NULL ||
      sm_map_put(&lb->buckets, b->key, strlen(b->key), b) != 0) {
    if (b)
      free(b->key);
    free(b);
    return NULL;
  }
  return b;
}

static void bucket_drop_if_empty(sched_lb *lb, bucket *b) {
  if (b && b->n == 0) {
    sm_map_del(&lb->buckets, b->key, strlen(b->key));
    free(b->pools);
    free(b->key);
    free(b);
  }
}

/* Frees p and everything it holds; p may be only partly built (pool_get's failure path). */
static void pool_free(sched_lb *lb, sched_pool *p) {
  for (size_t i = 0; i < p->nmembers; i++) {
    sched_node *n = p->members[i];
    sched_rec *r = n->r;
    for (size_t j = 0; j < r->nnodes; j++) {
      if (r->nodes[j] == n) {
        r->nodes[j] = r->nodes[--r->nnodes];
        break;
      }
    }
    free(n);
  }
  bucket *b = p->anchor ? bucket_get(lb, p->anchor, 0) : NULL;
  for (size_t i = 0; b && i < b->n; i++) {
    if (b->pools[i] == p) {
      b->pools[i] = b->pools[--b->n];
      break;
    }
  }
  bucket_drop_if_empty(lb, b);
  if (p->sig && sm_map_get(&lb->pools, p->sig, strlen(p->sig)) == p)
    sm_map_del(&lb->pools, p->sig, strlen(p->sig));
  for (size_t i = 0; i < p->nreqs; i++) {
    free((char *)p->reqs[i].key);
    free((char *)p->reqs[i].value);
  }
  for (size_t o = 0; o < lb->nord; o++)
    free(p->heap[o].v);
  free(p->reqs);
  free(p->members);
  free(p->seg);
  free(p->anchor);
  free(p->sig);
  free(p);
}

static int kv_cmp(const void *x, const void *y) {
  const sm_kv *a = x, *b = y;
  return strcmp(a->key, b->key);
}

static const char *want_value(const char *v) {
  return v == NULL || *v == '\0' || strcmp(v, "*") == 0 ? NULL : v;
}

/* Writes the signature of (caps, seg) into buf; returns its length or 0 when it does not fit. */
static size_t signature(const sm_kv *caps, size_t ncaps, const char *seg, sm_kv *sorted, char *buf,
                        size_t cap) {
  if (ncaps) /* memcpy from a NULL caps array is undefined even for zero bytes */
    memcpy(sorted, caps, ncaps * sizeof(*caps));
  if (ncaps > 1)
    qsort(sorted, ncaps, sizeof(*sorted), kv_cmp);
  size_t len = 0;
  int w = snprintf(buf, cap, "%s", seg ? seg : "");
  if (w < 0 || (size_t)w >= cap)
    return 0;
  len = (size_t)w;
  for (size_t i = 0; i < ncaps; i++) {
    const char *v = want_value(sorted[i].value);
    w = snprintf(buf + len, cap - len, "\x1f%s%c%s", sorted[i].key, v ? '=' : '*', v ? v : "");
    if (w < 0 || (size_t)w >= cap - len)
      return 0;
    len += (size_t)w;
  }
  return len;
}

static void pool_evict_lru(sched_lb *lb) {
  sched_pool *victim = NULL;
  for (size_t i = 0; i < lb->pools.cap; i++) {
    sched_pool *p = lb->pools.slots[i].key ? lb->pools.slots[i].value : NULL;
    if (p && (p->nreqs || p->seg) && (victim == NULL || p->used < victim->used))
      victim = p;
  }
  if (victim)
    pool_free(lb, victim);
}

#define SIG_MAX 8192

/* The pool of agents matching caps (and seg), created and filled on first use. NULL when out
 * of memory (nothing is left of the new pool) or the signature is too long. */
static sched_pool *pool_get(sched_lb *lb, const sm_kv *caps, size_t ncaps, const char *seg) {
  char buf[SIG_MAX];
  sm_kv sorted[64];
  if (ncaps > 64)
    return NULL;
  size_t len = signature(caps, ncaps, seg, sorted, buf, sizeof(buf));
  if (len == 0 && (ncaps || seg))
    return NULL;
  sched_pool *p = sm_map_get(&lb->pools, buf, len);
  if (p) {
    p->used = lb->clock;
    return p;
  }
  if (lb->pools.len >= SCHED_POOLS_MAX)
    pool_evict_lru(lb);
  p = sm_calloc(1, lb->pool_size);
  if (p == NULL)
    return NULL;
  p->used = lb->clock;
  char *sig = sm_malloc(len + 1);
  p->reqs = sm_calloc(ncaps ? ncaps : 1, sizeof(*p->reqs));
  if (sig == NULL || p->reqs == NULL) {
    free(sig);
    goto oom;
  }
  memcpy(sig, buf, len);
  sig[len] = '\0';
  p->sig = sig; /* pool_free reads it: set only once it holds the text */
  for (size_t i = 0; i < ncaps; i++) {
    /* a repeated key: keep one requirement per key (both must hold; equal values only) */
    const char *v = want_value(sorted[i].value);
    p->reqs[p->nreqs].key = sm_strdup(sorted[i].key);
    p->reqs[p->nreqs].value = v ? sm_strdup(v) : NULL;
    if (p->reqs[p->nreqs].key == NULL || (v && p->reqs[p->nreqs].value == NULL)) {
      free((char *)p->reqs[p->nreqs].key);
      free((char *)p->reqs[p->nreqs].value);
      goto oom;
    }
    p->nreqs++;
  }
  if (seg && (p->seg = sm_strdup(seg)) == NULL)
    goto oom;
  char anchor[SIG_MAX];
  if (seg)
    snprintf(anchor, sizeof(anchor), "s:%s", seg);
  else if (p->nreqs)
    snprintf(anchor, sizeof(anchor), "k:%s", p->reqs[0].key);
  else
    anchor[0] = '\0';
  bucket *b = bucket_get(lb, anchor, 1);
  if (b == NULL)
    goto oom;
  if (b->n == b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 4;
    sched_pool **np = sm_realloc(b->pools, nc * sizeof(*np));
    if (np == NULL) {
      bucket_drop_if_empty(lb, b);
      goto oom;
    }
    b->pools = np;
    b->cap = nc;
  }
  if ((p->anchor = sm_strdup(anchor)) == NULL) {
    bucket_drop_if_empty(lb, b);
    goto oom;
  }
  b->pools[b->n++] = p; /* from here pool_free undoes everything */
  if (sm_map_put(&lb->pools, p->sig, len, p) != 0)
    goto oom;
  /* first use: fill from the segment's agents, else from every indexed agent (once per
   * distinct requirement) */
  if (seg) {
    unsigned char addr[16], key[SEGKEY_LEN];
    int v6, sl;
    seg_group *g = NULL;
    if (cidr_parse(seg, addr, &v6, &sl) == 0) {
      seg_key(addr, v6, sl, key);
      g = sm_map_get(&lb->segs, (const char *)key, SEGKEY_LEN);
    }
    for (size_t i = 0; g && i < g->n; i++)
      if (rec_in_pool(p, g->recs[i]) && node_add(lb, p, g->recs[i]) != 0)
        goto oom;
  } else {
    for (size_t i = 0; i < lb->nrecs; i++)
      if (rec_in_pool(p, lb->recs[i]) && node_add(lb, p, lb->recs[i]) != 0)
        goto oom;
  }
  return p;
oom:
  pool_free(lb, p);
  return NULL;
}

/* Adds r to every existing pool it matches (checked only against the pools anchored at one of
 * its capability keys, at its segment, or at nothing). Returns 0 or SM_ENOMEM (r is then in
 * some of them: the caller drops its nodes). */
SM_MUST_CHECK static int rec_join_pools(sched_lb *lb, sched_rec *r) {
  char key[SIG_MAX];
  const agent *a = r->v.a;
  for (size_t k = 0; k < a->ncaps + 2; k++) {
    if (k < a->ncaps)
      snprintf(key, sizeof(key), "k:%s", a->caps[k].key);
    else if (k == a->ncaps)
      key[0] = '\0';
    else if (*r->seg)
      snprintf(key, sizeof(key), "s:%s", r->seg);
    else
      continue;
    bucket *b = bucket_get(lb, key, 0);
    for (size_t i = 0; b && i < b->n; i++)
      if (rec_in_pool(b->pools[i], r) && node_add(lb, b->pools[i], r) != 0)
        return SM_ENOMEM;
  }
  return 0;
}

/* ---- agents ------------------------------------------------------------------------------- */

static int available_now(const sched_lb *lb, const agent *a) {
  return sched_agent_available(a, lb->cfg.max_agent_load);
}

static void set_available(sched_lb *lb, sched_rec *r, int av) {
  if (r->available == av)
    return;
  r->available = av;
  if (av) {
    for (size_t i = 0; i < lb->npol; i++) {
      pol_inst *pi = &lb->pol[i];
      if (pi->p->available)
        pi->p->available(pi->state, &r->v, ext_of(pi, r));
    }
  }
  for (size_t i = 0; i < r->nnodes; i++)
    node_heaps(lb, r->nodes[i], av);
}

static void resift(sched_lb *lb, sched_rec *r, unsigned mask) {
  mask &= lb->active;
  if (!r->available || !mask)
    return;
  for (size_t i = 0; i < r->nnodes; i++)
    for (size_t o = 0; o < lb->nord; o++)
      if (mask & (1u << o))
        hfix(lb, o, r->nodes[i]);
}

/* Takes r out of every index and frees it. */
static void rec_remove(sched_lb *lb, sched_rec *r) {
  rec_drop_nodes(lb, r);
  seg_leave(lb, r);
  sm_map_del(&lb->by_id, r->id, strlen(r->id));
  assert(r->slot < lb->nrecs && lb->recs[r->slot] == r);
  sched_rec *last = lb->recs[--lb->nrecs];
  lb->recs[r->slot] = last;
  last->slot = r->slot;
  /* the moved record's slot is a tie-break key: its heaps stay valid only if re-sifted */
  if (last != r)
    resift(lb, last, ~0u);
  free(r->nodes);
  free(r->id);
  free(r);
}

/* Brings r's index entries up to date with its agent. Returns 0, or SM_ENOMEM after removing r
 * from every index (r is freed: the agent is unknown until its next update). */
SM_MUST_CHECK static int rec_refresh(sched_lb *lb, sched_rec *r) {
  agent *a = r->v.a;
  uint64_t fp = fingerprint(a);
  if (fp != r->fp || r->v.ncaps != a->ncaps) {
    rec_drop_nodes(lb, r);
    r->available = 0;
    seg_leave(lb, r);
    if (sched_cidr_normalize(a->segment, r->seg) != 0)
      r->seg[0] = '\0';
    r->v.ncaps = a->ncaps;
    r->fp = fp;
    if (seg_join(lb, r) != 0 || rec_join_pools(lb, r) != 0) {
      sm_log_error("sched", "agent not indexed: out of memory", SM_LS("agent_id", r->id));
      rec_remove(lb, r);
      return SM_ENOMEM;
    }
  }
  r->v.weight = a->weight > 0 ? a->weight : 1.0;
  r->v.gen = a->generation;
  int load_changed = r->v.load != a->load || r->v.assigned != a->assigned;
  r->v.load = a->load;
  r->v.assigned = a->assigned;
  int av = available_now(lb, a);
  if (av != r->available)
    set_available(lb, r, av);
  else if (load_changed)
    resift(lb, r, lb->dep_load);
  return 0;
}

int sched_lb_register(sched_lb *lb, agent *a) {
  sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  if (r != NULL) {
    if (r->v.a == a)
      return rec_refresh(lb, r);
    rec_remove(lb, r); /* a different record under the same id: start over */
  }
  if (lb->nrecs == lb->crecs) {
    size_t nc = lb->crecs ? lb->crecs * 2 : 64;
    sched_rec **nr = sm_realloc(lb->recs, nc * sizeof(*nr));
    if (nr == NULL)
      return SM_ENOMEM;
    lb->recs = nr;
    lb->crecs = nc;
  }
  r = sm_calloc(1, sizeof(*r) + lb->ext_size);
  if (r == NULL || (r->id = sm_strdup(a->id)) == NULL ||
      sm_map_put(&lb->by_id, r->id, strlen(r->id), r) != 0) {
    if (r)
      free(r->id);
    free(r);
    return SM_ENOMEM;
  }
  r->v.a = a;
  r->v.weight = a->weight > 0 ? a->weight : 1.0;
  r->slot = lb->nrecs;
  lb->recs[lb->nrecs++] = r;
  r->fp = ~fingerprint(a); /* forces the membership pass */
  for (size_t i = 0; i < lb->npol; i++) {
    pol_inst *pi = &lb->pol[i];
    if (pi->p->joined)
      pi->p->joined(pi->state, &r->v, ext_of(pi, r));
  }
  return rec_refresh(lb, r);
}

void sched_lb_unregister(sched_lb *lb, agent *a) {
  sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  if (r != NULL)
    rec_remove(lb, r);
}

int sched_lb_update(sched_lb *lb, agent *a) {
  sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  if (r == NULL || r->v.a != a)
    return sched_lb_register(lb, a);
  return rec_refresh(lb, r);
}

int sched_lb_sync(sched_lb *lb, agent *const *agents, size_t n) {
  int first = 0;
  for (size_t i = 0; i < n; i++) {
    int err = sched_lb_register(lb, agents[i]);
    if (err && !first)
      first = err;
  }
  return first;
}

/* Starts maintaining ordering o in every pool (O(pool members) once). */
SM_MUST_CHECK static int activate(sched_lb *lb, size_t o) {
  if (lb->active & (1u << o))
    return 0;
  for (size_t i = 0; i < lb->pools.cap; i++) {
    sched_pool *p = lb->pools.slots[i].key ? lb->pools.slots[i].value : NULL;
    if (p && pool_reserve(lb, p, 1u << o, 0) != 0)
      return SM_ENOMEM;
  }
  lb->active |= 1u << o;
  for (size_t i = 0; i < lb->pools.cap; i++) {
    sched_pool *p = lb->pools.slots[i].key ? lb->pools.slots[i].value : NULL;
    for (size_t j = 0; p && j < p->nmembers; j++)
      if (p->members[j]->r->available)
        hinsert(lb, o, p->members[j]);
  }
  return 0;
}

size_t sched_lb_count(const sched_lb *lb) {
  return lb->nrecs;
}

size_t sched_lb_pools(const sched_lb *lb) {
  return lb->pools.len;
}

const sched_agent_view *sched_lb_at(const sched_lb *lb, size_t i) {
  assert(i < lb->nrecs);
  return &lb->recs[i]->v;
}

const sched_agent_view *sched_lb_find(const sched_lb *lb, const char *id, size_t id_len) {
  const sched_rec *r = sm_map_get(&lb->by_id, id, id_len);
  return r ? &r->v : NULL;
}

static const pol_inst *inst_of(const sched_lb *lb, const sched_policy *p) {
  for (size_t i = 0; i < lb->npol; i++)
    if (lb->pol[i].p == p)
      return &lb->pol[i];
  return NULL;
}

void *sched_lb_agent_state(const sched_lb *lb, const sched_agent_view *v, const sched_policy *p) {
  const pol_inst *pi = inst_of(lb, p);
  /* v is the first member of its record */
  return pi ? ext_of(pi, (const sched_rec *)(const void *)v) : NULL;
}

void *sched_lb_policy_state(const sched_lb *lb, const sched_policy *p) {
  const pol_inst *pi = inst_of(lb, p);
  return pi ? pi->state : NULL;
}

const sched_policy *sched_lb_policy(const sched_lb *lb, const char *name) {
  for (size_t i = 0; name && i < lb->npol; i++)
    if (strcmp(lb->pol[i].p->name, name) == 0)
      return lb->pol[i].p;
  return NULL;
}

void sched_lb_result(sched_lb *lb, agent *a, double exec_s, int ok) {
  sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  if (r == NULL)
    return;
  for (size_t i = 0; i < lb->npol; i++) {
    pol_inst *pi = &lb->pol[i];
    if (pi->p->result)
      pi->p->result(pi->state, &r->v, ext_of(pi, r), exec_s, ok);
  }
}

/* ---- picking ------------------------------------------------------------------------------ */

/* Charges a pick by strategy pi's ordering to r: its served clock and pi's own reaction. */
static void charge(sched_lb *lb, sched_rec *r, const pol_inst *pi) {
  r->v.served = ++lb->clock;
  unsigned mask = lb->dep_served;
  if (pi->p->charged && pi->p->charged(pi->state, &r->v, ext_of(pi, r)) && pi->ord >= 0)
    mask |= 1u << pi->ord;
  resift(lb, r, mask);
}

/* Whether the index entry still tells the truth about its agent (it always should; a missed
 * notification is repaired here rather than trusted). */
static int rec_fresh(const sched_lb *lb, const sched_rec *r) {
  const agent *a = r->v.a;
  return r->v.gen == a->generation && r->v.load == a->load && r->v.assigned == a->assigned &&
         r->available == available_now(lb, a) && r->fp == fingerprint(a);
}

/* A few agents: a scan is cheaper than a pool. */
static int group_pick(sched_lb *lb, seg_group *g, const sched_request *req, const pol_inst *pi,
                      agent **out) {
  sched_rec *best = NULL;
  sched_key bk = {0}, k;
  int any = 0;
  for (size_t i = 0; i < g->n; i++) {
    sched_rec *r = g->recs[i];
    if (!sched_agent_matches(r->v.a, req))
      continue;
    any = 1;
    if (!available_now(lb, r->v.a))
      continue;
    pi->p->key(pi->state, &r->v, ext_of(pi, r), &k);
    int before = best == NULL || k.k0 < bk.k0 || (k.k0 == bk.k0 && k.k1 < bk.k1) ||
                 (k.k0 == bk.k0 && k.k1 == bk.k1 && k.k2 < bk.k2) ||
                 (k.k0 == bk.k0 && k.k1 == bk.k1 && k.k2 == bk.k2 && r->slot < best->slot);
    if (before)
      best = r, bk = k;
  }
  if (best == NULL)
    return any ? SM_EAGAIN : SM_ENOENT;
  charge(lb, best, pi);
  *out = best->v.a;
  return 0;
}

/* The strategy whose ordering picks, with that ordering maintained. */
SM_MUST_CHECK static int ordering(sched_lb *lb, const sched_policy *order, const pol_inst **out) {
  const pol_inst *pi = order ? inst_of(lb, order) : NULL;
  if (pi == NULL || pi->ord < 0)
    return SM_EINVAL;
  int err = activate(lb, (size_t)pi->ord);
  if (err)
    return err;
  *out = pi;
  return 0;
}

int sched_lb_pick(sched_lb *lb, const sched_request *req, const char *seg,
                  const sched_policy *order, agent **out) {
  const pol_inst *pi;
  int err = ordering(lb, order, &pi);
  if (err)
    return err;
  size_t o = (size_t)pi->ord;
  lb->clock++;
  if (req->agent_id && *req->agent_id) {
    sched_rec *r = sm_map_get(&lb->by_id, req->agent_id, strlen(req->agent_id));
    if (r == NULL || r->v.a->link_ops == NULL || !sched_agent_matches(r->v.a, req))
      return SM_ENOENT;
    if (seg && strcmp(seg, r->seg) != 0)
      return SM_ENOENT;
    if (!available_now(lb, r->v.a))
      return SM_EAGAIN;
    charge(lb, r, pi);
    *out = r->v.a;
    return 0;
  }
  if (seg) {
    unsigned char addr[16], key[SEGKEY_LEN];
    int v6, sl;
    if (cidr_parse(seg, addr, &v6, &sl) != 0)
      return SM_ENOENT;
    seg_key(addr, v6, sl, key);
    seg_group *g = sm_map_get(&lb->segs, (const char *)key, SEGKEY_LEN);
    if (g == NULL)
      return SM_ENOENT;
    if (g->n <= SEG_SCAN_MAX)
      return group_pick(lb, g, req, pi, out);
  }
  sched_pool *p = pool_get(lb, req->caps, req->ncaps, seg);
  if (p == NULL)
    return SM_ENOMEM;
  for (int tries = 0; tries < PICK_RETRIES; tries++) {
    if (p->nmembers == 0)
      return SM_ENOENT;
    if (p->heap[o].len == 0)
      return SM_EAGAIN;
    sched_node *top = p->heap[o].v[0].n;
    assert(top->p == p && top->pos[o] == 0 && top->r->available);
    sched_rec *r = top->r;
    if (!rec_fresh(lb, r)) {
      sm_log_debug("sched", "stale index entry repaired", SM_LS("agent_id", r->id));
      /* on failure r has left the index (logged): either way the next top is tried */
      int gone = rec_refresh(lb, r);
      (void)gone;
      continue;
    }
    charge(lb, r, pi);
    *out = r->v.a;
    return 0;
  }
  return SM_EAGAIN;
}

int sched_lb_pick_local(sched_lb *lb, const sched_request *req, const char *target, int tries,
                        const sched_policy *order, agent **out) {
  const pol_inst *pi;
  int err = ordering(lb, order, &pi);
  if (err)
    return err;
  unsigned char addr[16], key[SEGKEY_LEN];
  int v6, tlen;
  if (target && *target && cidr_parse(target, addr, &v6, &tlen) == 0) {
    const size_t *lens = v6 ? lb->v6lens : lb->v4lens;
    for (int l = tlen; l >= 0 && tries > 0; l--) {
      if (lens[l] == 0)
        continue; /* no agent has a segment of this length */
      seg_key(addr, v6, l, key);
      seg_group *g = sm_map_get(&lb->segs, (const char *)key, SEGKEY_LEN);
      if (g == NULL)
        continue;
      tries--;
      if (g->n <= SEG_SCAN_MAX) {
        err = group_pick(lb, g, req, pi, out);
      } else {
        char seg[64];
        err = cidr_format(addr, v6, l, seg) ? SM_ENOENT : sched_lb_pick(lb, req, seg, order, out);
      }
      if (err == 0)
        return 0;
    }
  }
  return sched_lb_pick(lb, req, NULL, order, out);
}

size_t sched_lb_candidates(sched_lb *lb, const sched_request *req, const sched_policy *order,
                           agent **out, size_t max) {
  const pol_inst *pi;
  if (ordering(lb, order, &pi) != 0 || max == 0)
    return 0;
  size_t o = (size_t)pi->ord;
  if (req->agent_id && *req->agent_id) {
    sched_rec *r = sm_map_get(&lb->by_id, req->agent_id, strlen(req->agent_id));
    if (r && r->v.a->link_ops && sched_agent_matches(r->v.a, req) && available_now(lb, r->v.a)) {
      out[0] = r->v.a;
      return 1;
    }
    return 0;
  }
  sched_pool *p = pool_get(lb, req->caps, req->ncaps, NULL);
  if (p == NULL || p->heap[o].len == 0)
    return 0;
  /* best-first walk of the heap: a small frontier heap of positions */
  const hent *h = p->heap[o].v;
  size_t hlen = p->heap[o].len;
  size_t fcap = 2 * max + 2, flen = 0, n = 0;
  size_t *fr = sm_malloc(fcap * sizeof(*fr));
  if (fr == NULL)
    return 0;
  fr[flen++] = 0;
  while (flen && n < max) {
    size_t best = 0;
    for (size_t i = 1; i < flen; i++) /* frontier is at most 2*max: linear is fine */
      if (ent_before(&h[fr[i]], &h[fr[best]]))
        best = i;
    size_t at = fr[best];
    fr[best] = fr[--flen];
    out[n++] = h[at].n->r->v.a;
    for (size_t c = 2 * at + 1; c <= 2 * at + 2 && c < hlen && flen < fcap; c++)
      fr[flen++] = c;
  }
  free(fr);
  return n;
}

/* ---- invariants --------------------------------------------------------------------------- */

void sched_lb_check(const sched_lb *lb) {
#ifndef NDEBUG
  size_t nodes = 0;
  for (size_t i = 0; i < lb->nrecs; i++) {
    const sched_rec *r = lb->recs[i];
    assert(r->slot == i);
    assert(sm_map_get(&lb->by_id, r->id, strlen(r->id)) == r);
    for (size_t j = 0; j < r->nnodes; j++)
      assert(r->nodes[j]->r == r);
    nodes += r->nnodes;
  }
  assert(lb->by_id.len == lb->nrecs);
  size_t members = 0;
  for (size_t i = 0; i < lb->pools.cap; i++) {
    const sched_pool *p = lb->pools.slots[i].key ? lb->pools.slots[i].value : NULL;
    if (p == NULL)
      continue;
    members += p->nmembers;
    size_t avail = 0;
    for (size_t j = 0; j < p->nmembers; j++) {
      const sched_node *n = p->members[j];
      assert(n->p == p && n->midx == j && rec_in_pool(p, n->r));
      avail += n->r->available != 0;
      for (size_t o = 0; o < lb->nord; o++) {
        int in = n->pos[o] != NOPOS;
        assert(in == ((lb->active & (1u << o)) && n->r->available));
        assert(!in || (n->pos[o] < p->heap[o].len && p->heap[o].v[n->pos[o]].n == n));
      }
    }
    for (size_t o = 0; o < lb->nord; o++) {
      const kheap *h = &p->heap[o];
      assert(h->len == ((lb->active & (1u << o)) ? avail : 0));
      assert(h->cap >= p->nmembers || !(lb->active & (1u << o)));
      for (size_t k = 0; k < h->len; k++) {
        hent want;
        node_key(lb, o, h->v[k].n, &want); /* the inline key is current */
        assert(memcmp(&want.k, &h->v[k].k, sizeof(want.k)) == 0 && want.slot == h->v[k].slot);
        assert(k == 0 || !ent_before(&h->v[k], &h->v[(k - 1) / 2]));
      }
    }
  }
  assert(members == nodes);
#else
  (void)lb;
#endif
}

/* ---- life --------------------------------------------------------------------------------- */

int sched_lb_create(uv_loop_t *loop, const sched_lb_config *cfg,
                    const sched_policy *const *policies, size_t n, sched_lb **out) {
  if (loop == NULL || n > SCHED_POLICIES_MAX || (n && policies == NULL))
    return SM_EINVAL;
  sched_lb *lb = sm_calloc(1, sizeof(*lb));
  if (lb == NULL)
    return SM_ENOMEM;
  lb->loop = loop;
  if (cfg)
    lb->cfg = *cfg;
  if (lb->cfg.max_agent_load <= 0)
    lb->cfg.max_agent_load = 0.8;
  if (lb->cfg.ewma_alpha <= 0 || lb->cfg.ewma_alpha > 1)
    lb->cfg.ewma_alpha = 0.2;
  if (lb->cfg.recompute_s <= 0)
    lb->cfg.recompute_s = 1.0;
  sm_map_init(&lb->by_id, 0);
  sm_map_init(&lb->pools, 0);
  sm_map_init(&lb->buckets, 0);
  sm_map_init(&lb->segs, 0);
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const sched_policy *p = policies[i];
    assert(p && p->name && p->pick);
    pol_inst *pi = &lb->pol[lb->npol++];
    pi->p = p;
    pi->ord = -1;
    if (p->key) {
      pi->ord = (int)lb->nord;
      lb->ord[lb->nord] = pi;
      if (p->key_deps & SCHED_DEP_LOAD)
        lb->dep_load |= 1u << lb->nord;
      if (p->key_deps & SCHED_DEP_SERVED)
        lb->dep_served |= 1u << lb->nord;
      lb->nord++;
    }
    pi->ext_off = off;
    off += (p->agent_size + EXT_ALIGN - 1) / EXT_ALIGN * EXT_ALIGN;
  }
  lb->ext_size = off;
  lb->node_size = sizeof(sched_node) + lb->nord * sizeof(size_t);
  lb->pool_size = sizeof(sched_pool) + lb->nord * sizeof(kheap);
  /* every state block first, then start: a strategy's start may look up another */
  for (size_t i = 0; i < lb->npol; i++) {
    pol_inst *pi = &lb->pol[i];
    if (pi->p->state_size && (pi->state = sm_calloc(1, pi->p->state_size)) == NULL) {
      sched_lb_destroy(lb);
      return SM_ENOMEM;
    }
  }
  sched_policy_env env = {.loop = loop,
                          .lb = lb,
                          .max_agent_load = lb->cfg.max_agent_load,
                          .ewma_alpha = lb->cfg.ewma_alpha,
                          .recompute_s = lb->cfg.recompute_s};
  for (size_t i = 0; i < lb->npol; i++) {
    pol_inst *pi = &lb->pol[i];
    int err = pi->p->start ? pi->p->start(pi->state, &env) : 0;
    if (err) {
      sched_lb_destroy(lb);
      return err;
    }
    pi->started = 1;
  }
  *out = lb;
  return 0;
}

void sched_lb_destroy(sched_lb *lb) {
  if (lb == NULL)
    return;
  while (lb->pools.len) {
    for (size_t i = 0; i < lb->pools.cap; i++) {
      if (lb->pools.slots[i].key) {
        pool_free(lb, lb->pools.slots[i].value);
        break;
      }
    }
  }
  for (size_t i = 0; i < lb->nrecs; i++) {
    seg_leave(lb, lb->recs[i]);
    free(lb->recs[i]->nodes);
    free(lb->recs[i]->id);
    free(lb->recs[i]);
  }
  for (size_t i = 0; i < lb->npol; i++) {
    if (lb->pol[i].started && lb->pol[i].p->finish)
      lb->pol[i].p->finish(lb->pol[i].state);
    free(lb->pol[i].state);
  }
  free(lb->recs);
  sm_map_finish(&lb->by_id);
  sm_map_finish(&lb->pools);
  sm_map_finish(&lb->buckets);
  sm_map_finish(&lb->segs);
  free(lb);
}
