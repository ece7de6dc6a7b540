/* http.h - the HTTP/1.1 request and response of every listener, independent of the parser library
 * and of the socket: handlers see only these types.
 *
 * A request owns all its memory (target, headers, body, decoded parameters) and frees it in one
 * go (http_request_free). A response is filled by a handler and serialized by the connection,
 * or deferred by the handler and completed later (http_response_defer, below).
 */
#ifndef SM_HTTP_HTTP_H
#define SM_HTTP_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* Limits a peer cannot push past; the byte limits are the server's (http_server_config). */
#define HTTP_MAX_HEADERS 64     /* header lines per request; beyond: 431 */
#define HTTP_MAX_QUERY_PAIRS 64 /* key=value pairs in a query string; beyond: 400 */
#define HTTP_MAX_PARAMS 4       /* {param} segments in a route pattern */
#define HTTP_MAX_RESP_HEADERS 8 /* extra response headers a handler may add */
#define HTTP_PIPELINE_MAX 16    /* responses queued per connection before reading stops */
#define HTTP_OUTPUT_HIGH_WATER                                                                     \
  (256u * 1024u)            /* output bytes per connection before reading stops                    \
                             */
#define HTTP_LINGER_MS 2000 /* after a final response, discard input this long, then close */

/* A growable byte buffer with an explicit maximum (0: the caller enforces limits itself). */
typedef struct http_buf {
  char *p;    /* bytes; NULL while empty and never grown */
  size_t len; /* bytes in use */
  size_t cap; /* bytes allocated */
} http_buf;

