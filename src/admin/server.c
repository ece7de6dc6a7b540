/* server.c - the admin listener on libuv.
 *
 * Per connection: one uv_tcp_t, one uv_timer_t (whichever deadline applies now: request, idle,
 * write stall, linger), an llhttp parser (http1.c), and two output buffers: `out` gathers the
 * responses of this loop turn, `wbuf` is the one write in flight. A uv_check handle flushes every
 * connection that gathered output once per loop turn. Reading stops when a connection has
 * HTTP_PIPELINE_MAX responses or HTTP_OUTPUT_HIGH_WATER bytes not yet written; the unparsed
 * rest of the last read waits in `stash` until the output drains.
 *
 * Deferred responses (http_response_defer): a request whose handler answers later gets a slot
 * in the connection's FIFO of unanswered requests; every later response of that connection
 * queues behind it (serialized at once, held in its slot) so pipelined answers keep request
 * order. Slots count toward HTTP_PIPELINE_MAX. A completion only marks its slot ready and moves
 * the ready head of the FIFO into `out`; the write happens in the flush of the loop turn. Every
 * waiting slot is also on the server's timeout list: slots join it in time order with the same
 * timeout, so the list is sorted by deadline and one timer serves them all. At the deadline the
 * slot answers 503 with Retry-After and releases the handler's deferred object, whose late
 * completion is then dropped; a connection that closes releases its slots the same way.
 *
 * Closing is two-phase: a connection is marked C_CLOSING, its handles are closed, and its memory
 * is freed in the last close callback. The server is freed after all its handles closed.
 */
#include "admin/server.h"

#include "admin/auth.h"
#include "admin/handlers.h"
#include "http/http1.h"
#include "admin/router.h"
#include "net/tls.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADMIN_READ_BUF (64 * 1024) /* one read; shared by all connections (reads are sync) */
#define ADMIN_BACKLOG 511
#define ADMIN_BUF_KEEP (64 * 1024)  /* output buffers larger than this are freed after a write */
#define ADMIN_DEFER_RETRY_AFTER "1" /* Retry-After of the 503 of a deferred request timed out */

enum conn_state {
  C_OPEN = 0, /* reading requests */
  C_DRAIN,    /* a final response is queued: write everything, then shut down */
  C_LINGER,   /* write side shut down: discard input until EOF or HTTP_LINGER_MS */
  C_CLOSING,  /* handles closing; freed in the last close callback */
};

enum timer_kind { T_NONE = 0, T_IDLE, T_REQUEST, T_WRITE, T_LINGER };

struct admin_conn;

/* One request answered later, or an answer waiting behind one (see the top of the file). */
typedef struct conn_slot {
  sm_list node;  /* the connection's FIFO (admin_conn.slots) */
  sm_list tnode; /* the server's timeout list (waiting slots only; linked: timed) */
  struct admin_conn *c;
  http_deferred *d;   /* the handler's answer to come; NULL once `bytes` holds the answer */
  http_buf bytes;     /* the serialized answer (when d is NULL) */
  int keep;           /* request: client allows keep-alive; serialized: the answer keeps it */
  uint64_t deadline;  /* uv_now() ms */
  const char *method; /* static text */
  char path[160];     /* for the request log, truncated */
  char who[40];       /* the caller's key name, for the request log */
  uint64_t start_ns;
} conn_slot;

typedef struct admin_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  struct admin_server *srv;
  http1_parser *http;
  net_tls *tls;  /* ADMIN_TLS_ENABLED: the session between the socket and the parser, else NULL */
  char peer[96]; /* "ip:port" of the client */
  enum conn_state state;
  int handles;   /* open handles; freed at 0 */
  int reading;   /* uv_read_start active */
  int peer_eof;  /* the client shut down its side */
  http_buf out;  /* gathered this turn, not yet handed to uv_write */
  size_t out_n;  /* responses in out */
  http_buf wbuf; /* the bytes of the write in flight */
  size_t w_n;    /* responses in wbuf */
  int writing;   /* wreq in flight */
  uv_write_t wreq;
  uv_shutdown_t sreq;
  http_buf stash;        /* input not parsed yet because output backed up */
  sm_list slots;         /* unanswered (deferred) requests and answers behind them */
  size_t nslots;         /* slots in that FIFO */
  enum timer_kind tkind; /* deadline the timer runs for */
  uint64_t tseq;         /* request sequence the T_REQUEST deadline belongs to */
  sm_list dnode;         /* the server's flush list (linked: output to flush this turn) */
  sm_list cnode;         /* the server's connections */
} admin_conn;

