/* test-session.c - grpc/session against an in-memory nghttp2 client: framing, trailers,
 * Trailers-Only errors, limits, deadlines, keepalive, idle, drain, bad input; allocation failure
 * injected into every allocation of a session and of a call (every started call's on_close runs
 * exactly once, nothing leaks, the session or a new one still serves), and sessions destroyed
 * with calls, streams and queued output open. */
#include "grpc/session.h"

#include "h2peer.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <stdio.h>

/* ---- a test service: test.Echo ---- */

static int closes; /* on_close calls */
static int last_close_reason;
static int last_send_err; /* what the last grpc_call_send_bytes returned */
static char last_agent_id[64];

static void echo_msg(grpc_call *c, const uint8_t *d, size_t n) {
  last_send_err = grpc_call_send_bytes(c, d, n);
}
static void unary_msg(grpc_call *c, const uint8_t *d, size_t n) {
  echo_msg(c, d, n);
  grpc_call_finish(c, GRPC_OK, NULL);
}
static void stream_half_close(grpc_call *c) {
  grpc_call_finish(c, GRPC_OK, "done");
}
static void fail_msg(grpc_call *c, const uint8_t *d, size_t n) {
  (void)d;
  (void)n;
  grpc_call_finish(c, GRPC_INVALID_ARGUMENT, "bad: \xc3\xbc 100%\n");
}
static void timeout_start(grpc_call *c) {
  grpc_call_set_timeout(c, 500, GRPC_UNAUTHENTICATED, "no first message");
}
static void timeout_msg(grpc_call *c, const uint8_t *d, size_t n) {
  (void)d;
  (void)n;
  grpc_call_set_timeout(c, 0, 0, NULL);
}
static void header_msg(grpc_call *c, const uint8_t *d, size_t n) {
  (void)d;
  (void)n;
  const char *v = grpc_call_header(c, "agent-id");
  snprintf(last_agent_id, sizeof(last_agent_id), "%s", v ? v : "(none)");
  T_ASSERT(grpc_call_header(c, "content-type") == NULL); /* not custom metadata */
  T_ASSERT(grpc_call_header(c, "te") == NULL);
  T_EQ_STR(grpc_call_peer(c), "192.0.2.1:4242");
  T_EQ_STR(grpc_call_path(c), "/test.Echo/Header");
  T_EQ_INT(grpc_call_service_data(c) == &closes, 1);
  grpc_call_finish(c, GRPC_OK, NULL);
}
static void record_close(grpc_call *c, int reason) {
  T_ASSERT(grpc_call_path(c)[0] == '/');
  closes++;
  last_close_reason = reason;
}

static const grpc_method echo_methods[] = {
    {.name = "Unary", .on_message = unary_msg, .on_close = record_close},
    {.name = "Stream",
     .client_streaming = 1,
     .on_message = echo_msg,
     .on_half_close = stream_half_close,
     .on_close = record_close},
    {.name = "Hold", .client_streaming = 1, .on_close = record_close},
    {.name = "Fail", .on_message = fail_msg, .on_close = record_close},
    {.name = "Timeout",
     .client_streaming = 1,
     .on_start = timeout_start,
     .on_message = timeout_msg,
     .on_close = record_close},
    {.name = "Header", .on_message = header_msg, .on_close = record_close},
};
static const grpc_service echo_service = {"test.Echo", echo_methods,
                                          sizeof(echo_methods) / sizeof(echo_methods[0]), &closes};
static const grpc_service *const services[] = {&echo_service};

static grpc_session_config cfg;

static void reset_cfg(void) {
  cfg = (grpc_session_config){
      .services = services,
      .nservices = 1,
      .max_message_bytes = 256 * 1024,
      .max_streams = 4,
      .max_header_bytes = 16 * 1024,
      .stream_window = 65535,
      .connection_window = 1 << 20,
      .keepalive_ms = 60000,
      .keepalive_timeout_ms = 20000,
      .idle_ms = 300000,
      .max_output_bytes = 256 * 1024,
      .stall_ms = 30000,
  };
  closes = 0;
  last_close_reason = 12345;
  last_send_err = 12345;
}

static h2p_stream *unary(h2peer *p, const char *path, const char *body, const char *const *extra,
                         size_t nextra) {
  int32_t id = h2peer_request(p, path, extra, nextra);
  h2peer_send_msg(p, id, body, strlen(body), 1);
  h2peer_pump(p);
  return h2peer_stream(p, id);
}

/* ---- cases ---- */

static void test_unary_echo(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  h2peer_pump(&p);
  h2p_stream *st = unary(&p, "/test.Echo/Unary", "hello", NULL, 0);
  T_EQ_INT(st->http_status, 200);
  T_EQ_STR(st->content_type, "application/grpc");
  T_EQ_INT(st->nmsgs, 1);
  T_EQ_STR((char *)st->msgs[0], "hello");
  T_EQ_INT(st->grpc_status, 0);
  T_ASSERT(!st->trailers_only);
  T_EQ_INT(st->headers, 2); /* headers, trailers */
  T_ASSERT(st->closed);
  T_EQ_INT(st->close_code, 0);
  T_EQ_INT(closes, 1);
  T_EQ_INT(last_close_reason, 0);
  T_EQ_INT(grpc_session_calls(p.srv), 0);

  /* many calls on one connection */
  for (int i = 0; i < 20; i++) {
    char body[32];
    snprintf(body, sizeof(body), "m%d", i);
    st = unary(&p, "/test.Echo/Unary", body, NULL, 0);
    T_EQ_STR((char *)st->msgs[0], body);
    if (p.nstreams == H2P_STREAMS)
      break;
  }
  h2peer_free(&p);
}

