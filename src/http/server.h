/* server.h - the one HTTP/1.1 server of the manager (admin API, metrics exporter, dashboard),
 * on net/tcp (and net/tls for HTTPS). It knows connections and HTTP, not routes or auth: every
 * request goes to one handler that fills the response or defers it (http_response_defer).
 *
 * - Keep-alive and pipelining: answers leave in request order. Reading stops while a connection
 *   has HTTP_PIPELINE_MAX answers unwritten or waiting (deferred) or HTTP_OUTPUT_HIGH_WATER
 *   bytes unwritten; the unparsed rest of the input waits until the output drains.
 * - Connection limit: at most max_connections open. A newcomer beyond it closes the connection
 *   that costs least to lose: first one that never completed a request (oldest first: idle
 *   sockets, slow headers), else an idle keep-alive one (longest idle first), as nginx reuses
 *   its idle connections; only when every connection is in use (a request being received past
 *   its headers, or being answered) does the newcomer get 503 with Retry-After and close. With
 *   max_connections_per_addr, a client address holding that many gets 503 at once. One warn
 *   line per second at most says what was evicted and refused. The transport (net/tcp) accepts
 *   up to twice max_connections so that this layer sees the newcomers (the rest covers
 *   connections still closing and TLS handshakes); beyond that it refuses on its own.
 * - Limits: max_header_bytes (431), max_body_bytes (413; a chunk size over it too, before the
 *   chunk arrives), malformed input or a request line without HTTP/1.x (400),
 *   max_buffered_body_bytes across all connections (503 with Retry-After); each ends the
 *   connection after its answer.
 * - Early answers: with `admit`, a request with a body is checked on its header block alone
 *   and may be answered before a byte of the body is read (then the connection closes: an
 *   unread body cannot be skipped safely).
 * - Timeouts: a request's header block must arrive within header_timeout (for the first request
 *   of a connection, counted from the connection's open: an idle socket is closed in silence,
 *   a partial request line or header block gets 408), the whole request within request_timeout
 *   (else 408); an idle keep-alive connection closes after idle_timeout; a client that does not
 *   read its answers is dropped after request_timeout; a TLS handshake must finish within
 *   header_timeout.
 * - Deferred responses get defer_timeout; then the client gets 503 with Retry-After and the
 *   handler's late completion is dropped (http_deferred_abandoned turns 1).
 * - After a final answer ("Connection: close", an error, stop_accepting) the server writes
 *   everything, shuts its side down and discards input for HTTP_LINGER_MS (net/tcp linger).
 * - Output is gathered and written once per loop turn (net/tcp).
 *
 * Everything runs on the loop's thread.
 */
#ifndef SM_HTTP_SERVER_H
#define SM_HTTP_SERVER_H

#include "http/http.h"
#include "util/err.h"

#include <stddef.h>
#include <uv.h>

typedef struct http_server http_server;

typedef struct http_server_config {
  const char *addr;          /* "host:port", ":port", "[v6]:port"; port 0 picks one (copied) */
  const char *tls_cert_file; /* PEM chain; with tls_key_file: HTTPS (ALPN http/1.1 when offered) */
  const char *tls_key_file;  /* NULL (or "") both: plain HTTP */
  size_t max_connections;    /* open connections; beyond: evict an idle one, else 503 (top) */
  size_t max_connections_per_addr; /* open connections per client address; 0: no limit */
  size_t max_header_bytes;         /* request line + headers; beyond: 431 */
  size_t max_body_bytes;           /* request body; beyond: 413 (0: no body allowed) */
  size_t max_buffered_body_bytes;  /* bodies being received, all connections; 0: no bound */
  double header_timeout_s;         /* header block (and TLS handshake) in this; <= 0 (or more than
                                      request_timeout_s): the request timeout */
  double request_timeout_s;        /* a request must arrive whole in this */
  double idle_timeout_s;  /* a keep-alive connection with nothing to do closes after this */
  double defer_timeout_s; /* a deferred response must complete in this; <= 0: request timeout */
  /* 0: a connection whose output backs up (HTTP_PIPELINE_MAX answers or HTTP_OUTPUT_HIGH_WATER
   * bytes unwritten) stops being read until it drains. 1: the request that finds it backed up
   * is answered with "Connection: close" and the input after it is dropped, for listeners whose
   * clients never pipeline (Prometheus): output stays bounded without holding input. */
  int close_when_backed_up;
  const char *log_name; /* log component, e.g. "admin" (copied) */
  int log_requests;     /* 1: one info line "request" per answer (method, path, status, ...) */
  /* Optional: names the caller in the request line ("key"); NULL or a NULL result: "anonymous".
   * Called during handle (the string is copied for a deferred answer). */
  const char *(*who)(const http_request *req);
  /* The handler. req belongs to the server and is freed when handle returns (req->peer is the
   * client's "ip:port"). handle fills res (status, body, headers, close) or calls
   * http_response_defer(res) and completes the deferred object later (http.h). Never NULL. */
  void (*handle)(void *ud, http_request *req, http_response *res);
  void *ud;
  /* Optional: a request with a body has its header block, none of the body read yet (req->body
   * is NULL, req->peer set). Return 0 to read the body (handle then sees req with
   * req->admitted 1), or non-zero with res filled to answer now, synchronously (never
   * deferred): the connection ends after that answer, the body unread. Lets a server refuse an
   * upload (401, 403, 404, ...) before it costs memory. */
  int (*admit)(void *ud, http_request *req, http_response *res);
} http_server_config;

/* Creates a server (nothing bound yet): checks the address, loads the TLS certificate and key.
 * Returns 0, SM_EINVAL (no handle, zero limits), SM_EADDR (bad address), SM_ETLS (certificate
 * or key unusable; logged) or SM_ENOMEM. */
SM_MUST_CHECK int http_server_create(uv_loop_t *loop, const http_server_config *cfg,
                                     http_server **out);

/* Binds and listens. Returns 0, SM_EADDR (bad or unresolvable address), SM_EEXIST (in use),
 * SM_EPERM or another SM_E* code; logged. */
SM_MUST_CHECK int http_server_listen(http_server *srv);

/* The bound port (useful with port 0), or -1 before listening. */
int http_server_port(const http_server *srv);

/* Connections open now (those closing included until they are gone). */
size_t http_server_connections(const http_server *srv);

/* Drain: closes the listening socket and the idle keep-alive connections; the others get
 * "Connection: close" on their next answer. Safe to call more than once. */
void http_server_stop_accepting(http_server *srv);

/* Closes the listener and every connection at once: waiting deferred responses are released
 * (their handlers' completions are dropped). cb(ud) runs exactly once, after the last handle
 * closed and srv was freed, never inside this call. NULL srv: nothing happens (no cb). A second
 * call is ignored. */
void http_server_close(http_server *srv, void (*cb)(void *ud), void *ud);

#endif
