/* balancer.c - the load balancer's indexes (see balancer.h). */
#include "sched/balancer.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/map.h"

#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOPOS ((size_t)-1)
#define PICK_RETRIES 8  /* stale heap tops re-indexed before a pick gives up */
#define SEG_SCAN_MAX 64 /* a segment with at most this many agents is scanned, not pooled */

typedef struct sched_pool sched_pool;

typedef struct sched_rec {
  char *id; /* own copy: the map key */
  agent *a;
  uint64_t gen;              /* agent generation when last indexed */
  size_t slot;               /* position in lb->recs */
  int available;             /* in the pools' heaps */
  double load;               /* as indexed */
  int32_t assigned;          /* as indexed */
  size_t ncaps;              /* capability count (tightest fit) */
  double weight;             /* declared weight, > 0 */
  uint64_t fp;               /* fingerprint of capabilities + segment: membership changes */
  char seg[64];              /* normalized segment, "" when none or unparsable */
  size_t seg_pos;            /* position in its segment group */
  unsigned char segkey[18];  /* binary segment: family, length, masked address (group key) */
  uint64_t served;           /* lb clock of the last pick, 0: never */
  double pass[2];            /* stride pass: weighted, adaptive */
  double ewma_s;             /* adaptive: decaying average execution time, seconds */
  double ewma_fail;          /* adaptive: decaying failure rate, 0..1 */
  uint64_t samples;          /* results seen */
  double aweight;            /* adaptive: learned weight in use */
  struct sched_node **nodes; /* pools it belongs to */
  size_t nnodes, cnodes;
} sched_rec;

typedef struct sched_node {
  sched_rec *r;
  sched_pool *p;
  size_t midx;                  /* position in p->members */
  size_t hidx[SCHED_ORD_COUNT]; /* position in p->heap[o], NOPOS outside */
} sched_node;

/* A heap entry carries its ordering key inline, so sifting reads one array and never chases
 * pointers into agent records (at 100,000 agents that is the difference between cache hits and
 * a miss per comparison). */
typedef struct hent {
  double k0, k1;
  uint64_t k2;
  size_t slot; /* last tie-break: the record's position, unique */
  sched_node *n;
} hent;

struct sched_pool {
  char *sig;   /* map key: requirement signature */
  sm_kv *reqs; /* owned; value NULL: any value */
  size_t nreqs;
  char *seg;    /* normalized segment required, or NULL */
  char *anchor; /* bucket key: "" / "k:<key>" / "s:<segment>" */
  sched_node **members;
  size_t nmembers, cmembers;
  hent *heap[SCHED_ORD_COUNT];
  size_t hlen[SCHED_ORD_COUNT], hcap[SCHED_ORD_COUNT];
  uint64_t used; /* lb clock of the last use */
};

typedef struct bucket {
  char *key;
  sched_pool **pools;
  size_t n, cap;
} bucket;

typedef struct ad_job ad_job;

/* The agents of one segment (locality): small groups are scanned, large ones pooled. */
typedef struct seg_group {
  char *seg;
  sched_rec **recs;
  size_t n, cap;
} seg_group;

