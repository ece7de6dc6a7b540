/* Unit tests of client/h2.c against an in-process HTTP/2 server (nghttp2 server session on a
 * loopback socket in the same loop): message reassembly across DATA frames, trailers and
 * grpc-message decoding, the incoming size limit, the send queue limit under a stalled peer,
 * graceful finish, and connection failures reported through on_closed. */
#include "agent.pb-c.h"
#include "client/h2.h"
#include "grpc/frame.h"
#include "t.h"
#include "util/err.h"
#include "util/log.h"

#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>

enum srv_mode { M_MESSAGES, M_OVERSIZE, M_STALL, M_ECHO_END };

typedef struct srv {
  uv_tcp_t lis;
  enum srv_mode mode;
  uv_tcp_t conn;
  nghttp2_session *ng;
  int32_t sid;
  uint8_t body[40000];
  size_t body_len, body_off;
  size_t received; /* request DATA bytes */
  int got_end;     /* request END_STREAM seen */
  int have_conn;
  int port;
  char path[64];
  char agent_id[64];
} srv;

typedef struct result {
  int ready, closed, err, grpc_status;
  char grpc_message[128];
  int nmsgs;
  size_t lens[8];
  char first_msg[32];
} result;

static void srv_flush(srv *s);

static void wfree(uv_write_t *w, int status) {
  (void)status;
  free(w->data);
  free(w);
}

static void srv_flush(srv *s) {
  const uint8_t *d;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(s->ng, &d)) > 0) {
    uv_write_t *w = malloc(sizeof(*w));
    uint8_t *copy = malloc((size_t)n);
    memcpy(copy, d, (size_t)n);
    w->data = copy;
    uv_buf_t b = uv_buf_init((char *)copy, (unsigned)n);
    uv_write(w, (uv_stream_t *)&s->conn, &b, 1, wfree);
  }
}

static ssize_t body_read(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  srv *s = ud;
  size_t n = s->body_len - s->body_off;
  (void)src;
  if (n > len)
    n = len;
  memcpy(buf, s->body + s->body_off, n);
  s->body_off += n;
  if (s->body_off == s->body_len) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (s->mode != M_OVERSIZE) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_nv tr[] = {
          {(uint8_t *)"grpc-status", (uint8_t *)"5", 11, 1, 0},
          {(uint8_t *)"grpc-message", (uint8_t *)"not%20found", 12, 11, 0},
      };
      nghttp2_submit_trailer(ng, sid, tr, 2);
    }
  }
  return (ssize_t)n;
}

static void respond(srv *s) {
  nghttp2_nv hd[] = {
      {(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
      {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
  };
  if (s->mode == M_ECHO_END) {
    nghttp2_nv tr[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
                       {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0}};
    nghttp2_submit_response(s->ng, s->sid, tr, 2, NULL);
    return;
  }
  nghttp2_data_provider dp = {.read_callback = body_read};
  nghttp2_submit_response(s->ng, s->sid, hd, 2, &dp);
}

static int s_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                       const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  srv *s = ud;
  (void)ng, (void)flags;
  s->sid = f->hd.stream_id;
  if (nl == 5 && !memcmp(name, ":path", 5) && vl < sizeof(s->path))
    memcpy(s->path, value, vl);
  if (nl == 8 && !memcmp(name, "agent-id", 8) && vl < sizeof(s->agent_id))
    memcpy(s->agent_id, value, vl);
  return 0;
}

static int s_on_frame(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
  srv *s = ud;
  (void)ng;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST &&
      s->mode != M_ECHO_END && s->mode != M_STALL)
    respond(s);
  if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
      (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    s->got_end = 1;
    if (s->mode == M_ECHO_END)
      respond(s);
  }
  return 0;
}

static int s_on_data(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *d, size_t len,
                     void *ud) {
  srv *s = ud;
  (void)ng, (void)flags, (void)sid, (void)d;
  s->received += len;
  return 0;
}

static void s_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h;
  b->base = malloc(hint);
  b->len = hint;
}

static void s_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  srv *s = st->data;
  if (getenv("T_DEBUG"))
    fprintf(stderr, "srv read %zd\n", n);
  if (n > 0) {
    nghttp2_session_mem_recv(s->ng, (const uint8_t *)b->base, (size_t)n);
    srv_flush(s);
  } else if (n < 0) {
    uv_read_stop(st);
  }
  free(b->base);
}

