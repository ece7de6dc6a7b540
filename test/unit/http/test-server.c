/* Unit tests of the HTTP/1.1 server (http/server.h) on a real loop with real TCP on 127.0.0.1,
 * port 0, and libuv clients in the same process: keep-alive and pipelined order (immediate and
 * deferred answers mixed), the limits (431, 413, 503 beyond max_connections), the request, idle
 * and deferred timeouts, a half-closed client, stop_accepting, closing with deferred answers
 * pending (each released once, close callback once and never synchronously), HTTPS through a
 * blocking OpenSSL client in a thread, and allocation failure injected into accept and request
 * parsing. Run under ASan to see nothing leaks and late completions touch no freed memory. */
#include "t.h"
#include "certs.h"
#include "http/http.h"
#include "http/server.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define MAXP 32

static uv_loop_t loop;
static http_server *srv;
static http_deferred *pend[MAXP];
static int handled;
static int admitted_seen; /* requests the handler saw with req->admitted */
static int admit_calls;
static int closed_calls;

/* ---- the handler ---- */

static void handle(void *ud, http_request *req, http_response *res) {
  (void)ud;
  handled++;
  admitted_seen += req->admitted;
  if (strncmp(req->path, "/defer/", 7) == 0) {
    int n = atoi(req->path + 7);
    T_ASSERT(n >= 0 && n < MAXP && pend[n] == NULL);
    pend[n] = http_response_defer(res);
    if (pend[n] == NULL) /* out of memory (injected): answer now */
      http_response_error(res, 500, "internal", "out of memory");
    return;
  }
  if (strcmp(req->path, "/close") == 0) {
    http_response_set(res, 200, "text/plain", "bye", 3);
    res->close = 1;
    return;
  }
  if (strcmp(req->path, "/body") == 0) {
    http_response_set(res, 200, "text/plain", req->body, req->body_len);
    return;
  }
  if (http_response_set(res, 200, "text/plain", req->path + 1, strlen(req->path + 1)) != 0)
    http_response_error(res, 500, "internal", "out of memory");
}

/* The admit hook: "/deny" is refused on its headers (as an upload without a key). */
static int admit(void *ud, http_request *req, http_response *res) {
  (void)ud;
  admit_calls++;
  T_ASSERT(req->body == NULL && req->peer != NULL);
  if (strcmp(req->path, "/deny") != 0)
    return 0;
  http_response_error(res, 401, "unauthorized", "no key");
  return 1;
}

static void complete(int n, int status) {
  T_ASSERT(pend[n] != NULL);
  char body[16];
  int len = snprintf(body, sizeof(body), "d%d", n);
  http_response r;
  http_response_init(&r);
  (void)http_response_set(&r, status, "text/plain", body, (size_t)len);
  http_deferred_complete(pend[n], &r);
  pend[n] = NULL;
}

/* ---- loop helpers ---- */

static void on_tick(uv_timer_t *t) {
  (void)t;
}

