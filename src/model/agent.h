/* agent.h - functions of one agent record that need no registry: status names, derived load,
 * capability lookup, filters, handles. Shared by the registry, placement and the APIs. */
#ifndef SM_MODEL_AGENT_H
#define SM_MODEL_AGENT_H

#include "model/agent-t.h"

/* Names: "idle", "busy", ... and back (agent_status_parse returns 0 or SM_EINVAL). */
const char *agent_status_name(enum agent_status s);
int agent_status_parse(const char *s, enum agent_status *out);

/* Derived load in 0..1 from the heartbeat figures and the commands in flight. */
double agent_load_compute(const agent *a);

/* Capability lookup: the agent's value for key or NULL. */
const char *agent_cap_value(const agent *a, const char *key);

/* Whether the agent passes the filter. */
int agent_filter_match(const agent_filter *f, const agent *a);

/* Fills h from a live agent (agent_handle_get in core/registry.h resolves it later). */
void agent_handle_set(agent_handle *h, const agent *a);

#endif
