/* Unit tests of client/exec.c: what the agent decides for each command. */
#include "client/exec.h"
#include "t.h"

/* A CommandMessage with up to 4 params. */
typedef struct cmd_fixture {
  Scan__CommandMessage m;
  Scan__CommandMessage__ParamsEntry e[4];
  Scan__CommandMessage__ParamsEntry *p[4];
} cmd_fixture;

static Scan__CommandMessage *mk(cmd_fixture *f, const char *type, const char *k1, const char *v1,
                                int64_t timeout) {
  scan__command_message__init(&f->m);
  f->m.id = (char *)"c1";
  f->m.type = (char *)type;
  f->m.timeout_seconds = timeout;
  if (k1) {
    scan__command_message__params_entry__init(&f->e[0]);
    f->e[0].key = (char *)k1;
    f->e[0].value = (char *)v1;
    f->p[0] = &f->e[0];
    f->m.params = f->p;
    f->m.n_params = 1;
  }
  return &f->m;
}

static client_exec_cfg cfg(void) {
  client_exec_cfg c = {
      .allow_exec = 0, .max_concurrent = 2, .scan_mean_ms = 1000, .scan_dist = CLIENT_DIST_FIXED};
  return c;
}

static void test_types(void) {
  client_exec_cfg c = cfg();
  client_rng r;
  client_plan p;
  cmd_fixture f;
  client_rng_seed(&r, 1);
  client_exec_plan(&c, &r, mk(&f, "echo", "a", "b", 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_NOW);
  client_exec_plan(&c, &r, mk(&f, "status", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_NOW);
  client_exec_plan(&c, &r, mk(&f, "sleep", "seconds", "1.5", 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_TIMED);
  T_EQ_INT(p.duration_ms, 1500);
  client_exec_plan(&c, &r, mk(&f, "scan", "target", "10.0.0.1", 7), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_TIMED);
  T_EQ_INT(p.duration_ms, 1000);
  T_EQ_INT(p.timeout_ms, 7000);
  T_EQ_STR(p.arg, "10.0.0.1");
  client_exec_plan(&c, &r, mk(&f, "update", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_TIMED);
  client_exec_plan(&c, &r, mk(&f, "cancel", "command_id", "x", 0), 5, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_CANCEL); /* even when busy */
  T_EQ_STR(p.arg, "x");
}

static void test_rejections(void) {
  client_exec_cfg c = cfg();
  client_rng r;
  client_plan p;
  cmd_fixture f;
  client_rng_seed(&r, 1);
  client_exec_plan(&c, &r, mk(&f, "frob", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  T_ASSERT(strstr(p.error, "unknown") != NULL);
  client_exec_plan(&c, &r, mk(&f, "", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  client_exec_plan(&c, &r, mk(&f, "exec", "command", "true", 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  T_ASSERT(strstr(p.error, "--allow-exec") != NULL);
  c.allow_exec = 1;
  client_exec_plan(&c, &r, mk(&f, "exec", "command", "true", 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_EXEC);
  client_exec_plan(&c, &r, mk(&f, "exec", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  client_exec_plan(&c, &r, mk(&f, "sleep", "seconds", "-1", 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  client_exec_plan(&c, &r, mk(&f, "sleep", "seconds", "nan", 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  client_exec_plan(&c, &r, mk(&f, "scan", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  client_exec_plan(&c, &r, mk(&f, "cancel", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  client_exec_plan(&c, &r, mk(&f, "echo", NULL, NULL, 0), 2, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
  T_EQ_STR(p.error, "busy");
}

static void test_failure_modes(void) {
  client_exec_cfg c = cfg();
  client_rng r;
  client_plan p;
  cmd_fixture f;
  client_rng_seed(&r, 1);
  c.fail_rate = 1;
  client_exec_plan(&c, &r, mk(&f, "echo", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_NOW);
  T_EQ_INT(p.fail, 1);
  c.hang_rate = 1;
  client_exec_plan(&c, &r, mk(&f, "echo", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_HANG);
  c.disconnect_rate = 1;
  client_exec_plan(&c, &r, mk(&f, "echo", NULL, NULL, 0), 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_DISCONNECT);
  /* rates are honoured roughly */
  c = cfg();
  c.fail_rate = 0.3;
  int fails = 0;
  for (int i = 0; i < 10000; i++) {
    client_exec_plan(&c, &r, mk(&f, "echo", NULL, NULL, 0), 0, &p);
    fails += p.fail;
  }
  T_ASSERT(fails > 2700 && fails < 3300);
}

static void test_scan_distributions(void) {
  client_exec_cfg c = cfg();
  client_rng r;
  double sum = 0;
  client_rng_seed(&r, 3);
  T_EQ_INT(client_scan_duration(&c, &r), 1000);
  c.scan_dist = CLIENT_DIST_UNIFORM;
  for (int i = 0; i < 20000; i++) {
    uint64_t d = client_scan_duration(&c, &r);
    T_ASSERT(d <= 2000);
    sum += (double)d;
  }
  T_ASSERT(sum / 20000 > 950 && sum / 20000 < 1050);
  c.scan_dist = CLIENT_DIST_EXP;
  sum = 0;
  for (int i = 0; i < 20000; i++) {
    uint64_t d = client_scan_duration(&c, &r);
    T_ASSERT(d <= 100000);
    sum += (double)d;
  }
  T_ASSERT(sum / 20000 > 900 && sum / 20000 < 1100);
}

static void test_param_lookup(void) {
  cmd_fixture f;
  Scan__CommandMessage *m = mk(&f, "echo", "k", "v", 0);
  T_EQ_STR(client_cmd_param(m, "k"), "v");
  T_ASSERT(client_cmd_param(m, "missing") == NULL);
}

static void test_hello_command(void) {
  client_exec_cfg c = cfg();
  client_rng r;
  client_plan p;
  client_hello_cmd hc;
  client_rng_seed(&r, 1);
  client_hello_command("internal:status", 1, &hc);
  T_EQ_STR(hc.msg.type, "status");
  T_EQ_STR(hc.msg.id, "internal:status");
  client_exec_plan(&c, &r, &hc.msg, 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_NOW);
  /* with exec allowed a line runs in the shell */
  client_hello_command("uname -a", 1, &hc);
  T_EQ_STR(hc.msg.type, "exec");
  T_EQ_STR(hc.msg.id, "uname -a");
  c.allow_exec = 1;
  client_exec_plan(&c, &r, &hc.msg, 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_EXEC);
  T_EQ_STR(p.arg, "uname -a");
  /* without, it is simulated as a scan of that line */
  client_hello_command("nmap 10.0.0.1", 0, &hc);
  T_EQ_STR(hc.msg.type, "scan");
  c.allow_exec = 0;
  client_exec_plan(&c, &r, &hc.msg, 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_TIMED);
  T_EQ_INT(p.duration_ms, 1000);
  T_EQ_STR(p.arg, "nmap 10.0.0.1");
  /* an empty line is refused like a scan without a target */
  client_hello_command("", 0, &hc);
  client_exec_plan(&c, &r, &hc.msg, 0, &p);
  T_EQ_INT(p.kind, CLIENT_PLAN_REJECT);
}

static void test_hello_result(void) {
  Scan__CommandResult__DataEntry e[3];
  const Scan__CommandResult__DataEntry *d[3];
  const char *kv[3][2] = {{"exit_code", "7"}, {"stdout", "out\n"}, {"x", "y"}};
  for (int i = 0; i < 3; i++) {
    scan__command_result__data_entry__init(&e[i]);
    e[i].key = (char *)kv[i][0];
    e[i].value = (char *)kv[i][1];
    d[i] = &e[i];
  }
  char buf[64];
  T_EQ_INT(client_hello_exit_code("failed", d, 3), 7);
  T_EQ_STR(client_hello_output(d, 3, buf, sizeof(buf)), "out\n");
  /* no data: 0 for completed, 1 for anything else */
  T_EQ_INT(client_hello_exit_code("completed", NULL, 0), 0);
  T_EQ_INT(client_hello_exit_code("rejected", NULL, 0), 1);
  T_EQ_STR(client_hello_output(NULL, 0, buf, sizeof(buf)), "");
  /* a failed command never reports 0 (the manager would call it completed), nor a completed
   * one a non-zero code */
  e[0].value = (char *)"0";
  T_EQ_INT(client_hello_exit_code("failed", d, 1), 1);
  e[0].value = (char *)"3";
  T_EQ_INT(client_hello_exit_code("completed", d, 1), 0);
  e[0].value = (char *)"junk";
  T_EQ_INT(client_hello_exit_code("failed", d, 1), 1);
  /* simulated work: its data as key=value lines, cut to the buffer */
  T_EQ_STR(client_hello_output(&d[2], 1, buf, sizeof(buf)), "x=y\n");
  e[2].value = (char *)"0123456789";
  T_EQ_STR(client_hello_output(&d[2], 1, buf, 8), "x=01234");
  const Scan__CommandResult__DataEntry *two[2] = {d[2], d[2]};
  T_EQ_STR(client_hello_output(two, 2, buf, 8), "x=01234");
}

int main(void) {
  T_RUN(test_hello_command);
  T_RUN(test_hello_result);
  T_RUN(test_types);
  T_RUN(test_rejections);
  T_RUN(test_failure_modes);
  T_RUN(test_scan_distributions);
  T_RUN(test_param_lookup);
  return t_done();
}
