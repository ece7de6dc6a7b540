/* round_robin.c - in turn: the eligible agent served least recently (ties: index order), so
 * with a stable set every agent is served once per round. The order is the balancer's served
 * clock; the strategy keeps no state of its own. */
#include "sched/balancer.h"
#include "sched/policy.h"

static void key(const void *self, const sched_agent_view *v, const void *mine, sched_key *k) {
  (void)self;
  (void)mine;
  *k = (sched_key){.k2 = v->served};
}

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out);

const sched_policy sched_policy_round_robin = {
    .name = "round_robin", .key_deps = SCHED_DEP_SERVED, .key = key, .pick = pick};

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out) {
  (void)self;
  return sched_lb_pick(lb, req, NULL, &sched_policy_round_robin, out);
}