static void test_split_and_joined_messages(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  int32_t id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  /* one message of 200 KB: many DATA frames, several WINDOW_UPDATEs */
  static uint8_t big[200000];
  for (size_t i = 0; i < sizeof(big); i++)
    big[i] = (uint8_t)(i * 31 + 7);
  h2peer_send_msg(&p, id, big, sizeof(big), 0);
  h2peer_pump(&p);
  h2p_stream *st = h2peer_stream(&p, id);
  T_EQ_INT(st->nmsgs, 1);
  T_EQ_INT(st->msg_len[0], sizeof(big));
  T_ASSERT(memcmp(st->msgs[0], big, sizeof(big)) == 0);

  /* three messages in one write (one DATA frame), one of them empty */
  uint8_t joined[64];
  size_t n = 0;
  const char *parts[] = {"a", "", "ccc"};
  for (int i = 0; i < 3; i++) {
    grpc_frame_header(joined + n, 0, (uint32_t)strlen(parts[i]));
    n += GRPC_FRAME_HEADER_LEN;
    memcpy(joined + n, parts[i], strlen(parts[i]));
    n += strlen(parts[i]);
  }
  h2peer_send_raw(&p, id, joined, n, 0);
  h2peer_pump(&p);
  T_EQ_INT(st->nmsgs, 4);
  T_EQ_STR((char *)st->msgs[1], "a");
  T_EQ_INT(st->msg_len[2], 0);
  T_EQ_STR((char *)st->msgs[3], "ccc");

  /* a message dribbled one byte per DATA frame */
  uint8_t one[GRPC_FRAME_HEADER_LEN + 4];
  grpc_frame_header(one, 0, 4);
  memcpy(one + GRPC_FRAME_HEADER_LEN, "abcd", 4);
  for (size_t i = 0; i < sizeof(one); i++) {
    h2peer_send_raw(&p, id, one + i, 1, 0);
    h2peer_pump(&p);
  }
  T_EQ_INT(st->nmsgs, 5);
  T_EQ_STR((char *)st->msgs[4], "abcd");

  h2peer_send_raw(&p, id, NULL, 0, 1); /* half close */
  h2peer_pump(&p);
  T_EQ_INT(st->grpc_status, 0);
  T_EQ_STR(st->grpc_message, "done");
  T_EQ_INT(closes, 1);
  T_EQ_INT(last_close_reason, 0);
  h2peer_free(&p);
}

static void test_limits(void) {
  reset_cfg();
  cfg.max_message_bytes = 1024;
  h2peer p;
  h2peer_init(&p, &cfg);
  static char big[2000];
  memset(big, 'x', sizeof(big) - 1);
  h2p_stream *st = unary(&p, "/test.Echo/Unary", big, NULL, 0);
  T_EQ_INT(st->grpc_status, GRPC_RESOURCE_EXHAUSTED);
  T_ASSERT(st->trailers_only);
  T_ASSERT(strstr(st->grpc_message, "larger than max (1999 vs. 1024)") != NULL);
  T_EQ_INT(st->nmsgs, 0);

  /* exactly the maximum passes */
  big[1024] = '\0';
  st = unary(&p, "/test.Echo/Unary", big, NULL, 0);
  T_EQ_INT(st->grpc_status, 0);
  T_EQ_INT(st->msg_len[0], 1024);

  /* a response above the maximum is refused to the handler */
  int32_t id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  h2peer_send_msg(&p, id, "x", 1, 0);
  h2peer_pump(&p);
  T_EQ_INT(last_send_err, 0);
  h2peer_free(&p);
}

static void test_routing_errors(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  h2p_stream *st = unary(&p, "/test.Echo/Nope", "x", NULL, 0);
  T_EQ_INT(st->http_status, 200);
  T_EQ_INT(st->grpc_status, GRPC_UNIMPLEMENTED);
  T_ASSERT(st->trailers_only);
  T_EQ_INT(st->headers, 1);
  T_ASSERT(strstr(st->grpc_message, "unknown method Nope") != NULL);
  st = unary(&p, "/other.Service/Ping", "x", NULL, 0);
  T_EQ_INT(st->grpc_status, GRPC_UNIMPLEMENTED);
  T_ASSERT(strstr(st->grpc_message, "unknown service other.Service") != NULL);
  st = unary(&p, "/nope", "x", NULL, 0);
  T_EQ_INT(st->grpc_status, GRPC_UNIMPLEMENTED);
  st = unary(&p, "/test.Echo/Unary/extra", "x", NULL, 0);
  T_EQ_INT(st->grpc_status, GRPC_UNIMPLEMENTED);
  T_EQ_INT(closes, 0); /* no handler ran */
  h2peer_free(&p);
}

