/* exporter.c - the /metrics endpoint on the one HTTP server (http/server.h). A scrape is rendered
 * synchronously on the loop (the collector is in memory, a few hundred microseconds for
 * thousands of series); the server writes it at the end of the loop turn. A client pipelining
 * scrapes faster than it reads gets "Connection: close" once its output backs up, and the rest
 * of its requests are dropped (close_when_backed_up).
 */
#include "metrics/exporter.h"

#include "http/http.h"
#include "http/server.h"
#include "util/alloc.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>

struct metrics_exporter {
  metrics_registry *reg;
  http_server *http;
  void (*close_cb)(void *ud);
  void *close_ud;
};

static void handle(void *ud, http_request *req, http_response *res) {
  metrics_exporter *e = ud;
  int head = strcmp(req->method, "HEAD") == 0;
  if (strcmp(req->path, "/metrics") != 0) {
    http_response_error(res, 404, "not_found", "only /metrics is served here");
    return;
  }
  if (!head && strcmp(req->method, "GET") != 0) {
    http_response_error(res, 405, "method_not_allowed", "use GET");
    (void)http_response_header(res, "Allow", "GET, HEAD");
    return;
  }
  char *text = NULL;
  size_t len = 0;
  if (metrics_collect_text(e->reg, &text, &len) != 0) {
    http_response_error(res, 500, "internal", "out of memory rendering metrics");
    return;
  }
  if (http_response_set(res, 200, METRICS_EXPORTER_CONTENT_TYPE, text, len) != 0)
    http_response_error(res, 500, "internal", "out of memory rendering metrics");
  free(text);
  if (head) {
    /* HEAD: same headers, no body; Content-Length then says 0, which scrapers never use */
    http_response_finish(res);
  }
}

int metrics_exporter_create(uv_loop_t *loop, const char *addr, metrics_registry *reg,
                            metrics_exporter **out) {
  if (addr == NULL || reg == NULL)
    return SM_EINVAL;
  metrics_exporter *e = sm_calloc(1, sizeof(*e));
  if (e == NULL)
    return SM_ENOMEM;
  e->reg = reg;
  http_server_config hc = {
      .addr = addr,
      .max_connections = METRICS_EXPORTER_MAX_CONNECTIONS,
      .max_header_bytes = METRICS_EXPORTER_MAX_HEADER_BYTES,
      .max_body_bytes = 0,
      .request_timeout_s = METRICS_EXPORTER_IDLE_MS / 1000.0,
      .idle_timeout_s = METRICS_EXPORTER_IDLE_MS / 1000.0,
      .close_when_backed_up = 1, /* Prometheus never pipelines: a flood is cut, not buffered */
      .log_name = "metrics",
      .log_requests = 0,
      .handle = handle,
      .ud = e,
  };
  int err = http_server_create(loop, &hc, &e->http);
  if (err) {
    free(e);
    return err;
  }
  *out = e;
  return 0;
}

int metrics_exporter_listen(metrics_exporter *e) {
  return http_server_listen(e->http);
}

int metrics_exporter_port(const metrics_exporter *e) {
  int port = http_server_port(e->http);
  return port < 0 ? 0 : port;
}

static void server_closed(void *ud) {
  metrics_exporter *e = ud;
  if (e->close_cb)
    e->close_cb(e->close_ud);
  free(e);
}

void metrics_exporter_close(metrics_exporter *e, void (*cb)(void *ud), void *ud) {
  if (e == NULL)
    return;
  e->close_cb = cb;
  e->close_ud = ud;
  http_server_close(e->http, server_closed, e);
}
