/* Unit tests of src/metrics/metrics.c: the manager's families fed by the hooks and by a fake
 * snapshot source at scrape time (no manager, no store, no broker), label bounds, and
 * allocation failure in metrics_create. */
#include "metrics/metrics.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uv_loop_t loop;
static int snapshots;
static metrics_snapshot fake; /* what the fake source reports */

static void fake_snapshot(void *ud, metrics_snapshot *out) {
  T_ASSERT(ud == &fake);
  T_EQ_INT(out->have_agents, 0); /* zeroed */
  *out = fake;
  snapshots++;
}

static char *scrape(metrics *mt) {
  char *text = NULL;
  size_t len = 0;
  T_EQ_INT(metrics_collect_text(metrics_get_registry(mt), &text, &len), 0);
  return text;
}

static double value(metrics *mt, const char *family, const char *const *labels) {
  metrics_family *f = metrics_find(metrics_get_registry(mt), family);
  T_ASSERT(f != NULL);
  double v = -1;
  T_EQ_INT(metrics_value(f, labels, &v, NULL), 0);
  return v;
}

static metrics *make(int detailed, int with_source) {
  metrics_config cfg = {.addr = "127.0.0.1:0", .detailed = detailed};
  if (with_source)
    cfg.source = (metrics_source){fake_snapshot, &fake};
  metrics *mt = NULL;
  T_EQ_INT(metrics_create(&loop, &cfg, &mt), 0);
  return mt;
}

static int closed;
static void on_closed(void *ud) {
  (void)ud;
  closed++;
}

static void destroy(metrics *mt) {
  closed = 0;
  metrics_close(mt, on_closed, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 1);
}

static void test_snapshot_families(void) {
  metrics *mt = make(1, 1);
  memset(&fake, 0, sizeof(fake));
  fake.have_agents = 1;
  fake.agents = 7;
  fake.heartbeats = 100;
  fake.registered = 9;
  fake.have_commands = 1;
  fake.waiting = 3;
  fake.dispatched = 42;
  fake.have_mq_depth = 1;
  fake.mq_queue = "agent-commands";
  fake.mq_depth = 5;
  fake.nstore_ops = 2;
  fake.store_ops[0].name = "cmd_create";
  fake.store_ops[0].count = 11;
  fake.store_ops[1].name = "cmd_get";
  fake.store_ops[1].count = 12;
  snapshots = 0;
  char *text = scrape(mt);
  T_EQ_INT(snapshots, 1);
  T_ASSERT(strstr(text, "agent_connections 7\n") != NULL);
  T_ASSERT(strstr(text, "agent_heartbeats_total 100\n") != NULL);
  T_ASSERT(strstr(text, "agent_registrations_total 9\n") != NULL);
  T_ASSERT(strstr(text, "message_queue_depth{queue=\"scheduler\"} 3\n") != NULL);
  T_ASSERT(strstr(text, "message_queue_depth{queue=\"agent-commands\"} 5\n") != NULL);
  T_ASSERT(strstr(text, "agent_commands_dispatched_total 42\n") != NULL);
  T_ASSERT(strstr(text, "valkey_operations_total{op=\"cmd_create\"} 11\n") != NULL);
  T_ASSERT(strstr(text, "valkey_operations_total{op=\"cmd_get\"} 12\n") != NULL);
  T_ASSERT(strstr(text, "process_cpu_seconds_total") != NULL);
  free(text);

  /* a part that went away keeps its last values; counters never go down */
  fake.have_agents = 0;
  fake.dispatched = 40;
  text = scrape(mt);
  T_ASSERT(strstr(text, "agent_connections 7\n") != NULL);
  T_ASSERT(strstr(text, "agent_commands_dispatched_total 42\n") != NULL);
  free(text);
  destroy(mt);
}

/* Without a source the CONTRACT families still show, at 0. */
static void test_no_source(void) {
  metrics *mt = make(1, 0);
  char *text = scrape(mt);
  T_ASSERT(strstr(text, "agent_connections 0\n") != NULL);
  T_ASSERT(strstr(text, "message_queue_depth{queue=\"scheduler\"} 0\n") != NULL);
  T_ASSERT(strstr(text, "# TYPE agent_commands_received_total counter") != NULL);
  free(text);
  destroy(mt);
}

