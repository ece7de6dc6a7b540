/* h2.c - one gRPC call per HTTP/2 connection, client side. */
#include "client/h2.h"

#include "grpc/frame.h"
#include "net/tls.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RBUF_LEN 65536       /* shared socket read buffer */
#define PBUF_LEN 16384       /* shared TLS plaintext buffer */
#define WBUF_FLUSH_MAX 65536 /* bytes gathered into one socket write */

struct client_ctx {
  uv_loop_t *loop;
  uv_idle_t idle; /* runs the flush list once per loop turn while it is not empty */
  int idle_active;
  client_call *dirty; /* calls with output to flush (doubly linked) */
  uint8_t rbuf[RBUF_LEN];
  uint8_t pbuf[PBUF_LEN];
};

struct client_call {
  client_ctx *ctx;
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  uv_timer_t timer; /* connect timeout, then finish timeout */
  nghttp2_session *ng;
  net_tls *tls; /* NULL for h2c */
  int32_t stream_id;
  grpc_frame_reader rd;
  uint8_t *sq; /* framed messages not yet taken by nghttp2: sq[sq_off..sq_len) */
  size_t sq_off, sq_len, sq_cap;
  uint8_t *wbuf; /* bytes of the socket write in flight; freed after each write */
  size_t wlen;
  client_call_cbs cbs;
  void *ud;
  int err;         /* first error, SM_E* */
  int grpc_status; /* from trailers; -1 when absent */
  char grpc_message[128];
  unsigned connected : 1; /* TCP up */
  unsigned ready : 1;     /* on_ready delivered */
  unsigned writing : 1;   /* a uv_write is in flight */
  unsigned reading : 1;
  unsigned deferred : 1;  /* data provider returned DEFERRED */
  unsigned local_end : 1; /* END_STREAM requested */
  unsigned stream_closed : 1;
  unsigned ending : 1;  /* session terminated; close once output is written */
  unsigned closing : 1; /* handles are being closed */
  unsigned in_dirty : 1;
  int open_handles;
  client_call *dprev, *dnext;
};

static void call_close(client_call *c, int err);
static void call_flush(client_call *c);
static void start_reading(client_call *c);

/* ---- flush list ---- */

static void ctx_idle_cb(uv_idle_t *h) {
  client_ctx *ctx = h->data;
  /* Take the list: flushing may re-add calls (they then wait for the next turn). */
  while (ctx->dirty) {
    client_call *c = ctx->dirty;
    ctx->dirty = c->dnext;
    if (ctx->dirty)
      ctx->dirty->dprev = NULL;
    c->dnext = c->dprev = NULL;
    c->in_dirty = 0;
    call_flush(c);
    if (c->in_dirty)
      break; /* re-added itself at the head: leave it for the next turn */
  }
  if (ctx->dirty == NULL && ctx->idle_active) {
    uv_idle_stop(&ctx->idle);
    ctx->idle_active = 0;
  }
}

static void mark_dirty(client_call *c) {
  client_ctx *ctx = c->ctx;
  if (c->in_dirty || c->closing)
    return;
  c->in_dirty = 1;
  c->dprev = NULL;
  c->dnext = ctx->dirty;
  if (ctx->dirty)
    ctx->dirty->dprev = c;
  ctx->dirty = c;
  if (!ctx->idle_active) {
    uv_idle_start(&ctx->idle, ctx_idle_cb);
    ctx->idle_active = 1;
  }
}

static void unmark_dirty(client_call *c) {
  if (!c->in_dirty)
    return;
  if (c->dprev)
    c->dprev->dnext = c->dnext;
  else
    c->ctx->dirty = c->dnext;
  if (c->dnext)
    c->dnext->dprev = c->dprev;
  c->dprev = c->dnext = NULL;
  c->in_dirty = 0;
}

