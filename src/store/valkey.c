/* valkey.c - the hiredis adapter: connection state machine, handshake, reconnect, request
 * timeouts and bounds.
 *
 * States: DOWN (waiting for the backoff timer) -> CONNECTING (TCP connect + AUTH/SELECT/PING,
 * bounded by the connect timer) -> UP. Any failure drops the hiredis context and goes back to
 * DOWN with a longer, jittered delay. hiredis (0.14 and 1.x) answers requests in order, so all
 * requests share one timeout and the oldest waiting one always expires first: one timer serves
 * them all. A timed-out request keeps its slot (and counts toward max_pending) until hiredis
 * hands its late reply back, which is then dropped.
 *
 * The event glue is our own rather than <hiredis/adapters/libuv.h>: that adapter ignores a poll
 * callback with an error status, and libuv reports a refused connect exactly that way (POLLERR),
 * so a refused connect would only be noticed at the connect timeout.
 */
#include "store/valkey.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include <assert.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

enum vk_state { VK_DOWN, VK_CONNECTING, VK_UP, VK_CLOSING };

/* One request hiredis holds; freed by on_reply, which hiredis runs exactly once for it (reply,
 * lost connection or redisAsyncFree). Its callback runs once: from on_reply, or earlier from the
 * request timer (done = 1: on_reply then only frees it). */
typedef struct vk_req {
  sm_list node; /* on the waiting list (oldest first) until answered or timed out */
  sm_valkey *v;
  sm_valkey_cb cb;
  void *ud;
  uint64_t deadline; /* uv_now ms */
  int done;          /* cb already ran (timed out) */
} vk_req;

struct sm_valkey {
  uv_loop_t *loop;
  sm_valkey_config cfg;
  char *host;
  char *password;
  sm_valkey_state_cb state_cb;
  void *ud;
  redisAsyncContext *ac; /* current context; NULL while DOWN */
  enum vk_state state;
  uv_timer_t conn_timer; /* connect timeout while CONNECTING, backoff while DOWN */
  uv_timer_t req_timer;  /* the oldest waiting request's deadline */
  sm_list waiting;       /* vk_req.node awaiting a reply, by deadline (= by age) */
  size_t pending;        /* requests hiredis still holds, timed out or not */
  unsigned attempt;      /* failed connects in a row */
  uint64_t rng;
  int ever_up;
  int closes_left;
  void (*closed)(void *ud);
  void *closed_ud;
  sm_valkey_stats stats;
};

static void vk_connect(sm_valkey *v);

/* ---- replies ------------------------------------------------------------------------------ */

enum sm_valkey_type sm_valkey_reply_type(const sm_valkey_reply *r) {
  const redisReply *rr = (const redisReply *)r;
  switch (rr->type) {
  case REDIS_REPLY_STRING:
    return SM_VK_STRING;
  case REDIS_REPLY_STATUS:
    return SM_VK_STATUS;
  case REDIS_REPLY_INTEGER:
    return SM_VK_INTEGER;
  case REDIS_REPLY_ARRAY:
    return SM_VK_ARRAY;
  case REDIS_REPLY_ERROR:
    return SM_VK_ERROR;
  default:
    return SM_VK_NIL;
  }
}

long long sm_valkey_reply_int(const sm_valkey_reply *r) {
  return ((const redisReply *)r)->integer;
}

const char *sm_valkey_reply_str(const sm_valkey_reply *r, size_t *len) {
  const redisReply *rr = (const redisReply *)r;
  if (rr->type != REDIS_REPLY_STRING && rr->type != REDIS_REPLY_STATUS &&
      rr->type != REDIS_REPLY_ERROR)
    return NULL;
  if (len)
    *len = rr->len;
  return rr->str;
}

size_t sm_valkey_reply_count(const sm_valkey_reply *r) {
  const redisReply *rr = (const redisReply *)r;
  return rr->type == REDIS_REPLY_ARRAY ? rr->elements : 0;
}

const sm_valkey_reply *sm_valkey_reply_elem(const sm_valkey_reply *r, size_t i) {
  const redisReply *rr = (const redisReply *)r;
  if (rr->type != REDIS_REPLY_ARRAY || i >= rr->elements)
    return NULL;
  return (const sm_valkey_reply *)rr->element[i];
}

