/* sirius-agent - the test agent: one or many simulated agents connected to a manager. Flags and
 * environment are parsed by client/opts.c; the agents live in client/agent.c. */
#include "client/agent.h"
#include "client/opts.h"
#include "util/err.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* The program's state, reachable from every handle's data pointer. */
typedef struct agent_main {
  uv_loop_t *loop;
  client_fleet *fleet;
  uv_signal_t sigterm, sigint;
  uv_timer_t stats;
  int stats_on;
  int stopping;
} agent_main;

static const char *env_get(const char *name) {
  return getenv(name);
}

static void print_stats(agent_main *m) {
  client_stats s;
  client_fleet_stats(m->fleet, &s);
  printf("stats agents=%u connected=%u connects=%llu disconnects=%llu commands=%llu "
         "results=%llu completed=%llu failed=%llu cancelled=%llu rejected=%llu heartbeats=%llu\n",
         s.agents, s.connected, (unsigned long long)s.connects, (unsigned long long)s.disconnects,
         (unsigned long long)s.commands, (unsigned long long)s.results,
         (unsigned long long)s.completed, (unsigned long long)s.failed,
         (unsigned long long)s.cancelled, (unsigned long long)s.rejected,
         (unsigned long long)s.heartbeats);
  fflush(stdout);
}

static void stats_cb(uv_timer_t *t) {
  print_stats(t->data);
}

static void fleet_done(client_fleet *f, void *ud) {
  agent_main *m = ud;
  (void)f;
  uv_close((uv_handle_t *)&m->sigterm, NULL);
  uv_close((uv_handle_t *)&m->sigint, NULL);
  if (m->stats_on)
    uv_close((uv_handle_t *)&m->stats, NULL);
}

static void signal_cb(uv_signal_t *s, int signum) {
  agent_main *m = s->data;
  if (m->stopping) {
    sm_log_warn("agent", "second signal, exiting at once", SM_LI("signal", signum));
    exit(1);
  }
  m->stopping = 1;
  sm_log_info("agent", "stopping", SM_LI("signal", signum));
  if (m->stats_on)
    uv_timer_stop(&m->stats);
  client_fleet_stop(m->fleet, fleet_done, m);
}

static void configure_log(void) {
  enum sm_log_level lvl = SM_LOG_INFO;
  enum sm_log_format fmt = SM_LOG_CONSOLE;
  const char *v = getenv("SIRIUS_LOG_LEVEL");
  if (v && *v && sm_log_level_parse(v, &lvl)) {
    fprintf(stderr, "sirius-agent: SIRIUS_LOG_LEVEL: expected debug, info, warn or error\n");
    exit(2);
  }
  v = getenv("SIRIUS_LOG_FORMAT");
  if (v && *v && sm_log_format_parse(v, &fmt)) {
    fprintf(stderr, "sirius-agent: SIRIUS_LOG_FORMAT: expected json or console\n");
    exit(2);
  }
  sm_log_configure(lvl, fmt);
}

int main(int argc, char **argv) {
  client_opts o;
  agent_main m;
  char err[CLIENT_ERRBUF];
  int rc;

  client_opts_defaults(&o);
  if (client_opts_parse(&o, argc, (const char *const *)argv, env_get, err, sizeof(err))) {
    fprintf(stderr, "sirius-agent: %s\n", err);
    return 2;
  }
  if (o.action == CLIENT_HELP) {
    fputs(client_opts_usage(), stdout);
    return 0;
  }
  if (o.action == CLIENT_VERSION) {
    printf("sirius-agent %s\n", SM_VERSION);
    return 0;
  }
  configure_log();

  memset(&m, 0, sizeof(m));
  m.loop = uv_default_loop();
  rc = client_fleet_create(m.loop, &o, &m.fleet, err, sizeof(err));
  if (rc) {
    fprintf(stderr, "sirius-agent: %s\n", err);
    return 2;
  }
  uv_signal_init(m.loop, &m.sigterm);
  uv_signal_init(m.loop, &m.sigint);
  m.sigterm.data = m.sigint.data = &m;
  uv_signal_start(&m.sigterm, signal_cb, SIGTERM);
  uv_signal_start(&m.sigint, signal_cb, SIGINT);
  if (o.stats_interval > 0) {
    uint64_t ms = (uint64_t)(o.stats_interval * 1000.0 + 0.5);
    uv_timer_init(m.loop, &m.stats);
    m.stats.data = &m;
    uv_timer_start(&m.stats, stats_cb, ms ? ms : 1, ms ? ms : 1);
    m.stats_on = 1;
  }
  client_fleet_start(m.fleet);
  uv_run(m.loop, UV_RUN_DEFAULT);
  if (o.stats_interval > 0)
    print_stats(&m);
  client_fleet_destroy(m.fleet);
  uv_loop_close(m.loop);
  sm_log_info("agent", "stopped", SM_LI("code", 0));
  return 0;
}
