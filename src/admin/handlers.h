/* handlers.h - the admin API's routes (docs/api.md). Each handler reads the
 * admin_api (admin/api.h, the router's ud) and fills a response, or defers it (http_response_defer)
 * and completes it from a store/lifecycle callback; none blocks. */
#ifndef SM_ADMIN_HANDLERS_H
#define SM_ADMIN_HANDLERS_H

#include "admin/router.h"
#include "util/err.h"

#define ADMIN_AGENTS_DEFAULT_LIMIT 100   /* GET /api/agents without ?limit */
#define ADMIN_AGENTS_MAX_LIMIT 1000      /* ?limit above this is a 400 */
#define ADMIN_READY_RETRY_AFTER "5"      /* seconds, Retry-After of a 503 from /ready */
#define ADMIN_COMMANDS_DEFAULT_LIMIT 100 /* GET /api/commands without ?limit */
#define ADMIN_COMMANDS_MAX_LIMIT 1000    /* ?limit above this is a 400 (STORE_MAX_LIST) */
#define ADMIN_SUBMIT_MAX 1000            /* commands in one POST /api/commands array */
/* Bytes of an Idempotency-Key header: room for ":<index>" within COMMAND_MAX_ID. */
#define ADMIN_IDEMPOTENCY_KEY_MAX 120

#define ADMIN_STR_(x) #x
#define ADMIN_STR(x) ADMIN_STR_(x) /* a numeric macro as a string literal */

/* Registers every route on r (whose ud must be an admin_api that outlives r). Returns 0 or
 * SM_ELIMIT. */
SM_MUST_CHECK int admin_handlers_register(admin_router *r);

/* Registers the command and administration routes (cmd_handlers.c): POST/GET /api/commands,
 * GET /api/commands/{id}, PUT /api/commands/{id}/cancel, GET /api/status,
 * POST /api/admin/maintenance, POST /api/admin/shutdown. They read the api's lifecycle (NULL:
 * 503) and its dependency state, and answer through deferred responses. Returns 0 or
 * SM_ELIMIT. Called by admin_handlers_register. */
SM_MUST_CHECK int admin_cmd_handlers_register(admin_router *r);

/* Registers GET /api/metrics (metrics_handler.c): the metrics as JSON. Returns 0 or SM_ELIMIT. */
SM_MUST_CHECK int admin_metrics_handler_register(admin_router *r);

#endif
