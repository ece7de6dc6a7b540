/* Unit tests of src/admin/cmd_handlers.c: the command and administration routes through the
 * router, with a fake admin_api (readiness, maintenance, shutdown, dependency state) over a real
 * lifecycle on the in-process store; requests built by the real parser, no sockets. Deferred
 * answers are awaited on the loop. Allocation failure is injected into POST /api/commands at
 * every allocation in turn: the response is given exactly once each time, nothing leaks (run
 * under ASan), and the route still works afterwards. */
#include "admin/api.h"
#include "admin/handlers.h"
#include "core/lifecycle.h"
#include "core/registry.h"
#include "http/http1.h"
#include "store/store.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <cjson/cJSON.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t loop;
static store *st;
static agent_registry *reg;
static lifecycle *lc;
static admin_api api;
static admin_router router;

/* the fake program behind the api */
static int maintenance;
static int maintenance_sets;
static int shutdowns;
static char shutdown_why[32];

static int f_maintenance(void *ud) {
  (void)ud;
  return maintenance;
}
static void f_set_maintenance(void *ud, int on) {
  (void)ud;
  maintenance = on;
  maintenance_sets++;
  lifecycle_set_maintenance(lc, on);
}
static void f_shutdown(void *ud, const char *why) {
  (void)ud;
  shutdowns++;
  snprintf(shutdown_why, sizeof(shutdown_why), "%s", why);
}
static void f_deps(void *ud, admin_deps *out) {
  (void)ud;
  out->store_backend = store_name(st);
  out->store_up = store_is_up(st);
  out->mq_configured = 1;
  out->mq_up = 0;
}

/* ---- requests ---- */

static http_request *last_req;
static int grab(void *ud, http_request *req) {
  (void)ud;
  last_req = req;
  return 0;
}

static http_request *make_req(const char *method, const char *target, const char *ctype,
                              const char *body) {
  http1_parser *p = NULL;
  http1_config cfg = {.max_header_bytes = 8192, .max_body_bytes = 65536, .on_request = grab};
  T_EQ_INT(http1_create(&cfg, &p), 0);
  char in[8192];
  size_t blen = body ? strlen(body) : 0;
  int n =
      snprintf(in, sizeof(in), "%s %s HTTP/1.1\r\nHost: t\r\n%s%s%sContent-Length: %zu\r\n\r\n%s",
               method, target, ctype ? "Content-Type: " : "", ctype ? ctype : "",
               ctype ? "\r\n" : "", blen, body ? body : "");
  int status = 0;
  last_req = NULL;
  T_EQ_INT(http1_feed(p, in, (size_t)n, &status), n);
  T_ASSERT(last_req != NULL);
  http1_destroy(p);
  return last_req;
}

static int ready_calls;
static void on_ready(void *ud, http_deferred *d) {
  (void)ud, (void)d;
  ready_calls++;
}

/* Runs one request; a deferred answer is awaited on the loop. Returns the status, the body in
 * *json (parsed; NULL when none). Asserts the answer came exactly once. */
static int run_req(admin_router *r, const char *method, const char *target, const char *ctype,
                   const char *body, cJSON **json) {
  http_request *req = make_req(method, target, ctype, body);
  http_response res;
  http_response_init(&res);
  admin_router_dispatch(r, req, &res);
  http_request_free(req);
  int status;
  if (res.deferred) {
    http_deferred *d = res.deferred;
    res.deferred = NULL;
    ready_calls = 0;
    int done_before = http_deferred_response(d) != NULL;
    if (!done_before)
      http_deferred_watch(d, on_ready, NULL);
    int64_t end = sm_now_ms() + 3000;
    while (http_deferred_response(d) == NULL && sm_now_ms() < end)
      uv_run(&loop, UV_RUN_NOWAIT);
    T_ASSERT(http_deferred_response(d) != NULL);
    T_EQ_INT(ready_calls, done_before ? 0 : 1);
    http_response *got = http_deferred_response(d);
    status = got->status;
    *json = got->body ? cJSON_ParseWithLength(got->body, got->body_len) : NULL;
    http_deferred_release(d);
  } else {
    status = res.status;
    *json = res.body ? cJSON_ParseWithLength(res.body, res.body_len) : NULL;
  }
  http_response_finish(&res);
  return status;
}

