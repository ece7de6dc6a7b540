/* policy.h - (internal) the strategies of the strategy set: one file each, all over the shared
 * balancer index. */
#ifndef SM_SCHED_POLICY_H
#define SM_SCHED_POLICY_H

#include "sched/balancer.h"

typedef struct sched_policy {
  const char *name; /* LOAD_BALANCING_STRATEGY value */
  /* Same contract as sched_strategy_ops.pick, over the balancer's index. */
  int (*pick)(sched_lb *lb, const sched_request *req, agent **out);
} sched_policy;

extern const sched_policy sched_policy_round_robin;
extern const sched_policy sched_policy_least_loaded;
extern const sched_policy sched_policy_capability_match;
extern const sched_policy sched_policy_weighted;
extern const sched_policy sched_policy_adaptive;
extern const sched_policy sched_policy_locality;

#endif
