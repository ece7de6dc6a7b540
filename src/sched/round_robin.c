/* round_robin.c - in turn: the eligible agent served least recently (ties: index order), so with a
 * stable set every agent is served once per round. */
#include "sched/policy.h"

static int pick(sched_lb *lb, const sched_request *req, agent **out) {
  return sched_lb_pick(lb, req, NULL, SCHED_ORD_RR, out);
}

const sched_policy sched_policy_round_robin = {.name = "round_robin", .pick = pick};
