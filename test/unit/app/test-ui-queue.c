/* Unit tests of src/app/ui_queue.c: parsing and validating SiriusScan UI messages, the command
 * they become, the replies, the cmd:response JSON and keys, connected_agents, the key writes
 * driven by the lifecycle and registry hooks (in-process store), closing with writes in flight,
 * and allocation failure in parsing and reply building. */
#include "app/ui_queue.h"
#include "core/registry.h"
#include "mq/amqp.h"
#include "store/store.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "fake-link.h"

#include <cjson/cJSON.h>
#include <string.h>
#include <uv.h>

static uv_loop_t loop;

static int parse(const char *body, ui_msg *m, char *why) {
  return ui_msg_parse(body, strlen(body), m, why, 256);
}

static void expect_error(const char *body, size_t len, const char *why_part) {
  ui_msg m;
  char why[256] = "";
  int err = ui_msg_parse(body, len, &m, why, sizeof(why));
  T_ASSERT(err == SM_EINVAL || err == SM_EPARSE);
  if (strstr(why, why_part) == NULL)
    fprintf(stderr, "why: %s (want %s)\n", why, why_part);
  T_ASSERT(strstr(why, why_part) != NULL);
  T_ASSERT(m.command == NULL && m.agent_id == NULL && m.user_id == NULL);
}

static void test_parse_command(void) {
  ui_msg m;
  char why[256];
  T_EQ_INT(parse("{\"command\":\"ls -la\",\"agentId\":\"old\",\"userId\":\"u1\","
                 "\"timestamp\":\"2026-12-02T10:00:00Z\","
                 "\"target\":{\"type\":\"agent\",\"id\":\"a1\"}}",
                 &m, why),
           0);
  T_EQ_INT(m.kind, UI_MSG_COMMAND);
  T_EQ_STR(m.command, "ls -la");
  T_EQ_STR(m.agent_id, "a1"); /* target.id wins over agentId */
  T_EQ_STR(m.user_id, "u1");
  T_EQ_INT(m.all, 0);
  ui_msg_clear(&m);
  /* no target: agentId names the agent */
  T_EQ_INT(parse("{\"command\":\"id\",\"agentId\":\"a2\"}", &m, why), 0);
  T_EQ_STR(m.agent_id, "a2");
  ui_msg_clear(&m);
  /* target all */
  T_EQ_INT(parse("{\"command\":\"id\",\"target\":{\"type\":\"all\",\"id\":\"\"}}", &m, why), 0);
  T_EQ_INT(m.all, 1);
  T_ASSERT(m.agent_id == NULL);
  ui_msg_clear(&m);
  /* target null is no target */
  T_EQ_INT(parse("{\"command\":\"id\",\"agentId\":\"a3\",\"target\":null}", &m, why), 0);
  T_EQ_STR(m.agent_id, "a3");
  ui_msg_clear(&m);
}

static void test_parse_actions(void) {
  ui_msg m;
  char why[256];
  T_EQ_INT(parse("{\"action\":\"list_agents\",\"userId\":\"u\"}", &m, why), 0);
  T_EQ_INT(m.kind, UI_MSG_LIST_AGENTS);
  ui_msg_clear(&m);
  /* an action wins over a command */
  T_EQ_INT(parse("{\"action\":\"list_agents\",\"command\":\"rm -rf /\"}", &m, why), 0);
  T_EQ_INT(m.kind, UI_MSG_LIST_AGENTS);
  T_ASSERT(m.command == NULL);
  ui_msg_clear(&m);
  T_EQ_INT(
      parse("{\"action\":\"initialize_session\",\"agentId\":\"a1\",\"sessionId\":\"s\"}", &m, why),
      0);
  T_EQ_INT(m.kind, UI_MSG_INIT_SESSION);
  T_EQ_STR(m.agent_id, "a1");
  ui_msg_clear(&m);
}

