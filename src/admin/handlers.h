/* handlers.h - the admin API's routes (docs/api.md). Each handler reads the
 * admin_api (admin/api.h, the router's ud) and fills a response, or defers it (http_response_defer)
 * and completes it from a store/lifecycle callback; none blocks. */
#ifndef SM_ADMIN_HANDLERS_H
#define SM_ADMIN_HANDLERS_H

#include "admin/router.h"
#include "util/err.h"

#define ADMIN_AGENTS_DEFAULT_LIMIT 100 /* GET /api/agents without ?limit */
#define ADMIN_AGENTS_MAX_LIMIT 1000    /* ?limit above this is a 400 */
#define ADMIN_READY_RETRY_AFTER "5"    /* seconds, Retry-After of a 503 from /ready */
/* Registers every route on r (whose ud must be an admin_api that outlives r): the agent and
 * probe routes of handlers.c, then those of cmd_handlers.h and metrics_handler.h. Returns 0 or
 * SM_ELIMIT. */
SM_MUST_CHECK int admin_handlers_register(admin_router *r);

#endif