struct sched_lb {
  uv_loop_t *loop;
  sched_lb_config cfg;
  sm_map by_id; /* agent id -> rec */
  sched_rec **recs;
  size_t nrecs, crecs;
  sm_map pools;    /* signature -> pool */
  sm_map buckets;  /* anchor -> bucket */
  sm_map segs;     /* normalized segment -> seg_group */
  unsigned active; /* bit per maintained ordering */
  uint64_t clock;
  double vtime[2];                /* stride virtual time: pass of the last pick */
  size_t v4lens[33], v6lens[129]; /* agents per segment prefix length */
  /* adaptive recompute */
  uv_timer_t *timer; /* heap-allocated: freed in its close callback, after lb may be gone */
  ad_job *job;
  int dirty;
};

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
static int cidr_parse(const char *text, unsigned char addr[16], int *v6, int *len) {
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
static int cidr_format(const unsigned char addr[16], int v6, int len, char out[64]) {
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

static void seg_join(sched_lb *lb, sched_rec *r) {
  if (r->seg[0] == '\0')
    return;
  unsigned char addr[16];
  int v6, len;
  if (cidr_parse(r->seg, addr, &v6, &len) != 0) {
    r->seg[0] = '\0';
    return;
  }
  seg_key(addr, v6, len, r->segkey);
  seg_group *g = sm_map_get(&lb->segs, (const char *)r->segkey, SEGKEY_LEN);
  if (g == NULL) {
    g = sm_calloc(1, sizeof(*g));
    if (g == NULL || (g->seg = sm_malloc(SEGKEY_LEN)) == NULL ||
        (memcpy(g->seg, r->segkey, SEGKEY_LEN), 0) ||
        sm_map_put(&lb->segs, g->seg, SEGKEY_LEN, g) != 0) {
      if (g)
        free(g->seg);
      free(g);
      r->seg[0] = '\0'; /* out of memory: the agent is simply not local anywhere */
      return;
    }
  }
  if (g->n == g->cap) {
    size_t nc = g->cap ? g->cap * 2 : 4;
    sched_rec **n = sm_realloc(g->recs, nc * sizeof(*n));
    if (n == NULL) {
      r->seg[0] = '\0';
      return;
    }
    g->recs = n;
    g->cap = nc;
  }
  r->seg_pos = g->n;
  g->recs[g->n++] = r;
  seg_count(lb, r->seg, 1);
}

static void seg_leave(sched_lb *lb, sched_rec *r) {
  if (r->seg[0] == '\0')
    return;
  seg_group *g = sm_map_get(&lb->segs, (const char *)r->segkey, SEGKEY_LEN);
  seg_count(lb, r->seg, -1);
  if (g == NULL)
    return;
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

/* ---- orderings ---------------------------------------------------------------------------- */

/* The key of r in ordering o (lower first). */
static void key_of(sched_ord o, const sched_rec *r, hent *e) {
  e->k0 = e->k1 = 0;
  e->k2 = 0;
  e->slot = r->slot;
  switch (o) {
  case SCHED_ORD_LOAD:
    e->k0 = r->load;
    e->k1 = r->assigned;
    e->k2 = r->served;
    break;
  case SCHED_ORD_RR:
    e->k2 = r->served;
    break;
  case SCHED_ORD_FIT:
    e->k0 = (double)r->ncaps;
    e->k1 = r->load;
    e->k2 = r->served;
    break;
  case SCHED_ORD_WEIGHTED:
    e->k0 = r->pass[0];
    break;
  case SCHED_ORD_ADAPTIVE:
    e->k0 = r->pass[1];
    break;
  default:
    break;
  }
}

static int ent_before(const hent *a, const hent *b) {
  if (a->k0 != b->k0)
    return a->k0 < b->k0;
  if (a->k1 != b->k1)
    return a->k1 < b->k1;
  if (a->k2 != b->k2)
    return a->k2 < b->k2;
  return a->slot < b->slot;
}

/* ---- heaps -------------------------------------------------------------------------------- */

static void hup(sched_pool *p, sched_ord o, size_t i) {
  hent *h = p->heap[o];
  hent e = h[i];
  while (i > 0 && ent_before(&e, &h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    h[i].n->hidx[o] = i;
    i = (i - 1) / 2;
  }
  h[i] = e;
  e.n->hidx[o] = i;
}

static void hdown(sched_pool *p, sched_ord o, size_t i) {
  hent *h = p->heap[o];
  hent e = h[i];
  size_t len = p->hlen[o];
  for (;;) {
    size_t l = 2 * i + 1, b = i;
    const hent *be = &e;
    if (l < len && ent_before(&h[l], be))
      b = l, be = &h[l];
    if (l + 1 < len && ent_before(&h[l + 1], be))
      b = l + 1;
    if (b == i)
      break;
    h[i] = h[b];
    h[i].n->hidx[o] = i;
    i = b;
  }
  h[i] = e;
  e.n->hidx[o] = i;
}

static int hinsert(sched_pool *p, sched_ord o, sched_node *n) {
  if (n->hidx[o] != NOPOS)
    return 0;
  if (p->hlen[o] == p->hcap[o]) {
    size_t nc = p->hcap[o] ? p->hcap[o] * 2 : 8;
    hent *h = sm_realloc(p->heap[o], nc * sizeof(*h));
    if (h == NULL)
      return SM_ENOMEM;
    p->heap[o] = h;
    p->hcap[o] = nc;
  }
  size_t i = p->hlen[o]++;
  key_of(o, n->r, &p->heap[o][i]);
  p->heap[o][i].n = n;
  n->hidx[o] = i;
  hup(p, o, i);
  return 0;
}

static void hremove(sched_pool *p, sched_ord o, sched_node *n) {
  size_t i = n->hidx[o];
  if (i == NOPOS)
    return;
  n->hidx[o] = NOPOS;
  size_t last = --p->hlen[o];
  if (i < last) {
    sched_node *m = p->heap[o][last].n;
    p->heap[o][i] = p->heap[o][last];
    m->hidx[o] = i;
    hup(p, o, i);
    hdown(p, o, m->hidx[o]);
  }
}

/* Re-keys n in heap o after its record changed. */
static void hfix(sched_pool *p, sched_ord o, sched_node *n) {
  size_t i = n->hidx[o];
  if (i == NOPOS)
    return;
  key_of(o, n->r, &p->heap[o][i]);
  hup(p, o, i);
  hdown(p, o, n->hidx[o]);
}

/* ---- pools -------------------------------------------------------------------------------- */

static int rec_in_pool(const sched_pool *p, const sched_rec *r) {
  const agent *a = r->a;
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
  for (int o = 0; o < SCHED_ORD_COUNT; o++) {
    if (!(lb->active & (1u << o)))
      continue;
    if (in) {
      if (hinsert(n->p, (sched_ord)o, n) != 0)
        sm_log_error("sched", "pool heap out of memory", SM_LS("agent_id", n->r->id));
    } else {
      hremove(n->p, (sched_ord)o, n);
    }
  }
}

static int node_add(sched_lb *lb, sched_pool *p, sched_rec *r) {
  sched_node *n = sm_calloc(1, sizeof(*n));
  if (n == NULL)
    return SM_ENOMEM;
  if (p->nmembers == p->cmembers) {
    size_t nc = p->cmembers ? p->cmembers * 2 : 8;
    sched_node **m = sm_realloc(p->members, nc * sizeof(*m));
    if (m == NULL) {
      free(n);
      return SM_ENOMEM;
    }
    p->members = m;
    p->cmembers = nc;
  }
  if (r->nnodes == r->cnodes) {
    size_t nc = r->cnodes ? r->cnodes * 2 : 4;
    sched_node **m = sm_realloc(r->nodes, nc * sizeof(*m));
    if (m == NULL) {
      free(n);
      return SM_ENOMEM;
    }
    r->nodes = m;
    r->cnodes = nc;
  }
  n->r = r;
  n->p = p;
  for (int o = 0; o < SCHED_ORD_COUNT; o++)
    n->hidx[o] = NOPOS;
  n->midx = p->nmembers;
  p->members[p->nmembers++] = n;
  r->nodes[r->nnodes++] = n;
  if (r->available)
    node_heaps(lb, n, 1);
  return 0;
}

/* Takes node i of r out of its pool (not out of r->nodes). */
static void node_unlink(sched_lb *lb, sched_node *n) {
  node_heaps(lb, n, 0);
  sched_pool *p = n->p;
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
  bucket *b = bucket_get(lb, p->anchor, 0);
  for (size_t i = 0; b && i < b->n; i++) {
    if (b->pools[i] == p) {
      b->pools[i] = b->pools[--b->n];
      break;
    }
  }
  if (b && b->n == 0) {
    sm_map_del(&lb->buckets, b->key, strlen(b->key));
    free(b->pools);
    free(b->key);
    free(b);
  }
  sm_map_del(&lb->pools, p->sig, strlen(p->sig));
  for (size_t i = 0; i < p->nreqs; i++) {
    free((char *)p->reqs[i].key);
    free((char *)p->reqs[i].value);
  }
  for (int o = 0; o < SCHED_ORD_COUNT; o++)
    free(p->heap[o]);
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
 * of memory or the signature is too long. */
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
  p = sm_calloc(1, sizeof(*p));
  if (p == NULL)
    return NULL;
  p->used = lb->clock;
  p->sig = sm_malloc(len + 1);
  p->reqs = sm_calloc(ncaps ? ncaps : 1, sizeof(*p->reqs));
  if (p->sig == NULL || p->reqs == NULL)
    goto oom;
  memcpy(p->sig, buf, len);
  p->sig[len] = '\0';
  for (size_t i = 0; i < ncaps; i++) {
    /* a repeated key: keep one requirement per key (both must hold; equal values only) */
    const char *v = want_value(sorted[i].value);
    p->reqs[p->nreqs].key = sm_strdup(sorted[i].key);
    p->reqs[p->nreqs].value = v ? sm_strdup(v) : NULL;
    if (p->reqs[p->nreqs].key == NULL || (v && p->reqs[p->nreqs].value == NULL)) {
      free((char *)p->reqs[p->nreqs].key);
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
  if ((p->anchor = sm_strdup(anchor)) == NULL)
    goto oom;
  bucket *b = bucket_get(lb, anchor, 1);
  if (b == NULL)
    goto oom;
  if (b->n == b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 4;
    sched_pool **np = sm_realloc(b->pools, nc * sizeof(*np));
    if (np == NULL)
      goto oom;
    b->pools = np;
    b->cap = nc;
  }
  b->pools[b->n++] = p;
  if (sm_map_put(&lb->pools, p->sig, len, p) != 0) {
    b->n--;
    goto oom;
  }
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
      if (rec_in_pool(p, g->recs[i]))
        node_add(lb, p, g->recs[i]);
  } else {
    for (size_t i = 0; i < lb->nrecs; i++)
      if (rec_in_pool(p, lb->recs[i]))
        node_add(lb, p, lb->recs[i]);
  }
  return p;
oom:
  if (p->sig && sm_map_get(&lb->pools, p->sig, len) == p) {
    pool_free(lb, p);
    return NULL;
  }
  for (size_t i = 0; i < p->nreqs; i++) {
    free((char *)p->reqs[i].key);
    free((char *)p->reqs[i].value);
  }
  free(p->reqs);
  free(p->sig);
  free(p->seg);
  free(p->anchor);
  free(p);
  return NULL;
}

/* Adds r to every existing pool it matches (checked only against the pools anchored at one of
 * its capability keys, at its segment, or at nothing). */
static void rec_join_pools(sched_lb *lb, sched_rec *r) {
  char key[SIG_MAX];
  for (size_t k = 0; k < r->a->ncaps + 2; k++) {
    if (k < r->a->ncaps)
      snprintf(key, sizeof(key), "k:%s", r->a->caps[k].key);
    else if (k == r->a->ncaps)
      key[0] = '\0';
    else if (*r->seg)
      snprintf(key, sizeof(key), "s:%s", r->seg);
    else
      continue;
    bucket *b = bucket_get(lb, key, 0);
    for (size_t i = 0; b && i < b->n; i++)
      if (rec_in_pool(b->pools[i], r))
        node_add(lb, b->pools[i], r);
  }
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
    /* a returning agent joins at the current virtual time: no burst for time spent away */
    for (int i = 0; i < 2; i++)
      if (r->pass[i] < lb->vtime[i])
        r->pass[i] = lb->vtime[i];
  }
  for (size_t i = 0; i < r->nnodes; i++)
    node_heaps(lb, r->nodes[i], av);
}

static void resift(sched_lb *lb, sched_rec *r, unsigned mask) {
  mask &= lb->active;
  if (!r->available || !mask)
    return;
  for (size_t i = 0; i < r->nnodes; i++)
    for (int o = 0; o < SCHED_ORD_COUNT; o++)
      if (mask & (1u << o))
        hfix(r->nodes[i]->p, (sched_ord)o, r->nodes[i]);
}

#define LOAD_ORDS ((1u << SCHED_ORD_LOAD) | (1u << SCHED_ORD_FIT))

/* Brings r's index entries up to date with its agent. */
static void rec_refresh(sched_lb *lb, sched_rec *r) {
  agent *a = r->a;
  uint64_t fp = fingerprint(a);
  if (fp != r->fp || r->ncaps != a->ncaps) {
    seg_leave(lb, r);
    if (sched_cidr_normalize(a->segment, r->seg) != 0)
      r->seg[0] = '\0';
    seg_join(lb, r);
    r->ncaps = a->ncaps;
    r->fp = fp;
    rec_drop_nodes(lb, r);
    r->available = 0;
    rec_join_pools(lb, r);
  }
  r->weight = a->weight > 0 ? a->weight : 1.0;
  r->gen = a->generation;
  int load_changed = r->load != a->load || r->assigned != a->assigned;
  r->load = a->load;
  r->assigned = a->assigned;
  int av = available_now(lb, a);
  if (av != r->available)
    set_available(lb, r, av);
  else if (load_changed)
    resift(lb, r, LOAD_ORDS);
}

int sched_lb_register(sched_lb *lb, agent *a) {
  sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  if (r != NULL) {
    if (r->a != a) { /* a different record under the same id: start over */
      sched_lb_unregister(lb, r->a);
    } else {
      rec_refresh(lb, r);
      return 0;
    }
  }
  if (lb->nrecs == lb->crecs) {
    size_t nc = lb->crecs ? lb->crecs * 2 : 64;
    sched_rec **nr = sm_realloc(lb->recs, nc * sizeof(*nr));
    if (nr == NULL)
      return SM_ENOMEM;
    lb->recs = nr;
    lb->crecs = nc;
  }
  r = sm_calloc(1, sizeof(*r));
  if (r == NULL || (r->id = sm_strdup(a->id)) == NULL ||
      sm_map_put(&lb->by_id, r->id, strlen(r->id), r) != 0) {
    if (r)
      free(r->id);
    free(r);
    return SM_ENOMEM;
  }
  r->a = a;
  r->slot = lb->nrecs;
  lb->recs[lb->nrecs++] = r;
  r->fp = ~fingerprint(a); /* forces the membership pass */
  r->aweight = a->weight > 0 ? a->weight : 1.0;
  r->pass[0] = lb->vtime[0];
  r->pass[1] = lb->vtime[1];
  rec_refresh(lb, r);
  return 0;
}

void sched_lb_unregister(sched_lb *lb, agent *a) {
  sched_rec *r = sm_map_del(&lb->by_id, a->id, a->id_len);
  if (r == NULL)
    return;
  rec_drop_nodes(lb, r);
  seg_leave(lb, r);
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

void sched_lb_update(sched_lb *lb, agent *a) {
  sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  if (r == NULL || r->a != a) {
    sched_lb_register(lb, a);
    return;
  }
  rec_refresh(lb, r);
}

void sched_lb_sync(sched_lb *lb, agent_registry *reg) {
  size_t n = agent_registry_count(reg);
  for (size_t i = 0; i < n; i++)
    sched_lb_register(lb, agent_registry_at(reg, i));
}

void sched_lb_activate(sched_lb *lb, sched_ord o) {
  if ((unsigned)o >= SCHED_ORD_COUNT || (lb->active & (1u << o)))
    return;
  lb->active |= 1u << o;
  for (size_t i = 0; i < lb->pools.cap; i++) {
    sched_pool *p = lb->pools.slots[i].key ? lb->pools.slots[i].value : NULL;
    for (size_t j = 0; p && j < p->nmembers; j++)
      if (p->members[j]->r->available)
        hinsert(p, o, p->members[j]);
  }
}

size_t sched_lb_count(const sched_lb *lb) {
  return lb->nrecs;
}

size_t sched_lb_pools(const sched_lb *lb) {
  return lb->pools.len;
}

/* ---- picking ------------------------------------------------------------------------------ */

/* Charges a pick to r: its round-robin turn and its stride pass. */
static void charge(sched_lb *lb, sched_rec *r, sched_ord o) {
  r->served = ++lb->clock;
  unsigned mask = (1u << SCHED_ORD_RR) | LOAD_ORDS;
  if (o == SCHED_ORD_WEIGHTED || o == SCHED_ORD_ADAPTIVE) {
    int i = o == SCHED_ORD_WEIGHTED ? 0 : 1;
    double w = i == 0 ? r->weight : r->aweight;
    lb->vtime[i] = r->pass[i];
    r->pass[i] += 1.0 / (w > 1e-6 ? w : 1e-6);
    mask |= 1u << o;
  }
  resift(lb, r, mask);
}

/* Whether the index entry still tells the truth about its agent (it always should; a missed
 * notification is repaired here rather than trusted). */
static int rec_fresh(const sched_lb *lb, const sched_rec *r) {
  const agent *a = r->a;
  return r->gen == a->generation && r->load == a->load && r->assigned == a->assigned &&
         r->available == available_now(lb, a) && r->fp == fingerprint(a);
}

/* A few agents: a scan is cheaper than a pool. */
static int group_pick(sched_lb *lb, seg_group *g, const sched_request *req, sched_ord o,
                      agent **out) {
  sched_rec *best = NULL;
  hent bk, k;
  int any = 0;
  for (size_t i = 0; i < g->n; i++) {
    sched_rec *r = g->recs[i];
    if (!sched_agent_matches(r->a, req))
      continue;
    any = 1;
    if (!available_now(lb, r->a))
      continue;
    key_of(o, r, &k);
    if (best == NULL || ent_before(&k, &bk))
      best = r, bk = k;
  }
  if (best == NULL)
    return any ? SM_EAGAIN : SM_ENOENT;
  charge(lb, best, o);
  *out = best->a;
  return 0;
}

int sched_lb_pick(sched_lb *lb, const sched_request *req, const char *seg, sched_ord o,
                  agent **out) {
  sched_lb_activate(lb, o);
  lb->clock++;
  if (req->agent_id && *req->agent_id) {
    sched_rec *r = sm_map_get(&lb->by_id, req->agent_id, strlen(req->agent_id));
    if (r == NULL || r->a->link_ops == NULL || !sched_agent_matches(r->a, req))
      return SM_ENOENT;
    if (seg && strcmp(seg, r->seg) != 0)
      return SM_ENOENT;
    if (!available_now(lb, r->a))
      return SM_EAGAIN;
    charge(lb, r, o);
    *out = r->a;
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
      return group_pick(lb, g, req, o, out);
  }
  sched_pool *p = pool_get(lb, req->caps, req->ncaps, seg);
  if (p == NULL)
    return SM_ENOMEM;
  for (int tries = 0; tries < PICK_RETRIES; tries++) {
    if (p->nmembers == 0)
      return SM_ENOENT;
    if (p->hlen[o] == 0)
      return SM_EAGAIN;
    sched_rec *r = p->heap[o][0].n->r;
    if (!rec_fresh(lb, r)) {
      sm_log_debug("sched", "stale index entry repaired", SM_LS("agent_id", r->id));
      rec_refresh(lb, r);
      continue;
    }
    charge(lb, r, o);
    *out = r->a;
    return 0;
  }
  return SM_EAGAIN;
}

int sched_lb_pick_local(sched_lb *lb, const sched_request *req, const char *target, int tries,
                        agent **out) {
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
      int err;
      if (g->n <= SEG_SCAN_MAX) {
        err = group_pick(lb, g, req, SCHED_ORD_LOAD, out);
      } else {
        char seg[64];
        err = cidr_format(addr, v6, l, seg) ? SM_ENOENT
                                            : sched_lb_pick(lb, req, seg, SCHED_ORD_LOAD, out);
      }
      if (err == 0)
        return 0;
    }
  }
  return sched_lb_pick(lb, req, NULL, SCHED_ORD_LOAD, out);
}

size_t sched_lb_candidates(sched_lb *lb, const sched_request *req, sched_ord o, agent **out,
                           size_t max) {
  sched_lb_activate(lb, o);
  if (max == 0)
    return 0;
  if (req->agent_id && *req->agent_id) {
    sched_rec *r = sm_map_get(&lb->by_id, req->agent_id, strlen(req->agent_id));
    if (r && r->a->link_ops && sched_agent_matches(r->a, req) && available_now(lb, r->a)) {
      out[0] = r->a;
      return 1;
    }
    return 0;
  }
  sched_pool *p = pool_get(lb, req->caps, req->ncaps, NULL);
  if (p == NULL || p->hlen[o] == 0)
    return 0;
  /* best-first walk of the heap: a small frontier heap of positions */
  size_t fcap = 2 * max + 2, flen = 0, n = 0;
  size_t *fr = sm_malloc(fcap * sizeof(*fr));
  if (fr == NULL)
    return 0;
  hent *h = p->heap[o];
  fr[flen++] = 0;
  while (flen && n < max) {
    size_t best = 0;
    for (size_t i = 1; i < flen; i++) /* frontier is at most 2*max: linear is fine */
      if (ent_before(&h[fr[i]], &h[fr[best]]))
        best = i;
    size_t at = fr[best];
    fr[best] = fr[--flen];
    out[n++] = h[at].n->r->a;
    for (size_t c = 2 * at + 1; c <= 2 * at + 2 && c < p->hlen[o] && flen < fcap; c++)
      fr[flen++] = c;
  }
  free(fr);
  return n;
}

/* ---- adaptive ----------------------------------------------------------------------------- */

void sched_lb_result(sched_lb *lb, agent *a, double exec_s, int ok) {
  sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  if (r == NULL)
    return;
  if (!(exec_s >= 0))
    exec_s = 0;
  double al = lb->cfg.ewma_alpha;
  if (r->samples == 0) {
    r->ewma_s = exec_s;
    r->ewma_fail = ok ? 0.0 : 1.0;
  } else {
    r->ewma_s = al * exec_s + (1 - al) * r->ewma_s;
    r->ewma_fail = al * (ok ? 0.0 : 1.0) + (1 - al) * r->ewma_fail;
  }
  r->samples++;
  lb->dirty = 1; /* the periodic timer starts a recompute off the loop */
}

double sched_lb_adaptive_weight(const sched_lb *lb, const agent *a) {
  const sched_rec *r = sm_map_get(&lb->by_id, a->id, a->id_len);
  return r ? r->aweight : 0;
}

/* The snapshot the work queue computes over: plain arrays, no pointers into live objects. */
typedef struct ad_in {
  uint64_t gen;
  double weight, ewma_s, ewma_fail;
  uint64_t samples;
  size_t id_off; /* into ad_job.ids */
} ad_in;

struct ad_job {
  uv_work_t work;
  sched_lb *lb; /* NULL once the balancer is gone: the result is dropped */
  size_t n;
  ad_in *in;
  char *ids;
  double *out;
};

static int dcmp(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

/* Learned weight = declared weight x speed relative to the fleet's median execution time x
 * reliability. Bounded so a slow or failing agent keeps a trickle (it must be able to show it
 * recovered) and a fast one cannot take everything. */
static void ad_compute(ad_job *j) {
  double *t = sm_malloc((j->n ? j->n : 1) * sizeof(*t));
  size_t nt = 0;
  for (size_t i = 0; t && i < j->n; i++)
    if (j->in[i].samples)
      t[nt++] = j->in[i].ewma_s;
  double median = 1.0;
  if (nt) {
    qsort(t, nt, sizeof(*t), dcmp);
    median = t[nt / 2];
  }
  free(t);
  if (median < 1e-3)
    median = 1e-3;
  for (size_t i = 0; i < j->n; i++) {
    const ad_in *x = &j->in[i];
    double w = x->weight;
    if (x->samples) {
      double speed = median / (x->ewma_s > 1e-3 ? x->ewma_s : 1e-3);
      speed = speed < 0.05 ? 0.05 : speed > 20 ? 20 : speed;
      double rel = 1.0 - x->ewma_fail;
      rel = rel < 0.02 ? 0.02 : rel;
      w = x->weight * speed * rel;
    }
    j->out[i] = w;
  }
}

static void ad_job_free(ad_job *j) {
  free(j->in);
  free(j->ids);
  free(j->out);
  free(j);
}

static ad_job *ad_snapshot(sched_lb *lb) {
  ad_job *j = sm_calloc(1, sizeof(*j));
  if (j == NULL)
    return NULL;
  size_t bytes = 0;
  for (size_t i = 0; i < lb->nrecs; i++)
    bytes += strlen(lb->recs[i]->id) + 1;
  j->n = lb->nrecs;
  j->in = sm_calloc(j->n ? j->n : 1, sizeof(*j->in));
  j->out = sm_calloc(j->n ? j->n : 1, sizeof(*j->out));
  j->ids = sm_malloc(bytes ? bytes : 1);
  if (!j->in || !j->out || !j->ids) {
    ad_job_free(j);
    return NULL;
  }
  size_t off = 0;
  for (size_t i = 0; i < j->n; i++) {
    const sched_rec *r = lb->recs[i];
    size_t l = strlen(r->id) + 1;
    memcpy(j->ids + off, r->id, l);
    j->in[i] = (ad_in){.gen = r->gen,
                       .weight = r->weight,
                       .ewma_s = r->ewma_s,
                       .ewma_fail = r->ewma_fail,
                       .samples = r->samples,
                       .id_off = off};
    off += l;
  }
  j->lb = lb;
  return j;
}

/* Applies a computed plan on the loop: entries whose agent left or re-registered since the
 * snapshot (generation changed) are skipped, not trusted. */
static void ad_apply(sched_lb *lb, const ad_job *j) {
  for (size_t i = 0; i < j->n; i++) {
    const char *id = j->ids + j->in[i].id_off;
    sched_rec *r = sm_map_get(&lb->by_id, id, strlen(id));
    if (r && r->gen == j->in[i].gen)
      r->aweight = j->out[i];
  }
}

void sched_lb_recompute_now(sched_lb *lb) {
  ad_job *j = ad_snapshot(lb);
  if (j == NULL)
    return;
  ad_compute(j);
  ad_apply(lb, j);
  ad_job_free(j);
}

static void ad_work(uv_work_t *w) {
  ad_compute(w->data);
}

static void ad_after(uv_work_t *w, int status) {
  ad_job *j = w->data;
  sched_lb *lb = j->lb;
  if (lb != NULL) {
    lb->job = NULL;
    if (status == 0)
      ad_apply(lb, j);
  }
  ad_job_free(j);
}

int sched_lb_recompute(sched_lb *lb) {
  if (lb->job)
    return SM_EAGAIN;
  ad_job *j = ad_snapshot(lb);
  if (j == NULL)
    return SM_ENOMEM;
  j->work.data = j;
  int err = uv_queue_work(lb->loop, &j->work, ad_work, ad_after);
  if (err) {
    ad_job_free(j);
    return SM_EIO;
  }
  lb->job = j;
  return 0;
}

static void recompute_tick(uv_timer_t *t) {
  sched_lb *lb = t->data;
  if (!lb->dirty)
    return;
  if (sched_lb_recompute(lb) == 0)
    lb->dirty = 0;
}

/* ---- life --------------------------------------------------------------------------------- */

int sched_lb_create(uv_loop_t *loop, const sched_lb_config *cfg, sched_lb **out) {
  if (loop == NULL)
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
  lb->timer = sm_malloc(sizeof(*lb->timer));
  if (lb->timer == NULL) {
    sched_lb_destroy(lb);
    return SM_ENOMEM;
  }
  uv_timer_init(loop, lb->timer);
  lb->timer->data = lb;
  uint64_t ms = (uint64_t)(lb->cfg.recompute_s * 1000.0);
  uv_timer_start(lb->timer, recompute_tick, ms, ms);
  uv_unref((uv_handle_t *)lb->timer); /* the balancer never keeps a loop alive by itself */
  *out = lb;
  return 0;
}

static void timer_closed(uv_handle_t *h) {
  free(h);
}

void sched_lb_destroy(sched_lb *lb) {
  if (lb == NULL)
    return;
  if (lb->timer)
    uv_close((uv_handle_t *)lb->timer, timer_closed);
  if (lb->job)
    lb->job->lb = NULL; /* freed by its after-work callback */
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
  free(lb->recs);
  sm_map_finish(&lb->by_id);
  sm_map_finish(&lb->pools);
  sm_map_finish(&lb->buckets);
  sm_map_finish(&lb->segs);
  free(lb);
}
