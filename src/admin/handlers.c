/* handlers.c - GET /health, /ready, /api/agents, /api/agents/{id}; the command routes are in
 * cmd_handlers.c. */
#include "admin/handlers.h"

#include "admin/cmd_handlers.h"
#include "admin/metrics_handler.h"

#include "admin/api.h"
#include "admin/json.h"
#include "admin/openapi.h"
#include "core/registry.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/semver.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void h_health(void *ud, http_request *req, http_response *res) {
  (void)ud;
  (void)req;
  static const char body[] = "{\"status\":\"ok\"}";
  http_response_set(res, 200, "application/json", body, sizeof(body) - 1);
}

static void h_ready(void *ud, http_request *req, http_response *res) {
  (void)req;
  const admin_api *m = ud;
  const char *reason = NULL;
  int maintenance = admin_api_maintenance(m);
  if (admin_api_ready(m, &reason)) {
    /* Maintenance keeps the manager ready (agents stay, queries work); it is reported so a
     * deployment can tell why new commands get 503. */
    static const char body[] = "{\"status\":\"ready\",\"maintenance\":false}";
    static const char body_m[] = "{\"status\":\"ready\",\"maintenance\":true}";
    if (maintenance)
      http_response_set(res, 200, "application/json", body_m, sizeof(body_m) - 1);
    else
      http_response_set(res, 200, "application/json", body, sizeof(body) - 1);
    return;
  }
  cJSON *o = cJSON_CreateObject();
  if (o && (!cJSON_AddStringToObject(o, "status", "not_ready") ||
            !cJSON_AddStringToObject(o, "reason", reason ? reason : "not ready") ||
            !cJSON_AddBoolToObject(o, "maintenance", maintenance))) {
    cJSON_Delete(o);
    o = NULL;
  }
  admin_respond_json(res, 503, o);
  http_response_header(res, "Retry-After", ADMIN_READY_RETRY_AFTER);
}

/* Answers 400 naming the parameter; returns -1 for the caller to pass on. */
static int bad_param(http_response *res, const char *name, const char *why) {
  char msg[160];
  snprintf(msg, sizeof(msg), "invalid query parameter '%s': %s", name, why);
  http_response_error(res, 400, "invalid_parameter", msg);
  return -1;
}

/* Parses a non-negative integer of at most max; returns 0 or -1. */
static int parse_count(const char *s, long max, long *out) {
  if (*s < '0' || *s > '9')
    return -1;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < 0 || v > max)
    return -1;
  *out = v;
  return 0;
}

typedef struct agent_list {
  agent **v;
  size_t n, cap;
} agent_list;

static int collect(void *ud, agent *a) {
  agent_list *l = ud;
  if (l->n == l->cap)
    return 1; /* sized from the registry count: cannot happen, stop rather than overflow */
  l->v[l->n++] = a;
  return 0;
}

static int by_id(const void *x, const void *y) {
  const agent *a = *(agent *const *)x, *b = *(agent *const *)y;
  return strcmp(a->id, b->id);
}

/* Reads the /api/agents filters from the query into f (caps: room for HTTP_MAX_QUERY_PAIRS).
 * Returns 0, or -1 with res set to the 400 (or 500) to answer. */
