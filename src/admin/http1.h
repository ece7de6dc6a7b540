/* http1.h - the llhttp adapter: turns a connection's bytes into admin_request objects, with the
 * header and body limits enforced while parsing. No socket here, so tests feed it from memory.
 * The only file that includes llhttp.h is http1.c.
 */
#ifndef SM_ADMIN_HTTP1_H
#define SM_ADMIN_HTTP1_H

#include "admin/http.h"

#include <stddef.h>
#include <stdint.h>

typedef struct admin_http1 admin_http1;

typedef struct admin_http1_config {
  size_t max_header_bytes; /* request line + header lines; beyond: 431 */
  size_t max_body_bytes;   /* body; beyond: 413 */
  /* A whole request arrived; the callee owns req (admin_request_free). Returns 0 to go on
   * parsing, non-zero to pause: admin_http1_feed then returns early and the caller feeds the
   * rest later (pipelining backpressure, or a last request before close). */
  int (*on_request)(void *ud, admin_request *req);
  void *ud;
} admin_http1_config;

/* Creates a parser for one connection. Returns 0, SM_EINVAL or SM_ENOMEM. */
int admin_http1_create(const admin_http1_config *cfg, admin_http1 **out);

/* Frees the parser and any half-received request. NULL is fine. */
void admin_http1_destroy(admin_http1 *p);

/* Parses len bytes. Returns the number consumed (fewer than len when on_request paused), or a
 * negative SM_E* code once the input is bad, with *status the HTTP status to answer: 400
 * (malformed), 413 (body too large), 431 (headers too large) or 500 (out of memory). After an
 * error the parser refuses all further input. */
long admin_http1_feed(admin_http1 *p, const char *data, size_t len, int *status);

/* A sequence number of the request being received (first byte seen, not complete), or 0 when
 * between requests. Numbers grow by one per request, so a caller can tell "still the same slow
 * request" from "a new one". */
uint64_t admin_http1_pending(const admin_http1 *p);

/* 1 once per request when the client sent "Expect: 100-continue", its headers passed the
 * limits and its body has not arrived yet: the caller answers "100 Continue" now. */
int admin_http1_take_continue(admin_http1 *p);

#endif
