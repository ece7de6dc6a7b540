/* handlers.h - the admin API's routes (CONTRACT.md "Admin API"). Each handler reads the manager
 * (the router's ud) and fills a response; none blocks. */
#ifndef SM_ADMIN_HANDLERS_H
#define SM_ADMIN_HANDLERS_H

#include "admin/router.h"

#define ADMIN_AGENTS_DEFAULT_LIMIT 100 /* GET /api/agents without ?limit */
#define ADMIN_AGENTS_MAX_LIMIT 1000    /* ?limit above this is a 400 */
#define ADMIN_READY_RETRY_AFTER "5"    /* seconds, Retry-After of a 503 from /ready */

/* Registers every route on r (whose ud must be the sm_manager). Returns 0 or SM_ELIMIT. */
int admin_handlers_register(admin_router *r);

#endif
