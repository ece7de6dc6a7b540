/* admin-testserver: the admin listener alone on a loop, for test/integration/test_admin_*.py
 * until (and besides) the real sirius-manager. Settings come from the environment like the
 * manager's (ADMIN_API_ADDR, ADMIN_REQUEST_TIMEOUT, ...). Extra environment of this program:
 *   TEST_AGENTS=N   registers N fake agents agent-001..agent-N (odd ones busy, even ones idle)
 *   TEST_READY=1    makes /ready answer 200 (the manager's readiness needs an agent listener)
 * Prints "PORT <n>" on stdout once listening; exits 0 on SIGTERM/SIGINT after a clean close. */
#include "admin/server.h"
#include "app/settings.h"
#include "core/registry.h"
#include "store/store.h"
#include "util/err.h"
#include "util/log.h"
#include "net/tcp.h"
#include "fake-link.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

typedef struct app {
  struct admin_server *admin;
  agent_registry *registry;
  store *store; /* in-process: readiness needs a connected store */
  const sm_settings *settings;
  int ready;       /* TEST_READY=1 */
  int maintenance; /* POST /api/admin/maintenance */
  uv_signal_t sigterm, sigint;
  int closed;
} app;

static void on_admin_closed(void *ud) {
  app *a = ud;
  a->closed = 1;
  agent_registry_destroy(a->registry);
  store_close(a->store, NULL, NULL);
}

/* The manager's readiness, without an agent listener unless TEST_READY says it runs. */
static int api_ready(void *ud, const char **reason) {
  app *a = ud;
  if (!a->ready) {
    *reason = "agent listener not running";
    return 0;
  }
  if (!store_is_up(a->store)) {
    *reason = "store not connected";
    return 0;
  }
  return 1;
}

static int api_maintenance(void *ud) {
  return ((app *)ud)->maintenance;
}

static void api_set_maintenance(void *ud, int on) {
  ((app *)ud)->maintenance = on;
}

static void api_deps(void *ud, admin_deps *out) {
  app *a = ud;
  out->store_backend = store_name(a->store);
  out->store_up = store_is_up(a->store);
  out->mq_configured = a->settings->rabbitmq_url && a->settings->rabbitmq_url[0];
}

static void on_signal(uv_signal_t *s, int signum) {
  app *a = s->data;
  (void)signum;
  uv_close((uv_handle_t *)&a->sigterm, NULL);
  uv_close((uv_handle_t *)&a->sigint, NULL);
  admin_server_stop_accepting(a->admin);
  admin_server_close(a->admin, on_admin_closed, a);
}

int main(int argc, char **argv) {
  static sm_settings s;
  int rc = sm_settings_load(&s, argc, argv);
  if (rc)
    return rc > 0 ? 0 : 2;
  sm_log_configure(s.log_level, s.log_format);
  static app a;
  uv_loop_t *loop = uv_default_loop();
  a.settings = &s;
  a.ready = getenv("TEST_READY") && strcmp(getenv("TEST_READY"), "1") == 0;
  store_mem_config smc = {0};
  if (store_mem_create(loop, &smc, &a.store))
    return 1;
  agent_registry_config rc2 = {s.agent_timeout_s, s.max_agents, s.instance_id};
  if (agent_registry_create(loop, &rc2, &a.registry))
    return 1;
  int n = getenv("TEST_AGENTS") ? atoi(getenv("TEST_AGENTS")) : 0;
  for (int i = 1; i <= n; i++) {
    char id[32], caps[64], ver[16];
    snprintf(id, sizeof(id), "agent-%03d", i);
    snprintf(caps, sizeof(caps), "os=%s,scan_type=nmap", i % 3 ? "linux" : "windows");
    snprintf(ver, sizeof(ver), "1.%d.0", i % 5);
    sm_kv meta[] = {{"hostname", "test-host"}, {"version", ver}, {"capabilities", caps}};
    agent *ag;
    if (agent_registry_attach(a.registry, id, strlen(id), i % 2 ? AGENT_BUSY : AGENT_IDLE, meta, 3,
                              &fake_ops, &a, &ag))
      return 1;
  }
  char host[256];
  int port = 0;
  const char *addr = s.admin_addr ? s.admin_addr : ":8080";
  int err = net_addr_split(addr, host, &port);
  admin_server_config cfg = {
      .addr = addr,
      .host = host,
      .port = port,
      .max_connections = s.admin_max_connections,
      .max_connections_per_addr = s.admin_max_connections_per_ip,
      .max_body_bytes = s.admin_max_body_bytes,
      .max_buffered_bytes = s.admin_max_buffered_bytes,
      .header_timeout_s = s.admin_header_timeout_s,
      .max_header_bytes = s.admin_max_header_bytes,
      .request_timeout_s = s.admin_request_timeout_s,
      .idle_timeout_s = s.admin_idle_timeout_s,
      .tls_enabled = s.admin_tls_enabled,
      .tls_cert_file = s.admin_tls_cert_file,
      .tls_key_file = s.admin_tls_key_file,
      .security = {.api_key = s.admin_api_key,
                   .api_keys_file = s.admin_api_keys_file,
                   .development = s.app_env && strcasecmp(s.app_env, "development") == 0,
                   .key_rps = s.admin_rate_limit_rps,
                   .key_burst = s.admin_rate_limit_burst,
                   .ip_rps = s.admin_rate_limit_ip_rps,
                   .ip_burst = s.admin_rate_limit_ip_burst,
                   .max_clients = s.admin_rate_limit_max_clients},
  };
  admin_api api = {.loop = loop,
                   .registry = a.registry,
                   .instance = s.instance_id,
                   .version = s.app_version,
                   .env = s.app_env,
                   .command_queue_size = s.command_queue_size,
                   .ud = &a,
                   .ready = api_ready,
                   .maintenance = api_maintenance,
                   .set_maintenance = api_set_maintenance,
                   .deps = api_deps};
  if (!err)
    err = admin_server_create(loop, &cfg, &api, &a.admin);
  if (!err)
    err = admin_server_listen(a.admin);
  if (err) {
    fprintf(stderr, "admin-testserver: %s\n", sm_strerror(err));
    return 1;
  }
  /* Signals first: the test may send SIGTERM as soon as it reads the port. */
  uv_signal_init(loop, &a.sigterm);
  uv_signal_init(loop, &a.sigint);
  a.sigterm.data = a.sigint.data = &a;
  uv_signal_start(&a.sigterm, on_signal, SIGTERM);
  uv_signal_start(&a.sigint, on_signal, SIGINT);
  printf("PORT %d\n", admin_server_port(a.admin));
  fflush(stdout);
  uv_run(loop, UV_RUN_DEFAULT);
  int busy = uv_loop_close(loop);
  sm_settings_finish(&s);
  if (!a.closed || busy) {
    fprintf(stderr, "admin-testserver: unclean exit (closed %d, loop busy %d)\n", a.closed, busy);
    return 1;
  }
  return 0;
}
