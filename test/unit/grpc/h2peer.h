/* h2peer.h - an in-memory HTTP/2 client (nghttp2) wired to a grpc_session, no sockets: the
 * transport is a byte buffer and the clock is a variable the test moves.
 *
 *   h2peer p; h2peer_init(&p, &cfg);
 *   int32_t id = h2peer_request(&p, "/test.Echo/Unary", NULL, 0, 0);
 *   h2peer_send_msg(&p, id, "hi", 2, 1);   // message, END_STREAM
 *   h2peer_pump(&p);
 *   T_EQ_INT(h2peer_stream(&p, id)->grpc_status, 0);
 */
#ifndef SM_TEST_H2PEER_H
#define SM_TEST_H2PEER_H

#include "grpc/frame.h"
#include "grpc/session.h"
#include "t.h"
#include "util/err.h"

#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define H2P_STREAMS 64
#define H2P_MSGS 16

typedef struct h2p_stream {
  int32_t id;
  int http_status; /* :status of the first HEADERS */
  int grpc_status; /* -1 until seen */
  char grpc_message[512];
  char accept_encoding[64];
  char content_type[64];
  int trailers_only;   /* grpc-status came in the first HEADERS */
  int headers;         /* HEADERS frames received */
  int closed;          /* stream closed */
  uint32_t close_code; /* error code of the close */
  int rst_received;
  int client_oom; /* the client's reader failed an (injected) allocation: messages lost */
  grpc_frame_reader reader;
  size_t nmsgs;
  uint8_t *msgs[H2P_MSGS];
  size_t msg_len[H2P_MSGS];
  /* request body to send */
  uint8_t *body;
  size_t body_len, body_off;
  int body_eos; /* END_STREAM after the body */
  int body_deferred;
} h2p_stream;

typedef struct h2peer {
  nghttp2_session *cli;
  grpc_session *srv;
  int srv_closed; /* grpc_session_flush said SM_ECLOSED, or an error closed it */
  int srv_err;    /* the error that closed it */
  /* transport */
  uint8_t *out; /* server -> client bytes not yet delivered */
  size_t out_len, out_cap;
  size_t fake_output; /* pretend this much is stuck in the socket */
  int flush_wanted;
  uint64_t now;       /* the clock */
  uint64_t timer_due; /* the session's timer; 0: none */
  int goaway_received;
  uint32_t goaway_error; /* error code of the last GOAWAY */
  int ping_acks;         /* PING ACKs the client received */
  int pings;             /* PINGs (not ACK) the client received */
  h2p_stream streams[H2P_STREAMS];
  size_t nstreams;
  int reading_stopped; /* the client does not read (stalled peer) */
} h2peer;

static size_t h2p_output(void *io) {
  h2peer *p = io;
  return p->out_len + p->fake_output;
}

static int h2p_write(void *io, const uint8_t *data, size_t len) {
  h2peer *p = io;
  if (p->out_len + len > p->out_cap) {
    size_t cap = p->out_cap ? p->out_cap : 4096;
    while (cap < p->out_len + len)
      cap *= 2;
    p->out = realloc(p->out, cap);
    T_ASSERT(p->out != NULL);
    p->out_cap = cap;
  }
  memcpy(p->out + p->out_len, data, len);
  p->out_len += len;
  return 0;
}

static void h2p_want_flush(void *io) {
  ((h2peer *)io)->flush_wanted = 1;
}

static void h2p_set_timer(void *io, uint64_t due) {
  ((h2peer *)io)->timer_due = due;
}

static uint64_t h2p_now(void *io) {
  return ((h2peer *)io)->now;
}

static const char *h2p_peer(void *io) {
  (void)io;
  return "192.0.2.1:4242";
}

static const grpc_session_io h2p_io = {h2p_output,    h2p_write, h2p_want_flush,
                                       h2p_set_timer, h2p_now,   h2p_peer};

static h2p_stream *h2peer_stream(h2peer *p, int32_t id) {
  for (size_t i = 0; i < p->nstreams; i++)
    if (p->streams[i].id == id)
      return &p->streams[i];
  return NULL;
}

static int h2p_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                         size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)s;
  (void)flags;
  h2peer *p = ud;
  h2p_stream *st = h2peer_stream(p, f->hd.stream_id);
  if (st == NULL)
    return 0;
  char v[512];
  size_t n = vlen < sizeof(v) - 1 ? vlen : sizeof(v) - 1;
  memcpy(v, value, n);
  v[n] = '\0';
  if (nlen == 7 && memcmp(name, ":status", 7) == 0)
    st->http_status = atoi(v);
  else if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0) {
    st->grpc_status = atoi(v);
    st->trailers_only = st->headers == 0;
  } else if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0)
    memcpy(st->grpc_message, v, n + 1);
  else if (nlen == 20 && memcmp(name, "grpc-accept-encoding", 20) == 0)
    memcpy(st->accept_encoding, v, n < 63 ? n + 1 : 64);
  else if (nlen == 12 && memcmp(name, "content-type", 12) == 0)
    memcpy(st->content_type, v, n < 63 ? n + 1 : 64);
  return 0;
}

