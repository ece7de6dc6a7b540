/* tcp.c - listener, connections, gathered writes, backpressure and timeouts (see tcp.h). */
#include "net/tcp.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF_SIZE (64 * 1024)  /* one per listener, shared by its connections */
#define PLAIN_BUF_SIZE (16 * 1024) /* decrypted bytes per SSL_read: one TLS record */
#define WBUF_MIN 4096
#define LISTEN_BACKLOG 511
#define CLOSE_GRACE_MS                                                                             \
  1000 /* listener close: time given to connections to write their last bytes */
#define ACCEPT_LOG_INTERVAL_MS                                                                     \
  1000 /* accept trouble (fds exhausted, errors): one line per second */
/* "file descriptors nearly exhausted" once an accepted descriptor is in the top 1/16 of
 * RLIMIT_NOFILE: descriptors are handed out lowest first, so the table is that full. */
#define FD_HEADROOM_DIV 16

/* Output gathered for one uv_write; the request lives with its bytes. */
typedef struct net_wbuf {
  uv_write_t req;
  net_conn *c;
  size_t len, cap;
  uint8_t data[];
} net_wbuf;

struct net_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shut_req; /* linger: the write side's shutdown */
  net_listener *l;
  sm_list node;           /* the listener's connections */
  sm_list flush_node;     /* the listener's flush list (linked iff in_flush) */
  net_tls *tls;           /* NULL: plaintext */
  void *data;             /* the protocol's */
  net_wbuf *pending;      /* gathered, not handed to libuv yet */
  net_wbuf *inflight;     /* being written (one at a time) */
  uint64_t proto_due;     /* protocol timer, uv_now ms; 0: none */
  uint64_t handshake_due; /* TLS handshake deadline; 0: none */
  uint64_t stall_since;   /* a write waits on the peer since; 0: not */
  uint64_t close_due;     /* graceful close: closed by then at the latest; 0: not */
  size_t stall_queue;     /* write queue size when progress was last seen */
  int close_reason;
  int handles_open;       /* handles whose close callback is still owed */
  unsigned opened : 1;    /* on_open called: on_close is owed */
  unsigned reading : 1;   /* uv_read_start active */
  unsigned bp : 1;        /* over max_output_bytes: reading stopped for backpressure */
  unsigned held : 1;      /* the protocol holds reading (net_conn_hold) */
  unsigned peer_eof : 1;  /* the peer finished sending (EOF or TLS close_notify) */
  size_t lingered;        /* bytes discarded while lingering */
  unsigned lingering : 1; /* written out and shut down: discarding input until EOF or close_due */
  unsigned closing : 1;   /* graceful close: writing out, then closing */
  unsigned closed : 1;    /* uv_close called */
  unsigned in_flush : 1;  /* on the flush list */
  unsigned flushing : 1;  /* inside conn_flush */
  unsigned tls_shut : 1;  /* close_notify queued */
  char peer[64];
};

struct net_listener {
  uv_loop_t *loop;
  net_listener_config cfg; /* addr and name are owned copies */
  uv_tcp_t srv;
  uv_prepare_t prepare; /* flushes before the loop sleeps */
  int listening;        /* srv is open */
  int handles_open;     /* srv/prepare close callbacks owed */
  int port;
  sm_list conns; /* net_conn.node */
  size_t nconns;
  sm_list flush;           /* net_conn.flush_node: connections to flush before the loop sleeps */
  uint8_t *rbuf;           /* READ_BUF_SIZE, allocated on first read */
  uint8_t *pbuf;           /* PLAIN_BUF_SIZE for TLS, allocated on first use */
  uint64_t full_logged_at; /* when "connection limit reached" was last logged */
  size_t refused;          /* connections refused since then */
  int reserve_fd;          /* /dev/null held open for fd exhaustion (see fd_exhausted); -1 */
  uint64_t fd_logged_at;   /* when accept trouble was last logged */
  size_t fd_dropped;       /* connections dropped for want of a descriptor since then */
  size_t fd_dropped_total;
  size_t accept_errors; /* other accept failures since fd_logged_at */
  uint64_t nofile_at;   /* when nofile was read */
  rlim_t nofile;        /* RLIMIT_NOFILE (soft), re-read at most once a second */
  int closing;
  int prepare_closed;
  void (*close_cb)(void *ud);
  void *close_ud;
};

