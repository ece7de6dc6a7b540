/* test-hello-service.c - hello.HelloService (grpc/hello_service.c) over the in-memory HTTP/2 peer
 * with a real agent registry: registration by agent_id metadata and by message, heartbeats as
 * signs of life, commands as command lines, oldest-first result matching of identical command
 * lines, a result never asked for, a result after the command was cancelled (what a timeout
 * does), refused command types, Ping and ExecuteCommand. */
#include "core/registry.h"
#include "grpc/services.h"
#include "grpc/session.h"

#include "h2peer.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include "hello.pb-c.h"

#include <stdio.h>
#include <uv.h>

/* ---- registry events: every result, in order ---- */

#define MAX_RESULTS 8
static int registers, unregisters, nresults;
static struct { char id[64], status[32], error[160], output[64], exit_code[16]; } R[MAX_RESULTS];

static const char *data_of(const agent_result *r, const char *key) {
  for (size_t i = 0; i < r->ndata; i++)
    if (strcmp(r->data[i].key, key) == 0)
      return r->data[i].value;
  return "";
}

static void on_register(void *ud, agent *a, int replaced) {
  (void)ud, (void)a, (void)replaced;
  registers++;
}
static void on_unregister(void *ud, agent *a, int reason) {
  (void)ud, (void)a, (void)reason;
  unregisters++;
}
static void on_result(void *ud, agent *a, const agent_result *r) {
  (void)ud, (void)a;
  T_ASSERT(nresults < MAX_RESULTS);
  snprintf(R[nresults].id, sizeof R[0].id, "%s", r->command_id);
  snprintf(R[nresults].status, sizeof R[0].status, "%s", r->status);
  snprintf(R[nresults].error, sizeof R[0].error, "%s", r->error ? r->error : "");
  snprintf(R[nresults].output, sizeof R[0].output, "%s", data_of(r, "output"));
  snprintf(R[nresults].exit_code, sizeof R[0].exit_code, "%s", data_of(r, "exit_code"));
  nresults++;
}

/* ---- fixture ---- */

typedef struct fixture {
  uv_loop_t loop;
  agent_registry *reg;
  grpc_hello_service *hs;
  grpc_service svc;
  const grpc_service *services[1];
  grpc_session_config cfg;
  h2peer p;
} fixture;

static fixture F;

static void setup(void) {
  registers = unregisters = nresults = 0;
  memset(R, 0, sizeof R);
  T_EQ_INT(uv_loop_init(&F.loop), 0);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 10, .instance = "t1"};
  T_EQ_INT(agent_registry_create(&F.loop, &rc, &F.reg), 0);
  agent_registry_events ev = {on_register, on_unregister, NULL, on_result, NULL};
  agent_registry_set_events(F.reg, &ev);
  T_EQ_INT(grpc_hello_service_create(&F.loop, F.reg, 5000, &F.svc, &F.hs), 0);
  F.services[0] = &F.svc;
  F.cfg = (grpc_session_config){
      .services = F.services,
      .nservices = 1,
      .max_message_bytes = 256 * 1024,
      .max_streams = 16,
      .max_header_bytes = 16 * 1024,
      .stream_window = 65535,
      .connection_window = 1 << 20,
      .max_output_bytes = 256 * 1024,
      .stall_ms = 30000,
  };
  h2peer_init(&F.p, &F.cfg);
  h2peer_pump(&F.p);
}

static void teardown(void) {
  h2peer_free(&F.p);
  grpc_hello_service_destroy(F.hs);
  agent_registry_destroy(F.reg);
  uv_run(&F.loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&F.loop), 0);
}

static void send_msg(int32_t id, const char *agent_id, Hello__HeartbeatMessage *hb,
                     Hello__CommandResult *cr) {
  Hello__AgentMessage m = HELLO__AGENT_MESSAGE__INIT;
  if (agent_id)
    m.agent_id = (char *)agent_id;
  m.type = HELLO__MESSAGE_TYPE__HEARTBEAT;
  if (hb) {
    m.payload_case = HELLO__AGENT_MESSAGE__PAYLOAD_HEARTBEAT;
    m.heartbeat = hb;
  } else if (cr) {
    m.type = HELLO__MESSAGE_TYPE__RESULT;
    m.payload_case = HELLO__AGENT_MESSAGE__PAYLOAD_RESULT;
    m.result = cr;
  }
  uint8_t buf[1024];
  size_t n = protobuf_c_message_get_packed_size(&m.base);
  T_ASSERT(n <= sizeof buf);
  protobuf_c_message_pack(&m.base, buf);
  h2peer_send_msg(&F.p, id, buf, n, 0);
  h2peer_pump(&F.p);
}