static void test_parse_errors(void) {
  expect_error("{not json", strlen("{not json"), "malformed JSON");
  expect_error("", strlen(""), "malformed JSON");
  expect_error("\xff\xfe{}", strlen("\xff\xfe{}"), "invalid UTF-8");
  expect_error("{\"command\":\"a\0b\"}", 15, "invalid UTF-8"); /* a raw NUL */
  expect_error("[1,2]", strlen("[1,2]"), "not a JSON object");
  expect_error("\"list_agents\"", strlen("\"list_agents\""), "not a JSON object");
  expect_error("{\"action\":\"reboot\"}", strlen("{\"action\":\"reboot\"}"),
               "Unknown action \"reboot\"");
  expect_error("{\"action\":\"initialize_session\"}", strlen("{\"action\":\"initialize_session\"}"),
               "agentId is required");
  expect_error("{\"userId\":\"u\"}", strlen("{\"userId\":\"u\"}"), "Unknown or empty command");
  expect_error("{\"command\":\"\"}", strlen("{\"command\":\"\"}"), "Unknown or empty command");
  expect_error("{\"command\":5}", strlen("{\"command\":5}"), "must be strings");
  expect_error("{\"command\":\"x\",\"agentId\":[]}", strlen("{\"command\":\"x\",\"agentId\":[]}"),
               "must be strings");
  expect_error("{\"command\":\"x\"}", strlen("{\"command\":\"x\"}"), "no agent id");
  expect_error("{\"command\":\"x\",\"target\":{\"type\":\"agent\"}}",
               strlen("{\"command\":\"x\",\"target\":{\"type\":\"agent\"}}"), "no agent id");
  expect_error("{\"command\":\"x\",\"target\":{\"type\":\"planet\",\"id\":\"a\"}}",
               strlen("{\"command\":\"x\",\"target\":{\"type\":\"planet\",\"id\":\"a\"}}"),
               "Invalid target type \"planet\"");
  expect_error("{\"command\":\"x\",\"target\":\"a1\"}",
               strlen("{\"command\":\"x\",\"target\":\"a1\"}"), "Invalid target");
  expect_error("{\"command\":\"x\",\"target\":{\"type\":1}}",
               strlen("{\"command\":\"x\",\"target\":{\"type\":1}}"), "Invalid target");
  ui_msg m;
  char why[256];
  T_EQ_INT(ui_msg_parse(NULL, 0, &m, why, sizeof(why)), SM_EINVAL);
}

static const char *param_of(const sm_command *c, const char *k) {
  for (size_t i = 0; i < c->nparams; i++)
    if (strcmp(c->params[i].key, k) == 0)
      return c->params[i].value;
  return NULL;
}

static void test_to_command(void) {
  ui_msg m;
  char why[256];
  sm_command *c = NULL;
  T_EQ_INT(
      parse("{\"command\":\"uname -a\",\"target\":{\"type\":\"agent\",\"id\":\"a1\"}}", &m, why),
      0);
  char idem[68], idem2[68];
  const char *body = "same body";
  T_EQ_INT(ui_idem_key(body, strlen(body), idem), 0);
  T_EQ_INT(ui_idem_key(body, strlen(body), idem2), 0);
  T_EQ_STR(idem, idem2); /* a redelivery is the same command */
  T_EQ_INT(strlen(idem), 67);
  T_ASSERT(strncmp(idem, "ui:", 3) == 0);
  T_EQ_INT(ui_idem_key("other", 5, idem2), 0);
  T_ASSERT(strcmp(idem, idem2) != 0);
  T_EQ_INT(ui_msg_to_command(&m, idem, &c, why, sizeof(why)), 0);
  T_EQ_STR(c->type, "exec");
  T_EQ_STR(param_of(c, "command"), "uname -a");
  T_EQ_STR(c->target_agent, "a1");
  T_EQ_INT(c->broadcast, 0);
  T_EQ_INT(c->source, COMMAND_SRC_AMQP);
  T_EQ_STR(c->idempotency_key, idem);
  T_ASSERT(c->reply_to == NULL); /* the UI gets one reply, from the UI queue, not a result */
  command_free(c);
  ui_msg_clear(&m);

  T_EQ_INT(parse("{\"command\":\"id\",\"target\":{\"type\":\"all\"}}", &m, why), 0);
  T_EQ_INT(ui_msg_to_command(&m, NULL, &c, why, sizeof(why)), 0);
  T_EQ_INT(c->broadcast, 1);
  T_ASSERT(c->target_agent == NULL && c->idempotency_key == NULL);
  command_free(c);
  ui_msg_clear(&m);

  /* the command model's limits apply: a command line beyond COMMAND_MAX_VALUE is refused */
  size_t n = COMMAND_MAX_VALUE + 10;
  char *big = malloc(n + 64);
  int k = snprintf(big, 64, "{\"agentId\":\"a\",\"command\":\"");
  memset(big + k, 'x', n);
  strcpy(big + k + n, "\"}");
  T_EQ_INT(ui_msg_parse(big, strlen(big), &m, why, sizeof(why)), 0);
  int err = ui_msg_to_command(&m, NULL, &c, why, sizeof(why));
  T_ASSERT(err == SM_EINVAL || err == SM_ETOOBIG);
  T_ASSERT(c == NULL);
  T_ASSERT(strstr(why, "params") != NULL);
  ui_msg_clear(&m);
  free(big);
}

