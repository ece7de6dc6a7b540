/* store_mem.c - the in-process store: the same semantics as the Valkey store, kept in memory
 * (nothing survives a restart) and bounded.
 *
 * Each operation takes effect at once; only its callback is deferred, through a queue of
 * completions drained by a uv_idle handle, so no callback runs inside the call that asked.
 * Commands sit in a map by id and in an array sorted by their sort key (creation order); the
 * array insert is a memmove, cheap because new commands arrive at its end.
 */
#include "store/store.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/map.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define MEM_MAX_SCAN 10000 /* records a listing page looks at before returning a cursor */
#define MEM_MAX_KV                                                                                 \
  100000 /* plain keys kept (expired ones are dropped first); beyond: SM_ELIMIT                    \
          */

typedef struct mem_cmd {
  sm_command *c;
  char *key; /* sort key */
} mem_cmd;

typedef struct ob_item {
  sm_list node; /* on the store's outbox, oldest first */
  char *id;
  char *payload;
  size_t len;
} ob_item;

typedef struct ag_item {
  char *id;
  char *instance;
  char *data;
  int64_t expires_at;
} ag_item;

/* A plain key (store_kv_put). */
typedef struct kv_item {
  char *key;
  char *value; /* NUL-terminated, len bytes */
  size_t len;
  int64_t expires_at;
} kv_item;

enum comp_kind { C_CMD, C_LIST, C_DONE, C_OUTBOX, C_AGENTS, C_VALUE };

/* A completion owed to a caller: queued by every accepted operation, run (and freed) exactly once
 * on the next loop turn, or with SM_ECANCELED by mem_close. */
typedef struct comp {
  sm_list node; /* on the store's completion queue */
  enum comp_kind kind;
  union {
    store_cmd_cb cmd;
    store_list_cb list;
    store_done_cb done;
    store_outbox_cb outbox;
    store_agents_cb agents;
    store_value_cb value;
  } cb;
  void *ud;
  int err;
  int existed;
  sm_command *cmd;   /* C_CMD */
  sm_command **cmds; /* C_LIST */
  size_t n;
  char *cursor;             /* C_LIST */
  store_outbox_item *items; /* C_OUTBOX: strings owned */
  store_agent_rec *recs;    /* C_AGENTS: strings owned */
  char *value;              /* C_VALUE: owned copy */
  size_t vlen;
} comp;

typedef struct mem_store {
  store base;
  uv_loop_t *loop;
  store_mem_config cfg;
  sm_map cmds; /* id -> mem_cmd */
  mem_cmd **order;
  size_t norder, cap;
  sm_map idem;   /* idempotency key -> mem_cmd */
  sm_map outbox; /* id -> ob_item */
  sm_list ob;    /* ob_item.node, oldest first */
  sm_map agents; /* id -> ag_item */
  sm_map kv;     /* key -> kv_item */
  sm_list comps; /* comp.node waiting for the idle handle */
  uv_idle_t idle;
  int closing;
  void (*closed)(void *ud);
  void *closed_ud;
} mem_store;

/* Frees what the completion would have handed over: a cancelled operation reports no records. */
static void comp_free_results(comp *k) {
  command_free(k->cmd);
  k->cmd = NULL;
  for (size_t i = 0; k->cmds && i < k->n; i++)
    command_free(k->cmds[i]);
  free(k->cmds);
  k->cmds = NULL;
  free(k->cursor);
  k->cursor = NULL;
  for (size_t i = 0; k->items && i < k->n; i++) {
    free((char *)k->items[i].id);
    free((char *)k->items[i].payload);
  }
  free(k->items);
  k->items = NULL;
  for (size_t i = 0; k->recs && i < k->n; i++) {
    free((char *)k->recs[i].id);
    free((char *)k->recs[i].instance);
    free((char *)k->recs[i].data);
  }
  free(k->recs);
  k->recs = NULL;
  free(k->value);
  k->value = NULL;
  k->vlen = 0;
  k->n = 0;
  k->existed = 0;
}