static void test_not_grpc_requests(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  const char *json[] = {"content-type", "application/json"};
  h2p_stream *st = unary(&p, "/test.Echo/Unary", "x", json, 1);
  T_EQ_INT(st->http_status, 415);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_ASSERT(st->trailers_only);

  const char *grpcweb[] = {"content-type", "application/grpcfoo"};
  st = unary(&p, "/test.Echo/Unary", "x", grpcweb, 1);
  T_EQ_INT(st->http_status, 415);

  const char *proto[] = {"content-type", "application/grpc+proto"};
  st = unary(&p, "/test.Echo/Unary", "x", proto, 1);
  T_EQ_INT(st->grpc_status, 0);

  const char *no_te[] = {"te", NULL};
  st = unary(&p, "/test.Echo/Unary", "x", no_te, 1);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_ASSERT(strstr(st->grpc_message, "te") != NULL);

  int32_t id = h2peer_request_ex(&p, "GET", "/test.Echo/Unary", NULL, 0, 0);
  h2peer_pump(&p);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->http_status, 405);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);

  const char *bad_timeout[] = {"grpc-timeout", "12x"};
  st = unary(&p, "/test.Echo/Unary", "x", bad_timeout, 1);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_ASSERT(strstr(st->grpc_message, "grpc-timeout") != NULL);
  T_EQ_INT(closes, 1); /* only the +proto call reached the handler */
  h2peer_free(&p);
}

static void test_bad_messages(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);

  /* compressed with an encoding we do not have */
  const char *gzip[] = {"grpc-encoding", "gzip"};
  int32_t id = h2peer_request(&p, "/test.Echo/Unary", gzip, 1);
  uint8_t hdr[GRPC_FRAME_HEADER_LEN];
  grpc_frame_header(hdr, 1, 3);
  h2peer_send_raw(&p, id, hdr, sizeof(hdr), 0);
  h2peer_send_raw(&p, id, "abc", 3, 1);
  h2peer_pump(&p);
  h2p_stream *st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, GRPC_UNIMPLEMENTED);
  T_EQ_STR(st->accept_encoding, "identity");

  /* gzip announced but the message is not compressed: fine */
  st = unary(&p, "/test.Echo/Unary", "plain", gzip, 1);
  T_EQ_INT(st->grpc_status, 0);
  T_EQ_STR((char *)st->msgs[0], "plain");

  /* compressed flag without grpc-encoding */
  id = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
  h2peer_send_raw(&p, id, hdr, sizeof(hdr), 0);
  h2peer_send_raw(&p, id, "abc", 3, 1);
  h2peer_pump(&p);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, GRPC_INTERNAL);

  /* Compressed-Flag 2 */
  id = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
  hdr[0] = 2;
  h2peer_send_raw(&p, id, hdr, sizeof(hdr), 0);
  h2peer_send_raw(&p, id, "abc", 3, 1);
  h2peer_pump(&p);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, GRPC_INTERNAL);

  /* unary without a message */
  id = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
  h2peer_send_raw(&p, id, NULL, 0, 1);
  h2peer_pump(&p);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_ASSERT(strstr(st->grpc_message, "missing") != NULL);

  /* unary with HEADERS carrying END_STREAM */
  id = h2peer_request_ex(&p, "POST", "/test.Echo/Unary", NULL, 0, 0);
  h2peer_pump(&p);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, GRPC_INTERNAL);

  /* unary with two messages: INTERNAL, the method never sees the request (it answers only once
   * the request is complete, at END_STREAM) */
  id = h2peer_request(&p, "/test.Echo/Fail", NULL, 0);
  h2peer_send_msg(&p, id, "1", 1, 0);
  h2peer_send_msg(&p, id, "2", 1, 1);
  h2peer_pump(&p);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_EQ_STR(st->grpc_message, "more than one request message for a unary method");
  /* the same when both come in one DATA frame, on a method that answers at once */
  static const uint8_t two[] = {0, 0, 0, 0, 1, 'a', 0, 0, 0, 0, 1, 'b'};
  id = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
  h2peer_send_raw(&p, id, two, sizeof(two), 1);
  h2peer_pump(&p);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_EQ_INT(st->nmsgs, 0);
  /* and a second message begun (a lone byte) is refused as well */
  id = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
  h2peer_send_raw(&p, id, two, 7, 1);
  h2peer_pump(&p);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, GRPC_INTERNAL);
  /* a single message (also an empty one) is still answered */
  st = unary(&p, "/test.Echo/Unary", "", NULL, 0);
  T_EQ_INT(st->grpc_status, GRPC_OK);
  T_EQ_INT(st->nmsgs, 1);
  T_EQ_INT(st->msg_len[0], 0);
  T_EQ_INT(grpc_session_buffered(p.srv), 0);

  /* truncated: the prefix announces 10 bytes, 3 come, then END_STREAM */
  id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  grpc_frame_header(hdr, 0, 10);
  h2peer_send_raw(&p, id, hdr, sizeof(hdr), 0);
  h2peer_send_raw(&p, id, "abc", 3, 1);
  h2peer_pump(&p);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_ASSERT(strstr(st->grpc_message, "inside a message") != NULL);

  /* truncated inside the 5-byte prefix */
  id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  h2peer_send_raw(&p, id, hdr, 2, 1);
  h2peer_pump(&p);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, GRPC_INTERNAL);
  h2peer_free(&p);
}