int client_ctx_create(uv_loop_t *loop, client_ctx **out) {
  client_ctx *ctx = sm_calloc(1, sizeof(*ctx));
  if (ctx == NULL)
    return SM_ENOMEM;
  ctx->loop = loop;
  uv_idle_init(loop, &ctx->idle);
  ctx->idle.data = ctx;
  *out = ctx;
  return 0;
}

static void ctx_closed(uv_handle_t *h) {
  free(h->data);
}

void client_ctx_close(client_ctx *ctx) {
  if (ctx)
    uv_close((uv_handle_t *)&ctx->idle, ctx_closed);
}

/* ---- nghttp2 callbacks ---- */

static ssize_t data_read_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *ud) {
  client_call *c = ud;
  size_t avail = c->sq_len - c->sq_off;
  size_t n = avail < length ? avail : length;
  (void)s, (void)sid, (void)src;
  if (n) {
    memcpy(buf, c->sq + c->sq_off, n);
    c->sq_off += n;
  }
  if (c->sq_off == c->sq_len) {
    /* Drained: give the memory back, an idle agent should hold no send buffer. */
    free(c->sq);
    c->sq = NULL;
    c->sq_off = c->sq_len = c->sq_cap = 0;
    if (c->local_end) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return (ssize_t)n;
    }
    if (n == 0) {
      c->deferred = 1;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return (ssize_t)n;
}

static void percent_decode(char *dst, size_t cap, const uint8_t *src, size_t len) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 1 < cap; i++) {
    if (src[i] == '%' && i + 2 < len) {
      char hex[3] = {(char)src[i + 1], (char)src[i + 2], 0};
      char *end;
      long v = strtol(hex, &end, 16);
      if (*end == '\0') {
        dst[o++] = (char)v;
        i += 2;
        continue;
      }
    }
    dst[o++] = (char)src[i];
  }
  dst[o] = '\0';
}

static int on_header_cb(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud) {
  client_call *c = ud;
  (void)s, (void)flags;
  if (f->hd.type != NGHTTP2_HEADERS || f->hd.stream_id != c->stream_id)
    return 0;
  if (namelen == 7 && !memcmp(name, ":status", 7)) {
    if (valuelen != 3 || memcmp(value, "200", 3)) {
      if (!c->err)
        c->err = SM_EPROTO;
      sm_log_warn("client", "server answered with a non-200 status",
                  SM_LS("status", valuelen == 3 ? (const char *)value : "?"));
    }
  } else if (namelen == 11 && !memcmp(name, "grpc-status", 11)) {
    char buf[12];
    size_t n = valuelen < sizeof(buf) - 1 ? valuelen : sizeof(buf) - 1;
    memcpy(buf, value, n);
    buf[n] = '\0';
    c->grpc_status = atoi(buf);
  } else if (namelen == 12 && !memcmp(name, "grpc-message", 12)) {
    percent_decode(c->grpc_message, sizeof(c->grpc_message), value, valuelen);
  }
  return 0;
}

static int on_data_chunk_cb(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                            size_t len, void *ud) {
  client_call *c = ud;
  (void)s, (void)flags;
  if (sid != c->stream_id)
    return 0;
  while (len > 0 && !c->closing) {
    size_t used = 0;
    grpc_frame_msg m;
    int rc = grpc_frame_read(&c->rd, data, len, &used, &m);
    data += used;
    len -= used;
    if (rc < 0) {
      sm_log_warn("client", "bad gRPC message from server", SM_LE(rc));
      call_close(c, rc);
      return 0;
    }
    if (rc == 0)
      break;
    if (m.compressed) {
      sm_log_warn("client", "compressed message refused (no encoding was offered)",
                  SM_LI("len", m.len));
      call_close(c, SM_EUNSUPPORTED);
      return 0;
    }
    if (c->cbs.on_message)
      c->cbs.on_message(c, c->ud, m.data, m.len);
  }
  return 0;
}

