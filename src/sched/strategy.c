/* strategy.c - the strategy set: the table of strategies and the default/override dispatch
 * over one balancer (see strategy.h). */
#include "sched/strategy.h"

#include "sched/balancer.h"
#include "sched/policy.h"
#include "util/alloc.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

/* The strategies of this build: one line each (the file defines sched_policy_<name>). */
#define SCHED_STRATEGIES(X)                                                                        \
  X(round_robin)                                                                                   \
  X(least_loaded)                                                                                  \
  X(capability_match)                                                                              \
  X(weighted)                                                                                      \
  X(adaptive)                                                                                      \
  X(locality)

#define DECLARE(n) extern const sched_policy sched_policy_##n;
SCHED_STRATEGIES(DECLARE)
#undef DECLARE

#define ENTRY(n) &sched_policy_##n,
static const sched_policy *const policies[] = {SCHED_STRATEGIES(ENTRY)};
#undef ENTRY
#define NPOLICIES (sizeof(policies) / sizeof(policies[0]))

#define NAME(n) #n,
static const char *const names[] = {SCHED_STRATEGIES(NAME) NULL};
#undef NAME

const char *const *sched_strategy_names(void) {
  return names;
}

const sched_policy *sched_policy_find(const char *name) {
  for (size_t i = 0; name && i < NPOLICIES; i++)
    if (strcmp(policies[i]->name, name) == 0)
      return policies[i];
  return NULL;
}

int sched_strategy_known(const char *name) {
  return name && *name && sched_policy_find(name) != NULL;
}

/* ---- the set ------------------------------------------------------------------------------ */

struct sched_strategy {
  sched_lb *lb;
  const sched_policy *dflt;
};

int sched_set_create(uv_loop_t *loop, const sched_set_config *cfg, sched_strategy **out) {
  const char *dn = cfg && cfg->default_strategy ? cfg->default_strategy : "least_loaded";
  const sched_policy *d = sched_policy_find(dn);
  if (d == NULL || loop == NULL)
    return SM_EINVAL;
  sched_strategy *set = sm_calloc(1, sizeof(*set));
  if (set == NULL)
    return SM_ENOMEM;
  sched_lb_config lc = {.max_agent_load = cfg ? cfg->max_agent_load : 0,
                        .recompute_s = cfg ? cfg->recompute_s : 0};
  int err = sched_lb_create(loop, &lc, policies, NPOLICIES, &set->lb);
  if (err) {
    free(set);
    return err;
  }
  set->dflt = d;
  *out = set;
  return 0;
}

sched_lb *sched_set_balancer(sched_strategy *s) {
  return s ? s->lb : NULL;
}

int sched_pick(sched_strategy *s, const sched_request *req, agent **out) {
  const sched_policy *p = s->dflt;
  if (req->strategy && *req->strategy && (p = sched_policy_find(req->strategy)) == NULL)
    return SM_EINVAL;
  return p->pick(sched_lb_policy_state(s->lb, p), s->lb, req, out);
}

void sched_notify(sched_strategy *s, agent *a, enum sched_event ev) {
  if (s == NULL)
    return;
  int err = 0;
  switch (ev) {
  case SCHED_EV_REGISTER:
    err = sched_lb_register(s->lb, a);
    break;
  case SCHED_EV_UPDATE:
    err = sched_lb_update(s->lb, a);
    break;
  case SCHED_EV_UNREGISTER:
    sched_lb_unregister(s->lb, a);
    break;
  }
  if (err)
    sm_log_error("sched", "agent not indexed", SM_LS("agent_id", a->id),
                 SM_LS("error", sm_strerror(err)));
}

void sched_report_result(sched_strategy *s, agent *a, double exec_s, int ok) {
  if (s != NULL)
    sched_lb_result(s->lb, a, exec_s, ok);
}

int sched_sync(sched_strategy *s, agent *const *agents, size_t n) {
  return sched_lb_sync(s->lb, agents, n);
}

void sched_strategy_destroy(sched_strategy *s) {
  if (s == NULL)
    return;
  sched_lb_destroy(s->lb);
  free(s);
}
