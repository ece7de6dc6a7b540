/* locality.c - prefer agents whose segment contains the command's target (params.target, an
 * address or CIDR): the most specific such segment with an agent that can take it now (least
 * loaded within the segment), then wider segments, then any eligible agent. Only the prefix
 * lengths some agent's segment has are tried, so a pick is a few hash lookups and heap tops. */
#include "sched/policy.h"

#include <string.h>

#define LOCALITY_TRIES 8 /* segments tried before falling back to any agent */

static const char *target_of(const sched_request *req) {
  for (size_t i = 0; i < req->nparams; i++)
    if (strcmp(req->params[i].key, "target") == 0)
      return req->params[i].value;
  return NULL;
}

static int pick(sched_lb *lb, const sched_request *req, agent **out) {
  return sched_lb_pick_local(lb, req, target_of(req), LOCALITY_TRIES, out);
}

const sched_policy sched_policy_locality = {.name = "locality", .pick = pick};