/* len is read after the call that set it (arguments are evaluated in no set order). */
static cJSON *parse_reply(char *s, const size_t *len) {
  T_ASSERT(s != NULL);
  T_EQ_INT(strlen(s), *len);
  cJSON *j = cJSON_Parse(s);
  free(s);
  T_ASSERT(j != NULL);
  return j;
}

static void test_replies(void) {
  size_t len = 0;
  cJSON *j = parse_reply(ui_reply_error("Agent x not connected", &len), &len);
  T_ASSERT(cJSON_IsFalse(cJSON_GetObjectItem(j, "success")));
  T_EQ_STR(cJSON_GetObjectItem(j, "error")->valuestring, "Agent x not connected");
  cJSON_Delete(j);
  j = parse_reply(ui_reply_command("c-1", "a1", 0, &len), &len);
  T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "success")));
  T_EQ_STR(cJSON_GetObjectItem(j, "command_id")->valuestring, "c-1");
  T_EQ_STR(cJSON_GetObjectItem(j, "agent_id")->valuestring, "a1");
  T_EQ_STR(cJSON_GetObjectItem(j, "target")->valuestring, "agent");
  T_ASSERT(cJSON_GetObjectItem(j, "error") == NULL);
  cJSON_Delete(j);
  j = parse_reply(ui_reply_command("c-2", NULL, 1, &len), &len);
  T_EQ_STR(cJSON_GetObjectItem(j, "target")->valuestring, "all");
  cJSON_Delete(j);
  cJSON *arr = cJSON_CreateArray();
  cJSON_AddItemToArray(arr, cJSON_CreateString("x"));
  j = parse_reply(ui_reply_agents(arr, &len), &len);
  T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "success")));
  T_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "agents")), 1);
  T_EQ_INT(cJSON_GetObjectItem(j, "count")->valueint, 1);
  cJSON_Delete(j);
  T_ASSERT(ui_reply_agents(NULL, &len) == NULL);
  j = parse_reply(ui_reply_ok("fine", &len), &len);
  T_EQ_STR(cJSON_GetObjectItem(j, "message")->valuestring, "fine");
  cJSON_Delete(j);
}

static sm_command *exec_cmd(const char *id, const char *agent_id, const char *line) {
  sm_command *c = command_new();
  T_ASSERT(c != NULL);
  T_EQ_INT(command_set_str(&c->id, id), 0);
  T_EQ_INT(command_set_str(&c->type, "exec"), 0);
  T_EQ_INT(command_set_str(&c->target_agent, agent_id), 0);
  c->params = calloc(1, sizeof(sm_kv));
  c->params[0].key = strdup("command");
  c->params[0].value = strdup(line);
  c->nparams = 1;
  c->created_at = 1764669600000; /* 2025-12-02T10:00:00Z */
  return c;
}

static cJSON *response_of(const sm_command *c, const char *status) {
  size_t len = 0;
  return parse_reply(ui_response_json(c, status, &len), &len);
}