struct admin_server {
  uv_loop_t *loop;
  admin_api api;    /* the router's ud */
  const char *addr; /* for log lines */
  size_t max_connections;
  size_t max_body_bytes;
  size_t max_header_bytes;
  admin_router router;
  admin_security sec; /* keys, roles, rate limits: the router's guard */
  char host[256];
  int port;
  int bound_port; /* -1 until listening */
  uv_tcp_t listener;
  uv_check_t flusher;     /* flushes gathered output once per loop turn, right after poll */
  uv_idle_t kick;         /* output gathered outside poll (timers, write callbacks): keeps
                             the next poll from blocking until it is flushed */
  uv_timer_t defer_timer; /* the deadline of the oldest waiting deferred request */
  sm_list timeouts;       /* waiting deferred requests (conn_slot.tnode), earliest deadline first */
  uint64_t defer_timeout_ms;
  int listener_closed;
  int stopping;        /* stop_accepting called: no keep-alive from now on */
  int closing;         /* admin_server_close called */
  size_t open_handles; /* handles whose close callback has not run */
  sm_list conns;       /* admin_conn.cnode */
  size_t nconns;
  sm_list dirty; /* connections with output to flush this turn (admin_conn.dnode) */
  uint64_t request_timeout_ms;
  uint64_t idle_timeout_ms;
  http_buf busy; /* the serialized 503 for connections beyond the limit */
  void (*close_cb)(void *ud);
  void *close_ud;
  net_tls_ctx *tls_ctx; /* ADMIN_TLS_ENABLED: certificate and key; NULL: plain TCP */
  char rbuf[ADMIN_READ_BUF];
  uint8_t tbuf[16 * 1024]; /* plaintext out of / ciphertext out of a TLS session (sync use) */
};

static void conn_close(admin_conn *c);
static void conn_input(admin_conn *c, const char *data, size_t len);
static void conn_update_timer(admin_conn *c);
static void on_flush(uv_check_t *h);
static void on_kick(uv_idle_t *h);
static void conn_advance(admin_conn *c);

/* The first slot of c's FIFO, or NULL. */
static conn_slot *slot_head(const admin_conn *c) {
  sm_list *n = sm_list_first(&c->slots);
  return n ? SM_LIST_ENTRY(n, conn_slot, node) : NULL;
}

/* The waiting slot with the earliest deadline, or NULL. */
static conn_slot *timeout_head(const struct admin_server *srv) {
  sm_list *n = sm_list_first(&srv->timeouts);
  return n ? SM_LIST_ENTRY(n, conn_slot, tnode) : NULL;
}

static uint64_t secs_to_ms(double s) {
  return s <= 0 ? 1 : (uint64_t)(s * 1000.0 + 0.5);
}

static void server_maybe_free(struct admin_server *srv) {
  if (!srv->closing || srv->open_handles)
    return;
  void (*cb)(void *) = srv->close_cb;
  void *ud = srv->close_ud;
  http_buf_finish(&srv->busy);
  admin_security_finish(&srv->sec);
  net_tls_ctx_destroy(srv->tls_ctx);
  free(srv);
  if (cb)
    cb(ud);
}

static void on_handle_closed(uv_handle_t *h) {
  struct admin_server *srv = h->data;
  srv->open_handles--;
  server_maybe_free(srv);
}

/* ---- flush list ---- */

static void mark_dirty(admin_conn *c) {
  struct admin_server *srv = c->srv;
  if (sm_list_linked(&c->dnode) || c->state == C_CLOSING)
    return;
  sm_list_push_back(&srv->dirty, &c->dnode);
  if (!uv_is_active((uv_handle_t *)&srv->flusher) && !srv->closing) {
    uv_check_start(&srv->flusher, on_flush);
    uv_idle_start(&srv->kick, on_kick);
  }
}

static void unmark_dirty(admin_conn *c) {
  if (sm_list_linked(&c->dnode))
    sm_list_remove(&c->dnode);
}

/* ---- output ---- */

static size_t tls_pending(const admin_conn *c) {
  return c->tls ? net_tls_pending(c->tls) : 0;
}

static int backpressured(const admin_conn *c) {
  return c->out_n + c->w_n + c->nslots >= HTTP_PIPELINE_MAX ||
         c->out.len + c->wbuf.len + tls_pending(c) >= HTTP_OUTPUT_HIGH_WATER;
}

/* Moves the session's waiting ciphertext into wbuf (empty before). Returns 0 or SM_ENOMEM. */
static int tls_take_all(admin_conn *c) {
  c->wbuf.len = 0;
  size_t n;
  while ((n = net_tls_take(c->tls, c->srv->tbuf, sizeof(c->srv->tbuf))) > 0) {
    if (http_buf_append(&c->wbuf, c->srv->tbuf, n) != 0)
      return SM_ENOMEM;
  }
  return 0;
}

