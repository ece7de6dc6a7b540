/* Tests of util/log: every JSON line parses as one object, control bytes stay escaped. */
#include "t.h"
#include "util/err.h"
#include "util/log.h"
#include "util/utf8.h"

#include <cjson/cJSON.h>

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

/* ---- any bytes in, valid UTF-8 JSON out ---- */

static char rnd_msg[6000], rnd_val[6000], rnd_key[40];
static long long rnd_n;

static void emit_random(void) {
  sm_log_configure(SM_LOG_INFO, SM_LOG_JSON);
  sm_log_info("t", rnd_msg, SM_LS("path", rnd_val), SM_LI("n", rnd_n), SM_LS(rnd_key, rnd_val),
              SM_LB("b", 1));
}

/* One line of valid UTF-8 without raw control bytes, that cJSON reads as one object whose
 * members are the ones written (a cut line keeps a prefix of them). */
static void check_line(const char *out) {
  size_t len = strlen(out);
  T_ASSERT(len > 0 && len <= 4096 && out[len - 1] == '\n');
  T_ASSERT(sm_utf8_valid(out, len));
  for (size_t i = 0; i + 1 < len; i++)
    T_ASSERT((unsigned char)out[i] >= 0x20);
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(out, len, &end, 0);
  T_ASSERT(j != NULL && cJSON_IsObject(j));
  T_ASSERT(end == out + len - 1);
  T_ASSERT(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "ts")));
  T_ASSERT(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "msg")));
  cJSON_Delete(j);
}

static void fill(char *buf, size_t len) {
  /* mostly bytes that make (nearly) valid sequences, escapes and controls likely */
  static const unsigned char pool[] = {'a',  '"',  '\\', '\n', 0x01, 0x7f, 0x80, 0xBF,
                                       0xC2, 0xC0, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xFF,
                                       0xE2, 0x82, 0xAC, 0xA0, 0x9F, 0xF5, 0x90, 'z'};
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (rand() & 1) ? (unsigned char)rand() : pool[(size_t)rand() % sizeof(pool)];
    buf[i] = (char)(c == 0 ? 'x' : c);
  }
  buf[len] = '\0';
}

static void test_random_bytes(void) {
  srand(2024);
  for (int it = 0; it < 3000; it++) {
    /* short lines, and lines cut at every position around the 4 KiB limit */
    size_t big = (size_t)(it % 3 == 0 ? 3900 + rand() % 300 : rand() % 200);
    fill(rnd_msg, (size_t)rand() % 100);
    fill(rnd_val, big);
    fill(rnd_key, 1 + (size_t)rand() % 30);
    rnd_n = rand();
    check_line(capture(emit_random));
  }
}

/* The regression: a request path with \xff\xfe was written as it was. */
static void emit_path(void) {
  sm_log_configure(SM_LOG_INFO, SM_LOG_JSON);
  sm_log_info("admin", "request", SM_LS("path", "/api/agents/\xff\xfe\xc3\xa9"));
}

static void test_invalid_path(void) {
  const char *out = capture(emit_path);
  check_line(out);
  T_ASSERT(strstr(out, "\"path\":\"/api/agents/\xEF\xBF\xBD\xEF\xBF\xBD\xc3\xa9\"") != NULL);
}

static void emit_console_bytes(void) {
  sm_log_configure(SM_LOG_INFO, SM_LOG_CONSOLE);
  sm_log_info("admin", "request", SM_LS("path", "/a/\xff\xc3\xa9"));
}

static void test_console_bytes(void) {
  const char *out = capture(emit_console_bytes);
  T_ASSERT(strstr(out, "path=/a/\\xff\xc3\xa9\n") != NULL);
}

/* A cut line: the long string ends at a character boundary, then the object closes. */
static char long_val[5000];
static void emit_long(void) {
  sm_log_configure(SM_LOG_INFO, SM_LOG_JSON);
  sm_log_info("t", "long", SM_LS("v", long_val), SM_LI("after", 1));
}

static void test_cut(void) {
  for (size_t i = 0; i + 3 < sizeof(long_val); i += 3)
    memcpy(long_val + i, "\xE2\x82\xAC", 3); /* euro signs */
  long_val[sizeof(long_val) - 1] = '\0';
  const char *out = capture(emit_long);
  check_line(out);
  T_ASSERT(strstr(out, "\"after\"") == NULL);
  T_ASSERT(strstr(out, "\xE2\x82\xAC\"}\n") != NULL);
}

int main(void) {
  T_RUN(test_json);
  T_RUN(test_console);
  T_RUN(test_parse);
  T_RUN(test_invalid_path);
  T_RUN(test_console_bytes);
  T_RUN(test_cut);
  T_RUN(test_random_bytes);
  return t_done();
}