static void conn_arm(net_conn *c);
static void reserve_open(net_listener *l);
static void conn_close_now(net_conn *c, int reason);
static void conn_reading(net_conn *c);
static void listener_maybe_done(net_listener *l);

/* ---- small accessors ---- */

void *net_listener_data(const net_listener *l) {
  return l->cfg.ud;
}
size_t net_listener_connections(const net_listener *l) {
  return l->nconns;
}
size_t net_listener_fd_dropped(const net_listener *l) {
  return l->fd_dropped_total;
}
int net_listener_port(const net_listener *l) {
  return l->port;
}
void *net_conn_data(const net_conn *c) {
  return c->data;
}
void net_conn_set_data(net_conn *c, void *data) {
  c->data = data;
}
net_listener *net_conn_listener(const net_conn *c) {
  return c->l;
}
const char *net_conn_peer(const net_conn *c) {
  return c->peer;
}
net_tls *net_conn_tls(const net_conn *c) {
  return c->tls;
}
uint64_t net_conn_now(const net_conn *c) {
  return uv_now(c->l->loop);
}

size_t net_conn_output(const net_conn *c) {
  size_t n = c->pending ? c->pending->len : 0;
  if (!c->closed)
    n += uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
  return n;
}

/* ---- output ---- */

/* Makes room for `need` more bytes in the pending buffer; returns where they go or NULL. */
static uint8_t *pending_reserve(net_conn *c, size_t need) {
  net_wbuf *w = c->pending;
  size_t len = w ? w->len : 0;
  if (w == NULL || w->cap - w->len < need) {
    size_t cap = w ? w->cap * 2 : WBUF_MIN;
    while (cap < len + need)
      cap *= 2;
    net_wbuf *nw = sm_realloc(w, sizeof(*nw) + cap);
    if (nw == NULL)
      return NULL;
    if (w == NULL)
      nw->len = 0;
    nw->cap = cap;
    nw->c = c;
    c->pending = w = nw;
  }
  return w->data + w->len;
}

/* Moves TLS ciphertext into the pending buffer. */
static int tls_take_output(net_conn *c) {
  size_t n = net_tls_pending(c->tls);
  if (n == 0)
    return 0;
  uint8_t *dst = pending_reserve(c, n);
  if (dst == NULL)
    return SM_ENOMEM;
  c->pending->len += net_tls_take(c->tls, dst, n);
  return 0;
}

int net_conn_write(net_conn *c, const uint8_t *data, size_t len) {
  if (c->closed || c->lingering)
    return SM_ECLOSED;
  if (len == 0)
    return 0;
  if (c->tls) {
    int err = net_tls_write(c->tls, data, len);
    if (err)
      return err;
    return tls_take_output(c);
  }
  uint8_t *dst = pending_reserve(c, len);
  if (dst == NULL)
    return SM_ENOMEM;
  memcpy(dst, data, len);
  c->pending->len += len;
  return 0;
}

static void write_cb(uv_write_t *req, int status) {
  net_wbuf *w = req->data;
  net_conn *c = w->c;
  c->inflight = NULL;
  free(w);
  if (status < 0) {
    if (status != UV_ECANCELED) /* cancelled: the connection is already closing */
      conn_close_now(c, sm_err_from_uv(status));
    return;
  }
  c->stall_since = 0; /* progress; conn_flush re-checks the level */
  net_conn_want_flush(c);
}

/* Hands the pending bytes to libuv when no write is in flight. */
static void start_write(net_conn *c) {
  if (c->closed || c->inflight || c->pending == NULL || c->pending->len == 0)
    return;
  net_wbuf *w = c->pending;
  c->pending = NULL;
  c->inflight = w;
  w->req.data = w;
  uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
  int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb);
  if (r < 0) {
    c->inflight = NULL;
    free(w);
    conn_close_now(c, sm_err_from_uv(r));
    return;
  }
  /* libuv wrote what the socket took; a rest waits on the peer: start the stall clock. */
  size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  if (q > 0 && c->stall_since == 0) {
    c->stall_since = uv_now(c->l->loop);
    c->stall_queue = q;
    conn_arm(c);
  }
}