static void test_response_json(void) {
  sm_command *c = exec_cmd("c-1", "a1", "echo hi");
  cJSON *j = response_of(c, NULL);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "pending");
  T_EQ_STR(cJSON_GetObjectItem(j, "command_id")->valuestring, "c-1");
  T_EQ_STR(cJSON_GetObjectItem(j, "agent_id")->valuestring, "a1");
  T_EQ_STR(cJSON_GetObjectItem(j, "command")->valuestring, "echo hi");
  T_EQ_STR(cJSON_GetObjectItem(j, "output")->valuestring, "");
  T_EQ_STR(cJSON_GetObjectItem(j, "error")->valuestring, "");
  T_EQ_INT(cJSON_GetObjectItem(j, "exit_code")->valueint, 0);
  T_EQ_STR(cJSON_GetObjectItem(j, "start_time")->valuestring, "2025-12-02T10:00:00.000Z");
  T_ASSERT(cJSON_IsNull(cJSON_GetObjectItem(j, "end_time")));
  cJSON_Delete(j);
  c->status = COMMAND_DISPATCHED;
  T_EQ_STR(ui_response_status(c), "pending");
  c->status = COMMAND_RUNNING;
  T_EQ_STR(ui_response_status(c), "running");
  /* completed: output from stdout, exit code from the data */
  c->status = COMMAND_COMPLETED;
  c->started_at = 1764669601000;
  c->completed_at = 1764669602500;
  sm_kv data[] = {{"stdout", "hi\n"}, {"exit_code", "0"}};
  T_EQ_INT(command_set_result(c, "completed", data, 2, NULL, c->completed_at), 0);
  j = response_of(c, NULL);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "completed");
  T_EQ_STR(cJSON_GetObjectItem(j, "output")->valuestring, "hi\n");
  T_EQ_STR(cJSON_GetObjectItem(j, "start_time")->valuestring, "2025-12-02T10:00:01.000Z");
  T_EQ_STR(cJSON_GetObjectItem(j, "end_time")->valuestring, "2025-12-02T10:00:02.500Z");
  cJSON_Delete(j);
  /* failed with the agent's exit code and error; `output` wins over `stdout` */
  c->status = COMMAND_FAILED;
  sm_kv data2[] = {{"stdout", "no"}, {"output", "yes"}, {"exit_code", "3"}};
  T_EQ_INT(command_set_result(c, "failed", data2, 3, "exited 3", c->completed_at), 0);
  j = response_of(c, NULL);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "failed");
  T_EQ_STR(cJSON_GetObjectItem(j, "output")->valuestring, "yes");
  T_EQ_STR(cJSON_GetObjectItem(j, "error")->valuestring, "exited 3");
  T_EQ_INT(cJSON_GetObjectItem(j, "exit_code")->valueint, 3);
  cJSON_Delete(j);
  /* timed out without a result: failed, exit code 1, the status as the error */
  command_result_clear(&c->result);
  c->status = COMMAND_TIMED_OUT;
  j = response_of(c, NULL);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "failed");
  T_EQ_STR(cJSON_GetObjectItem(j, "error")->valuestring, "timed_out");
  T_EQ_INT(cJSON_GetObjectItem(j, "exit_code")->valueint, 1);
  cJSON_Delete(j);
  /* an explicit status (running) is not final: no end_time */
  j = response_of(c, "running");
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "running");
  T_ASSERT(cJSON_IsNull(cJSON_GetObjectItem(j, "end_time")));
  cJSON_Delete(j);
  /* keys */
  char key[64];
  T_EQ_INT(ui_response_key("a1", "c-1", key, sizeof(key)), 0);
  T_EQ_STR(key, "cmd:response:a1:c-1");
  T_EQ_INT(ui_response_key("a1", "c-1", key, 19), SM_ETOOBIG);
  command_free(c);
}

static void test_agents_json(void) {
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 10, .instance = "me"};
  agent_registry *r = NULL;
  T_EQ_INT(agent_registry_create(&loop, &rc, &r), 0);
  agent *a = NULL;
  sm_kv meta[] = {{"hostname", "h"}};
  int link;
  T_EQ_INT(agent_registry_attach(r, "local-1", 7, AGENT_IDLE, meta, 1, &fake_ops, &link, &a), 0);
  store_agent_rec recs[] = {
      {.id = "other-1", .instance = "mgr-b", .data = "{}"},
      {.id = "local-1", .instance = "mgr-b", .data = "{}"}, /* moved here: listed once */
      {.id = "gone-1", .instance = "me", .data = "{}"},     /* ours but left: not listed */
      {.id = "other-1", .instance = "mgr-c", .data = "{}"}, /* twice in the store: once */
  };
  size_t len = 0;
  char *v = ui_agents_json(r, "me", recs, 4, &len);
  T_EQ_STR(v, "[\"local-1\",\"other-1\"]");
  T_EQ_INT(strlen(v), len);
  free(v);
  v = ui_agents_json(r, "me", NULL, 0, &len);
  T_EQ_STR(v, "[\"local-1\"]");
  free(v);
  v = ui_agents_json(NULL, NULL, NULL, 0, &len);
  T_EQ_STR(v, "[]");
  free(v);
  agent_registry_detach(r, a, &link, SM_ECLOSED);
  agent_registry_destroy(r);
  uv_run(&loop, UV_RUN_NOWAIT);
}