static int on_stream_close_cb(nghttp2_session *s, int32_t sid, uint32_t code, void *ud) {
  client_call *c = ud;
  if (sid != c->stream_id)
    return 0;
  c->stream_closed = 1;
  if (code != NGHTTP2_NO_ERROR && !c->err)
    c->err = code == NGHTTP2_REFUSED_STREAM ? SM_EUNAVAIL : SM_ECLOSED;
  else if (c->grpc_status < 0 && !c->local_end && !c->err)
    c->err = SM_ECLOSED; /* ended without trailers */
  /* One call per connection: the connection's work is done. */
  nghttp2_session_terminate_session(s, NGHTTP2_NO_ERROR);
  c->ending = 1;
  return 0;
}

static int on_frame_recv_cb(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  client_call *c = ud;
  /* The server's END_STREAM (trailers) ends the call even while our side is open: reset our
   * half with NO_ERROR, as gRPC does, so the stream closes now. */
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
      f->hd.stream_id == c->stream_id && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
      !c->stream_closed)
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, c->stream_id, NGHTTP2_NO_ERROR);
  /* GOAWAY alone changes nothing here: the server still ends our stream (or nghttp2 closes it
   * as refused when it is above last_stream_id), and on_stream_close reports that. */
  if (f->hd.type == NGHTTP2_GOAWAY)
    sm_log_debug("client", "server sent GOAWAY", SM_LI("code", f->goaway.error_code),
                 SM_LI("last_stream_id", f->goaway.last_stream_id));
  return 0;
}

/* ---- socket ---- */

static void handle_closed(uv_handle_t *h) {
  client_call *c = h->data;
  if (--c->open_handles > 0)
    return;
  if (c->cbs.on_closed)
    c->cbs.on_closed(c->ud, c->err, c->grpc_status, c->grpc_message);
  nghttp2_session_del(c->ng);
  net_tls_destroy(c->tls);
  grpc_frame_reader_finish(&c->rd);
  free(c->sq);
  free(c->wbuf);
  free(c);
}

static void call_close(client_call *c, int err) {
  if (c->closing)
    return;
  if (err && !c->err)
    c->err = err;
  c->closing = 1;
  unmark_dirty(c);
  uv_close((uv_handle_t *)&c->tcp, handle_closed);
  uv_close((uv_handle_t *)&c->timer, handle_closed);
}

static void write_cb(uv_write_t *w, int status) {
  client_call *c = w->data;
  c->writing = 0;
  free(c->wbuf);
  c->wbuf = NULL;
  c->wlen = 0;
  if (c->closing)
    return;
  if (status < 0) {
    call_close(c, sm_err_from_uv(status));
    return;
  }
  if (!c->reading && c->connected)
    start_reading(c); /* output drained: read again */
  mark_dirty(c);
}

static int wbuf_append(client_call *c, size_t *cap, const uint8_t *p, size_t n) {
  if (c->wlen + n > *cap) {
    size_t nc = *cap ? *cap : 4096;
    while (nc < c->wlen + n)
      nc *= 2;
    uint8_t *nb = sm_realloc(c->wbuf, nc);
    if (nb == NULL)
      return SM_ENOMEM;
    c->wbuf = nb;
    *cap = nc;
  }
  memcpy(c->wbuf + c->wlen, p, n);
  c->wlen += n;
  return 0;
}

static int take_tls(client_call *c, size_t *cap) {
  size_t p;
  while ((p = net_tls_pending(c->tls)) > 0) {
    if (c->wlen + p > *cap) {
      size_t nc = *cap ? *cap : 4096;
      while (nc < c->wlen + p)
        nc *= 2;
      uint8_t *nb = sm_realloc(c->wbuf, nc);
      if (nb == NULL)
        return SM_ENOMEM;
      c->wbuf = nb;
      *cap = nc;
    }
    c->wlen += net_tls_take(c->tls, c->wbuf + c->wlen, *cap - c->wlen);
  }
  return 0;
}

