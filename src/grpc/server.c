/* server.c - the agent listener: net/tcp connections, each carrying one grpc/session, and the
 * service table (see server.h). */
#include "grpc/server.h"

#include "grpc/agent_auth.h"

#include "grpc/frame.h"
#include "grpc/reflection.h"
#include "grpc/services.h"
#include "grpc/session.h"
#include "net/tcp.h"
#include "net/tls.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include "health.pb-c.h"

#include <stdlib.h>

/* HTTP/2 windows: what a peer may send before we consume it. We consume synchronously, so a
 * window costs no memory while idle; the stream window stays at the protocol default. */
#define STREAM_WINDOW 65535
#define CONNECTION_WINDOW (1u << 20)
#define KEEPALIVE_TIMEOUT_MS 20000 /* PING answer deadline (gRPC's default), capped by interval */
#define HANDSHAKE_TIMEOUT_S 10.0
/* From the end of the TLS handshake (h2c: from accept) to the client's HTTP/2 preface and first
 * frame: a real client sends both at once. */
#define PREFACE_TIMEOUT_S 10.0
#define LINGER_MS 2000 /* discard input this long after the GOAWAY, waiting for EOF */

enum { SVC_AGENT, SVC_HELLO, SVC_HEALTH, SVC_REFLECTION_V1ALPHA, SVC_REFLECTION_V1, SVC_COUNT };

struct grpc_server {
  uv_loop_t *loop;
  net_tls_ctx *tls; /* NULL: h2c */
  net_listener *listener;
  grpc_session_config scfg;    /* shared by every session */
  grpc_buffer_pool pool;       /* request bytes all sessions hold (GRPC_MAX_BUFFERED_BYTES) */
  grpc_service svc[SVC_COUNT]; /* the service table's entries */
  const grpc_service *table[SVC_COUNT];
  grpc_agent_service *agents;
  grpc_hello_service *hello;
  agent_tokens *tokens; /* AGENT_AUTH_TOKENS_FILE, NULL when unset */
  grpc_health *health;
  grpc_reflection *reflection;
  int draining;
  void (*close_cb)(void *ud);
  void *close_ud;
};

/* ---- a session's transport is its connection ---- */

static size_t io_output(void *io) {
  return net_conn_output(io);
}
static int io_write(void *io, const uint8_t *data, size_t len) {
  return net_conn_write(io, data, len);
}
static void io_want_flush(void *io) {
  net_conn_want_flush(io);
}
static void io_set_timer(void *io, uint64_t due_ms) {
  net_conn_set_timer(io, due_ms);
}
static uint64_t io_now(void *io) {
  return net_conn_now(io);
}
static const char *io_peer(void *io) {
  return net_conn_peer(io);
}

static const grpc_session_io session_io = {io_output,    io_write, io_want_flush,
                                           io_set_timer, io_now,   io_peer};

static int conn_open(net_conn *c) {
  struct grpc_server *srv = net_listener_data(net_conn_listener(c));
  grpc_session *s;
  int err = grpc_session_create(&srv->scfg, &session_io, c, &s);
  if (err)
    return err;
  net_conn_set_data(c, s);
  if (srv->draining)
    grpc_session_drain(s);
  return 0;
}

static int conn_read(net_conn *c, const uint8_t *data, size_t len) {
  return grpc_session_recv(net_conn_data(c), data, len);
}

static int conn_flush(net_conn *c) {
  return grpc_session_flush(net_conn_data(c));
}

static int conn_timer(net_conn *c) {
  return grpc_session_timer(net_conn_data(c));
}

static void conn_close(net_conn *c, int reason) {
  grpc_session_destroy(net_conn_data(c), reason ? reason : SM_ECLOSED);
  net_conn_set_data(c, NULL);
}

static const net_conn_ops conn_ops = {
    .on_open = conn_open,
    .on_read = conn_read,
    .on_flush = conn_flush,
    .on_timer = conn_timer,
    .on_close = conn_close,
};

/* ---- server ---- */

static uint64_t to_ms(double s) {
  return s > 0 ? (uint64_t)(s * 1000.0 + 0.5) : 0;
}

