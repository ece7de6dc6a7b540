/* least_loaded.c - the eligible agent with the lowest load, then the fewest commands assigned,
 * then the one served least recently (so equal agents take turns). */
#include "sched/balancer.h"
#include "sched/policy.h"

static void key(const void *self, const sched_agent_view *v, const void *mine, sched_key *k) {
  (void)self;
  (void)mine;
  *k = (sched_key){.k0 = v->load, .k1 = v->assigned, .k2 = v->served};
}

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out);

const sched_policy sched_policy_least_loaded = {.name = "least_loaded",
                                                .key_deps = SCHED_DEP_LOAD | SCHED_DEP_SERVED,
                                                .key = key,
                                                .pick = pick};

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out) {
  (void)self;
  return sched_lb_pick(lb, req, NULL, &sched_policy_least_loaded, out);
}
