/* Unit tests of src/admin/auth.c and ratelimit.c: keys file parsing (plain and sha256 forms,
 * comments, bad lines), constant-time lookup, the guard's answers (401/403/429) for each role,
 * and token buckets whose table stays bounded under a flood of addresses. */
#include "t.h"
#include "admin/auth.h"
#include "admin/ratelimit.h"
#include "util/err.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether the response body holds text (bodies are not NUL-terminated). */
static int body_has(const http_response *res, const char *text) {
  return res->body && memmem(res->body, res->body_len, text, strlen(text)) != NULL;
}

static void test_parse(void) {
  admin_keys k = {0};
  /* the third key is given as a digest (upper-case hex is fine) */
  const char *text = "# keys\n"
                     "\n"
                     "viewer: v-key \n"
                     "operator:o-key\r\n"
                     "  admin : sha256:"
                     "6F1E4B2E1A4E8C3E8A1B8D53D1E0B2FBE7B0D9A3C8F2C5D6E8A7B9C0D1E2F3A4\n"
                     "admin:a:key:with:colons";
  int line = 0;
  char why[96] = "";
  T_EQ_INT(admin_keys_parse(&k, text, strlen(text), &line, why, sizeof(why)), 0);
  T_EQ_INT(k.n, 4);
  const admin_key *v = admin_keys_find(&k, "v-key", 5);
  T_ASSERT(v != NULL);
  T_EQ_INT(v->role, ADMIN_ROLE_VIEWER);
  T_EQ_STR(v->name, "viewer@line3");
  T_ASSERT(admin_keys_find(&k, "o-key", 5) && admin_keys_find(&k, "o-key", 5)->role == 2);
  T_ASSERT(admin_keys_find(&k, "a:key:with:colons", 17) != NULL);
  T_ASSERT(admin_keys_find(&k, "v-ke", 4) == NULL);
  T_ASSERT(admin_keys_find(&k, "", 0) == NULL);
  T_ASSERT(admin_keys_find(&k, "wrong", 5) == NULL);
  admin_keys_finish(&k);

  /* The sha256 form matches the key whose digest it is (upper- or lower-case hex). */
  unsigned char d[32];
  unsigned int dn = 0;
  T_ASSERT(EVP_Digest("s3cret", 6, d, &dn, EVP_sha256(), NULL) == 1);
  char line_buf[128] = "operator:sha256:";
  for (int i = 0; i < 32; i++)
    snprintf(line_buf + strlen(line_buf), 3, "%02x", d[i]);
  T_EQ_INT(admin_keys_parse(&k, line_buf, strlen(line_buf), &line, why, sizeof(why)), 0);
  const admin_key *o = admin_keys_find(&k, "s3cret", 6);
  T_ASSERT(o != NULL && o->role == ADMIN_ROLE_OPERATOR);
  /* The digest text itself is not a key. */
  T_ASSERT(admin_keys_find(&k, line_buf + 9, strlen(line_buf + 9)) == NULL);
  admin_keys_finish(&k);
}

static void bad(const char *text, int want_line, const char *want_why) {
  admin_keys k = {0};
  int line = 0;
  char why[96] = "";
  T_EQ_INT(admin_keys_parse(&k, text, strlen(text), &line, why, sizeof(why)), SM_EINVAL);
  T_EQ_INT(line, want_line);
  T_ASSERT(strstr(why, want_why) != NULL);
  T_ASSERT(strstr(why, "topsecret") == NULL); /* the message never quotes a key */
  admin_keys_finish(&k);
}

static void test_bad_lines(void) {
  bad("viewer:a\nnocolon-topsecret\n", 2, "expected role:key");
  bad("# c\nroot:topsecret\n", 2, "role must be");
  bad("viewer:\n", 1, "empty key");
  bad("\n\nadmin:sha256:abcd\n", 3, "64 hex");
  bad("admin:sha256:zz1e4b2e1a4e8c3e8a1b8d53d1e0b2fbe7b0d9a3c8f2c5d6e8a7b9c0d1e2f3a4\n", 1,
      "64 hex");
  bad("Viewer:topsecret\n", 1, "role must be");
}

