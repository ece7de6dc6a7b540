/* server.c - the HTTP/1.1 server on net/tcp (see server.h).
 *
 * Per connection (an hconn, the net_conn's protocol data): an llhttp parser (http1.c), the
 * unparsed rest of the input held back while the output is backed up (`stash`), and the FIFO of
 * unanswered requests (`slots`). The transport (net/tcp) owns the socket, TLS, the gathered
 * output written once per loop turn, the write stall limit and the linger after a final answer.
 *
 * Deferred responses (http_response_defer): a request whose handler answers later gets a slot in
 * the connection's FIFO; every later answer of that connection queues behind it (serialized at
 * once, held in its slot) so pipelined answers keep request order. Slots count toward
 * HTTP_PIPELINE_MAX. A completion only marks its slot ready and moves the ready head of the FIFO
 * to the transport, which writes it at the end of the loop turn. Every waiting slot is also on
 * the server's timeout list: slots join it in time order with the same timeout, so the list is
 * sorted by deadline and one timer serves them all. At the deadline the slot answers 503 with
 * Retry-After and releases the handler's deferred object, whose late completion is then
 * dropped; a connection that closes releases its slots the same way.
 *
 * A connection's states: H_OPEN reads requests; H_DRAIN has queued its final answer and waits for
 * the answers before it (reading held); H_DONE has handed the connection to net_conn_close.
 *
 * The connections in H_OPEN are on the server's `open` list in the order they opened: that list
 * is what max_connections counts, where a newcomer looks for a connection to evict (a linear
 * scan: the limit is in the thousands; a scan happens when the server is full, or on each accept
 * with a per-address limit), and what the per-address limit counts. One http1_budget, shared by
 * every connection's parser, bounds the request bodies being received.
 */
#include "http/server.h"

#include "http/http1.h"
#include "net/tcp.h"
#include "net/tls.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFER_RETRY_AFTER "1" /* Retry-After of the 503 of a deferred request timed out */
#define BUSY_RETRY_AFTER "1"  /* Retry-After of the 503 when the body budget is spent */
#define FULL_LOG_MS 1000      /* at most one "connection limit reached" line per this */

enum hstate { H_OPEN = 0, H_DRAIN, H_DONE };
enum tkind { T_NONE = 0, T_IDLE, T_HEADER, T_REQUEST, T_WRITE };

typedef struct hconn hconn;

/* One request answered later, or an answer waiting behind one (see the top of the file). */
typedef struct hslot {
  sm_list node;  /* the connection's FIFO */
  sm_list tnode; /* the server's timeout list (linked while waiting on the handler) */
  hconn *hc;
  http_deferred *d;   /* the handler's answer to come; NULL once `bytes` holds the answer */
  http_buf bytes;     /* the serialized answer (when d is NULL) */
  int keep;           /* request: client allows keep-alive; serialized: the answer keeps it */
  uint64_t deadline;  /* uv_now() ms */
  const char *method; /* static text */
  char path[160];     /* for the request log, truncated */
  char who[40];       /* the caller's name, for the request log */
  uint64_t start_ns;
} hslot;

struct hconn {
  http_server *srv;
  net_conn *c;
  http1_parser *http;
  sm_list node;               /* the server's `open` list while H_OPEN (oldest first) */
  uint64_t since;             /* uv_now() ms: opened, then the last time a request was answered */
  uint64_t served;            /* requests handed to the handler (or answered on their headers) */
  uint64_t head_due, req_due; /* deadlines of the request being received (tseq) */
  uint64_t tdue;              /* when the timer is due */
  enum hstate state;
  http_buf stash; /* input not parsed yet because output backed up */
  sm_list slots;  /* hslot.node: unanswered (deferred) requests and answers behind them */
  size_t nslots;
  size_t unsent;     /* answers handed to the transport whose bytes are not all written */
  enum tkind tkind;  /* deadline the timer runs for */
  uint64_t tseq;     /* request sequence the T_REQUEST deadline belongs to */
  unsigned held : 1; /* reading held (net_conn_hold) */
};