/* ---- reading ---- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  net_conn *c = h->data;
  net_listener *l = c->l;
  if (l->rbuf == NULL)
    l->rbuf = sm_malloc(READ_BUF_SIZE);
  *buf = uv_buf_init((char *)l->rbuf, l->rbuf ? READ_BUF_SIZE : 0);
}

static void conn_open(net_conn *c) {
  c->opened = 1;
  c->handshake_due = 0;
  int err = c->l->cfg.ops->on_open ? c->l->cfg.ops->on_open(c) : 0;
  if (err) {
    conn_close_now(c, err);
    return;
  }
  net_conn_want_flush(c);
  conn_arm(c);
}

static void deliver(net_conn *c, const uint8_t *data, size_t len) {
  if (c->closing || c->closed || c->peer_eof)
    return;
  int err = c->l->cfg.ops->on_read(c, data, len);
  if (err)
    net_conn_close(c, err, 1);
}

/* The peer finished sending: the protocol decides (ops->on_eof), else a graceful close. */
static void conn_peer_eof(net_conn *c) {
  net_listener *l = c->l;
  if (c->peer_eof)
    return;
  c->peer_eof = 1;
  conn_reading(c);
  if (c->closing || c->closed)
    return;
  int err = SM_ECLOSED;
  if (c->opened && l->cfg.ops->on_eof)
    err = l->cfg.ops->on_eof(c);
  if (err)
    net_conn_close(c, err, 1);
}

static void tls_input(net_conn *c, const uint8_t *data, size_t len) {
  net_listener *l = c->l;
  int err = net_tls_feed(c->tls, data, len);
  if (err) {
    conn_close_now(c, err);
    return;
  }
  if (!c->opened) {
    int h = net_tls_handshake(c->tls);
    if (tls_take_output(c) != 0) {
      conn_close_now(c, SM_ENOMEM);
      return;
    }
    if (h < 0) {
      net_conn_close(c, h, 1); /* send the alert */
      return;
    }
    if (h == 0)
      return;
    sm_log_debug(l->cfg.name, "TLS established", SM_LS("peer", c->peer),
                 SM_LS("version", net_tls_version(c->tls)));
    conn_open(c);
    if (c->closed)
      return;
  }
  if (l->pbuf == NULL && (l->pbuf = sm_malloc(PLAIN_BUF_SIZE)) == NULL) {
    conn_close_now(c, SM_ENOMEM);
    return;
  }
  while (!c->closed && !c->closing && !c->peer_eof) {
    ssize_t n = net_tls_read(c->tls, l->pbuf, PLAIN_BUF_SIZE);
    if (n == 0)
      break;
    if (n == SM_ECLOSED) { /* close_notify: the TLS form of EOF */
      conn_peer_eof(c);
      break;
    }
    if (n < 0) {
      net_conn_close(c, (int)n, 1);
      break;
    }
    deliver(c, l->pbuf, (size_t)n);
  }
  if (!c->closed && tls_take_output(c) != 0)
    conn_close_now(c, SM_ENOMEM);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  net_conn *c = s->data;
  if (nread == 0 || c->closed)
    return;
  if (c->lingering) {
    /* Input after our last response is discarded; the peer's EOF (or error) ends the linger,
     * and so does a peer that keeps sending (a flood must not keep us reading). */
    if (nread < 0 || (c->lingered += (size_t)nread) > NET_LINGER_MAX_BYTES)
      conn_close_now(c, c->close_reason);
    return;
  }
  if (nread < 0) {
    if (nread == UV_EOF)
      conn_peer_eof(c);
    else if (nread == UV_ENOBUFS)
      conn_close_now(c, SM_ENOMEM);
    else
      conn_close_now(c, sm_err_from_uv((int)nread));
    return;
  }
  if (c->tls)
    tls_input(c, (const uint8_t *)buf->base, (size_t)nread);
  else
    deliver(c, (const uint8_t *)buf->base, (size_t)nread);
  net_conn_want_flush(c);
}

/* ---- flushing, once per loop turn ---- */

static void flush_unlink(net_conn *c) {
  if (!c->in_flush)
    return;
  sm_list_remove(&c->flush_node);
  c->in_flush = 0;
}

static void prepare_cb(uv_prepare_t *p);

void net_conn_want_flush(net_conn *c) {
  net_listener *l = c->l;
  if (c->in_flush || c->closed || c->flushing || c->lingering)
    return;
  c->in_flush = 1;
  sm_list_push_back(&l->flush, &c->flush_node);
  if (!uv_is_active((uv_handle_t *)&l->prepare))
    uv_prepare_start(&l->prepare, prepare_cb);
}

/* Reads iff nothing holds reading: backpressure, the protocol's hold, a graceful close (input
 * would only make more output) or the peer's EOF. A lingering connection reads to discard. */