static int h2p_on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  (void)s;
  h2peer *p = ud;
  h2p_stream *st = h2peer_stream(p, f->hd.stream_id);
  if (f->hd.type == NGHTTP2_HEADERS && st)
    st->headers++;
  if (f->hd.type == NGHTTP2_RST_STREAM && st)
    st->rst_received = 1;
  if (f->hd.type == NGHTTP2_GOAWAY) {
    p->goaway_received = 1;
    p->goaway_error = f->goaway.error_code;
  }
  if (f->hd.type == NGHTTP2_PING) {
    if (f->hd.flags & NGHTTP2_FLAG_ACK)
      p->ping_acks++;
    else
      p->pings++;
  }
  return 0;
}

static int h2p_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                       size_t len, void *ud) {
  (void)s;
  (void)flags;
  h2peer *p = ud;
  h2p_stream *st = h2peer_stream(p, id);
  if (st == NULL)
    return 0;
  size_t off = 0;
  while (off < len && !st->client_oom) {
    grpc_frame_msg m;
    size_t used;
    int r = grpc_frame_read(&st->reader, data + off, len - off, &used, &m);
    off += used;
    if (r == SM_ENOMEM) { /* the test's failure injection hit the client's own reader */
      st->client_oom = 1;
      break;
    }
    T_ASSERT(r >= 0);
    if (r == 0)
      break;
    T_ASSERT(st->nmsgs < H2P_MSGS);
    st->msgs[st->nmsgs] = malloc(m.len + 1);
    memcpy(st->msgs[st->nmsgs], m.data, m.len);
    st->msgs[st->nmsgs][m.len] = 0;
    st->msg_len[st->nmsgs++] = m.len;
  }
  return 0;
}

static int h2p_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud) {
  (void)s;
  h2peer *p = ud;
  h2p_stream *st = h2peer_stream(p, id);
  if (st) {
    st->closed = 1;
    st->close_code = code;
  }
  return 0;
}

static ssize_t h2p_body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                             uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)s;
  (void)id;
  (void)ud;
  h2p_stream *st = src->ptr;
  size_t n = st->body_len - st->body_off;
  if (n > length)
    n = length;
  if (n)
    memcpy(buf, st->body + st->body_off, n);
  st->body_off += n;
  if (st->body_off == st->body_len) {
    if (st->body_eos) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
      st->body_deferred = 1;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return (ssize_t)n;
}

/* The client side and the server session; returns grpc_session_create's result (the client is
 * released again when it fails). */
static int h2peer_init_try(h2peer *p, const grpc_session_config *cfg) {
  memset(p, 0, sizeof(*p));
  p->now = 1000000;
  nghttp2_session_callbacks *cbs;
  T_EQ_INT(nghttp2_session_callbacks_new(&cbs), 0);
  nghttp2_session_callbacks_set_on_header_callback(cbs, h2p_on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2p_on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2p_on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2p_on_close);
  T_EQ_INT(nghttp2_session_client_new(&p->cli, cbs, p), 0);
  nghttp2_session_callbacks_del(cbs);
  T_EQ_INT(nghttp2_submit_settings(p->cli, NGHTTP2_FLAG_NONE, NULL, 0), 0);
  int err = grpc_session_create(cfg, &h2p_io, p, &p->srv);
  if (err) {
    nghttp2_session_del(p->cli);
    p->cli = NULL;
    p->srv = NULL;
  }
  return err;
}

static void h2peer_init(h2peer *p, const grpc_session_config *cfg) {
  T_EQ_INT(h2peer_init_try(p, cfg), 0);
}

/* Moves bytes both ways until neither side has anything to say. */
static void h2peer_pump(h2peer *p) {
  for (int round = 0; round < 1000; round++) {
    int moved = 0;
    const uint8_t *data;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(p->cli, &data)) > 0) {
      moved = 1;
      if (p->srv && !p->srv_closed) {
        int err = grpc_session_recv(p->srv, data, (size_t)n);
        if (err) {
          p->srv_err = err;
          int ferr = grpc_session_flush(p->srv); /* a GOAWAY may be waiting */
          (void)ferr;
          p->srv_closed = 1;
        }
      }
    }
    T_ASSERT(n == 0);
    if (p->srv && !p->srv_closed) {
      int err = grpc_session_flush(p->srv);
      p->flush_wanted = 0;
      if (err) {
        p->srv_closed = 1;
        p->srv_err = err;
      }
    }
    if (p->out_len && !p->reading_stopped) {
      moved = 1;
      ssize_t r = nghttp2_session_mem_recv(p->cli, p->out, p->out_len);
      T_ASSERT(r == (ssize_t)p->out_len);
      p->out_len = 0;
    }
    if (!moved)
      return;
  }
  T_FAIL_("%s", "pump did not settle");
}

