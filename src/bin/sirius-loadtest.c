/* sirius-loadtest - the load and chaos harness: simulated agents in this process, commands
 * submitted to a manager, a report of latency, throughput and failure handling. Settings are
 * parsed by loadtest/scenario.c; the run lives in loadtest/run.c. */
#include "loadtest/report.h"
#include "loadtest/run.h"
#include "loadtest/scenario.h"
#include "util/err.h"
#include "util/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* The program's state, reachable from the handles' data pointers. */
typedef struct lt_main {
  lt_scenario sc;
  lt_run *run;
  uv_signal_t sigterm, sigint;
  int signals;
  int exit_code;
} lt_main;

static const char *env_get(const char *name) {
  return getenv(name);
}

static void configure_log(void) {
  /* The report is the output; the agents' expected chaos warnings only when asked for. */
  enum sm_log_level lvl = SM_LOG_ERROR;
  enum sm_log_format fmt = SM_LOG_CONSOLE;
  const char *v = getenv("SIRIUS_LOG_LEVEL");
  if (v && *v && sm_log_level_parse(v, &lvl)) {
    fprintf(stderr, "sirius-loadtest: SIRIUS_LOG_LEVEL: expected debug, info, warn or error\n");
    exit(2);
  }
  v = getenv("SIRIUS_LOG_FORMAT");
  if (v && *v && sm_log_format_parse(v, &fmt)) {
    fprintf(stderr, "sirius-loadtest: SIRIUS_LOG_FORMAT: expected json or console\n");
    exit(2);
  }
  sm_log_configure(lvl, fmt);
}

static void run_done(lt_run *r, void *ud) {
  lt_main *m = ud;
  const lt_report *rep = lt_run_report(r);
  FILE *f = stdout;
  if (m->sc.output[0]) {
    f = fopen(m->sc.output, "w");
    if (f == NULL) {
      fprintf(stderr, "sirius-loadtest: --output: cannot open \"%s\": %s\n", m->sc.output,
              strerror(errno));
      f = stdout;
      m->exit_code = 2;
    }
  }
  if (lt_report_write(f, rep, m->sc.format)) {
    fprintf(stderr, "sirius-loadtest: cannot write the report\n");
    m->exit_code = 2;
  }
  if (f != stdout)
    fclose(f);
  /* Exit 3 when the run could not be carried out (manager unreachable, deadline); 1 when the
   * no-loss check failed (an accepted command never final, or final twice). */
  if (rep->fatal[0]) {
    fprintf(stderr, "sirius-loadtest: %s\n", rep->fatal);
    if (m->exit_code == 0)
      m->exit_code = 3;
  }
  if (m->exit_code == 0 && !rep->no_loss)
    m->exit_code = 1;
  uv_close((uv_handle_t *)&m->sigterm, NULL);
  uv_close((uv_handle_t *)&m->sigint, NULL);
}

static void signal_cb(uv_signal_t *s, int signum) {
  lt_main *m = s->data;
  if (m->signals++) {
    fprintf(stderr, "sirius-loadtest: second signal, exiting at once\n");
    exit(130);
  }
  fprintf(stderr, "sirius-loadtest: signal %d, stopping submission and reporting\n", signum);
  lt_run_abort(m->run);
}

int main(int argc, char **argv) {
  lt_main m;
  char err[LT_ERRBUF] = "";
  memset(&m, 0, sizeof(m));
  lt_scenario_defaults(&m.sc);
  if (lt_scenario_parse(&m.sc, argc, (const char *const *)argv, env_get, err, sizeof(err))) {
    fprintf(stderr, "sirius-loadtest: %s\n", err);
    return 2;
  }
  if (m.sc.action == LT_HELP) {
    fputs(lt_scenario_usage(), stdout);
    return 0;
  }
  if (m.sc.action == LT_VERSION) {
    printf("sirius-loadtest %s\n", SM_VERSION);
    return 0;
  }
  configure_log();
  uv_loop_t *loop = uv_default_loop();
  if (lt_run_create(loop, &m.sc, m.sc.report_interval > 0 ? stderr : NULL, &m.run, err,
                    sizeof(err))) {
    fprintf(stderr, "sirius-loadtest: %s\n", err);
    return 2;
  }
  uv_signal_init(loop, &m.sigterm);
  uv_signal_init(loop, &m.sigint);
  m.sigterm.data = m.sigint.data = &m;
  uv_signal_start(&m.sigterm, signal_cb, SIGTERM);
  uv_signal_start(&m.sigint, signal_cb, SIGINT);
  lt_run_start(m.run, run_done, &m);
  uv_run(loop, UV_RUN_DEFAULT);
  lt_run_destroy(m.run);
  uv_loop_close(loop);
  return m.exit_code;
}
