/* server.h - the admin HTTP/1.1 listener on ADMIN_API_ADDR: connections, keep-alive and
 * pipelining, limits and timeouts, the route table of handlers.c, a request log line per
 * request. Everything runs on the manager's loop.
 */
#ifndef SM_ADMIN_SERVER_H
#define SM_ADMIN_SERVER_H

#include "admin/router.h"
#include "app/manager.h"

#include <stddef.h>
#include <uv.h>

struct admin_server;

/* Creates the admin listener on ADMIN_API_ADDR from m->settings; reads m->registry,
 * m->lifecycle, m->store, m->mq and m's state (draining, maintenance, sm_manager_ready()).
 * Deferred responses get ADMIN_REQUEST_TIMEOUT to complete, else 503 with Retry-After. Returns 0,
 * SM_EADDR (bad address) or SM_ENOMEM. */
int admin_server_create(uv_loop_t *loop, sm_manager *m, struct admin_server **out);

/* Binds and listens. Returns 0 or an SM_E* code (SM_EADDR for a bad or busy address). */
int admin_server_listen(struct admin_server *srv);

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
