/* metrics.h - the manager's metrics: the families of CONTRACT.md "Metrics" (and a few more) in
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

#include "model/command.h"
#include "metrics/collector.h"

#include <uv.h>

#define METRICS_MAX_TYPES 64           /* command type label values per family */
#define METRICS_MAX_AGENT_SERIES 1000  /* per-agent series (ENABLE_DETAILED_METRICS) */
#define METRICS_GRPC_UNKNOWN "unknown" /* method label of a call to no served method */

struct sm_manager;
typedef struct metrics metrics;

/* Creates the families for manager m (reads m->settings now; m->registry, m->lifecycle,
 * m->store, m->mq at every scrape, each may be NULL) and the listener on METRICS_ADDR, not yet
 * bound. Returns 0, SM_EINVAL (bad METRICS_ADDR) or SM_ENOMEM. */
int metrics_create(uv_loop_t *loop, struct sm_manager *m, metrics **out);

/* Binds METRICS_ADDR. Returns 0 or an SM_E* code (SM_EADDR, SM_EEXIST). */
int metrics_listen(metrics *mt);

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
