/* http_client.c - the llhttp adapter of sirius-loadtest: requests are formatted into one buffer
 * and written at once; the answer's body is gathered up to max_body. A completed message pauses
 * the parser so the callback (which may start the next request) runs outside llhttp_execute. */
#include "loadtest/http_client.h"

#include "util/alloc.h"
#include "util/err.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum conn_state { C_DOWN = 0, C_CONNECTING, C_UP, C_CLOSING };

struct lt_http {
  uv_loop_t *loop;
  uv_tcp_t tcp;                 /* the connection (initialised per connect) */
  uv_timer_t timer;             /* request timeout */
  uv_connect_t connect_req;     /* pending connect */
  struct sockaddr_storage addr; /* server */
  char host[256];               /* Host header */
  char auth[300];               /* Authorization header line, "" none */
  enum conn_state state;
  int open;      /* handles not yet closed */
  int destroyed; /* lt_http_destroy called */
  int busy;      /* a request in progress */
  uint64_t gen;  /* request generation (stale write callbacks are ignored) */
  char *out;     /* the pending request's bytes until written */
  size_t outlen;
  lt_http_cb cb; /* the request's callback */
  void *ud;
  double timeout_s; /* per request */
  llhttp_t parser;
  llhttp_settings_t settings; /* llhttp keeps a pointer: lives as long as the parser */
  char *body;                 /* gathered body */
  size_t blen, bcap, max_body;
  int too_big;     /* body exceeded max_body */
  int complete;    /* the answer is complete */
  char hfield[16]; /* current header name (only Retry-After matters) */
  size_t hflen;
  char hval[32]; /* current header value */
  size_t hvlen;
  double retry_after;
  char rbuf[65536]; /* read buffer */
};

typedef struct write_req {
  uv_write_t req;
  lt_http *c;
  uint64_t gen;
  char data[]; /* the request's bytes */
} write_req;

static int start_connect(lt_http *c);

static lt_http *of_parser(llhttp_t *p) {
  return p->data;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  lt_http *c = of_parser(p);
  size_t k = n < sizeof(c->hfield) - 1 - c->hflen ? n : sizeof(c->hfield) - 1 - c->hflen;
  memcpy(c->hfield + c->hflen, at, k);
  c->hflen += k;
  c->hfield[c->hflen] = '\0';
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  lt_http *c = of_parser(p);
  size_t k = n < sizeof(c->hval) - 1 - c->hvlen ? n : sizeof(c->hval) - 1 - c->hvlen;
  memcpy(c->hval + c->hvlen, at, k);
  c->hvlen += k;
  c->hval[c->hvlen] = '\0';
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  lt_http *c = of_parser(p);
  if (strcasecmp(c->hfield, "retry-after") == 0)
    c->retry_after = atof(c->hval);
  c->hflen = c->hvlen = 0;
  c->hfield[0] = c->hval[0] = '\0';
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  lt_http *c = of_parser(p);
  if (c->too_big || c->blen + n + 1 > c->max_body) {
    c->too_big = 1;
    return 0;
  }
  if (c->blen + n + 1 > c->bcap) {
    size_t cap = c->bcap ? c->bcap : 4096;
    while (cap < c->blen + n + 1)
      cap *= 2;
    char *b = sm_realloc(c->body, cap);
    if (b == NULL) {
      c->too_big = 1;
      return 0;
    }
    c->body = b;
    c->bcap = cap;
  }
  memcpy(c->body + c->blen, at, n);
  c->blen += n;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  lt_http *c = of_parser(p);
  c->complete = 1;
  return HPE_PAUSED;
}

static void on_handle_closed(uv_handle_t *h) {
  lt_http *c = h->data;
  if (h == (uv_handle_t *)&c->tcp)
    c->state = C_DOWN;
  if (--c->open > 0 || !c->destroyed) {
    /* A request that came while the old connection was closing connects now. */
    if (!c->destroyed && c->busy && c->state == C_DOWN && h == (uv_handle_t *)&c->tcp) {
      int err = start_connect(c);
      if (err) {
        lt_http_cb cb = c->cb;
        c->busy = 0;
        uv_timer_stop(&c->timer);
        cb(c->ud, err, NULL);
      }
    }
    return;
  }
  free(c->body);
  free(c->out);
  free(c);
}

static void close_tcp(lt_http *c) {
  if (c->state == C_CONNECTING || c->state == C_UP) {
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  }
}

/* Ends the request in progress with err and drops the connection. */
static void fail(lt_http *c, int err) {
  if (!c->busy)
    return;
  c->busy = 0;
  uv_timer_stop(&c->timer);
  free(c->out);
  c->out = NULL;
  close_tcp(c);
  c->cb(c->ud, err, NULL);
}

static void on_written(uv_write_t *w, int status) {
  write_req *r = (write_req *)w;
  lt_http *c = r->c;
  if (status < 0 && status != UV_ECANCELED && !c->destroyed && c->busy && c->gen == r->gen)
    fail(c, SM_EIO);
  free(r);
}