static void conn_reading(net_conn *c) {
  if (c->closed)
    return;
  int want = !c->peer_eof && (c->lingering || (!c->closing && !c->held && !c->bp));
  if (want == (int)c->reading)
    return;
  if (want) {
    int r = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (r < 0) {
      conn_close_now(c, sm_err_from_uv(r));
      return;
    }
  } else {
    uv_read_stop((uv_stream_t *)&c->tcp);
  }
  c->reading = (unsigned)want;
}

void net_conn_hold(net_conn *c, int hold) {
  c->held = hold != 0;
  conn_reading(c);
}

/* Stops reading while the output is over the limit (what the peer sends would only make more
 * output); resumes below it. */
static void backpressure(net_conn *c) {
  c->bp = net_conn_output(c) >= c->l->cfg.max_output_bytes;
  conn_reading(c);
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  net_conn *c = req->data;
  if (status < 0 && !c->closed) /* (UV_ECANCELED: closed already) */
    conn_close_now(c, c->close_reason);
}

/* A graceful close wrote everything: close, or with linger_ms shut the write side down and
 * discard input until the peer's EOF or the linger deadline, so that the peer reads our last
 * bytes instead of a reset (closing with unread input sends RST). */
static void conn_finish(net_conn *c) {
  net_listener *l = c->l;
  if (c->lingering)
    return;
  if (l->cfg.linger_ms == 0 || c->peer_eof) {
    conn_close_now(c, c->close_reason);
    return;
  }
  c->lingering = 1;
  flush_unlink(c);
  c->shut_req.data = c;
  int r = uv_shutdown(&c->shut_req, (uv_stream_t *)&c->tcp, shutdown_cb);
  if (r < 0) {
    conn_close_now(c, c->close_reason);
    return;
  }
  c->close_due = uv_now(l->loop) + l->cfg.linger_ms;
  conn_arm(c);
  conn_reading(c);
}

static void conn_flush(net_conn *c) {
  net_listener *l = c->l;
  if (c->closed || c->lingering)
    return;
  /* Also while closing gracefully: the protocol's last words (a GOAWAY) go out first. */
  if (c->opened && net_conn_output(c) < l->cfg.max_output_bytes && l->cfg.ops->on_flush) {
    c->flushing = 1;
    int err = l->cfg.ops->on_flush(c);
    c->flushing = 0;
    if (err == SM_ECLOSED) {
      net_conn_close(c, SM_ECLOSED, 1);
    } else if (err) {
      conn_close_now(c, err);
      return;
    }
  }
  if (c->tls && c->closing && !c->tls_shut && net_tls_established(c->tls)) {
    c->tls_shut = 1; /* after the protocol's last words */
    net_tls_shutdown(c->tls);
  }
  if (c->tls && !c->closed && tls_take_output(c) != 0) {
    conn_close_now(c, SM_ENOMEM);
    return;
  }
  start_write(c);
  if (c->closed)
    return;
  if (c->closing) {
    if (net_conn_output(c) == 0)
      conn_finish(c);
    return;
  }
  backpressure(c);
}

static void prepare_cb(uv_prepare_t *p) {
  net_listener *l = p->data;
  sm_list *n;
  while ((n = sm_list_first(&l->flush)) != NULL) {
    net_conn *c = SM_LIST_ENTRY(n, net_conn, flush_node);
    flush_unlink(c);
    conn_flush(c);
  }
  if (l->listening)
    reserve_open(l); /* used up by fd_exhausted: retried every loop turn until it opens */
  if (!l->listening || l->reserve_fd >= 0)
    uv_prepare_stop(&l->prepare);
}

/* ---- timers ---- */

