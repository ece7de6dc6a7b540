/* json.h - JSON out for the admin API (cJSON), and the agent object of docs/api.md. */
#ifndef SM_ADMIN_JSON_H
#define SM_ADMIN_JSON_H

#include "http/http.h"
#include "model/agent-t.h"

#include <cjson/cJSON.h>

/* Answers status with obj printed unformatted; takes ownership of obj (NULL answers 500). */
void admin_respond_json(http_response *res, int status, cJSON *obj);

/* The agent as the API reports it: id, hostname, version, status, capabilities (object),
 * segment, load, active_commands, max_concurrent, connected_at, last_seen (RFC 3339 UTC, ms),
 * instance, plus weight, assigned, cpu_usage, memory_usage, protocol and peer. NULL when out
 * of memory. */
cJSON *admin_agent_json(const agent *a, const char *instance);

#endif
