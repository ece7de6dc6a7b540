/* api.h - what the admin API sees of the program: the domain handles its routes read, and the
 * few operations on the program's state that app/ provides (readiness, draining, maintenance,
 * shutdown, the health of the store and the broker). The admin routes never see the manager,
 * its settings, the store or the broker themselves; app/ fills one admin_api and hands it to
 * admin_server_create, which keeps a copy.
 *
 * Lifetimes: the handles must stay valid until admin_server_close was called (app/ closes the
 * admin server in the same loop turn as the modules behind them, so no request runs between).
 * Every function pointer is called on the loop thread, with ud.
 */
#ifndef SM_ADMIN_API_H
#define SM_ADMIN_API_H

#include "core/lifecycle.h"
#include "core/registry.h"
#include "metrics/collector.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The state of the dependencies, for GET /api/status and the refusals of POST /api/commands. */
typedef struct admin_deps {
  const char *store_backend; /* "valkey", "memory", or "none" (static text) */
  int store_up;              /* the store answers */
  int mq_configured;         /* RABBITMQ_URL is set */
  int mq_up;                 /* the broker connection is up */
} admin_deps;

typedef struct admin_api {
  uv_loop_t *loop;           /* for the deferred shutdown; NULL: /api/admin/shutdown is a 500 */
  agent_registry *registry;  /* GET /api/agents, /api/status; NULL: no agents */
  lifecycle *lifecycle;      /* the command routes; NULL: they answer 503 */
  const char *instance;      /* INSTANCE_ID, in agent JSON and /api/status; NULL: "" */
  const char *version;       /* APP_VERSION; NULL: the build's version */
  const char *env;           /* APP_ENV; NULL: "production" */
  size_t command_queue_size; /* COMMAND_QUEUE_SIZE: a batch above the free room is a 429 */
  int64_t started_at_ms;     /* unix ms, for uptime_seconds */
  void *ud;                  /* passed to every function below */
  /* Whether the program is ready for work (GET /ready); *reason names what is missing. NULL:
   * always ready. */
  int (*ready)(void *ud, const char **reason);
  /* Whether a graceful shutdown is in progress. NULL: never. */
  int (*draining)(void *ud);
  /* Maintenance mode: get, and set (app/ also tells the lifecycle). NULL: off, and the
   * setting is only reported back. */
  int (*maintenance)(void *ud);
  void (*set_maintenance)(void *ud, int on);
  /* Starts the graceful shutdown (POST /api/admin/shutdown, called on the next loop turn). */
  void (*shutdown)(void *ud, const char *why);
  /* Fills the state of the store and the broker. NULL: both "none" and down. */
  void (*deps)(void *ud, admin_deps *out);
  /* The metrics collector for GET /api/metrics, or NULL when metrics are not running. NULL
   * function: 503. */
  metrics_registry *(*metrics)(void *ud);
} admin_api;

/* The calls with their defaults for a NULL function (used by the routes). */
static inline int admin_api_ready(const admin_api *a, const char **reason) {
  *reason = NULL;
  return a->ready ? a->ready(a->ud, reason) : 1;
}

static inline int admin_api_draining(const admin_api *a) {
  return a->draining ? a->draining(a->ud) : 0;
}

static inline int admin_api_maintenance(const admin_api *a) {
  return a->maintenance ? a->maintenance(a->ud) : 0;
}

static inline void admin_api_deps(const admin_api *a, admin_deps *out) {
  *out = (admin_deps){.store_backend = "none"};
  if (a->deps)
    a->deps(a->ud, out);
}

#endif