static void timer_cb(uv_timer_t *t) {
  net_conn *c = t->data;
  net_listener *l = c->l;
  uint64_t now = uv_now(l->loop);
  if (c->closed)
    return;
  if (c->handshake_due && now >= c->handshake_due) {
    sm_log_debug(l->cfg.name, "TLS handshake timed out", SM_LS("peer", c->peer));
    conn_close_now(c, SM_ETIMEDOUT);
    return;
  }
  if (c->close_due && now >= c->close_due) {
    if (!c->lingering)
      sm_log_debug(l->cfg.name, "closing: output not written in time", SM_LS("peer", c->peer),
                   SM_LI("queued_bytes", net_conn_output(c)));
    conn_close_now(c, c->close_reason);
    return;
  }
  if (c->stall_since && !c->closing) {
    size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    uint64_t limit = (uint64_t)(l->cfg.stall_timeout_s * 1000.0);
    if (q < c->stall_queue) {
      c->stall_since = now; /* the peer reads, slowly: not stalled */
      c->stall_queue = q;
    } else if (now - c->stall_since >= limit) {
      sm_log_info(l->cfg.name, "peer stopped reading, connection dropped", SM_LS("peer", c->peer),
                  SM_LI("queued_bytes", net_conn_output(c)));
      conn_close_now(c, SM_ETIMEDOUT);
      return;
    }
  }
  if (c->proto_due && now >= c->proto_due && c->opened && !c->closing) {
    c->proto_due = 0;
    int err = l->cfg.ops->on_timer ? l->cfg.ops->on_timer(c) : 0;
    if (err) {
      conn_close_now(c, err);
      return;
    }
  }
  conn_arm(c);
}

/* Sets the timer to the earliest of the protocol's, the stall and the handshake deadlines. */
static void conn_arm(net_conn *c) {
  net_listener *l = c->l;
  if (c->closed)
    return;
  /* The protocol's timer does not run while closing (timer_cb skips it): a past one left
   * armed would re-run this timer at once, forever, inside one pass of the loop's timers. */
  uint64_t due = c->closing ? 0 : c->proto_due;
  if (c->handshake_due && (due == 0 || c->handshake_due < due))
    due = c->handshake_due;
  if (c->stall_since && !c->closing) {
    uint64_t sd = c->stall_since + (uint64_t)(l->cfg.stall_timeout_s * 1000.0);
    if (due == 0 || sd < due)
      due = sd;
  }
  if (c->close_due && (due == 0 || c->close_due < due))
    due = c->close_due;
  if (due == 0) {
    uv_timer_stop(&c->timer);
    return;
  }
  uint64_t now = uv_now(l->loop);
  uv_timer_start(&c->timer, timer_cb, due > now ? due - now : 0, 0);
}

void net_conn_set_timer(net_conn *c, uint64_t due_ms) {
  c->proto_due = due_ms;
  conn_arm(c);
}

/* ---- closing ---- */

static void conn_closed_cb(uv_handle_t *h) {
  net_conn *c = h->data;
  if (--c->handles_open > 0)
    return;
  net_listener *l = c->l;
  free(c->pending);
  if (c->opened && l->cfg.ops->on_close)
    l->cfg.ops->on_close(c, c->close_reason);
  net_tls_destroy(c->tls);
  sm_list_remove(&c->node);
  l->nconns--;
  sm_log_debug(l->cfg.name, "connection closed", SM_LS("peer", c->peer),
               SM_LS("reason", sm_err_name(c->close_reason)));
  free(c);
  listener_maybe_done(l);
}

static void conn_close_now(net_conn *c, int reason) {
  if (c->closed)
    return;
  if (c->close_reason == 0)
    c->close_reason = reason;
  c->closed = 1;
  flush_unlink(c);
  c->handles_open = 2;
  uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
  uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
}

/* Stops reading and writes out what is queued (and what on_flush still produces), then closes;
 * at the latest after grace_ms. */
static void conn_close_graceful(net_conn *c, int reason, uint64_t grace_ms) {
  if (c->closed)
    return;
  if (c->close_reason == 0)
    c->close_reason = reason;
  uint64_t due = uv_now(c->l->loop) + grace_ms;
  if (c->closing) {
    if (due < c->close_due) {
      c->close_due = due;
      conn_arm(c);
    }
    return;
  }
  c->closing = 1;
  conn_reading(c);
  c->close_due = due;
  conn_arm(c);
  net_conn_want_flush(c);
}

void net_conn_close(net_conn *c, int reason, int graceful) {
  if (!graceful) {
    if (c->close_reason == 0)
      c->close_reason = reason;
    conn_close_now(c, reason);
    return;
  }
  /* A peer that does not read what is left is dropped after the stall timeout. */
  conn_close_graceful(c, reason, (uint64_t)(c->l->cfg.stall_timeout_s * 1000.0));
}

/* ---- accepting ---- */

static void refused_closed_cb(uv_handle_t *h) {
  free(h);
}

