/* http1.h - the llhttp adapter: turns a connection's bytes into http_request objects, with the
 * header and body limits enforced while parsing. No socket here, so tests feed it from memory.
 * The only file that includes llhttp.h is http1.c.
 */
#ifndef SM_HTTP_HTTP1_H
#define SM_HTTP_HTTP1_H

#include "http/http.h"

#include <stddef.h>
#include <stdint.h>

typedef struct http1_parser http1_parser;

typedef struct http1_config {
  size_t max_header_bytes; /* request line + header lines; beyond: 431 */
  size_t max_body_bytes;   /* body; beyond: 413 */
  /* A whole request arrived; the callee owns req (http_request_free). Returns 0 to go on
   * parsing, non-zero to pause: http1_feed then returns early and the caller feeds the
   * rest later (pipelining backpressure, or a last request before close). */
  int (*on_request)(void *ud, http_request *req);
  void *ud;
} http1_config;

/* Creates a parser for one connection. Returns 0, SM_EINVAL or SM_ENOMEM. */
int http1_create(const http1_config *cfg, http1_parser **out);

/* Frees the parser and any half-received request. NULL is fine. */
void http1_destroy(http1_parser *p);

/* Parses len bytes. Returns the number consumed (fewer than len when on_request paused), or a
 * negative SM_E* code once the input is bad, with *status the HTTP status to answer: 400
 * (malformed), 413 (body too large), 431 (headers too large) or 500 (out of memory). After an
 * error the parser refuses all further input. */
long http1_feed(http1_parser *p, const char *data, size_t len, int *status);

/* A sequence number of the request being received (first byte seen, not complete), or 0 when
 * between requests. Numbers grow by one per request, so a caller can tell "still the same slow
 * request" from "a new one". */
uint64_t http1_pending(const http1_parser *p);

/* 1 once per request when the client sent "Expect: 100-continue", its headers passed the
 * limits and its body has not arrived yet: the caller answers "100 Continue" now. */
int http1_take_continue(http1_parser *p);

#endif