static void comp_free(comp *k) {
  assert(!sm_list_linked(&k->node));
  comp_free_results(k);
  free(k);
}

static void comp_run(comp *k) {
  switch (k->kind) {
  case C_CMD:
    k->cb.cmd(k->ud, k->err, k->cmd, k->existed);
    break;
  case C_LIST:
    k->cb.list(k->ud, k->err, k->cmds, k->n, k->cursor);
    break;
  case C_DONE:
    k->cb.done(k->ud, k->err);
    break;
  case C_OUTBOX:
    k->cb.outbox(k->ud, k->err, k->items, k->n);
    break;
  case C_AGENTS:
    k->cb.agents(k->ud, k->err, k->recs, k->n);
    break;
  case C_VALUE:
    k->cb.value(k->ud, k->err, k->value, k->vlen);
    break;
  }
}

static void on_idle(uv_idle_t *h) {
  mem_store *m = h->data;
  /* only what is queued now: completions queued by these callbacks run on the next turn */
  sm_list now;
  sm_list_init(&now);
  sm_list_splice_back(&now, &m->comps);
  sm_list *it;
  while ((it = sm_list_pop_front(&now)) != NULL) {
    comp *k = SM_LIST_ENTRY(it, comp, node);
    if (m->closing) {
      k->err = SM_ECANCELED; /* a callback closed the store: the rest are cancelled */
      comp_free_results(k);
    }
    comp_run(k);
    comp_free(k);
  }
  if (sm_list_empty(&m->comps) && !m->closing)
    uv_idle_stop(&m->idle);
}

static comp *comp_new(mem_store *m, enum comp_kind kind, void *ud) {
  (void)m;
  comp *k = sm_calloc(1, sizeof(*k));
  if (k != NULL) {
    sm_list_init(&k->node);
    k->kind = kind;
    k->ud = ud;
  }
  return k;
}

static void comp_push(mem_store *m, comp *k) {
  assert(!m->closing && !sm_list_linked(&k->node));
  sm_list_push_back(&m->comps, &k->node);
  uv_idle_start(&m->idle, on_idle);
}

/* Queues a command completion with a copy of c (NULL: none). Returns 0 or SM_ENOMEM. */
static int push_cmd(mem_store *m, store_cmd_cb cb, void *ud, int err, const sm_command *c,
                    int existed) {
  comp *k = comp_new(m, C_CMD, ud);
  if (k == NULL)
    return SM_ENOMEM;
  k->cb.cmd = cb;
  k->err = err;
  k->existed = existed;
  if (c != NULL && (k->cmd = command_clone(c)) == NULL) {
    free(k);
    return SM_ENOMEM;
  }
  comp_push(m, k);
  return 0;
}

static int push_done(mem_store *m, store_done_cb cb, void *ud, int err) {
  comp *k = comp_new(m, C_DONE, ud);
  if (k == NULL)
    return SM_ENOMEM;
  k->cb.done = cb;
  k->err = err;
  comp_push(m, k);
  return 0;
}

/* ---- the sorted index --------------------------------------------------------------------- */