static void peer_name(uv_tcp_t *tcp, char *out, size_t cap) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  snprintf(out, cap, "?");
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0)
    return;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    uv_ip4_name(a, ip, sizeof(ip));
    port = ntohs(a->sin_port);
    snprintf(out, cap, "%s:%d", ip, port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    uv_ip6_name(a, ip, sizeof(ip));
    port = ntohs(a->sin6_port);
    snprintf(out, cap, "[%s]:%d", ip, port);
  }
}

static void refuse(net_listener *l, uv_stream_t *server) {
  uv_tcp_t *t = sm_malloc(sizeof(*t));
  if (t == NULL)
    return;
  uv_tcp_init(l->loop, t);
  if (uv_accept(server, (uv_stream_t *)t) == 0) {
    l->refused++;
    if (l->cfg.refuse_len > 0 && l->cfg.tls == NULL) {
      /* Best effort: what the socket buffer takes now (it takes a small answer). */
      uv_buf_t b = uv_buf_init((char *)l->cfg.refuse_data, (unsigned)l->cfg.refuse_len);
      (void)uv_try_write((uv_stream_t *)t, &b, 1);
    }
  }
  uv_close((uv_handle_t *)t, refused_closed_cb);
  uint64_t now = uv_now(l->loop);
  if (l->full_logged_at == 0 || now - l->full_logged_at >= 1000) {
    sm_log_warn(l->cfg.name, "connection limit reached, refusing connections",
                SM_LI("max_connections", l->cfg.max_connections), SM_LI("refused", l->refused));
    l->full_logged_at = now;
    l->refused = 0;
  }
}

static int accept_log_due(net_listener *l) {
  uint64_t now = uv_now(l->loop);
  if (l->fd_logged_at != 0 && now - l->fd_logged_at < ACCEPT_LOG_INTERVAL_MS)
    return 0;
  l->fd_logged_at = now;
  return 1;
}

static void reserve_open(net_listener *l) {
  if (l->reserve_fd < 0)
    l->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* accept failed for want of a file descriptor. The pending connection would stay in the
 * backlog and the listening socket readable, and libuv retries accept at once: at 100% CPU, the
 * peer waiting for nothing. libuv tries the classic trick first with its one reserve descriptor
 * per loop; when that one is gone (it reopens it only when a stream is created while a
 * descriptor is free), this listener's own reserve does it: close it, accept and close what is
 * pending (those peers see the connection closed at once). The reserve is reopened on the next
 * loop turn (prepare_cb), not here: libuv keeps calling accept until it stops failing, and with
 * the descriptor still free it gets EAGAIN and returns. Established connections are not touched
 * and new ones are served again as soon as descriptors free up. */
static void fd_exhausted(net_listener *l, int status) {
  size_t n = 0;
  uv_os_fd_t lfd;
  if (l->reserve_fd >= 0 && uv_fileno((uv_handle_t *)&l->srv, &lfd) == 0) {
    close(l->reserve_fd);
    l->reserve_fd = -1;
    for (;;) {
      int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno == EINTR)
          continue;
        break; /* EAGAIN: drained; EMFILE: someone else took the descriptor */
      }
      close(fd);
      n++;
    }
    if (!uv_is_active((uv_handle_t *)&l->prepare))
      uv_prepare_start(&l->prepare, prepare_cb);
  }
  l->fd_dropped += n;
  l->fd_dropped_total += n;
  if (accept_log_due(l)) {
    sm_log_warn(l->cfg.name, "file descriptors exhausted, new connections closed at accept",
                SM_LE(sm_err_from_uv(status)), SM_LI("dropped", l->fd_dropped),
                SM_LI("connections", l->nconns));
    l->fd_dropped = 0;
  }
}

/* libuv's own reserve trick closes connections silently: warn while the table is nearly full. */
static void fd_watch(net_listener *l, net_conn *c) {
  uv_os_fd_t fd;
  uint64_t now = uv_now(l->loop);
  if (l->nofile_at == 0 || now - l->nofile_at >= 1000) {
    struct rlimit r;
    l->nofile = getrlimit(RLIMIT_NOFILE, &r) == 0 ? r.rlim_cur : RLIM_INFINITY;
    l->nofile_at = now;
  }
  if (l->nofile == RLIM_INFINITY || uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0 ||
      (rlim_t)fd < l->nofile - l->nofile / FD_HEADROOM_DIV)
    return;
  if (accept_log_due(l))
    sm_log_warn(l->cfg.name,
                "file descriptors nearly exhausted (RLIMIT_NOFILE): new connections "
                "will be closed at accept",
                SM_LI("fd", fd), SM_LI("limit", l->nofile), SM_LI("connections", l->nconns));
}

