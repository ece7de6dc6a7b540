/* http1.c - llhttp adapter. llhttp hands out spans of the caller's buffer that may be split
 * across reads, so the target and header lines are copied into the request's own buffer as they
 * arrive, with offsets (the buffer moves when it grows) turned into pointers once the header
 * block is complete.
 */
#include "http/http1.h"

#include "util/alloc.h"
#include "util/err.h"

#include <assert.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

enum hstate { H_NONE = 0, H_FIELD, H_VALUE };

struct http1_parser {
  llhttp_t parser;
  llhttp_settings_t settings; /* llhttp keeps a pointer: lives as long as the parser */
  http1_config cfg;
  http_request *req; /* being received; NULL between requests */
  http_buf body;     /* body of req while receiving */
  size_t name_off[HTTP_MAX_HEADERS];
  size_t value_off[HTTP_MAX_HEADERS];
  size_t nheaders; /* header lines completed so far */
  enum hstate hstate;
  size_t charged;    /* bytes of the budget taken by `body` (its capacity) */
  int in_headers;    /* the header block of req is not complete yet */
  int stopped;       /* on_headers answered the request: everything after is discarded */
  int upgrade;       /* Upgrade/CONNECT: the connection ends after this request */
  int want_continue; /* "Expect: 100-continue" with a body still to come */
  uint64_t seq;      /* requests begun */
  int err_status;    /* HTTP status for the error a callback raised; 0: malformed */
  int failed;        /* the status to answer forever after an error; 0: fine */
};

static http1_parser *self_of(llhttp_t *parser) {
  return parser->data;
}

/* Appends to the header block, enforcing the header byte limit (431). */
static int head_append(http1_parser *p, const char *at, size_t n) {
  http_buf *h = &p->req->head;
  if (h->len + n > p->cfg.max_header_bytes) {
    p->err_status = 431;
    return HPE_USER;
  }
  if (http_buf_append(h, at, n)) {
    p->err_status = 500;
    return HPE_USER;
  }
  return 0;
}

/* Frees the body being received and gives its bytes back to the budget. */
static void body_release(http1_parser *p) {
  if (p->cfg.budget) {
    assert(p->cfg.budget->used >= p->charged);
    p->cfg.budget->used -= p->charged;
  }
  p->charged = 0;
  http_buf_finish(&p->body);
}

static int on_message_begin(llhttp_t *parser) {
  http1_parser *p = self_of(parser);
  http_request_free(p->req);
  body_release(p);
  p->req = sm_calloc(1, sizeof(*p->req));
  if (p->req == NULL) {
    p->err_status = 500;
    return HPE_USER;
  }
  p->req->start_ns = uv_hrtime();
  p->req->query = "";
  p->nheaders = 0;
  p->hstate = H_NONE;
  p->upgrade = 0;
  p->want_continue = 0;
  p->in_headers = 1;
  p->seq++;
  return 0;
}

static int on_url(llhttp_t *parser, const char *at, size_t n) {
  return head_append(self_of(parser), at, n);
}

static int on_url_complete(llhttp_t *parser) {
  return head_append(self_of(parser), "", 1);
}

/* Closes a header whose value never produced a span (an empty value). */
static int end_value(http1_parser *p) {
  if (p->hstate != H_VALUE)
    return 0;
  p->hstate = H_NONE;
  p->nheaders++;
  return head_append(p, "", 1);
}

static int on_header_field(llhttp_t *parser, const char *at, size_t n) {
  http1_parser *p = self_of(parser);
  if (p->hstate != H_FIELD) {
    int err = end_value(p);
    if (err)
      return err;
    if (p->nheaders >= HTTP_MAX_HEADERS) {
      p->err_status = 431;
      return HPE_USER;
    }
    p->name_off[p->nheaders] = p->req->head.len;
    p->hstate = H_FIELD;
  }
  return head_append(p, at, n);
}

static int on_header_field_complete(llhttp_t *parser) {
  http1_parser *p = self_of(parser);
  int err = head_append(p, "", 1);
  p->value_off[p->nheaders] = p->req->head.len;
  p->hstate = H_VALUE;
  return err;
}