static void read_stop(admin_conn *c) {
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  admin_conn *c = h->data;
  *buf = uv_buf_init(c->srv->rbuf, sizeof(c->srv->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void read_start(admin_conn *c) {
  if (!c->reading && c->state != C_CLOSING && !c->peer_eof) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
      c->reading = 1;
  }
}

/* Logs the request line of an answer. */
static void log_request(admin_conn *c, const http_response *res, const char *method,
                        const char *path, uint64_t start_ns, const char *who) {
  double ms = start_ns ? (double)(uv_hrtime() - start_ns) / 1e6 : 0.0;
  sm_log_info("admin", "request", SM_LS("method", method ? method : "-"),
              SM_LS("path", path ? path : "-"), SM_LI("status", res->status),
              SM_LD("duration_ms", ms), SM_LI("bytes", res->body_len),
              SM_LS("key", who ? who : "anonymous"), SM_LS("client", c->peer));
}

/* Queues one serialized response; logs the request line. With deferred requests still
 * unanswered, the response waits in a slot behind them. */
static void conn_queue(admin_conn *c, const http_response *res, int keep_alive, const char *method,
                       const char *path, uint64_t start_ns, const char *who) {
  conn_slot *sl = NULL;
  if (!sm_list_empty(&c->slots) && (sl = sm_calloc(1, sizeof(*sl))) == NULL) {
    conn_close(c);
    return;
  }
  if (http_response_serialize(res, keep_alive, sl ? &sl->bytes : &c->out) != 0) {
    /* Out of memory: there is no way to answer in order, so give up on this client. */
    free(sl);
    conn_close(c);
    return;
  }
  log_request(c, res, method, path, start_ns, who);
  if (sl != NULL) {
    sm_list_init(&sl->tnode);
    sl->c = c;
    sl->keep = keep_alive;
    sm_list_push_back(&c->slots, &sl->node);
    c->nslots++;
    return;
  }
  c->out_n++;
  mark_dirty(c);
}

/* Stops reading and writes what is queued, then shuts the connection down. */
static void conn_drain(admin_conn *c) {
  if (c->state != C_OPEN)
    return;
  c->state = C_DRAIN;
  read_stop(c);
  http_buf_finish(&c->stash);
  mark_dirty(c);
}

/* Answers an error that ends the connection (bad input, limit, timeout). */
static void conn_fail(admin_conn *c, int status) {
  if (c->state != C_OPEN)
    return;
  http_response res;
  http_response_init(&res);
  switch (status) {
  case 408:
    http_response_error(&res, 408, "request_timeout", "request not received in time");
    break;
  case 413:
    http_response_error(&res, 413, "payload_too_large", "request body too large");
    break;
  case 431:
    http_response_error(&res, 431, "headers_too_large", "request header fields too large");
    break;
  case 500:
    http_response_error(&res, 500, "internal", "out of memory");
    break;
  default:
    http_response_error(&res, 400, "bad_request", "malformed HTTP request");
    break;
  }
  conn_queue(c, &res, 0, NULL, NULL, 0, NULL);
  http_response_finish(&res);
  conn_drain(c);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  admin_conn *c = req->data;
  if (c->state == C_CLOSING)
    return;
  if (status < 0)
    conn_close(c);
}

/* All output is written: half-close, then discard input a little while so the client reads
 * our last response instead of a reset. */
static void on_write(uv_write_t *req, int status);

static void conn_shutdown(admin_conn *c) {
  if (c->peer_eof) {
    conn_close(c);
    return;
  }
  c->state = C_LINGER;
  if (c->tls) {
    /* close_notify first: the client then knows our last response is whole. */
    net_tls_shutdown(c->tls);
    if (tls_take_all(c) == 0 && c->wbuf.len && !c->writing) {
      uv_buf_t b = uv_buf_init(c->wbuf.p, (unsigned)c->wbuf.len);
      c->wreq.data = c;
      if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) == 0)
        c->writing = 1;
    }
  }
  c->sreq.data = c;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  read_start(c);
  conn_update_timer(c);
}

static void on_write(uv_write_t *req, int status) {
  admin_conn *c = req->data;
  c->writing = 0;
  if (c->state == C_CLOSING)
    return;
  c->wbuf.len = 0;
  c->w_n = 0;
  if (c->wbuf.cap > ADMIN_BUF_KEEP)
    http_buf_finish(&c->wbuf);
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->state == C_LINGER) {
    /* (the close_notify went out) */
  } else if (c->out.len || tls_pending(c)) {
    mark_dirty(c);
  } else if (c->state == C_DRAIN) {
    if (c->nslots == 0) {
      conn_shutdown(c);
      return;
    }
  } else if (c->state == C_OPEN && !backpressured(c)) {
    /* Output drained: go on with the requests held back. */
    if (c->stash.len) {
      http_buf s = c->stash;
      c->stash = (http_buf){0};
      conn_input(c, s.p, s.len);
      http_buf_finish(&s);
    }
    if (c->state == C_OPEN && c->stash.len == 0 && !backpressured(c))
      read_start(c);
  }
  conn_update_timer(c);
}