static void send_result(int32_t id, const char *line, const char *output, int32_t code) {
  Hello__CommandResult cr = HELLO__COMMAND_RESULT__INIT;
  cr.command = (char *)line;
  cr.output = (char *)output;
  cr.exit_code = code;
  cr.execution_time = 12;
  send_msg(id, NULL, NULL, &cr);
}

/* A registered hello agent "h-1" on a new stream. */
static int32_t connect_agent(void) {
  const char *extra[2] = {"agent_id", "h-1"};
  int32_t id = h2peer_request(&F.p, "/hello.HelloService/ConnectStream", extra, 1);
  Hello__HeartbeatMessage hb = HELLO__HEARTBEAT_MESSAGE__INIT;
  hb.cpu_usage = 10;
  send_msg(id, NULL, &hb, NULL);
  T_EQ_INT(h2peer_stream(&F.p, id)->http_status, 200);
  return id;
}

static agent *find(const char *id) {
  return agent_registry_find(F.reg, id, strlen(id));
}

static int send_cmd(const char *cid, const char *type, const char *line) {
  sm_kv p = {"command", line};
  agent_command c = {.id = cid, .type = type, .params = &p, .nparams = line ? 1 : 0};
  int err = agent_send(find("h-1"), &c);
  h2peer_pump(&F.p);
  return err;
}

static Hello__ServerMessage *server_msg(int32_t id, size_t i) {
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_ASSERT(i < st->nmsgs);
  Hello__ServerMessage *m = hello__server_message__unpack(NULL, st->msg_len[i], st->msgs[i]);
  T_ASSERT(m != NULL);
  return m;
}

static grpc_hello_stats stats(void) {
  grpc_hello_stats s;
  grpc_hello_service_get_stats(F.hs, &s);
  return s;
}

/* ---- cases ---- */

static void test_register(void) {
  setup();
  int32_t id = connect_agent();
  agent *a = find("h-1");
  T_ASSERT(a != NULL);
  T_EQ_STR(a->link_ops->protocol, "hello.HelloService");
  T_EQ_INT(a->max_concurrent, GRPC_HELLO_MAX_CONCURRENT);
  T_EQ_INT(a->ncaps, 1);
  T_EQ_STR(a->caps[0].key, "protocol");
  T_EQ_STR(a->caps[0].value, "hello");
  T_ASSERT(a->cpu_usage > 9.9 && a->cpu_usage < 10.1);
  uint64_t msgs = a->messages;
  send_result(id, "never-sent", "", 0); /* a result is a sign of life too */
  T_ASSERT(a->messages > msgs);
  /* the agent id from the first message */
  int32_t id2 = h2peer_request(&F.p, "/hello.HelloService/ConnectStream", NULL, 0);
  send_msg(id2, "h-2", NULL, NULL);
  T_ASSERT(find("h-2") != NULL);
  /* neither */
  int32_t id3 = h2peer_request(&F.p, "/hello.HelloService/ConnectStream", NULL, 0);
  send_msg(id3, NULL, NULL, NULL);
  T_EQ_INT(h2peer_stream(&F.p, id3)->grpc_status, GRPC_UNAUTHENTICATED);
  /* silent: the first-message timeout of scan.AgentService applies */
  int32_t id4 = h2peer_request(&F.p, "/hello.HelloService/ConnectStream", NULL, 0);
  h2peer_pump(&F.p);
  h2peer_advance(&F.p, 5500);
  T_EQ_INT(h2peer_stream(&F.p, id4)->grpc_status, GRPC_DEADLINE_EXCEEDED);
  T_EQ_INT(registers, 2);
  teardown();
  T_EQ_INT(unregisters, 2);
}