static void test_hooks(void) {
  metrics *mt = make(1, 0);
  sm_command c = {.type = (char *)"scan", .status = COMMAND_COMPLETED, .agent_id = (char *)"a1"};
  metrics_command_received(mt, &c);
  metrics_command_received(mt, &c);
  c.created_at = 1000;
  c.dispatched_at = 3000;
  metrics_command_finished(mt, &c, 1.5);
  const char *t[] = {"scan"};
  T_EQ_INT(value(mt, "agent_commands_received_total", t), 2);
  const char *ts[] = {"scan", "completed"};
  T_EQ_INT(value(mt, "agent_commands_executed_total", ts), 1);
  T_ASSERT(value(mt, "command_execution_time_seconds", t) == 1.5);
  T_ASSERT(value(mt, "command_queue_wait_seconds", NULL) == 2.0);
  const char *as[] = {"a1", "completed"};
  T_EQ_INT(value(mt, "agent_commands_executed_by_agent_total", as), 1);

  metrics_grpc_call_start(mt, "/scan.AgentService/Connect");
  metrics_grpc_call_end(mt, "/scan.AgentService/Connect", 1, 1, 14);
  metrics_grpc_call_end(mt, "/x.Y/Z", 0, 0, 12);
  const char *m1[] = {"/scan.AgentService/Connect"};
  T_EQ_INT(value(mt, "grpc_requests_total", m1), 1);
  const char *mu[] = {METRICS_GRPC_UNKNOWN};
  T_EQ_INT(value(mt, "grpc_requests_total", mu), 1);
  const char *e1[] = {"/scan.AgentService/Connect", "14"};
  T_EQ_INT(value(mt, "grpc_errors_total", e1), 1);
  const char *e2[] = {METRICS_GRPC_UNKNOWN, "12"};
  T_EQ_INT(value(mt, "grpc_errors_total", e2), 1);

  /* NULL is fine everywhere */
  metrics_command_received(NULL, &c);
  metrics_command_finished(NULL, &c, 1);
  metrics_grpc_call_start(NULL, "x");
  metrics_grpc_call_end(NULL, "x", 1, 1, 0);
  metrics_close(NULL, on_closed, NULL);
  destroy(mt);
}

/* ENABLE_DETAILED_METRICS=false: one "all" type and no per-agent family. */
static void test_not_detailed(void) {
  metrics *mt = make(0, 0);
  sm_command c = {.type = (char *)"scan", .status = COMMAND_FAILED, .agent_id = (char *)"a1"};
  metrics_command_received(mt, &c);
  metrics_command_finished(mt, &c, 0);
  const char *t[] = {"all"};
  T_EQ_INT(value(mt, "agent_commands_received_total", t), 1);
  T_ASSERT(metrics_find(metrics_get_registry(mt), "agent_commands_executed_by_agent_total") ==
           NULL);
  destroy(mt);
}

static void test_listen(void) {
  metrics *mt = make(1, 0);
  T_EQ_INT(metrics_listen(mt), 0);
  T_ASSERT(metrics_port(mt) > 0);
  destroy(mt);
  metrics *m2 = NULL;
  T_ASSERT(metrics_create(&loop, NULL, &m2) == SM_EINVAL);
}

static void test_create_alloc_failure(void) {
  for (long nth = 0;; nth++) {
    T_ASSERT(nth < 2000);
    metrics_config cfg = {.addr = "127.0.0.1:0", .detailed = 1};
    metrics *mt = NULL;
    unsigned long f0 = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0);
    int err = metrics_create(&loop, &cfg, &mt);
    sm_alloc_fail_at(-1, 0);
    if (sm_alloc_failures() == f0) {
      T_EQ_INT(err, 0);
      destroy(mt);
      break;
    }
    if (err == 0)
      destroy(mt); /* a failure the collector absorbed (a series not made yet) */
    else
      T_EQ_INT(err, SM_ENOMEM);
  }
  T_EQ_INT(uv_run(&loop, UV_RUN_NOWAIT), 0);
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_EQ_INT(uv_loop_init(&loop), 0);
  T_RUN(test_snapshot_families);
  T_RUN(test_no_source);
  T_RUN(test_hooks);
  T_RUN(test_not_detailed);
  T_RUN(test_listen);
  T_RUN(test_create_alloc_failure);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