/* Appends n bytes. Returns 0 or SM_ENOMEM. */
int http_buf_append(http_buf *b, const void *data, size_t n);
/* Makes the capacity at least cap bytes (exactly cap when it grows). Returns 0 or SM_ENOMEM. */
int http_buf_reserve(http_buf *b, size_t cap);
/* Appends printf-formatted text. Returns 0, SM_ENOMEM or SM_EINVAL. */
int http_buf_printf(http_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Frees the bytes; the buffer is empty afterwards. */
void http_buf_finish(http_buf *b);

/* Request-scoped allocations, freed together with the request. */
typedef struct http_arena {
  struct http_arena_block *head; /* newest block first */
} http_arena;

/* n bytes (aligned for any type) that live as long as the arena; NULL on allocation failure. */
void *http_arena_alloc(http_arena *a, size_t n);
/* A NUL-terminated copy of n bytes; NULL on allocation failure. */
char *http_arena_strndup(http_arena *a, const char *s, size_t n);
/* Frees every block. */
void http_arena_finish(http_arena *a);

typedef struct http_header {
  const char *name;  /* NUL-terminated, as sent */
  const char *value; /* NUL-terminated, as sent (may be "") */
} http_header;

typedef struct http_kv {
  const char *key;   /* NUL-terminated, percent-decoded */
  const char *value; /* NUL-terminated, percent-decoded */
} http_kv;

typedef struct http_request {
  const char *method; /* "GET", "POST", ... (static text) */
  const char *path;   /* request target before '?', raw (not decoded), NUL-terminated */
  const char *query;  /* text after '?', raw, NUL-terminated; "" when absent */
  http_header headers[HTTP_MAX_HEADERS];
  size_t nheaders;
  char *body; /* NUL-terminated for convenience; body_len bytes */
  size_t body_len;
  int keep_alive;                  /* the client allows another request on this connection */
  int http_minor;                  /* 0 or 1 */
  uint64_t start_ns;               /* uv_hrtime() when its first byte arrived */
  const char *peer;                /* client address "ip:port", set by the server */
  http_kv params[HTTP_MAX_PARAMS]; /* {param} values of the matched route, decoded */
  size_t nparams;
  http_kv *qpairs; /* the parsed query string, in order; repeated keys kept */
  size_t nqpairs;
  const void *user; /* the auth layer's admin_key of the caller (auth.h), or NULL */
  int admitted;     /* the server's admit hook passed it on its header block (server.h) */
  http_arena arena; /* everything above that is not static */
  http_buf head;    /* storage of target and header lines while parsing */
} http_request;

/* Frees the request and all its memory. NULL is fine. */
void http_request_free(http_request *req);

/* Header value by case-insensitive name, or NULL. */
const char *http_request_header(const http_request *req, const char *name);

/* Route parameter by name ("id" of "/api/agents/{id}"), or NULL. */
const char *http_request_param(const http_request *req, const char *name);

/* First query value for key, or NULL; repeated keys: iterate req->qpairs. */
const char *http_request_query(const http_request *req, const char *key);

typedef struct http_deferred http_deferred;

typedef struct http_response {
  int status;               /* HTTP status code */
  const char *content_type; /* static text; "application/json" when NULL */
  char *body;               /* owned; freed with body_free (or free when NULL) */
  size_t body_len;
  void (*body_free)(void *);
  struct {
    char name[32];
    char value[96];
  } headers[HTTP_MAX_RESP_HEADERS];
  size_t nheaders;
  int close;               /* close the connection after this response */
  http_deferred *deferred; /* set by http_response_defer: the answer comes later */
} http_response;

/* An empty 500 response: handlers overwrite it. */
void http_response_init(http_response *res);
/* Frees the body. */
void http_response_finish(http_response *res);
/* Adds a response header (copied, truncated to the field sizes). Returns 0 or SM_ELIMIT. */
int http_response_header(http_response *res, const char *name, const char *value);
/* Sets a body copied from text (n bytes). Returns 0 or SM_ENOMEM (then a 500 is answered). */
int http_response_set(http_response *res, int status, const char *content_type, const char *text,
                      size_t n);
/* Answers {"error":{"code":code,"message":message}} with status. */
void http_response_error(http_response *res, int status, const char *code, const char *message);

/* Deferred responses. A handler whose answer needs an asynchronous call (store, lifecycle)
 * calls http_response_defer(res), leaves res alone, and later hands the real response to
 * http_deferred_complete. The deferred object has two owners, each dropping its reference once:
 * the handler (by completing) and the requester that called the router (by releasing). Either
 * may go first, so a completion after the connection closed is dropped safely, and a requester
 * that gives up (timeout, close) never sees a late answer. */

/* Marks res as answered later and returns the handle to complete, or NULL when out of memory
 * (then the handler answers synchronously, e.g. 500). At most once per response. */
http_deferred *http_response_defer(http_response *res);

/* The handler's answer: takes res's contents (res is left empty, as after http_response_init)
 * and drops the handler's reference; d must not be used afterwards. May run inside the handler
 * itself (before the requester watches) or from any later loop event. When the requester is gone,
 * the response is freed. */
void http_deferred_complete(http_deferred *d, http_response *res);

/* 1 when the requester released d (connection closed, timed out): the handler may skip work. */
int http_deferred_abandoned(const http_deferred *d);

/* Requester side: ready(ud, d) runs inside http_deferred_complete (so it must only note that the
 * answer is there, never write to a socket). Not called when d is already complete: check
 * http_deferred_response first. */
void http_deferred_watch(http_deferred *d, void (*ready)(void *ud, http_deferred *d), void *ud);

/* Requester side: the completed response, or NULL while the handler has not answered. */
http_response *http_deferred_response(http_deferred *d);

/* Requester side: drops the requester's reference (and any watch). NULL is fine. */
void http_deferred_release(http_deferred *d);

/* Reason phrase of a status code ("Not Found"); "Unknown" for others. */
const char *http_status_reason(int status);

/* Appends the full HTTP/1.1 response (status line, Content-Type, Content-Length, Connection,
 * extra headers, body) to out. Returns 0 or SM_ENOMEM. */
int http_response_serialize(const http_response *res, int keep_alive, http_buf *out);

/* Decodes %XX escapes (and '+' as space when plus_space) of n bytes into dst (at least n+1
 * bytes), NUL-terminated. Returns the decoded length or SM_EPARSE for a bad escape or an
 * embedded NUL. */
long http_percent_decode(const char *src, size_t n, char *dst, int plus_space);

#endif