struct http_server {
  uv_loop_t *loop;
  http_server_config cfg; /* addr and log_name are owned copies */
  net_listener *listener;
  net_tls_ctx *tls_ctx; /* NULL: plain HTTP */
  uv_timer_t defer_timer;
  sm_list timeouts; /* hslot.tnode, earliest deadline first */
  uint64_t request_timeout_ms, idle_timeout_ms, defer_timeout_ms, header_timeout_ms;
  sm_list open; /* hconn.node: the connections in H_OPEN, in the order they opened */
  size_t nopen;
  http1_budget budget; /* request bodies being received, across connections */
  /* The "connection limit reached" line: what happened since it was last written. */
  uint64_t full_logged_at;
  size_t evicted, refused, refused_addr;
  int listening;
  int stopping; /* no keep-alive from now on */
  int closing;
  http_buf busy;    /* the serialized 503 for connections beyond the limit */
  http_buf scratch; /* serializes one answer at a time */
  void (*close_cb)(void *ud);
  void *close_ud;
};

static void conn_update_timer(hconn *hc);
static void conn_advance(hconn *hc);
static void conn_input(hconn *hc, const char *data, size_t len);

static uint64_t secs_to_ms(double s) {
  return s <= 0 ? 1 : (uint64_t)(s * 1000.0 + 0.5);
}

/* Leaves H_OPEN: the connection stops counting toward max_connections (what remains of it is
 * bounded by the transport's limit) and can no longer be evicted. */
static void conn_set_state(hconn *hc, enum hstate st) {
  if (hc->state == H_OPEN && st != H_OPEN && sm_list_linked(&hc->node)) {
    sm_list_remove(&hc->node);
    hc->srv->nopen--;
  }
  hc->state = st;
}

/* ---- output ---- */

static int backpressured(const hconn *hc) {
  return hc->unsent + hc->nslots >= HTTP_PIPELINE_MAX ||
         net_conn_output(hc->c) >= HTTP_OUTPUT_HIGH_WATER;
}

static void conn_hold(hconn *hc, int hold) {
  if ((int)hc->held == hold)
    return;
  hc->held = hold != 0;
  net_conn_hold(hc->c, hold);
}

/* Closes at once (out of memory, timeouts): nothing more can be answered in order. */
static void conn_abort(hconn *hc, int reason) {
  if (hc->state == H_DONE)
    return;
  conn_set_state(hc, H_DONE);
  net_conn_close(hc->c, reason, 0);
}

/* Hands bytes to the transport (written at the end of the loop turn). */
static int conn_write(hconn *hc, const char *p, size_t n) {
  int err = net_conn_write(hc->c, (const uint8_t *)p, n);
  if (err) {
    conn_abort(hc, err);
    return err;
  }
  return 0;
}

static void log_request(hconn *hc, const http_response *res, const char *method, const char *path,
                        uint64_t start_ns, const char *who) {
  http_server *srv = hc->srv;
  if (!srv->cfg.log_requests)
    return;
  double ms = start_ns ? (double)(uv_hrtime() - start_ns) / 1e6 : 0.0;
  sm_log_info(srv->cfg.log_name, "request", SM_LS("method", method ? method : "-"),
              SM_LS("path", path ? path : "-"), SM_LI("status", res->status),
              SM_LD("duration_ms", ms), SM_LI("bytes", res->body_len),
              SM_LS("key", who ? who : "anonymous"), SM_LS("client", net_conn_peer(hc->c)));
}

static const char *request_who(http_server *srv, const http_request *req) {
  const char *w = srv->cfg.who ? srv->cfg.who(req) : NULL;
  return w ? w : "anonymous";
}

/* Queues one serialized answer; logs the request line. With deferred requests still unanswered,
 * the answer waits in a slot behind them. */
static void conn_queue(hconn *hc, const http_response *res, int keep_alive, const char *method,
                       const char *path, uint64_t start_ns, const char *who) {
  http_server *srv = hc->srv;
  hslot *sl = NULL;
  if (hc->nslots > 0 && (sl = sm_calloc(1, sizeof(*sl))) == NULL) {
    conn_abort(hc, SM_ENOMEM);
    return;
  }
  http_buf *dst = sl ? &sl->bytes : &srv->scratch;
  srv->scratch.len = 0;
  if (http_response_serialize(res, keep_alive, dst) != 0) {
    /* Out of memory: there is no way to answer in order, so give up on this client. */
    http_buf_finish(dst);
    free(sl);
    conn_abort(hc, SM_ENOMEM);
    return;
  }
  log_request(hc, res, method, path, start_ns, who);
  if (sl != NULL) {
    sl->hc = hc;
    sl->keep = keep_alive;
    sm_list_init(&sl->tnode);
    sm_list_push_back(&hc->slots, &sl->node);
    hc->nslots++;
    return;
  }
  if (conn_write(hc, srv->scratch.p, srv->scratch.len) == 0)
    hc->unsent++;
}

