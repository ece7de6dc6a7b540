/* Tests of util/log: every JSON line parses as one object, control bytes stay escaped. */
#include "t.h"
#include "util/err.h"
#include "util/log.h"

#include <unistd.h>

static char *capture(void (*fn)(void)) {
  int fds[2];
  T_EQ_INT(pipe(fds), 0);
  int saved = dup(STDERR_FILENO);
  dup2(fds[1], STDERR_FILENO);
  fn();
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fds[1]);
  static char buf[16384];
  ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
  close(fds[0]);
  buf[n > 0 ? n : 0] = '\0';
  return buf;
}

static void emit_json(void) {
  sm_log_configure(SM_LOG_INFO, SM_LOG_JSON);
  sm_log_debug("t", "hidden", SM_LI("n", 1));
  sm_log_info("t", "line\nbreak \"q\"",
              SM_LS("k", "a\x01"
                         "b"),
              SM_LI("n", -5), SM_LD("d", 0.5), SM_LB("b", 1), SM_LS("null", NULL),
              SM_LE(SM_ENOENT));
}

static void test_json(void) {
  const char *out = capture(emit_json);
  T_ASSERT(strstr(out, "hidden") == NULL);
  T_ASSERT(strstr(out, "\"msg\":\"line\\nbreak \\\"q\\\"\"") != NULL);
  T_ASSERT(strstr(out, "\"k\":\"a\\u0001b\"") != NULL);
  T_ASSERT(strstr(out, "\"n\":-5") != NULL);
  T_ASSERT(strstr(out, "\"d\":0.5") != NULL);
  T_ASSERT(strstr(out, "\"b\":true") != NULL);
  T_ASSERT(strstr(out, "\"null\":null") != NULL);
  T_ASSERT(strstr(out, "\"error\":\"SM_ENOENT\"") != NULL);
  T_EQ_INT(strchr(out, '\n') - out + 1, (long)strlen(out)); /* exactly one line */
}

static void emit_console(void) {
  sm_log_configure(SM_LOG_DEBUG, SM_LOG_CONSOLE);
  sm_log_warn("registry", "agent pruned", SM_LS("agent_id", "a b"), SM_LI("n", 2));
}

static void test_console(void) {
  const char *out = capture(emit_console);
  T_ASSERT(strstr(out, "warn  registry: agent pruned agent_id=\"a b\" n=2\n") != NULL);
}

static void test_parse(void) {
  enum sm_log_level l;
  enum sm_log_format f;
  T_EQ_INT(sm_log_level_parse("WARN", &l), 0);
  T_EQ_INT(l, SM_LOG_WARN);
  T_EQ_INT(sm_log_level_parse("verbose", &l), SM_EINVAL);
  T_EQ_INT(sm_log_format_parse("console", &f), 0);
  T_EQ_INT(f, SM_LOG_CONSOLE);
  T_EQ_INT(sm_log_format_parse("xml", &f), SM_EINVAL);
}

int main(void) {
  T_RUN(test_json);
  T_RUN(test_console);
  T_RUN(test_parse);
  return t_done();
}
