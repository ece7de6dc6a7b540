/* json.c - cJSON helpers and the agent object. */
#include "admin/json.h"

#include "model/agent_json.h"

#include <string.h>

void admin_respond_json(http_response *res, int status, cJSON *obj) {
  char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
  cJSON_Delete(obj);
  if (text == NULL) {
    http_response_error(res, 500, "internal", "out of memory");
    return;
  }
  http_response_finish(res);
  res->status = status;
  res->content_type = "application/json";
  res->body = text;
  res->body_len = strlen(text);
  res->body_free = cJSON_free;
}

cJSON *admin_agent_json(const agent *a, const char *instance) {
  return agent_to_json(a, instance);
}
