/* weighted.c - in proportion to each agent's weight: stride scheduling, the lowest pass goes next
 * and its pass grows by 1/weight. */
#include "sched/policy.h"

static int pick(sched_lb *lb, const sched_request *req, agent **out) {
  return sched_lb_pick(lb, req, NULL, SCHED_ORD_WEIGHTED, out);
}

const sched_policy sched_policy_weighted = {.name = "weighted", .pick = pick};