static int on_header_value(llhttp_t *parser, const char *at, size_t n) {
  return head_append(self_of(parser), at, n);
}

static int on_header_value_complete(llhttp_t *parser) {
  return end_value(self_of(parser));
}

static int on_headers_complete(llhttp_t *parser) {
  http1_parser *p = self_of(parser);
  int err = end_value(p);
  if (err)
    return err;
  http_request *req = p->req;
  p->in_headers = 0;
  if (req->head.len == 0) { /* no target: cannot happen with a valid request line */
    p->err_status = 400;
    return HPE_USER;
  }
  if (parser->http_major != 1) {
    /* "GET /" without a version is HTTP/0.9 to llhttp: no headers, no framing, an answer
     * without a status line. Nobody speaks it to an API; answering it would let a request
     * through that bypassed every header check. */
    p->err_status = 400;
    return HPE_USER;
  }
  char *base = req->head.p;
  req->path = base;
  char *q = strchr(base, '?');
  if (q) {
    *q = '\0';
    req->query = q + 1;
  }
  for (size_t i = 0; i < p->nheaders; i++) {
    req->headers[i].name = base + p->name_off[i];
    req->headers[i].value = base + p->value_off[i];
  }
  req->nheaders = p->nheaders;
  req->method = llhttp_method_name((llhttp_method_t)parser->method);
  req->http_minor = parser->http_minor;
  req->keep_alive = llhttp_should_keep_alive(parser);
  p->upgrade = parser->upgrade;
  if ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > p->cfg.max_body_bytes) {
    p->err_status = 413;
    return HPE_USER;
  }
  const char *expect = http_request_header(req, "expect");
  if (expect && strcasecmp(expect, "100-continue") == 0 && req->http_minor >= 1 &&
      ((parser->flags & F_CHUNKED) || parser->content_length > 0))
    p->want_continue = 1;
  if (p->cfg.on_headers && ((parser->flags & F_CHUNKED) || parser->content_length > 0) &&
      p->cfg.on_headers(p->cfg.ud, req)) {
    /* Answered on the headers: the body is never read. */
    http_request_free(req);
    p->req = NULL;
    p->want_continue = 0;
    p->stopped = 1;
    return HPE_PAUSED;
  }
  return 0;
}

/* A chunk announces its size before its bytes: one that cannot fit is refused now, not after
 * the client sent (or failed to send) that much. */
static int on_chunk_header(llhttp_t *parser) {
  http1_parser *p = self_of(parser);
  if (parser->content_length > p->cfg.max_body_bytes - p->body.len) {
    p->err_status = 413;
    return HPE_USER;
  }
  return 0;
}

/* The budget charge for a body buffer of capacity cap: its bytes up to the body limit (the one
 * byte beyond, for the NUL the request gets, is not a body byte). */
static size_t charge_of(const http1_parser *p, size_t cap) {
  return cap < p->cfg.max_body_bytes ? cap : p->cfg.max_body_bytes;
}

static int on_body(llhttp_t *parser, const char *at, size_t n) {
  http1_parser *p = self_of(parser);
  if (p->body.len + n > p->cfg.max_body_bytes) {
    p->err_status = 413;
    return HPE_USER;
  }
  size_t need = p->body.len + n;
  if (need > p->body.cap) {
    /* Grow as the bytes arrive (never to a size the client only claims), doubling from 256
     * bytes, but never past the body limit (+1 for the NUL): the budget is charged what is
     * allocated, not just what is used. */
    size_t cap = p->body.cap ? p->body.cap * 2 : 256;
    while (cap < need)
      cap *= 2;
    if (cap > p->cfg.max_body_bytes + 1)
      cap = p->cfg.max_body_bytes + 1;
    http1_budget *b = p->cfg.budget;
    size_t more = charge_of(p, cap) - p->charged;
    if (b && b->max && (b->used > b->max || more > b->max - b->used)) {
      p->err_status = 503;
      return HPE_USER;
    }
    if (http_buf_reserve(&p->body, cap)) {
      p->err_status = 500;
      return HPE_USER;
    }
    if (b)
      b->used += more;
    p->charged += more;
  }
  int err = http_buf_append(&p->body, at, n);
  assert(err == 0); /* reserved above */
  (void)err;
  return 0;
}

