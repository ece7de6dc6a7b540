/* least_loaded.c - the simple placement: the eligible agent with the lowest load. */
#include "sched/strategy.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

static int ll_pick(sched_strategy *s, agent_registry *reg, const sched_request *req, agent **out) {
  (void)s;
  if (req->agent_id && *req->agent_id) {
    agent *a = agent_registry_find(reg, req->agent_id, strlen(req->agent_id));
    if (a == NULL || a->link_ops == NULL || !sched_agent_matches(a, req))
      return SM_ENOENT;
    if (!sched_agent_available(a, req->max_agent_load))
      return SM_EAGAIN;
    *out = a;
    return 0;
  }
  agent *best = NULL;
  int any_match = 0;
  size_t n = agent_registry_count(reg);
  for (size_t i = 0; i < n; i++) {
    agent *a = agent_registry_at(reg, i);
    if (!sched_agent_matches(a, req))
      continue;
    any_match = 1;
    if (!sched_agent_available(a, req->max_agent_load))
      continue;
    if (best == NULL || a->load < best->load ||
        (a->load == best->load && a->assigned < best->assigned))
      best = a;
  }
  if (best == NULL)
    return any_match ? SM_EAGAIN : SM_ENOENT;
  *out = best;
  return 0;
}

static void ll_destroy(sched_strategy *s) {
  free(s);
}

static const sched_strategy_ops ll_ops = {
    .name = "least_loaded",
    .pick = ll_pick,
    .destroy = ll_destroy,
};

int sched_least_loaded_create(sched_strategy **out) {
  sched_strategy *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return SM_ENOMEM;
  s->ops = &ll_ops;
  *out = s;
  return 0;
}