/* Stops reading; the queued answers go out, then the connection closes (on_flush). */
static void conn_drain(hconn *hc) {
  if (hc->state != H_OPEN)
    return;
  conn_set_state(hc, H_DRAIN);
  conn_hold(hc, 1);
  http_buf_finish(&hc->stash);
  net_conn_want_flush(hc->c);
}

/* Answers an error that ends the connection (bad input, limit, timeout). */
static void conn_fail(hconn *hc, int status) {
  if (hc->state != H_OPEN)
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
  case 503:
    http_response_error(&res, 503, "unavailable",
                        "too many request bodies are being received; retry later");
    http_response_header(&res, "Retry-After", BUSY_RETRY_AFTER);
    break;
  default:
    http_response_error(&res, 400, "bad_request", "malformed HTTP request");
    break;
  }
  conn_queue(hc, &res, 0, NULL, NULL, 0, NULL);
  http_response_finish(&res);
  conn_drain(hc);
}

/* ---- deferred requests ---- */

static void on_defer_timer(uv_timer_t *t);

static void defer_timer_update(http_server *srv) {
  if (srv->closing)
    return;
  sm_list *n = sm_list_first(&srv->timeouts);
  if (n == NULL) {
    uv_timer_stop(&srv->defer_timer);
    return;
  }
  uint64_t now = uv_now(srv->loop);
  uint64_t dl = SM_LIST_ENTRY(n, hslot, tnode)->deadline;
  uv_timer_start(&srv->defer_timer, on_defer_timer, dl > now ? dl - now : 0, 0);
}

static void timeout_remove(http_server *srv, hslot *sl) {
  if (!sm_list_linked(&sl->tnode))
    return;
  int was_head = sm_list_first(&srv->timeouts) == &sl->tnode;
  sm_list_remove(&sl->tnode);
  if (was_head)
    defer_timer_update(srv);
}

static void timeout_append(http_server *srv, hslot *sl) {
  sl->deadline = uv_now(srv->loop) + srv->defer_timeout_ms;
  sm_list_push_back(&srv->timeouts, &sl->tnode);
  if (sm_list_first(&srv->timeouts) == &sl->tnode)
    defer_timer_update(srv);
}

/* Frees a slot taken off its connection's FIFO. */
static void slot_free(http_server *srv, hslot *sl) {
  timeout_remove(srv, sl);
  http_deferred_release(sl->d);
  http_buf_finish(&sl->bytes);
  free(sl);
}

/* Drops every slot of the connection (closing, or answers after a final one). */
static void conn_drop_slots(hconn *hc) {
  sm_list *n;
  while ((n = sm_list_pop_front(&hc->slots)) != NULL)
    slot_free(hc->srv, SM_LIST_ENTRY(n, hslot, node));
  hc->nslots = 0;
}

static int slot_ready(hslot *sl) {
  return sl->d == NULL || http_deferred_response(sl->d) != NULL;
}

static hslot *conn_head(hconn *hc) {
  sm_list *n = sm_list_first(&hc->slots);
  return n ? SM_LIST_ENTRY(n, hslot, node) : NULL;
}

/* Hands the answered head of the FIFO to the transport (written at the end of this turn). */
static void conn_advance(hconn *hc) {
  http_server *srv = hc->srv;
  hslot *sl;
  while (hc->state != H_DONE && (sl = conn_head(hc)) != NULL && slot_ready(sl)) {
    sm_list_remove(&sl->node);
    hc->nslots--;
    int keep = sl->keep, err = 0;
    if (sl->d != NULL) {
      http_response *res = http_deferred_response(sl->d);
      keep = keep && !res->close && !srv->stopping;
      srv->scratch.len = 0;
      err = http_response_serialize(res, keep, &srv->scratch);
      if (!err) {
        log_request(hc, res, sl->method, sl->path, sl->start_ns, sl->who);
        err = net_conn_write(hc->c, (const uint8_t *)srv->scratch.p, srv->scratch.len);
      }
    } else {
      err = net_conn_write(hc->c, (const uint8_t *)sl->bytes.p, sl->bytes.len);
    }
    slot_free(srv, sl);
    if (err) {
      conn_abort(hc, err);
      return;
    }
    hc->unsent++;
    net_conn_want_flush(hc->c);
    if (!keep) {
      /* This answer ends the connection: the requests behind it are not answered. */
      conn_drop_slots(hc);
      conn_drain(hc);
    }
  }
  conn_update_timer(hc);
}