static const char *str(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *err_code(const cJSON *o) {
  return str(cJSON_GetObjectItemCaseSensitive(o, "error"), "code");
}

/* ---- tests ---- */

static void test_submit_get_cancel_list(void) {
  cJSON *j = NULL;
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "application/json",
                   "{\"type\":\"echo\",\"params\":{\"x\":\"1\"}}", &j),
           202);
  T_EQ_STR(str(j, "status"), "queued");
  char id[128];
  snprintf(id, sizeof(id), "%s", str(j, "id"));
  cJSON_Delete(j);

  char path[200];
  snprintf(path, sizeof(path), "/api/commands/%s", id);
  T_EQ_INT(run_req(&router, "GET", path, NULL, NULL, &j), 200);
  T_EQ_STR(str(j, "id"), id);
  T_EQ_STR(str(j, "type"), "echo");
  cJSON_Delete(j);

  T_EQ_INT(run_req(&router, "GET", "/api/commands/no-such-id", NULL, NULL, &j), 404);
  T_EQ_STR(err_code(j), "not_found");
  cJSON_Delete(j);

  T_EQ_INT(run_req(&router, "GET", "/api/commands?status=queued,cancelled", NULL, NULL, &j), 200);
  cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "commands");
  T_ASSERT(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) >= 1);
  cJSON_Delete(j);

  snprintf(path, sizeof(path), "/api/commands/%s/cancel", id);
  T_EQ_INT(run_req(&router, "PUT", path, NULL, NULL, &j), 200);
  T_EQ_STR(str(j, "status"), "cancelled");
  cJSON_Delete(j);
  T_EQ_INT(run_req(&router, "PUT", path, NULL, NULL, &j), 409);
  T_EQ_STR(err_code(j), "conflict");
  cJSON_Delete(j);

  T_EQ_INT(run_req(&router, "GET", "/api/commands?limit=0", NULL, NULL, &j), 400);
  cJSON_Delete(j);
}

static void test_submit_refusals(void) {
  cJSON *j = NULL;
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "text/plain", "{}", &j), 415);
  cJSON_Delete(j);
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "application/json", "{", &j), 400);
  cJSON_Delete(j);
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "application/json", "[]", &j), 400);
  cJSON_Delete(j);
  /* one bad element: nothing stored, 400 naming it */
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "application/json",
                   "[{\"type\":\"echo\"},{\"type\":5}]", &j),
           400);
  T_ASSERT(strstr(cJSON_GetObjectItemCaseSensitive(j, "error")->child->next->valuestring,
                  "element 1") != NULL);
  cJSON_Delete(j);
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "application/json",
                   "[{\"type\":\"echo\"},{\"type\":\"scan\"}]", &j),
           202);
  T_ASSERT(cJSON_IsArray(j) && cJSON_GetArraySize(j) == 2);
  cJSON_Delete(j);
}

static void test_maintenance(void) {
  cJSON *j = NULL;
  T_EQ_INT(run_req(&router, "POST", "/api/admin/maintenance", "application/json", "{}", &j), 400);
  cJSON_Delete(j);
  T_EQ_INT(run_req(&router, "POST", "/api/admin/maintenance", "application/json",
                   "{\"enabled\":true}", &j),
           200);
  T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "maintenance")));
  cJSON_Delete(j);
  T_EQ_INT(maintenance, 1);
  T_EQ_INT(maintenance_sets, 1);
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "application/json", "{\"type\":\"echo\"}", &j),
           503);
  T_EQ_STR(err_code(j), "maintenance");
  cJSON_Delete(j);
  T_EQ_INT(run_req(&router, "GET", "/api/status", NULL, NULL, &j), 200);
  T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "maintenance")));
  cJSON_Delete(j);
  T_EQ_INT(run_req(&router, "POST", "/api/admin/maintenance", "application/json",
                   "{\"enabled\":false}", &j),
           200);
  cJSON_Delete(j);
  T_EQ_INT(maintenance, 0);
}

static void test_status(void) {
  cJSON *j = NULL;
  T_EQ_INT(run_req(&router, "GET", "/api/status", NULL, NULL, &j), 200);
  T_EQ_STR(str(j, "instance"), "mgr-t");
  T_EQ_STR(str(j, "env"), "test");
  T_ASSERT(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "draining")));
  cJSON *sto = cJSON_GetObjectItemCaseSensitive(j, "store");
  T_EQ_STR(str(sto, "backend"), store_name(st));
  T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sto, "up")));
  cJSON *mq = cJSON_GetObjectItemCaseSensitive(j, "rabbitmq");
  T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(mq, "configured")));
  T_ASSERT(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(mq, "up")));
  cJSON *cm = cJSON_GetObjectItemCaseSensitive(j, "commands");
  T_ASSERT(cJSON_GetObjectItemCaseSensitive(cm, "received")->valuedouble >= 3);
  T_ASSERT(cJSON_GetObjectItemCaseSensitive(j, "agents") != NULL);
  cJSON_Delete(j);
}

