/* strategy.h - agent placement behind one interface, so each strategy is one file.
 *
 * The lifecycle asks a strategy for one agent per command. Every strategy must honour the
 * request's hard constraints (sched_agent_can_take): the explicit agent, the required
 * capabilities, agent status, max_concurrent and MAX_AGENT_LOAD. Issue 4's strategies
 * (round_robin, weighted, adaptive, locality, ...) plug in as further sched_strategy values.
 */
#ifndef SM_SCHED_STRATEGY_H
#define SM_SCHED_STRATEGY_H

#include "core/registry.h"

#include <stddef.h>

/* What placement needs to know about one command (borrowed view). */
typedef struct sched_request {
  const char *id;       /* command id (for logs) */
  const char *type;     /* command type */
  const char *agent_id; /* explicit agent: only this one; NULL: any */
  const sm_kv *caps;    /* required capabilities (all of them; value "" or "*": any value) */
  size_t ncaps;
  const sm_kv *params; /* the command's params (locality looks at "target") */
  size_t nparams;
  int priority;          /* 0..9 */
  double max_agent_load; /* MAX_AGENT_LOAD: no agent at or above it */
} sched_request;

typedef struct sched_strategy sched_strategy;

typedef struct sched_strategy_ops {
  const char *name; /* LOAD_BALANCING_STRATEGY value, e.g. "least_loaded" */
  /* Picks an agent for req among reg's agents. Returns 0 with *out set; SM_EAGAIN when agents
   * that could run it exist but none can take it now (busy, loaded, maintenance: wait);
   * SM_ENOENT when no connected agent could ever take it (explicit agent absent, capability
   * nobody has): park it until an agent registers. */
  int (*pick)(sched_strategy *s, agent_registry *reg, const sched_request *req, agent **out);
  /* Frees the strategy. */
  void (*destroy)(sched_strategy *s);
} sched_strategy_ops;

/* The common head of every strategy. */
struct sched_strategy {
  const sched_strategy_ops *ops;
};

/* Whether agent a matches the request's identity constraints (explicit agent, capabilities),
 * regardless of how busy it is. */
int sched_agent_matches(const agent *a, const sched_request *req);

/* Whether agent a can take one more command now: connected, status not MAINTENANCE/ERROR,
 * assigned < max_concurrent, load < max_agent_load. */
int sched_agent_available(const agent *a, double max_agent_load);

/* Creates the least_loaded strategy: among eligible agents the lowest load, ties broken by
 * fewest assigned commands. O(agents) per pick (issue 4 indexes it). Returns 0 or SM_ENOMEM. */
int sched_least_loaded_create(sched_strategy **out);

/* Calls s->ops->pick. */
int sched_pick(sched_strategy *s, agent_registry *reg, const sched_request *req, agent **out);

/* Destroys s. NULL is fine. */
void sched_strategy_destroy(sched_strategy *s);

#endif
