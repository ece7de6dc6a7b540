/* strategy.h - placement as the lifecycle sees it: the strategy set.
 *
 * The set (sched_set_create) is what the manager uses: one balancer (balancer.h: the indexes of
 * the connected agents) driving every strategy of this build (policy.h: one file each, listed
 * in strategy.c's table), the default from LOAD_BALANCING_STRATEGY and a per-command override
 * (sched_request.strategy). Every strategy honours the request's hard constraints
 * (request.h): the explicit agent, the required capabilities, agent status, max_concurrent and
 * MAX_AGENT_LOAD. The set must be told about agents (sched_notify, sched_sync) and results
 * (sched_report_result), on the loop thread. It never owns agents.
 */
#ifndef SM_SCHED_STRATEGY_H
#define SM_SCHED_STRATEGY_H

#include "sched/request.h"
#include "util/err.h"

#include <stddef.h>
#include <uv.h>

struct sched_lb;
struct sched_policy;

typedef struct sched_strategy sched_strategy;

/* Agent events the set indexes (sched_notify). */
enum sched_event { SCHED_EV_REGISTER = 0, SCHED_EV_UPDATE, SCHED_EV_UNREGISTER };

/* Whether name is a strategy this build has (round_robin, least_loaded, capability_match,
 * weighted, adaptive, locality). NULL and "" are not. */
int sched_strategy_known(const char *name);

/* The strategy names, NULL-terminated (the order of strategy.c's table). */
const char *const *sched_strategy_names(void);

/* The strategy with this name, or NULL. */
const struct sched_policy *sched_policy_find(const char *name);

typedef struct sched_set_config {
  const char *default_strategy; /* LOAD_BALANCING_STRATEGY; NULL: least_loaded */
  double max_agent_load;        /* MAX_AGENT_LOAD; <= 0: 0.8 */
  double recompute_s;           /* adaptive recompute period; <= 0: 1 s */
} sched_set_config;

/* Creates the strategy set on loop. Returns 0, SM_EINVAL (unknown default, no loop) or
 * SM_ENOMEM. */
SM_MUST_CHECK int sched_set_create(uv_loop_t *loop, const sched_set_config *cfg,
                                   sched_strategy **out);

/* The balancer of a set (for tests, the bench and strategies' own functions). */
struct sched_lb *sched_set_balancer(sched_strategy *s);

/* Picks an agent for req by its strategy (the default when req->strategy is NULL or ""), among
 * the agents the set was told about. Returns 0 with *out set; SM_EAGAIN when agents that could
 * run it exist but none can take it now (busy, loaded, maintenance: wait); SM_ENOENT when no
 * connected agent could ever take it (explicit agent absent, capability nobody has): park it
 * until an agent registers; SM_EINVAL for an unknown strategy name; SM_ENOMEM. */
SM_MUST_CHECK int sched_pick(sched_strategy *s, const sched_request *req, agent **out);

/* An agent registered, changed (load, assigned, status, descriptor) or left. Out of memory is
 * logged; the agent is then unknown to placement until its next event. NULL s is fine. */
void sched_notify(sched_strategy *s, agent *a, enum sched_event ev);

/* A command finished on agent a after exec_s seconds, ok or not. NULL s is fine. */
void sched_report_result(sched_strategy *s, agent *a, double exec_s, int ok);

/* Indexes the n agents of agents (start-up: agents that registered before the set existed).
 * Returns 0 or SM_ENOMEM (the agents that failed are indexed at their next event). */
SM_MUST_CHECK int sched_sync(sched_strategy *s, agent *const *agents, size_t n);

/* Destroys s. NULL is fine. */
void sched_strategy_destroy(sched_strategy *s);

#endif