static int on_message_complete(llhttp_t *parser) {
  http1_parser *p = self_of(parser);
  http_request *req = p->req;
  if (http_buf_append(&p->body, "", 1)) {
    p->err_status = 500;
    return HPE_USER;
  }
  req->body = p->body.p;
  req->body_len = p->body.len - 1;
  p->body = (http_buf){0};
  /* From here the body is the request's: it lives while the handler runs, then goes. */
  if (p->cfg.budget)
    p->cfg.budget->used -= p->charged;
  p->charged = 0;
  if (p->upgrade)
    req->keep_alive = 0; /* we speak no other protocol: answer, then close */
  p->req = NULL;
  /* The callee may pause; llhttp then stops right after this message's last byte. */
  return p->cfg.on_request(p->cfg.ud, req) ? HPE_PAUSED : 0;
}

int http1_create(const http1_config *cfg, http1_parser **out) {
  if (cfg == NULL || cfg->on_request == NULL || cfg->max_header_bytes == 0)
    return SM_EINVAL;
  http1_parser *p = sm_calloc(1, sizeof(*p));
  if (p == NULL)
    return SM_ENOMEM;
  p->cfg = *cfg;
  llhttp_settings_init(&p->settings);
  p->settings.on_message_begin = on_message_begin;
  p->settings.on_url = on_url;
  p->settings.on_url_complete = on_url_complete;
  p->settings.on_header_field = on_header_field;
  p->settings.on_header_field_complete = on_header_field_complete;
  p->settings.on_header_value = on_header_value;
  p->settings.on_header_value_complete = on_header_value_complete;
  p->settings.on_headers_complete = on_headers_complete;
  p->settings.on_chunk_header = on_chunk_header;
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  llhttp_init(&p->parser, HTTP_REQUEST, &p->settings);
  p->parser.data = p;
  *out = p;
  return 0;
}

void http1_destroy(http1_parser *p) {
  if (p == NULL)
    return;
  http_request_free(p->req);
  body_release(p);
  free(p);
}

long http1_feed(http1_parser *p, const char *data, size_t len, int *status) {
  if (p->failed) {
    *status = p->failed;
    return SM_EPARSE;
  }
  if (len == 0 || p->stopped)
    return (long)len;
  llhttp_errno_t e = llhttp_execute(&p->parser, data, len);
  if (e == HPE_OK && p->req != NULL && p->parser.http_major == 0 && p->parser.http_minor == 9) {
    /* A request line without a version ("GET /" CRLF) is HTTP/0.9 to llhttp, which then waits
     * for a header block that such a client never sends: refuse it now (also checked, for
     * input that goes on, in on_headers_complete). */
    p->err_status = 400;
    e = HPE_USER;
  }
  switch (e) {
  case HPE_OK:
    return (long)len;
  case HPE_PAUSED: {
    if (p->stopped)
      return (long)len; /* answered on its headers: the rest is not parsed */
    long used = (long)(llhttp_get_error_pos(&p->parser) - data);
    llhttp_resume(&p->parser);
    return used;
  }
  case HPE_PAUSED_UPGRADE:
    /* The request was delivered with keep_alive 0; whatever follows is not ours to parse. */
    return (long)len;
  default:
    p->failed = p->err_status ? p->err_status : 400;
    *status = p->failed;
    body_release(p);
    return p->failed == 431   ? SM_ELIMIT
           : p->failed == 413 ? SM_ETOOBIG
           : p->failed == 503 ? SM_EUNAVAIL
           : p->failed == 500 ? SM_ENOMEM
                              : SM_EPARSE;
  }
}

uint64_t http1_pending(const http1_parser *p) {
  return p->req ? p->seq : 0;
}

int http1_in_headers(const http1_parser *p) {
  return p->req != NULL && p->in_headers;
}

int http1_take_continue(http1_parser *p) {
  if (!p->want_continue || p->req == NULL)
    return 0;
  p->want_continue = 0;
  return 1;
}
