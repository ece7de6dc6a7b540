/* adaptive.h - what the adaptive strategy (adaptive.c) offers besides placement: its learned
 * weights and an explicit recompute (tests, bench). The balancer passed is the one of the
 * strategy set (sched_set_balancer); all on the loop thread.
 */
#ifndef SM_SCHED_ADAPTIVE_H
#define SM_SCHED_ADAPTIVE_H

#include "model/agent-t.h"
#include "util/err.h"

struct sched_lb;

/* The adaptive weight in use for agent a (its declared weight until results were learned);
 * 0 when a is not indexed. */
double sched_adaptive_weight(const struct sched_lb *lb, const agent *a);

/* Recomputes the adaptive weights of all agents now, on the calling thread. */
void sched_adaptive_recompute_now(struct sched_lb *lb);

/* Starts a recompute on the uv work queue over a snapshot; applied on the loop. Returns 0,
 * SM_EAGAIN when one is already running, SM_ENOMEM or SM_EIO. */
SM_MUST_CHECK int sched_adaptive_recompute(struct sched_lb *lb);

#endif
