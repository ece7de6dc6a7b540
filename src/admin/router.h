/* router.h - the admin API's route table: method + path pattern ("/api/agents/{id}") to a
 * handler, with a minimum role per route (checked by the router's guard: auth.c), and
 * query-string parsing.
 */
#ifndef SM_ADMIN_ROUTER_H
#define SM_ADMIN_ROUTER_H

#include "util/err.h"

#include "http/http.h"

#include <stddef.h>

/* Who may call a route. The auth layer maps a key to a role and compares. */
typedef enum admin_role {
  ADMIN_ROLE_PUBLIC = 0, /* no key needed (/health, /ready) */
  ADMIN_ROLE_VIEWER,
  ADMIN_ROLE_OPERATOR,
  ADMIN_ROLE_ADMIN,
} admin_role;

/* Fills res for req. Runs on the loop; ud is the router's ud (the manager). */
typedef void (*admin_handler_fn)(void *ud, http_request *req, http_response *res);

typedef struct admin_route {
  const char *method;  /* "GET", "POST", ... (static text) */
  const char *pattern; /* "/api/agents/{id}": literal segments and whole-segment {params} */
  admin_handler_fn fn;
  admin_role min_role; /* the least role allowed */
} admin_route;

/* Runs before the handler of every matched route (authentication, roles, rate limits: the
 * security issue plugs in here). Returns 0 to go on, or non-zero with res filled (401, 403,
 * 429, ...). It may set req->user for the handler and the request log. */
typedef int (*admin_guard_fn)(void *guard_ud, http_request *req, const admin_route *route,
                              http_response *res);

#define ADMIN_MAX_ROUTES 64

typedef struct admin_router {
  admin_route routes[ADMIN_MAX_ROUTES]; /* in registration order; first match wins */
  size_t n;
  void *ud;             /* passed to every handler */
  admin_guard_fn guard; /* NULL: every route is open; the server sets admin_security_guard */
  void *guard_ud;
} admin_router;

/* Result of a lookup. */
typedef struct admin_match {
  const admin_route *route; /* the match, or NULL */
  struct {
    const char *name; /* into the pattern, name_len bytes */
    size_t name_len;
    const char *value; /* into the path (raw, not decoded), value_len bytes */
    size_t value_len;
  } params[HTTP_MAX_PARAMS];
  size_t nparams;
  char allow[96]; /* for 405: methods of routes whose pattern matched */
} admin_match;

/* An empty router. */
void admin_router_init(admin_router *r, void *ud);

/* Adds a route (copied; the strings must outlive the router). Returns 0, SM_EINVAL (pattern
 * not starting with '/', or more than HTTP_MAX_PARAMS params) or SM_ELIMIT (table full). */
SM_MUST_CHECK int admin_router_add(admin_router *r, const char *method, const char *pattern,
                                   admin_handler_fn fn, admin_role min_role);

/* Looks up method + path (path: NUL-terminated, raw). Returns 0 with m->route set; SM_ENOENT
 * when no pattern matches the path (404); SM_EPERM when patterns match but not for this method
 * (405, m->allow lists the methods, comma-separated). */
SM_MUST_CHECK int admin_router_match(const admin_router *r, const char *method, const char *path,
                                     admin_match *m);

/* Decodes the match's params into req->params (in req's arena). Returns 0, SM_EPARSE (bad
 * escape: 400) or SM_ENOMEM. */
SM_MUST_CHECK int admin_match_bind(const admin_match *m, http_request *req);

/* Routes req and runs its handler: 404 for an unknown path, 405 with Allow for a known path
 * and another method, 400 for a malformed path parameter or query string. The guard runs before
 * the handler (unless admin_router_admit ran it on the headers: req->admitted), and also before
 * a 404/405 under /api/ (as for a viewer route). */
void admin_router_dispatch(const admin_router *r, http_request *req, http_response *res);

/* The server's admit hook (http_server_config.admit) for a request with a body, on its header
 * block: answers now what needs no body (404, 405, and the guard's 401/403/429), so an upload
 * nobody may make is refused before it is read. Returns 0 when the body is to be read (the
 * guard passed: dispatch then skips it for this request, req->admitted), else non-zero with res
 * filled. */
int admin_router_admit(const admin_router *r, http_request *req, http_response *res);

/* Parses an application/x-www-form-urlencoded query (qs, NUL-terminated) into req->qpairs in
 * order (repeated keys kept; '+' is a space; "k" alone is k=""). Returns 0, SM_EPARSE (bad
 * escape), SM_ELIMIT (more than HTTP_MAX_QUERY_PAIRS pairs) or SM_ENOMEM. */
SM_MUST_CHECK int admin_query_parse(http_request *req, const char *qs);

#endif