/* conn_flush with TLS: the gathered plaintext is encrypted in one go, then everything the
 * session has to send (handshake, records) is written. */
static void conn_flush_tls(admin_conn *c) {
  if (!c->writing && c->out.len) {
    if (net_tls_write(c->tls, (const uint8_t *)c->out.p, c->out.len) != 0) {
      conn_close(c); /* (SM_EAGAIN: an error answer before the handshake completed) */
      return;
    }
    c->w_n = c->out_n;
    c->out.len = 0;
    c->out_n = 0;
  }
  if (!c->writing && net_tls_pending(c->tls)) {
    if (tls_take_all(c) != 0) {
      conn_close(c);
      return;
    }
    uv_buf_t b = uv_buf_init(c->wbuf.p, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
      conn_close(c);
      return;
    }
    c->writing = 1;
  } else if (!c->writing && c->state == C_DRAIN && c->nslots == 0) {
    conn_shutdown(c);
    return;
  }
  conn_update_timer(c);
}

static void conn_flush(admin_conn *c) {
  if (c->state == C_CLOSING)
    return;
  if (c->tls) {
    conn_flush_tls(c);
    return;
  }
  if (!c->writing && c->out.len) {
    http_buf t = c->wbuf;
    c->wbuf = c->out;
    c->w_n = c->out_n;
    c->out = t;
    c->out.len = 0;
    c->out_n = 0;
    uv_buf_t b = uv_buf_init(c->wbuf.p, (unsigned)c->wbuf.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
      conn_close(c);
      return;
    }
    c->writing = 1;
  } else if (!c->writing && c->state == C_DRAIN && c->nslots == 0) {
    conn_shutdown(c);
    return;
  }
  conn_update_timer(c);
}

static void flush_all(struct admin_server *srv) {
  sm_list *n;
  while ((n = sm_list_first(&srv->dirty)) != NULL) {
    admin_conn *c = SM_LIST_ENTRY(n, admin_conn, dnode);
    unmark_dirty(c);
    conn_flush(c);
  }
  uv_check_stop(&srv->flusher);
  uv_idle_stop(&srv->kick);
}

static void on_flush(uv_check_t *h) {
  flush_all(h->data);
}

static void on_kick(uv_idle_t *h) {
  flush_all(h->data);
}

/* ---- deferred requests ---- */

static void on_defer_timer(uv_timer_t *t);

static void defer_timer_update(struct admin_server *srv) {
  if (srv->closing)
    return;
  conn_slot *head = timeout_head(srv);
  if (head == NULL) {
    uv_timer_stop(&srv->defer_timer);
    return;
  }
  uint64_t now = uv_now(srv->loop);
  uint64_t dl = head->deadline;
  uv_timer_start(&srv->defer_timer, on_defer_timer, dl > now ? dl - now : 0, 0);
}

static void timeout_remove(struct admin_server *srv, conn_slot *sl) {
  if (!sm_list_linked(&sl->tnode))
    return;
  int was_head = timeout_head(srv) == sl;
  sm_list_remove(&sl->tnode);
  if (was_head)
    defer_timer_update(srv);
}

static void timeout_append(struct admin_server *srv, conn_slot *sl) {
  sl->deadline = uv_now(srv->loop) + srv->defer_timeout_ms;
  /* Every slot waits the same time: appending keeps the list sorted by deadline. */
  sm_list_push_back(&srv->timeouts, &sl->tnode);
  if (timeout_head(srv) == sl)
    defer_timer_update(srv);
}

/* Frees a slot taken off its connection's FIFO. */
static void slot_free(struct admin_server *srv, conn_slot *sl) {
  timeout_remove(srv, sl);
  http_deferred_release(sl->d);
  http_buf_finish(&sl->bytes);
  free(sl);
}

/* Drops every slot of the connection (closing, or answers after a final one). */
static void conn_drop_slots(admin_conn *c) {
  sm_list *n;
  while ((n = sm_list_pop_front(&c->slots)) != NULL)
    slot_free(c->srv, SM_LIST_ENTRY(n, conn_slot, node));
  c->nslots = 0;
}

static int slot_ready(conn_slot *sl) {
  return sl->d == NULL || http_deferred_response(sl->d) != NULL;
}