static void test_deadlines_and_timers(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  const char *t200[] = {"grpc-timeout", "200m"};
  int32_t id = h2peer_request(&p, "/test.Echo/Hold", t200, 1);
  h2peer_send_msg(&p, id, "x", 1, 0);
  h2peer_pump(&p);
  h2peer_advance(&p, 199);
  h2p_stream *st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, -1);
  h2peer_advance(&p, 1);
  T_EQ_INT(st->grpc_status, GRPC_DEADLINE_EXCEEDED);
  T_ASSERT(st->closed);
  T_EQ_INT(closes, 1);
  T_EQ_INT(last_close_reason, 0);

  /* the handler's own timer (first-message timeout of a stream) */
  id = h2peer_request(&p, "/test.Echo/Timeout", NULL, 0);
  h2peer_pump(&p);
  h2peer_advance(&p, 499);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, -1);
  h2peer_advance(&p, 1);
  T_EQ_INT(st->grpc_status, GRPC_UNAUTHENTICATED);
  T_EQ_STR(st->grpc_message, "no first message");

  /* cancelled by a message in time */
  id = h2peer_request(&p, "/test.Echo/Timeout", NULL, 0);
  h2peer_pump(&p);
  h2peer_advance(&p, 100);
  h2peer_send_msg(&p, id, "hi", 2, 0);
  h2peer_pump(&p);
  h2peer_advance(&p, 1000);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, -1);

  /* the client cancels it */
  T_EQ_INT(nghttp2_submit_rst_stream(p.cli, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL), 0);
  int before = closes;
  h2peer_pump(&p);
  T_EQ_INT(closes, before + 1);
  T_EQ_INT(last_close_reason, SM_ECANCELED);
  h2peer_free(&p);
}

static void test_headers_and_metadata(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  const char *meta[] = {"agent-id", "agent-7", "authorization", "Bearer x"};
  h2p_stream *st = unary(&p, "/test.Echo/Header", "x", meta, 2);
  T_EQ_INT(st->grpc_status, 0);
  T_EQ_STR(last_agent_id, "agent-7");
  st = unary(&p, "/test.Echo/Header", "x", NULL, 0);
  T_EQ_STR(last_agent_id, "(none)");

  /* a header list above the limit */
  static char huge[20000];
  memset(huge, 'v', sizeof(huge) - 1);
  const char *big[] = {"x-big", huge};
  st = unary(&p, "/test.Echo/Header", "x", big, 1);
  T_EQ_INT(st->grpc_status, GRPC_RESOURCE_EXHAUSTED);
  h2peer_free(&p);
}

static void test_concurrent_streams_limit(void) {
  reset_cfg();
  cfg.max_streams = 2;
  h2peer p;
  h2peer_init(&p, &cfg);
  /* Three streams before the client saw our SETTINGS: the third is refused. */
  int32_t a = h2peer_request(&p, "/test.Echo/Hold", NULL, 0);
  int32_t b = h2peer_request(&p, "/test.Echo/Hold", NULL, 0);
  int32_t c = h2peer_request(&p, "/test.Echo/Hold", NULL, 0);
  h2peer_pump(&p);
  T_EQ_INT(grpc_session_calls(p.srv), 2);
  T_ASSERT(!h2peer_stream(&p, a)->closed && !h2peer_stream(&p, b)->closed);
  T_ASSERT(h2peer_stream(&p, c)->closed);
  T_EQ_INT(h2peer_stream(&p, c)->close_code, NGHTTP2_REFUSED_STREAM);
  h2peer_free(&p);
}

static void test_keepalive(void) {
  reset_cfg();
  cfg.keepalive_ms = 1000;
  cfg.keepalive_timeout_ms = 500;
  h2peer p;
  h2peer_init(&p, &cfg);
  h2peer_pump(&p);
  h2peer_advance(&p, 1000);
  T_EQ_INT(p.pings, 1);
  T_EQ_INT(h2peer_advance(&p, 600), 0); /* answered: still open */
  T_ASSERT(!p.srv_closed);
  /* the peer goes deaf: the next PING gets no answer */
  p.reading_stopped = 1;
  h2peer_advance(&p, 1000);
  T_EQ_INT(h2peer_advance(&p, 500), SM_ETIMEDOUT);
  T_ASSERT(p.srv_closed);
  h2peer_free(&p);
}

