/* server.h - the agent listener: gRPC over HTTP/2 (h2c with prior knowledge, or TLS with ALPN
 * h2) serving scan.AgentService and grpc.health.v1.Health, feeding the agent registry.
 *
 * Lifecycle: create -> listen -> (drain) -> close. Everything runs on the loop.
 */
#ifndef SM_GRPC_SERVER_H
#define SM_GRPC_SERVER_H

#include "core/registry.h"
#include "app/settings.h"

#include <stddef.h>
#include <uv.h>

struct grpc_server;

/* Creates the agent listener from settings (GRPC_SERVER_ADDR, TLS_*, GRPC_* limits). Loads the
 * TLS certificate and key when TLS_ENABLED. Returns 0, SM_EINVAL (TLS enabled without
 * TLS_CERT_FILE/TLS_KEY_FILE), SM_ETLS (unreadable or invalid TLS files, logged) or
 * SM_ENOMEM. */
int grpc_server_create(uv_loop_t *loop, const sm_settings *s, agent_registry *reg,
                       struct grpc_server **out);

/* Binds and listens; logs the address. 0 or SM_E* (SM_EADDR, SM_EEXIST for in use, SM_ETLS). */
int grpc_server_listen(struct grpc_server *srv);

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

/* Open connections now. */
size_t grpc_server_connections(const struct grpc_server *srv);

/* Closes everything (listener, connections) through close callbacks; calls cb(ud) after the
 * last one, then frees srv. Streams still open end here: their agents are detached from the
 * registry (which must outlive this call's callback). */
void grpc_server_close(struct grpc_server *srv, void (*cb)(void *ud), void *ud);

#endif
