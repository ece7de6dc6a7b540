/* broadcast.h - planning a broadcast off the loop.
 *
 * On the loop, what the filter needs of every agent is copied into plain arrays (ids,
 * generations, status, version, load, the filter's capability values: no pointers into live
 * objects), SCHED_BCAST_SNAP_STEP agents per loop turn so the loop keeps serving meanwhile; an
 * agent that leaves before it was copied is reported through sched_bcast_agent_gone and
 * skipped. The uv work queue then matches the filter over that snapshot and generates the child
 * command ids. The callback then runs on the loop with the plan; the caller must check each entry
 * against the live registry (agent_handle generation) before using it, since agents may have left
 * or re-registered while the plan was computed.
 */
#ifndef SM_SCHED_BROADCAST_H
#define SM_SCHED_BROADCAST_H

#include "model/agent.h"
#include "model/command.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The result of planning: agents that matched when the snapshot was taken. */
typedef struct sched_bcast_plan {
  size_t n;                             /* matching agents (at most the max asked for) */
  const char **agent_id;                /* n agent ids (owned by the plan) */
  uint64_t *generation;                 /* n agent generations at snapshot time */
  char (*child_id)[COMMAND_ID_LEN + 1]; /* n fresh command ids, one per child */
  size_t snapshot;                      /* agents in the snapshot */
  double plan_ms;                       /* time spent on the work queue */
  char *arena_;                         /* private */
} sched_bcast_plan;

#define SCHED_BCAST_SNAP_STEP 8192 /* agents copied per loop turn */

typedef struct sched_bcast_job sched_bcast_job;

/* Runs once on the loop: err 0 with a plan the callee owns (sched_bcast_plan_free), or an SM_E*
 * code with plan NULL. Never runs inside sched_bcast_start, never after sched_bcast_cancel. */
typedef void (*sched_bcast_cb)(void *ud, int err, sched_bcast_plan *plan);

/* Snapshots the n agents of agents (the array is copied; the agents must stay readable until
 * they leave, reported by sched_bcast_agent_gone) and plans the agents matching f
 * (agent_filter_match semantics), at most max of them, on the work queue. Returns 0 with *out
 * (for sched_bcast_cancel; cb then runs exactly once, unless cancelled), or SM_ENOMEM (cb never
 * runs, nothing is left allocated). */
SM_MUST_CHECK int sched_bcast_start(uv_loop_t *loop, agent *const *agents, size_t n,
                                    const agent_filter *f, size_t max, sched_bcast_cb cb, void *ud,
                                    sched_bcast_job **out);

/* Agent a is leaving the registry (call from the registry's on_unregister, while a is still
 * readable): a job still copying skips it. When even that record cannot be allocated, the job
 * fails (cb with SM_ENOMEM) rather than read a freed agent. */
void sched_bcast_agent_gone(sched_bcast_job *job, const agent *a);

/* The callback will not run; the job frees itself once the work queue is done with it. */
void sched_bcast_cancel(sched_bcast_job *job);

/* Frees a plan. NULL is fine. */
void sched_bcast_plan_free(sched_bcast_plan *plan);

#endif
