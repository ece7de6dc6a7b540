/* router.c - route matching segment by segment; the table is small (tens of routes), so a
 * linear scan beats any index and keeps "first registered wins" obvious. */
#include "admin/router.h"

#include "util/err.h"

#include <stdio.h>
#include <string.h>

void admin_router_init(admin_router *r, void *ud) {
  memset(r, 0, sizeof(*r));
  r->ud = ud;
}

/* Length of the segment starting at s (up to '/' or the end). */
static size_t seg_len(const char *s) {
  size_t n = 0;
  while (s[n] && s[n] != '/')
    n++;
  return n;
}

static int is_param(const char *seg, size_t n) {
  return n >= 3 && seg[0] == '{' && seg[n - 1] == '}';
}

int admin_router_add(admin_router *r, const char *method, const char *pattern, admin_handler_fn fn,
                     admin_role min_role) {
  if (method == NULL || pattern == NULL || fn == NULL || pattern[0] != '/')
    return SM_EINVAL;
  size_t params = 0;
  for (const char *s = pattern + 1;;) {
    size_t n = seg_len(s);
    if (is_param(s, n))
      params++;
    if (s[n] == '\0')
      break;
    s += n + 1;
  }
  if (params > HTTP_MAX_PARAMS)
    return SM_EINVAL;
  if (r->n >= ADMIN_MAX_ROUTES)
    return SM_ELIMIT;
  r->routes[r->n++] = (admin_route){method, pattern, fn, min_role};
  return 0;
}

/* Whether path fits pattern; fills the params of m when it does. */
static int pattern_match(const char *pattern, const char *path, admin_match *m) {
  if (path[0] != '/')
    return 0;
  const char *p = pattern + 1, *s = path + 1;
  m->nparams = 0;
  for (;;) {
    size_t pn = seg_len(p), sn = seg_len(s);
    if (is_param(p, pn)) {
      if (sn == 0) /* a param never matches an empty segment */
        return 0;
      m->params[m->nparams].name = p + 1;
      m->params[m->nparams].name_len = pn - 2;
      m->params[m->nparams].value = s;
      m->params[m->nparams].value_len = sn;
      m->nparams++;
    } else if (pn != sn || memcmp(p, s, pn) != 0) {
      return 0;
    }
    int pend = p[pn] == '\0', send = s[sn] == '\0';
    if (pend || send)
      return pend && send;
    p += pn + 1;
    s += sn + 1;
  }
}

int admin_router_match(const admin_router *r, const char *method, const char *path,
                       admin_match *m) {
  memset(m, 0, sizeof(*m));
  size_t alen = 0;
  int path_known = 0;
  admin_match tmp;
  for (size_t i = 0; i < r->n; i++) {
    const admin_route *rt = &r->routes[i];
    if (!pattern_match(rt->pattern, path, &tmp))
      continue;
    if (strcmp(rt->method, method) == 0) {
      *m = tmp;
      m->route = rt;
      return 0;
    }
    path_known = 1;
    /* Allow lists each method once. */
    char probe[24];
    snprintf(probe, sizeof(probe), "%s", rt->method);
    int dup = 0;
    for (const char *a = m->allow; *a;) {
      size_t n = strcspn(a, ",");
      if (n == strlen(probe) && memcmp(a, probe, n) == 0)
        dup = 1;
      a += n;
      while (*a == ',' || *a == ' ')
        a++;
    }
    if (!dup && alen + strlen(probe) + 3 < sizeof(m->allow))
      alen += (size_t)snprintf(m->allow + alen, sizeof(m->allow) - alen, "%s%s", alen ? ", " : "",
                               probe);
  }
  return path_known ? SM_EPERM : SM_ENOENT;
}

int admin_match_bind(const admin_match *m, http_request *req) {
  req->nparams = 0;
  for (size_t i = 0; i < m->nparams; i++) {
    char *name = http_arena_strndup(&req->arena, m->params[i].name, m->params[i].name_len);
    char *value = http_arena_alloc(&req->arena, m->params[i].value_len + 1);
    if (name == NULL || value == NULL)
      return SM_ENOMEM;
    /* '+' is literal in a path; only the query uses it for spaces. */
    long n = http_percent_decode(m->params[i].value, m->params[i].value_len, value, 0);
    if (n < 0)
      return (int)n;
    req->params[i].key = name;
    req->params[i].value = value;
    req->nparams = i + 1;
  }
  return 0;
}