/* Moves the answered head of the FIFO into `out` (written in this turn's flush). */
static void conn_advance(admin_conn *c) {
  struct admin_server *srv = c->srv;
  conn_slot *sl;
  while (c->state != C_CLOSING && (sl = slot_head(c)) != NULL && slot_ready(sl)) {
    sm_list_remove(&sl->node);
    c->nslots--;
    int keep = sl->keep, err = 0;
    if (sl->d != NULL) {
      http_response *res = http_deferred_response(sl->d);
      keep = keep && !res->close && !srv->stopping;
      err = http_response_serialize(res, keep, &c->out);
      if (!err)
        log_request(c, res, sl->method, sl->path, sl->start_ns, sl->who);
    } else {
      err = http_buf_append(&c->out, sl->bytes.p, sl->bytes.len);
    }
    slot_free(srv, sl);
    if (err) {
      conn_close(c);
      return;
    }
    c->out_n++;
    mark_dirty(c);
    if (!keep) {
      /* This answer ends the connection: the requests behind it are not answered. */
      conn_drop_slots(c);
      conn_drain(c);
    }
  }
  conn_update_timer(c);
}

static void on_deferred_ready(void *ud, http_deferred *d) {
  (void)d;
  conn_slot *sl = ud;
  admin_conn *c = sl->c;
  timeout_remove(c->srv, sl);
  if (sl == slot_head(c))
    conn_advance(c);
}

static void on_defer_timer(uv_timer_t *t) {
  struct admin_server *srv = t->data;
  uint64_t now = uv_now(srv->loop);
  conn_slot *sl;
  while ((sl = timeout_head(srv)) != NULL && sl->deadline <= now) {
    admin_conn *c = sl->c;
    timeout_remove(srv, sl);
    /* The handler's late answer is dropped from now on. */
    http_deferred_release(sl->d);
    sl->d = NULL;
    http_response res;
    http_response_init(&res);
    http_response_error(&res, 503, "timeout", "the request was not answered in time");
    http_response_header(&res, "Retry-After", ADMIN_DEFER_RETRY_AFTER);
    sl->keep = sl->keep && !srv->stopping;
    int err = http_response_serialize(&res, sl->keep, &sl->bytes);
    if (!err)
      log_request(c, &res, sl->method, sl->path, sl->start_ns, sl->who);
    http_response_finish(&res);
    sm_log_warn("admin", "deferred request timed out", SM_LS("path", sl->path),
                SM_LS("client", c->peer));
    if (err)
      conn_close(c);
    else if (sl == slot_head(c))
      conn_advance(c);
  }
  defer_timer_update(srv);
}

/* Takes over the deferred answer of req: a slot at the tail of the FIFO. Returns 0 or
 * SM_ENOMEM (then the connection is closed). */
static int conn_defer(admin_conn *c, http_request *req, http_deferred *d) {
  conn_slot *sl = sm_calloc(1, sizeof(*sl));
  if (sl == NULL) {
    http_deferred_release(d);
    conn_close(c);
    return SM_ENOMEM;
  }
  sm_list_init(&sl->tnode);
  sl->c = c;
  sl->d = d;
  sl->keep = req->keep_alive;
  sl->method = req->method;
  snprintf(sl->path, sizeof(sl->path), "%s", req->path ? req->path : "-");
  snprintf(sl->who, sizeof(sl->who), "%s", admin_request_who(req));
  sl->start_ns = req->start_ns;
  sm_list_push_back(&c->slots, &sl->node);
  c->nslots++;
  if (http_deferred_response(d) != NULL) {
    conn_advance(c); /* answered inside the handler already */
  } else {
    http_deferred_watch(d, on_deferred_ready, sl);
    timeout_append(c->srv, sl);
  }
  return 0;
}

/* ---- requests ---- */

static int conn_on_request(void *ud, http_request *req) {
  admin_conn *c = ud;
  req->peer = c->peer;
  http_response res;
  http_response_init(&res);
  admin_router_dispatch(&c->srv->router, req, &res);
  int keep;
  if (res.deferred != NULL) {
    http_deferred *d = res.deferred;
    res.deferred = NULL;
    keep = req->keep_alive && !c->srv->stopping;
    conn_defer(c, req, d);
  } else {
    keep = req->keep_alive && !res.close && !c->srv->stopping;
    conn_queue(c, &res, keep, req->method, req->path, req->start_ns, admin_request_who(req));
  }
  http_response_finish(&res);
  http_request_free(req);
  if (c->state != C_OPEN)
    return 1;
  if (!keep) {
    conn_drain(c);
    return 1;
  }
  return backpressured(c);
}

