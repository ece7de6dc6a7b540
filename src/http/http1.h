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

/* Request body bytes held by every parser sharing it (all connections of one server): the bodies
 * being received count with the capacity of their buffers, from their first byte until the
 * request is handed to on_request. A body that would take `used` past `max` is refused with 503
 * (the server answers it with Retry-After). */
typedef struct http1_budget {
  size_t used; /* bytes held now */
  size_t max;  /* bound on used; 0: none */
} http1_budget;

typedef struct http1_config {
  size_t max_header_bytes; /* request line + header lines; beyond: 431 */
  size_t max_body_bytes;   /* body; beyond: 413 */
  /* A whole request arrived; the callee owns req (http_request_free). Returns 0 to go on
   * parsing, non-zero to pause: http1_feed then returns early and the caller feeds the
   * rest later (pipelining backpressure, or a last request before close). */
  int (*on_request)(void *ud, http_request *req);
  void *ud;
  /* Optional: the header block of req is complete and a body follows, not one byte of it read
   * yet (req->body is NULL). Return 0 to receive the body (then on_request follows as usual), or
   * non-zero when the callee answered the request on its headers alone: the parser frees req
   * and ends, the body and anything after it are discarded (http1_feed consumes all its input
   * and refuses more), because an unread body cannot be skipped safely. */
  int (*on_headers)(void *ud, http_request *req);
  http1_budget *budget; /* optional, shared between parsers; must outlive them */
} http1_config;

/* Creates a parser for one connection. Returns 0, SM_EINVAL or SM_ENOMEM. */
int http1_create(const http1_config *cfg, http1_parser **out);

/* Frees the parser and any half-received request. NULL is fine. */
void http1_destroy(http1_parser *p);

/* Parses len bytes. Returns the number consumed (fewer than len when on_request paused), or a
 * negative SM_E* code once the input is bad, with *status the HTTP status to answer: 400
 * (malformed, or not HTTP/1.x: an HTTP/0.9 request line is refused), 413 (body too large, said
 * by Content-Length or by a chunk size, before any of it arrives), 431 (headers too large), 503
 * (the budget of buffered bodies is spent) or 500 (out of memory). After an error the parser
 * refuses all further input. */
long http1_feed(http1_parser *p, const char *data, size_t len, int *status);

/* A sequence number of the request being received (first byte seen, not complete), or 0 when
 * between requests. Numbers grow by one per request, so a caller can tell "still the same slow
 * request" from "a new one". */
uint64_t http1_pending(const http1_parser *p);

/* 1 while the request being received has not completed its header block (the server's header
 * timeout runs), 0 between requests and while a body arrives. */
int http1_in_headers(const http1_parser *p);

/* 1 once per request when the client sent "Expect: 100-continue", its headers passed the
 * limits and its body has not arrived yet: the caller answers "100 Continue" now. */
int http1_take_continue(http1_parser *p);

#endif