int admin_query_parse(http_request *req, const char *qs) {
  req->qpairs = NULL;
  req->nqpairs = 0;
  size_t pairs = 0;
  for (const char *s = qs; *s;) {
    size_t n = strcspn(s, "&");
    if (n)
      pairs++;
    s += n;
    if (*s)
      s++;
  }
  if (pairs == 0)
    return 0;
  if (pairs > HTTP_MAX_QUERY_PAIRS)
    return SM_ELIMIT;
  http_kv *kv = http_arena_alloc(&req->arena, pairs * sizeof(*kv));
  if (kv == NULL)
    return SM_ENOMEM;
  size_t i = 0;
  for (const char *s = qs; *s;) {
    size_t n = strcspn(s, "&");
    if (n) {
      const char *eq = memchr(s, '=', n);
      size_t klen = eq ? (size_t)(eq - s) : n;
      size_t vlen = eq ? n - klen - 1 : 0;
      char *k = http_arena_alloc(&req->arena, klen + 1);
      char *v = http_arena_alloc(&req->arena, vlen + 1);
      if (k == NULL || v == NULL)
        return SM_ENOMEM;
      long kn = http_percent_decode(s, klen, k, 1);
      long vn = http_percent_decode(eq ? eq + 1 : "", vlen, v, 1);
      if (kn < 0 || vn < 0)
        return SM_EPARSE;
      kv[i].key = k;
      kv[i].value = v;
      i++;
    }
    s += n;
    if (*s)
      s++;
  }
  req->qpairs = kv;
  req->nqpairs = i;
  return 0;
}

/* Looks req up and answers what needs no handler: 401/403/429 from the guard (also before a
 * 404/405 under /api/), 404, 405. Returns 1 when res is filled, else 0 with *m the match. */
static int route_or_refuse(const admin_router *r, http_request *req, http_response *res,
                           admin_match *m) {
  int err = admin_router_match(r, req->method, req->path, m);
  if (err && r->guard && strncmp(req->path, "/api/", 5) == 0) {
    /* Under /api even a 404 or 405 needs a key first: no one learns the route table without
     * one. (The probes are outside /api and stay public.) */
    const admin_route unknown = {req->method, req->path, NULL, ADMIN_ROLE_VIEWER};
    if (r->guard(r->guard_ud, req, &unknown, res))
      return 1;
  }
  if (err == SM_ENOENT) {
    /* The path is the client's bytes: http_response_error keeps the body valid UTF-8. */
    char msg[160];
    snprintf(msg, sizeof(msg), "no such resource: %.120s", req->path);
    http_response_error(res, 404, "not_found", msg);
    return 1;
  }
  if (err == SM_EPERM) {
    char msg[160];
    snprintf(msg, sizeof(msg), "method %s not allowed; allowed: %s", req->method, m->allow);
    http_response_error(res, 405, "method_not_allowed", msg);
    http_response_header(res, "Allow", m->allow);
    return 1;
  }
  return 0;
}

int admin_router_admit(const admin_router *r, http_request *req, http_response *res) {
  admin_match m;
  if (route_or_refuse(r, req, res, &m))
    return 1;
  return r->guard && r->guard(r->guard_ud, req, m.route, res);
}

void admin_router_dispatch(const admin_router *r, http_request *req, http_response *res) {
  admin_match m;
  if (route_or_refuse(r, req, res, &m))
    return;
  int err = admin_match_bind(&m, req);
  if (err == 0)
    err = admin_query_parse(req, req->query ? req->query : "");
  if (err == SM_ENOMEM) {
    http_response_error(res, 500, "internal", "out of memory");
    return;
  }
  if (err) {
    http_response_error(res, 400, "bad_request",
                        err == SM_ELIMIT ? "too many query parameters"
                                         : "malformed percent-encoding in the URL");
    return;
  }
  /* An admitted request passed the guard on its headers already (rate limits count once). */
  if (r->guard && !req->admitted && r->guard(r->guard_ud, req, m.route, res))
    return;
  m.route->fn(r->ud, req, res);
}