/* Gathers everything nghttp2 (and TLS) has to send into one write. */
static void call_flush(client_call *c) {
  size_t cap = 0;
  int rc = 0;
  if (c->closing || !c->connected || c->writing)
    return;
  if (c->tls == NULL || net_tls_established(c->tls)) {
    while (c->wlen < WBUF_FLUSH_MAX) {
      const uint8_t *data;
      ssize_t n = nghttp2_session_mem_send(c->ng, &data);
      if (n < 0) {
        call_close(c, SM_EPROTO);
        return;
      }
      if (n == 0)
        break;
      if (c->tls)
        rc = net_tls_write(c->tls, data, (size_t)n);
      else
        rc = wbuf_append(c, &cap, data, (size_t)n);
      if (rc) {
        call_close(c, rc);
        return;
      }
    }
  }
  if (c->tls && (rc = take_tls(c, &cap)) != 0) {
    call_close(c, rc);
    return;
  }
  if (c->wlen > 0) {
    uv_buf_t b = uv_buf_init((char *)c->wbuf, (unsigned)c->wlen);
    rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
    if (rc) {
      call_close(c, sm_err_from_uv(rc));
      return;
    }
    c->writing = 1;
    return;
  }
  if (c->ending && !nghttp2_session_want_write(c->ng))
    call_close(c, 0);
  else if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng))
    call_close(c, 0);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  client_call *c = h->data;
  (void)hint;
  /* One buffer for every connection: read_cb consumes it before the next read starts. */
  *buf = uv_buf_init((char *)c->ctx->rbuf, RBUF_LEN);
}

static int feed_h2(client_call *c, const uint8_t *p, size_t n) {
  ssize_t rc = nghttp2_session_mem_recv(c->ng, p, n);
  if (rc < 0) {
    sm_log_warn("client", "HTTP/2 error from server", SM_LS("reason", nghttp2_strerror((int)rc)));
    return SM_EPROTO;
  }
  return 0;
}

static void deliver_ready(client_call *c) {
  if (c->ready || c->closing)
    return;
  c->ready = 1;
  uv_timer_stop(&c->timer);
  if (c->cbs.on_ready)
    c->cbs.on_ready(c, c->ud);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  client_call *c = s->data;
  int rc = 0;
  if (c->closing)
    return;
  if (nread < 0) {
    /* The server closed: fine after the call ended, else the call was cut. */
    int e = nread == UV_EOF ? (c->stream_closed ? 0 : SM_ECLOSED) : sm_err_from_uv((int)nread);
    call_close(c, e);
    return;
  }
  if (nread == 0)
    return;
  if (c->tls == NULL) {
    rc = feed_h2(c, (const uint8_t *)buf->base, (size_t)nread);
  } else {
    rc = net_tls_feed(c->tls, (const uint8_t *)buf->base, (size_t)nread);
    if (rc == 0 && !net_tls_established(c->tls)) {
      int h = net_tls_handshake(c->tls);
      if (h < 0) {
        sm_log_warn("client", "TLS handshake failed", SM_LS("reason", net_tls_error(c->tls)));
        rc = SM_ETLS;
      } else if (h == 1) {
        const char *alpn = net_tls_alpn(c->tls);
        if (alpn == NULL || strcmp(alpn, "h2") != 0) {
          sm_log_warn("client", "server did not agree to ALPN h2", SM_LS("alpn", alpn));
          rc = SM_ETLS;
        } else {
          deliver_ready(c);
        }
      }
    }
    while (rc == 0 && !c->closing && net_tls_established(c->tls)) {
      ssize_t n = net_tls_read(c->tls, c->ctx->pbuf, PBUF_LEN);
      if (n == 0)
        break;
      if (n < 0) {
        rc = n == SM_ECLOSED ? (c->stream_closed ? 0 : SM_ECLOSED) : (int)n;
        if (rc == 0) {
          call_close(c, 0);
          return;
        }
        break;
      }
      rc = feed_h2(c, c->ctx->pbuf, (size_t)n);
    }
  }
  if (rc) {
    call_close(c, rc);
    return;
  }
  if (c->closing)
    return;
  /* Stop reading while a full write is still in flight: the peer is not taking our output. */
  if (c->writing && c->wlen >= WBUF_FLUSH_MAX) {
    uv_read_stop(s);
    c->reading = 0;
  }
  mark_dirty(c);
}

