/* test-command.c - the command model: validation with field-naming errors, limits, JSON forms,
 * ids, statuses and transitions. */
#include "model/command.h"
#include "util/err.h"
#include "../t.h"

static int parse(const char *json, sm_command **c, char *err) {
  return command_parse_text(json, strlen(json), c, err, 128);
}

static void test_parse_ok(void) {
  sm_command *c;
  char err[128];
  T_EQ_INT(parse("{\"id\":\"x1\",\"type\":\"scan\",\"params\":{\"target\":\"10.0.0.5\",\"n\":3,"
                 "\"f\":1.5,\"b\":true},\"priority\":7,\"timeout_seconds\":60,"
                 "\"deadline\":\"2026-11-28T12:00:00Z\",\"capabilities\":{\"os\":\"linux\"}}",
                 &c, err),
           0);
  T_EQ_STR(c->id, "x1");
  T_EQ_INT(c->nparams, 4);
  T_EQ_STR(c->params[1].value, "3");
  T_EQ_STR(c->params[2].value, "1.5");
  T_EQ_STR(c->params[3].value, "true");
  T_EQ_INT(c->priority, 7);
  T_EQ_INT(c->deadline, 1795867200000LL);
  size_t len;
  char *s = command_serialize(c, &len);
  sm_command *d;
  T_EQ_INT(command_deserialize(s, len, &d), 0);
  T_EQ_STR(d->params[0].value, "10.0.0.5");
  T_EQ_STR(d->capabilities[0].key, "os");
  T_EQ_INT(d->deadline, c->deadline);
  cJSON *j = command_to_json(d);
  T_EQ_STR(cJSON_GetObjectItem(j, "status")->valuestring, "queued");
  T_EQ_STR(cJSON_GetObjectItem(j, "deadline")->valuestring, "2026-11-28T12:00:00.000Z");
  cJSON_Delete(j);
  free(s);
  command_free(d);
  command_free(c);
  T_EQ_INT(parse("{\"type\":\"echo\"}", &c, err), 0);
  T_ASSERT(c->id == NULL);
  T_EQ_INT(c->priority, 5);
  command_free(c);
}

static void test_parse_errors(void) {
  sm_command *c;
  char err[128];
  T_EQ_INT(parse("{}", &c, err), SM_EINVAL);
  T_EQ_STR(err, "type: required");
  T_EQ_INT(parse("{\"type\":\"a\",\"priority\":10}", &c, err), SM_EINVAL);
  T_EQ_STR(err, "priority: must be an integer 0..9");
  T_EQ_INT(parse("{\"type\":\"a\",\"params\":{\"x\":{}}}", &c, err), SM_EINVAL);
  T_EQ_STR(err, "params.x: must be a string, number or boolean");
  T_EQ_INT(parse("{\"type\":\"a\",\"deadline\":\"tomorrow\"}", &c, err), SM_EINVAL);
  T_EQ_STR(err, "deadline: must be an RFC 3339 time");
  T_EQ_INT(parse("[1]", &c, err), SM_EINVAL);
  T_EQ_INT(parse("{", &c, err), SM_EPARSE);
  char big[300];
  memset(big, 'a', 200);
  big[200] = '\0';
  char buf[400];
  snprintf(buf, sizeof(buf), "{\"type\":\"a\",\"id\":\"%s\"}", big);
  T_EQ_INT(parse(buf, &c, err), SM_ETOOBIG);
  T_EQ_STR(err, "id: longer than 128 bytes");
  /* 65 params */
  char many[4096] = "{\"type\":\"a\",\"params\":{";
  for (int i = 0; i < 65; i++)
    snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s\"k%d\":\"v\"", i ? "," : "", i);
  strcat(many, "}}");
  T_EQ_INT(parse(many, &c, err), SM_ETOOBIG);
}

static void test_status_and_ids(void) {
  T_ASSERT(command_transition_allowed(COMMAND_QUEUED, COMMAND_DISPATCHED));
  T_ASSERT(command_transition_allowed(COMMAND_RUNNING, COMMAND_QUEUED));
  T_ASSERT(command_transition_allowed(COMMAND_QUEUED, COMMAND_EXPIRED));
  T_ASSERT(!command_transition_allowed(COMMAND_COMPLETED, COMMAND_CANCELLED));
  T_ASSERT(!command_transition_allowed(COMMAND_RUNNING, COMMAND_EXPIRED));
  T_ASSERT(command_status_is_final(COMMAND_TIMED_OUT));
  command_status s;
  T_EQ_INT(command_status_parse("timed_out", &s), 0);
  T_EQ_INT(s, COMMAND_TIMED_OUT);
  command_idgen g;
  command_idgen_init(&g);
  char a[COMMAND_ID_LEN + 1], b[COMMAND_ID_LEN + 1];
  command_idgen_next(&g, 1795867200000LL, a);
  for (int i = 0; i < 5000; i++) {
    command_idgen_next(&g, 1795867200000LL, b);
    T_ASSERT(strcmp(a, b) < 0);
    memcpy(a, b, sizeof(a));
  }
  T_EQ_INT(strlen(a), 36);
  T_EQ_INT(a[14], '7');
}

int main(void) {
  T_RUN(test_parse_ok);
  T_RUN(test_parse_errors);
  T_RUN(test_status_and_ids);
  return t_done();
}