static void on_deferred_ready(void *ud, http_deferred *d) {
  (void)d;
  hslot *sl = ud;
  hconn *hc = sl->hc;
  timeout_remove(hc->srv, sl);
  if (sl == conn_head(hc))
    conn_advance(hc);
}

static void on_defer_timer(uv_timer_t *t) {
  http_server *srv = t->data;
  uint64_t now = uv_now(srv->loop);
  sm_list *n;
  while ((n = sm_list_first(&srv->timeouts)) != NULL &&
         SM_LIST_ENTRY(n, hslot, tnode)->deadline <= now) {
    hslot *sl = SM_LIST_ENTRY(n, hslot, tnode);
    hconn *hc = sl->hc;
    sm_list_remove(&sl->tnode);
    /* The handler's late answer is dropped from now on. */
    http_deferred_release(sl->d);
    sl->d = NULL;
    http_response res;
    http_response_init(&res);
    http_response_error(&res, 503, "timeout", "the request was not answered in time");
    http_response_header(&res, "Retry-After", DEFER_RETRY_AFTER);
    sl->keep = sl->keep && !srv->stopping;
    int err = http_response_serialize(&res, sl->keep, &sl->bytes);
    if (!err)
      log_request(hc, &res, sl->method, sl->path, sl->start_ns, sl->who);
    http_response_finish(&res);
    sm_log_warn(srv->cfg.log_name, "deferred request timed out", SM_LS("path", sl->path),
                SM_LS("client", net_conn_peer(hc->c)));
    if (err)
      conn_abort(hc, SM_ENOMEM);
    else if (sl == conn_head(hc))
      conn_advance(hc);
  }
  defer_timer_update(srv);
}

/* Takes over the deferred answer of req: a slot at the tail of the FIFO. */
static void conn_defer(hconn *hc, http_request *req, http_deferred *d) {
  hslot *sl = sm_calloc(1, sizeof(*sl));
  if (sl == NULL) {
    http_deferred_release(d);
    conn_abort(hc, SM_ENOMEM);
    return;
  }
  sl->hc = hc;
  sl->d = d;
  sl->keep = req->keep_alive;
  sl->method = req->method;
  snprintf(sl->path, sizeof(sl->path), "%s", req->path ? req->path : "-");
  snprintf(sl->who, sizeof(sl->who), "%s", request_who(hc->srv, req));
  sl->start_ns = req->start_ns;
  sm_list_init(&sl->tnode);
  sm_list_push_back(&hc->slots, &sl->node);
  hc->nslots++;
  if (http_deferred_response(d) != NULL) {
    conn_advance(hc); /* answered inside the handler already */
  } else {
    http_deferred_watch(d, on_deferred_ready, sl);
    timeout_append(hc->srv, sl);
  }
}

/* ---- requests ---- */

static int conn_on_request(void *ud, http_request *req) {
  hconn *hc = ud;
  http_server *srv = hc->srv;
  req->peer = net_conn_peer(hc->c);
  hc->served++;
  hc->since = net_conn_now(hc->c);
  int backed_up = srv->cfg.close_when_backed_up && backpressured(hc);
  http_response res;
  http_response_init(&res);
  srv->cfg.handle(srv->cfg.ud, req, &res);
  int keep;
  if (res.deferred != NULL) {
    http_deferred *d = res.deferred;
    res.deferred = NULL;
    keep = req->keep_alive && !srv->stopping && !backed_up;
    conn_defer(hc, req, d);
  } else {
    keep = req->keep_alive && !res.close && !srv->stopping && !backed_up;
    conn_queue(hc, &res, keep, req->method, req->path, req->start_ns, request_who(srv, req));
  }
  http_response_finish(&res);
  http_request_free(req);
  if (hc->state != H_OPEN)
    return 1;
  if (!keep) {
    conn_drain(hc);
    return 1;
  }
  /* close_when_backed_up: parse on, the next request finds out (and ends the connection). */
  return !srv->cfg.close_when_backed_up && backpressured(hc);
}

/* A request with a body has its header block: the admit hook may answer it before one byte of
 * the body is read (an unauthenticated upload costs no memory), and the connection ends. */
static int conn_on_headers(void *ud, http_request *req) {
  hconn *hc = ud;
  http_server *srv = hc->srv;
  if (srv->cfg.admit == NULL)
    return 0;
  req->peer = net_conn_peer(hc->c);
  http_response res;
  http_response_init(&res);
  if (!srv->cfg.admit(srv->cfg.ud, req, &res)) {
    http_response_finish(&res);
    req->admitted = 1;
    return 0;
  }
  assert(res.deferred == NULL); /* admit answers at once */
  hc->served++;
  conn_queue(hc, &res, 0, req->method, req->path, req->start_ns, request_who(srv, req));
  http_response_finish(&res);
  conn_drain(hc);
  return 1;
}

