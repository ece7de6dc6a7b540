/* agent_json.h - an agent as JSON (cJSON). */
#ifndef SM_MODEL_AGENT_JSON_H
#define SM_MODEL_AGENT_JSON_H

#include "model/agent-t.h"

#include <cjson/cJSON.h>

/* The agent as the API reports it: id, hostname, version, status, capabilities (object),
 * segment, load, active_commands, max_concurrent, connected_at, last_seen (RFC 3339 UTC, ms),
 * instance, plus weight, assigned, cpu_usage, memory_usage, protocol and peer. NULL when out
 * of memory. */
cJSON *agent_to_json(const agent *a, const char *instance);

#endif
