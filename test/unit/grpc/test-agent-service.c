/* test-agent-service.c - scan.AgentService (grpc/agent_service.c) over the in-memory HTTP/2 peer
 * with a real agent registry: registration by header and by message, heartbeats, results, a bad
 * first message, the first-message timeout, a replaced stream, commands sent to the agent and
 * backpressure, the agent leaving, Ping, and a session destroyed with agents attached. */
#include "core/registry.h"
#include "grpc/services.h"
#include "grpc/session.h"

#include "h2peer.h"
#include "t.h"
#include "util/err.h"
#include "util/log.h"

#include "agent.pb-c.h"

#include <stdio.h>
#include <uv.h>

/* ---- registry events ---- */

static int registers, replaced_registers, unregisters, updates, results;
static int last_unregister_reason;
static char last_result_id[64], last_result_status[32], last_result_data[64];

static void on_register(void *ud, agent *a, int replaced) {
  (void)ud;
  (void)a;
  registers++;
  replaced_registers += replaced != 0;
}
static void on_unregister(void *ud, agent *a, int reason) {
  (void)ud;
  (void)a;
  unregisters++;
  last_unregister_reason = reason;
}
static void on_update(void *ud, agent *a) {
  (void)ud;
  (void)a;
  updates++;
}
static void on_result(void *ud, agent *a, const agent_result *r) {
  (void)ud;
  (void)a;
  results++;
  snprintf(last_result_id, sizeof last_result_id, "%s", r->command_id);
  snprintf(last_result_status, sizeof last_result_status, "%s", r->status);
  snprintf(last_result_data, sizeof last_result_data, "%s=%s", r->ndata ? r->data[0].key : "",
           r->ndata ? r->data[0].value : "");
}

/* ---- fixture ---- */

typedef struct fixture {
  uv_loop_t loop;
  agent_registry *reg;
  grpc_agent_service *as;
  grpc_service svc;
  const grpc_service *services[1];
  grpc_session_config cfg;
  h2peer p;
} fixture;

static fixture F;

static void setup(void) {
  registers = replaced_registers = unregisters = updates = results = 0;
  last_unregister_reason = 12345;
  T_EQ_INT(uv_loop_init(&F.loop), 0);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 10, .instance = "t1"};
  T_EQ_INT(agent_registry_create(&F.loop, &rc, &F.reg), 0);
  agent_registry_events ev = {on_register, on_unregister, on_update, on_result, NULL};
  agent_registry_set_events(F.reg, &ev);
  T_EQ_INT(grpc_agent_service_create(F.reg, 5000, &F.svc, &F.as), 0);
  F.services[0] = &F.svc;
  F.cfg = (grpc_session_config){
      .services = F.services,
      .nservices = 1,
      .max_message_bytes = 256 * 1024,
      .max_streams = 16,
      .max_header_bytes = 16 * 1024,
      .stream_window = 65535,
      .connection_window = 1 << 20,
      .keepalive_ms = 0,
      .idle_ms = 0,
      .max_output_bytes = 256 * 1024,
      .stall_ms = 30000,
  };
  h2peer_init(&F.p, &F.cfg);
  h2peer_pump(&F.p);
}

static void teardown(void) {
  h2peer_free(&F.p); /* destroys the session: attached agents detach */
  grpc_agent_service_destroy(F.as);
  agent_registry_destroy(F.reg);
  uv_run(&F.loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&F.loop), 0);
}

/* Packs an AgentMessage and sends it on stream id. */
static void send_agent_msg(int32_t id, const char *agent_id, Scan__AgentStatus status,
                           const char *hostname, Scan__HeartbeatMessage *hb,
                           Scan__CommandResult *cr, int eos) {
  Scan__AgentMessage m = SCAN__AGENT_MESSAGE__INIT;
  Scan__AgentMessage__MetadataEntry e = SCAN__AGENT_MESSAGE__METADATA_ENTRY__INIT, *ep = &e;
  if (agent_id)
    m.agent_id = (char *)agent_id;
  m.status = status;
  if (hostname) {
    e.key = (char *)"hostname";
    e.value = (char *)hostname;
    m.n_metadata = 1;
    m.metadata = &ep;
  }
  if (hb) {
    m.payload_case = SCAN__AGENT_MESSAGE__PAYLOAD_HEARTBEAT;
    m.heartbeat = hb;
  } else if (cr) {
    m.payload_case = SCAN__AGENT_MESSAGE__PAYLOAD_COMMAND_RESULT;
    m.command_result = cr;
  }
  uint8_t buf[1024];
  size_t n = protobuf_c_message_get_packed_size(&m.base);
  T_ASSERT(n <= sizeof buf);
  protobuf_c_message_pack(&m.base, buf);
  h2peer_send_msg(&F.p, id, buf, n, eos);
  h2peer_pump(&F.p);
}