static void test_idle_timeout(void) {
  reset_cfg();
  cfg.keepalive_ms = 0;
  cfg.idle_ms = 5000;
  h2peer p;
  h2peer_init(&p, &cfg);
  h2peer_pump(&p);
  int32_t id = h2peer_request(&p, "/test.Echo/Hold", NULL, 0);
  h2peer_pump(&p);
  h2peer_advance(&p, 6000); /* a call is open: not idle */
  T_ASSERT(!p.goaway_received);
  nghttp2_submit_rst_stream(p.cli, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
  h2peer_pump(&p);
  h2peer_advance(&p, 4999);
  T_ASSERT(!p.goaway_received);
  h2peer_advance(&p, 1);
  T_ASSERT(p.goaway_received);
  T_ASSERT(p.srv_closed);
  T_EQ_INT(p.srv_err, SM_ECLOSED);
  h2peer_free(&p);
}

static void test_drain(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  int32_t id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  h2peer_send_msg(&p, id, "1", 1, 0);
  h2peer_pump(&p);
  grpc_session_drain(p.srv);
  h2peer_pump(&p);
  T_ASSERT(p.goaway_received);
  T_ASSERT(!p.srv_closed); /* the call in progress goes on */
  h2peer_send_msg(&p, id, "2", 1, 1);
  h2peer_pump(&p);
  h2p_stream *st = h2peer_stream(&p, id);
  T_EQ_INT(st->nmsgs, 2);
  T_EQ_INT(st->grpc_status, 0);
  T_ASSERT(p.srv_closed); /* then the connection is done */
  T_EQ_INT(p.srv_err, SM_ECLOSED);
  h2peer_free(&p);
}

static void test_output_limit_and_stall(void) {
  reset_cfg();
  cfg.max_output_bytes = 64 * 1024;
  cfg.stall_ms = 3000;
  h2peer p;
  h2peer_init(&p, &cfg);
  int32_t id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  h2peer_send_msg(&p, id, "a", 1, 0);
  h2peer_pump(&p);
  T_EQ_INT(last_send_err, 0);
  /* the socket is full: sends are refused, the session stops producing */
  p.fake_output = 64 * 1024;
  h2peer_send_msg(&p, id, "b", 1, 0);
  h2peer_pump(&p);
  T_EQ_INT(last_send_err, SM_EAGAIN);
  T_EQ_INT(h2peer_advance(&p, 2000), 0);
  /* drains in time: fine again */
  p.fake_output = 0;
  h2peer_pump(&p);
  T_EQ_INT(h2peer_advance(&p, 2000), 0);
  T_ASSERT(!p.srv_closed);
  /* stuck for good: dropped after the stall timeout */
  p.fake_output = 100 * 1024;
  h2peer_send_msg(&p, id, "c", 1, 0);
  h2peer_pump(&p);
  T_EQ_INT(h2peer_advance(&p, 2999), 0);
  T_EQ_INT(h2peer_advance(&p, 1), SM_ETIMEDOUT);
  h2peer_free(&p);
  T_EQ_INT(last_close_reason, SM_ECLOSED);
}

static void test_flow_control_stall(void) {
  /* The client stops granting window: replies pile up in the call's queue until the limit,
   * then sends are refused (memory stays bounded). */
  reset_cfg();
  cfg.max_output_bytes = 32 * 1024;
  h2peer p;
  h2peer_init(&p, &cfg);
  int32_t id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  h2peer_pump(&p);
  nghttp2_session_set_local_window_size(p.cli, NGHTTP2_FLAG_NONE, id, 0);
  static uint8_t chunk[4000];
  int refused = 0;
  for (int i = 0; i < 40; i++) {
    h2peer_send_msg(&p, id, chunk, sizeof(chunk), 0);
    h2peer_pump(&p);
    if (last_send_err == SM_EAGAIN)
      refused++;
  }
  T_ASSERT(refused > 0);
  h2peer_free(&p);
}

static void test_bad_preface_and_garbage(void) {
  reset_cfg();
  grpc_session *s;
  h2peer p;
  memset(&p, 0, sizeof(p));
  T_EQ_INT(grpc_session_create(&cfg, &h2p_io, &p, &s), 0);
  static const char http1[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  T_EQ_INT(grpc_session_recv(s, (const uint8_t *)http1, sizeof(http1) - 1), SM_EPROTO);
  grpc_session_destroy(s, SM_EPROTO);

  /* random frames after a valid preface: never a crash */
  srand(7);
  for (int round = 0; round < 300; round++) {
    T_EQ_INT(grpc_session_create(&cfg, &h2p_io, &p, &s), 0);
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    T_EQ_INT(grpc_session_recv(s, (const uint8_t *)preface, sizeof(preface) - 1), 0);
    uint8_t junk[600];
    size_t n = (size_t)(rand() % (int)sizeof(junk));
    for (size_t i = 0; i < n; i++)
      junk[i] = (uint8_t)rand();
    /* half the rounds get a plausible frame header */
    if (round % 2 && n >= 9) {
      junk[0] = 0;
      junk[1] = 0;
      junk[2] = (uint8_t)(n - 9 > 255 ? 255 : n - 9);
      junk[3] = (uint8_t)(rand() % 10);
      junk[5] = junk[6] = junk[7] = 0;
      junk[8] = (uint8_t)(rand() % 4 * 2 + 1);
    }
    int rc = grpc_session_recv(s, junk, n); /* garbage: any outcome but a crash or a leak */
    rc = grpc_session_flush(s);
    (void)rc;
    p.out_len = 0;
    grpc_session_destroy(s, SM_EPROTO);
  }
  free(p.out);
}

static void test_destroy_with_open_calls(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  h2peer_request(&p, "/test.Echo/Hold", NULL, 0);
  h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  h2peer_pump(&p);
  T_EQ_INT(grpc_session_calls(p.srv), 2);
  h2peer_free(&p);
  T_EQ_INT(closes, 2);
  T_EQ_INT(last_close_reason, SM_ECLOSED);
}

/* ---- allocation failure and close with work pending ---- */

static int starts, ends;
static void count_start(void *ud, const char *path) {
  (void)ud;
  (void)path;
  starts++;
}
static void count_end(void *ud, const char *path, int known, int started, int status) {
  (void)ud;
  (void)path;
  (void)known;
  (void)status;
  ends += started;
}

static void test_alloc_fail_create(void) {
  reset_cfg();
  h2peer p;
  long nth;
  for (nth = 0; nth < 1000; nth++) {
    sm_alloc_fail_at(nth, 0);
    int err = h2peer_init_try(&p, &cfg);
    sm_alloc_fail_at(-1, 0);
    if (err == 0)
      break;
    T_EQ_INT(err, SM_ENOMEM);
  }
  T_ASSERT(nth > 0 && nth < 1000);
  h2p_stream *st = unary(&p, "/test.Echo/Unary", "hello", NULL, 0);
  T_EQ_INT(st->grpc_status, 0);
  h2peer_free(&p);
}

/* A unary call and a stream, with the nth allocation failing from the request on. */
static void test_alloc_fail_calls(void) {
  long nth;
  int lost = 0;
  for (nth = 0; nth < 5000; nth++) {
    reset_cfg();
    cfg.on_call_start = count_start;
    cfg.on_call_end = count_end;
    grpc_buffer_pool pool = {.max = 1 << 20};
    cfg.pool = &pool;
    cfg.max_buffered_per_conn = 512 * 1024;
    starts = ends = 0;
    h2peer p;
    h2peer_init(&p, &cfg);
    h2peer_pump(&p); /* settings exchanged without injection */
    unsigned long f0 = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0);
    int32_t u = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
    h2peer_send_msg(&p, u, "hello", 5, 1);
    int32_t sid = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
    h2peer_send_msg(&p, sid, "one", 3, 0);
    h2peer_send_msg(&p, sid, "two", 3, 1);
    /* messages split over DATA frames: reassembled (and for the unary method, held) */
    static char big[40000];
    memset(big, 'z', sizeof(big));
    int32_t bu = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
    h2peer_send_msg(&p, bu, big, sizeof(big), 1);
    int32_t bs = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
    h2peer_send_msg(&p, bs, big, sizeof(big), 1);
    h2peer_pump(&p);
    sm_alloc_fail_at(-1, 0);
    h2peer_pump(&p);
    int injected = sm_alloc_failures() > f0;
    h2p_stream *us = h2peer_stream(&p, u), *ss = h2peer_stream(&p, sid);
    if (!p.srv_closed) {
      /* every request got an end: a status, or a reset of its stream */
      T_ASSERT(us->closed);
      T_ASSERT(ss->closed);
      /* and the session still serves */
      h2p_stream *again = unary(&p, "/test.Echo/Unary", "again", NULL, 0);
      T_EQ_INT(again->grpc_status, 0);
      T_EQ_INT(again->nmsgs, 1);
    } else {
      /* nghttp2 itself ran out: the connection goes (at once, or after its GOAWAY) */
      T_ASSERT(p.srv_err == SM_ENOMEM || p.srv_err == SM_ECLOSED || p.srv_err == SM_EPROTO);
      lost++;
    }
    int started = starts;
    int bu_status = h2peer_stream(&p, bu)->grpc_status,
        bs_status = h2peer_stream(&p, bs)->grpc_status;
    size_t bu_len = h2peer_stream(&p, bu)->nmsgs ? h2peer_stream(&p, bu)->msg_len[0] : 0;
    h2peer_free(&p);
    /* every started call heard on_close exactly once (during the run or at destroy), and every
     * byte a call held went back to the pool */
    T_EQ_INT(closes, started);
    T_EQ_INT(pool.used, 0);
    if (!injected) {
      T_EQ_INT(us->grpc_status, 0);
      T_EQ_INT(ss->grpc_status, 0);
      T_EQ_INT(ss->nmsgs, 2);
      T_EQ_INT(bu_status, 0);
      T_EQ_INT(bu_len, sizeof(big));
      T_EQ_INT(bs_status, 0);
      break;
    }
  }
  T_ASSERT(nth > 0 && nth < 5000);
  fprintf(stderr, "   %ld allocations failed in turn, %d cost the connection\n", nth, lost);
}

static void test_destroy_with_pending_output(void) {
  reset_cfg();
  cfg.on_call_start = count_start;
  starts = 0;
  h2peer p;
  h2peer_init(&p, &cfg);
  h2peer_pump(&p);
  p.reading_stopped = 1; /* responses stay queued in the session */
  int32_t a = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  static char big[60000];
  memset(big, 'x', sizeof(big));
  h2peer_send_msg(&p, a, big, sizeof(big), 0);
  h2peer_send_msg(&p, a, big, sizeof(big), 0);
  int32_t b = h2peer_request(&p, "/test.Echo/Hold", NULL, 0);
  int32_t c = h2peer_request(&p, "/test.Echo/Timeout", NULL, 0);
  (void)b;
  (void)c;
  h2peer_pump(&p);
  T_EQ_INT(grpc_session_calls(p.srv), 3);
  T_EQ_INT(starts, 3);
  grpc_session_destroy(p.srv, SM_ECANCELED);
  p.srv = NULL;
  T_EQ_INT(closes, 3);
  T_EQ_INT(last_close_reason, SM_ECANCELED);
  p.reading_stopped = 0;
  h2peer_free(&p); /* NULL session: nothing more */
  T_EQ_INT(closes, 3);
}

/* "0n", "0S", ...: the deadline has passed already: DEADLINE_EXCEEDED, the method never runs. */
static void test_zero_timeout(void) {
  reset_cfg();
  h2peer p;
  h2peer_init(&p, &cfg);
  static const char *const zeros[] = {"0n", "0u", "0m", "0S", "0M", "0H", "00000000n"};
  for (size_t i = 0; i < sizeof(zeros) / sizeof(zeros[0]); i++) {
    const char *t[] = {"grpc-timeout", zeros[i]};
    h2p_stream *st = unary(&p, "/test.Echo/Unary", "x", t, 1);
    T_EQ_INT(st->grpc_status, GRPC_DEADLINE_EXCEEDED);
    T_ASSERT(st->trailers_only);
    T_EQ_INT(st->nmsgs, 0);
  }
  T_EQ_INT(closes, 0); /* not started */
  /* the shortest non-zero timeout still lets the call run */
  const char *t1[] = {"grpc-timeout", "1n"};
  h2p_stream *st = unary(&p, "/test.Echo/Unary", "x", t1, 1);
  T_EQ_INT(st->grpc_status, GRPC_OK);
  h2peer_free(&p);
}

/* Sends `n` body bytes of a message whose prefix claims `claim` bytes, without finishing it. */
static int32_t partial(h2peer *p, const char *path, uint32_t claim, size_t n) {
  static uint8_t junk[1 << 20];
  T_ASSERT(n <= sizeof(junk));
  int32_t id = h2peer_request(p, path, NULL, 0);
  uint8_t hdr[GRPC_FRAME_HEADER_LEN];
  grpc_frame_header(hdr, 0, claim);
  h2peer_send_raw(p, id, hdr, sizeof(hdr), 0);
  if (n)
    h2peer_send_raw(p, id, junk, n, 0);
  h2peer_pump(p);
  return id;
}

/* A partial message costs what arrived of it, not what its prefix claims. */
static void test_partial_message_costs_what_arrived(void) {
  reset_cfg();
  grpc_buffer_pool pool = {0};
  cfg.pool = &pool;
  h2peer p;
  h2peer_init(&p, &cfg);
  int32_t id = partial(&p, "/test.Echo/Hold", 256 * 1024 - 1, 0);
  T_EQ_INT(grpc_session_buffered(p.srv), 0);
  h2peer_send_raw(&p, id, "abcdefghij", 10, 0);
  h2peer_pump(&p);
  T_ASSERT(grpc_session_buffered(p.srv) > 0 && grpc_session_buffered(p.srv) <= 1024);
  T_EQ_INT(pool.used, grpc_session_buffered(p.srv));
  static uint8_t more[50000];
  h2peer_send_raw(&p, id, more, sizeof(more), 0);
  h2peer_pump(&p);
  T_ASSERT(grpc_session_buffered(p.srv) <= 2 * 50010);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, -1);
  h2peer_free(&p);
  T_EQ_INT(pool.used, 0);
}