static void conn_input(hconn *hc, const char *data, size_t len) {
  int status = 0;
  long used = http1_feed(hc->http, data, len, &status);
  if (used < 0) {
    conn_fail(hc, status);
  } else if ((size_t)used < len && hc->state == H_OPEN) {
    /* Paused for backpressure: keep the rest for when the output drains. */
    conn_hold(hc, 1);
    if (http_buf_append(&hc->stash, data + used, len - (size_t)used) != 0)
      conn_abort(hc, SM_ENOMEM);
  } else if (hc->state == H_OPEN && http1_take_continue(hc->http) && hc->nslots == 0) {
    /* (Behind unanswered requests an interim answer would jump the queue: the client then
     * sends its body after its own expect timeout.) */
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_write(hc, cont, sizeof(cont) - 1);
  }
  conn_update_timer(hc);
}

/* ---- timers ---- */

/* One timer per connection, for the deadline that applies now:
 * - T_WRITE: output is waiting (or the final answer): a client that does not read is dropped
 *   after the request timeout;
 * - T_REQUEST: a request is arriving: its header block must be complete within the header
 *   timeout (counted from the connection's open for its first request, so a connection that
 *   trickles bytes gains nothing) and the whole request within the request timeout; then 408;
 * - T_HEADER: a connection that never sent a byte closes after the header timeout, in silence;
 * - T_IDLE: a keep-alive connection between requests closes after the idle timeout;
 * - none while deferred answers are awaited (the deferred timeout bounds those). */
static void conn_update_timer(hconn *hc) {
  if (hc->state == H_DONE)
    return;
  http_server *srv = hc->srv;
  uint64_t now = net_conn_now(hc->c), seq, due;
  enum tkind k;
  if (net_conn_output(hc->c) > 0 || (hc->state == H_DRAIN && hc->nslots == 0)) {
    k = T_WRITE;
    due = hc->tkind == k ? hc->tdue : now + srv->request_timeout_ms;
  } else if ((seq = http1_pending(hc->http)) != 0) {
    if (seq != hc->tseq) {
      hc->tseq = seq;
      hc->req_due = now + srv->request_timeout_ms;
      hc->head_due = (hc->served == 0 ? hc->since : now) + srv->header_timeout_ms;
    }
    k = T_REQUEST;
    due = http1_in_headers(hc->http) && hc->head_due < hc->req_due ? hc->head_due : hc->req_due;
  } else if (hc->nslots) {
    if (hc->tkind != T_NONE) {
      net_conn_set_timer(hc->c, 0);
      hc->tkind = T_NONE;
    }
    return;
  } else if (hc->served == 0) {
    k = T_HEADER;
    due = hc->since + srv->header_timeout_ms;
  } else {
    k = T_IDLE;
    due = hc->tkind == k ? hc->tdue : now + srv->idle_timeout_ms;
  }
  if (k == hc->tkind && due == hc->tdue)
    return;
  hc->tkind = k;
  hc->tdue = due;
  net_conn_set_timer(hc->c, due > now ? due : now);
}

/* ---- transport callbacks (net_conn_ops) ---- */

/* ---- the connection limit ---- */

/* Whether two peers ("ip:port", "[v6]:port") share their address. */
static int same_addr(const char *a, const char *b) {
  const char *ca = strrchr(a, ':'), *cb = strrchr(b, ':');
  size_t na = ca ? (size_t)(ca - a) : strlen(a), nb = cb ? (size_t)(cb - b) : strlen(b);
  return na == nb && memcmp(a, b, na) == 0;
}

/* The connection to close for a newcomer when the server is full, or NULL: one with nothing
 * asked or being answered (no request in progress past its header block, no answer queued or
 * awaited). Those that never completed a request go first, oldest first (idle sockets, slow
 * headers: what a flood holds); then idle keep-alive connections, longest idle first (their
 * clients reconnect, as after the idle timeout). A request being received with its headers
 * admitted, or being answered, is never cut. */
static hconn *evict_candidate(http_server *srv) {
  hconn *best = NULL;
  SM_LIST_FOREACH(n, &srv->open) {
    hconn *hc = SM_LIST_ENTRY(n, hconn, node);
    if (hc->nslots || hc->unsent || net_conn_output(hc->c) || hc->stash.len ||
        (http1_pending(hc->http) && !http1_in_headers(hc->http)))
      continue;
    if (best == NULL || (best->served && !hc->served) ||
        (!best->served == !hc->served && hc->since < best->since))
      best = hc;
  }
  return best;
}

