/* request.c - the constraints every strategy shares (see request.h). */
#include "sched/request.h"

#include <string.h>

int sched_agent_matches(const agent *a, const sched_request *req) {
  if (req->agent_id && *req->agent_id && strcmp(req->agent_id, a->id) != 0)
    return 0;
  for (size_t i = 0; i < req->ncaps; i++) {
    const char *have = agent_cap_value(a, req->caps[i].key);
    const char *want = req->caps[i].value;
    if (have == NULL)
      return 0;
    if (want && *want && strcmp(want, "*") != 0 && strcmp(want, have) != 0)
      return 0;
  }
  return 1;
}

int sched_agent_available(const agent *a, double max_agent_load) {
  if (a->link_ops == NULL)
    return 0;
  if (a->status == AGENT_MAINTENANCE || a->status == AGENT_ERROR)
    return 0;
  if (a->assigned >= a->max_concurrent)
    return 0;
  return a->load < max_agent_load;
}
