/* exporter.c - the /metrics HTTP/1.1 listener. A scrape is rendered synchronously on the loop
 * (the collector is in memory, a few hundred microseconds for thousands of series) and queued
 * with one net_conn_write; the transport gathers and flushes it at the end of the loop turn.
 *
 * Pipelining: requests are answered in order as they are parsed. Prometheus never pipelines,
 * so when a client's queued output passes METRICS_EXPORTER_MAX_OUTPUT the rest of its input is
 * dropped and the connection closes once the queued responses are written: output is bounded
 * without buffering input.
 */
#include "metrics/exporter.h"

#include "http/http.h"
#include "http/http1.h"
#include "net/tcp.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

struct metrics_exporter {
  metrics_registry *reg;
  net_listener *listener;
  void (*close_cb)(void *ud);
  void *close_ud;
};

typedef struct mconn {
  metrics_exporter *e;
  http1_parser *parser;
  int closing; /* a final response is queued: ignore further input */
} mconn;

static void arm_idle(net_conn *c) {
  net_conn_set_timer(c, net_conn_now(c) + METRICS_EXPORTER_IDLE_MS);
}

static void respond(net_conn *c, http_response *res, int keep_alive) {
  http_buf out = {0};
  if (http_response_serialize(res, keep_alive, &out) == 0)
    net_conn_write(c, (const uint8_t *)out.p, out.len);
  http_buf_finish(&out);
}

static void answer(metrics_exporter *e, const http_request *req, http_response *res) {
  int head = strcmp(req->method, "HEAD") == 0;
  if (strcmp(req->path, "/metrics") != 0) {
    http_response_error(res, 404, "not_found", "only /metrics is served here");
    return;
  }
  if (!head && strcmp(req->method, "GET") != 0) {
    http_response_error(res, 405, "method_not_allowed", "use GET");
    http_response_header(res, "Allow", "GET, HEAD");
    return;
  }
  char *text = NULL;
  size_t len = 0;
  if (metrics_collect_text(e->reg, &text, &len) != 0) {
    http_response_error(res, 500, "internal", "out of memory rendering metrics");
    return;
  }
  http_response_set(res, 200, METRICS_EXPORTER_CONTENT_TYPE, text, len);
  free(text);
  if (head) {
    /* HEAD: same headers, no body; Content-Length then says 0, which scrapers never use */
    free(res->body);
    res->body = NULL;
    res->body_len = 0;
  }
}

static int on_request(void *ud, http_request *req) {
  net_conn *c = ud;
  mconn *mc = net_conn_data(c);
  if (mc->closing) {
    http_request_free(req);
    return 1;
  }
  http_response res;
  http_response_init(&res);
  answer(mc->e, req, &res);
  int keep = req->keep_alive && net_conn_output(c) < METRICS_EXPORTER_MAX_OUTPUT;
  respond(c, &res, keep);
  http_response_finish(&res);
  http_request_free(req);
  if (!keep) {
    mc->closing = 1;
    return 1; /* pause: the rest of the input is dropped */
  }
  return 0;
}

static int on_open(net_conn *c) {
  metrics_exporter *e = net_listener_data(net_conn_listener(c));
  mconn *mc = sm_calloc(1, sizeof(*mc));
  if (mc == NULL)
    return SM_ENOMEM;
  mc->e = e;
  http1_config pc = {
      .max_header_bytes = METRICS_EXPORTER_MAX_HEADER_BYTES,
      .max_body_bytes = 0,
      .on_request = on_request,
      .ud = c,
  };
  int err = http1_create(&pc, &mc->parser);
  if (err) {
    free(mc);
    return err;
  }
  net_conn_set_data(c, mc);
  arm_idle(c);
  return 0;
}

static int on_read(net_conn *c, const uint8_t *data, size_t len) {
  mconn *mc = net_conn_data(c);
  if (mc->closing)
    return 0;
  arm_idle(c);
  int status = 0;
  long n = http1_feed(mc->parser, (const char *)data, len, &status);
  if (n < 0) {
    http_response res;
    http_response_init(&res);
    http_response_error(&res, status, "bad_request", "malformed request");
    respond(c, &res, 0);
    http_response_finish(&res);
    mc->closing = 1;
  }
  if (mc->closing)
    net_conn_close(c, SM_ECLOSED, 1);
  return 0;
}

static int on_flush(net_conn *c) {
  (void)c;
  return 0;
}

static int on_timer(net_conn *c) {
  (void)c;
  return SM_ETIMEDOUT;
}

static void on_close(net_conn *c, int reason) {
  (void)reason;
  mconn *mc = net_conn_data(c);
  if (mc == NULL)
    return;
  http1_destroy(mc->parser);
  free(mc);
  net_conn_set_data(c, NULL);
}

static const net_conn_ops conn_ops = {
    .on_open = on_open,
    .on_read = on_read,
    .on_flush = on_flush,
    .on_timer = on_timer,
    .on_close = on_close,
};

int metrics_exporter_create(uv_loop_t *loop, const char *addr, metrics_registry *reg,
                            metrics_exporter **out) {
  if (addr == NULL || reg == NULL)
    return SM_EINVAL;
  metrics_exporter *e = sm_calloc(1, sizeof(*e));
  if (e == NULL)
    return SM_ENOMEM;
  e->reg = reg;
  net_listener_config lc = {
      .addr = addr,
      .max_connections = METRICS_EXPORTER_MAX_CONNECTIONS,
      .max_output_bytes = METRICS_EXPORTER_MAX_OUTPUT,
      .stall_timeout_s = 30,
      .handshake_timeout_s = 10,
      .tls = NULL,
      .ops = &conn_ops,
      .ud = e,
      .name = "metrics",
  };
  int err = net_listener_create(loop, &lc, &e->listener);
  if (err) {
    free(e);
    return err;
  }
  *out = e;
  return 0;
}

int metrics_exporter_listen(metrics_exporter *e) {
  return net_listener_listen(e->listener);
}

int metrics_exporter_port(const metrics_exporter *e) {
  return net_listener_port(e->listener);
}

static void listener_closed(void *ud) {
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
  net_listener_close(e->listener, listener_closed, e);
}
