/* docs/openapi.json (compiled in: admin/openapi.h) against the route table of handlers.c: every
 * route is documented with its method and least role, and every documented operation is a
 * route. */
#include "t.h"
#include "admin/auth.h"
#include "admin/handlers.h"
#include "admin/openapi.h"
#include "util/err.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <string.h>

static void lower(const char *s, char *out, size_t cap) {
  size_t i = 0;
  for (; s[i] && i + 1 < cap; i++)
    out[i] = (char)tolower((unsigned char)s[i]);
  out[i] = '\0';
}

static void test_document_matches_routes(void) {
  admin_router r;
  admin_router_init(&r, NULL);
  T_EQ_INT(admin_handlers_register(&r), 0);
  T_ASSERT(r.n >= 13);

  T_EQ_INT(strlen(admin_openapi_json), admin_openapi_json_len);
  cJSON *doc = cJSON_ParseWithLength(admin_openapi_json, admin_openapi_json_len);
  T_ASSERT(doc != NULL);
  T_ASSERT(cJSON_IsString(cJSON_GetObjectItem(doc, "openapi")));
  T_ASSERT(strncmp(cJSON_GetObjectItem(doc, "openapi")->valuestring, "3.", 2) == 0);
  const cJSON *paths = cJSON_GetObjectItem(doc, "paths");
  T_ASSERT(cJSON_IsObject(paths));

  /* route -> document */
  for (size_t i = 0; i < r.n; i++) {
    const admin_route *rt = &r.routes[i];
    char m[16];
    lower(rt->method, m, sizeof(m));
    const cJSON *op = cJSON_GetObjectItem(cJSON_GetObjectItemCaseSensitive(paths, rt->pattern), m);
    if (op == NULL)
      fprintf(stderr, "route %s %s is not in docs/openapi.json\n", rt->method, rt->pattern);
    T_ASSERT(op != NULL);
    if (rt->min_role == ADMIN_ROLE_PUBLIC) {
      const cJSON *sec = cJSON_GetObjectItem(op, "security");
      T_ASSERT(cJSON_IsArray(sec) && cJSON_GetArraySize(sec) == 0);
    } else {
      const cJSON *role = cJSON_GetObjectItem(op, "x-min-role");
      T_ASSERT(cJSON_IsString(role));
      T_EQ_STR(role->valuestring, admin_role_name(rt->min_role));
    }
  }

  /* document -> route */
  size_t ops = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, paths) {
    const cJSON *op;
    cJSON_ArrayForEach(op, p) {
      if (strcmp(op->string, "parameters") == 0)
        continue;
      ops++;
      char up[16];
      size_t k = 0;
      for (; op->string[k] && k + 1 < sizeof(up); k++)
        up[k] = (char)toupper((unsigned char)op->string[k]);
      up[k] = '\0';
      int found = 0;
      for (size_t i = 0; i < r.n; i++)
        found |= strcmp(r.routes[i].method, up) == 0 && strcmp(r.routes[i].pattern, p->string) == 0;
      if (!found)
        fprintf(stderr, "documented %s %s is not a route\n", up, p->string);
      T_ASSERT(found);
    }
  }
  T_EQ_INT(ops, r.n);
  cJSON_Delete(doc);
}

int main(void) {
  T_RUN(test_document_matches_routes);
  return t_done();
}