static void send_out(lt_http *c) {
  write_req *r = sm_malloc(sizeof(*r) + c->outlen);
  if (r == NULL) {
    fail(c, SM_ENOMEM);
    return;
  }
  memcpy(r->data, c->out, c->outlen);
  r->c = c;
  r->gen = c->gen;
  uv_buf_t b = uv_buf_init(r->data, (unsigned)c->outlen);
  free(c->out);
  c->out = NULL;
  int rc = uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
  if (rc) {
    free(r);
    fail(c, SM_EIO);
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  lt_http *c = h->data;
  (void)hint;
  *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  lt_http *c = s->data;
  if (n == 0)
    return;
  if (n < 0) {
    if (c->busy)
      fail(c, SM_ECLOSED);
    else
      close_tcp(c);
    return;
  }
  if (!c->busy) { /* bytes nobody asked for: the connection is out of step */
    close_tcp(c);
    return;
  }
  llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)n);
  if (e != HPE_OK && e != HPE_PAUSED) {
    fail(c, SM_EPROTO);
    return;
  }
  if (!c->complete)
    return;
  if (c->too_big) {
    fail(c, SM_ETOOBIG);
    return;
  }
  int keep = llhttp_should_keep_alive(&c->parser);
  lt_http_resp r = {.status = llhttp_get_status_code(&c->parser),
                    .body = c->body ? c->body : "",
                    .len = c->blen,
                    .retry_after = c->retry_after};
  if (c->body)
    c->body[c->blen] = '\0';
  c->busy = 0;
  uv_timer_stop(&c->timer);
  if (!keep)
    close_tcp(c);
  c->cb(c->ud, 0, &r);
}

static void on_connected(uv_connect_t *req, int status) {
  lt_http *c = req->data;
  if (status == UV_ECANCELED || c->destroyed || c->state != C_CONNECTING)
    return;
  if (status < 0) {
    fail(c, SM_ECLOSED);
    return;
  }
  c->state = C_UP;
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
    fail(c, SM_EIO);
    return;
  }
  if (c->busy && c->out)
    send_out(c);
}

static int start_connect(lt_http *c) {
  int rc = uv_tcp_init(c->loop, &c->tcp);
  if (rc)
    return sm_err_from_uv(rc);
  c->open++;
  c->tcp.data = c;
  c->connect_req.data = c;
  c->state = C_CONNECTING;
  rc = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&c->addr, on_connected);
  if (rc) {
    close_tcp(c);
    return sm_err_from_uv(rc);
  }
  return 0;
}

static void on_timeout(uv_timer_t *t) {
  fail(t->data, SM_ETIMEDOUT);
}

int lt_http_create(uv_loop_t *loop, const struct sockaddr *addr, const char *host,
                   const char *api_key, size_t max_body, double timeout_s, lt_http **out) {
  lt_http *c = sm_calloc(1, sizeof(*c));
  if (c == NULL)
    return SM_ENOMEM;
  c->loop = loop;
  memcpy(&c->addr, addr,
         addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  snprintf(c->host, sizeof(c->host), "%s", host);
  if (api_key && *api_key)
    snprintf(c->auth, sizeof(c->auth), "Authorization: Bearer %s\r\n", api_key);
  c->max_body = max_body;
  c->timeout_s = timeout_s > 0 ? timeout_s : 30;
  llhttp_settings_init(&c->settings);
  c->settings.on_header_field = on_header_field;
  c->settings.on_header_value = on_header_value;
  c->settings.on_header_value_complete = on_header_value_complete;
  c->settings.on_body = on_body;
  c->settings.on_message_complete = on_message_complete;
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->open = 1;
  *out = c;
  return 0;
}

int lt_http_request(lt_http *c, const char *method, const char *path, const char *body, size_t len,
                    lt_http_cb cb, void *ud) {
  if (c->destroyed)
    return SM_ESTATE;
  if (c->busy)
    return SM_EAGAIN;
  char head[1024];
  int hl = snprintf(
      head, sizeof(head), "%s %s HTTP/1.1\r\nHost: %s\r\n%s%sContent-Length: %zu\r\n\r\n", method,
      path, c->host, c->auth, body ? "Content-Type: application/json\r\n" : "", body ? len : 0);
  if (hl < 0 || (size_t)hl >= sizeof(head))
    return SM_EINVAL;
  char *o = sm_malloc((size_t)hl + (body ? len : 0));
  if (o == NULL)
    return SM_ENOMEM;
  memcpy(o, head, (size_t)hl);
  if (body)
    memcpy(o + hl, body, len);
  if (c->state == C_DOWN) {
    int rc = start_connect(c);
    if (rc) {
      free(o);
      return rc;
    }
  }
  free(c->out);
  c->out = o;
  c->outlen = (size_t)hl + (body ? len : 0);
  c->busy = 1;
  c->gen++;
  c->cb = cb;
  c->ud = ud;
  c->blen = 0;
  c->too_big = 0;
  c->complete = 0;
  c->retry_after = 0;
  c->hflen = c->hvlen = 0;
  llhttp_init(&c->parser, HTTP_RESPONSE, &c->settings);
  c->parser.data = c;
  uv_timer_start(&c->timer, on_timeout, (uint64_t)(c->timeout_s * 1000), 0);
  if (c->state == C_UP)
    send_out(c);
  /* C_CONNECTING: on_connected sends; C_CLOSING: on_handle_closed reconnects. */
  return 0;
}

int lt_http_busy(const lt_http *c) {
  return c->busy;
}

void lt_http_destroy(lt_http *c) {
  if (c == NULL || c->destroyed)
    return;
  c->destroyed = 1;
  c->busy = 0;
  close_tcp(c);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

int lt_http_parse_url(const char *url, char *host, size_t hostlen, int *port) {
  if (strncmp(url, "http://", 7) != 0)
    return SM_EINVAL;
  const char *h = url + 7;
  size_t n = strcspn(h, ":/");
  if (n == 0 || n >= hostlen)
    return SM_EINVAL;
  memcpy(host, h, n);
  host[n] = '\0';
  *port = 80;
  if (h[n] == ':') {
    char *end;
    long p = strtol(h + n + 1, &end, 10);
    if (p < 1 || p > 65535 || (*end && *end != '/'))
      return SM_EINVAL;
    *port = (int)p;
  }
  return 0;
}
