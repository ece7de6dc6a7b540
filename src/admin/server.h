/* server.h - the admin HTTP/1.1 listener on ADMIN_API_ADDR: the route table of handlers.c behind
 * the security guard (auth.h), served by the one HTTP server (http/server.h: connections,
 * keep-alive and pipelining, limits and timeouts, TLS, a request log line per request).
 * Everything runs on the manager's loop.
 */
#ifndef SM_ADMIN_SERVER_H
#define SM_ADMIN_SERVER_H

#include "admin/api.h"
#include "admin/auth.h"
#include "admin/router.h"
#include "util/err.h"

#include <stddef.h>
#include <uv.h>

struct admin_server;

/* The listener's settings, filled by app/ (ADMIN_API_ADDR, ADMIN_* limits, ADMIN_TLS_*). The
 * strings are read during admin_server_create only. */
typedef struct admin_server_config {
  const char *addr;                /* ADMIN_API_ADDR as given, for log lines (when it names
                                      host and port; else "host:port" is logged) */
  const char *host;                /* the address to bind ("0.0.0.0", "::1", ...) */
  int port;                        /* 0: any free port */
  size_t max_connections;          /* ADMIN_MAX_CONNECTIONS: beyond it an idle connection is
                                      closed for the newcomer, else 503 (http/server.h) */
  size_t max_connections_per_addr; /* ADMIN_MAX_CONNECTIONS_PER_IP; 0: no limit */
  size_t max_body_bytes;           /* ADMIN_MAX_BODY_BYTES */
  size_t max_buffered_bytes;       /* ADMIN_MAX_BUFFERED_BYTES: bodies being received, all
                                      connections; beyond, 503 + Retry-After; 0: no bound */
  size_t max_header_bytes;         /* ADMIN_MAX_HEADER_BYTES */
  double header_timeout_s;         /* ADMIN_HEADER_TIMEOUT: request head (and TLS handshake); <= 0:
                                      the request timeout */
  double request_timeout_s;        /* ADMIN_REQUEST_TIMEOUT: whole request, and deferred answers */
  double idle_timeout_s;           /* ADMIN_IDLE_TIMEOUT: idle keep-alive connection */
  int tls_enabled;                 /* ADMIN_TLS_ENABLED */
  const char *tls_cert_file;       /* ADMIN_TLS_CERT_FILE */
  const char *tls_key_file;        /* ADMIN_TLS_KEY_FILE */
  admin_security_config security;  /* keys and rate limits of the router's guard (auth.h) */
} admin_server_config;

/* Creates the admin listener from cfg with the routes of handlers.c, which read api (copied;
 * its handles must stay valid until admin_server_close). Deferred responses get
 * request_timeout_s to complete, else 503 with Retry-After. Returns 0, SM_EINVAL, SM_EIO (keys
 * file), SM_ETLS or SM_ENOMEM. */
SM_MUST_CHECK int admin_server_create(uv_loop_t *loop, const admin_server_config *cfg,
                                      const admin_api *api, struct admin_server **out);

/* Binds and listens. Returns 0 or an SM_E* code (SM_EADDR for a bad or busy address). */
SM_MUST_CHECK int admin_server_listen(struct admin_server *srv);

/* Drain: closes the listener and the idle keep-alive connections; the others get
 * "Connection: close" on their next response. Safe to call more than once. */
void admin_server_stop_accepting(struct admin_server *srv);

/* Closes every connection and the listener; cb(ud) runs once the last handle's close callback
 * ran, after which srv is freed. Never calls cb synchronously. */
void admin_server_close(struct admin_server *srv, void (*cb)(void *ud), void *ud);

/* The port actually bound (useful with port 0), or -1 before listening. */
int admin_server_port(const struct admin_server *srv);

/* The route table (handlers.c's routes already in it): tests and extensions add routes here
 * before listening. */
admin_router *admin_server_router(struct admin_server *srv);

/* Connections open now (for tests and /api/status). */
size_t admin_server_connections(const struct admin_server *srv);

#endif
