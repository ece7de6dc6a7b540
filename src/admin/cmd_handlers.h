/* cmd_handlers.h - the command and administration routes of the admin API (docs/api.md). */
#ifndef SM_ADMIN_CMD_HANDLERS_H
#define SM_ADMIN_CMD_HANDLERS_H

#include "admin/router.h"
#include "util/err.h"

#define ADMIN_COMMANDS_DEFAULT_LIMIT 100 /* GET /api/commands without ?limit */
#define ADMIN_COMMANDS_MAX_LIMIT 1000    /* ?limit above this is a 400 (STORE_MAX_LIST) */
#define ADMIN_SUBMIT_MAX 1000            /* commands in one POST /api/commands array */
/* Bytes of an Idempotency-Key header: room for ":<index>" within COMMAND_MAX_ID. */
#define ADMIN_IDEMPOTENCY_KEY_MAX 120

#define ADMIN_STR_(x) #x
#define ADMIN_STR(x) ADMIN_STR_(x) /* a numeric macro as a string literal */

/* Registers the command and administration routes (cmd_handlers.c): POST/GET /api/commands,
 * GET /api/commands/{id}, PUT /api/commands/{id}/cancel, GET /api/status,
 * POST /api/admin/maintenance, POST /api/admin/shutdown. They read the api's lifecycle (NULL:
 * 503) and its dependency state, and answer through deferred responses. Returns 0 or
 * SM_ELIMIT. Called by admin_handlers_register (handlers.c). */
SM_MUST_CHECK int admin_cmd_handlers_register(admin_router *r);

#endif
