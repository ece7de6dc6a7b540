/* weighted.c - each agent gets commands in proportion to its declared weight, by stride
 * scheduling: the eligible agent with the lowest pass goes next and its pass advances by
 * 1/weight (policy.h, sched_stride). Deterministic and smooth: no random draws, no bursts. */
#include "sched/balancer.h"
#include "sched/policy.h"

typedef struct weighted {
  sched_stride st;
} weighted;

typedef struct weighted_agent {
  double pass;
} weighted_agent;

static void key(const void *self, const sched_agent_view *v, const void *mine, sched_key *k) {
  (void)self;
  (void)v;
  *k = (sched_key){.k0 = ((const weighted_agent *)mine)->pass};
}

static void joined(void *self, const sched_agent_view *v, void *mine) {
  (void)v;
  sched_stride_join(&((weighted *)self)->st, &((weighted_agent *)mine)->pass);
}

static int charged(void *self, const sched_agent_view *v, void *mine) {
  sched_stride_charge(&((weighted *)self)->st, &((weighted_agent *)mine)->pass, v->weight);
  return 1;
}

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out);

const sched_policy sched_policy_weighted = {.name = "weighted",
                                            .state_size = sizeof(weighted),
                                            .agent_size = sizeof(weighted_agent),
                                            .key = key,
                                            .joined = joined,
                                            .available = joined,
                                            .charged = charged,
                                            .pick = pick};

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out) {
  (void)self;
  return sched_lb_pick(lb, req, NULL, &sched_policy_weighted, out);
}
