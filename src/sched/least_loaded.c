/* least_loaded.c - the eligible agent with the lowest load, then the fewest assigned commands, then
 * the least recently served. */
#include "sched/policy.h"

static int pick(sched_lb *lb, const sched_request *req, agent **out) {
  return sched_lb_pick(lb, req, NULL, SCHED_ORD_LOAD, out);
}

const sched_policy sched_policy_least_loaded = {.name = "least_loaded", .pick = pick};
