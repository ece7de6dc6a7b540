/* Tests of loadtest/scenario and loadtest/report: flags, config file and environment with
 * their precedence, the type mix, bad values naming the flag, latency percentiles and the
 * report formats. */
#include "loadtest/report.h"
#include "loadtest/scenario.h"
#include "t.h"
#include "util/err.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *env_vals[8][2];

static const char *fake_env(const char *name) {
  for (size_t i = 0; i < 8 && env_vals[i][0]; i++)
    if (strcmp(env_vals[i][0], name) == 0)
      return env_vals[i][1];
  return NULL;
}

static int parse(lt_scenario *s, const char *const *argv, int argc, char *err) {
  lt_scenario_defaults(s);
  return lt_scenario_parse(s, argc, argv, fake_env, err, LT_ERRBUF);
}

static void test_types(void) {
  lt_type_weight t[LT_TYPES_MAX];
  size_t n = 0;
  char err[LT_ERRBUF];
  T_EQ_INT(lt_types_parse("echo:70,sleep:20,scan", t, &n, err, sizeof(err)), 0);
  T_EQ_INT(n, 3);
  T_EQ_STR(t[0].name, "echo");
  T_EQ_INT(t[0].weight, 70);
  T_EQ_STR(t[2].name, "scan");
  T_EQ_INT(t[2].weight, 1); /* weight defaults to 1 */
  T_EQ_INT(lt_types_parse("echo:0", t, &n, err, sizeof(err)), SM_EINVAL);
  T_EQ_INT(lt_types_parse("", t, &n, err, sizeof(err)), SM_EINVAL);
  T_EQ_INT(lt_types_parse("echo:x", t, &n, err, sizeof(err)), SM_EINVAL);
}

static void test_flags_config_env(void) {
  char path[64];
  snprintf(path, sizeof(path), "/tmp/sm-lt-%d.conf", (int)getpid());
  FILE *f = fopen(path, "w");
  T_ASSERT(f != NULL);
  fputs("# scenario\nagents=7\ncommands=70\nrate=5\n", f);
  fclose(f);
  env_vals[0][0] = "LOADTEST_AGENTS";
  env_vals[0][1] = "3";
  env_vals[1][0] = "SERVER_ADDR";
  env_vals[1][1] = "127.0.0.1:1234";
  env_vals[2][0] = "LOADTEST_RATE";
  env_vals[2][1] = "9";
  lt_scenario s;
  char err[LT_ERRBUF] = "";
  const char *argv[] = {"lt", "--config", path, "--rate", "11", "--format", "json"};
  T_EQ_INT(parse(&s, argv, 7, err), 0);
  T_EQ_INT(s.agents, 7);  /* config over environment */
  T_ASSERT(s.rate == 11); /* flag over config */
  T_EQ_INT(lt_scenario_total(&s), 70);
  T_EQ_INT(s.nservers, 1);
  T_EQ_STR(s.servers[0], "127.0.0.1:1234"); /* the CONTRACT name of the setting */
  T_EQ_INT(s.format, LT_FORMAT_JSON);
  memset(env_vals, 0, sizeof(env_vals));
  unlink(path);
}