static void log_full(http_server *srv) {
  uint64_t now = uv_now(srv->loop);
  if (srv->full_logged_at != 0 && now - srv->full_logged_at < FULL_LOG_MS)
    return;
  sm_log_warn(srv->cfg.log_name, "connection limit reached",
              SM_LI("max_connections", srv->cfg.max_connections),
              SM_LI("max_connections_per_addr", srv->cfg.max_connections_per_addr),
              SM_LI("evicted", srv->evicted), SM_LI("refused", srv->refused),
              SM_LI("refused_addr", srv->refused_addr));
  srv->full_logged_at = now;
  srv->evicted = srv->refused = srv->refused_addr = 0;
}

/* Makes room for a new connection from peer: 0 when it may open (after closing another, maybe),
 * else 1 (the caller refuses it). */
static int admit_connection(http_server *srv, const char *peer) {
  if (srv->cfg.max_connections_per_addr) {
    size_t same = 0;
    SM_LIST_FOREACH(n, &srv->open) {
      if (same_addr(net_conn_peer(SM_LIST_ENTRY(n, hconn, node)->c), peer))
        same++;
    }
    if (same >= srv->cfg.max_connections_per_addr) {
      srv->refused_addr++;
      log_full(srv);
      return 1;
    }
  }
  if (srv->nopen < srv->cfg.max_connections)
    return 0;
  hconn *victim = evict_candidate(srv);
  if (victim == NULL) {
    srv->refused++;
    log_full(srv);
    return 1;
  }
  sm_log_debug(srv->cfg.log_name, "connection evicted to make room",
               SM_LS("client", net_conn_peer(victim->c)), SM_LI("served", victim->served));
  srv->evicted++;
  log_full(srv);
  conn_abort(victim, SM_ECANCELED);
  return 0;
}

static int on_open(net_conn *c) {
  http_server *srv = net_listener_data(net_conn_listener(c));
  hconn *hc = sm_calloc(1, sizeof(*hc));
  if (hc == NULL)
    return SM_ENOMEM;
  http1_config pc = {
      .max_header_bytes = srv->cfg.max_header_bytes,
      .max_body_bytes = srv->cfg.max_body_bytes,
      .on_request = conn_on_request,
      .ud = hc,
      .on_headers = conn_on_headers,
      .budget = &srv->budget,
  };
  int err = http1_create(&pc, &hc->http);
  if (err) {
    free(hc);
    return err;
  }
  hc->srv = srv;
  hc->c = c;
  hc->since = net_conn_now(c);
  sm_list_init(&hc->slots);
  sm_list_init(&hc->node);
  net_conn_set_data(c, hc);
  if (admit_connection(srv, net_conn_peer(c))) {
    /* Full of connections in use: this one gets the 503 and goes. */
    hc->state = H_DRAIN;
    conn_hold(hc, 1);
    if (conn_write(hc, srv->busy.p, srv->busy.len) == 0) {
      hc->unsent++;
      net_conn_want_flush(c);
      conn_update_timer(hc);
    }
    return 0;
  }
  sm_list_push_back(&srv->open, &hc->node);
  srv->nopen++;
  conn_update_timer(hc);
  return 0;
}

static int on_read(net_conn *c, const uint8_t *data, size_t len) {
  hconn *hc = net_conn_data(c);
  if (hc->state != H_OPEN)
    return 0; /* draining: the rest is discarded */
  if (hc->stash.len) {
    /* Held back, but a TLS read decrypted more: it joins the stash, in order. */
    if (http_buf_append(&hc->stash, data, len) != 0)
      conn_abort(hc, SM_ENOMEM);
    return 0;
  }
  conn_input(hc, (const char *)data, len);
  return 0;
}

static int on_flush(net_conn *c) {
  hconn *hc = net_conn_data(c);
  if (hc->state == H_DONE)
    return 0;
  if (net_conn_output(c) == 0)
    hc->unsent = 0; /* everything handed over so far is written */
  if (hc->state == H_DRAIN) {
    if (hc->nslots > 0)
      return 0;
    /* The final answer is queued: write it, shut down, linger (net/tcp). */
    conn_set_state(hc, H_DONE);
    return SM_ECLOSED;
  }
  if (!backpressured(hc)) {
    /* Output drained: go on with the requests held back. */
    if (hc->stash.len) {
      http_buf s = hc->stash;
      hc->stash = (http_buf){0};
      conn_input(hc, s.p, s.len);
      http_buf_finish(&s);
    }
    if (hc->state == H_OPEN && hc->stash.len == 0 && !backpressured(hc))
      conn_hold(hc, 0);
  }
  conn_update_timer(hc);
  return 0;
}