/* Allocation failure anywhere in parsing or building: an error or NULL, never a crash or leak. */
static void test_alloc_failure(void) {
  const char *body = "{\"command\":\"ls\",\"userId\":\"u\",\"target\":{\"type\":\"agent\","
                     "\"id\":\"a1\"}}";
  int ok = 0;
  for (long nth = 0; nth < 1000 && !ok; nth++) {
    ui_msg m;
    char why[256];
    sm_command *c = NULL;
    sm_alloc_fail_at(nth, 0);
    int err = ui_msg_parse(body, strlen(body), &m, why, sizeof(why));
    if (err == 0) {
      err = ui_msg_to_command(&m, "ui:k", &c, why, sizeof(why));
      ui_msg_clear(&m);
    }
    char *r = err ? NULL : ui_reply_command(c->id ? c->id : "x", "a1", 0, NULL);
    char *e = err ? NULL : ui_response_json(c, NULL, NULL);
    sm_alloc_fail_at(-1, 0);
    T_ASSERT(err == 0 || err == SM_ENOMEM);
    ok = err == 0 && r != NULL && e != NULL;
    free(r);
    free(e);
    command_free(c);
  }
  T_ASSERT(ok);
}

/* ---- the key writer, driven by the hooks, on the in-process store ---- */

static store *st;
static agent_registry *reg;
static int links[4];

typedef struct got {
  int done, err;
  char value[4096];
} got;

static void on_value(void *ud, int err, const char *v, size_t len) {
  got *g = ud;
  g->done++;
  g->err = err;
  if (v)
    snprintf(g->value, sizeof(g->value), "%.*s", (int)len, v);
}

static void put_done(void *ud, int err) {
  got *g = ud;
  g->done++;
  g->err = err;
}

