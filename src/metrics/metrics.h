/* metrics.h - the manager's metrics: the families of docs/metrics.md (and a few more) in
 * one collector, the /metrics listener on METRICS_ADDR, and the hooks other modules call where
 * events happen. Figures that other modules already count (agents, queue depths, store
 * operations) are pulled from their stats getters at scrape time instead of pushed.
 *
 * Label bounds: command `type` labels keep METRICS_MAX_TYPES values, per-agent labels
 * (ENABLE_DETAILED_METRICS) METRICS_MAX_AGENT_SERIES, gRPC methods are the served ones plus
 * "unknown"; beyond a bound, updates go to an "other" series (collector.h).
 */
#ifndef SM_METRICS_METRICS_H
#define SM_METRICS_METRICS_H

#include "metrics/collector.h"
#include "model/command.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define METRICS_MAX_TYPES 64           /* command type label values per family */
#define METRICS_MAX_AGENT_SERIES 1000  /* per-agent series (ENABLE_DETAILED_METRICS) */
#define METRICS_GRPC_UNKNOWN "unknown" /* method label of a call to no served method */

#define METRICS_MAX_STORE_OPS 16 /* op label values of valkey_operations_total */

typedef struct metrics metrics;

/* The figures other modules count, copied at every scrape. A part whose have_* is 0 leaves its
 * series as they were. */
typedef struct metrics_snapshot {
  int have_agents;      /* the registry exists */
  size_t agents;        /* agents registered now */
  uint64_t heartbeats;  /* heartbeats received */
  uint64_t registered;  /* registrations (reconnections included) */
  int have_commands;    /* the lifecycle exists */
  size_t waiting;       /* commands waiting for an agent */
  uint64_t dispatched;  /* commands sent to agents */
  int have_mq_depth;    /* the broker answered a queue depth */
  const char *mq_queue; /* the AMQP command queue's name (label value) */
  uint64_t mq_depth;
  size_t nstore_ops; /* Valkey operation counters (0: not Valkey), at most METRICS_MAX_STORE_OPS */
  struct {
    const char *name; /* op label value (static text) */
    uint64_t count;
  } store_ops[METRICS_MAX_STORE_OPS];
} metrics_snapshot;

/* Where the scrape-time figures come from: app/ fills it over the registry, the lifecycle, the
 * store and the broker. snapshot runs on the loop at every scrape with out zeroed. */
typedef struct metrics_source {
  void (*snapshot)(void *ud, metrics_snapshot *out); /* NULL: only the pushed figures */
  void *ud;
} metrics_source;

typedef struct metrics_config {
  const char *addr;      /* METRICS_ADDR (read during metrics_create) */
  int detailed;          /* ENABLE_DETAILED_METRICS: type and per-agent labels */
  metrics_source source; /* the scrape-time figures */
} metrics_config;

/* Creates the families and the listener on cfg->addr, not yet bound. Returns 0, SM_EINVAL (bad
 * address) or SM_ENOMEM. */
SM_MUST_CHECK int metrics_create(uv_loop_t *loop, const metrics_config *cfg, metrics **out);

/* Binds METRICS_ADDR. Returns 0 or an SM_E* code (SM_EADDR, SM_EEXIST). */
SM_MUST_CHECK int metrics_listen(metrics *mt);

/* The port /metrics listens on (0 before metrics_listen). */
int metrics_port(const metrics *mt);

/* The collector (for GET /api/metrics and tests). */
metrics_registry *metrics_get_registry(metrics *mt);

/* Closes the listener; cb(ud) (optional) runs after its last close callback, then mt is freed.
 * NULL is fine (cb is not called then). */
void metrics_close(metrics *mt, void (*cb)(void *ud), void *ud);

/* ---- hooks (each accepts mt == NULL and does nothing then) ---- */

/* A new command was stored (lifecycle on_received). */
void metrics_command_received(metrics *mt, const sm_command *c);

/* A command reached a final status (lifecycle on_finished); exec_s: from start (or dispatch) to
 * the final status, 0 when it never ran. */
void metrics_command_finished(metrics *mt, const sm_command *c, double exec_s);

/* A gRPC call to a served method started (path "/scan.AgentService/Connect"). */
void metrics_grpc_call_start(metrics *mt, const char *path);

/* A gRPC call ended with a grpc-status; known: path names a served method; started: the call
 * was counted by metrics_grpc_call_start (else it was refused before starting). */
void metrics_grpc_call_end(metrics *mt, const char *path, int known, int started, int status);

#endif