static void h_ok(void *ud, http_request *req, http_response *res) {
  (void)ud, (void)req;
  http_response_set(res, 200, NULL, "{}", 2);
}

/* Runs the guard for a request with the given headers; returns the status (200 when it let the
 * request through). */
static int guarded(admin_security *sec, admin_role need, const char *hname, const char *hval,
                   const char *peer, http_response *res) {
  admin_route rt = {"GET", "/api/x", h_ok, need};
  http_request req;
  memset(&req, 0, sizeof(req));
  req.method = "GET";
  req.path = "/api/x";
  req.peer = peer;
  if (hname) {
    req.headers[0].name = hname;
    req.headers[0].value = hval;
    req.nheaders = 1;
  }
  http_response_init(res);
  int stop = admin_security_guard(sec, &req, &rt, res);
  return stop ? res->status : 200;
}

static const char *header(const http_response *res, const char *name) {
  for (size_t i = 0; i < res->nheaders; i++)
    if (strcmp(res->headers[i].name, name) == 0)
      return res->headers[i].value;
  return NULL;
}

static void test_guard_matrix(void) {
  admin_security sec;
  memset(&sec, 0, sizeof(sec));
  T_EQ_INT(admin_keys_add(&sec.keys, ADMIN_ROLE_VIEWER, "vk", 2, "t"), 0);
  T_EQ_INT(admin_keys_add(&sec.keys, ADMIN_ROLE_OPERATOR, "ok", 2, "t"), 0);
  T_EQ_INT(admin_keys_add(&sec.keys, ADMIN_ROLE_ADMIN, "ak", 2, "t"), 0);
  const char *keys[] = {NULL, "nope", "vk", "ok", "ak"};
  /* rows: route role viewer, operator, admin; columns: none, wrong, viewer, operator, admin */
  const int want[3][5] = {
      {401, 401, 200, 200, 200}, {401, 401, 403, 200, 200}, {401, 401, 403, 403, 200}};
  http_response res;
  for (int r = 0; r < 3; r++) {
    for (int k = 0; k < 5; k++) {
      char bearer[32];
      snprintf(bearer, sizeof(bearer), "Bearer %s", keys[k] ? keys[k] : "");
      int st = guarded(&sec, (admin_role)(ADMIN_ROLE_VIEWER + r), keys[k] ? "Authorization" : NULL,
                       bearer, "127.0.0.1:5", &res);
      T_EQ_INT(st, want[r][k]);
      if (st == 401)
        T_ASSERT(header(&res, "WWW-Authenticate") != NULL);
      if (st != 200)
        T_ASSERT(body_has(&res, st == 401 ? "\"unauthorized\"" : "\"forbidden\""));
      http_response_finish(&res);
      /* X-API-Key works the same */
      st = guarded(&sec, (admin_role)(ADMIN_ROLE_VIEWER + r), keys[k] ? "x-api-key" : NULL, keys[k],
                   "127.0.0.1:5", &res);
      T_EQ_INT(st, want[r][k]);
      http_response_finish(&res);
    }
  }
  /* Public routes need nothing. */
  admin_route pub = {"GET", "/health", h_ok, ADMIN_ROLE_PUBLIC};
  http_request req;
  memset(&req, 0, sizeof(req));
  http_response_init(&res);
  T_EQ_INT(admin_security_guard(&sec, &req, &pub, &res), 0);
  http_response_finish(&res);
  /* Authorization that is not Bearer is no key. */
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, "Authorization", "Basic dms6", "x:1", &res), 401);
  http_response_finish(&res);
  admin_security_finish(&sec);

  /* No key configured: production refuses, development is open. */
  memset(&sec, 0, sizeof(sec));
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, NULL, NULL, "x:1", &res), 403);
  T_ASSERT(body_has(&res, "no API key is configured"));
  http_response_finish(&res);
  sec.open = 1;
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_ADMIN, NULL, NULL, "x:1", &res), 200);
  http_response_finish(&res);
}