static void s_accept(uv_stream_t *lis, int status) {
  srv *s = lis->data;
  nghttp2_session_callbacks *cb;
  nghttp2_option *opt;
  T_EQ_INT(status, 0);
  uv_tcp_init(lis->loop, &s->conn);
  s->conn.data = s;
  T_EQ_INT(uv_accept(lis, (uv_stream_t *)&s->conn), 0);
  s->have_conn = 1;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_header_callback(cb, s_on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, s_on_frame);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, s_on_data);
  nghttp2_option_new(&opt);
  if (s->mode == M_STALL)
    nghttp2_option_set_no_auto_window_update(opt, 1); /* never grants more window */
  nghttp2_session_server_new2(&s->ng, cb, s, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, NULL, 0);
  srv_flush(s);
  uv_read_start((uv_stream_t *)&s->conn, s_alloc, s_read);
}

static void srv_start(uv_loop_t *loop, srv *s, enum srv_mode mode) {
  struct sockaddr_in a;
  struct sockaddr_storage got;
  int len = sizeof(got);
  memset(s, 0, sizeof(*s));
  s->mode = mode;
  uv_tcp_init(loop, &s->lis);
  s->lis.data = s;
  uv_ip4_addr("127.0.0.1", 0, &a);
  T_EQ_INT(uv_tcp_bind(&s->lis, (const struct sockaddr *)&a, 0), 0);
  T_EQ_INT(uv_listen((uv_stream_t *)&s->lis, 8, s_accept), 0);
  uv_tcp_getsockname(&s->lis, (struct sockaddr *)&got, &len);
  s->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
}

static void srv_stop(srv *s) {
  uv_close((uv_handle_t *)&s->lis, NULL);
  if (s->have_conn)
    uv_close((uv_handle_t *)&s->conn, NULL);
  nghttp2_session_del(s->ng);
}

/* Appends one framed PingResponse with a message of `len` 'x' bytes to the server's body. */
static void body_add(srv *s, size_t len) {
  Scan__PingResponse r = SCAN__PING_RESPONSE__INIT;
  char *m = malloc(len + 1);
  memset(m, 'x', len);
  m[len] = '\0';
  r.message = m;
  r.timestamp = 7;
  size_t n = scan__ping_response__get_packed_size(&r);
  grpc_frame_header(s->body + s->body_len, 0, (uint32_t)n);
  scan__ping_response__pack(&r, s->body + s->body_len + GRPC_FRAME_HEADER_LEN);
  s->body_len += GRPC_FRAME_HEADER_LEN + n;
  free(m);
}

/* ---- client side ---- */

static void c_ready(client_call *c, void *ud) {
  result *r = ud;
  (void)c;
  r->ready = 1;
}

static void c_message(client_call *c, void *ud, const uint8_t *msg, size_t len) {
  result *r = ud;
  (void)c;
  Scan__PingResponse *p = scan__ping_response__unpack(NULL, len, msg);
  T_ASSERT(p != NULL);
  T_EQ_INT(p->timestamp, 7);
  if (r->nmsgs == 0)
    snprintf(r->first_msg, sizeof(r->first_msg), "%.5s", p->message);
  if (r->nmsgs < 8)
    r->lens[r->nmsgs] = strlen(p->message);
  r->nmsgs++;
  scan__ping_response__free_unpacked(p, NULL);
}

static void c_closed(void *ud, int err, int grpc_status, const char *grpc_message) {
  result *r = ud;
  r->closed++;
  r->err = err;
  r->grpc_status = grpc_status;
  snprintf(r->grpc_message, sizeof(r->grpc_message), "%s", grpc_message);
}

static const client_call_cbs cbs = {c_ready, c_message, c_closed};

static client_call *start(client_ctx *ctx, int port, result *r) {
  struct sockaddr_in a;
  client_header h[] = {{"agent-id", "unit-1"}};
  client_call *c = NULL;
  uv_ip4_addr("127.0.0.1", port, &a);
  client_call_req req = {.addr = (const struct sockaddr *)&a,
                         .authority = "127.0.0.1",
                         .path = "/scan.AgentService/Connect",
                         .headers = h,
                         .nheaders = 1};
  memset(r, 0, sizeof(*r));
  T_EQ_INT(client_call_start(ctx, &req, &cbs, r, &c), 0);
  T_EQ_INT(r->closed, 0); /* never inside the call */
  return c;
}

static void run_until(uv_loop_t *loop, const int *flag) {
  for (int i = 0; i < 100000 && !*flag; i++)
    uv_run(loop, UV_RUN_ONCE);
  T_ASSERT(*flag);
}