static int parse_filter(http_request *req, http_response *res, agent_filter *fp, sm_kv *caps,
                        long *limit, long *offset) {
  agent_filter f = *fp;
  for (size_t i = 0; i < req->nqpairs; i++) {
    const char *k = req->qpairs[i].key, *v = req->qpairs[i].value;
    if (strcmp(k, "status") == 0) {
      /* Repeatable and comma-separated: any of the listed states. */
      char buf[128];
      snprintf(buf, sizeof(buf), "%s", v);
      char *save = NULL;
      int n = 0;
      for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save), n++) {
        enum agent_status st;
        if (agent_status_parse(t, &st))
          return bad_param(res, "status", "expected unknown, idle, busy, error or maintenance");
        f.status_mask |= 1u << st;
      }
      if (n == 0)
        return bad_param(res, "status", "empty");
    } else if (strcmp(k, "capability") == 0) {
      char *colon = strchr(v, ':');
      if (colon == NULL || colon == v)
        return bad_param(res, "capability", "expected key:value");
      char *key = http_arena_strndup(&req->arena, v, (size_t)(colon - v));
      if (key == NULL) {
        http_response_error(res, 500, "internal", "out of memory");
        return -1;
      }
      caps[f.ncaps].key = key;
      caps[f.ncaps].value = colon + 1;
      f.ncaps++;
    } else if (strcmp(k, "min_version") == 0) {
      sm_semver sv;
      if (sm_semver_parse(v, &sv))
        return bad_param(res, "min_version", "expected a semantic version like 1.2.3");
      f.min_version = v;
    } else if (strcmp(k, "max_load") == 0) {
      char *end;
      errno = 0;
      double d = strtod(v, &end);
      if (*v == '\0' || *end || errno || !(d >= 0 && d <= 1))
        return bad_param(res, "max_load", "expected a number between 0 and 1");
      f.max_load = d;
    } else if (strcmp(k, "limit") == 0) {
      if (parse_count(v, ADMIN_AGENTS_MAX_LIMIT, limit))
        return bad_param(res, "limit", "expected an integer between 0 and 1000");
    } else if (strcmp(k, "offset") == 0) {
      if (parse_count(v, 1000000000L, offset))
        return bad_param(res, "offset", "expected a non-negative integer");
    }
    /* Unknown keys are ignored, so clients may add cache-busters and the like. */
  }
  f.caps = f.ncaps ? caps : NULL;
  *fp = f;
  return 0;
}

static void h_agents(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  agent_filter f = {.max_load = -1};
  sm_kv caps[HTTP_MAX_QUERY_PAIRS];
  long limit = ADMIN_AGENTS_DEFAULT_LIMIT, offset = 0;
  if (parse_filter(req, res, &f, caps, &limit, &offset))
    return;

  agent_list l = {0};
  l.cap = m->registry ? agent_registry_count(m->registry) : 0;
  if (l.cap && (l.v = sm_malloc(l.cap * sizeof(*l.v))) == NULL) {
    http_response_error(res, 500, "internal", "out of memory");
    return;
  }
  if (m->registry)
    agent_registry_foreach(m->registry, &f, collect, &l);
  if (l.n > 1) /* (qsort of a NULL array is undefined even for 0 elements) */
    qsort(l.v, l.n, sizeof(*l.v), by_id);

  cJSON *o = cJSON_CreateObject();
  cJSON *arr = o ? cJSON_AddArrayToObject(o, "agents") : NULL;
  int bad = arr == NULL;
  const char *instance = m->instance;
  for (size_t i = (size_t)offset; !bad && i < l.n && i < (size_t)offset + (size_t)limit; i++) {
    cJSON *a = admin_agent_json(l.v[i], instance);
    if (a == NULL)
      bad = 1;
    else
      cJSON_AddItemToArray(arr, a);
  }
  if (!bad && !cJSON_AddNumberToObject(o, "total", (double)l.n))
    bad = 1;
  free(l.v);
  if (bad) {
    cJSON_Delete(o);
    o = NULL;
  }
  admin_respond_json(res, 200, o);
}

static void h_agent(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  const char *id = http_request_param(req, "id");
  agent *a = m->registry ? agent_registry_find(m->registry, id, strlen(id)) : NULL;
  if (a == NULL) {
    char msg[AGENT_ID_MAX + 32];
    snprintf(msg, sizeof(msg), "agent '%.*s' not found", AGENT_ID_MAX, id);
    http_response_error(res, 404, "not_found", msg);
    return;
  }
  admin_respond_json(res, 200, admin_agent_json(a, m->instance));
}

static void h_openapi(void *ud, http_request *req, http_response *res) {
  (void)ud;
  (void)req;
  http_response_set(res, 200, "application/json", admin_openapi_json, admin_openapi_json_len);
}

int admin_handlers_register(admin_router *r) {
  int err = 0;
  err = err ? err : admin_router_add(r, "GET", "/health", h_health, ADMIN_ROLE_PUBLIC);
  err = err ? err : admin_router_add(r, "GET", "/ready", h_ready, ADMIN_ROLE_PUBLIC);
  err = err ? err : admin_router_add(r, "GET", "/api/agents", h_agents, ADMIN_ROLE_VIEWER);
  err = err ? err : admin_router_add(r, "GET", "/api/agents/{id}", h_agent, ADMIN_ROLE_VIEWER);
  err = err ? err : admin_cmd_handlers_register(r);
  err = err ? err : admin_metrics_handler_register(r);
  err = err ? err : admin_router_add(r, "GET", "/api/openapi.json", h_openapi, ADMIN_ROLE_VIEWER);
  return err;
}
