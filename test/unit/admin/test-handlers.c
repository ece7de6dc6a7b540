/* Unit tests of src/admin/handlers.c and json.c: the routes run against a real registry with
 * fake agent links, requests built by the real parser, no sockets. */
#include "t.h"
#include "admin/handlers.h"
#include "http/http1.h"
#include "admin/api.h"
#include "admin/json.h"
#include "core/registry.h"
#include "util/err.h"
#include "util/log.h"
#include "fake-link.h"

#include <cjson/cJSON.h>
#include <uv.h>

static http_request *last_req;
static int grab(void *ud, http_request *req) {
  (void)ud;
  last_req = req;
  return 0;
}

/* Runs one GET through parser + router + handler; returns the parsed JSON body. */
static cJSON *call(admin_router *r, const char *target, int *status, http_response *res) {
  http1_parser *p = NULL;
  http1_config cfg = {.max_header_bytes = 4096, .max_body_bytes = 1024, .on_request = grab};
  T_EQ_INT(http1_create(&cfg, &p), 0);
  char in[1024];
  snprintf(in, sizeof(in), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", target);
  int st = 0;
  last_req = NULL;
  T_EQ_INT(http1_feed(p, in, strlen(in), &st), strlen(in));
  T_ASSERT(last_req != NULL);
  http_response_init(res);
  admin_router_dispatch(r, last_req, res);
  http_request_free(last_req);
  http1_destroy(p);
  *status = res->status;
  T_ASSERT(res->body != NULL);
  cJSON *j = cJSON_ParseWithLength(res->body, res->body_len);
  T_ASSERT(j != NULL);
  return j;
}

static const char *str(cJSON *o, const char *k) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num(cJSON *o, const char *k) {
  cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  T_ASSERT(cJSON_IsNumber(v));
  return v->valuedouble;
}

static uv_loop_t loop;
static agent_registry *reg;
static admin_api api;
static int draining; /* what the fake readiness reports */

static int fake_ready(void *ud, const char **reason) {
  (void)ud;
  if (draining) {
    *reason = "draining";
    return 0;
  }
  return 1;
}
static admin_router router;
static int links[8];

static void attach(const char *id, enum agent_status st, const char *version, const char *caps) {
  sm_kv meta[] = {{"hostname", "host-x"},
                  {"version", version},
                  {"capabilities", caps},
                  {"segment", "10.0.0.0/24"},
                  {"max_concurrent", "4"}};
  agent *a = NULL;
  static size_t k;
  T_EQ_INT(agent_registry_attach(reg, id, strlen(id), st, meta, 5, &fake_ops, &links[k++ % 8], &a),
           0);
}

static void setup(void) {
  T_EQ_INT(uv_loop_init(&loop), 0);
  agent_registry_config cfg = {300, 1000, "mgr-1"};
  T_EQ_INT(agent_registry_create(&loop, &cfg, &reg), 0);
  api.loop = &loop;
  api.instance = "mgr-1";
  api.registry = reg;
  api.ready = fake_ready;
  admin_router_init(&router, &api);
  T_EQ_INT(admin_handlers_register(&router), 0);
  attach("c-agent", AGENT_IDLE, "1.2.0", "os=linux,scan_type=nmap");
  attach("a-agent", AGENT_BUSY, "2.0.0", "os=linux");
  attach("b-agent", AGENT_IDLE, "0.9.1", "os=windows,scan_type=nmap");
}

static void test_health(void) {
  http_response res;
  int st;
  cJSON *j = call(&router, "/health", &st, &res);
  T_EQ_INT(st, 200);
  T_EQ_STR(str(j, "status"), "ok");
  T_EQ_STR(res.content_type, "application/json");
  cJSON_Delete(j);
  http_response_finish(&res);
}

static void test_agent_json(void) {
  agent *a = agent_registry_find(reg, "c-agent", 7);
  T_ASSERT(a != NULL);
  cJSON *j = admin_agent_json(a, "mgr-1");
  T_EQ_STR(str(j, "id"), "c-agent");
  T_EQ_STR(str(j, "hostname"), "host-x");
  T_EQ_STR(str(j, "version"), "1.2.0");
  T_EQ_STR(str(j, "status"), "idle");
  T_EQ_STR(str(j, "segment"), "10.0.0.0/24");
  T_EQ_STR(str(j, "instance"), "mgr-1");
  T_EQ_STR(str(j, "peer"), "127.0.0.1:1");
  T_EQ_STR(str(j, "protocol"), "fake");
  T_EQ_INT(num(j, "max_concurrent"), 4);
  T_EQ_INT(num(j, "active_commands"), 0);
  cJSON *caps = cJSON_GetObjectItemCaseSensitive(j, "capabilities");
  T_ASSERT(cJSON_IsObject(caps));
  T_EQ_STR(str(caps, "os"), "linux");
  T_EQ_STR(str(caps, "scan_type"), "nmap");
  const char *ts = str(j, "connected_at");
  T_ASSERT(ts != NULL && strlen(ts) == 24 && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z');
  T_ASSERT(str(j, "last_seen") != NULL);
  cJSON_Delete(j);
}

static void test_agents_list(void) {
  http_response res;
  int st;
  cJSON *j = call(&router, "/api/agents", &st, &res);
  T_EQ_INT(st, 200);
  T_EQ_INT(num(j, "total"), 3);
  cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "agents");
  T_EQ_INT(cJSON_GetArraySize(arr), 3);
  T_EQ_STR(str(cJSON_GetArrayItem(arr, 0), "id"), "a-agent"); /* sorted by id */
  T_EQ_STR(str(cJSON_GetArrayItem(arr, 1), "id"), "b-agent");
  T_EQ_STR(str(cJSON_GetArrayItem(arr, 2), "id"), "c-agent");
  cJSON_Delete(j);
  http_response_finish(&res);

  j = call(&router, "/api/agents?status=idle&limit=1&offset=1", &st, &res);
  T_EQ_INT(st, 200);
  T_EQ_INT(num(j, "total"), 2); /* before limit/offset */
  arr = cJSON_GetObjectItemCaseSensitive(j, "agents");
  T_EQ_INT(cJSON_GetArraySize(arr), 1);
  T_EQ_STR(str(cJSON_GetArrayItem(arr, 0), "id"), "c-agent");
  cJSON_Delete(j);
  http_response_finish(&res);

  j = call(&router, "/api/agents?capability=scan_type:nmap&capability=os%3Alinux", &st, &res);
  T_EQ_INT(num(j, "total"), 1);
  cJSON_Delete(j);
  http_response_finish(&res);

  j = call(&router, "/api/agents?min_version=1.0.0&max_load=0.5", &st, &res);
  T_EQ_INT(num(j, "total"), 2);
  cJSON_Delete(j);
  http_response_finish(&res);

  j = call(&router, "/api/agents?status=busy,idle&limit=0", &st, &res);
  T_EQ_INT(num(j, "total"), 3);
  T_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "agents")), 0);
  cJSON_Delete(j);
  http_response_finish(&res);
}

