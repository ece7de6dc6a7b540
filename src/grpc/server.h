/* server.h - the agent listener: gRPC over HTTP/2 (h2c with prior knowledge, or TLS with ALPN
 * h2) serving scan.AgentService, hello.HelloService and grpc.health.v1.Health, feeding the agent
 * registry.
 *
 * Lifecycle: create -> listen -> (drain) -> close. Everything runs on the loop.
 */
#ifndef SM_GRPC_SERVER_H
#define SM_GRPC_SERVER_H

#include "core/registry.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct grpc_server;

/* The listener's settings, filled by app/ (GRPC_SERVER_ADDR, TLS_*, AGENT_AUTH_TOKENS_FILE,
 * GRPC_* limits, MAX_CONNECTIONS). The strings are read during grpc_server_create only, except
 * addr (kept by the listener: it must outlive the server). */
typedef struct grpc_server_config {
  const char *addr;               /* GRPC_SERVER_ADDR */
  int tls_enabled;                /* TLS_ENABLED */
  const char *tls_cert_file;      /* TLS_CERT_FILE */
  const char *tls_key_file;       /* TLS_KEY_FILE */
  const char *tls_client_ca_file; /* TLS_CLIENT_CA_FILE: mutual TLS when set */
  const char *agent_tokens_file;  /* AGENT_AUTH_TOKENS_FILE; NULL: no token needed */
  size_t max_message_bytes;       /* GRPC_MAX_MESSAGE_BYTES */
  uint32_t max_streams;           /* GRPC_MAX_CONCURRENT_STREAMS per connection */
  uint32_t max_header_bytes;      /* GRPC_MAX_HEADER_LIST_BYTES */
  double keepalive_s;             /* GRPC_KEEPALIVE_INTERVAL */
  double idle_timeout_s;          /* GRPC_IDLE_TIMEOUT */
  size_t max_output_bytes;        /* GRPC_MAX_OUTPUT_BYTES per connection */
  double stall_timeout_s;         /* GRPC_STALL_TIMEOUT */
  double first_message_timeout_s; /* GRPC_FIRST_MESSAGE_TIMEOUT */
  int reflection;                 /* GRPC_REFLECTION: serve grpc.reflection.v1alpha and v1 */
  size_t max_connections;         /* MAX_CONNECTIONS */
  /* request buffering: GRPC_MAX_BUFFERED_BYTES_PER_CONN (raised to fit one message of
   * max_message_bytes), GRPC_MAX_BUFFERED_BYTES (raised to the per-connection bound),
   * GRPC_MESSAGE_TIMEOUT */
  size_t max_buffered_per_conn;
  size_t max_buffered_bytes;
  double message_timeout_s;
} grpc_server_config;

/* Creates the agent listener from cfg. Loads the TLS certificate and key when tls_enabled.
 * Returns 0, SM_EINVAL (TLS enabled without cert/key files), SM_ETLS (unreadable or invalid TLS
 * files, logged) or SM_ENOMEM. */
SM_MUST_CHECK int grpc_server_create(uv_loop_t *loop, const grpc_server_config *cfg,
                                     agent_registry *reg, struct grpc_server **out);

/* Binds and listens; logs the address. 0 or SM_E* (SM_EADDR, SM_EEXIST for in use, SM_ETLS). */
SM_MUST_CHECK int grpc_server_listen(struct grpc_server *srv);

/* The port actually bound (GRPC_SERVER_ADDR may say port 0); 0 before listening. */
int grpc_server_port(const struct grpc_server *srv);

/* Graceful: stop accepting, send GOAWAY to every connection, health -> NOT_SERVING; streams in
 * progress may finish. */
void grpc_server_drain(struct grpc_server *srv);

/* Sets the call observer (metrics) of every session, before grpc_server_listen: on_start(ud,
 * path) when a call to a served method starts, on_end(ud, path, known, started, status) when a
 * call ends with a grpc-status (see grpc_session_config). */
void grpc_server_set_observer(struct grpc_server *srv, void (*on_start)(void *ud, const char *path),
                              void (*on_end)(void *ud, const char *path, int known, int started,
                                             int status),
                              void *ud);

struct grpc_hello_stats;
/* hello.HelloService's counters (results, unmatched results, refused commands). */
void grpc_server_hello_stats(const struct grpc_server *srv, struct grpc_hello_stats *out);

/* Open connections now. */
size_t grpc_server_connections(const struct grpc_server *srv);

/* Closes everything (listener, connections) through close callbacks; calls cb(ud) after the
 * last one, then frees srv. Streams still open end here: their agents are detached from the
 * registry (which must outlive this call's callback). */
void grpc_server_close(struct grpc_server *srv, void (*cb)(void *ud), void *ud);

#endif