static void test_bad_values(void) {
  static const char *const cases[][3] = {
      {"--agents", "x", "--agents"},   {"--types", "echo:0", "--types"},
      {"--format", "xml", "--format"}, {"--submit", "smtp", "--submit"},
      {"--batch", "5000", "--batch"},  {"--fail-rate", "2", "--fail-rate"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    lt_scenario s;
    char err[LT_ERRBUF] = "";
    const char *argv[] = {"lt", cases[i][0], cases[i][1]};
    T_EQ_INT(parse(&s, argv, 3, err), SM_EINVAL);
    T_ASSERT(strstr(err, cases[i][2]) != NULL);
    T_ASSERT(strchr(err, '\n') == NULL); /* one line */
  }
  lt_scenario s;
  char err[LT_ERRBUF] = "";
  const char *unknown[] = {"lt", "--no-such-flag"};
  T_EQ_INT(parse(&s, unknown, 2, err), SM_EINVAL);
}

static void test_latency(void) {
  double ms[100];
  for (int i = 0; i < 100; i++)
    ms[i] = 100 - i; /* 100 .. 1, unsorted */
  lt_latency l;
  lt_latency_compute(ms, 100, &l);
  T_EQ_INT(l.n, 100);
  T_ASSERT(l.min == 1 && l.max == 100);
  T_ASSERT(l.avg == 50.5);
  T_ASSERT(l.p50 >= 50 && l.p50 <= 51);
  T_ASSERT(l.p99 >= 99 && l.p99 <= 100);
  T_ASSERT(l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max);
  lt_latency_compute(ms, 0, &l);
  T_EQ_INT(l.n, 0);
}

static void test_report_formats(void) {
  lt_report r;
  memset(&r, 0, sizeof(r));
  r.submit = "rest";
  r.total = 10;
  r.successful = 9;
  r.failed = 1;
  lt_count_add(r.by_status, &r.nby_status, 8, "completed", 9);
  lt_count_add(r.by_status, &r.nby_status, 8, "failed", 1);
  lt_count_add(r.errors, &r.nerrors, LT_KINDS_MAX, "http_429", 2);
  lt_count_add(r.errors, &r.nerrors, LT_KINDS_MAX, "http_429", 3);
  T_EQ_INT(r.nerrors, 1);
  T_EQ_INT(r.errors[0].n, 5); /* counts of one kind add up */
  lt_fault_report fr = {.target = "agents",
                        .action = "blackhole",
                        .at = 1,
                        .duration = 2,
                        .start_s = 1,
                        .end_s = 3,
                        .detect_s = 0.3,
                        .recover_s = -1,
                        .submitted = 4,
                        .error = "a \"quoted\" <why>"};
  lt_tl_point tl[2] = {{.t = 0, .ok_per_s = 10}, {.t = 0.1, .ok_per_s = 5, .lat_max_ms = 40}};
  r.faults = &fr;
  r.nfaults = 1;
  r.timeline = tl;
  r.ntimeline = 2;
  r.timeline_step_s = 0.1;
  r.no_loss = 1;
  for (int fmt = LT_FORMAT_TEXT; fmt <= LT_FORMAT_HTML; fmt++) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    T_ASSERT(f != NULL);
    T_EQ_INT(lt_report_write(f, &r, (enum lt_format)fmt), 0);
    fclose(f);
    T_ASSERT(len > 0);
    if (fmt == LT_FORMAT_JSON) {
      cJSON *j = cJSON_Parse(buf);
      T_ASSERT(j != NULL);
      T_EQ_INT(cJSON_GetObjectItem(j, "total")->valuedouble, 10);
      T_EQ_INT(cJSON_GetObjectItem(j, "successful")->valuedouble, 9);
      const cJSON *f0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "faults"), 0);
      T_ASSERT(f0 != NULL);
      T_ASSERT(cJSON_GetObjectItem(f0, "time_to_detect_s")->valuedouble == 0.3);
      T_ASSERT(cJSON_IsNull(cJSON_GetObjectItem(f0, "time_to_recover_s")));
      T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "no_loss"), "pass")));
      T_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "timeline"), "rows")),
               2);
      cJSON_Delete(j);
      T_ASSERT(strstr(buf, "http_429") != NULL);
    }
    if (fmt == LT_FORMAT_CSV) /* the fault table follows the summary row, quotes doubled */
      T_ASSERT(strstr(buf, "\n\nfault,target,action") && strstr(buf, "\"a \"\"quoted\"\" <why>\""));
    if (fmt == LT_FORMAT_HTML) {
      T_ASSERT(strncmp(buf, "<!DOCTYPE html>", 15) == 0 && strstr(buf, "<svg") &&
               strstr(buf, "class=\"fault\"") && !strstr(buf, "<script"));
      T_ASSERT(strstr(buf, "&lt;why&gt;") && !strstr(buf, "<why>")); /* escaped */
    }
    free(buf);
  }
}

