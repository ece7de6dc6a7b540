/* capability_match.c - the tightest fit: among the agents that have the required capabilities,
 * the one with the fewest capabilities overall (keeping versatile agents free for the commands
 * only they can run), then the lowest load, then the one served least recently. */
#include "sched/balancer.h"
#include "sched/policy.h"

static void key(const void *self, const sched_agent_view *v, const void *mine, sched_key *k) {
  (void)self;
  (void)mine;
  *k = (sched_key){.k0 = (double)v->ncaps, .k1 = v->load, .k2 = v->served};
}

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out);

const sched_policy sched_policy_capability_match = {.name = "capability_match",
                                                    .key_deps = SCHED_DEP_LOAD | SCHED_DEP_SERVED,
                                                    .key = key,
                                                    .pick = pick};

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out) {
  (void)self;
  return sched_lb_pick(lb, req, NULL, &sched_policy_capability_match, out);
}