static int32_t connect_with_header(const char *agent_id) {
  const char *extra[2] = {"agent-id", agent_id};
  return h2peer_request(&F.p, "/scan.AgentService/Connect", extra, agent_id ? 1 : 0);
}

static agent *find(const char *id) {
  return agent_registry_find(F.reg, id, strlen(id));
}

/* ---- cases ---- */

static void test_register_via_header(void) {
  setup();
  int32_t id = connect_with_header("a-1");
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__IDLE, "host-1", NULL, NULL, 0);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_EQ_INT(st->http_status, 200); /* response headers: registered */
  T_EQ_INT(st->grpc_status, -1);  /* the stream stays open */
  T_EQ_INT(agent_registry_count(F.reg), 1);
  agent *a = find("a-1");
  T_ASSERT(a != NULL);
  T_EQ_STR(a->hostname, "host-1");
  T_EQ_INT(a->status, AGENT_IDLE);
  T_EQ_INT(registers, 1);
  T_EQ_INT(replaced_registers, 0);
  teardown();
  T_EQ_INT(unregisters, 1); /* the session went away with the agent attached */
}

static void test_register_via_message(void) {
  setup();
  int32_t id = connect_with_header(NULL);
  send_agent_msg(id, "a-2", SCAN__AGENT_STATUS__BUSY, NULL, NULL, NULL, 0);
  T_EQ_INT(h2peer_stream(&F.p, id)->http_status, 200);
  agent *a = find("a-2");
  T_ASSERT(a != NULL);
  T_EQ_INT(a->status, AGENT_BUSY);
  /* the header wins over the message when both are sent */
  int32_t id2 = connect_with_header("a-3");
  send_agent_msg(id2, "a-ignored", SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  T_ASSERT(find("a-3") != NULL);
  T_ASSERT(find("a-ignored") == NULL);
  T_EQ_INT(agent_registry_count(F.reg), 2);
  teardown();
  T_EQ_INT(unregisters, 2);
}

static void test_heartbeat_and_result(void) {
  setup();
  int32_t id = connect_with_header("a-hb");
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  int updates0 = updates;
  Scan__HeartbeatMessage hb = SCAN__HEARTBEAT_MESSAGE__INIT;
  hb.timestamp = 1700000000;
  hb.cpu_usage = 50;
  hb.memory_usage = 25;
  hb.active_commands = 2;
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__BUSY, NULL, &hb, NULL, 0);
  agent *a = find("a-hb");
  T_ASSERT(a != NULL);
  T_ASSERT(a->cpu_usage > 49.9 && a->cpu_usage < 50.1);
  T_ASSERT(a->memory_usage > 24.9 && a->memory_usage < 25.1);
  T_EQ_INT(a->active_commands, 2);
  T_EQ_INT(a->status, AGENT_BUSY);
  T_ASSERT(updates > updates0);

  Scan__CommandResult cr = SCAN__COMMAND_RESULT__INIT;
  Scan__CommandResult__DataEntry d = SCAN__COMMAND_RESULT__DATA_ENTRY__INIT, *dp = &d;
  d.key = (char *)"open_ports";
  d.value = (char *)"22,80";
  cr.command_id = (char *)"cmd-1";
  cr.status = (char *)"completed";
  cr.n_data = 1;
  cr.data = &dp;
  cr.completed_at = 1700000001;
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, &cr, 0);
  T_EQ_INT(results, 1);
  T_EQ_STR(last_result_id, "cmd-1");
  T_EQ_STR(last_result_status, "completed");
  T_EQ_STR(last_result_data, "open_ports=22,80");
  T_EQ_INT(h2peer_stream(&F.p, id)->grpc_status, -1);
  teardown();
}