static void conn_input(admin_conn *c, const char *data, size_t len) {
  int status = 0;
  long used = http1_feed(c->http, data, len, &status);
  if (used < 0) {
    conn_fail(c, status);
  } else if ((size_t)used < len && c->state == C_OPEN) {
    /* Paused for backpressure: keep the rest for when the output drains. */
    read_stop(c);
    if (http_buf_append(&c->stash, data + used, len - (size_t)used) != 0)
      conn_close(c);
  } else if (http1_take_continue(c->http) && sm_list_empty(&c->slots)) {
    /* (Behind unanswered requests an interim answer would jump the queue: the client then
     * sends its body after its own expect timeout.) */
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (http_buf_append(&c->out, cont, sizeof(cont) - 1) == 0)
      mark_dirty(c);
  }
  conn_update_timer(c);
}

/* The client finished sending (EOF, or a TLS close_notify). */
static void conn_peer_eof(admin_conn *c) {
  read_stop(c);
  c->peer_eof = 1;
  if (c->state == C_OPEN && (c->out.len || c->writing || c->stash.len || c->nslots)) {
    /* Answer what was asked before the half-close, then go. The stash is dropped: those
     * requests were never parsed, and the client has left. */
    conn_drain(c);
  } else if (c->state == C_OPEN) {
    conn_close(c);
  }
}

/* Ciphertext from the socket: decrypt everything the session can, and parse it; input that
 * arrives while the parser is held back (backpressure) joins the stash, in order. */
static void conn_tls_input(admin_conn *c, const char *data, size_t len) {
  if (net_tls_feed(c->tls, (const uint8_t *)data, len) != 0) {
    conn_close(c);
    return;
  }
  for (;;) {
    ssize_t n = net_tls_read(c->tls, c->srv->tbuf, sizeof(c->srv->tbuf));
    if (n == 0)
      break;
    if (n == SM_ECLOSED) {
      conn_peer_eof(c);
      break;
    }
    if (n < 0) {
      sm_log_info("admin", "TLS failed", SM_LS("client", c->peer),
                  SM_LS("reason", net_tls_error(c->tls)));
      conn_close(c);
      return;
    }
    if (c->state != C_OPEN)
      continue; /* draining: the rest is discarded, but the session must still read it */
    if (c->stash.len) {
      if (http_buf_append(&c->stash, c->srv->tbuf, (size_t)n) != 0) {
        conn_close(c);
        return;
      }
    } else {
      conn_input(c, (const char *)c->srv->tbuf, (size_t)n);
    }
  }
  if (c->state != C_CLOSING && net_tls_pending(c->tls))
    mark_dirty(c); /* handshake messages, session tickets */
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  admin_conn *c = s->data;
  if (nread == 0 || c->state == C_CLOSING)
    return;
  if (nread < 0) {
    read_stop(c);
    if (nread != UV_EOF || c->state == C_LINGER) {
      conn_close(c);
      return;
    }
    conn_peer_eof(c);
    return;
  }
  if (c->state != C_OPEN)
    return; /* lingering (or draining): input is discarded */
  if (c->tls)
    conn_tls_input(c, buf->base, (size_t)nread);
  else
    conn_input(c, buf->base, (size_t)nread);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t) {
  admin_conn *c = t->data;
  enum timer_kind k = c->tkind;
  c->tkind = T_NONE;
  if (k == T_REQUEST && c->state == C_OPEN) {
    sm_log_info("admin", "request timed out", SM_LS("client", c->peer));
    conn_fail(c, 408);
    conn_update_timer(c);
  } else {
    conn_close(c);
  }
}

static void conn_update_timer(admin_conn *c) {
  if (c->state == C_CLOSING)
    return;
  struct admin_server *srv = c->srv;
  enum timer_kind k;
  uint64_t seq = 0, ms;
  if (c->state == C_LINGER) {
    k = T_LINGER;
    ms = HTTP_LINGER_MS;
  } else if (c->writing || c->out.len || (c->state == C_DRAIN && c->nslots == 0)) {
    k = T_WRITE; /* a client that does not read is dropped after the request timeout */
    ms = srv->request_timeout_ms;
  } else if ((seq = http1_pending(c->http)) != 0) {
    k = T_REQUEST;
    ms = srv->request_timeout_ms;
  } else if (c->nslots) {
    /* Waiting for handlers: the server's deferred timeout bounds that, not the idle timeout. */
    if (c->tkind != T_NONE) {
      uv_timer_stop(&c->timer);
      c->tkind = T_NONE;
    }
    return;
  } else {
    k = T_IDLE;
    /* A TLS handshake must finish as fast as a request must arrive. */
    ms = c->tls && !net_tls_established(c->tls) ? srv->request_timeout_ms : srv->idle_timeout_ms;
  }
  if (k == c->tkind && (k != T_REQUEST || seq == c->tseq))
    return;
  c->tkind = k;
  c->tseq = seq;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *h) {
  admin_conn *c = h->data;
  struct admin_server *srv = c->srv;
  srv->open_handles--;
  if (--c->handles == 0) {
    http1_destroy(c->http);
    net_tls_destroy(c->tls);
    http_buf_finish(&c->out);
    http_buf_finish(&c->wbuf);
    http_buf_finish(&c->stash);
    free(c);
  }
  server_maybe_free(srv);
}