/* Moves the clock and runs the session's timer when due. Returns the timer's result. */
static int h2peer_advance(h2peer *p, uint64_t ms) {
  p->now += ms;
  int rc = 0;
  if (p->timer_due && p->now >= p->timer_due && p->srv && !p->srv_closed) {
    p->timer_due = 0;
    rc = grpc_session_timer(p->srv);
    if (rc) {
      p->srv_closed = 1;
      p->srv_err = rc;
    }
  }
  h2peer_pump(p);
  return rc;
}

/* Opens a request stream with the usual gRPC headers; extra is name/value pairs (may override
 * content-type or te: a NULL value drops that header). */
static int32_t h2peer_request_ex(h2peer *p, const char *method, const char *path,
                                 const char *const *extra, size_t nextra, int body_follows) {
  nghttp2_nv nva[32];
  size_t n = 0;
#define H2P_NV(nm, v)                                                                              \
  nva[n++] = (nghttp2_nv){(uint8_t *)(nm), (uint8_t *)(v), strlen(nm), strlen(v), 0}
  H2P_NV(":method", method);
  H2P_NV(":scheme", "http");
  H2P_NV(":authority", "localhost");
  H2P_NV(":path", path);
  int ct = 1, te = 1;
  for (size_t i = 0; i < nextra; i++) {
    if (strcmp(extra[2 * i], "content-type") == 0)
      ct = 0;
    if (strcmp(extra[2 * i], "te") == 0)
      te = 0;
  }
  if (ct)
    H2P_NV("content-type", "application/grpc");
  if (te)
    H2P_NV("te", "trailers");
  for (size_t i = 0; i < nextra; i++)
    if (extra[2 * i + 1] != NULL)
      H2P_NV(extra[2 * i], extra[2 * i + 1]);
#undef H2P_NV
  T_ASSERT(p->nstreams < H2P_STREAMS);
  h2p_stream *st = &p->streams[p->nstreams];
  memset(st, 0, sizeof(*st));
  st->grpc_status = -1;
  grpc_frame_reader_init(&st->reader, 64 << 20);
  nghttp2_data_provider prd = {.source.ptr = st, .read_callback = h2p_body_read};
  int32_t id = nghttp2_submit_request(p->cli, NULL, nva, n, body_follows ? &prd : NULL, st);
  T_ASSERT(id > 0);
  st->id = id;
  p->nstreams++;
  return id;
}

static int32_t h2peer_request(h2peer *p, const char *path, const char *const *extra,
                              size_t nextra) {
  return h2peer_request_ex(p, "POST", path, extra, nextra, 1);
}

/* Appends raw body bytes to a stream (eos: END_STREAM after them). */
static void h2peer_send_raw(h2peer *p, int32_t id, const void *data, size_t len, int eos) {
  h2p_stream *st = h2peer_stream(p, id);
  T_ASSERT(st != NULL);
  st->body = realloc(st->body, st->body_len + len + 1);
  if (len)
    memcpy(st->body + st->body_len, data, len);
  st->body_len += len;
  st->body_eos = eos;
  if (st->body_deferred) {
    st->body_deferred = 0;
    nghttp2_session_resume_data(p->cli, id);
  }
}

/* Appends one Length-Prefixed-Message. */
static void h2peer_send_msg(h2peer *p, int32_t id, const void *data, size_t len, int eos) {
  uint8_t hdr[GRPC_FRAME_HEADER_LEN];
  grpc_frame_header(hdr, 0, (uint32_t)len);
  h2peer_send_raw(p, id, hdr, sizeof(hdr), 0);
  h2peer_send_raw(p, id, data, len, eos);
}

static void h2peer_free(h2peer *p) {
  grpc_session_destroy(p->srv, SM_ECLOSED);
  p->srv = NULL;
  nghttp2_session_del(p->cli);
  for (size_t i = 0; i < p->nstreams; i++) {
    for (size_t j = 0; j < p->streams[i].nmsgs; j++)
      free(p->streams[i].msgs[j]);
    free(p->streams[i].body);
    grpc_frame_reader_finish(&p->streams[i].reader);
  }
  free(p->out);
}

#endif
