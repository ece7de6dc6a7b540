/* locality.c - prefer agents whose segment contains the command's target (params.target, an
 * address or CIDR): the most specific such segment with an agent that can take it now (least
 * loaded within the segment), then wider segments, then any eligible agent. Only the prefix
 * lengths some agent's segment has are tried, so a pick is a few hash lookups and heap tops.
 * It keeps no ordering of its own: it orders by least_loaded's (found by name at start). */
#include "sched/balancer.h"
#include "sched/policy.h"

#include <string.h>

#define LOCALITY_TRIES 8 /* segments tried before falling back to any agent */

typedef struct locality {
  const sched_policy *order; /* least_loaded */
} locality;

static int start(void *self, const sched_policy_env *env) {
  locality *l = self;
  l->order = sched_lb_policy(env->lb, "least_loaded");
  return l->order ? 0 : SM_EINVAL;
}

static const char *target_of(const sched_request *req) {
  for (size_t i = 0; i < req->nparams; i++)
    if (strcmp(req->params[i].key, "target") == 0)
      return req->params[i].value;
  return NULL;
}

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out) {
  locality *l = self;
  return sched_lb_pick_local(lb, req, target_of(req), LOCALITY_TRIES, l->order, out);
}

const sched_policy sched_policy_locality = {
    .name = "locality", .state_size = sizeof(locality), .start = start, .pick = pick};