static void test_messages_and_trailers(void) {
  uv_loop_t loop;
  client_ctx *ctx;
  srv s;
  result r;
  uv_loop_init(&loop);
  T_EQ_INT(client_ctx_create(&loop, &ctx), 0);
  srv_start(&loop, &s, M_MESSAGES);
  body_add(&s, 20000); /* spans two DATA frames: reassembled */
  body_add(&s, 10);
  start(ctx, s.port, &r);
  run_until(&loop, &r.closed);
  T_EQ_INT(r.ready, 1);
  T_EQ_INT(r.nmsgs, 2);
  T_EQ_INT(r.lens[0], 20000);
  T_EQ_INT(r.lens[1], 10);
  T_EQ_STR(r.first_msg, "xxxxx");
  T_EQ_INT(r.err, 0);
  T_EQ_INT(r.grpc_status, 5);
  T_EQ_STR(r.grpc_message, "not found");
  T_EQ_STR(s.path, "/scan.AgentService/Connect");
  T_EQ_STR(s.agent_id, "unit-1");
  srv_stop(&s);
  client_ctx_close(ctx);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_oversize_message_refused(void) {
  uv_loop_t loop;
  client_ctx *ctx;
  srv s;
  result r;
  uv_loop_init(&loop);
  T_EQ_INT(client_ctx_create(&loop, &ctx), 0);
  srv_start(&loop, &s, M_OVERSIZE);
  grpc_frame_header(s.body, 0, CLIENT_CALL_RECV_MAX + 1);
  s.body_len = GRPC_FRAME_HEADER_LEN + 100;
  start(ctx, s.port, &r);
  run_until(&loop, &r.closed);
  T_EQ_INT(r.err, SM_ETOOBIG);
  T_EQ_INT(r.nmsgs, 0);
  srv_stop(&s);
  client_ctx_close(ctx);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_send_limit_with_stalled_peer(void) {
  uv_loop_t loop;
  client_ctx *ctx;
  srv s;
  result r;
  Scan__PingRequest p = SCAN__PING_REQUEST__INIT;
  char *big = malloc(100001);
  memset(big, 'a', 100000);
  big[100000] = '\0';
  p.agent_id = big;
  uv_loop_init(&loop);
  T_EQ_INT(client_ctx_create(&loop, &ctx), 0);
  srv_start(&loop, &s, M_STALL);
  client_call *c = start(ctx, s.port, &r);
  run_until(&loop, &r.ready);
  int rc = 0, sent = 0;
  while (rc == 0 && sent < 100) {
    rc = client_call_send(c, &p.base);
    if (rc == 0)
      sent++;
    for (int i = 0; i < 20; i++)
      uv_run(&loop, UV_RUN_NOWAIT);
  }
  T_EQ_INT(rc, SM_ELIMIT);
  T_ASSERT(client_call_queued(c) <= CLIENT_CALL_SEND_MAX);
  /* the peer took at most its flow-control window (64 KiB), the rest waits, bounded */
  T_ASSERT(s.received <= 65535);
  T_ASSERT(sent >= 10);
  client_call_abort(c);
  run_until(&loop, &r.closed);
  T_EQ_INT(r.err, SM_ECANCELED);
  srv_stop(&s);
  client_ctx_close(ctx);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
  free(big);
}

static void test_finish_is_graceful(void) {
  uv_loop_t loop;
  client_ctx *ctx;
  srv s;
  result r;
  Scan__PingRequest p = SCAN__PING_REQUEST__INIT;
  p.agent_id = (char *)"hello";
  uv_loop_init(&loop);
  T_EQ_INT(client_ctx_create(&loop, &ctx), 0);
  srv_start(&loop, &s, M_ECHO_END);
  client_call *c = start(ctx, s.port, &r);
  run_until(&loop, &r.ready);
  T_EQ_INT(client_call_send(c, &p.base), 0);
  client_call_finish(c);
  run_until(&loop, &r.closed);
  T_EQ_INT(s.got_end, 1);
  T_EQ_INT(s.received, GRPC_FRAME_HEADER_LEN + 7);
  T_EQ_INT(r.err, 0);
  T_EQ_INT(r.grpc_status, 0);
  srv_stop(&s);
  client_ctx_close(ctx);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_refused_reports_through_callback(void) {
  uv_loop_t loop;
  client_ctx *ctx;
  srv s;
  result r;
  int port;
  uv_loop_init(&loop);
  T_EQ_INT(client_ctx_create(&loop, &ctx), 0);
  srv_start(&loop, &s, M_MESSAGES); /* take a free port, then close it */
  port = s.port;
  srv_stop(&s);
  uv_run(&loop, UV_RUN_NOWAIT);
  start(ctx, port, &r);
  run_until(&loop, &r.closed);
  T_EQ_INT(r.closed, 1);
  T_EQ_INT(r.ready, 0);
  T_ASSERT(r.err < 0);
  client_ctx_close(ctx);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void) {
  if (getenv("T_DEBUG"))
    sm_log_configure(SM_LOG_DEBUG, SM_LOG_CONSOLE);
  T_RUN(test_messages_and_trailers);
  T_RUN(test_oversize_message_refused);
  T_RUN(test_send_limit_with_stalled_peer);
  T_RUN(test_finish_is_graceful);
  T_RUN(test_refused_reports_through_callback);
  return t_done();
}