static void test_exec_and_status(void) {
  setup();
  int32_t id = connect_agent();
  T_EQ_INT(send_cmd("c-1", "exec", "uname -a"), 0);
  T_EQ_INT(send_cmd("c-2", "status", NULL), 0);
  T_EQ_INT(h2peer_stream(&F.p, id)->nmsgs, 2);
  Hello__ServerMessage *m = server_msg(id, 0);
  T_EQ_STR(m->id, "c-1");
  T_EQ_INT(m->type, HELLO__MESSAGE_TYPE__COMMAND);
  T_EQ_INT(m->payload_case, HELLO__SERVER_MESSAGE__PAYLOAD_COMMAND);
  T_EQ_STR(m->command->command, "uname -a");
  hello__server_message__free_unpacked(m, NULL);
  m = server_msg(id, 1);
  T_EQ_STR(m->command->command, "internal:status");
  hello__server_message__free_unpacked(m, NULL);

  send_result(id, "internal:status", "ok", 0);
  send_result(id, "uname -a", "Linux", 2);
  T_EQ_INT(nresults, 2);
  T_EQ_STR(R[0].id, "c-2");
  T_EQ_STR(R[0].status, "completed");
  T_EQ_STR(R[0].output, "ok");
  T_EQ_STR(R[1].id, "c-1");
  T_EQ_STR(R[1].status, "failed"); /* exit_code != 0 */
  T_EQ_STR(R[1].exit_code, "2");
  T_EQ_STR(R[1].output, "Linux");
  /* each result acknowledged */
  T_EQ_INT(h2peer_stream(&F.p, id)->nmsgs, 4);
  m = server_msg(id, 3);
  T_EQ_INT(m->type, HELLO__MESSAGE_TYPE__ACKNOWLEDGMENT);
  T_EQ_STR(m->acknowledgment->command_id, "c-1");
  T_EQ_STR(m->acknowledgment->status, "failed");
  hello__server_message__free_unpacked(m, NULL);
  T_EQ_INT(stats().unmatched, 0);
  teardown();
}

static void test_identical_lines_oldest_first(void) {
  setup();
  int32_t id = connect_agent();
  T_EQ_INT(send_cmd("old", "exec", "ls /"), 0);
  T_EQ_INT(send_cmd("new", "exec", "ls /"), 0);
  send_result(id, "ls /", "first", 0);
  T_EQ_INT(nresults, 1);
  T_EQ_STR(R[0].id, "old");
  T_EQ_STR(R[0].output, "first");
  send_result(id, "ls /", "second", 0);
  T_EQ_INT(nresults, 2);
  T_EQ_STR(R[1].id, "new");
  T_EQ_STR(R[1].output, "second");
  /* a third: nothing is outstanding any more */
  send_result(id, "ls /", "third", 0);
  T_EQ_INT(nresults, 2);
  T_EQ_INT(stats().unmatched, 1);
  teardown();
}

static void test_unmatched_result(void) {
  setup();
  int32_t id = connect_agent();
  T_EQ_INT(send_cmd("c-1", "exec", "id"), 0);
  send_result(id, "rm -rf /", "", 0); /* never sent */
  T_EQ_INT(nresults, 0);
  T_EQ_INT(stats().unmatched, 1);
  T_EQ_INT(stats().results, 1);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_EQ_INT(st->grpc_status, -1); /* the stream goes on */
  Hello__ServerMessage *m = server_msg(id, st->nmsgs - 1);
  T_EQ_STR(m->acknowledgment->status, "unmatched");
  hello__server_message__free_unpacked(m, NULL);
  send_result(id, "id", "uid=0", 0); /* the real one still matches */
  T_EQ_INT(nresults, 1);
  T_EQ_STR(R[0].id, "c-1");
  teardown();
}

static void test_result_after_timeout(void) {
  setup();
  int32_t id = connect_agent();
  T_EQ_INT(send_cmd("slow", "exec", "sleep 100"), 0);
  /* what the lifecycle sends when the command times out (or is cancelled) */
  sm_kv p = {"command_id", "slow"};
  agent_command cancel = {.id = "slow", .type = "cancel", .params = &p, .nparams = 1};
  T_EQ_INT(agent_send(find("h-1"), &cancel), 0);
  h2peer_pump(&F.p);
  T_EQ_INT(h2peer_stream(&F.p, id)->nmsgs, 1); /* hello has no cancel: nothing goes out */
  T_EQ_INT(send_cmd("fresh", "exec", "sleep 100"), 0);
  send_result(id, "sleep 100", "late", 0);
  /* not the timed-out one: it is no longer outstanding */
  T_EQ_INT(nresults, 1);
  T_EQ_STR(R[0].id, "fresh");
  send_result(id, "sleep 100", "later", 0);
  T_EQ_INT(nresults, 1);
  T_EQ_INT(stats().unmatched, 1);
  teardown();
}

