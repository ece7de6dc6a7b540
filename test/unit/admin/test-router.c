/* Unit tests of src/admin/router.c: pattern matching, params, 404/405, query strings. */
#include "t.h"
#include "admin/router.h"
#include "util/err.h"

static void h_a(void *ud, http_request *req, http_response *res) {
  (void)ud, (void)req, (void)res;
}
static void h_b(void *ud, http_request *req, http_response *res) {
  (void)ud, (void)req, (void)res;
}

static void test_match(void) {
  admin_router r;
  admin_router_init(&r, NULL);
  T_EQ_INT(admin_router_add(&r, "GET", "/api/agents", h_a, ADMIN_ROLE_VIEWER), 0);
  T_EQ_INT(admin_router_add(&r, "GET", "/api/agents/{id}", h_b, ADMIN_ROLE_VIEWER), 0);
  T_EQ_INT(admin_router_add(&r, "PUT", "/api/commands/{id}/cancel", h_a, ADMIN_ROLE_OPERATOR), 0);
  T_EQ_INT(admin_router_add(&r, "POST", "/api/agents", h_b, ADMIN_ROLE_ADMIN), 0);
  T_EQ_INT(admin_router_add(&r, "GET", "/health", h_a, ADMIN_ROLE_PUBLIC), 0);
  admin_match m;
  T_EQ_INT(admin_router_match(&r, "GET", "/api/agents", &m), 0);
  T_ASSERT(m.route->fn == h_a);
  T_EQ_INT(m.nparams, 0);
  T_EQ_INT(admin_router_match(&r, "GET", "/api/agents/a%2Fb", &m), 0);
  T_ASSERT(m.route->fn == h_b);
  T_EQ_INT(m.route->min_role, ADMIN_ROLE_VIEWER);
  T_EQ_INT(m.nparams, 1);
  T_EQ_INT(m.params[0].name_len, 2);
  T_ASSERT(memcmp(m.params[0].name, "id", 2) == 0);
  T_EQ_INT(m.params[0].value_len, 5);
  T_EQ_INT(admin_router_match(&r, "PUT", "/api/commands/c1/cancel", &m), 0);
  T_EQ_INT(m.route->min_role, ADMIN_ROLE_OPERATOR);
  T_ASSERT(memcmp(m.params[0].value, "c1", 2) == 0);
  /* 404s: unknown, trailing slash, empty param, prefix, extra segment */
  T_EQ_INT(admin_router_match(&r, "GET", "/nope", &m), SM_ENOENT);
  T_EQ_INT(admin_router_match(&r, "GET", "/api/agents/", &m), SM_ENOENT);
  T_EQ_INT(admin_router_match(&r, "GET", "/api", &m), SM_ENOENT);
  T_EQ_INT(admin_router_match(&r, "GET", "/api/agents/x/y", &m), SM_ENOENT);
  T_EQ_INT(admin_router_match(&r, "GET", "/healthz", &m), SM_ENOENT);
  T_EQ_INT(admin_router_match(&r, "GET", "*", &m), SM_ENOENT);
  /* 405 with Allow */
  T_EQ_INT(admin_router_match(&r, "DELETE", "/api/agents", &m), SM_EPERM);
  T_EQ_STR(m.allow, "GET, POST");
  T_EQ_INT(admin_router_match(&r, "POST", "/health", &m), SM_EPERM);
  T_EQ_STR(m.allow, "GET");
  T_EQ_INT(admin_router_match(&r, "GET", "/api/commands/c1/cancel", &m), SM_EPERM);
  T_EQ_STR(m.allow, "PUT");
}

static void test_add_errors(void) {
  admin_router r;
  admin_router_init(&r, NULL);
  T_EQ_INT(admin_router_add(&r, "GET", "nope", h_a, 0), SM_EINVAL);
  T_EQ_INT(admin_router_add(&r, "GET", "/{a}/{b}/{c}/{d}/{e}", h_a, 0), SM_EINVAL);
  for (int i = 0; i < ADMIN_MAX_ROUTES; i++)
    T_EQ_INT(admin_router_add(&r, "GET", "/x", h_a, 0), 0);
  T_EQ_INT(admin_router_add(&r, "GET", "/x", h_a, 0), SM_ELIMIT);
}