static void conn_close(admin_conn *c) {
  if (c->state == C_CLOSING)
    return;
  struct admin_server *srv = c->srv;
  c->state = C_CLOSING;
  unmark_dirty(c);
  conn_drop_slots(c);
  sm_list_remove(&c->cnode);
  srv->nconns--;
  read_stop(c);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void peer_name(uv_tcp_t *t, char *out, size_t size) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  char ip[64] = "?";
  int port = 0;
  snprintf(out, size, "unknown");
  if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) != 0)
    return;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    uv_ip4_name(a, ip, sizeof(ip));
    port = ntohs(a->sin_port);
    snprintf(out, size, "%s:%d", ip, port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    uv_ip6_name(a, ip, sizeof(ip));
    port = ntohs(a->sin6_port);
    snprintf(out, size, "[%s]:%d", ip, port);
  }
}

static void on_reject_closed(uv_handle_t *h) {
  struct admin_server *srv = h->data;
  free(h);
  srv->open_handles--;
  server_maybe_free(srv);
}

/* Over ADMIN_MAX_CONNECTIONS: accept (so the kernel queue does not fill), answer 503 with
 * whatever fits in the socket buffer right now, and close. */
static void reject_connection(struct admin_server *srv) {
  uv_tcp_t *t = sm_malloc(sizeof(*t));
  if (t == NULL)
    return;
  uv_tcp_init(srv->loop, t);
  t->data = srv;
  srv->open_handles++;
  if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)t) == 0 && srv->tls_ctx == NULL) {
    uv_buf_t b = uv_buf_init(srv->busy.p, (unsigned)srv->busy.len);
    if (srv->busy.len)
      (void)uv_try_write((uv_stream_t *)t, &b, 1);
  }
  sm_log_warn("admin", "connection refused: limit reached",
              SM_LI("max_connections", srv->max_connections));
  uv_close((uv_handle_t *)t, on_reject_closed);
}

static void on_connection(uv_stream_t *l, int status) {
  struct admin_server *srv = l->data;
  if (status < 0) {
    sm_log_warn("admin", "accept failed", SM_LE(sm_err_from_uv(status)));
    return;
  }
  if (srv->stopping || srv->nconns >= srv->max_connections) {
    reject_connection(srv);
    return;
  }
  admin_conn *c = sm_calloc(1, sizeof(*c));
  http1_config hc = {
      .max_header_bytes = srv->max_header_bytes,
      .max_body_bytes = srv->max_body_bytes,
      .on_request = conn_on_request,
      .ud = c,
  };
  if (c == NULL || http1_create(&hc, &c->http) != 0 ||
      (srv->tls_ctx && net_tls_create(srv->tls_ctx, NULL, &c->tls) != 0)) {
    if (c)
      http1_destroy(c->http);
    free(c);
    reject_connection(srv);
    return;
  }
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles = 2;
  srv->open_handles += 2;
  sm_list_init(&c->slots);
  sm_list_init(&c->dnode);
  sm_list_push_front(&srv->conns, &c->cnode);
  srv->nconns++;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  peer_name(&c->tcp, c->peer, sizeof(c->peer));
  read_start(c);
  conn_update_timer(c);
}

/* ---- public ---- */

