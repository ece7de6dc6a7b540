/* test-command.c - the command model: validation with field-naming errors, limits, JSON forms,
 * ids, statuses and transitions. */
#include "model/command.h"
#include "util/err.h"
#include "util/utf8.h"
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

/* Issue 12 #4: a NUL inside a string ended the C string after validation ("ec\u0000ho" was
 * stored as "ec"); #5: invalid UTF-8 was stored and written back raw. */
static void expect_refused(const char *json, size_t len, const char *want) {
  sm_command *c = NULL;
  char err[256];
  T_EQ_INT(command_parse_text(json, len, &c, err, sizeof(err)), SM_EINVAL);
  T_ASSERT(c == NULL);
  T_EQ_STR(err, want);
}

#define REFUSED(lit, want) expect_refused(lit, sizeof(lit) - 1, want)

static void test_parse_nul(void) {
  REFUSED("{\"type\":\"ec\\u0000ho\"}", "type: must not contain NUL (\\u0000)");
  REFUSED("{\"type\":\"echo\",\"params\":{\"cmd\":\"echo\\u0000evil\"}}",
          "params.cmd: must not contain NUL (\\u0000)");
  REFUSED("{\"type\":\"echo\",\"params\":{\"a\\u0000b\":\"x\"}}",
          "params: key must not contain NUL (\\u0000)");
  REFUSED("{\"type\\u0000x\":\"echo\"}", "body: key must not contain NUL (\\u0000)");
  REFUSED("{\"type\":\"echo\",\"agent_id\":\"a\\\\\\u0000\"}",
          "agent_id: must not contain NUL (\\u0000)");            /* \\ then \u0000 */
  REFUSED("{\"type\":\"ec\0ho\"}", "type: must not contain NUL"); /* a raw NUL byte */
  REFUSED("{\"type\":\"echo\",\"extra\":[1,{\"k\":\"\\u0000\"}]}",
          "extra[1].k: must not contain NUL (\\u0000)"); /* unknown fields too */

  /* an escaped backslash followed by u0000 is six ordinary characters */
  sm_command *c = NULL;
  char err[128];
  const char *ok = "{\"type\":\"echo\",\"params\":{\"p\":\"\\\\u0000\",\"q\":\"\\u0001\"}}";
  T_EQ_INT(command_parse_text(ok, strlen(ok), &c, err, sizeof(err)), 0);
  T_EQ_STR(c->params[0].value, "\\u0000");
  T_EQ_STR(c->params[1].value, "\x01");
  command_free(c);
}

static void test_parse_utf8(void) {
  REFUSED("{\"type\":\"echo\",\"params\":{\"cmd\":\"\xff\xfe\"}}",
          "params.cmd: must be valid UTF-8");
  REFUSED("{\"type\":\"echo\",\"params\":{\"cmd\":\"\xc0\x80\"}}",
          "params.cmd: must be valid UTF-8"); /* overlong NUL */
  REFUSED("{\"type\":\"echo\",\"params\":{\"cmd\":\"\xed\xa0\x80\"}}",
          "params.cmd: must be valid UTF-8"); /* surrogate */
  REFUSED("{\"type\":\"echo\",\"params\":{\"cmd\":\"\xf4\x90\x80\x80\"}}",
          "params.cmd: must be valid UTF-8"); /* above U+10FFFF */
  REFUSED("{\"type\":\"echo\",\"params\":{\"\xff\":\"x\"}}", "params: key must be valid UTF-8");
  REFUSED("{\"type\":\"echo\",\"capabilities\":{\"os\":\"l\xe9\"}}",
          "capabilities.os: must be valid UTF-8");
  REFUSED("{\"type\":\"echo\",\"note\":\"\x80\"}", "note: must be valid UTF-8");
  REFUSED("{\"type\":\"\xff\"}", "type: must be valid UTF-8");

  /* valid text, raw or escaped, is kept as it is */
  sm_command *c = NULL;
  char err[128];
  const char *ok = "{\"type\":\"echo\",\"params\":{\"t\xc3\xa9\":\"\xe2\x82\xac \\ud83d\\ude00\"}}";
  T_EQ_INT(command_parse_text(ok, strlen(ok), &c, err, sizeof(err)), 0);
  T_EQ_STR(c->params[0].key, "t\xc3\xa9");
  T_EQ_STR(c->params[0].value, "\xe2\x82\xac \xf0\x9f\x98\x80");
  command_free(c);

  /* an array names the element (the REST batch form) */
  cJSON *doc = NULL;
  const char *arr = "[{\"type\":\"a\"},{\"type\":\"b\",\"params\":{\"x\":\"\xff\"}}]";
  T_EQ_INT(command_json_parse(arr, strlen(arr), &doc, err, sizeof(err)), SM_EINVAL);
  T_ASSERT(doc == NULL);
  T_EQ_STR(err, "element 1: params.x: must be valid UTF-8");
  T_EQ_INT(command_json_parse("[1,2]", 5, &doc, err, sizeof(err)), 0);
  cJSON_Delete(doc);
  T_EQ_INT(command_json_parse("{", 1, &doc, err, sizeof(err)), SM_EPARSE);

  /* a long key in the message is cut at a character boundary, and so is the message */
  char big[512] = "{\"type\":\"a\",\"params\":{\"";
  for (int i = 0; i < 100; i++)
    strcat(big, "\xc3\xa9");
  strcat(big, "\":\"\xff\"}}");
  T_EQ_INT(command_json_parse(big, strlen(big), &doc, err, sizeof(err)), SM_EINVAL);
  T_ASSERT(sm_utf8_valid(err, strlen(err)));
  T_ASSERT(strncmp(err, "params.\xc3\xa9", 9) == 0);
  for (size_t cap = 1; cap < 40; cap++) {
    char small[40];
    T_EQ_INT(command_json_parse(big, strlen(big), &doc, small, cap), SM_EINVAL);
    T_ASSERT(sm_utf8_valid(small, strlen(small)));
  }

  /* command_parse on a tree built in code checks what it keeps as well */
  cJSON *o = cJSON_CreateObject();
  cJSON *p = cJSON_AddObjectToObject(o, "params");
  cJSON_AddStringToObject(o, "type", "echo");
  cJSON_AddStringToObject(p, "k", "\xfe");
  T_EQ_INT(command_parse(o, &c, err, sizeof(err)), SM_EINVAL);
  T_EQ_STR(err, "params.k: must be valid UTF-8");
  cJSON_DeleteItemFromObject(o, "params");
  cJSON_AddStringToObject(o, "strategy", "\xfe");
  T_EQ_INT(command_parse(o, &c, err, sizeof(err)), SM_EINVAL);
  T_EQ_STR(err, "strategy: must be valid UTF-8");
  cJSON_Delete(o);
}

int main(void) {
  T_RUN(test_parse_ok);
  T_RUN(test_parse_errors);
  T_RUN(test_parse_nul);
  T_RUN(test_parse_utf8);
  T_RUN(test_status_and_ids);
  return t_done();
}