static http_request *req_new(void) {
  http_request *req = calloc(1, sizeof(*req));
  T_ASSERT(req != NULL);
  return req;
}

static void test_bind(void) {
  admin_router r;
  admin_router_init(&r, NULL);
  T_EQ_INT(admin_router_add(&r, "GET", "/api/agents/{id}", h_a, 0), 0);
  admin_match m;
  http_request *req = req_new();
  T_EQ_INT(admin_router_match(&r, "GET", "/api/agents/a%20b+c", &m), 0);
  T_EQ_INT(admin_match_bind(&m, req), 0);
  T_EQ_STR(http_request_param(req, "id"), "a b+c");
  T_ASSERT(http_request_param(req, "x") == NULL);
  T_EQ_INT(admin_router_match(&r, "GET", "/api/agents/a%2", &m), 0);
  T_EQ_INT(admin_match_bind(&m, req), SM_EPARSE);
  http_request_free(req);
}

static void test_query(void) {
  http_request *req = req_new();
  T_EQ_INT(admin_query_parse(req, "capability=os:linux&capability=scan_type%3Anmap&"
                                  "status=idle&&flag&q=a+b%21&=v"),
           0);
  T_EQ_INT(req->nqpairs, 6);
  T_EQ_STR(req->qpairs[0].key, "capability");
  T_EQ_STR(req->qpairs[0].value, "os:linux");
  T_EQ_STR(req->qpairs[1].value, "scan_type:nmap");
  T_EQ_STR(http_request_query(req, "capability"), "os:linux");
  T_EQ_STR(http_request_query(req, "status"), "idle");
  T_EQ_STR(http_request_query(req, "flag"), "");
  T_EQ_STR(http_request_query(req, "q"), "a b!");
  T_EQ_STR(req->qpairs[5].key, "");
  T_ASSERT(http_request_query(req, "missing") == NULL);
  T_EQ_INT(admin_query_parse(req, ""), 0);
  T_EQ_INT(req->nqpairs, 0);
  T_EQ_INT(admin_query_parse(req, "a=%G1"), SM_EPARSE);
  http_buf b = {0};
  for (int i = 0; i < HTTP_MAX_QUERY_PAIRS; i++)
    http_buf_printf(&b, "k%d=v&", i);
  http_buf_append(&b, "", 1);
  T_EQ_INT(admin_query_parse(req, b.p), 0);
  T_EQ_INT(req->nqpairs, HTTP_MAX_QUERY_PAIRS);
  b.len--;
  http_buf_printf(&b, "one=more");
  http_buf_append(&b, "", 1);
  T_EQ_INT(admin_query_parse(req, b.p), SM_ELIMIT);
  http_buf_finish(&b);
  http_request_free(req);
}

static admin_role seen_role;
static int guard(void *ud, http_request *req, const admin_route *route, http_response *res) {
  (void)ud, (void)req;
  seen_role = route->min_role;
  if (route->min_role > ADMIN_ROLE_PUBLIC) {
    http_response_error(res, 401, "unauthorized", "no key");
    return 1;
  }
  return 0;
}
static int handled;
static void h_ok(void *ud, http_request *req, http_response *res) {
  (void)ud, (void)req;
  handled++;
  http_response_set(res, 200, "text/plain", "ok", 2);
}