static void test_chaos_specs(void) {
  lt_proxy_spec ps;
  char err[LT_ERRBUF] = "";
  T_EQ_INT(lt_proxy_spec_parse("agents=127.0.0.1:0->127.0.0.1:50051", &ps, err, sizeof(err)), 0);
  T_EQ_STR(ps.name, "agents");
  T_EQ_STR(ps.listen, "127.0.0.1:0");
  T_EQ_STR(ps.upstream, "127.0.0.1:50051");
  T_EQ_INT(lt_proxy_spec_parse("agents=127.0.0.1:0", &ps, err, sizeof(err)), SM_EINVAL);
  T_EQ_INT(lt_proxy_spec_parse("a b=1.2.3.4:1->1.2.3.4:2", &ps, err, sizeof(err)), SM_EINVAL);
  lt_fault_spec f;
  T_EQ_INT(lt_fault_spec_parse("at=1.5 duration=2 target=agents action=delay delay_ms=200", &f, err,
                               sizeof(err)),
           0);
  T_ASSERT(f.at == 1.5 && f.duration == 2 && f.delay_ms == 200 && f.action == LT_ACT_DELAY);
  T_EQ_INT(lt_fault_spec_parse("at=1,target=manager,action=kill9,pid_file=/run/m.pid,"
                               "restart_cmd='systemctl start sirius-manager'",
                               &f, err, sizeof(err)),
           0);
  T_EQ_STR(f.restart_cmd, "systemctl start sirius-manager");
  T_ASSERT(f.duration == 0);
  T_EQ_INT(lt_fault_spec_parse("at=0 duration=1 target=m action=cpu_pressure threads=3", &f, err,
                               sizeof(err)),
           0);
  T_EQ_INT(f.threads, 3);
  T_EQ_INT(f.mb, 64);
  static const char *const bad[] = {
      "at=1 target=agents action=blackhole",                     /* no duration */
      "at=1 duration=1 target=agents action=delay",              /* no delay_ms */
      "at=1 duration=1 target=agents action=bandwidth",          /* no bytes_per_s */
      "at=1 target=manager action=kill9",                        /* nothing to kill */
      "at=1 target=manager action=restart pid=10",               /* nothing to restart with */
      "at=1 duration=1 target=m action=cpu_pressure threads=65", /* over the limit */
      "at=1 duration=1 target=m action=memory_pressure mb=70000",
      "at=1 duration=1 target=m action=nope",
      "duration=1 target=m action=drop",
      "at=1 duration=1 target=m action=drop bogus=1",
      "at=1 duration=1 target=m action=drop cmd='unterminated",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    err[0] = '\0';
    T_EQ_INT(lt_fault_spec_parse(bad[i], &f, err, sizeof(err)), SM_EINVAL);
    T_ASSERT(err[0] != '\0' && strchr(err, '\n') == NULL);
  }
  /* proxy actions must name a --proxy; flags repeat */
  lt_scenario s;
  const char *argv[] = {"lt",
                        "--proxy",
                        "a=127.0.0.1:0->127.0.0.1:1",
                        "--proxy",
                        "b=127.0.0.1:0->127.0.0.1:2",
                        "--fault",
                        "at=1 duration=1 target=b action=reset",
                        "--fault",
                        "at=2 duration=1 target=c action=reset"};
  T_EQ_INT(parse(&s, argv, 9, err), SM_EINVAL);
  T_ASSERT(strstr(err, "--fault") && strstr(err, "\"c\""));
  T_EQ_INT(parse(&s, argv, 7, err), 0);
  T_EQ_INT(s.nproxies, 2);
  T_EQ_INT(s.nfaults, 1);
  const char *dup[] = {"lt", "--proxy", "a=127.0.0.1:0->127.0.0.1:1", "--proxy",
                       "a=127.0.0.1:0->127.0.0.1:2"};
  T_EQ_INT(parse(&s, dup, 5, err), SM_EINVAL);
  /* the automatic deadline covers the faults and the drain */
  lt_scenario_defaults(&s);
  s.duration = 10;
  s.faults[0] = f;
  s.faults[0].at = 100;
  s.faults[0].duration = 5;
  s.nfaults = 1;
  T_ASSERT(lt_scenario_deadline(&s) >= 105 + s.drain_timeout);
  s.timeout = 7;
  T_ASSERT(lt_scenario_deadline(&s) == 7);
}

int main(void) {
  T_RUN(test_types);
  T_RUN(test_flags_config_env);
  T_RUN(test_bad_values);
  T_RUN(test_latency);
  T_RUN(test_report_formats);
  T_RUN(test_chaos_specs);
  return t_done();
}