static void spin(int (*cond)(void *), void *arg, int ms) {
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  uv_update_time(&loop);
  uint64_t end = uv_now(&loop) + (uint64_t)ms;
  while (uv_now(&loop) < end && !(cond && cond(arg))) {
    uv_timer_start(&t, on_tick, 5, 0);
    uv_run(&loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

static void on_srv_closed(void *ud) {
  (void)ud;
  closed_calls++;
}

static int cond_srv_closed(void *arg) {
  (void)arg;
  return closed_calls > 0;
}

typedef struct opts {
  size_t max_connections, max_header_bytes, max_body_bytes;
  size_t max_connections_per_addr, max_buffered_body_bytes;
  double request_timeout_s, idle_timeout_s, defer_timeout_s, header_timeout_s;
  const char *cert, *key;
  int close_when_backed_up;
  int admit;
} opts;

static void server_start(const opts *o) {
  http_server_config cfg = {
      .addr = "127.0.0.1:0",
      .tls_cert_file = o ? o->cert : NULL,
      .tls_key_file = o ? o->key : NULL,
      .max_connections = o && o->max_connections ? o->max_connections : 8,
      .max_header_bytes = o && o->max_header_bytes ? o->max_header_bytes : 1024,
      .max_body_bytes = o && o->max_body_bytes ? o->max_body_bytes : 64,
      .request_timeout_s = o && o->request_timeout_s ? o->request_timeout_s : 2,
      .idle_timeout_s = o && o->idle_timeout_s ? o->idle_timeout_s : 2,
      .defer_timeout_s = o && o->defer_timeout_s ? o->defer_timeout_s : 2,
      .close_when_backed_up = o ? o->close_when_backed_up : 0,
      .max_connections_per_addr = o ? o->max_connections_per_addr : 0,
      .max_buffered_body_bytes = o ? o->max_buffered_body_bytes : 0,
      .header_timeout_s = o ? o->header_timeout_s : 0,
      .log_name = "test-http",
      .log_requests = 1,
      .handle = handle,
      .admit = o && o->admit ? admit : NULL,
  };
  T_EQ_INT(http_server_create(&loop, &cfg, &srv), 0);
  T_EQ_INT(http_server_port(srv), -1);
  T_EQ_INT(http_server_listen(srv), 0);
  T_ASSERT(http_server_port(srv) > 0);
  handled = 0;
  admitted_seen = 0;
  admit_calls = 0;
  closed_calls = 0;
}

static void server_stop(void) {
  http_server_close(srv, on_srv_closed, NULL);
  T_EQ_INT(closed_calls, 0); /* never synchronously */
  spin(cond_srv_closed, NULL, 3000);
  T_EQ_INT(closed_calls, 1);
  spin(NULL, NULL, 20);
  T_EQ_INT(closed_calls, 1);
  srv = NULL;
  for (int i = 0; i < MAXP; i++)
    T_ASSERT(pend[i] == NULL);
}

/* ---- a client (plain malloc: injected failures are the server's) ---- */

typedef struct client {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  char *in;
  size_t len, cap;
  int connected, eof, closed;
} client;

static void on_c_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h, (void)hint;
  static char buf[65536];
  *b = uv_buf_init(buf, sizeof(buf));
}

static void on_c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client *c = s->data;
  if (n > 0) {
    if (c->len + (size_t)n + 1 > c->cap) {
      c->cap = (c->len + (size_t)n + 1) * 2;
      c->in = realloc(c->in, c->cap);
      T_ASSERT(c->in != NULL);
    }
    memcpy(c->in + c->len, b->base, (size_t)n);
    c->len += (size_t)n;
    c->in[c->len] = '\0';
  } else if (n < 0) {
    c->eof = 1;
    uv_read_stop(s);
  }
}

static void on_c_connect(uv_connect_t *r, int status) {
  client *c = r->data;
  if (status == 0) {
    c->connected = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_c_alloc, on_c_read);
  } else {
    c->eof = 1;
  }
}

static int cond_connected(void *arg) {
  client *c = arg;
  return c->connected || c->eof;
}

static void client_open(client *c) {
  memset(c, 0, sizeof(*c));
  uv_tcp_init(&loop, &c->tcp);
  c->tcp.data = c->creq.data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", http_server_port(srv), &a);
  T_EQ_INT(uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&a, on_c_connect), 0);
  spin(cond_connected, c, 2000);
  T_ASSERT(c->connected);
}

static void client_send(client *c, const char *text) {
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)strlen(text));
  T_EQ_INT(uv_try_write((uv_stream_t *)&c->tcp, &b, 1), (int)strlen(text));
}

static void on_c_closed(uv_handle_t *h) {
  client *c = h->data;
  c->closed = 1;
}

static int cond_closed(void *arg) {
  return ((client *)arg)->closed;
}

static void client_close(client *c) {
  uv_close((uv_handle_t *)&c->tcp, on_c_closed);
  spin(cond_closed, c, 2000);
  T_ASSERT(c->closed);
  free(c->in);
  c->in = NULL;
}

/* ---- responses ---- */

typedef struct resp {
  int status;
  int close;       /* Connection: close */
  int retry_after; /* has Retry-After */
  char body[64];
} resp;

/* Splits the client's input into whole responses; returns how many. */
static int parse(const client *c, resp *out, int max) {
  int n = 0;
  const char *p = c->in, *end = c->in ? c->in + c->len : NULL;
  while (p && p < end && n < max) {
    const char *hend = strstr(p, "\r\n\r\n");
    if (hend == NULL)
      break;
    resp *r = &out[n];
    memset(r, 0, sizeof(*r));
    T_ASSERT(strncmp(p, "HTTP/1.1 ", 9) == 0);
    r->status = atoi(p + 9);
    size_t hlen = (size_t)(hend - p);
    char head[2048];
    T_ASSERT(hlen < sizeof(head));
    memcpy(head, p, hlen);
    head[hlen] = '\0';
    if (r->status == 100) { /* interim */
      p = hend + 4;
      continue;
    }
    const char *cl = strstr(head, "Content-Length: ");
    T_ASSERT(cl != NULL);
    size_t blen = (size_t)atol(cl + 16);
    r->close = strstr(head, "Connection: close") != NULL;
    r->retry_after = strstr(head, "Retry-After: 1") != NULL;
    if ((size_t)(end - (hend + 4)) < blen)
      break;
    size_t copy = blen < sizeof(r->body) - 1 ? blen : sizeof(r->body) - 1;
    memcpy(r->body, hend + 4, copy);
    r->body[copy] = '\0';
    p = hend + 4 + blen;
    n++;
  }
  return n;
}