static void start_reading(client_call *c) {
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
    c->reading = 1;
}

static void connect_cb(uv_connect_t *req, int status) {
  client_call *c = req->data;
  if (c->closing)
    return;
  if (status < 0) {
    call_close(c, sm_err_from_uv(status));
    return;
  }
  c->connected = 1;
  uv_tcp_nodelay(&c->tcp, 1);
  start_reading(c);
  if (c->tls) {
    int h = net_tls_handshake(c->tls); /* produces the ClientHello */
    if (h < 0) {
      call_close(c, SM_ETLS);
      return;
    }
  } else {
    deliver_ready(c);
  }
  mark_dirty(c);
}

static void timer_cb(uv_timer_t *t) {
  client_call *c = t->data;
  /* Connect timeout, or the server did not end the call after finish (fine: we are leaving). */
  call_close(c, c->local_end ? 0 : SM_ETIMEDOUT);
}

static nghttp2_session_callbacks *make_callbacks(void) {
  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb) != 0)
    return NULL;
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header_cb);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_cb);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close_cb);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv_cb);
  return cb;
}

#define NV(n, v)                                                                                   \
  {                                                                                                \
    (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v),                                          \
        NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE                               \
  }

#define CLIENT_HEADERS_MAX 16

static int session_init(client_call *c, const client_call_req *req) {
  nghttp2_session_callbacks *cb = make_callbacks();
  nghttp2_option *opt = NULL;
  int rc;
  if (cb == NULL)
    return SM_ENOMEM;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cb);
    return SM_ENOMEM;
  }
  /* One request per connection: a dynamic header table would never be reused. */
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 0);
  rc = nghttp2_session_client_new2(&c->ng, cb, c, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  if (rc != 0)
    return SM_ENOMEM;

  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 65535},
  };
  if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0)
    return SM_ENOMEM;

  if (req->nheaders > CLIENT_HEADERS_MAX)
    return SM_EINVAL;
  nghttp2_nv nva[8 + CLIENT_HEADERS_MAX] = {
      NV(":method", "POST"),
      NV(":scheme", req->tls ? "https" : "http"),
      NV(":path", req->path),
      NV(":authority", req->authority),
      NV("content-type", "application/grpc"),
      NV("te", "trailers"),
      NV("user-agent", "sirius-agent/" SM_VERSION),
  };
  size_t n = 7;
  for (size_t i = 0; i < req->nheaders; i++) {
    /* Values are copied by nghttp2 (the caller's strings may go away). */
    nghttp2_nv h = {(uint8_t *)req->headers[i].name, (uint8_t *)req->headers[i].value,
                    strlen(req->headers[i].name), strlen(req->headers[i].value),
                    NGHTTP2_NV_FLAG_NONE};
    nva[n++] = h;
  }
  /* The pseudo-header values above point at req strings or literals: copy them too. */
  for (size_t i = 2; i < 4; i++)
    nva[i].flags = NGHTTP2_NV_FLAG_NO_COPY_NAME;
  nghttp2_data_provider dp = {.source = {.ptr = c}, .read_callback = data_read_cb};
  int32_t sid = nghttp2_submit_request(c->ng, NULL, nva, n, &dp, c);
  if (sid < 0)
    return SM_ENOMEM;
  c->stream_id = sid;
  return 0;
}

