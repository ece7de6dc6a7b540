/* manager.h - the manager context: the root of the context tree (manager -> listeners ->
 * connections -> streams). It owns the loop's long-lived objects and the shutdown sequence.
 */
#ifndef SM_APP_MANAGER_H
#define SM_APP_MANAGER_H

#include "core/registry.h"
#include "app/settings.h"
#include "util/err.h"

#include <stdint.h>
#include <uv.h>

struct grpc_server;
struct admin_server;
struct lifecycle;
struct store;
struct mq_conn;
struct cmd_intake;
struct agent_mirror;
struct ui_queue;
struct mq_publisher;
struct metrics;

typedef struct sm_manager {
  uv_loop_t *loop;
  const sm_settings *settings;
  agent_registry *registry;
  struct grpc_server *grpc;    /* agent listener (src/grpc/server.h) */
  struct admin_server *admin;  /* admin HTTP listener (src/admin/server.h) */
  struct store *store;         /* command/agent store: Valkey or in-process (src/store/store.h) */
  struct lifecycle *lifecycle; /* the command lifecycle (src/core/lifecycle.h) */
  struct agent_mirror *mirror; /* registry mirrored into the store (src/app/agent_mirror.h) */
  struct mq_conn *mq;          /* RabbitMQ connection, NULL without RABBITMQ_URL (src/mq/amqp.h) */
  struct cmd_intake *intake;   /* AMQP intake into the lifecycle (src/app/cmd_intake.h) */
  struct ui_queue *ui;         /* SiriusScan UI queue + keys, NULL unless configured (ui_queue.h) */
  struct mq_publisher *publisher; /* AMQP result publisher (src/mq/publisher.h) */
  struct metrics *metrics;        /* metrics and the METRICS_ADDR listener (metrics/metrics.h) */
  int64_t started_at_ms;          /* unix ms */
  int draining;                   /* shutdown in progress: /ready says 503, no new work */
  int maintenance;                /* maintenance mode: new commands refused, agents stay */
  int stopping;                   /* the loop's handles are closing */
  uv_signal_t sigterm;
  uv_signal_t sigint;
  uv_timer_t drain_timer;   /* ends the drain at DRAIN_TIMEOUT */
  int signals;              /* signals received; a second one exits at once */
  int64_t drain_started_ms; /* unix ms when the drain began */
  int open_handles;         /* the manager's own handles not yet closed */
} sm_manager;

/* Builds every module from the settings and starts listening. Returns 0 or an SM_E* code
 * (already logged). */
SM_MUST_CHECK int sm_manager_start(sm_manager *m, uv_loop_t *loop, const sm_settings *s);

/* Starts a graceful shutdown: stop accepting, GOAWAY, drain up to DRAIN_TIMEOUT, close. Safe to
 * call more than once. */
void sm_manager_shutdown(sm_manager *m, const char *why);

/* Whether the manager is ready for work (GET /ready); *reason names what is missing. */
int sm_manager_ready(const sm_manager *m, const char **reason);

#endif
