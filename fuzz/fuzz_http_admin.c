/* fuzz_http_admin - the admin API from the bytes of a connection: the HTTP/1.1 parser
 * (http/http1.c), the real route table (admin/handlers.c, cmd_handlers.c) behind the real
 * security guard (admin/auth.c, one admin key "fuzz-admin-key"), over a lifecycle on the
 * in-memory store; and the JSON command validation (command_parse_text) of every body.
 *
 * Input: the raw bytes a client sends on one connection (pipelined requests allowed), fed in
 * chunks as they would arrive. Oracles: ASan/UBSan and no leak; every request gets an answer
 * with a valid status; a JSON answer is valid JSON (and valid UTF-8 with FUZZ_STRICT_UTF8=1);
 * every accepted command serializes and deserializes to the same record. */
#include "fuzz.h"

#include "admin/api.h"
#include "admin/auth.h"
#include "admin/handlers.h"
#include "core/lifecycle.h"
#include "http/http1.h"
#include "model/command.h"
#include "util/err.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REQS 16

static fz_world w;
static admin_security sec;
static int maintenance;

static int f_maintenance(void *ud) {
  (void)ud;
  return maintenance;
}
static void f_set_maintenance(void *ud, int on) {
  (void)ud;
  maintenance = on;
  lifecycle_set_maintenance(w.lc, on);
}
static void f_shutdown(void *ud, const char *why) {
  (void)ud, (void)why;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_log_setup();
  admin_security_config sc = {.api_key = "fuzz-admin-key", .max_clients = 64};
  if (admin_security_init(&sec, &sc))
    fz_fail("harness: admin_security_init");
  return 0;
}

typedef struct reqs {
  http_request *v[MAX_REQS];
  size_t n;
} reqs;

static int on_request(void *ud, http_request *req) {
  reqs *r = ud;
  if (r->n == MAX_REQS) {
    http_request_free(req);
    return 1; /* pause: the caller stops feeding */
  }
  r->v[r->n++] = req;
  return 0;
}

static void check_response(const http_response *res) {
  if (res->status < 100 || res->status > 599)
    fz_fail("response status %d", res->status);
  fz_check_utf8("response body", res->body, res->body_len);
  int json = res->content_type == NULL || strstr(res->content_type, "json") != NULL;
  if (json && res->body_len > 0) {
    cJSON *doc = cJSON_ParseWithLength(res->body, res->body_len);
    if (doc == NULL)
      fz_fail("status %d: JSON body does not parse: %.*s", res->status,
              (int)(res->body_len < 200 ? res->body_len : 200), res->body);
    cJSON_Delete(doc);
  }
  http_buf out = {0};
  (void)http_response_serialize(res, 1, &out);
  http_buf_finish(&out);
}

/* The command validation on its own: what it accepts survives the store's serialization. */
static void check_command(const char *body, size_t len) {
  sm_command *c = NULL;
  char why[256];
  if (command_parse_text(body, len, &c, why, sizeof(why)) != 0) {
    if (c != NULL)
      fz_fail("command_parse_text failed and left a command");
    return;
  }
  /* The lifecycle gives a command without one an id before it is stored. */
  if (c->id == NULL && command_set_str(&c->id, "fuzz-id") != 0)
    fz_fail("harness: command_set_str");
  size_t n1 = 0, n2 = 0;
  char *s1 = command_serialize(c, &n1);
  if (s1 == NULL)
    fz_fail("command_serialize failed on a parsed command");
  fz_check_utf8("serialized command", s1, n1);
  sm_command *d = NULL;
  if (command_deserialize(s1, n1, &d) != 0)
    fz_fail("a serialized command does not deserialize: %.*s", (int)(n1 < 300 ? n1 : 300), s1);
  char *s2 = command_serialize(d, &n2);
  if (s2 == NULL || n1 != n2 || memcmp(s1, s2, n1) != 0)
    fz_fail("serialize/deserialize changes the command:\n%.*s\n%.*s", (int)n1, s1, (int)n2,
            s2 ? s2 : "");
  free(s1);
  free(s2);
  command_free(c);
  command_free(d);
}

static void run(const admin_router *router, http_request *req) {
  req->peer = "192.0.2.9:40000";
  if (req->body_len > 0)
    check_command(req->body, req->body_len);
  http_response res;
  http_response_init(&res);
  admin_router_dispatch(router, req, &res);
  http_request_free(req);
  if (res.deferred) {
    http_deferred *d = res.deferred;
    res.deferred = NULL;
    for (int i = 0; i < 200 && http_deferred_response(d) == NULL; i++)
      uv_run(&w.loop, UV_RUN_NOWAIT);
    if (http_deferred_response(d) != NULL)
      check_response(http_deferred_response(d));
    http_deferred_release(d);
  } else {
    check_response(&res);
  }
  http_response_finish(&res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  maintenance = 0;
  fz_world_open(&w);
  admin_api api = {.loop = &w.loop,
                   .registry = w.reg,
                   .lifecycle = w.lc,
                   .instance = "mgr-fuzz",
                   .env = "test",
                   .command_queue_size = 64,
                   .started_at_ms = 1,
                   .maintenance = f_maintenance,
                   .set_maintenance = f_set_maintenance,
                   .shutdown = f_shutdown};
  static admin_router router;
  admin_router_init(&router, &api);
  if (admin_handlers_register(&router))
    fz_fail("harness: admin_handlers_register");
  router.guard = admin_security_guard;
  router.guard_ud = &sec;

  reqs r = {.n = 0};
  http1_config hc = {
      .max_header_bytes = 8192, .max_body_bytes = 64 * 1024, .on_request = on_request, .ud = &r};
  http1_parser *p = NULL;
  if (http1_create(&hc, &p))
    fz_fail("harness: http1_create");
  const char *in = (const char *)data;
  size_t left = size, chunk = 1 + (size % 97);
  while (left > 0) {
    size_t n = chunk < left ? chunk : left;
    int status = 0;
    long used = http1_feed(p, in, n, &status);
    size_t answered = r.n;
    for (size_t i = 0; i < r.n; i++)
      run(&router, r.v[i]);
    r.n = 0;
    if (used < 0) {
      if (status != 400 && status != 413 && status != 431 && status != 500)
        fz_fail("http1_feed failed with status %d", status);
      break;
    }
    if ((size_t)used > n)
      fz_fail("http1_feed used %ld of %zu bytes", used, n);
    if (used == 0 && answered == 0)
      fz_fail("http1_feed consumed nothing of %zu bytes without a request to answer", n);
    in += used;
    left -= (size_t)used;
    (void)http1_take_continue(p);
    (void)http1_pending(p);
  }
  http1_destroy(p);
  fz_world_close(&w);
  return 0;
}