static void server_free(struct grpc_server *srv) {
  grpc_agent_service_destroy(srv->agents);
  grpc_hello_service_destroy(srv->hello);
  agent_tokens_free(srv->tokens);
  grpc_health_destroy(srv->health);
  grpc_reflection_destroy(srv->reflection);
  net_tls_ctx_destroy(srv->tls);
  free(srv);
}

int grpc_server_create(uv_loop_t *loop, const grpc_server_config *s, agent_registry *reg,
                       struct grpc_server **out) {
  if (loop == NULL || s == NULL || reg == NULL || out == NULL)
    return SM_EINVAL;
  struct grpc_server *srv = sm_calloc(1, sizeof(*srv));
  if (srv == NULL)
    return SM_ENOMEM;
  srv->loop = loop;
  int err = 0;

  if (s->tls_enabled) {
    if (s->tls_cert_file == NULL || s->tls_key_file == NULL) {
      sm_log_error("grpc", "TLS_ENABLED needs TLS_CERT_FILE and TLS_KEY_FILE", SM_LE(SM_EINVAL));
      err = SM_EINVAL;
      goto fail;
    }
    net_tls_config tc = {.cert_file = s->tls_cert_file,
                         .key_file = s->tls_key_file,
                         .ca_file = s->tls_client_ca_file};
    err = net_tls_ctx_create_server(&tc, &srv->tls);
    if (err)
      goto fail;
  }

  err = grpc_agent_service_create(reg, to_ms(s->first_message_timeout_s), &srv->svc[SVC_AGENT],
                                  &srv->agents);
  if (err)
    goto fail;
  err = grpc_hello_service_create(loop, reg, to_ms(s->first_message_timeout_s),
                                  &srv->svc[SVC_HELLO], &srv->hello);
  if (err)
    goto fail;
  if (s->agent_tokens_file) {
    char why[512];
    err = agent_tokens_load(s->agent_tokens_file, &srv->tokens, why, sizeof(why));
    if (err) {
      sm_log_error("grpc", "AGENT_AUTH_TOKENS_FILE: cannot use it", SM_LS("reason", why));
      goto fail;
    }
    grpc_agent_service_set_tokens(srv->agents, srv->tokens);
    grpc_hello_service_set_tokens(srv->hello, srv->tokens);
    sm_log_info("grpc", "agent tokens required", SM_LI("tokens", agent_tokens_count(srv->tokens)));
  }
  static const char *const health_names[] = {"scan.AgentService", "hello.HelloService", NULL};
  err = grpc_health_create(health_names, &srv->svc[SVC_HEALTH], &srv->health);
  if (err)
    goto fail;
  err = grpc_reflection_create(srv->table, s->reflection ? SVC_COUNT : SVC_REFLECTION_V1ALPHA,
                               &srv->svc[SVC_REFLECTION_V1ALPHA], &srv->svc[SVC_REFLECTION_V1],
                               &srv->reflection);
  if (err)
    goto fail;
  for (int i = 0; i < SVC_COUNT; i++)
    srv->table[i] = &srv->svc[i];

  /* One message of the maximum size must always fit, on a connection (next to the small buffers
   * its other streams keep) and in the pool. */
  size_t per_conn = s->max_buffered_per_conn;
  size_t one_message = s->max_message_bytes + (size_t)s->max_streams * GRPC_FRAME_KEEP_BUF;
  if (per_conn && per_conn < one_message)
    per_conn = one_message;
  srv->pool.max = s->max_buffered_bytes;
  if (srv->pool.max && srv->pool.max < per_conn)
    srv->pool.max = per_conn;
  if (per_conn != s->max_buffered_per_conn || srv->pool.max != s->max_buffered_bytes)
    sm_log_info("grpc", "request buffer bounds raised to fit one GRPC_MAX_MESSAGE_BYTES message",
                SM_LI("per_connection", per_conn), SM_LI("total", srv->pool.max));

  uint64_t keepalive = to_ms(s->keepalive_s);
  srv->scfg = (grpc_session_config){
      .services = srv->table,
      /* the reflection entries are last: left out with GRPC_REFLECTION=false */
      .nservices = s->reflection ? SVC_COUNT : SVC_REFLECTION_V1ALPHA,
      .max_message_bytes = s->max_message_bytes,
      .max_streams = s->max_streams,
      .max_header_bytes = s->max_header_bytes,
      .stream_window = STREAM_WINDOW,
      .connection_window = CONNECTION_WINDOW,
      .keepalive_ms = keepalive,
      .keepalive_timeout_ms =
          keepalive && keepalive < KEEPALIVE_TIMEOUT_MS ? keepalive : KEEPALIVE_TIMEOUT_MS,
      .idle_ms = to_ms(s->idle_timeout_s),
      .preface_ms = to_ms(PREFACE_TIMEOUT_S),
      .max_output_bytes = s->max_output_bytes,
      .stall_ms = to_ms(s->stall_timeout_s),
      .max_buffered_per_conn = per_conn,
      .pool = &srv->pool,
      .message_timeout_ms = to_ms(s->message_timeout_s),
  };

  net_listener_config lc = {
      .addr = s->addr,
      .max_connections = s->max_connections,
      .max_output_bytes = s->max_output_bytes,
      .stall_timeout_s = s->stall_timeout_s,
      .handshake_timeout_s = HANDSHAKE_TIMEOUT_S,
      .tls = srv->tls,
      .ops = &conn_ops,
      .ud = srv,
      .name = "grpc",
      /* A GOAWAY is the last thing a closing connection writes; a client still sending when
       * we close would otherwise get a reset that can discard the GOAWAY unread (and with it
       * the reason, e.g. ENHANCE_YOUR_CALM). */
      .linger_ms = LINGER_MS,
  };
  err = net_listener_create(loop, &lc, &srv->listener);
  if (err)
    goto fail;
  *out = srv;
  return 0;
fail:
  server_free(srv);
  return err;
}