static void test_refused_type(void) {
  setup();
  int32_t id = connect_agent();
  T_EQ_INT(send_cmd("s-1", "scan", NULL), 0); /* accepted: never calls back synchronously */
  T_EQ_INT(send_cmd("e-1", "exec", NULL), 0); /* exec without a command line */
  T_EQ_INT(nresults, 0);
  T_EQ_INT(h2peer_stream(&F.p, id)->nmsgs, 0); /* nothing reached the agent */
  uv_run(&F.loop, UV_RUN_NOWAIT);
  T_EQ_INT(nresults, 2);
  T_EQ_STR(R[0].id, "s-1");
  T_EQ_STR(R[0].status, "rejected");
  T_ASSERT(strstr(R[0].error, "hello.HelloService") != NULL);
  T_ASSERT(strstr(R[0].error, "scan") != NULL);
  T_EQ_STR(R[1].id, "e-1");
  T_ASSERT(strstr(R[1].error, "params.command") != NULL);
  T_EQ_INT(stats().rejected, 2);
  /* a refusal pending when the stream goes: dropped with the link */
  T_EQ_INT(send_cmd("s-2", "scan", NULL), 0);
  teardown();
  T_EQ_INT(nresults, 2);
}

static void test_ping_and_execute(void) {
  setup();
  Hello__PingRequest req = HELLO__PING_REQUEST__INIT;
  req.agent_id = (char *)"h-9";
  uint8_t buf[64];
  size_t len = protobuf_c_message_pack(&req.base, buf);
  int32_t p = h2peer_request(&F.p, "/hello.HelloService/Ping", NULL, 0);
  h2peer_send_msg(&F.p, p, buf, len, 1);
  h2peer_pump(&F.p);
  h2p_stream *st = h2peer_stream(&F.p, p);
  T_EQ_INT(st->grpc_status, GRPC_OK);
  T_EQ_INT(st->nmsgs, 1);
  Hello__PingResponse *r = hello__ping_response__unpack(NULL, st->msg_len[0], st->msgs[0]);
  T_ASSERT(r != NULL);
  T_EQ_STR(r->message, "pong");
  T_ASSERT(r->timestamp > 1600000000);
  hello__ping_response__free_unpacked(r, NULL);

  Hello__CommandRequest cr = HELLO__COMMAND_REQUEST__INIT;
  cr.command = (char *)"id";
  len = protobuf_c_message_pack(&cr.base, buf);
  int32_t e = h2peer_request(&F.p, "/hello.HelloService/ExecuteCommand", NULL, 0);
  h2peer_send_msg(&F.p, e, buf, len, 1);
  h2peer_pump(&F.p);
  T_EQ_INT(h2peer_stream(&F.p, e)->grpc_status, GRPC_UNIMPLEMENTED);
  teardown();
}

/* Allocation failure at every step of a send and of a refusal: the send fails cleanly (nothing
 * outstanding, nothing sent) or works; a refusal is reported or (only when it cannot even be
 * recorded) left to the command's timeout. ASan checks that nothing leaks. */
static void test_alloc_failures(void) {
  setup();
  int32_t id = connect_agent();
  size_t sent = 0;
  for (long nth = 0;; nth++) {
    sm_alloc_fail_at(nth, 0);
    int err = send_cmd("c-1", "exec", "uptime");
    sm_alloc_fail_at(-1, 0);
    T_ASSERT(err == 0 || err == SM_ENOMEM);
    if (err == 0)
      break;
    T_EQ_INT(h2peer_stream(&F.p, id)->nmsgs, sent);
  }
  sent = h2peer_stream(&F.p, id)->nmsgs;
  T_EQ_INT(sent, 1);
  send_result(id, "uptime", "up", 0);
  T_EQ_INT(nresults, 1);
  T_EQ_STR(R[0].id, "c-1");
  for (long nth = 0; nth < 8; nth++) {
    sm_alloc_fail_at(nth, 0);
    T_EQ_INT(send_cmd("s", "scan", NULL), 0);
    sm_alloc_fail_at(-1, 0);
  }
  uv_run(&F.loop, UV_RUN_NOWAIT);
  T_ASSERT(nresults >= 1 + 5); /* each failure point is one of the 3 allocations of a refusal */
  teardown();
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_RUN(test_register);
  T_RUN(test_exec_and_status);
  T_RUN(test_identical_lines_oldest_first);
  T_RUN(test_unmatched_result);
  T_RUN(test_result_after_timeout);
  T_RUN(test_refused_type);
  T_RUN(test_ping_and_execute);
  T_RUN(test_alloc_failures);
  return t_done();
}