static int on_timer(net_conn *c) {
  hconn *hc = net_conn_data(c);
  enum tkind k = hc->tkind;
  hc->tkind = T_NONE;
  if (k == T_REQUEST && hc->state == H_OPEN) {
    sm_log_info(hc->srv->cfg.log_name, "request timed out", SM_LS("client", net_conn_peer(c)));
    conn_fail(hc, 408);
    conn_update_timer(hc);
    return 0;
  }
  conn_set_state(hc, H_DONE);
  return SM_ETIMEDOUT;
}

/* The client finished sending (EOF, or a TLS close_notify). */
static int on_eof(net_conn *c) {
  hconn *hc = net_conn_data(c);
  if (hc->state != H_OPEN)
    return 0;
  if (net_conn_output(c) || hc->stash.len || hc->nslots) {
    /* Answer what was asked before the half-close, then go. The stash is dropped: those
     * requests were never parsed, and the client has left. */
    conn_drain(hc);
    return 0;
  }
  conn_set_state(hc, H_DONE);
  return SM_ECLOSED;
}

static void on_close(net_conn *c, int reason) {
  (void)reason;
  hconn *hc = net_conn_data(c);
  if (hc == NULL)
    return;
  conn_set_state(hc, H_DONE);
  conn_drop_slots(hc);
  http1_destroy(hc->http);
  http_buf_finish(&hc->stash);
  net_conn_set_data(c, NULL);
  free(hc);
}

static const net_conn_ops http_conn_ops = {
    .on_open = on_open,
    .on_read = on_read,
    .on_flush = on_flush,
    .on_timer = on_timer,
    .on_close = on_close,
    .on_eof = on_eof,
};

/* ---- server ---- */

static void server_free(http_server *srv) {
  http_buf_finish(&srv->busy);
  http_buf_finish(&srv->scratch);
  net_tls_ctx_destroy(srv->tls_ctx);
  free((char *)srv->cfg.addr);
  free((char *)srv->cfg.log_name);
  free(srv);
}

int http_server_create(uv_loop_t *loop, const http_server_config *cfg, http_server **out) {
  if (loop == NULL || cfg == NULL || out == NULL || cfg->handle == NULL || cfg->addr == NULL ||
      cfg->max_connections == 0 || cfg->max_header_bytes == 0)
    return SM_EINVAL;
  char host[256];
  int port;
  if (net_addr_split(cfg->addr, host, &port) != 0)
    return SM_EADDR;
  http_server *srv = sm_calloc(1, sizeof(*srv));
  if (srv == NULL)
    return SM_ENOMEM;
  srv->loop = loop;
  srv->cfg = *cfg;
  srv->cfg.addr = sm_strdup(cfg->addr);
  srv->cfg.log_name = sm_strdup(cfg->log_name ? cfg->log_name : "http");
  sm_list_init(&srv->timeouts);
  sm_list_init(&srv->open);
  srv->budget.max = cfg->max_buffered_body_bytes;
  srv->request_timeout_ms = secs_to_ms(cfg->request_timeout_s);
  /* The header block is part of the request: never more time than the request has. */
  srv->header_timeout_ms =
      cfg->header_timeout_s > 0 ? secs_to_ms(cfg->header_timeout_s) : srv->request_timeout_ms;
  if (srv->header_timeout_ms > srv->request_timeout_ms)
    srv->header_timeout_ms = srv->request_timeout_ms;
  srv->idle_timeout_ms = secs_to_ms(cfg->idle_timeout_s);
  srv->defer_timeout_ms =
      cfg->defer_timeout_s > 0 ? secs_to_ms(cfg->defer_timeout_s) : srv->request_timeout_ms;
  int err = srv->cfg.addr && srv->cfg.log_name ? 0 : SM_ENOMEM;
  int tls =
      cfg->tls_cert_file && cfg->tls_cert_file[0] && cfg->tls_key_file && cfg->tls_key_file[0];
  if (!err && tls) {
    net_tls_config tc = {
        .cert_file = cfg->tls_cert_file, .key_file = cfg->tls_key_file, .http1 = 1};
    err = net_tls_ctx_create_server(&tc, &srv->tls_ctx);
    if (err)
      sm_log_error(srv->cfg.log_name ? srv->cfg.log_name : "http", "cannot set up TLS", SM_LE(err));
  }
  if (!err) {
    http_response busy;
    http_response_init(&busy);
    char msg[96]; /* "too many admin connections" */
    snprintf(msg, sizeof(msg), "too many %s connections", srv->cfg.log_name);
    http_response_error(&busy, 503, "unavailable", msg);
    http_response_header(&busy, "Retry-After", "1");
    err = http_response_serialize(&busy, 0, &srv->busy);
    http_response_finish(&busy);
  }
  if (!err) {
    /* A client that does not read its answers is dropped after the request timeout; a TLS
     * handshake is the first thing a client sends, so it gets the header timeout. The transport
     * accepts twice max_connections: this layer sees a newcomer and closes an idle connection
     * for it (or answers 503 itself); the second half covers connections still closing and TLS
     * handshakes, and beyond it the transport refuses on its own. */
    double t = (double)srv->request_timeout_ms / 1000.0;
    size_t net_max = cfg->max_connections > SIZE_MAX / 2 ? SIZE_MAX : cfg->max_connections * 2;
    net_listener_config lc = {
        .addr = srv->cfg.addr,
        .max_connections = net_max,
        .max_output_bytes = HTTP_OUTPUT_HIGH_WATER,
        .stall_timeout_s = t,
        .handshake_timeout_s = (double)srv->header_timeout_ms / 1000.0,
        .tls = srv->tls_ctx,
        .ops = &http_conn_ops,
        .ud = srv,
        .name = srv->cfg.log_name,
        .refuse_data = (const uint8_t *)srv->busy.p,
        .refuse_len = srv->busy.len,
        .linger_ms = HTTP_LINGER_MS,
    };
    err = net_listener_create(loop, &lc, &srv->listener);
  }
  if (err) {
    server_free(srv);
    return err;
  }
  uv_timer_init(loop, &srv->defer_timer);
  srv->defer_timer.data = srv;
  *out = srv;
  return 0;
}

