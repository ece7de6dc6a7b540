/* Tests of core/settings: defaults, environment, flags (flag wins), bad values. */
#include "t.h"
#include "app/settings.h"
#include "util/err.h"
#include "net/tcp.h"

#include <stdlib.h>
#include <unistd.h>

static int load(sm_settings *s, int argc, const char **argv) {
  int saved = dup(2); /* silence the one-line errors */
  freopen("/dev/null", "w", stderr);
  int rc = sm_settings_load(s, argc, (char **)argv);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  return rc;
}

static void test_defaults(void) {
  sm_settings s;
  const char *argv[] = {"m", NULL};
  T_EQ_INT(load(&s, 1, argv), 0);
  T_EQ_STR(s.grpc_addr, ":50051");
  T_EQ_STR(s.admin_addr, ":8080");
  T_EQ_STR(s.metrics_addr, ":2112");
  T_EQ_STR(s.amqp_command_queue, "agent-commands");
  T_EQ_STR(s.amqp_result_queue, "agent-results");
  T_ASSERT(s.ui_command_queue == NULL); /* the UI queue is off unless named */
  T_EQ_STR(s.ui_response_queue, "agent_response");
  T_EQ_STR(s.lb_strategy, "least_loaded");
  T_ASSERT(s.valkey_host == NULL);
  T_EQ_INT(s.valkey_port, 6379);
  T_ASSERT(s.max_agent_load == 0.8);
  T_EQ_INT(s.command_queue_size, 1000);
  T_ASSERT(s.agent_timeout_s == 300);
  T_EQ_INT(s.max_retries, 3);
  T_EQ_INT(s.detailed_metrics, 1);
  T_EQ_INT(s.maintenance_mode, 0);
  T_EQ_INT(s.grpc_max_message_bytes, 4 * 1024 * 1024);
  T_ASSERT(s.metrics_scrape_interval_s == 15);
  T_EQ_INT(s.log_format, SM_LOG_JSON);
  T_ASSERT(s.instance_id != NULL && *s.instance_id);
  sm_settings_finish(&s);
}

static void test_ui_queues(void) {
  setenv("SIRIUS_UI_COMMAND_QUEUE", "agent_commands", 1);
  sm_settings s;
  const char *argv[] = {"m", "--sirius-ui-response-queue", "ui_replies", NULL};
  T_EQ_INT(load(&s, 3, argv), 0);
  T_EQ_STR(s.ui_command_queue, "agent_commands");
  T_EQ_STR(s.ui_response_queue, "ui_replies");
  sm_settings_finish(&s);
  unsetenv("SIRIUS_UI_COMMAND_QUEUE");
}

static void test_env_and_flags(void) {
  setenv("AGENT_TIMEOUT", "2.5", 1);
  setenv("LOAD_BALANCING_STRATEGY", "round_robin", 1);
  setenv("MAX_RETRIES", "7", 1);
  setenv("MAINTENANCE_MODE", "true", 1);
  sm_settings s;
  const char *argv[] = {"m",
                        "--max-retries",
                        "9",
                        "--grpc-server-addr=127.0.0.1:1",
                        "--tls-enabled",
                        "false",
                        "--enable-detailed-metrics",
                        NULL};
  T_EQ_INT(load(&s, 7, argv), 0);
  T_ASSERT(s.agent_timeout_s == 2.5);
  T_EQ_STR(s.lb_strategy, "round_robin");
  T_EQ_INT(s.max_retries, 9); /* flag wins */
  T_EQ_INT(s.maintenance_mode, 1);
  T_EQ_STR(s.grpc_addr, "127.0.0.1:1");
  T_EQ_INT(s.tls_enabled, 0);
  T_EQ_INT(s.detailed_metrics, 1);
  sm_settings_finish(&s);
  unsetenv("AGENT_TIMEOUT");
  unsetenv("LOAD_BALANCING_STRATEGY");
  unsetenv("MAX_RETRIES");
  unsetenv("MAINTENANCE_MODE");
}

static void test_bad(void) {
  static const char *const bad[][2] = {
      {"MAX_AGENT_LOAD", "1.5"},    {"MAX_AGENT_LOAD", "x"},
      {"VALKEY_PORT", "70000"},     {"MAX_RETRIES", "2.5"},
      {"AGENT_TIMEOUT", "soon"},    {"SIRIUS_LOG_LEVEL", "loud"},
      {"SIRIUS_LOG_FORMAT", "xml"}, {"GRPC_SERVER_ADDR", "nohost"},
      {"TLS_ENABLED", "maybe"},     {"LOAD_BALANCING_STRATEGY", "random"},
      {"COMMAND_QUEUE_SIZE", "0"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    setenv(bad[i][0], bad[i][1], 1);
    sm_settings s;
    const char *argv[] = {"m", NULL};
    int rc = load(&s, 1, argv);
    if (rc != SM_EINVAL)
      fprintf(stderr, "accepted %s=%s\n", bad[i][0], bad[i][1]);
    T_EQ_INT(rc, SM_EINVAL);
    sm_settings_finish(&s);
    unsetenv(bad[i][0]);
  }
  sm_settings s;
  const char *unknown[] = {"m", "--no-such-flag", NULL};
  T_EQ_INT(load(&s, 2, unknown), SM_EINVAL);
  sm_settings_finish(&s);
  const char *missing[] = {"m", "--valkey-port", NULL};
  T_EQ_INT(load(&s, 2, missing), SM_EINVAL);
  sm_settings_finish(&s);
  setenv("TLS_ENABLED", "true", 1);
  const char *argv[] = {"m", NULL};
  T_EQ_INT(load(&s, 1, argv), SM_EINVAL); /* TLS without cert and key */
  sm_settings_finish(&s);
  unsetenv("TLS_ENABLED");
}

static void test_addr(void) {
  char host[256];
  int port;
  T_EQ_INT(net_addr_split(":50051", host, &port), 0);
  T_EQ_STR(host, "0.0.0.0");
  T_EQ_INT(port, 50051);
  T_EQ_INT(net_addr_split("[::1]:80", host, &port), 0);
  T_EQ_STR(host, "::1");
  T_EQ_INT(net_addr_split("localhost:0", host, &port), 0);
  T_EQ_INT(net_addr_split("::1:80", host, &port), SM_EADDR);
  T_EQ_INT(net_addr_split("host:", host, &port), SM_EADDR);
  T_EQ_INT(net_addr_split("host:99999", host, &port), SM_EADDR);
}

int main(void) {
  T_RUN(test_defaults);
  T_RUN(test_ui_queues);
  T_RUN(test_env_and_flags);
  T_RUN(test_bad);
  T_RUN(test_addr);
  return t_done();
}
