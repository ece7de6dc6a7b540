/* http.c - request/response memory, header lookup, serialization, percent-decoding. */
#include "http/http.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int http_buf_append(http_buf *b, const void *data, size_t n) {
  if (n == 0)
    return 0;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
      cap *= 2;
    char *p = sm_realloc(b->p, cap);
    if (p == NULL)
      return SM_ENOMEM;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  return 0;
}

int http_buf_reserve(http_buf *b, size_t cap) {
  if (cap <= b->cap)
    return 0;
  char *p = sm_realloc(b->p, cap);
  if (p == NULL)
    return SM_ENOMEM;
  b->p = p;
  b->cap = cap;
  return 0;
}

int http_buf_printf(http_buf *b, const char *fmt, ...) {
  char small[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  if (n < 0)
    return SM_EINVAL;
  if ((size_t)n < sizeof(small))
    return http_buf_append(b, small, (size_t)n);
  char *big = sm_malloc((size_t)n + 1);
  if (big == NULL)
    return SM_ENOMEM;
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  int err = http_buf_append(b, big, (size_t)n);
  free(big);
  return err;
}

void http_buf_finish(http_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

struct http_arena_block {
  struct http_arena_block *next;
  max_align_t data[]; /* the allocation itself */
};

void *http_arena_alloc(http_arena *a, size_t n) {
  /* One block per allocation: a request makes a handful, so a bump allocator buys nothing. */
  struct http_arena_block *b = sm_malloc(sizeof(*b) + (n ? n : 1));
  if (b == NULL)
    return NULL;
  b->next = a->head;
  a->head = b;
  return b->data;
}

char *http_arena_strndup(http_arena *a, const char *s, size_t n) {
  char *p = http_arena_alloc(a, n + 1);
  if (p == NULL)
    return NULL;
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void http_arena_finish(http_arena *a) {
  struct http_arena_block *b = a->head;
  while (b) {
    struct http_arena_block *next = b->next;
    free(b);
    b = next;
  }
  a->head = NULL;
}

void http_request_free(http_request *req) {
  if (req == NULL)
    return;
  http_arena_finish(&req->arena);
  http_buf_finish(&req->head);
  free(req->body);
  free(req);
}

const char *http_request_header(const http_request *req, const char *name) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcasecmp(req->headers[i].name, name) == 0)
      return req->headers[i].value;
  return NULL;
}

const char *http_request_param(const http_request *req, const char *name) {
  for (size_t i = 0; i < req->nparams; i++)
    if (strcmp(req->params[i].key, name) == 0)
      return req->params[i].value;
  return NULL;
}

const char *http_request_query(const http_request *req, const char *key) {
  for (size_t i = 0; i < req->nqpairs; i++)
    if (strcmp(req->qpairs[i].key, key) == 0)
      return req->qpairs[i].value;
  return NULL;
}

void http_response_init(http_response *res) {
  memset(res, 0, sizeof(*res));
  res->status = 500;
}

void http_response_finish(http_response *res) {
  if (res->body)
    (res->body_free ? res->body_free : free)(res->body);
  res->body = NULL;
  res->body_len = 0;
  res->body_free = NULL;
}

int http_response_header(http_response *res, const char *name, const char *value) {
  if (res->nheaders >= HTTP_MAX_RESP_HEADERS)
    return SM_ELIMIT;
  snprintf(res->headers[res->nheaders].name, sizeof(res->headers[0].name), "%s", name);
  snprintf(res->headers[res->nheaders].value, sizeof(res->headers[0].value), "%s", value);
  res->nheaders++;
  return 0;
}

int http_response_set(http_response *res, int status, const char *content_type, const char *text,
                      size_t n) {
  http_response_finish(res);
  char *body = sm_malloc(n + 1);
  if (body == NULL) {
    res->status = 500;
    res->content_type = "text/plain";
    return SM_ENOMEM;
  }
  memcpy(body, text, n);
  body[n] = '\0';
  res->status = status;
  res->content_type = content_type;
  res->body = body;
  res->body_len = n;
  return 0;
}

/* Writes s as a JSON string body (quotes and escapes); control characters become spaces since
 * messages are ours and never need them. Messages may quote the client (a request path): bytes
 * that are not well-formed UTF-8 become U+FFFD, so the body stays valid JSON (RFC 8259 8.1). */
static int json_string(http_buf *b, const char *s) {
  int err = http_buf_append(b, "\"", 1);
  size_t n = strlen(s);
  for (size_t i = 0; !err && i < n;) {
    unsigned char c = (unsigned char)s[i];
    size_t skip = 1, len = c < 0x80 ? 1 : sm_utf8_char(s + i, n - i, &skip);
    if (len == 0) {
      err = http_buf_append(b, "\\ufffd", 6);
      len = skip;
    } else if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      err = http_buf_append(b, esc, 2);
    } else if (c < 0x20) {
      err = http_buf_append(b, " ", 1);
    } else {
      err = http_buf_append(b, s + i, len);
    }
    i += len;
  }
  return err ? err : http_buf_append(b, "\"", 1);
}

