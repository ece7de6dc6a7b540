/* http_client.h - a small asynchronous HTTP/1.1 client on libuv (llhttp parses the answers):
 * one keep-alive connection, one request at a time, connected lazily and again after the server
 * closed it. Bodies are bounded (max_body), every request has a timeout.
 *
 * The callback of a request runs later, from a loop event, never inside lt_http_request.
 */
#ifndef SM_LOADTEST_HTTP_CLIENT_H
#define SM_LOADTEST_HTTP_CLIENT_H

#include <stddef.h>
#include <uv.h>

typedef struct lt_http lt_http;

/* An answer; body is valid only during the callback (NUL-terminated). */
typedef struct lt_http_resp {
  int status;         /* HTTP status */
  const char *body;   /* response body */
  size_t len;         /* its length */
  double retry_after; /* Retry-After in seconds, 0 when absent */
} lt_http_resp;

/* err 0 with r, or SM_ECLOSED/SM_EIO (connection), SM_ETIMEDOUT, SM_ETOOBIG (body over max),
 * SM_EPROTO (unparsable answer); r is NULL then. */
typedef void (*lt_http_cb)(void *ud, int err, const lt_http_resp *r);

/* Creates a client of addr; host is the Host header, api_key ("" none) is sent as a bearer
 * token. Returns 0 or SM_ENOMEM. Nothing connects yet. */
int lt_http_create(uv_loop_t *loop, const struct sockaddr *addr, const char *host,
                   const char *api_key, size_t max_body, double timeout_s, lt_http **out);

/* Sends one request (body copied; NULL for none, sent as application/json). Returns 0 (cb will
 * run once), SM_EAGAIN when a request is in progress, SM_ESTATE after lt_http_destroy. */
int lt_http_request(lt_http *c, const char *method, const char *path, const char *body, size_t len,
                    lt_http_cb cb, void *ud);

/* Whether a request is in progress. */
int lt_http_busy(const lt_http *c);

/* Closes the connection; a request in progress never gets its callback. Memory is released
 * after the close callbacks ran. NULL is fine. */
void lt_http_destroy(lt_http *c);

/* Parses "http://host:port" (port default 80) into host and port. Returns 0 or SM_EINVAL. */
int lt_http_parse_url(const char *url, char *host, size_t hostlen, int *port);

#endif
