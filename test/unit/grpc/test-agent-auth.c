/* Tests of grpc/agent_auth: the tokens file format and the checks (own token, wildcard,
 * another agent's token, sha256 form, malformed headers, bad files). */
#include "grpc/agent_auth.h"
#include "t.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char path[64];

static void write_file(const char *text) {
  snprintf(path, sizeof(path), "/tmp/sm-tokens-%d", (int)getpid());
  FILE *f = fopen(path, "w");
  T_ASSERT(f != NULL);
  fputs(text, f);
  fclose(f);
}

static void test_checks(void) {
  /* agent-b is given by a digest only (of a token this test never presents) */
  write_file("# agents\n"
             "agent-a: tok-a\n"
             "\n"
             "agent-b:sha256:7d4a5e0f4b0c0c7ba5f5d3a5d0c18ec0b7bdbf4ba3e7f1e7c3a2c8a4e5b1f2d3\n"
             "*:fleet-token\n");
  agent_tokens *t;
  char why[256] = "";
  T_EQ_INT(agent_tokens_load(path, &t, why, sizeof(why)), 0);
  T_EQ_INT(agent_tokens_count(t), 3);
  T_EQ_INT(agent_tokens_check(t, "Bearer tok-a", "agent-a"), 0);
  T_EQ_INT(agent_tokens_check(t, "bearer  tok-a ", "agent-a"), 0);
  T_EQ_INT(agent_tokens_check(t, "Bearer tok-a", "agent-c"), SM_EPERM); /* bound to agent-a */
  T_EQ_INT(agent_tokens_check(t, "Bearer fleet-token", "anyone"), 0);
  T_EQ_INT(agent_tokens_check(t, "Bearer nope", "agent-a"), SM_EAUTH);
  T_EQ_INT(agent_tokens_check(t, NULL, "agent-a"), SM_EAUTH);
  T_EQ_INT(agent_tokens_check(t, "Basic tok-a", "agent-a"), SM_EAUTH);
  T_EQ_INT(agent_tokens_check(t, "Bearer ", "agent-a"), SM_EAUTH);
  T_EQ_INT(agent_tokens_check(t, "Bearer tok-a", NULL), 0); /* Ping: any valid token */
  T_EQ_INT(agent_tokens_check(t, "Bearer nope", NULL), SM_EAUTH);
  agent_tokens_free(t);
  unlink(path);
}

static void test_sha256_form(void) {
  /* sha256 of "hello" */
  write_file("agent-h:sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824\n");
  agent_tokens *t;
  char why[256];
  T_EQ_INT(agent_tokens_load(path, &t, why, sizeof(why)), 0);
  T_EQ_INT(agent_tokens_check(t, "Bearer hello", "agent-h"), 0);
  T_EQ_INT(agent_tokens_check(t, "Bearer Hello", "agent-h"), SM_EAUTH);
  agent_tokens_free(t);
  unlink(path);
}

static void test_bad_files(void) {
  static const char *const bad[] = {
      "no-colon-here\n",
      "agent-a:\n",
      ":token\n",
      "agent-a:sha256:abc\n",
      "agent-a:t1\nagent-a:t2\n",
      "agent-a:sha256:zz24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    write_file(bad[i]);
    agent_tokens *t = NULL;
    char why[256] = "";
    T_EQ_INT(agent_tokens_load(path, &t, why, sizeof(why)), SM_EINVAL);
    T_ASSERT(strstr(why, "line ") != NULL);
    T_ASSERT(t == NULL);
  }
  unlink(path);
  agent_tokens *t = NULL;
  char why[256];
  T_EQ_INT(agent_tokens_load("/nonexistent/tokens", &t, why, sizeof(why)), SM_ENOENT);
}

int main(void) {
  T_RUN(test_checks);
  T_RUN(test_sha256_form);
  T_RUN(test_bad_files);
  return t_done();
}