void http_response_error(http_response *res, int status, const char *code, const char *message) {
  http_buf b = {0};
  int err = http_buf_printf(&b, "{\"error\":{\"code\":");
  if (!err)
    err = json_string(&b, code);
  if (!err)
    err = http_buf_append(&b, ",\"message\":", 11);
  if (!err)
    err = json_string(&b, message);
  if (!err)
    err = http_buf_append(&b, "}}", 2);
  if (err) {
    http_buf_finish(&b);
    http_response_finish(res);
    res->status = 500;
    return;
  }
  http_response_finish(res);
  res->status = status;
  res->content_type = "application/json";
  res->body = b.p;
  res->body_len = b.len;
  res->body_free = NULL;
}

struct http_deferred {
  int refs;          /* 2 at creation: the handler's and the requester's */
  int done;          /* the handler completed */
  int released;      /* the requester released */
  http_response res; /* the answer once done */
  void (*ready)(void *ud, http_deferred *d);
  void *ready_ud;
};

static void deferred_unref(http_deferred *d) {
  if (--d->refs > 0)
    return;
  http_response_finish(&d->res);
  free(d);
}

http_deferred *http_response_defer(http_response *res) {
  if (res->deferred != NULL)
    return NULL;
  http_deferred *d = sm_calloc(1, sizeof(*d));
  if (d == NULL)
    return NULL;
  d->refs = 2;
  http_response_init(&d->res);
  res->deferred = d;
  return d;
}

void http_deferred_complete(http_deferred *d, http_response *res) {
  if (d == NULL || d->done) {
    http_response_finish(res);
    return;
  }
  d->done = 1;
  if (d->released) {
    http_response_finish(res);
  } else {
    d->res = *res;
    d->res.deferred = NULL;
  }
  http_response_init(res);
  /* The requester may release d inside ready: our own reference keeps d alive until here. */
  if (!d->released && d->ready)
    d->ready(d->ready_ud, d);
  deferred_unref(d);
}

int http_deferred_abandoned(const http_deferred *d) {
  return d == NULL || d->released;
}

void http_deferred_watch(http_deferred *d, void (*ready)(void *ud, http_deferred *d), void *ud) {
  d->ready = ready;
  d->ready_ud = ud;
}

http_response *http_deferred_response(http_deferred *d) {
  return d != NULL && d->done && !d->released ? &d->res : NULL;
}

void http_deferred_release(http_deferred *d) {
  if (d == NULL || d->released)
    return;
  d->released = 1;
  d->ready = NULL;
  d->ready_ud = NULL;
  http_response_finish(&d->res);
  deferred_unref(d);
}

const char *http_status_reason(int status) {
  switch (status) {
  case 100:
    return "Continue";
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 413:
    return "Content Too Large";
  case 415:
    return "Unsupported Media Type";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  default:
    return "Unknown";
  }
}

int http_response_serialize(const http_response *res, int keep_alive, http_buf *out) {
  size_t mark = out->len;
  const char *body = res->body ? res->body : "";
  size_t body_len = res->body ? res->body_len : 0;
  int err = http_buf_printf(out,
                            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                            "Connection: %s\r\n",
                            res->status, http_status_reason(res->status),
                            res->content_type ? res->content_type : "application/json", body_len,
                            keep_alive ? "keep-alive" : "close");
  for (size_t i = 0; !err && i < res->nheaders; i++)
    err = http_buf_printf(out, "%s: %s\r\n", res->headers[i].name, res->headers[i].value);
  if (!err)
    err = http_buf_append(out, "\r\n", 2);
  if (!err)
    err = http_buf_append(out, body, body_len);
  if (err)
    out->len = mark; /* never leave half a response in the stream */
  return err;
}

long http_percent_decode(const char *src, size_t n, char *dst, int plus_space) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = src[i];
    if (c == '%') {
      if (i + 2 >= n) /* needs two hex digits after '%' */
        return SM_EPARSE;
      int h = sm_hex_value((unsigned char)src[i + 1]), l = sm_hex_value((unsigned char)src[i + 2]);
      if (h < 0 || l < 0)
        return SM_EPARSE;
      c = (char)(h * 16 + l);
      if (c == '\0')
        return SM_EPARSE;
      i += 2;
    } else if (c == '+' && plus_space) {
      c = ' ';
    } else if (c == '\0') {
      return SM_EPARSE;
    }
    dst[o++] = c;
  }
  dst[o] = '\0';
  return (long)o;
}