int admin_server_create(uv_loop_t *loop, const admin_server_config *cfg, const admin_api *api,
                        struct admin_server **out) {
  if (loop == NULL || cfg == NULL || api == NULL || out == NULL || cfg->host == NULL ||
      strlen(cfg->host) >= sizeof(((struct admin_server *)0)->host) || cfg->port < 0 ||
      cfg->port > 65535)
    return SM_EINVAL;
  struct admin_server *srv = sm_calloc(1, sizeof(*srv));
  if (srv == NULL)
    return SM_ENOMEM;
  srv->loop = loop;
  srv->api = *api;
  srv->addr = cfg->addr ? cfg->addr : cfg->host;
  srv->max_connections = cfg->max_connections;
  srv->max_body_bytes = cfg->max_body_bytes;
  srv->max_header_bytes = cfg->max_header_bytes;
  srv->bound_port = -1;
  sm_list_init(&srv->conns);
  sm_list_init(&srv->dirty);
  sm_list_init(&srv->timeouts);
  srv->request_timeout_ms = secs_to_ms(cfg->request_timeout_s);
  srv->idle_timeout_ms = secs_to_ms(cfg->idle_timeout_s);
  /* A handler waiting on the store gets as long as a client has to send its request. */
  srv->defer_timeout_ms = srv->request_timeout_ms;
  snprintf(srv->host, sizeof(srv->host), "%s", cfg->host);
  srv->port = cfg->port;
  admin_router_init(&srv->router, &srv->api);
  int err = admin_security_init(&srv->sec, &cfg->security);
  if (err) {
    free(srv);
    return err;
  }
  srv->router.guard = admin_security_guard;
  srv->router.guard_ud = &srv->sec;
  if (cfg->tls_enabled) {
    net_tls_config tc = {
        .cert_file = cfg->tls_cert_file, .key_file = cfg->tls_key_file, .http1 = 1};
    err = net_tls_ctx_create_server(&tc, &srv->tls_ctx);
    if (err) {
      sm_log_error("admin", "cannot set up admin TLS", SM_LE(err));
      admin_security_finish(&srv->sec);
      free(srv);
      return err;
    }
  }
  err = admin_handlers_register(&srv->router);
  http_response busy;
  http_response_init(&busy);
  http_response_error(&busy, 503, "unavailable", "too many admin connections");
  http_response_header(&busy, "Retry-After", "1");
  if (!err)
    err = http_response_serialize(&busy, 0, &srv->busy);
  http_response_finish(&busy);
  if (err) {
    http_buf_finish(&srv->busy);
    admin_security_finish(&srv->sec);
    net_tls_ctx_destroy(srv->tls_ctx);
    free(srv);
    return err;
  }
  uv_tcp_init(loop, &srv->listener);
  uv_check_init(loop, &srv->flusher);
  uv_idle_init(loop, &srv->kick);
  uv_timer_init(loop, &srv->defer_timer);
  srv->listener.data = srv->flusher.data = srv->kick.data = srv->defer_timer.data = srv;
  srv->open_handles = 4;
  *out = srv;
  return 0;
}

int admin_server_listen(struct admin_server *srv) {
  struct sockaddr_storage ss;
  if (uv_ip4_addr(srv->host, srv->port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(srv->host, srv->port, (struct sockaddr_in6 *)&ss) != 0)
    return SM_EADDR;
  int rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&srv->listener, ADMIN_BACKLOG, on_connection);
  if (rc != 0) {
    sm_log_error("admin", "cannot listen", SM_LS("addr", srv->addr),
                 SM_LS("reason", uv_strerror(rc)));
    return rc == UV_EADDRINUSE || rc == UV_EADDRNOTAVAIL || rc == UV_EACCES ? SM_EADDR
                                                                            : sm_err_from_uv(rc);
  }
  struct sockaddr_storage name;
  int len = sizeof(name);
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&name, &len) == 0)
    srv->bound_port = ntohs(name.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&name)->sin6_port
                                                       : ((struct sockaddr_in *)&name)->sin_port);
  sm_log_info("admin", "listening", SM_LS("addr", srv->addr), SM_LI("port", srv->bound_port),
              SM_LB("tls", srv->tls_ctx != NULL));
  return 0;
}

int admin_server_port(const struct admin_server *srv) {
  return srv->bound_port;
}

admin_router *admin_server_router(struct admin_server *srv) {
  return &srv->router;
}

size_t admin_server_connections(const struct admin_server *srv) {
  return srv->nconns;
}

static void close_listener(struct admin_server *srv) {
  if (srv->listener_closed)
    return;
  srv->listener_closed = 1;
  uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
}

void admin_server_stop_accepting(struct admin_server *srv) {
  if (srv == NULL || srv->stopping)
    return;
  srv->stopping = 1;
  close_listener(srv);
  SM_LIST_FOREACH_SAFE(it, tmp, &srv->conns) {
    admin_conn *c = SM_LIST_ENTRY(it, admin_conn, cnode);
    if (c->state == C_OPEN && !c->writing && c->out.len == 0 && c->stash.len == 0 &&
        c->nslots == 0 && http1_pending(c->http) == 0)
      conn_close(c);
  }
}

void admin_server_close(struct admin_server *srv, void (*cb)(void *ud), void *ud) {
  if (srv == NULL || srv->closing)
    return;
  srv->stopping = 1;
  srv->closing = 1;
  srv->close_cb = cb;
  srv->close_ud = ud;
  close_listener(srv);
  uv_check_stop(&srv->flusher);
  uv_idle_stop(&srv->kick);
  uv_close((uv_handle_t *)&srv->flusher, on_handle_closed);
  uv_close((uv_handle_t *)&srv->kick, on_handle_closed);
  uv_timer_stop(&srv->defer_timer);
  uv_close((uv_handle_t *)&srv->defer_timer, on_handle_closed);
  sm_list *n;
  while ((n = sm_list_first(&srv->conns)) != NULL)
    conn_close(SM_LIST_ENTRY(n, admin_conn, cnode));
}