/* GRPC_MAX_BUFFERED_BYTES_PER_CONN: a connection whose partial messages go past it is closed with
 * GOAWAY ENHANCE_YOUR_CALM and what it held is freed at once; other connections are untouched. */
static void test_per_connection_buffer_limit(void) {
  reset_cfg();
  grpc_buffer_pool pool = {.max = 10 << 20};
  cfg.pool = &pool;
  cfg.max_buffered_per_conn = 100 * 1024;
  h2peer good, bad;
  h2peer_init(&good, &cfg);
  h2peer_init(&bad, &cfg);
  int32_t gid = partial(&good, "/test.Echo/Hold", 90 * 1024, 30 * 1024);
  int32_t a = partial(&bad, "/test.Echo/Hold", 200 * 1024, 60 * 1024);
  T_ASSERT(!bad.goaway_received);
  T_ASSERT(pool.used <= 100 * 1024 + 60 * 1024);
  int c0 = closes;
  int32_t b = partial(&bad, "/test.Echo/Hold", 200 * 1024, 60 * 1024);
  T_ASSERT(bad.goaway_received);
  T_EQ_INT(bad.goaway_error, NGHTTP2_ENHANCE_YOUR_CALM);
  T_ASSERT(bad.srv_closed);
  T_EQ_INT(grpc_session_buffered(bad.srv), 0);
  T_EQ_INT(pool.used, grpc_session_buffered(good.srv));
  (void)a;
  (void)b;
  /* the calls end when the transport closes the connection */
  grpc_session_destroy(bad.srv, SM_ECLOSED);
  bad.srv = NULL;
  T_EQ_INT(closes, c0 + 2);
  /* the good connection goes on: its message completes */
  static uint8_t rest[60 * 1024];
  h2peer_send_raw(&good, gid, rest, sizeof(rest), 0);
  h2peer_pump(&good);
  T_EQ_INT(h2peer_stream(&good, gid)->grpc_status, -1);
  T_ASSERT(pool.used <= 4096); /* complete: its buffer went back */
  T_ASSERT(!good.goaway_received);
  h2p_stream *st = unary(&good, "/test.Echo/Unary", "still here", NULL, 0);
  T_EQ_INT(st->grpc_status, GRPC_OK);
  h2peer_free(&bad);
  h2peer_free(&good);
  T_EQ_INT(pool.used, 0);
}