static void test_bad_first_message(void) {
  setup();
  /* no agent id anywhere */
  int32_t id = connect_with_header(NULL);
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_EQ_INT(st->grpc_status, GRPC_UNAUTHENTICATED);
  T_ASSERT(strstr(st->grpc_message, "agent id missing") != NULL);
  /* not a protobuf message */
  int32_t id2 = connect_with_header("a-garbage");
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  h2peer_send_msg(&F.p, id2, junk, sizeof junk, 0);
  h2peer_pump(&F.p);
  T_EQ_INT(h2peer_stream(&F.p, id2)->grpc_status, GRPC_INTERNAL);
  /* an invalid id */
  char longid[600];
  memset(longid, 'x', sizeof longid - 1);
  longid[sizeof longid - 1] = 0;
  int32_t id3 = connect_with_header(NULL);
  send_agent_msg(id3, longid, SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  T_EQ_INT(h2peer_stream(&F.p, id3)->grpc_status, GRPC_INVALID_ARGUMENT);
  T_EQ_INT(agent_registry_count(F.reg), 0);
  T_EQ_INT(registers, 0);
  teardown();
  T_EQ_INT(unregisters, 0);
}

static void test_first_message_timeout(void) {
  setup();
  int32_t id = connect_with_header("a-silent");
  h2peer_pump(&F.p);
  T_EQ_INT(h2peer_stream(&F.p, id)->grpc_status, -1);
  h2peer_advance(&F.p, 4000);
  T_EQ_INT(h2peer_stream(&F.p, id)->grpc_status, -1);
  h2peer_advance(&F.p, 1500);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_EQ_INT(st->grpc_status, GRPC_DEADLINE_EXCEEDED);
  T_ASSERT(strstr(st->grpc_message, "no first message") != NULL);
  T_EQ_INT(agent_registry_count(F.reg), 0);
  teardown();
}

static void test_replaced_stream(void) {
  setup();
  int32_t old = connect_with_header("a-r");
  send_agent_msg(old, NULL, SCAN__AGENT_STATUS__IDLE, "old-host", NULL, NULL, 0);
  agent *a = find("a-r");
  T_ASSERT(a != NULL);
  uint64_t gen = a->generation;
  int32_t neu = connect_with_header("a-r");
  send_agent_msg(neu, NULL, SCAN__AGENT_STATUS__IDLE, "new-host", NULL, NULL, 0);
  h2peer_pump(&F.p);
  /* the old stream is ended by the registry, the record moved to the new one */
  h2p_stream *os = h2peer_stream(&F.p, old);
  T_ASSERT(os->grpc_status > 0);
  T_ASSERT(strstr(os->grpc_message, "replaced") != NULL);
  T_ASSERT(os->closed);
  T_EQ_INT(h2peer_stream(&F.p, neu)->grpc_status, -1);
  T_EQ_INT(agent_registry_count(F.reg), 1);
  a = find("a-r");
  T_ASSERT(a != NULL);
  T_ASSERT(a->generation > gen);
  T_EQ_STR(a->hostname, "new-host");
  T_EQ_INT(registers, 2);
  T_EQ_INT(replaced_registers, 1);
  T_EQ_INT(unregisters, 0); /* replaced, not gone: the old stream's close detaches nothing */
  /* messages on the new stream still reach the record */
  Scan__HeartbeatMessage hb = SCAN__HEARTBEAT_MESSAGE__INIT;
  hb.active_commands = 7;
  send_agent_msg(neu, NULL, SCAN__AGENT_STATUS__BUSY, NULL, &hb, NULL, 0);
  T_EQ_INT(find("a-r")->active_commands, 7);
  teardown();
  T_EQ_INT(unregisters, 1);
}

static void test_send_and_backpressure(void) {
  setup();
  int32_t id = connect_with_header("a-s");
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  agent *a = find("a-s");
  T_ASSERT(a != NULL);
  sm_kv params[20];
  char keys[20][8];
  for (int i = 0; i < 20; i++) {
    snprintf(keys[i], sizeof keys[i], "k%d", i);
    params[i].key = keys[i];
    params[i].value = "v";
  }
  agent_command cmd = {
      .id = "cmd-7", .type = "scan", .params = params, .nparams = 1, .timeout_seconds = 30};
  T_EQ_INT(agent_send(a, &cmd), 0);
  cmd.id = "cmd-8";
  cmd.nparams = 20; /* more than fit the service's stack buffers */
  T_EQ_INT(agent_send(a, &cmd), 0);
  h2peer_pump(&F.p);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_EQ_INT(st->nmsgs, 2);
  Scan__CommandMessage *m = scan__command_message__unpack(NULL, st->msg_len[0], st->msgs[0]);
  T_ASSERT(m != NULL);
  T_EQ_STR(m->id, "cmd-7");
  T_EQ_STR(m->type, "scan");
  T_EQ_INT(m->timeout_seconds, 30);
  T_EQ_INT(m->n_params, 1);
  T_EQ_STR(m->params[0]->key, "k0");
  scan__command_message__free_unpacked(m, NULL);
  m = scan__command_message__unpack(NULL, st->msg_len[1], st->msgs[1]);
  T_ASSERT(m != NULL);
  T_EQ_STR(m->id, "cmd-8");
  T_EQ_INT(m->n_params, 20);
  T_EQ_STR(m->params[19]->key, "k19");
  scan__command_message__free_unpacked(m, NULL);
  /* a connection backed up past the output limit refuses more, nothing is queued */
  F.p.fake_output = F.cfg.max_output_bytes;
  cmd.id = "cmd-9";
  cmd.nparams = 0;
  T_EQ_INT(agent_send(a, &cmd), SM_EAGAIN);
  F.p.fake_output = 0;
  h2peer_pump(&F.p);
  T_EQ_INT(st->nmsgs, 2);
  T_EQ_INT(agent_send(a, &cmd), 0);
  h2peer_pump(&F.p);
  T_EQ_INT(st->nmsgs, 3);
  teardown();
}

static void test_agent_leaves(void) {
  setup();
  int32_t id = connect_with_header("a-l");
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  T_EQ_INT(agent_registry_count(F.reg), 1);
  h2peer_send_raw(&F.p, id, NULL, 0, 1); /* END_STREAM */
  h2peer_pump(&F.p);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_EQ_INT(st->grpc_status, GRPC_OK);
  T_ASSERT(st->closed);
  T_EQ_INT(agent_registry_count(F.reg), 0);
  T_EQ_INT(unregisters, 1);
  T_EQ_INT(last_unregister_reason, SM_ECLOSED);
  /* sending to a gone agent: the id is unknown now */
  T_ASSERT(find("a-l") == NULL);
  teardown();
  T_EQ_INT(unregisters, 1);
}

static void test_registry_ends_streams(void) {
  setup();
  int32_t id = connect_with_header("a-e");
  send_agent_msg(id, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  agent_registry_end_all(F.reg, SM_ECANCELED, "manager shutting down");
  h2peer_pump(&F.p);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_ASSERT(st->grpc_status > 0);
  T_EQ_STR(st->grpc_message, "manager shutting down");
  T_ASSERT(st->closed);
  teardown();
}

static void test_ping(void) {
  setup();
  Scan__PingRequest req = SCAN__PING_REQUEST__INIT;
  req.agent_id = (char *)"a-p";
  uint8_t buf[64];
  size_t n = protobuf_c_message_pack(&req.base, buf);
  int32_t id = h2peer_request(&F.p, "/scan.AgentService/Ping", NULL, 0);
  h2peer_send_msg(&F.p, id, buf, n, 1);
  h2peer_pump(&F.p);
  h2p_stream *st = h2peer_stream(&F.p, id);
  T_EQ_INT(st->grpc_status, GRPC_OK);
  T_EQ_INT(st->nmsgs, 1);
  Scan__PingResponse *r = scan__ping_response__unpack(NULL, st->msg_len[0], st->msgs[0]);
  T_ASSERT(r != NULL);
  T_EQ_STR(r->message, "pong");
  T_ASSERT(r->timestamp > 0);
  scan__ping_response__free_unpacked(r, NULL);
  T_EQ_INT(agent_registry_count(F.reg), 0); /* Ping registers nobody */
  teardown();
}

/* Issue 12 #5: proto3 strings must be valid UTF-8; an agent's invalid bytes (or a NUL, which
 * would cut the C string) were stored and written into JSON answers. The message is refused
 * with INTERNAL naming the field, the stream ends, nothing is stored. */
static void test_invalid_strings(void) {
  setup();
  /* a valid non-ASCII hostname is fine */
  int32_t ok = connect_with_header("a-u");
  send_agent_msg(ok, NULL, SCAN__AGENT_STATUS__IDLE, "h\xc3\xb4te", NULL, NULL, 0);
  T_ASSERT(find("a-u") != NULL);
  T_EQ_STR(find("a-u")->hostname, "h\xc3\xb4te");
  /* a result whose data value is not UTF-8 */
  Scan__CommandResult cr = SCAN__COMMAND_RESULT__INIT;
  Scan__CommandResult__DataEntry d = SCAN__COMMAND_RESULT__DATA_ENTRY__INIT, *dp = &d;
  d.key = (char *)"out";
  d.value = (char *)"\xff\xfe";
  cr.command_id = (char *)"cmd-u";
  cr.status = (char *)"completed";
  cr.n_data = 1;
  cr.data = &dp;
  send_agent_msg(ok, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, &cr, 0);
  h2p_stream *st = h2peer_stream(&F.p, ok);
  T_EQ_INT(st->grpc_status, GRPC_INTERNAL);
  T_EQ_STR(st->grpc_message,
           "invalid UTF-8 in field command_result.data.value of scan.AgentMessage");
  T_EQ_INT(results, 0);
  /* metadata on the first message: an overlong encoding */
  int32_t m = connect_with_header("a-v");
  send_agent_msg(m, NULL, SCAN__AGENT_STATUS__IDLE, "h\xc0\x80", NULL, NULL, 0);
  T_EQ_INT(h2peer_stream(&F.p, m)->grpc_status, GRPC_INTERNAL);
  T_EQ_STR(h2peer_stream(&F.p, m)->grpc_message,
           "invalid UTF-8 in field metadata.value of scan.AgentMessage");
  T_ASSERT(find("a-v") == NULL);
  /* a NUL in agent_id, written by hand: protobuf-c packs C strings */
  int32_t n = connect_with_header(NULL);
  static const uint8_t nul[] = {0x0a, 0x03, 'a', 0x00, 'b'};
  h2peer_send_msg(&F.p, n, nul, sizeof nul, 0);
  h2peer_pump(&F.p);
  T_EQ_INT(h2peer_stream(&F.p, n)->grpc_status, GRPC_INTERNAL);
  T_EQ_STR(h2peer_stream(&F.p, n)->grpc_message, "NUL in field agent_id of scan.AgentMessage");
  T_ASSERT(find("a") == NULL);
  /* the agent-id header */
  int32_t h = connect_with_header("a-\xff");
  send_agent_msg(h, NULL, SCAN__AGENT_STATUS__IDLE, NULL, NULL, NULL, 0);
  T_EQ_INT(h2peer_stream(&F.p, h)->grpc_status, GRPC_INVALID_ARGUMENT);
  /* Ping */
  Scan__PingRequest req = SCAN__PING_REQUEST__INIT;
  req.agent_id = (char *)"\xed\xa0\x80"; /* a surrogate */
  uint8_t buf[64];
  size_t len = protobuf_c_message_pack(&req.base, buf);
  int32_t p = h2peer_request(&F.p, "/scan.AgentService/Ping", NULL, 0);
  h2peer_send_msg(&F.p, p, buf, len, 1);
  h2peer_pump(&F.p);
  T_EQ_INT(h2peer_stream(&F.p, p)->grpc_status, GRPC_INTERNAL);
  T_EQ_INT(agent_registry_count(F.reg), 0); /* a-u left with its stream */
  T_EQ_INT(registers, 1);
  teardown();
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_RUN(test_register_via_header);
  T_RUN(test_register_via_message);
  T_RUN(test_heartbeat_and_result);
  T_RUN(test_bad_first_message);
  T_RUN(test_first_message_timeout);
  T_RUN(test_replaced_stream);
  T_RUN(test_send_and_backpressure);
  T_RUN(test_agent_leaves);
  T_RUN(test_registry_ends_streams);
  T_RUN(test_ping);
  T_RUN(test_invalid_strings);
  return t_done();
}
