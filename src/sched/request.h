/* request.h - what placement knows about one command, and the hard constraints every strategy
 * honours: the explicit agent, the required capabilities (sched_agent_matches) and whether the
 * agent can take one more command now (sched_agent_available). Pure functions of one agent
 * record (model/agent.h); no state, no loop.
 */
#ifndef SM_SCHED_REQUEST_H
#define SM_SCHED_REQUEST_H

#include "model/agent.h"

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
  const char *strategy;  /* per-command strategy name; NULL or "": the default */
} sched_request;

/* Whether agent a matches the request's identity constraints (explicit agent, capabilities),
 * regardless of how busy it is. */
int sched_agent_matches(const agent *a, const sched_request *req);

/* Whether agent a can take one more command now: connected, status not MAINTENANCE/ERROR,
 * assigned < max_concurrent, load < max_agent_load. */
int sched_agent_available(const agent *a, double max_agent_load);

#endif
