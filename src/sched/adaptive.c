/* adaptive.c - weights learned from each agent's recent execution times and failure rate
 * (exponentially decaying averages fed by sched_lb_result), applied by stride scheduling like
 * weighted.c. The learned weight is declared weight x (fleet median time / agent's time) x
 * (1 - failure rate), bounded; it is recomputed for all agents on the uv work queue (the median
 * needs every agent) and applied on the loop (balancer.c). */
#include "sched/policy.h"

static int pick(sched_lb *lb, const sched_request *req, agent **out) {
  return sched_lb_pick(lb, req, NULL, SCHED_ORD_ADAPTIVE, out);
}

const sched_policy sched_policy_adaptive = {.name = "adaptive", .pick = pick};