/* First position whose key is >= key. */
static size_t lower_bound(mem_store *m, const char *key) {
  size_t lo = 0, hi = m->norder;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (strcmp(m->order[mid]->key, key) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int order_insert(mem_store *m, mem_cmd *e) {
  if (m->norder == m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 256;
    mem_cmd **n = sm_realloc(m->order, ncap * sizeof(*n));
    if (n == NULL)
      return SM_ENOMEM;
    m->order = n;
    m->cap = ncap;
  }
  size_t pos = lower_bound(m, e->key);
  memmove(&m->order[pos + 1], &m->order[pos], (m->norder - pos) * sizeof(*m->order));
  m->order[pos] = e;
  m->norder++;
  return 0;
}

static void order_remove(mem_store *m, mem_cmd *e) {
  size_t pos = lower_bound(m, e->key);
  if (pos < m->norder && m->order[pos] == e) {
    memmove(&m->order[pos], &m->order[pos + 1], (m->norder - pos - 1) * sizeof(*m->order));
    m->norder--;
  }
}

static void entry_drop(mem_store *m, mem_cmd *e) {
  order_remove(m, e);
  if (e->c->idempotency_key) {
    mem_cmd *i = sm_map_get(&m->idem, e->c->idempotency_key, strlen(e->c->idempotency_key));
    if (i == e)
      sm_map_del(&m->idem, e->c->idempotency_key, strlen(e->c->idempotency_key));
  }
  sm_map_del(&m->cmds, e->c->id, strlen(e->c->id));
  command_free(e->c);
  free(e->key);
  free(e);
}

/* Makes room for one more command: evicts the oldest final one. SM_ELIMIT when all are active. */
static int make_room(mem_store *m) {
  if (m->cmds.len < m->cfg.max_commands)
    return 0;
  for (size_t i = 0; i < m->norder; i++) {
    mem_cmd *e = m->order[i];
    if (command_status_is_final(e->c->status) &&
        sm_map_get(&m->outbox, e->c->id, strlen(e->c->id)) == NULL) {
      entry_drop(m, e);
      return 0;
    }
  }
  return SM_ELIMIT;
}

/* ---- commands ----------------------------------------------------------------------------- */

static int mem_cmd_create(store *s, const sm_command *c, store_cmd_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  mem_cmd *old = NULL;
  if (c->idempotency_key)
    old = sm_map_get(&m->idem, c->idempotency_key, strlen(c->idempotency_key));
  if (old == NULL)
    old = sm_map_get(&m->cmds, c->id, strlen(c->id));
  if (old != NULL)
    return push_cmd(m, cb, ud, 0, old->c, 1);
  int err = make_room(m);
  if (err)
    return err;
  char key[STORE_MAX_CURSOR + 1];
  if ((err = store_sort_key(c, key, sizeof(key))) != 0)
    return err;
  mem_cmd *e = sm_calloc(1, sizeof(*e));
  if (e == NULL)
    return SM_ENOMEM;
  e->c = command_clone(c);
  e->key = sm_strdup(key);
  if (e->c == NULL || e->key == NULL) {
    err = SM_ENOMEM;
    goto fail;
  }
  if ((err = sm_map_put(&m->cmds, e->c->id, strlen(e->c->id), e)) != 0)
    goto fail;
  if ((err = order_insert(m, e)) != 0) {
    sm_map_del(&m->cmds, e->c->id, strlen(e->c->id));
    goto fail;
  }
  if (e->c->idempotency_key &&
      (err = sm_map_put(&m->idem, e->c->idempotency_key, strlen(e->c->idempotency_key), e))) {
    order_remove(m, e);
    sm_map_del(&m->cmds, e->c->id, strlen(e->c->id));
    goto fail;
  }
  /* a broadcast child joins its parent's children list (as the Valkey form appends it) */
  mem_cmd *par = c->parent_id ? sm_map_get(&m->cmds, c->parent_id, strlen(c->parent_id)) : NULL;
  if (par != NULL && (par->c->children != NULL || par->c->nchildren == 0) &&
      (err = command_add_child(par->c, c->id)) != 0) {
    entry_drop(m, e);
    return err;
  }
  if ((err = push_cmd(m, cb, ud, 0, NULL, 0)) != 0) {
    if (par != NULL && par->c->nchildren > 0 &&
        strcmp(par->c->children[par->c->nchildren - 1], c->id) == 0)
      free(par->c->children[--par->c->nchildren]);
    entry_drop(m, e);
    return err;
  }
  return 0;
fail:
  command_free(e->c);
  free(e->key);
  free(e);
  return err;
}

static int mem_cmd_get(store *s, const char *id, store_cmd_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  mem_cmd *e = sm_map_get(&m->cmds, id, strlen(id));
  return push_cmd(m, cb, ud, e ? 0 : SM_ENOENT, e ? e->c : NULL, 0);
}

static int ob_put(mem_store *m, const char *id, const char *payload, size_t len);

static int mem_cmd_update(store *s, const sm_command *c, command_status expected,
                          const char *outbox_payload, size_t outbox_len, store_cmd_cb cb,
                          void *ud) {
  mem_store *m = (mem_store *)s;
  mem_cmd *e = sm_map_get(&m->cmds, c->id, strlen(c->id));
  if (e == NULL)
    return push_cmd(m, cb, ud, SM_ENOENT, NULL, 0);
  if (e->c->status != expected)
    return push_cmd(m, cb, ud, SM_ESTATE, e->c, 0);
  /* only the lifecycle fields change (as in the Valkey form); everything that can fail is
   * made before the record is touched */
  char *aid = NULL;
  command_result res = {0};
  comp *k = comp_new(m, C_CMD, ud);
  int err = k ? 0 : SM_ENOMEM;
  if (!err && c->agent_id != NULL && (aid = sm_strdup(c->agent_id)) == NULL)
    err = SM_ENOMEM;
  if (!err && c->result.present) {
    sm_command tmp = {0};
    err = command_set_result(&tmp, c->result.status, c->result.data, c->result.ndata,
                             c->result.error, c->result.completed_at);
    res = tmp.result; /* tmp owns nothing else */
  }
  if (!err && outbox_payload != NULL)
    err = ob_put(m, c->id, outbox_payload, outbox_len);
  if (err) {
    free(k);
    free(aid);
    command_result_clear(&res);
    return err;
  }
  sm_command *t = e->c;
  t->status = c->status;
  t->attempts = c->attempts;
  t->dispatched_at = c->dispatched_at;
  t->started_at = c->started_at;
  t->completed_at = c->completed_at;
  free(t->agent_id);
  t->agent_id = aid;
  if (res.present) {
    command_result_clear(&t->result);
    t->result = res;
  }
  size_t planned = c->nchildren > c->nchildren_planned ? c->nchildren : c->nchildren_planned;
  if (planned > t->nchildren_planned)
    t->nchildren_planned = planned;
  k->cb.cmd = cb;
  comp_push(m, k);
  return 0;
}

static int mem_cmd_list(store *s, const store_filter *f, const char *cursor, size_t limit,
                        store_list_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  comp *k = comp_new(m, C_LIST, ud);
  if (k == NULL || (k->cmds = sm_calloc(limit, sizeof(*k->cmds))) == NULL) {
    free(k);
    return SM_ENOMEM;
  }
  k->cb.list = cb;
  size_t pos = 0, scanned = 0;
  if (cursor != NULL) {
    pos = lower_bound(m, cursor);
    if (pos < m->norder && strcmp(m->order[pos]->key, cursor) == 0)
      pos++;
  }
  const char *last = NULL;
  for (; pos < m->norder && k->n < limit && scanned < MEM_MAX_SCAN; pos++, scanned++) {
    mem_cmd *e = m->order[pos];
    last = e->key;
    if (!store_filter_match(f, e->c))
      continue;
    if ((k->cmds[k->n] = command_clone(e->c)) == NULL) {
      comp_free(k);
      return SM_ENOMEM;
    }
    k->n++;
  }
  if (pos < m->norder && last != NULL && (k->cursor = sm_strdup(last)) == NULL) {
    comp_free(k);
    return SM_ENOMEM;
  }
  comp_push(m, k);
  return 0;
}

/* ---- outbox ------------------------------------------------------------------------------- */

static int ob_put(mem_store *m, const char *id, const char *payload, size_t len) {
  ob_item *o = sm_map_get(&m->outbox, id, strlen(id));
  char *p = sm_malloc(len + 1);
  if (p == NULL)
    return SM_ENOMEM;
  memcpy(p, payload, len);
  p[len] = '\0';
  if (o != NULL) { /* a newer result of the same command replaces the old one in place */
    free(o->payload);
    o->payload = p;
    o->len = len;
    return 0;
  }
  if (m->outbox.len >= m->cfg.max_outbox) {
    free(p);
    return SM_ELIMIT;
  }
  o = sm_calloc(1, sizeof(*o));
  if (o == NULL || (o->id = sm_strdup(id)) == NULL) {
    free(o);
    free(p);
    return SM_ENOMEM;
  }
  o->payload = p;
  o->len = len;
  int err = sm_map_put(&m->outbox, o->id, strlen(o->id), o);
  if (err) {
    free(o->id);
    free(o);
    free(p);
    return err;
  }
  sm_list_push_back(&m->ob, &o->node);
  return 0;
}

static void ob_free(mem_store *m, ob_item *o) {
  sm_list_remove(&o->node);
  sm_map_del(&m->outbox, o->id, strlen(o->id));
  free(o->id);
  free(o->payload);
  free(o);
}

static int mem_outbox_add(store *s, const char *id, const char *payload, size_t len,
                          store_done_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  comp *k = comp_new(m, C_DONE, ud);
  if (k == NULL)
    return SM_ENOMEM;
  int err = ob_put(m, id, payload, len);
  if (err) {
    free(k);
    return err;
  }
  k->cb.done = cb;
  comp_push(m, k);
  return 0;
}

static int mem_outbox_list(store *s, size_t limit, store_outbox_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  comp *k = comp_new(m, C_OUTBOX, ud);
  if (k == NULL || (k->items = sm_calloc(limit, sizeof(*k->items))) == NULL) {
    free(k);
    return SM_ENOMEM;
  }
  k->cb.outbox = cb;
  SM_LIST_FOREACH(on, &m->ob) {
    if (k->n >= limit)
      break;
    ob_item *o = SM_LIST_ENTRY(on, ob_item, node);
    store_outbox_item *it = &k->items[k->n++];
    it->id = sm_strdup(o->id);
    char *p = sm_malloc(o->len + 1);
    if (p)
      memcpy(p, o->payload, o->len + 1);
    it->payload = p;
    it->len = o->len;
    if (it->id == NULL || p == NULL) {
      comp_free(k);
      return SM_ENOMEM;
    }
  }
  comp_push(m, k);
  return 0;
}

static int mem_outbox_remove(store *s, const char *id, store_done_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  comp *k = comp_new(m, C_DONE, ud);
  if (k == NULL)
    return SM_ENOMEM;
  ob_item *o = sm_map_get(&m->outbox, id, strlen(id));
  if (o)
    ob_free(m, o);
  k->cb.done = cb;
  comp_push(m, k);
  return 0;
}

/* ---- agents ------------------------------------------------------------------------------- */

static void ag_free(ag_item *a) {
  free(a->id);
  free(a->instance);
  free(a->data);
  free(a);
}

static int mem_agent_put(store *s, const char *id, const char *instance, const char *data,
                         int64_t ttl_ms, store_done_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  ag_item *n = sm_calloc(1, sizeof(*n));
  if (n == NULL)
    return SM_ENOMEM;
  n->id = sm_strdup(id);
  n->instance = sm_strdup(instance);
  n->data = sm_strdup(data);
  n->expires_at = command_now_ms() + ttl_ms;
  if (!n->id || !n->instance || !n->data) {
    ag_free(n);
    return SM_ENOMEM;
  }
  ag_item *old = sm_map_get(&m->agents, id, strlen(id));
  int err;
  if (old != NULL) {
    err = sm_map_replace(&m->agents, n->id, strlen(n->id), n);
    if (!err)
      ag_free(old);
  } else {
    err = m->agents.len >= m->cfg.max_agents ? SM_ELIMIT
                                             : sm_map_put(&m->agents, n->id, strlen(n->id), n);
  }
  if (!err)
    err = push_done(m, cb, ud, 0);
  else
    ag_free(n);
  return err;
}

static int mem_agent_del(store *s, const char *id, const char *instance, store_done_cb cb,
                         void *ud) {
  mem_store *m = (mem_store *)s;
  ag_item *a = sm_map_get(&m->agents, id, strlen(id));
  if (a != NULL && (instance == NULL || strcmp(instance, a->instance) == 0)) {
    sm_map_del(&m->agents, id, strlen(id));
    ag_free(a);
  }
  return push_done(m, cb, ud, 0);
}

static int mem_agent_list(store *s, size_t limit, store_agents_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  int64_t now = command_now_ms();
  /* drop the expired records first, as Valkey's EXPIRE would */
  for (size_t i = 0; i < m->agents.cap; i++) {
    ag_item *a = m->agents.slots[i].key ? m->agents.slots[i].value : NULL;
    if (a != NULL && a->expires_at <= now) {
      sm_map_del(&m->agents, a->id, strlen(a->id));
      ag_free(a);
      i = (size_t)-1; /* the table may have moved entries: start over */
    }
  }
  size_t cnt = m->agents.len < limit ? m->agents.len : limit;
  comp *k = comp_new(m, C_AGENTS, ud);
  if (k == NULL || (k->recs = sm_calloc(cnt ? cnt : 1, sizeof(*k->recs))) == NULL) {
    free(k);
    return SM_ENOMEM;
  }
  k->cb.agents = cb;
  for (size_t i = 0; i < m->agents.cap && k->n < cnt; i++) {
    ag_item *a = m->agents.slots[i].key ? m->agents.slots[i].value : NULL;
    if (a == NULL)
      continue;
    store_agent_rec *r = &k->recs[k->n++];
    r->id = sm_strdup(a->id);
    r->instance = sm_strdup(a->instance);
    r->data = sm_strdup(a->data);
    r->expires_at = a->expires_at;
    if (!r->id || !r->instance || !r->data) {
      comp_free(k);
      return SM_ENOMEM;
    }
  }
  comp_push(m, k);
  return 0;
}

/* ---- plain keys --------------------------------------------------------------------------- */

static void kv_free(kv_item *e) {
  free(e->key);
  free(e->value);
  free(e);
}

/* Drops the expired keys, as Valkey's expiry would. */
static void kv_expire(mem_store *m, int64_t now) {
  for (size_t i = 0; i < m->kv.cap; i++) {
    kv_item *e = m->kv.slots[i].key ? m->kv.slots[i].value : NULL;
    if (e != NULL && e->expires_at <= now) {
      sm_map_del(&m->kv, e->key, strlen(e->key));
      kv_free(e);
      i = (size_t)-1; /* the table may have moved entries: start over */
    }
  }
}

static int mem_kv_put(store *s, const char *key, const char *value, size_t len, int64_t ttl_ms,
                      store_done_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  int64_t now = command_now_ms();
  kv_item *old = sm_map_get(&m->kv, key, strlen(key));
  if (old == NULL && m->kv.len >= MEM_MAX_KV) {
    kv_expire(m, now);
    if (m->kv.len >= MEM_MAX_KV)
      return SM_ELIMIT;
  }
  kv_item *n = sm_calloc(1, sizeof(*n));
  if (n == NULL)
    return SM_ENOMEM;
  n->key = sm_strdup(key);
  n->value = sm_malloc(len + 1);
  if (!n->key || !n->value) {
    kv_free(n);
    return SM_ENOMEM;
  }
  memcpy(n->value, value, len);
  n->value[len] = '\0';
  n->len = len;
  n->expires_at = now + ttl_ms;
  comp *k = comp_new(m, C_DONE, ud);
  int err = k ? (old ? sm_map_replace(&m->kv, n->key, strlen(n->key), n)
                     : sm_map_put(&m->kv, n->key, strlen(n->key), n))
              : SM_ENOMEM;
  if (err) {
    free(k);
    kv_free(n);
    return err;
  }
  if (old)
    kv_free(old);
  k->cb.done = cb;
  comp_push(m, k);
  return 0;
}

static int mem_kv_get(store *s, const char *key, store_value_cb cb, void *ud) {
  mem_store *m = (mem_store *)s;
  kv_item *e = sm_map_get(&m->kv, key, strlen(key));
  if (e != NULL && e->expires_at <= command_now_ms()) {
    sm_map_del(&m->kv, e->key, strlen(e->key));
    kv_free(e);
    e = NULL;
  }
  comp *k = comp_new(m, C_VALUE, ud);
  if (k == NULL)
    return SM_ENOMEM;
  k->cb.value = cb;
  if (e == NULL) {
    k->err = SM_ENOENT;
  } else {
    k->value = sm_malloc(e->len + 1);
    if (k->value == NULL) {
      free(k);
      return SM_ENOMEM;
    }
    memcpy(k->value, e->value, e->len + 1);
    k->vlen = e->len;
  }
  comp_push(m, k);
  return 0;
}

/* ---- life --------------------------------------------------------------------------------- */

static int mem_is_up(const store *s) {
  (void)s;
  return 1;
}

static void mem_on_closed(uv_handle_t *h) {
  mem_store *m = h->data;
  void (*closed)(void *) = m->closed;
  void *ud = m->closed_ud;
  free(m);
  if (closed)
    closed(ud);
}

static void mem_close(store *s, void (*closed)(void *ud), void *ud) {
  mem_store *m = (mem_store *)s;
  if (m->closing)
    return;
  m->closing = 1;
  m->closed = closed;
  m->closed_ud = ud;
  /* operations already answered in memory still owe their callbacks: cancel them now */
  sm_list *it;
  while ((it = sm_list_pop_front(&m->comps)) != NULL) {
    comp *k = SM_LIST_ENTRY(it, comp, node);
    k->err = SM_ECANCELED;
    comp_free_results(k);
    comp_run(k);
    comp_free(k);
  }
  for (size_t i = 0; i < m->norder; i++) {
    command_free(m->order[i]->c);
    free(m->order[i]->key);
    free(m->order[i]);
  }
  free(m->order);
  sm_map_finish(&m->cmds);
  sm_map_finish(&m->idem);
  while (!sm_list_empty(&m->ob))
    ob_free(m, SM_LIST_ENTRY(sm_list_first(&m->ob), ob_item, node));
  sm_map_finish(&m->outbox);
  for (size_t i = 0; i < m->agents.cap; i++)
    if (m->agents.slots[i].key)
      ag_free(m->agents.slots[i].value);
  sm_map_finish(&m->agents);
  for (size_t i = 0; i < m->kv.cap; i++)
    if (m->kv.slots[i].key)
      kv_free(m->kv.slots[i].value);
  sm_map_finish(&m->kv);
  uv_close((uv_handle_t *)&m->idle, mem_on_closed);
}

static const store_ops mem_ops = {
    .name = "memory",
    .cmd_create = mem_cmd_create,
    .cmd_get = mem_cmd_get,
    .cmd_update = mem_cmd_update,
    .cmd_list = mem_cmd_list,
    .outbox_add = mem_outbox_add,
    .outbox_list = mem_outbox_list,
    .outbox_remove = mem_outbox_remove,
    .agent_put = mem_agent_put,
    .agent_del = mem_agent_del,
    .agent_list = mem_agent_list,
    .kv_put = mem_kv_put,
    .kv_get = mem_kv_get,
    .is_up = mem_is_up,
    .close = mem_close,
};

int store_mem_create(uv_loop_t *loop, const store_mem_config *cfg, store **out) {
  mem_store *m = sm_calloc(1, sizeof(*m));
  if (m == NULL)
    return SM_ENOMEM;
  m->base.ops = &mem_ops;
  m->loop = loop;
  if (cfg)
    m->cfg = *cfg;
  if (m->cfg.max_commands == 0)
    m->cfg.max_commands = 100000;
  if (m->cfg.max_outbox == 0)
    m->cfg.max_outbox = 100000;
  if (m->cfg.max_agents == 0)
    m->cfg.max_agents = 100000;
  sm_map_init(&m->cmds, 0);
  sm_map_init(&m->idem, 0);
  sm_map_init(&m->outbox, 0);
  sm_map_init(&m->agents, 0);
  sm_map_init(&m->kv, 0);
  sm_list_init(&m->ob);
  sm_list_init(&m->comps);
  uv_idle_init(loop, &m->idle);
  m->idle.data = m;
  *out = &m->base;
  return 0;
}
