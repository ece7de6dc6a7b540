/* metrics_handler.c - GET /api/metrics: the collector's figures as JSON for the dashboard, the
 * same numbers /metrics on METRICS_ADDR exposes to Prometheus (metrics/collector.h renders). */
#include "admin/metrics_handler.h"

#include "admin/api.h"
#include "metrics/collector.h"

#include "util/alloc.h"

#include <stdio.h>
#include <stdlib.h>

static void h_metrics(void *ud, http_request *req, http_response *res) {
  (void)req;
  const admin_api *m = ud;
  metrics_registry *reg = m->metrics ? m->metrics(m->ud) : NULL;
  if (reg == NULL) {
    http_response_error(res, 503, "unavailable", "metrics are not running");
    return;
  }
  char *text = NULL;
  size_t len = 0;
  if (metrics_collect_json(reg, &text, &len) != 0) {
    http_response_error(res, 500, "internal", "out of memory rendering metrics");
    return;
  }
  /* {"metrics":{<family>:{"type","help","series":[...]}}}: the body is built around the
   * collector's JSON without parsing it again */
  static const char head[] = "{\"metrics\":";
  char *body = sm_malloc(sizeof(head) - 1 + len + 2);
  if (body == NULL) {
    free(text);
    http_response_error(res, 500, "internal", "out of memory rendering metrics");
    return;
  }
  int n = snprintf(body, sizeof(head) - 1 + len + 2, "%s%s}", head, text);
  free(text);
  http_response_set(res, 200, "application/json", body, n > 0 ? (size_t)n : 0);
  free(body);
}

int admin_metrics_handler_register(admin_router *r) {
  return admin_router_add(r, "GET", "/api/metrics", h_metrics, ADMIN_ROLE_VIEWER);
}