/* GRPC_MAX_BUFFERED_BYTES: a call that would take the server past it ends with
 * RESOURCE_EXHAUSTED; whole messages need no buffer and are still served; the bound holds. */
static void test_global_buffer_limit(void) {
  reset_cfg();
  grpc_buffer_pool pool = {.max = 150 * 1024};
  cfg.pool = &pool;
  cfg.max_buffered_per_conn = 120 * 1024;
  h2peer a, b;
  h2peer_init(&a, &cfg);
  h2peer_init(&b, &cfg);
  int32_t ida = partial(&a, "/test.Echo/Hold", 200 * 1024, 100 * 1024);
  T_ASSERT(pool.used >= 100 * 1024 && pool.used <= pool.max);
  int32_t idb = partial(&b, "/test.Echo/Hold", 200 * 1024, 80 * 1024);
  T_ASSERT(pool.used <= pool.max);
  h2p_stream *sb = h2peer_stream(&b, idb);
  T_EQ_INT(sb->grpc_status, GRPC_RESOURCE_EXHAUSTED);
  T_ASSERT(strstr(sb->grpc_message, "partial request data") != NULL);
  T_ASSERT(!b.goaway_received); /* the pool, not this connection, is full */
  T_EQ_INT(pool.refused, 1);
  T_EQ_INT(grpc_session_buffered(b.srv), 0);
  /* a whole message in one DATA frame is served meanwhile, on both connections */
  h2p_stream *st = unary(&b, "/test.Echo/Unary", "ping", NULL, 0);
  T_EQ_INT(st->grpc_status, GRPC_OK);
  int32_t sid = h2peer_request(&b, "/test.Echo/Stream", NULL, 0);
  h2peer_send_msg(&b, sid, "s", 1, 1);
  h2peer_pump(&b);
  T_EQ_INT(h2peer_stream(&b, sid)->grpc_status, GRPC_OK);
  T_EQ_INT(h2peer_stream(&a, ida)->grpc_status, -1);
  /* once A's message is complete its buffer goes back to the pool, and B may buffer again */
  static uint8_t rest[100 * 1024];
  h2peer_send_raw(&a, ida, rest, sizeof(rest), 0);
  h2peer_pump(&a);
  T_ASSERT(pool.used <= 4096);
  idb = partial(&b, "/test.Echo/Hold", 200 * 1024, 80 * 1024);
  T_EQ_INT(h2peer_stream(&b, idb)->grpc_status, -1);
  h2peer_free(&a);
  h2peer_free(&b);
  T_EQ_INT(pool.used, 0);
}