static void test_guard_rate(void) {
  admin_security sec;
  memset(&sec, 0, sizeof(sec));
  T_EQ_INT(admin_keys_add(&sec.keys, ADMIN_ROLE_ADMIN, "k1", 2, "a"), 0);
  T_EQ_INT(admin_keys_add(&sec.keys, ADMIN_ROLE_ADMIN, "k2", 2, "b"), 0);
  T_EQ_INT(admin_ratelimit_create(0.001, 3, 100, &sec.per_key), 0);
  http_response res;
  for (int i = 0; i < 3; i++) {
    T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, "X-API-Key", "k1", "10.0.0.1:1", &res), 200);
    http_response_finish(&res);
  }
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, "X-API-Key", "k1", "10.0.0.1:1", &res), 429);
  T_ASSERT(header(&res, "Retry-After") != NULL && atoi(header(&res, "Retry-After")) >= 1);
  T_ASSERT(body_has(&res, "\"rate_limited\""));
  http_response_finish(&res);
  /* Another key has its own bucket. */
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, "X-API-Key", "k2", "10.0.0.1:1", &res), 200);
  http_response_finish(&res);
  admin_ratelimit_destroy(sec.per_key);
  sec.per_key = NULL;
  /* Per address: the port does not matter, the address does. */
  T_EQ_INT(admin_ratelimit_create(0.001, 2, 100, &sec.per_ip), 0);
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, "X-API-Key", "k1", "10.0.0.2:1", &res), 200);
  http_response_finish(&res);
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, NULL, NULL, "10.0.0.2:2", &res), 401);
  http_response_finish(&res);
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, "X-API-Key", "k1", "10.0.0.2:3", &res), 429);
  http_response_finish(&res);
  T_EQ_INT(guarded(&sec, ADMIN_ROLE_VIEWER, "X-API-Key", "k1", "10.0.0.3:3", &res), 200);
  http_response_finish(&res);
  admin_security_finish(&sec);
}

static void test_ratelimit(void) {
  admin_ratelimit *rl;
  T_EQ_INT(admin_ratelimit_create(0, 1, 1, &rl), SM_EINVAL);
  T_EQ_INT(admin_ratelimit_create(2, 0.5, 1, &rl), SM_EINVAL);
  T_EQ_INT(admin_ratelimit_create(2, 2, 0, &rl), SM_EINVAL);
  T_EQ_INT(admin_ratelimit_create(2, 2, 4, &rl), 0); /* 2 per second, burst 2 */
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 1000), 0);
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 1000), 0);
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 1000), 1); /* empty: 0.5 s to a token, rounded up */
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 1499), 1);
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 1500), 0); /* refilled one */
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 1500), 1);
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 100000), 0); /* refill caps at the burst */
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 100000), 0);
  T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 100000), 1);
  /* A flood of addresses: the table never holds more than 4 buckets, and the one in active use
   * stays. */
  char key[32];
  for (int i = 0; i < 100000; i++) {
    int n = snprintf(key, sizeof(key), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
    admin_ratelimit_take(rl, key, (size_t)n, 100000);
    if (i % 3 == 0)
      T_EQ_INT(admin_ratelimit_take(rl, "a", 1, 100000), 1); /* still limited */
    T_ASSERT(admin_ratelimit_size(rl) <= 4);
  }
  T_EQ_INT(admin_ratelimit_size(rl), 4);
  /* Long keys are truncated, not overflowed. */
  char longkey[300];
  memset(longkey, 'x', sizeof(longkey));
  T_EQ_INT(admin_ratelimit_take(rl, longkey, sizeof(longkey), 100000), 0);
  admin_ratelimit_destroy(rl);
  admin_ratelimit_destroy(NULL);
}

static void test_peer_addr(void) {
  size_t n;
  const char *a = admin_peer_addr("127.0.0.1:5555", &n);
  T_ASSERT(n == 9 && memcmp(a, "127.0.0.1", 9) == 0);
  a = admin_peer_addr("[::1]:80", &n);
  T_ASSERT(n == 3 && memcmp(a, "::1", 3) == 0);
  a = admin_peer_addr(NULL, &n);
  T_EQ_INT(n, 0);
}

int main(void) {
  T_RUN(test_parse);
  T_RUN(test_bad_lines);
  T_RUN(test_guard_matrix);
  T_RUN(test_guard_rate);
  T_RUN(test_ratelimit);
  T_RUN(test_peer_addr);
  return t_done();
}
