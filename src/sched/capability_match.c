/* capability_match.c - agents having every required capability, the best-matching first: the
 * tightest fit (fewest capabilities beyond the required ones, so specialised agents take the work
 * that needs them and generalists stay free), then the lowest load. */
#include "sched/policy.h"

static int pick(sched_lb *lb, const sched_request *req, agent **out) {
  return sched_lb_pick(lb, req, NULL, SCHED_ORD_FIT, out);
}

const sched_policy sched_policy_capability_match = {.name = "capability_match", .pick = pick};