int grpc_server_listen(struct grpc_server *srv) {
  return net_listener_listen(srv->listener);
}

int grpc_server_port(const struct grpc_server *srv) {
  return net_listener_port(srv->listener);
}

void grpc_server_set_observer(struct grpc_server *srv, void (*on_start)(void *ud, const char *path),
                              void (*on_end)(void *ud, const char *path, int known, int started,
                                             int status),
                              void *ud) {
  srv->scfg.on_call_start = on_start;
  srv->scfg.on_call_end = on_end;
  srv->scfg.observer_ud = ud;
}

void grpc_server_hello_stats(const struct grpc_server *srv, grpc_hello_stats *out) {
  grpc_hello_service_get_stats(srv->hello, out);
}

size_t grpc_server_connections(const struct grpc_server *srv) {
  return net_listener_connections(srv->listener);
}

static void drain_conn(net_conn *c, void *ud) {
  (void)ud;
  grpc_session *s = net_conn_data(c);
  if (s == NULL) {
    net_conn_close(c, SM_EUNAVAIL, 0); /* still in its TLS handshake */
    return;
  }
  grpc_session_drain(s);
  net_conn_want_flush(c);
}

void grpc_server_drain(struct grpc_server *srv) {
  if (srv->draining)
    return;
  srv->draining = 1;
  sm_log_info("grpc", "draining: no new connections, GOAWAY sent",
              SM_LI("connections", net_listener_connections(srv->listener)));
  grpc_health_set_all(srv->health,
                      GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
  net_listener_stop(srv->listener);
  net_listener_foreach(srv->listener, drain_conn, NULL);
}

static void listener_closed(void *ud) {
  struct grpc_server *srv = ud;
  void (*cb)(void *) = srv->close_cb;
  void *cb_ud = srv->close_ud;
  server_free(srv);
  if (cb)
    cb(cb_ud);
}

void grpc_server_close(struct grpc_server *srv, void (*cb)(void *ud), void *ud) {
  srv->close_cb = cb;
  srv->close_ud = ud;
  net_listener_close(srv->listener, listener_closed, srv);
}
