/* strategy.c - the constraints every strategy shares, and the strategy set. */
#include "sched/strategy.h"

#include "sched/balancer.h"
#include "sched/policy.h"
#include "util/alloc.h"
#include "util/err.h"

#include <stdlib.h>
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

static const sched_policy *const policies[] = {
    &sched_policy_round_robin, &sched_policy_least_loaded, &sched_policy_capability_match,
    &sched_policy_weighted,    &sched_policy_adaptive,     &sched_policy_locality,
};
#define NPOLICIES (sizeof(policies) / sizeof(policies[0]))

static const char *const names[] = {
    "round_robin", "least_loaded", "capability_match", "weighted", "adaptive", "locality", NULL};

const char *const *sched_strategy_names(void) {
  return names;
}

static const sched_policy *policy_find(const char *name) {
  for (size_t i = 0; name && i < NPOLICIES; i++)
    if (strcmp(policies[i]->name, name) == 0)
      return policies[i];
  return NULL;
}

int sched_strategy_known(const char *name) {
  return name && *name && policy_find(name) != NULL;
}

/* ---- the set ------------------------------------------------------------------------------ */

typedef struct sched_set {
  sched_strategy base;
  sched_lb *lb;
  const sched_policy *dflt;
} sched_set;

static int set_pick(sched_strategy *s, agent_registry *reg, const sched_request *req, agent **out) {
  (void)reg;
  sched_set *set = (sched_set *)s;
  const sched_policy *p = set->dflt;
  if (req->strategy && *req->strategy && (p = policy_find(req->strategy)) == NULL)
    return SM_EINVAL;
  return p->pick(set->lb, req, out);
}

static void set_destroy(sched_strategy *s) {
  sched_set *set = (sched_set *)s;
  sched_lb_destroy(set->lb);
  free(set);
}

static void set_event(sched_strategy *s, agent *a, enum sched_event ev) {
  sched_set *set = (sched_set *)s;
  switch (ev) {
  case SCHED_EV_REGISTER:
    sched_lb_register(set->lb, a);
    break;
  case SCHED_EV_UPDATE:
    sched_lb_update(set->lb, a);
    break;
  case SCHED_EV_UNREGISTER:
    sched_lb_unregister(set->lb, a);
    break;
  }
}

static void set_result(sched_strategy *s, agent *a, double exec_s, int ok) {
  sched_lb_result(((sched_set *)s)->lb, a, exec_s, ok);
}

static void set_sync(sched_strategy *s, agent_registry *reg) {
  sched_lb_sync(((sched_set *)s)->lb, reg);
}

static const sched_strategy_ops set_ops = {
    .name = "set",
    .pick = set_pick,
    .destroy = set_destroy,
    .agent_event = set_event,
    .result = set_result,
    .sync = set_sync,
};

int sched_set_create(uv_loop_t *loop, const sched_set_config *cfg, sched_strategy **out) {
  const char *dn = cfg && cfg->default_strategy ? cfg->default_strategy : "least_loaded";
  const sched_policy *d = policy_find(dn);
  if (d == NULL || loop == NULL)
    return SM_EINVAL;
  sched_set *set = sm_calloc(1, sizeof(*set));
  if (set == NULL)
    return SM_ENOMEM;
  sched_lb_config lc = {.max_agent_load = cfg ? cfg->max_agent_load : 0,
                        .recompute_s = cfg ? cfg->recompute_s : 0};
  int err = sched_lb_create(loop, &lc, &set->lb);
  if (err) {
    free(set);
    return err;
  }
  set->base.ops = &set_ops;
  set->dflt = d;
  *out = &set->base;
  return 0;
}

struct sched_lb *sched_set_balancer(sched_strategy *s) {
  return s && s->ops == &set_ops ? ((sched_set *)s)->lb : NULL;
}

/* ---- dispatch ----------------------------------------------------------------------------- */

int sched_pick(sched_strategy *s, agent_registry *reg, const sched_request *req, agent **out) {
  return s->ops->pick(s, reg, req, out);
}

void sched_notify(sched_strategy *s, agent *a, enum sched_event ev) {
  if (s && s->ops->agent_event)
    s->ops->agent_event(s, a, ev);
}

void sched_report_result(sched_strategy *s, agent *a, double exec_s, int ok) {
  if (s && s->ops->result)
    s->ops->result(s, a, exec_s, ok);
}

void sched_sync(sched_strategy *s, agent_registry *reg) {
  if (s && s->ops->sync)
    s->ops->sync(s, reg);
}

void sched_strategy_destroy(sched_strategy *s) {
  if (s != NULL)
    s->ops->destroy(s);
}
