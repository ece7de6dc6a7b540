/* exporter.h - the Prometheus scrape endpoint, served by the one HTTP/1.1 server (http/server.h):
 * GET/HEAD /metrics answers the collector's text exposition (format 0.0.4), other paths 404,
 * other methods 405. Keep-alive, pipelining, limits and timeouts are the server's. Everything
 * runs on the loop.
 */
#ifndef SM_METRICS_EXPORTER_H
#define SM_METRICS_EXPORTER_H

#include "metrics/collector.h"

#include <stddef.h>
#include <uv.h>

#define METRICS_EXPORTER_MAX_CONNECTIONS 64    /* scrapers at once; extra ones get 503 */
#define METRICS_EXPORTER_MAX_HEADER_BYTES 8192 /* request head; beyond: 431 */
#define METRICS_EXPORTER_IDLE_MS 30000 /* idle connection closed; also the request timeout */
#define METRICS_EXPORTER_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct metrics_exporter metrics_exporter;

/* Creates the listener on addr ("host:port", ":port"; port 0 picks one) serving reg (borrowed,
 * must outlive the exporter). Nothing is bound yet. Returns 0, SM_EINVAL, SM_EADDR (bad address)
 * or SM_ENOMEM. */
int metrics_exporter_create(uv_loop_t *loop, const char *addr, metrics_registry *reg,
                            metrics_exporter **out);

/* Binds and listens. Returns 0 or an SM_E* code (SM_EADDR bad address, SM_EEXIST in use). */
int metrics_exporter_listen(metrics_exporter *e);

/* The bound port, 0 before listening. */
int metrics_exporter_port(const metrics_exporter *e);

/* Closes the listener and every connection; cb(ud) (optional) runs after the last close
 * callback, never inside this call, after e was freed. NULL is fine (cb is not called then). */
void metrics_exporter_close(metrics_exporter *e, void (*cb)(void *ud), void *ud);

#endif
