/* metrics_handler.h - GET /api/metrics of the admin API. */
#ifndef SM_ADMIN_METRICS_HANDLER_H
#define SM_ADMIN_METRICS_HANDLER_H

#include "admin/router.h"
#include "util/err.h"

/* Registers GET /api/metrics (metrics_handler.c): the metrics as JSON. Returns 0 or SM_ELIMIT. */
SM_MUST_CHECK int admin_metrics_handler_register(admin_router *r);

#endif