static void test_guard_and_dispatch(void) {
  admin_router r;
  admin_router_init(&r, NULL);
  T_EQ_INT(admin_router_add(&r, "GET", "/health", h_ok, ADMIN_ROLE_PUBLIC), 0);
  T_EQ_INT(admin_router_add(&r, "GET", "/api/x", h_ok, ADMIN_ROLE_VIEWER), 0);
  r.guard = guard;
  http_request *req = req_new();
  req->method = "GET";
  req->path = "/api/x";
  http_response res;
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 401);
  T_EQ_INT(seen_role, ADMIN_ROLE_VIEWER);
  T_EQ_INT(handled, 0);
  http_response_finish(&res);
  req->path = "/health";
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 200);
  T_EQ_INT(handled, 1);
  http_response_finish(&res);
  /* Unknown paths under /api need a key before they are a 404; others are a 404 at once. */
  req->path = "/api/nope";
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 401);
  http_response_finish(&res);
  req->path = "/nope";
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 404);
  http_response_finish(&res);
  req->path = "/api/x";
  req->query = "a=%ZZ"; /* malformed query: 400 before the guard or handler */
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 400);
  http_response_finish(&res);
  http_request_free(req);
}

static int guard_calls;
static int counting_guard(void *ud, http_request *req, const admin_route *route,
                          http_response *res) {
  guard_calls++;
  return guard(ud, req, route, res);
}

static int body_is_valid_json_utf8(const http_response *res) {
  /* no raw byte >= 0x80 may be ill-formed: our 404 text is ASCII plus \ufffd escapes */
  for (size_t i = 0; i < res->body_len; i++)
    if ((unsigned char)res->body[i] >= 0x80)
      return 0;
  return memmem(res->body, res->body_len, "\\ufffd", 6) != NULL;
}

/* admin_router_admit: what needs no body is answered on the head (404, 405, the guard's 401);
 * a request that passes is marked, and dispatch then does not run the guard again (a rate
 * limit counts a request once). */
static void test_admit(void) {
  admin_router r;
  admin_router_init(&r, NULL);
  T_EQ_INT(admin_router_add(&r, "GET", "/health", h_ok, ADMIN_ROLE_PUBLIC), 0);
  T_EQ_INT(admin_router_add(&r, "POST", "/open", h_ok, ADMIN_ROLE_PUBLIC), 0);
  T_EQ_INT(admin_router_add(&r, "POST", "/api/x", h_ok, ADMIN_ROLE_OPERATOR), 0);
  r.guard = counting_guard;
  http_request *req = req_new();
  req->method = "POST";
  struct {
    const char *path;
    int stop, status;
  } cases[] = {
      {"/api/x", 1, 401},    /* no key: refused before the body */
      {"/api/nope", 1, 401}, /* unknown under /api: the key first */
      {"/nope", 1, 404},     {"/health", 1, 405}, {"/open", 0, 0},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    req->path = cases[i].path;
    http_response res;
    http_response_init(&res);
    T_EQ_INT(admin_router_admit(&r, req, &res) != 0, cases[i].stop);
    if (cases[i].stop)
      T_EQ_INT(res.status, cases[i].status);
    http_response_finish(&res);
  }
  T_EQ_INT(handled, 1); /* from test_guard_and_dispatch: admit never runs a handler */
  /* admitted: dispatch skips the guard */
  guard_calls = 0;
  req->path = "/api/x";
  req->admitted = 1;
  http_response res;
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 200);
  T_EQ_INT(guard_calls, 0);
  http_response_finish(&res);
  req->admitted = 0;
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 401);
  T_EQ_INT(guard_calls, 1);
  http_response_finish(&res);
  /* a 404 quoting a path of invalid UTF-8 stays valid JSON */
  req->method = "GET";
  req->path = "/nope/\xff\xfe\xc3";
  http_response_init(&res);
  admin_router_dispatch(&r, req, &res);
  T_EQ_INT(res.status, 404);
  T_ASSERT(body_is_valid_json_utf8(&res));
  http_response_finish(&res);
  http_request_free(req);
}

int main(void) {
  T_RUN(test_match);
  T_RUN(test_add_errors);
  T_RUN(test_bind);
  T_RUN(test_query);
  T_RUN(test_guard_and_dispatch);
  T_RUN(test_admit);
  return t_done();
}