int http_server_listen(http_server *srv) {
  if (srv->closing || srv->listening)
    return SM_ESTATE;
  int err = net_listener_listen(srv->listener);
  if (err == 0)
    srv->listening = 1;
  return err;
}

int http_server_port(const http_server *srv) {
  return srv->listening ? net_listener_port(srv->listener) : -1;
}

size_t http_server_connections(const http_server *srv) {
  return net_listener_connections(srv->listener);
}

static void close_if_idle(net_conn *c, void *ud) {
  (void)ud;
  hconn *hc = net_conn_data(c);
  if (hc == NULL) { /* still in the TLS handshake: nothing asked yet */
    net_conn_close(c, SM_ECANCELED, 0);
    return;
  }
  if (hc->state == H_OPEN && net_conn_output(c) == 0 && hc->stash.len == 0 && hc->nslots == 0 &&
      http1_pending(hc->http) == 0)
    conn_abort(hc, SM_ECANCELED);
}

void http_server_stop_accepting(http_server *srv) {
  if (srv == NULL || srv->stopping)
    return;
  srv->stopping = 1;
  net_listener_stop(srv->listener);
  net_listener_foreach(srv->listener, close_if_idle, NULL);
}

static void defer_timer_closed(uv_handle_t *h) {
  http_server *srv = h->data;
  void (*cb)(void *) = srv->close_cb;
  void *ud = srv->close_ud;
  assert(sm_list_empty(&srv->timeouts));
  server_free(srv);
  if (cb)
    cb(ud);
}

static void listener_closed(void *ud) {
  http_server *srv = ud;
  uv_close((uv_handle_t *)&srv->defer_timer, defer_timer_closed);
}

static void close_now(net_conn *c, void *ud) {
  (void)ud;
  hconn *hc = net_conn_data(c);
  if (hc != NULL) {
    conn_drop_slots(hc); /* the handlers' late answers are dropped */
    conn_set_state(hc, H_DONE);
  }
  net_conn_close(c, SM_ECANCELED, 0);
}

void http_server_close(http_server *srv, void (*cb)(void *ud), void *ud) {
  if (srv == NULL || srv->closing)
    return;
  srv->stopping = 1;
  srv->closing = 1;
  srv->close_cb = cb;
  srv->close_ud = ud;
  uv_timer_stop(&srv->defer_timer);
  net_listener_foreach(srv->listener, close_now, NULL);
  /* Calls listener_closed after the last connection's close callback, never from here. */
  net_listener_close(srv->listener, listener_closed, srv);
}
