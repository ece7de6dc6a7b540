/* strategy.h - agent placement behind one interface, so each strategy is one file.
 *
 * The lifecycle asks a strategy for one agent per command. Every strategy must honour the
 * request's hard constraints (sched_agent_can_take): the explicit agent, the required
 * capabilities, agent status, max_concurrent and MAX_AGENT_LOAD.
 *
 * The strategy set (sched_set_create) is what the manager uses: one load balancer index
 * (balancer.h) shared by every strategy (round_robin.c, least_loaded.c, capability_match.c,
 * weighted.c, adaptive.c, locality.c), the default from LOAD_BALANCING_STRATEGY and a
 * per-command override (sched_request.strategy). It must be told about agents (sched_notify)
 * and results (sched_report_result).
 */
#ifndef SM_SCHED_STRATEGY_H
#define SM_SCHED_STRATEGY_H

#include "core/registry.h"

#include <stddef.h>
#include <uv.h>

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
  const char *strategy;  /* per-command strategy name; NULL or "": the default */
} sched_request;

typedef struct sched_strategy sched_strategy;

/* Agent events a strategy may index (sched_notify). */
enum sched_event { SCHED_EV_REGISTER = 0, SCHED_EV_UPDATE, SCHED_EV_UNREGISTER };

typedef struct sched_strategy_ops {
  const char *name; /* LOAD_BALANCING_STRATEGY value, e.g. "least_loaded" */
  /* Picks an agent for req among reg's agents. Returns 0 with *out set; SM_EAGAIN when agents
   * that could run it exist but none can take it now (busy, loaded, maintenance: wait);
   * SM_ENOENT when no connected agent could ever take it (explicit agent absent, capability
   * nobody has): park it until an agent registers; SM_EINVAL for an unknown strategy name. */
  int (*pick)(sched_strategy *s, agent_registry *reg, const sched_request *req, agent **out);
  /* Frees the strategy. */
  void (*destroy)(sched_strategy *s);
  /* Optional: an agent registered, changed (load, assigned, status, descriptor) or left. */
  void (*agent_event)(sched_strategy *s, agent *a, enum sched_event ev);
  /* Optional: a command finished on agent a after exec_s seconds, ok or not. */
  void (*result)(sched_strategy *s, agent *a, double exec_s, int ok);
  /* Optional: index every agent of reg (start-up). */
  void (*sync)(sched_strategy *s, agent_registry *reg);
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

/* Whether name is a strategy this build has (round_robin, least_loaded, capability_match,
 * weighted, adaptive, locality). NULL and "" are not. */
int sched_strategy_known(const char *name);

/* The strategy names, NULL-terminated. */
const char *const *sched_strategy_names(void);

typedef struct sched_set_config {
  const char *default_strategy; /* LOAD_BALANCING_STRATEGY; NULL: least_loaded */
  double max_agent_load;        /* MAX_AGENT_LOAD; <= 0: 0.8 */
  double recompute_s;           /* adaptive recompute period; <= 0: 1 s */
} sched_set_config;

/* Creates the strategy set on loop. Returns 0, SM_EINVAL (unknown default) or SM_ENOMEM. */
int sched_set_create(uv_loop_t *loop, const sched_set_config *cfg, sched_strategy **out);

/* The balancer index of a strategy set (NULL for other strategies). */
struct sched_lb *sched_set_balancer(sched_strategy *s);

/* Calls s->ops->pick. */
int sched_pick(sched_strategy *s, agent_registry *reg, const sched_request *req, agent **out);

/* Forwards an agent event / a result / a start-up sync when the strategy wants them. */
void sched_notify(sched_strategy *s, agent *a, enum sched_event ev);
void sched_report_result(sched_strategy *s, agent *a, double exec_s, int ok);
void sched_sync(sched_strategy *s, agent_registry *reg);

/* Destroys s. NULL is fine. */
void sched_strategy_destroy(sched_strategy *s);

#endif