static void run_a_bit(void) {
  for (int i = 0; i < 5; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
}

static int kv(const char *key, cJSON **out) {
  got g = {0};
  T_EQ_INT(store_kv_get(st, key, on_value, &g), 0);
  while (!g.done)
    uv_run(&loop, UV_RUN_ONCE);
  if (out)
    *out = g.err ? NULL : cJSON_Parse(g.value);
  return g.err;
}

static void test_keys(void) {
  mq_conn *conn = NULL;
  mq_conn_opts mo = {.url = "amqp://guest:guest@127.0.0.1:1/",
                     .aux_queue = "agent_commands",
                     .aux_reply_queue = "agent_response"};
  T_EQ_INT(mq_conn_create(&loop, &mo, &conn), 0); /* never started: no broker needed */
  int fake_lc;
  ui_queue *u = NULL;
  T_EQ_INT(ui_queue_create(&loop, conn, (lifecycle *)&fake_lc, reg, st, "", "i", &u), SM_EINVAL);
  T_EQ_INT(ui_queue_create(&loop, conn, (lifecycle *)&fake_lc, reg, st, "agent_response", "i", &u),
           0);
  /* connected_agents: written at start */
  agent *a = NULL;
  sm_kv meta[] = {{"hostname", "h"}};
  T_EQ_INT(agent_registry_attach(reg, "a1", 2, AGENT_IDLE, meta, 1, &fake_ops, &links[0], &a), 0);
  got put = {0};
  T_EQ_INT(store_agent_put(st, "b-remote", "mgr-b", "{}", 60000, put_done, &put), 0);
  while (!put.done)
    uv_run(&loop, UV_RUN_ONCE);
  T_EQ_INT(ui_queue_start(u), 0);
  run_a_bit();
  cJSON *j = NULL;
  T_EQ_INT(kv(UI_AGENTS_KEY, &j), 0);
  T_EQ_INT(cJSON_GetArraySize(j), 2); /* ours, and the other instance's from the store */
  T_EQ_STR(cJSON_GetArrayItem(j, 0)->valuestring, "a1");
  T_EQ_STR(cJSON_GetArrayItem(j, 1)->valuestring, "b-remote");
  cJSON_Delete(j);
  /* a change within UI_AGENTS_MIN_INTERVAL_MS waits for the interval (rate limit) */
  agent *b = NULL;
  T_EQ_INT(agent_registry_attach(reg, "a2", 2, AGENT_IDLE, meta, 1, &fake_ops, &links[1], &b), 0);
  ui_queue_agents_changed(u);
  ui_queue_agents_changed(u);
  run_a_bit();
  T_EQ_INT(kv(UI_AGENTS_KEY, &j), 0);
  T_EQ_INT(cJSON_GetArraySize(j), 2);
  cJSON_Delete(j);
  uint64_t t0 = uv_now(&loop);
  int n = 0;
  do {
    uv_run(&loop, UV_RUN_ONCE);
    T_EQ_INT(kv(UI_AGENTS_KEY, &j), 0);
    n = cJSON_GetArraySize(j);
    cJSON_Delete(j);
  } while (n != 3 && uv_now(&loop) - t0 < 3000);
  T_EQ_INT(n, 3);
  T_ASSERT(uv_now(&loop) - t0 <= UI_AGENTS_MIN_INTERVAL_MS + 200);
  ui_queue_stats s0;
  ui_queue_get_stats(u, &s0);
  T_EQ_INT(s0.kv_writes, 2); /* the start's write and one for both changes */

  /* cmd:response: pending at store, running on the agent's report, then final */
  sm_command *c = exec_cmd("c-9", "a1", "echo x");
  ui_queue_cmd_received(u, c);
  run_a_bit();
  T_EQ_INT(kv("cmd:response:a1:c-9", &j), 0);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "pending");
  cJSON_Delete(j);
  agent_result r = {.command_id = "c-9", .status = "running"};
  ui_queue_result(u, a, &r);
  run_a_bit();
  T_EQ_INT(kv("cmd:response:a1:c-9", &j), 0);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "running");
  cJSON_Delete(j);
  agent_result r2 = {.command_id = "unknown", .status = "running"};
  ui_queue_result(u, a, &r2); /* not tracked: nothing written */
  c->status = COMMAND_COMPLETED;
  c->completed_at = c->created_at + 10;
  T_EQ_INT(command_set_str(&c->agent_id, "a1"), 0);
  sm_kv data[] = {{"stdout", "x\n"}, {"exit_code", "0"}};
  T_EQ_INT(command_set_result(c, "completed", data, 2, NULL, c->completed_at), 0);
  ui_queue_cmd_finished(u, c);
  run_a_bit();
  T_EQ_INT(kv("cmd:response:a1:c-9", &j), 0);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "completed");
  T_EQ_STR(cJSON_GetObjectItem(j, "output")->valuestring, "x\n");
  cJSON_Delete(j);
  T_EQ_INT(kv("cmd:response:a1:unknown", NULL), SM_ENOENT);
  command_free(c);
  /* other types are not the UI's */
  sm_command *o = exec_cmd("c-10", "a1", "x");
  T_EQ_INT(command_set_str(&o->type, "scan"), 0);
  ui_queue_cmd_received(u, o);
  run_a_bit();
  T_EQ_INT(kv("cmd:response:a1:c-10", NULL), SM_ENOENT);
  command_free(o);

  /* closed with a write in flight and a command tracked: each completes into nothing */
  sm_command *p = exec_cmd("c-11", "a1", "sleep 5");
  ui_queue_cmd_received(u, p);
  command_free(p);
  ui_queue_destroy(u);
  run_a_bit();
  agent_registry_detach(reg, a, &links[0], SM_ECLOSED);
  agent_registry_detach(reg, b, &links[1], SM_ECLOSED);
  mq_conn_destroy(conn);
  run_a_bit();
  ui_queue_agents_changed(NULL); /* NULL is fine */
  ui_queue_cmd_received(NULL, NULL);
}

static void closed_cb(void *ud) {
  (*(int *)ud)++;
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_EQ_INT(uv_loop_init(&loop), 0);
  T_RUN(test_parse_command);
  T_RUN(test_parse_actions);
  T_RUN(test_parse_errors);
  T_RUN(test_to_command);
  T_RUN(test_replies);
  T_RUN(test_response_json);
  T_RUN(test_agents_json);
  T_RUN(test_alloc_failure);
  T_EQ_INT(store_mem_create(&loop, NULL, &st), 0);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 10, .instance = "mgr-a"};
  T_EQ_INT(agent_registry_create(&loop, &rc, &reg), 0);
  T_RUN(test_keys);
  int closed = 0;
  agent_registry_destroy(reg);
  store_close(st, closed_cb, &closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 1);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