typedef struct want {
  client *c;
  int n;
} want;

static int cond_n(void *arg) {
  want *w = arg;
  static resp r[256];
  return parse(w->c, r, 256) >= w->n;
}

static int cond_eof(void *arg) {
  return ((client *)arg)->eof;
}

static void wait_n(client *c, int n, int ms) {
  want w = {c, n};
  spin(cond_n, &w, ms);
}

static int cond_conns(void *arg) {
  return http_server_connections(srv) == (size_t)(long)arg;
}

/* ---- cases ---- */

static void test_keepalive_pipelining(void) {
  server_start(NULL);
  client c;
  client_open(&c);
  client_send(&c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                  "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody");
  wait_n(&c, 3, 2000);
  resp r[4];
  T_EQ_INT(parse(&c, r, 4), 3);
  T_EQ_STR(r[0].body, "a");
  T_EQ_STR(r[1].body, "b");
  T_EQ_STR(r[2].body, "body");
  T_ASSERT(!r[0].close && !r[2].close);
  /* the same connection serves another request later */
  client_send(&c, "GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&c, 4, 2000);
  T_EQ_INT(parse(&c, r, 4), 4);
  T_EQ_STR(r[3].body, "c");
  T_EQ_INT(http_server_connections(srv), 1);
  /* "Connection: close" from the handler ends it after the answer */
  client_send(&c, "GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n");
  spin(cond_eof, &c, 3000);
  resp r2[8];
  T_EQ_INT(parse(&c, r2, 8), 5);
  T_EQ_STR(r2[4].body, "bye");
  T_ASSERT(r2[4].close);
  client_close(&c);
  spin(cond_conns, (void *)0L, 3000);
  T_EQ_INT(http_server_connections(srv), 0);
  server_stop();
}

static void test_deferred_order(void) {
  server_start(NULL);
  client c;
  client_open(&c);
  client_send(&c, "GET /defer/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /defer/2 HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n");
  spin(NULL, NULL, 60);
  T_EQ_INT(handled, 4);
  resp r[8];
  T_EQ_INT(parse(&c, r, 8), 0); /* everything waits behind /defer/1 */
  complete(2, 202);             /* out of order: still waits */
  spin(NULL, NULL, 40);
  T_EQ_INT(parse(&c, r, 8), 0);
  complete(1, 201);
  wait_n(&c, 4, 2000);
  T_EQ_INT(parse(&c, r, 8), 4);
  T_EQ_INT(r[0].status, 201);
  T_EQ_STR(r[0].body, "d1");
  T_EQ_STR(r[1].body, "x");
  T_EQ_INT(r[2].status, 202);
  T_EQ_STR(r[3].body, "y");
  client_close(&c);
  server_stop();
}

static void test_limits(void) {
  opts o = {.max_connections = 2, .max_header_bytes = 256, .max_body_bytes = 8};
  server_start(&o);
  client c;
  client_open(&c); /* headers over the limit: 431, closed */
  char big[600];
  snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX-Big: %0400d\r\n\r\n", 1);
  client_send(&c, big);
  spin(cond_eof, &c, 3000);
  resp r[2];
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 431);
  T_ASSERT(r[0].close);
  client_close(&c);

  client_open(&c); /* body over the limit: 413 */
  client_send(&c, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
  spin(cond_eof, &c, 3000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 413);
  client_close(&c);

  client_open(&c); /* malformed: 400 */
  client_send(&c, "NOT HTTP\r\n\r\n");
  spin(cond_eof, &c, 3000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 400);
  client_close(&c);
  spin(cond_conns, (void *)0L, 3000);

  client a, b, extra; /* beyond max_connections, all in use: 503 with Retry-After, closed */
  client_open(&a);
  client_open(&b);
  spin(cond_conns, (void *)2L, 2000);
  client_send(&a, "GET /defer/1 HTTP/1.1\r\nHost: x\r\n\r\n");
  client_send(&b, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nabc");
  spin(NULL, NULL, 40);
  client_open(&extra);
  spin(cond_eof, &extra, 3000);
  T_EQ_INT(parse(&extra, r, 2), 1);
  T_EQ_INT(r[0].status, 503);
  T_ASSERT(r[0].retry_after);
  client_close(&extra);
  complete(1, 200); /* the others still work */
  client_send(&b, "defgh");
  wait_n(&a, 1, 2000);
  wait_n(&b, 1, 2000);
  T_EQ_INT(parse(&a, r, 2), 1);
  T_EQ_INT(r[0].status, 200);
  T_EQ_INT(parse(&b, r, 2), 1);
  T_EQ_STR(r[0].body, "abcdefgh");
  client_close(&a);
  client_close(&b);
  server_stop();
}

/* At max_connections a newcomer closes a connection that costs nothing to lose: one that never
 * sent a whole request (oldest first), else an idle keep-alive one; connections in use stay. */
static void test_evict(void) {
  opts o = {.max_connections = 3};
  server_start(&o);
  client busy, kept, idle, fresh, slow, n1, n2;
  resp r[4];
  client_open(&busy); /* in use: a deferred answer awaited */
  client_send(&busy, "GET /defer/2 HTTP/1.1\r\nHost: x\r\n\r\n");
  client_open(&kept); /* served once, idle keep-alive */
  client_send(&kept, "GET /k HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&kept, 1, 2000);
  client_open(&idle); /* never sent a byte */
  spin(cond_conns, (void *)3L, 2000);
  client_open(&fresh); /* full: the never-used one goes, not the keep-alive one */
  spin(cond_eof, &idle, 2000);
  T_ASSERT(idle.eof);
  T_EQ_INT(idle.len, 0);
  T_ASSERT(!kept.eof && !busy.eof);
  client_send(&fresh, "GET /fresh HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&fresh, 1, 2000);
  T_EQ_INT(parse(&fresh, r, 4), 1);
  T_EQ_STR(r[0].body, "fresh");
  client_open(&slow); /* full again: fresh (served) and kept are idle: the longest idle goes */
  spin(cond_eof, &kept, 2000);
  T_ASSERT(kept.eof);
  T_ASSERT(!fresh.eof && !busy.eof);
  client_send(&slow, "GET /slo"); /* half a request line: never completed one */
  spin(NULL, NULL, 30);
  client_open(&n1); /* the slow one goes before the served idle one */
  spin(cond_eof, &slow, 2000);
  T_ASSERT(slow.eof);
  T_EQ_INT(slow.len, 0);
  T_ASSERT(!fresh.eof);
  client_send(&n1, "GET /n1 HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&n1, 1, 2000);
  client_send(&fresh, "GET /defer/3 HTTP/1.1\r\nHost: x\r\n\r\n");
  client_send(&n1, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nab");
  spin(NULL, NULL, 40);
  client_open(&n2); /* all three in use (a body arriving counts): the newcomer gets 503 */
  spin(cond_eof, &n2, 3000);
  T_EQ_INT(parse(&n2, r, 4), 1);
  T_EQ_INT(r[0].status, 503);
  T_ASSERT(r[0].retry_after && r[0].close);
  T_ASSERT(!busy.eof && !fresh.eof && !n1.eof);
  complete(2, 200);
  complete(3, 200);
  wait_n(&busy, 1, 2000);
  wait_n(&fresh, 2, 2000);
  client *all[] = {&busy, &kept, &idle, &fresh, &slow, &n1, &n2};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
    client_close(all[i]);
  server_stop();
}

/* max_connections_per_addr: one address holding that many gets 503 for the next. */
static void test_per_addr_limit(void) {
  opts o = {.max_connections = 8, .max_connections_per_addr = 2};
  server_start(&o);
  client a, b, c;
  resp r[2];
  client_open(&a);
  client_open(&b);
  spin(cond_conns, (void *)2L, 2000);
  client_open(&c);
  spin(cond_eof, &c, 3000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 503);
  T_ASSERT(!a.eof && !b.eof);
  client_close(&c);
  client_close(&b);
  spin(cond_conns, (void *)1L, 2000);
  client_open(&c); /* room again */
  client_send(&c, "GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&c, 1, 2000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_STR(r[0].body, "again");
  client_close(&a);
  client_close(&c);
  server_stop();
}

/* The header timeout: a socket that never sends closes in silence, a header block that trickles
 * gets 408, both counted from the open; a keep-alive connection between requests and a body
 * after its headers get the longer timeouts. */
static void test_header_timeout(void) {
  opts o = {.header_timeout_s = 0.2, .request_timeout_s = 1.5, .idle_timeout_s = 1.5};
  server_start(&o);
  client idle, slow, ka, up;
  resp r[4];
  uint64_t t0 = uv_hrtime();
  client_open(&idle);
  client_open(&slow);
  client_open(&ka);
  client_open(&up);
  client_send(&ka, "GET /ka HTTP/1.1\r\nHost: x\r\n\r\n");
  client_send(&up, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab");
  client_send(&slow, "GET /");
  for (int i = 0; i < 6 && !slow.eof; i++) { /* a byte every 50 ms does not extend it */
    client_send(&slow, "a");
    spin(NULL, NULL, 50);
  }
  spin(cond_eof, &idle, 2000);
  spin(cond_eof, &slow, 2000);
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  T_ASSERT(idle.eof && slow.eof);
  T_ASSERT(ms < 1000); /* the header timeout, not the request timeout */
  T_EQ_INT(idle.len, 0);
  T_EQ_INT(parse(&slow, r, 4), 1);
  T_EQ_INT(r[0].status, 408);
  spin(NULL, NULL, 300); /* past the header timeout: the others live on */
  T_ASSERT(!ka.eof && !up.eof);
  client_send(&up, "cd");
  client_send(&ka, "GET /again HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&up, 1, 2000);
  wait_n(&ka, 2, 2000);
  T_EQ_INT(parse(&up, r, 4), 1);
  T_EQ_STR(r[0].body, "abcd");
  T_EQ_INT(parse(&ka, r, 4), 2);
  T_EQ_STR(r[1].body, "again");
  client *all[] = {&idle, &slow, &ka, &up};
  for (size_t i = 0; i < 4; i++)
    client_close(all[i]);
  server_stop();
}

/* The admit hook answers an upload on its headers: the body is never read nor buffered, the
 * handler never runs, the connection closes; admitted requests reach the handler marked. */
static void test_admit(void) {
  opts o = {.admit = 1, .max_body_bytes = 1 << 20, .max_buffered_body_bytes = 4096};
  server_start(&o);
  client c;
  resp r[2];
  client_open(&c);
  client_send(&c, "POST /deny HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nxxxx");
  spin(cond_eof, &c, 3000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 401);
  T_ASSERT(r[0].close);
  T_EQ_INT(handled, 0);
  T_EQ_INT(admit_calls, 1);
  client_close(&c);
  /* a body bigger than the budget was never buffered: the budget is whole for the next one */
  client_open(&c);
  client_send(&c, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                  "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&c, 2, 2000);
  T_EQ_INT(parse(&c, r, 2), 2);
  T_EQ_STR(r[0].body, "abc");
  T_EQ_STR(r[1].body, "plain");
  T_EQ_INT(admit_calls, 2); /* only requests with a body are asked */
  T_EQ_INT(admitted_seen, 1);
  T_ASSERT(!c.eof);
  client_close(&c);
  server_stop();
}

/* max_buffered_body_bytes: bodies being received across connections are bounded; beyond, 503
 * with Retry-After, and the budget comes back once a body completes or its connection goes. */
static void test_body_budget(void) {
  opts o = {.max_body_bytes = 4096, .max_buffered_body_bytes = 1024};
  server_start(&o);
  client a, b, c;
  resp r[2];
  static char part[701];
  memset(part, 'p', 700);
  client_open(&a);
  client_send(&a, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n");
  client_send(&a, part); /* 700 bytes: a 1024-byte buffer, the whole budget */
  spin(NULL, NULL, 40);
  client_open(&b);
  client_send(&b, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789");
  spin(cond_eof, &b, 3000);
  T_EQ_INT(parse(&b, r, 2), 1);
  T_EQ_INT(r[0].status, 503);
  T_ASSERT(r[0].retry_after && r[0].close);
  client_close(&b);
  client_close(&a); /* its budget comes back */
  spin(cond_conns, (void *)0L, 3000);
  client_open(&c);
  client_send(&c, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789");
  wait_n(&c, 1, 2000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 200);
  T_EQ_STR(r[0].body, "0123456789");
  client_close(&c);
  server_stop();
}

/* A request line without a version (HTTP/0.9) gets 400, and a chunk size over the body limit
 * gets 413 at once, not after the request timeout. */
static void test_bad_framing(void) {
  opts o = {.request_timeout_s = 10};
  server_start(&o);
  client c;
  resp r[2];
  client_open(&c);
  client_send(&c, "GET /\r\n\r\n");
  spin(cond_eof, &c, 3000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 400);
  T_EQ_INT(handled, 0);
  client_close(&c);
  uint64_t t0 = uv_hrtime();
  client_open(&c);
  client_send(&c, "POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "7fffffffffffffff\r\nabc");
  spin(cond_eof, &c, 3000);
  T_ASSERT((uv_hrtime() - t0) / 1000000u < 2000);
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_INT(r[0].status, 413);
  client_close(&c);
  server_stop();
}

/* A client pipelining without reading: reading pauses (default), or with close_when_backed_up
 * the request that finds the output backed up gets "Connection: close" and the rest is dropped. */
static void test_pipeline_flood(void) {
  for (int mode = 0; mode < 2; mode++) {
    opts o = {.close_when_backed_up = mode};
    server_start(&o);
    client c;
    client_open(&c);
    uv_read_stop((uv_stream_t *)&c.tcp);
    static char flood[40 * 200 + 1];
    flood[0] = '\0';
    for (int i = 0; i < 200; i++)
      strcat(flood, "GET /f HTTP/1.1\r\nHost: x\r\n\r\n");
    client_send(&c, flood);
    spin(NULL, NULL, 100);
    uv_read_start((uv_stream_t *)&c.tcp, on_c_alloc, on_c_read);
    resp r[256];
    if (mode == 0) {
      wait_n(&c, 200, 3000);
      T_EQ_INT(parse(&c, r, 256), 200); /* all answered, in time */
      T_ASSERT(!c.eof);
    } else {
      spin(cond_eof, &c, 3000);
      T_ASSERT(c.eof);
      int n = parse(&c, r, 256);
      T_EQ_INT(n, HTTP_PIPELINE_MAX + 1);
      T_ASSERT(r[n - 1].close);
    }
    client_close(&c);
    server_stop();
  }
}

static void test_timeouts(void) {
  opts o = {.request_timeout_s = 0.2, .idle_timeout_s = 0.3, .defer_timeout_s = 0.25};
  server_start(&o);
  client c;
  client_open(&c); /* half a request: 408 */
  client_send(&c, "GET /slow HTTP/1.1\r\nHo");
  spin(cond_eof, &c, 3000);
  resp r[4];
  T_EQ_INT(parse(&c, r, 4), 1);
  T_EQ_INT(r[0].status, 408);
  client_close(&c);

  client_open(&c); /* idle: closed without a word */
  spin(cond_eof, &c, 3000);
  T_ASSERT(c.eof);
  T_EQ_INT(c.len, 0);
  client_close(&c);

  client_open(&c); /* deferred, never answered: 503 + Retry-After; the connection lives on */
  client_send(&c, "GET /defer/3 HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&c, 2, 3000);
  T_EQ_INT(parse(&c, r, 4), 2);
  T_EQ_INT(r[0].status, 503);
  T_ASSERT(r[0].retry_after);
  T_ASSERT(!r[0].close);
  T_EQ_STR(r[1].body, "after");
  T_ASSERT(http_deferred_abandoned(pend[3]));
  complete(3, 200); /* the late answer is dropped */
  spin(NULL, NULL, 40);
  T_EQ_INT(parse(&c, r, 4), 2);
  client_close(&c);
  server_stop();
}

static void test_half_close_and_stop(void) {
  server_start(NULL);
  client c;
  client_open(&c); /* the client half-closes after its request: it still gets the answer */
  client_send(&c, "GET /defer/4 HTTP/1.1\r\nHost: x\r\n\r\n");
  spin(NULL, NULL, 40);
  T_EQ_INT(uv_shutdown(&c.sreq, (uv_stream_t *)&c.tcp, NULL), 0);
  spin(NULL, NULL, 40);
  T_EQ_INT(http_server_connections(srv), 1);
  complete(4, 200);
  spin(cond_eof, &c, 3000);
  resp r[2];
  T_EQ_INT(parse(&c, r, 2), 1);
  T_EQ_STR(r[0].body, "d4");
  client_close(&c);
  spin(cond_conns, (void *)0L, 3000);

  client idle, busy;
  client_open(&idle);
  client_open(&busy);
  client_send(&busy, "GET /defer/5 HTTP/1.1\r\nHost: x\r\n\r\n");
  spin(NULL, NULL, 40);
  http_server_stop_accepting(srv);
  http_server_stop_accepting(srv);
  spin(cond_eof, &idle, 2000); /* idle ones close at once */
  T_ASSERT(idle.eof);
  complete(5, 200); /* the busy one gets its answer with Connection: close */
  spin(cond_eof, &busy, 3000);
  T_EQ_INT(parse(&busy, r, 2), 1);
  T_ASSERT(r[0].close);
  client_close(&idle);
  client_close(&busy);
  server_stop();
}

static void test_close_with_pending(void) {
  server_start(NULL);
  client c[3];
  for (int i = 0; i < 3; i++) {
    client_open(&c[i]);
    char req[128];
    snprintf(req, sizeof(req),
             "GET /defer/%d HTTP/1.1\r\nHost: x\r\n\r\nGET /defer/%d HTTP/1.1\r\n\r\n", 10 + i,
             20 + i);
    client_send(&c[i], req);
  }
  client partial; /* and one with half a request */
  client_open(&partial);
  client_send(&partial, "POST /body HTTP/1.1\r\nContent-Length: 5\r\n\r\nab");
  spin(NULL, NULL, 60);
  T_EQ_INT(handled, 6);
  http_server_close(srv, on_srv_closed, NULL);
  http_server_close(srv, on_srv_closed, NULL); /* ignored */
  T_EQ_INT(closed_calls, 0);
  for (int i = 0; i < 3; i++) {
    T_ASSERT(http_deferred_abandoned(pend[10 + i]));
    T_ASSERT(http_deferred_abandoned(pend[20 + i]));
    complete(10 + i, 200); /* dropped, freed */
  }
  spin(cond_srv_closed, NULL, 3000);
  T_EQ_INT(closed_calls, 1);
  for (int i = 0; i < 3; i++) /* after the server is gone: still safe */
    complete(20 + i, 200);
  for (int i = 0; i < 3; i++) {
    spin(cond_eof, &c[i], 2000);
    resp r[2];
    T_EQ_INT(parse(&c[i], r, 2), 0);
    client_close(&c[i]);
  }
  client_close(&partial);
  srv = NULL;
}

/* ---- HTTPS: a blocking OpenSSL client in a thread while the loop serves ---- */

typedef struct tls_job {
  int port;
  char out[4096];
  atomic_int done;
} tls_job;

static void *tls_client(void *arg) {
  tls_job *j = arg;
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)j->port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  size_t got = 0;
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) == 1) {
      const char req[] = "GET /secure HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
      SSL_write(ssl, req, (int)sizeof(req) - 1);
      int n;
      while (got < sizeof(j->out) - 1 &&
             (n = SSL_read(ssl, j->out + got, (int)(sizeof(j->out) - 1 - got))) > 0)
        got += (size_t)n;
    }
    SSL_free(ssl);
  }
  j->out[got] = '\0';
  close(fd);
  SSL_CTX_free(ctx);
  atomic_store(&j->done, 1);
  return NULL;
}

static int cond_job(void *arg) {
  return atomic_load(&((tls_job *)arg)->done);
}

static void test_tls(void) {
  t_certs certs;
  T_EQ_INT(t_certs_make(&certs), 0);
  opts o = {.cert = certs.server_cert, .key = certs.server_key};
  server_start(&o);
  tls_job j = {.port = http_server_port(srv)};
  pthread_t th;
  T_EQ_INT(pthread_create(&th, NULL, tls_client, &j), 0);
  spin(cond_job, &j, 5000);
  T_ASSERT(cond_job(&j));
  pthread_join(th, NULL);
  T_ASSERT(strncmp(j.out, "HTTP/1.1 200 OK\r\n", 17) == 0);
  T_ASSERT(strstr(j.out, "Connection: close") != NULL);
  T_ASSERT(strstr(j.out, "\r\n\r\nsecure") != NULL);
  server_stop();
  /* an unusable certificate fails creation */
  http_server_config bad = {.addr = "127.0.0.1:0",
                            .tls_cert_file = certs.server_key,
                            .tls_key_file = certs.server_key,
                            .max_connections = 1,
                            .max_header_bytes = 64,
                            .handle = handle};
  http_server *s2 = NULL;
  T_EQ_INT(http_server_create(&loop, &bad, &s2), SM_ETLS);
  t_certs_remove(&certs);
}

static void test_create_errors(void) {
  http_server_config cfg = {.addr = "127.0.0.1:0", .max_connections = 1, .max_header_bytes = 64};
  http_server *s = NULL;
  T_EQ_INT(http_server_create(&loop, &cfg, &s), SM_EINVAL); /* no handler */
  cfg.handle = handle;
  cfg.addr = "nocolon";
  T_EQ_INT(http_server_create(&loop, &cfg, &s), SM_EADDR);
  http_server_close(NULL, on_srv_closed, NULL); /* NULL: nothing */
}

/* ---- allocation failure ---- */

static void test_alloc_failure_create(void) {
  http_server_config cfg = {.addr = "127.0.0.1:0",
                            .max_connections = 4,
                            .max_header_bytes = 1024,
                            .log_name = "test-http",
                            .handle = handle};
  for (long nth = 0;; nth++) {
    http_server *s = NULL;
    sm_alloc_fail_at(nth, 0);
    int err = http_server_create(&loop, &cfg, &s);
    sm_alloc_fail_at(-1, 0);
    if (err == 0) {
      T_ASSERT(nth > 0);
      closed_calls = 0;
      http_server_close(s, on_srv_closed, NULL);
      spin(cond_srv_closed, NULL, 2000);
      T_EQ_INT(closed_calls, 1);
      break;
    }
    T_EQ_INT(err, SM_ENOMEM);
  }
}

/* Each allocation of accepting a connection and parsing and answering requests fails in turn:
 * the client gets its answers or a closed connection (never a hang), nothing leaks, and the
 * server serves the next client. */
static void test_alloc_failure_requests(void) {
  server_start(NULL);
  const char *reqs = "GET /one HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n"
                     "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     "GET /defer/7 HTTP/1.1\r\nHost: x\r\n\r\n";
  int clean = 0, iterations = 0;
  for (long nth = 0; nth < 500 && !clean; nth++, iterations++) {
    client c;
    unsigned long before = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0); /* from the accept on */
    client_open(&c);
    client_send(&c, reqs);
    spin(NULL, NULL, 30);
    sm_alloc_fail_at(-1, 0);
    if (pend[7] != NULL)
      complete(7, 200);
    want w = {&c, 3};
    spin(cond_n, &w, 200);
    int failed = sm_alloc_failures() > before;
    resp r[4];
    int n = parse(&c, r, 4);
    if (!failed) {
      T_EQ_INT(n, 3);
      T_EQ_STR(r[0].body, "one");
      T_EQ_STR(r[1].body, "abc");
      T_EQ_STR(r[2].body, "d7");
      clean = 1;
    } else if (n < 3) {
      /* the connection was given up, or answered with an error */
      spin(cond_eof, &c, 3000);
      T_ASSERT(c.eof || (n > 0 && r[n - 1].status >= 500));
    }
    client_close(&c);
    spin(cond_conns, (void *)0L, 3000);
    T_EQ_INT(http_server_connections(srv), 0);
  }
  T_ASSERT(clean);
  fprintf(stderr, "   clean after %d injected failures\n", iterations);
  /* still serving */
  client c;
  client_open(&c);
  client_send(&c, "GET /fine HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_n(&c, 1, 2000);
  resp r[1];
  T_EQ_INT(parse(&c, r, 1), 1);
  T_EQ_STR(r[0].body, "fine");
  client_close(&c);
  server_stop();
}

/* The same with the admit hook and the body budget: the answer on a head, the budget and the
 * eviction bookkeeping survive every failed allocation, and the budget is whole afterwards. */
static void test_alloc_failure_admit(void) {
  opts o = {.admit = 1, .max_body_bytes = 4096, .max_buffered_body_bytes = 1024};
  server_start(&o);
  const char *reqs = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                     "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     "POST /deny HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\nxx";
  int clean = 0;
  for (long nth = 0; nth < 500 && !clean; nth++) {
    client c;
    unsigned long before = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0);
    client_open(&c);
    client_send(&c, reqs);
    spin(NULL, NULL, 30);
    sm_alloc_fail_at(-1, 0);
    spin(cond_eof, &c, 3000);
    T_ASSERT(c.eof); /* the 401 (or a failure) ends the connection either way */
    resp r[4];
    int n = parse(&c, r, 4);
    if (sm_alloc_failures() == before) {
      T_EQ_INT(n, 3);
      T_EQ_STR(r[1].body, "abc");
      T_EQ_INT(r[2].status, 401);
      clean = 1;
    } else if (n > 0 && r[n - 1].status != 401 && r[n - 1].status != 200) {
      T_ASSERT(r[n - 1].status >= 500);
    }
    client_close(&c);
    spin(cond_conns, (void *)0L, 3000);
  }
  T_ASSERT(clean);
  /* the budget was given back every time: a body of the whole budget still fits */
  client c;
  client_open(&c);
  static char big[1200];
  snprintf(big, sizeof(big),
           "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n%01000d", 0);
  client_send(&c, big);
  wait_n(&c, 1, 2000);
  resp r[1];
  T_EQ_INT(parse(&c, r, 1), 1);
  T_EQ_INT(r[0].status, 200);
  client_close(&c);
  server_stop();
}

int main(void) {
  sm_log_configure(getenv("SM_TEST_LOG") ? SM_LOG_DEBUG : SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_EQ_INT(uv_loop_init(&loop), 0);
  T_RUN(test_create_errors);
  T_RUN(test_keepalive_pipelining);
  T_RUN(test_deferred_order);
  T_RUN(test_limits);
  T_RUN(test_evict);
  T_RUN(test_per_addr_limit);
  T_RUN(test_header_timeout);
  T_RUN(test_admit);
  T_RUN(test_body_budget);
  T_RUN(test_bad_framing);
  T_RUN(test_pipeline_flood);
  T_RUN(test_timeouts);
  T_RUN(test_half_close_and_stop);
  T_RUN(test_close_with_pending);
  T_RUN(test_tls);
  T_RUN(test_alloc_failure_create);
  T_RUN(test_alloc_failure_requests);
  T_RUN(test_alloc_failure_admit);
  uv_run(&loop, UV_RUN_NOWAIT);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