/* GRPC_MESSAGE_TIMEOUT: a request message not complete in time ends the call and frees its
 * buffer; a stream that completes its messages is never timed out. */
static void test_message_timeout(void) {
  reset_cfg();
  grpc_buffer_pool pool = {.max = 1 << 20};
  cfg.pool = &pool;
  cfg.message_timeout_ms = 1000;
  h2peer p;
  h2peer_init(&p, &cfg);
  int32_t id = partial(&p, "/test.Echo/Hold", 1000, 10);
  h2peer_advance(&p, 999);
  h2p_stream *st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, -1);
  T_ASSERT(pool.used > 0);
  h2peer_advance(&p, 1);
  T_EQ_INT(st->grpc_status, GRPC_DEADLINE_EXCEEDED);
  T_ASSERT(strstr(st->grpc_message, "GRPC_MESSAGE_TIMEOUT") != NULL);
  T_EQ_INT(pool.used, 0);
  T_ASSERT(st->closed);

  /* only the prefix came: timed out as well */
  id = partial(&p, "/test.Echo/Hold", 1000, 0);
  h2peer_advance(&p, 1000);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, GRPC_DEADLINE_EXCEEDED);

  /* a unary request without END_STREAM is incomplete too (its message is held) */
  id = h2peer_request(&p, "/test.Echo/Unary", NULL, 0);
  h2peer_send_msg(&p, id, "held", 4, 0);
  h2peer_pump(&p);
  T_ASSERT(pool.used > 0);
  h2peer_advance(&p, 1000);
  T_EQ_INT(h2peer_stream(&p, id)->grpc_status, GRPC_DEADLINE_EXCEEDED);
  T_EQ_INT(pool.used, 0);

  /* a stream sending whole messages, slowly, lives on */
  id = h2peer_request(&p, "/test.Echo/Stream", NULL, 0);
  for (int i = 0; i < 5; i++) {
    h2peer_send_msg(&p, id, "m", 1, 0);
    h2peer_pump(&p);
    h2peer_advance(&p, 900);
  }
  /* and a message split over time, completed within the timeout, is fine */
  uint8_t hdr[GRPC_FRAME_HEADER_LEN];
  grpc_frame_header(hdr, 0, 4);
  h2peer_send_raw(&p, id, hdr, sizeof(hdr), 0);
  h2peer_send_raw(&p, id, "ab", 2, 0);
  h2peer_pump(&p);
  h2peer_advance(&p, 900);
  h2peer_send_raw(&p, id, "cd", 2, 0);
  h2peer_pump(&p);
  h2peer_advance(&p, 900);
  st = h2peer_stream(&p, id);
  T_EQ_INT(st->grpc_status, -1);
  T_EQ_INT(st->nmsgs, 6);
  T_EQ_STR((char *)st->msgs[5], "abcd");
  h2peer_free(&p);
  T_EQ_INT(pool.used, 0);
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_RUN(test_unary_echo);
  T_RUN(test_split_and_joined_messages);
  T_RUN(test_limits);
  T_RUN(test_routing_errors);
  T_RUN(test_not_grpc_requests);
  T_RUN(test_bad_messages);
  T_RUN(test_deadlines_and_timers);
  T_RUN(test_headers_and_metadata);
  T_RUN(test_concurrent_streams_limit);
  T_RUN(test_keepalive);
  T_RUN(test_idle_timeout);
  T_RUN(test_drain);
  T_RUN(test_output_limit_and_stall);
  T_RUN(test_flow_control_stall);
  T_RUN(test_bad_preface_and_garbage);
  T_RUN(test_destroy_with_open_calls);
  T_RUN(test_alloc_fail_create);
  T_RUN(test_alloc_fail_calls);
  T_RUN(test_destroy_with_pending_output);
  T_RUN(test_zero_timeout);
  T_RUN(test_partial_message_costs_what_arrived);
  T_RUN(test_per_connection_buffer_limit);
  T_RUN(test_global_buffer_limit);
  T_RUN(test_message_timeout);
  return t_done();
}