int client_call_start(client_ctx *ctx, const client_call_req *req, const client_call_cbs *cbs,
                      void *ud, client_call **out) {
  client_call *c = sm_calloc(1, sizeof(*c));
  int rc;
  if (c == NULL)
    return SM_ENOMEM;
  c->ctx = ctx;
  c->cbs = *cbs;
  c->ud = ud;
  c->grpc_status = -1;
  grpc_frame_reader_init(&c->rd, CLIENT_CALL_RECV_MAX);
  rc = session_init(c, req);
  if (rc == 0 && req->tls)
    rc = net_tls_create(req->tls, req->server_name, &c->tls);
  if (rc == 0) {
    rc = uv_tcp_init(ctx->loop, &c->tcp);
    if (rc)
      rc = sm_err_from_uv(rc);
  }
  if (rc) {
    nghttp2_session_del(c->ng);
    net_tls_destroy(c->tls);
    grpc_frame_reader_finish(&c->rd);
    free(c);
    return rc;
  }
  uv_timer_init(ctx->loop, &c->timer);
  c->open_handles = 2;
  c->tcp.data = c->timer.data = c->creq.data = c->wreq.data = c;
  if (req->bind_addr) {
    rc = uv_tcp_bind(&c->tcp, req->bind_addr, 0);
    if (rc == 0)
      rc = uv_tcp_connect(&c->creq, &c->tcp, req->addr, connect_cb);
  } else {
    rc = uv_tcp_connect(&c->creq, &c->tcp, req->addr, connect_cb);
  }
  if (rc) {
    /* Report through on_closed from the close callback, never from inside this call. */
    call_close(c, sm_err_from_uv(rc));
  } else {
    uv_timer_start(&c->timer, timer_cb, CLIENT_CALL_CONNECT_TIMEOUT_MS, 0);
  }
  *out = c;
  return 0;
}

int client_call_send(client_call *c, const ProtobufCMessage *msg) {
  if (c->closing || c->ending || c->local_end || c->stream_closed)
    return SM_ECLOSED;
  size_t len = protobuf_c_message_get_packed_size(msg);
  size_t need = GRPC_FRAME_HEADER_LEN + len;
  if (c->sq_len - c->sq_off + need > CLIENT_CALL_SEND_MAX)
    return SM_ELIMIT;
  if (c->sq_off > 0 && c->sq_len + need > c->sq_cap) {
    memmove(c->sq, c->sq + c->sq_off, c->sq_len - c->sq_off);
    c->sq_len -= c->sq_off;
    c->sq_off = 0;
  }
  if (c->sq_len + need > c->sq_cap) {
    size_t nc = c->sq_cap ? c->sq_cap : 256;
    while (nc < c->sq_len + need)
      nc *= 2;
    uint8_t *nb = sm_realloc(c->sq, nc);
    if (nb == NULL)
      return SM_ENOMEM;
    c->sq = nb;
    c->sq_cap = nc;
  }
  grpc_frame_header(c->sq + c->sq_len, 0, (uint32_t)len);
  protobuf_c_message_pack(msg, c->sq + c->sq_len + GRPC_FRAME_HEADER_LEN);
  c->sq_len += need;
  if (c->deferred) {
    c->deferred = 0;
    nghttp2_session_resume_data(c->ng, c->stream_id);
  }
  mark_dirty(c);
  return 0;
}

size_t client_call_queued(const client_call *c) {
  return c->sq_len - c->sq_off;
}

void client_call_finish(client_call *c) {
  if (c->closing)
    return;
  if (!c->connected || (c->tls && !net_tls_established(c->tls))) {
    call_close(c, 0);
    return;
  }
  if (!c->local_end) {
    c->local_end = 1;
    if (c->deferred) {
      c->deferred = 0;
      nghttp2_session_resume_data(c->ng, c->stream_id);
    }
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    uv_timer_start(&c->timer, timer_cb, CLIENT_CALL_FINISH_TIMEOUT_MS, 0);
  }
  mark_dirty(c);
}

void client_call_abort(client_call *c) {
  call_close(c, SM_ECANCELED);
}

int client_call_usable(const client_call *c) {
  return c->ready && !c->closing && !c->ending && !c->local_end && !c->stream_closed;
}