static void connection_cb(uv_stream_t *server, int status) {
  net_listener *l = server->data;
  if (status == UV_EMFILE || status == UV_ENFILE) {
    fd_exhausted(l, status);
    return;
  }
  if (status < 0) {
    l->accept_errors++;
    if (accept_log_due(l)) {
      sm_log_warn(l->cfg.name, "accept failed", SM_LE(sm_err_from_uv(status)),
                  SM_LI("failures", l->accept_errors));
      l->accept_errors = 0;
    }
    return;
  }
  if (l->closing)
    return;
  if (l->nconns >= l->cfg.max_connections) {
    refuse(l, server);
    return;
  }
  net_conn *c = sm_calloc(1, sizeof(*c));
  if (c == NULL) {
    refuse(l, server);
    return;
  }
  c->l = l;
  uv_tcp_init(l->loop, &c->tcp);
  uv_timer_init(l->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  sm_list_init(&c->flush_node);
  sm_list_push_back(&l->conns, &c->node);
  l->nconns++;
  int r = uv_accept(server, (uv_stream_t *)&c->tcp);
  if (r < 0) {
    conn_close_now(c, sm_err_from_uv(r));
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  fd_watch(l, c);
  peer_name(&c->tcp, c->peer, sizeof(c->peer));
  sm_log_debug(l->cfg.name, "connection accepted", SM_LS("peer", c->peer),
               SM_LI("connections", l->nconns));
  if (l->cfg.tls) {
    int err = net_tls_create(l->cfg.tls, NULL, &c->tls);
    if (err) {
      conn_close_now(c, err);
      return;
    }
    c->handshake_due = uv_now(l->loop) + (uint64_t)(l->cfg.handshake_timeout_s * 1000.0);
    conn_arm(c);
  } else {
    conn_open(c);
    if (c->closed)
      return;
  }
  conn_reading(c);
}

/* ---- listener ---- */

int net_listener_create(uv_loop_t *loop, const net_listener_config *cfg, net_listener **out) {
  if (cfg->addr == NULL || cfg->ops == NULL || cfg->ops->on_read == NULL ||
      cfg->max_connections == 0 || cfg->max_output_bytes == 0)
    return SM_EINVAL;
  net_listener *l = sm_calloc(1, sizeof(*l));
  if (l == NULL)
    return SM_ENOMEM;
  l->loop = loop;
  l->cfg = *cfg;
  l->cfg.addr = sm_strdup(cfg->addr);
  l->cfg.name = sm_strdup(cfg->name ? cfg->name : "net");
  if (l->cfg.addr == NULL || l->cfg.name == NULL) {
    free((char *)l->cfg.addr);
    free((char *)l->cfg.name);
    free(l);
    return SM_ENOMEM;
  }
  if (l->cfg.stall_timeout_s <= 0)
    l->cfg.stall_timeout_s = 30;
  if (l->cfg.handshake_timeout_s <= 0)
    l->cfg.handshake_timeout_s = 10;
  l->reserve_fd = -1;
  sm_list_init(&l->conns);
  sm_list_init(&l->flush);
  uv_prepare_init(loop, &l->prepare);
  l->prepare.data = l;
  l->handles_open = 1;
  *out = l;
  return 0;
}

int net_addr_split(const char *addr, char host[256], int *port) {
  const char *colon;
  const char *h;
  size_t hlen;
  if (addr == NULL)
    return SM_EADDR;
  if (addr[0] == '[') {
    const char *close = strchr(addr, ']');
    if (close == NULL || close[1] != ':')
      return SM_EADDR;
    h = addr + 1;
    hlen = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(addr, ':');
    if (colon == NULL)
      return SM_EADDR;
    h = addr;
    hlen = (size_t)(colon - addr);
    if (memchr(h, ':', hlen) != NULL) /* bare IPv6 needs brackets */
      return SM_EADDR;
  }
  if (hlen >= 256)
    return SM_EADDR;
  char *end;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (colon[1] == '\0' || *end != '\0' || errno || p < 0 || p > 65535)
    return SM_EADDR;
  if (hlen == 0) {
    strcpy(host, "0.0.0.0");
  } else {
    memcpy(host, h, hlen);
    host[hlen] = '\0';
  }
  *port = (int)p;
  return 0;
}

/* Resolves host (a literal, or a name through getaddrinfo: only at start-up). */
static int resolve(net_listener *l, const char *host, int port, struct sockaddr_storage *ss) {
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  uv_getaddrinfo_t req;
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
  char ports[16];
  snprintf(ports, sizeof(ports), "%d", port);
  /* no callback: synchronous, acceptable before the loop serves anyone */
  if (uv_getaddrinfo(l->loop, &req, NULL, host, ports, &hints) != 0)
    return SM_EADDR;
  int err = SM_EADDR;
  if (req.addrinfo && req.addrinfo->ai_addrlen <= sizeof(*ss)) {
    memcpy(ss, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    err = 0;
  }
  uv_freeaddrinfo(req.addrinfo);
  return err;
}

static void listener_handle_closed(uv_handle_t *h) {
  net_listener *l = h->data;
  l->handles_open--;
  listener_maybe_done(l);
}

int net_listener_listen(net_listener *l) {
  char host[256];
  int port;
  if (l->listening || l->closing)
    return SM_ESTATE;
  if (net_addr_split(l->cfg.addr, host, &port) != 0)
    return SM_EADDR;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  int err = resolve(l, host, port, &ss);
  if (err) {
    sm_log_error(l->cfg.name, "cannot resolve listen address", SM_LS("addr", l->cfg.addr));
    return err;
  }
  uv_tcp_init(l->loop, &l->srv);
  l->srv.data = l;
  l->handles_open++;
  int r = uv_tcp_bind(&l->srv, (const struct sockaddr *)&ss, 0);
  if (r == 0)
    r = uv_listen((uv_stream_t *)&l->srv, LISTEN_BACKLOG, connection_cb);
  if (r < 0) {
    err = sm_err_from_uv(r);
    sm_log_error(l->cfg.name, "cannot listen", SM_LS("addr", l->cfg.addr),
                 SM_LS("reason", uv_strerror(r)), SM_LE(err));
    uv_close((uv_handle_t *)&l->srv, listener_handle_closed);
    return err;
  }
  l->listening = 1;
  reserve_open(l);
  struct sockaddr_storage bound;
  int blen = sizeof(bound);
  if (uv_tcp_getsockname(&l->srv, (struct sockaddr *)&bound, &blen) == 0)
    l->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
  sm_log_info(l->cfg.name, "listening", SM_LS("addr", l->cfg.addr), SM_LI("port", l->port),
              SM_LB("tls", l->cfg.tls != NULL));
  return 0;
}

void net_listener_stop(net_listener *l) {
  if (!l->listening)
    return;
  l->listening = 0;
  uv_close((uv_handle_t *)&l->srv, listener_handle_closed);
}

void net_listener_foreach(net_listener *l, void (*fn)(net_conn *c, void *ud), void *ud) {
  /* fn may close c; it stays listed until its close callback, so the next one stays valid. */
  SM_LIST_FOREACH_SAFE(it, tmp, &l->conns) {
    net_conn *c = SM_LIST_ENTRY(it, net_conn, node);
    if (!c->closed)
      fn(c, ud);
  }
}

static void listener_maybe_done(net_listener *l) {
  if (!l->closing || l->nconns > 0)
    return;
  if (!l->prepare_closed) {
    /* the flushes of the closing connections needed it until now */
    l->prepare_closed = 1;
    uv_close((uv_handle_t *)&l->prepare, listener_handle_closed);
    return;
  }
  if (l->handles_open > 0)
    return;
  void (*cb)(void *) = l->close_cb;
  void *ud = l->close_ud;
  if (l->reserve_fd >= 0)
    close(l->reserve_fd);
  free(l->rbuf);
  free(l->pbuf);
  free((char *)l->cfg.addr);
  free((char *)l->cfg.name);
  free(l);
  if (cb)
    cb(ud);
}

void net_listener_close(net_listener *l, void (*cb)(void *ud), void *ud) {
  if (l->closing)
    return;
  l->closing = 1;
  l->close_cb = cb;
  l->close_ud = ud;
  net_listener_stop(l);
  /* Gracefully but briefly: trailers and GOAWAYs queued just before still go out. */
  SM_LIST_FOREACH(it, &l->conns) {
    net_conn *c = SM_LIST_ENTRY(it, net_conn, node);
    if (c->opened)
      conn_close_graceful(c, SM_ECANCELED, CLOSE_GRACE_MS);
    else
      conn_close_now(c, SM_ECANCELED);
  }
  listener_maybe_done(l);
}