static void expect_400(const char *target, const char *param) {
  http_response res;
  int st;
  cJSON *j = call(&router, target, &st, &res);
  T_EQ_INT(st, 400);
  cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  T_EQ_STR(str(e, "code"), "invalid_parameter");
  T_ASSERT(strstr(str(e, "message"), param) != NULL);
  cJSON_Delete(j);
  http_response_finish(&res);
}

static void test_bad_filters(void) {
  expect_400("/api/agents?status=sleepy", "status");
  expect_400("/api/agents?capability=nocolon", "capability");
  expect_400("/api/agents?min_version=abc", "min_version");
  expect_400("/api/agents?max_load=2", "max_load");
  expect_400("/api/agents?max_load=x", "max_load");
  expect_400("/api/agents?limit=1001", "limit");
  expect_400("/api/agents?limit=-1", "limit");
  expect_400("/api/agents?offset=z", "offset");
}

static void test_agent_get(void) {
  http_response res;
  int st;
  cJSON *j = call(&router, "/api/agents/b-agent", &st, &res);
  T_EQ_INT(st, 200);
  T_EQ_STR(str(j, "id"), "b-agent");
  T_EQ_STR(str(j, "status"), "idle");
  cJSON_Delete(j);
  http_response_finish(&res);
  j = call(&router, "/api/agents/nobody", &st, &res);
  T_EQ_INT(st, 404);
  T_EQ_STR(str(cJSON_GetObjectItemCaseSensitive(j, "error"), "code"), "not_found");
  cJSON_Delete(j);
  http_response_finish(&res);
}

static void test_unknown_and_method(void) {
  http_response res;
  int st;
  cJSON *j = call(&router, "/nope", &st, &res);
  T_EQ_INT(st, 404);
  cJSON_Delete(j);
  http_response_finish(&res);
  /* 405 needs another method: build it by hand. */
  http_request *req = calloc(1, sizeof(*req));
  req->method = "POST";
  req->path = "/api/agents";
  req->query = "";
  http_response_init(&res);
  admin_router_dispatch(&router, req, &res);
  T_EQ_INT(res.status, 405);
  T_EQ_STR(res.headers[0].name, "Allow");
  T_EQ_STR(res.headers[0].value, "GET");
  http_response_finish(&res);
  http_request_free(req);
}

static void test_ready(void) {
  http_response res;
  int st;
  draining = 1;
  cJSON *j = call(&router, "/ready", &st, &res);
  T_EQ_INT(st, 503);
  T_EQ_STR(str(j, "status"), "not_ready");
  T_ASSERT(str(j, "reason") != NULL);
  T_EQ_STR(res.headers[0].name, "Retry-After");
  cJSON_Delete(j);
  http_response_finish(&res);
  draining = 0;
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  setup();
  T_RUN(test_health);
  T_RUN(test_agent_json);
  T_RUN(test_agents_list);
  T_RUN(test_bad_filters);
  T_RUN(test_agent_get);
  T_RUN(test_unknown_and_method);
  T_RUN(test_ready);
  agent_registry_destroy(reg);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
