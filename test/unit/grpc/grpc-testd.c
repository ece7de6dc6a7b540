/* grpc-testd - the agent listener alone, with a real agent registry, for tests that need real
 * sockets without the whole manager: settings come from the environment as for
 * sirius-manager; it prints "PORT <n>" on stdout once listening, drains on the first
 * SIGTERM/SIGINT and exits 0 after a clean close.
 *
 * Extra, for tests: SIGUSR1 sends a CommandMessage {id "c<n>", type "echo"} to every agent. */
#include "core/registry.h"
#include "core/settings.h"
#include "grpc/server.h"
#include "util/err.h"
#include "util/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static uv_loop_t *loop;
static struct grpc_server *srv;
static agent_registry *reg;
static uv_signal_t sigterm, sigint, sigusr1;
static uv_timer_t drain_timer;
static int signals;

static void closed(void *ud) {
  (void)ud;
  srv = NULL;
  agent_registry_destroy(reg);
  uv_close((uv_handle_t *)&sigterm, NULL);
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_close((uv_handle_t *)&sigusr1, NULL);
  uv_close((uv_handle_t *)&drain_timer, NULL);
}

static void drain_done(uv_timer_t *t) {
  (void)t;
  agent_registry_end_all(reg, SM_ECANCELED, "manager shutting down");
  if (srv)
    grpc_server_close(srv, closed, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)s;
  sm_log_info("testd", "signal", SM_LI("signal", signum));
  if (++signals > 1 || srv == NULL) {
    exit(1);
  }
  grpc_server_drain(srv);
  uv_timer_start(&drain_timer, drain_done, 300, 0);
}

static void on_usr1(uv_signal_t *s, int signum) {
  (void)s;
  (void)signum;
  static int n;
  char id[32];
  snprintf(id, sizeof(id), "c%d", ++n);
  sm_kv params[] = {{"text", "hello"}};
  agent_command cmd = {.id = id, .type = "echo", .params = params, .nparams = 1,
                       .timeout_seconds = 30};
  size_t sent = agent_registry_broadcast(reg, NULL, &cmd);
  sm_log_info("testd", "command broadcast", SM_LS("command_id", id), SM_LI("agents", sent));
}

static void on_result(void *ud, agent *a, const agent_result *r) {
  (void)ud;
  sm_log_info("testd", "result", SM_LS("agent_id", a->id), SM_LS("command_id", r->command_id),
              SM_LS("status", r->status), SM_LI("ndata", r->ndata));
}

static void on_register(void *ud, agent *a, int replaced) {
  (void)ud;
  char caps[512] = "";
  size_t n = 0;
  for (size_t i = 0; i < a->ncaps && n < sizeof(caps); i++)
    n += (size_t)snprintf(caps + n, sizeof(caps) - n, "%s%s=%s", i ? "," : "", a->caps[i].key,
                          a->caps[i].value);
  sm_log_info("testd", "agent attached", SM_LS("agent_id", a->id), SM_LS("hostname", a->hostname),
              SM_LS("version", a->version), SM_LS("status", agent_status_name(a->status)),
              SM_LS("capabilities", caps), SM_LB("replaced", replaced));
}

static void on_update(void *ud, agent *a) {
  (void)ud;
  sm_log_info("testd", "agent updated", SM_LS("agent_id", a->id),
               SM_LS("status", agent_status_name(a->status)), SM_LD("cpu", a->cpu_usage),
               SM_LI("active", a->active_commands), SM_LI("messages", a->messages));
}

int main(int argc, char **argv) {
  sm_settings s;
  int rc = sm_settings_load(&s, argc, argv);
  if (rc)
    return rc == 1 ? 0 : 2;
  sm_log_configure(s.log_level, s.log_format);
  signal(SIGPIPE, SIG_IGN); /* a peer gone mid-write is an error code, not a death */
  loop = uv_default_loop();
  agent_registry_config rc_cfg = {.agent_timeout_s = s.agent_timeout_s,
                                  .max_agents = s.max_agents,
                                  .instance = "testd"};
  int err = agent_registry_create(loop, &rc_cfg, &reg);
  if (!err) {
    agent_registry_events ev = {
        .on_register = on_register, .on_result = on_result, .on_update = on_update};
    agent_registry_set_events(reg, &ev);
    err = agent_registry_start(reg);
  }
  if (!err)
    err = grpc_server_create(loop, &s, reg, &srv);
  if (!err)
    err = grpc_server_listen(srv);
  if (err) {
    fprintf(stderr, "grpc-testd: %s\n", sm_err_name(err));
    sm_settings_finish(&s);
    return 1;
  }
  printf("PORT %d\n", grpc_server_port(srv));
  fflush(stdout);
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigusr1);
  uv_timer_init(loop, &drain_timer);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigusr1, on_usr1, SIGUSR1);
  uv_run(loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(loop);
  sm_settings_finish(&s);
  if (rc) {
    fprintf(stderr, "grpc-testd: loop closed with handles open\n");
    return 1;
  }
  return 0;
}
