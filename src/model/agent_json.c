/* agent_json.c - the agent object of docs/api.md, shared by the admin API and the agent store
 * mirror (one place decides how an agent looks outside the process). */
#include "model/agent_json.h"

#include "model/agent.h"
#include "util/timeutil.h"

#include <string.h>

/* Adds a string member; returns 0 or -1 when out of memory. */
static int add_str(cJSON *o, const char *k, const char *v) {
  return cJSON_AddStringToObject(o, k, v ? v : "") ? 0 : -1;
}

static int add_num(cJSON *o, const char *k, double v) {
  return cJSON_AddNumberToObject(o, k, v) ? 0 : -1;
}

static int add_time(cJSON *o, const char *k, int64_t ms) {
  if (ms <= 0)
    return cJSON_AddNullToObject(o, k) ? 0 : -1;
  char buf[40];
  return add_str(o, k, sm_rfc3339(ms, buf, sizeof(buf)));
}

cJSON *agent_to_json(const agent *a, const char *instance) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return NULL;
  int bad = add_str(o, "id", a->id) | add_str(o, "hostname", a->hostname) |
            add_str(o, "version", a->version) | add_str(o, "status", agent_status_name(a->status));
  cJSON *caps = cJSON_AddObjectToObject(o, "capabilities");
  if (caps == NULL)
    bad = -1;
  for (size_t i = 0; caps && i < a->ncaps; i++)
    bad |= add_str(caps, a->caps[i].key, a->caps[i].value);
  bad |= add_str(o, "segment", a->segment) | add_num(o, "load", a->load) |
         add_num(o, "active_commands", a->active_commands) |
         add_num(o, "max_concurrent", a->max_concurrent) |
         add_time(o, "connected_at", a->connected_at_ms) |
         add_time(o, "last_seen", a->last_seen_ms) | add_str(o, "instance", instance) |
         add_num(o, "weight", a->weight) | add_num(o, "assigned", a->assigned) |
         add_num(o, "cpu_usage", a->cpu_usage) | add_num(o, "memory_usage", a->memory_usage);
  if (a->link_ops) {
    bad |= add_str(o, "protocol", a->link_ops->protocol);
    bad |= add_str(o, "peer", a->link_ops->peer ? a->link_ops->peer(a->link) : "");
  } else {
    bad |= cJSON_AddNullToObject(o, "protocol") ? 0 : -1;
    bad |= cJSON_AddNullToObject(o, "peer") ? 0 : -1;
  }
  if (bad) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}