static int starts(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The one translation of server errors into the project's codes. */
static int vk_error_code(const redisReply *r) {
  const char *s = r->str ? r->str : "";
  if (starts(s, "NOAUTH") || starts(s, "WRONGPASS") || strstr(s, "invalid password"))
    return SM_EAUTH;
  if (starts(s, "NOPERM"))
    return SM_EPERM;
  if (starts(s, "NOSCRIPT"))
    return SM_ENOENT;
  if (starts(s, "LOADING") || starts(s, "BUSY") || starts(s, "MASTERDOWN") ||
      starts(s, "READONLY") || starts(s, "TRYAGAIN") || starts(s, "CLUSTERDOWN"))
    return SM_EUNAVAIL;
  if (starts(s, "OOM"))
    return SM_ENOMEM;
  if (starts(s, "WRONGTYPE"))
    return SM_EPROTO;
  return SM_EIO;
}

/* ---- hiredis <-> libuv glue --------------------------------------------------------------- */

typedef struct vk_ev {
  redisAsyncContext *ac; /* NULL once hiredis cleaned up */
  uv_poll_t poll;
  int events;
} vk_ev;

static void ev_on_poll(uv_poll_t *h, int status, int events) {
  vk_ev *e = h->data;
  if (status < 0)
    events = e->events ? e->events : UV_WRITABLE; /* let hiredis read the socket error */
  if (e->ac != NULL && (events & UV_READABLE))
    redisAsyncHandleRead(e->ac);
  if (e->ac != NULL && (events & UV_WRITABLE))
    redisAsyncHandleWrite(e->ac);
}

static void ev_update(vk_ev *e, int add, int ev) {
  if (add)
    e->events |= ev;
  else
    e->events &= ~ev;
  if (e->events)
    uv_poll_start(&e->poll, e->events, ev_on_poll);
  else
    uv_poll_stop(&e->poll);
}

static void ev_add_read(void *p) {
  ev_update(p, 1, UV_READABLE);
}
static void ev_del_read(void *p) {
  ev_update(p, 0, UV_READABLE);
}
static void ev_add_write(void *p) {
  ev_update(p, 1, UV_WRITABLE);
}
static void ev_del_write(void *p) {
  ev_update(p, 0, UV_WRITABLE);
}

static void ev_on_closed(uv_handle_t *h) {
  free(h->data);
}

static void ev_cleanup(void *p) {
  vk_ev *e = p;
  e->ac = NULL;
  uv_close((uv_handle_t *)&e->poll, ev_on_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  vk_ev *e = sm_calloc(1, sizeof(*e));
  if (e == NULL)
    return SM_ENOMEM;
  if (uv_poll_init(loop, &e->poll, ac->c.fd) != 0) {
    free(e);
    return SM_EIO;
  }
  e->ac = ac;
  e->poll.data = e;
  ac->ev.data = e;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  return 0;
}

/* ---- timers and state --------------------------------------------------------------------- */

static uint64_t rnd(sm_valkey *v) {
  uint64_t x = v->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return v->rng = x;
}

static uint64_t ms_of(double s) {
  return (uint64_t)(s * 1000.0 + 0.5);
}

static void on_backoff(uv_timer_t *t) {
  sm_valkey *v = t->data;
  if (v->state == VK_DOWN)
    vk_connect(v);
}

static void schedule_reconnect(sm_valkey *v) {
  double d = v->cfg.backoff_min_s;
  for (unsigned i = 0; i < v->attempt && d < v->cfg.backoff_max_s; i++)
    d *= 2;
  if (d > v->cfg.backoff_max_s)
    d = v->cfg.backoff_max_s;
  /* jitter in [d/2, d] so that many managers do not reconnect in step */
  d = d / 2 + d / 2 * (double)(rnd(v) % 1001) / 1000.0;
  v->attempt++;
  v->state = VK_DOWN;
  uv_timer_start(&v->conn_timer, on_backoff, ms_of(d), 0);
}

/* Forgets the current context and plans the next attempt. The caller frees the context (or
 * hiredis does, when it reported the loss). */
static void vk_lost(sm_valkey *v, const char *why) {
  int was_up = v->state == VK_UP;
  v->ac = NULL;
  uv_timer_stop(&v->conn_timer);
  if (v->state == VK_CLOSING)
    return;
  if (was_up || v->attempt == 0)
    sm_log_warn("valkey", "connection lost", SM_LS("reason", why), SM_LS("host", v->host),
                SM_LI("port", v->cfg.port));
  schedule_reconnect(v);
  if (was_up && v->state_cb)
    v->state_cb(v->ud, 0);
}

/* Drops the current context on our initiative (timeout, handshake refused). */
static void vk_drop(sm_valkey *v, const char *why) {
  redisAsyncContext *ac = v->ac;
  vk_lost(v, why);
  if (ac != NULL)
    redisAsyncFree(ac); /* runs pending callbacks with NULL (-> SM_EUNAVAIL) */
}

static void on_connect_timeout(uv_timer_t *t) {
  sm_valkey *v = t->data;
  if (v->state == VK_CONNECTING)
    vk_drop(v, "connect timeout");
}

static void unwait(vk_req *r) {
  if (sm_list_linked(&r->node))
    sm_list_remove(&r->node);
}

static vk_req *oldest_waiting(sm_valkey *v) {
  sm_list *n = sm_list_first(&v->waiting);
  return n ? SM_LIST_ENTRY(n, vk_req, node) : NULL;
}

static void on_req_timer(uv_timer_t *t);

static void rearm(sm_valkey *v) {
  vk_req *first = oldest_waiting(v);
  if (first == NULL) {
    uv_timer_stop(&v->req_timer);
    return;
  }
  uint64_t now = uv_now(v->loop);
  uint64_t d = first->deadline > now ? first->deadline - now : 0;
  uv_timer_start(&v->req_timer, on_req_timer, d, 0);
}

static void on_req_timer(uv_timer_t *t) {
  sm_valkey *v = t->data;
  uint64_t now = uv_now(v->loop);
  vk_req *r;
  while ((r = oldest_waiting(v)) != NULL && r->deadline <= now) {
    assert(!r->done);
    unwait(r);
    r->done = 1;
    v->stats.timeouts++;
    r->cb(r->ud, SM_ETIMEDOUT, NULL);
  }
  rearm(v);
}

/* ---- requests ----------------------------------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  vk_req *r = privdata;
  sm_valkey *v = r->v;
  assert(v->pending > 0);
  v->pending--;
  if (!r->done) {
    unwait(r);
    redisReply *rr = reply;
    int err = 0;
    if (rr == NULL) {
      err = v->state == VK_CLOSING ? SM_ECANCELED : SM_EUNAVAIL;
    } else if (rr->type == REDIS_REPLY_ERROR) {
      err = vk_error_code(rr);
      v->stats.errors++;
    }
    r->cb(r->ud, err, (const sm_valkey_reply *)rr);
    if (v->state != VK_CLOSING)
      rearm(v);
  }
  free(r);
}

int sm_valkey_command(sm_valkey *v, int argc, const char *const *argv, const size_t *argvlen,
                      sm_valkey_cb cb, void *ud) {
  if (argc <= 0 || argv == NULL || argvlen == NULL || cb == NULL)
    return SM_EINVAL;
  if (v->state != VK_UP || v->ac == NULL)
    return SM_EUNAVAIL;
  if (v->pending >= v->cfg.max_pending)
    return SM_ELIMIT;
  vk_req *r = sm_calloc(1, sizeof(*r));
  if (r == NULL)
    return SM_ENOMEM;
  sm_list_init(&r->node);
  r->v = v;
  r->cb = cb;
  r->ud = ud;
  r->deadline = uv_now(v->loop) + ms_of(v->cfg.request_timeout_s);
  if (redisAsyncCommandArgv(v->ac, on_reply, r, argc, (const char **)argv, argvlen) != REDIS_OK) {
    free(r);
    return v->ac && v->ac->err == REDIS_ERR_OOM ? SM_ENOMEM : SM_EUNAVAIL;
  }
  v->pending++;
  v->stats.requests++;
  sm_list_push_back(&v->waiting, &r->node);
  if (!uv_is_active((uv_handle_t *)&v->req_timer))
    rearm(v);
  return 0;
}

/* ---- connecting --------------------------------------------------------------------------- */

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata) {
  sm_valkey *v = privdata;
  redisReply *rr = reply;
  if (ac != v->ac || v->state != VK_CONNECTING)
    return; /* a context we already gave up */
  if (rr == NULL)
    return; /* the connection failed: on_connect / on_disconnect handle it */
  if (rr->type == REDIS_REPLY_ERROR) {
    int err = vk_error_code(rr);
    sm_log_error("valkey", "handshake refused", SM_LS("reply", rr->str), SM_LE(err));
    vk_drop(v, "handshake refused");
  }
}

static void on_ping(redisAsyncContext *ac, void *reply, void *privdata) {
  sm_valkey *v = privdata;
  redisReply *rr = reply;
  if (ac != v->ac || v->state != VK_CONNECTING || rr == NULL || rr->type == REDIS_REPLY_ERROR)
    return; /* errors were handled by on_handshake or the disconnect path */
  uv_timer_stop(&v->conn_timer);
  v->state = VK_UP;
  v->attempt = 0;
  if (v->ever_up)
    v->stats.reconnects++;
  v->ever_up = 1;
  sm_log_info("valkey", "connected", SM_LS("host", v->host), SM_LI("port", v->cfg.port),
              SM_LI("db", v->cfg.db));
  if (v->state_cb)
    v->state_cb(v->ud, 1);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  sm_valkey *v = ac->data;
  if (status != REDIS_OK && ac == v->ac)
    vk_lost(v, ac->errstr[0] ? ac->errstr : "connect failed"); /* hiredis frees ac */
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  sm_valkey *v = ac->data;
  (void)status;
  if (ac == v->ac)
    vk_lost(v, ac->errstr[0] ? ac->errstr : "disconnected"); /* hiredis frees ac */
}

static void vk_connect(sm_valkey *v) {
  redisAsyncContext *ac = redisAsyncConnect(v->host, v->cfg.port);
  if (ac == NULL) {
    schedule_reconnect(v);
    return;
  }
  if (ac->err) {
    if (v->attempt == 0)
      sm_log_warn("valkey", "connect failed", SM_LS("reason", ac->errstr));
    redisAsyncFree(ac);
    schedule_reconnect(v);
    return;
  }
  ac->data = v;
  if (ev_attach(ac, v->loop) != 0) {
    redisAsyncFree(ac);
    schedule_reconnect(v);
    return;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  v->ac = ac;
  v->state = VK_CONNECTING;
  uv_timer_start(&v->conn_timer, on_connect_timeout, ms_of(v->cfg.connect_timeout_s), 0);
  /* queued before the TCP connect completes; hiredis writes them once it does, in order */
  if (v->password && *v->password) {
    const char *argv[2] = {"AUTH", v->password};
    size_t lens[2] = {4, strlen(v->password)};
    redisAsyncCommandArgv(ac, on_handshake, v, 2, argv, lens);
  }
  if (v->cfg.db != 0 && v->ac == ac)
    redisAsyncCommand(ac, on_handshake, v, "SELECT %d", v->cfg.db);
  if (v->ac == ac)
    redisAsyncCommand(ac, on_ping, v, "PING");
}

/* ---- life --------------------------------------------------------------------------------- */

int sm_valkey_create(uv_loop_t *loop, const sm_valkey_config *cfg, sm_valkey_state_cb state_cb,
                     void *ud, sm_valkey **out) {
  if (cfg == NULL || cfg->host == NULL || *cfg->host == '\0' || cfg->port <= 0 ||
      cfg->port > 65535 || cfg->db < 0)
    return SM_EINVAL;
  sm_valkey *v = sm_calloc(1, sizeof(*v));
  if (v == NULL)
    return SM_ENOMEM;
  v->loop = loop;
  v->cfg = *cfg;
  v->host = sm_strdup(cfg->host);
  v->password = cfg->password ? sm_strdup(cfg->password) : NULL;
  if (v->host == NULL || (cfg->password && v->password == NULL)) {
    free(v->host);
    free(v->password);
    free(v);
    return SM_ENOMEM;
  }
  v->cfg.host = v->host;
  v->cfg.password = v->password;
  if (v->cfg.connect_timeout_s <= 0)
    v->cfg.connect_timeout_s = 5;
  if (v->cfg.request_timeout_s <= 0)
    v->cfg.request_timeout_s = 5;
  if (v->cfg.max_pending == 0)
    v->cfg.max_pending = 10000;
  if (v->cfg.backoff_min_s <= 0)
    v->cfg.backoff_min_s = 0.1;
  if (v->cfg.backoff_max_s < v->cfg.backoff_min_s)
    v->cfg.backoff_max_s = v->cfg.backoff_min_s > 5 ? v->cfg.backoff_min_s : 5;
  v->state_cb = state_cb;
  v->ud = ud;
  if (getrandom(&v->rng, sizeof(v->rng), 0) != (ssize_t)sizeof(v->rng) || v->rng == 0)
    v->rng = uv_hrtime() | 1;
  uv_timer_init(loop, &v->conn_timer);
  uv_timer_init(loop, &v->req_timer);
  v->conn_timer.data = v;
  v->req_timer.data = v;
  sm_list_init(&v->waiting);
  v->state = VK_DOWN;
  vk_connect(v);
  *out = v;
  return 0;
}

int sm_valkey_is_up(const sm_valkey *v) {
  return v->state == VK_UP;
}

void sm_valkey_get_stats(const sm_valkey *v, sm_valkey_stats *out) {
  *out = v->stats;
  out->pending = v->pending;
}

static void on_handle_closed(uv_handle_t *h) {
  sm_valkey *v = h->data;
  if (--v->closes_left > 0)
    return;
  void (*closed)(void *) = v->closed;
  void *ud = v->closed_ud;
  free(v->host);
  free(v->password);
  free(v);
  if (closed)
    closed(ud);
}

void sm_valkey_close(sm_valkey *v, void (*closed)(void *ud), void *ud) {
  if (v == NULL || v->state == VK_CLOSING)
    return;
  v->state = VK_CLOSING;
  v->closed = closed;
  v->closed_ud = ud;
  redisAsyncContext *ac = v->ac;
  v->ac = NULL;
  /* requests that already timed out are off the waiting list; the rest get SM_ECANCELED from
   * on_reply as hiredis releases them */
  if (ac != NULL)
    redisAsyncFree(ac);
  v->closes_left = 2;
  uv_close((uv_handle_t *)&v->conn_timer, on_handle_closed);
  uv_close((uv_handle_t *)&v->req_timer, on_handle_closed);
}