static void test_shutdown(void) {
  cJSON *j = NULL;
  T_EQ_INT(run_req(&router, "POST", "/api/admin/shutdown", NULL, NULL, &j), 202);
  T_EQ_STR(str(j, "status"), "shutting_down");
  cJSON_Delete(j);
  T_EQ_INT(shutdowns, 0); /* on the next loop turn: the 202 goes out first */
  for (int i = 0; i < 5 && shutdowns == 0; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  T_EQ_INT(shutdowns, 1);
  T_EQ_STR(shutdown_why, "api");
}

/* Without a lifecycle the command routes answer 503; status still works. */
static void test_no_lifecycle(void) {
  admin_api a2 = api;
  a2.lifecycle = NULL;
  admin_router r2;
  admin_router_init(&r2, &a2);
  T_EQ_INT(admin_handlers_register(&r2), 0);
  cJSON *j = NULL;
  T_EQ_INT(run_req(&r2, "POST", "/api/commands", "application/json", "{\"type\":\"echo\"}", &j),
           503);
  cJSON_Delete(j);
  T_EQ_INT(run_req(&r2, "GET", "/api/commands/x", NULL, NULL, &j), 503);
  cJSON_Delete(j);
  T_EQ_INT(run_req(&r2, "GET", "/api/commands", NULL, NULL, &j), 503);
  cJSON_Delete(j);
  T_EQ_INT(run_req(&r2, "GET", "/api/status", NULL, NULL, &j), 200);
  cJSON_Delete(j);
}

/* Allocation nth of POST /api/commands fails, for nth = 0, 1, 2, ... until none is left to
 * fail: in the handler (phase 0) or in the callbacks that complete the deferred answer (phase 1).
 * Every time the response comes exactly once (run_req's checks; a second completion would be a
 * use after free under ASan), nothing leaks, and the last round, with nothing failed, is a 202.
 * Returns the rounds. */
static long submit_with_failure(const char *body, int phase) {
  for (long nth = 0;; nth++) {
    T_ASSERT(nth < 5000);
    http_request *req = make_req("POST", "/api/commands", "application/json", body);
    http_response res;
    http_response_init(&res);
    unsigned long f0 = sm_alloc_failures();
    if (phase == 0)
      sm_alloc_fail_at(nth, 0);
    admin_router_dispatch(&router, req, &res);
    sm_alloc_fail_at(-1, 0);
    http_request_free(req);
    int status;
    if (res.deferred) {
      http_deferred *d = res.deferred;
      res.deferred = NULL;
      ready_calls = 0;
      int done_before = http_deferred_response(d) != NULL;
      if (!done_before)
        http_deferred_watch(d, on_ready, NULL);
      if (phase == 1)
        sm_alloc_fail_at(nth, 0);
      int64_t end = sm_now_ms() + 3000;
      while (http_deferred_response(d) == NULL && sm_now_ms() < end)
        uv_run(&loop, UV_RUN_NOWAIT);
      sm_alloc_fail_at(-1, 0);
      T_ASSERT(http_deferred_response(d) != NULL);
      T_EQ_INT(ready_calls, done_before ? 0 : 1);
      status = http_deferred_response(d)->status;
      http_deferred_release(d);
    } else {
      status = res.status;
    }
    http_response_finish(&res);
    if (sm_alloc_failures() == f0) {
      T_EQ_INT(status, 202);
      return nth + 1;
    }
    T_ASSERT(status == 202 || status == 500 || status == 503);
  }
}

static void test_submit_alloc_failure(void) {
  const char *one = "{\"type\":\"echo\"}";
  const char *three = "[{\"type\":\"echo\"},{\"type\":\"scan\"},{\"type\":\"echo\"}]";
  for (int phase = 0; phase < 2; phase++) {
    T_ASSERT(submit_with_failure(one, phase) > 1);
    T_ASSERT(submit_with_failure(three, phase) > 1);
  }
  /* still works */
  cJSON *j = NULL;
  T_EQ_INT(run_req(&router, "POST", "/api/commands", "application/json", "{\"type\":\"echo\"}", &j),
           202);
  cJSON_Delete(j);
}

static void closed_cb(void *ud) {
  (*(int *)ud)++;
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_EQ_INT(uv_loop_init(&loop), 0);
  T_EQ_INT(store_mem_create(&loop, NULL, &st), 0);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 100, .instance = "mgr-t"};
  T_EQ_INT(agent_registry_create(&loop, &rc, &reg), 0);
  lifecycle_config cfg = {.queue_size = 1000,
                          .max_agent_load = 0.8,
                          .command_timeout_s = 300,
                          .timeout_grace_s = 1,
                          .max_retries = 3,
                          .reconnect_grace_s = 1,
                          .instance = "mgr-t"};
  T_EQ_INT(lifecycle_create(&loop, &cfg, reg, st, NULL, NULL, &lc), 0);
  T_EQ_INT(lifecycle_start(lc), 0);
  for (int i = 0; i < 20; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  api = (admin_api){.loop = &loop,
                    .registry = reg,
                    .lifecycle = lc,
                    .instance = "mgr-t",
                    .env = "test",
                    .command_queue_size = 1000,
                    .started_at_ms = sm_now_ms(),
                    .maintenance = f_maintenance,
                    .set_maintenance = f_set_maintenance,
                    .shutdown = f_shutdown,
                    .deps = f_deps};
  admin_router_init(&router, &api);
  T_EQ_INT(admin_handlers_register(&router), 0);

  T_RUN(test_submit_get_cancel_list);
  T_RUN(test_submit_refusals);
  T_RUN(test_maintenance);
  T_RUN(test_status);
  T_RUN(test_shutdown);
  T_RUN(test_no_lifecycle);
  T_RUN(test_submit_alloc_failure);

  int closed = 0;
  lifecycle_close(lc, closed_cb, &closed);
  store_close(st, closed_cb, &closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  agent_registry_destroy(reg);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 2);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
