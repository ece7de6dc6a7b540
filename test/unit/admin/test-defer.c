/* Unit tests of deferred responses (http_response_defer) through the real admin listener on a
 * loop, with a libuv client in the same process: pipelined order mixing deferred and immediate
 * answers, a completion after the connection closed (reset, and server closed), the half-closed
 * client, the deferred timeout (503 + Retry-After, late completion dropped), and the pipeline
 * limit counting deferred requests; the listener's life cycle (create and listen under injected
 * allocation failure, a busy port, close calling back once and never synchronously). Run it under
 * ASan/valgrind to see the late completions touch no freed memory. */
#include "t.h"
#include "http/http.h"
#include "admin/router.h"
#include "admin/server.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <sys/socket.h>
#include <uv.h>

#define MAXP 64

static uv_loop_t loop;
static admin_api api;
static struct admin_server *srv;
static http_deferred *pend[MAXP]; /* deferred handles by the number in the path */
static int handled;               /* deferred handler invocations */

/* ---- test routes ---- */

static void h_defer(void *ud, http_request *req, http_response *res) {
  (void)ud;
  int n = atoi(http_request_param(req, "n"));
  T_ASSERT(n >= 0 && n < MAXP && pend[n] == NULL);
  pend[n] = http_response_defer(res);
  T_ASSERT(pend[n] != NULL);
  T_ASSERT(http_response_defer(res) == NULL); /* once per response */
  handled++;
}

static void h_fast(void *ud, http_request *req, http_response *res) {
  (void)ud, (void)req;
  http_response_set(res, 200, "text/plain", "fast", 4);
}

/* Defers and answers at once, inside the handler. */
static void h_sync(void *ud, http_request *req, http_response *res) {
  (void)ud, (void)req;
  http_deferred *d = http_response_defer(res);
  http_response r;
  http_response_init(&r);
  http_response_set(&r, 201, "text/plain", "sync", 4);
  http_deferred_complete(d, &r);
  T_ASSERT(r.body == NULL); /* taken over */
}

static void complete(int n, int status) {
  T_ASSERT(pend[n] != NULL);
  char body[16];
  int len = snprintf(body, sizeof(body), "d%d", n);
  http_response r;
  http_response_init(&r);
  http_response_set(&r, status, "text/plain", body, (size_t)len);
  http_deferred_complete(pend[n], &r);
  pend[n] = NULL;
}

/* ---- loop helpers ---- */

static void on_tick(uv_timer_t *t) {
  (void)t;
}

/* Runs the loop for about ms milliseconds, or until cond() holds. */
static void spin_until(int (*cond)(void), int ms) {
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  uint64_t end = uv_now(&loop) + (uint64_t)ms;
  while (uv_now(&loop) < end && !(cond && cond())) {
    uv_timer_start(&t, on_tick, 5, 0);
    uv_run(&loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

/* ---- a client ---- */

typedef struct client {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  http_buf in;
  int connected, eof, closed;
} client;

static client *cur; /* for conditions */

static void on_c_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h;
  static char buf[65536];
  (void)hint;
  *b = uv_buf_init(buf, sizeof(buf));
}

static void on_c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client *c = s->data;
  if (n > 0) {
    T_EQ_INT(http_buf_append(&c->in, b->base, (size_t)n), 0);
    /* Keep the bytes NUL-terminated: the parser below uses atoi/atol on them. */
    T_EQ_INT(http_buf_append(&c->in, "", 1), 0);
    c->in.len--;
  } else if (n < 0) {
    c->eof = 1;
    uv_read_stop(s);
  }
}

static void on_c_connect(uv_connect_t *r, int status) {
  client *c = r->data;
  T_EQ_INT(status, 0);
  c->connected = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_c_alloc, on_c_read);
}

static int cond_connected(void) {
  return cur->connected;
}

static void client_open(client *c) {
  memset(c, 0, sizeof(*c));
  uv_tcp_init(&loop, &c->tcp);
  c->tcp.data = c->creq.data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", admin_server_port(srv), &a);
  T_EQ_INT(uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&a, on_c_connect), 0);
  cur = c;
  spin_until(cond_connected, 2000);
  T_ASSERT(c->connected);
}

static void client_send(client *c, const char *text) {
  /* Small writes to a fresh socket complete at once. */
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)strlen(text));
  T_EQ_INT(uv_try_write((uv_stream_t *)&c->tcp, &b, 1), (int)strlen(text));
}

static void on_c_closed(uv_handle_t *h) {
  client *c = h->data;
  c->closed = 1;
}

static int cond_closed(void) {
  return cur->closed;
}

/* Closes; with reset, by RST (SO_LINGER 0), so the server sees an error at once. */
static void client_close(client *c, int reset) {
  if (reset) {
    uv_os_fd_t fd;
    T_EQ_INT(uv_fileno((uv_handle_t *)&c->tcp, &fd), 0);
    struct linger l = {1, 0};
    T_EQ_INT(setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)), 0);
  }
  uv_close((uv_handle_t *)&c->tcp, on_c_closed);
  cur = c;
  spin_until(cond_closed, 2000);
  http_buf_finish(&c->in);
}

/* memmem without GCC's nonnull false positive under -fsanitize at -O2. */
static const char *find(const char *p, size_t n, const char *needle) {
  size_t k = strlen(needle);
  for (size_t i = 0; p != NULL && i + k <= n; i++)
    if (memcmp(p + i, needle, k) == 0)
      return p + i;
  return NULL;
}

/* Splits the received bytes into responses: statuses and bodies (NUL-terminated copies in
 * bodies[i], at most 31 bytes). Returns the number of complete responses. */
static int responses(client *c, int *statuses, char (*bodies)[32], int max) {
  size_t off = 0;
  int n = 0;
  if (c->in.p == NULL)
    return 0;
  while (n < max && off < c->in.len) {
    const char *p = c->in.p + off;
    size_t left = c->in.len - off;
    const char *end = find(p, left, "\r\n\r\n");
    if (end == NULL)
      break;
    T_ASSERT(strncmp(p, "HTTP/1.1 ", 9) == 0);
    int st = atoi(p + 9);
    const char *cl = find(p, (size_t)(end - p), "Content-Length: ");
    T_ASSERT(cl != NULL);
    size_t blen = (size_t)atol(cl + 16);
    size_t hlen = (size_t)(end - p) + 4;
    if (left < hlen + blen)
      break;
    statuses[n] = st;
    snprintf(bodies[n], 32, "%.*s", (int)(blen < 31 ? blen : 31), end + 4);
    n++;
    off += hlen + blen;
  }
  return n;
}

static int want_n;
static int cond_n(void) {
  int st[MAXP];
  char b[MAXP][32];
  return responses(cur, st, b, MAXP) >= want_n;
}
static int cond_eof(void) {
  return cur->eof;
}
static int cond_no_conns(void) {
  return admin_server_connections(srv) == 0;
}

/* ---- tests ---- */

static void test_order(void) {
  client c;
  client_open(&c);
  client_send(&c, "GET /defer/1 HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /defer/2 HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n");
  spin_until(NULL, 60);
  T_ASSERT(pend[1] != NULL && pend[2] != NULL);
  T_EQ_INT(c.in.len, 0); /* the first answer is not there: nothing may be sent */
  complete(2, 200);
  spin_until(NULL, 40);
  T_EQ_INT(c.in.len, 0); /* still behind /defer/1 */
  complete(1, 202);
  cur = &c;
  want_n = 5;
  spin_until(cond_n, 2000);
  int st[8];
  char b[8][32];
  T_EQ_INT(responses(&c, st, b, 8), 5);
  T_EQ_INT(st[0], 202);
  T_EQ_STR(b[0], "d1");
  T_EQ_INT(st[1], 200);
  T_EQ_STR(b[1], "fast");
  T_EQ_INT(st[2], 200);
  T_EQ_STR(b[2], "d2");
  T_EQ_STR(b[3], "fast");
  T_EQ_INT(st[4], 201);
  T_EQ_STR(b[4], "sync");
  client_close(&c, 0);
}

static void test_complete_after_reset(void) {
  client c;
  client_open(&c);
  client_send(&c, "GET /defer/3 HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
  spin_until(NULL, 40);
  T_ASSERT(pend[3] != NULL);
  T_ASSERT(!http_deferred_abandoned(pend[3]));
  client_close(&c, 1);
  spin_until(cond_no_conns, 2000);
  T_EQ_INT(admin_server_connections(srv), 0);
  T_ASSERT(http_deferred_abandoned(pend[3])); /* the handler can tell */
  complete(3, 200);                           /* dropped: nothing to write to */
  spin_until(NULL, 20);
}

static void test_half_close(void) {
  client c;
  client_open(&c);
  client_send(&c, "GET /defer/6 HTTP/1.1\r\nHost: t\r\n\r\n");
  c.sreq.data = &c;
  T_EQ_INT(uv_shutdown(&c.sreq, (uv_stream_t *)&c.tcp, NULL), 0);
  spin_until(NULL, 40);
  T_ASSERT(pend[6] != NULL);
  T_EQ_INT(admin_server_connections(srv), 1); /* waits for the answer */
  complete(6, 200);
  cur = &c;
  spin_until(cond_eof, 2000);
  int st[4];
  char b[4][32];
  T_EQ_INT(responses(&c, st, b, 4), 1);
  T_EQ_STR(b[0], "d6");
  client_close(&c, 0);
  spin_until(cond_no_conns, 2000);
}

static void test_timeout(void) {
  client c;
  client_open(&c);
  client_send(&c, "GET /defer/4 HTTP/1.1\r\nHost: t\r\n\r\n");
  cur = &c;
  want_n = 1;
  spin_until(cond_n, 3000); /* the deferred timeout is 0.5 s here */
  int st[4];
  char b[4][32];
  T_EQ_INT(responses(&c, st, b, 4), 1);
  T_EQ_INT(st[0], 503);
  T_ASSERT(find(c.in.p, c.in.len, "Retry-After: 1\r\n") != NULL);
  T_ASSERT(http_deferred_abandoned(pend[4]));
  complete(4, 200); /* late: dropped */
  client_send(&c, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
  want_n = 2;
  spin_until(cond_n, 2000);
  T_EQ_INT(responses(&c, st, b, 4), 2);
  T_EQ_STR(b[1], "fast");
  client_close(&c, 0);
}

static void test_pipeline_limit(void) {
  client c;
  client_open(&c);
  char req[4096];
  size_t o = 0;
  for (int i = 10; i < 30; i++)
    o += (size_t)snprintf(req + o, sizeof(req) - o, "GET /defer/%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
  handled = 0;
  client_send(&c, req);
  spin_until(NULL, 60);
  T_EQ_INT(handled, HTTP_PIPELINE_MAX); /* reading stopped at the limit */
  for (int i = 10; i < 10 + HTTP_PIPELINE_MAX; i++)
    complete(i, 200);
  spin_until(NULL, 60);
  T_EQ_INT(handled, 20); /* the rest was parsed once answers went out */
  for (int i = 10 + HTTP_PIPELINE_MAX; i < 30; i++)
    complete(i, 200);
  cur = &c;
  want_n = 20;
  spin_until(cond_n, 2000);
  int st[MAXP];
  char b[MAXP][32];
  T_EQ_INT(responses(&c, st, b, MAXP), 20);
  for (int i = 0; i < 20; i++) {
    char want[8];
    snprintf(want, sizeof(want), "d%d", 10 + i);
    T_EQ_STR(b[i], want);
  }
  client_close(&c, 0);
}

static int server_closed;
static void on_srv_closed(void *ud) {
  (void)ud;
  server_closed = 1;
}
static int cond_srv_closed(void) {
  return server_closed;
}

static void test_server_close(void) {
  client c;
  client_open(&c);
  client_send(&c, "GET /defer/5 HTTP/1.1\r\nHost: t\r\n\r\n");
  spin_until(NULL, 40);
  T_ASSERT(pend[5] != NULL);
  admin_server_close(srv, on_srv_closed, NULL);
  spin_until(cond_srv_closed, 2000);
  T_ASSERT(server_closed);
  srv = NULL;
  T_ASSERT(http_deferred_abandoned(pend[5]));
  complete(5, 200); /* the server is gone: dropped */
  client_close(&c, 0);
}

static int closes;
static void on_count_closed(void *ud) {
  (void)ud;
  closes++;
}
static int cond_closes(void) {
  return closes > 0;
}

static admin_server_config cfg;

/* Closes s: the callback runs exactly once, never inside admin_server_close, and a second close
 * is ignored. */
static void close_once(struct admin_server *s) {
  closes = 0;
  admin_server_close(s, on_count_closed, NULL);
  T_EQ_INT(closes, 0);
  spin_until(cond_closes, 2000);
  T_EQ_INT(closes, 1);
  spin_until(NULL, 20);
  T_EQ_INT(closes, 1);
}

/* Every allocation of create + listen fails in turn: each attempt fails cleanly (nothing leaks,
 * ASan checks) or yields a server that works and closes once. */
static void test_create_alloc_fail(void) {
  int done = 0;
  for (long nth = 0; !done && nth < 10000; nth++) {
    unsigned long failed = sm_alloc_failures();
    struct admin_server *s = NULL;
    sm_alloc_fail_at(nth, 0);
    int err = admin_server_create(&loop, &cfg, &api, &s);
    if (err == 0)
      err = admin_server_listen(s);
    sm_alloc_fail_at(-1, 0);
    done = sm_alloc_failures() == failed;
    if (s == NULL) {
      T_EQ_INT(err, SM_ENOMEM);
      continue;
    }
    if (err == 0)
      T_ASSERT(admin_server_port(s) > 0);
    else
      T_EQ_INT(err, SM_ENOMEM);
    close_once(s);
  }
  T_ASSERT(done);
}

/* A busy address is SM_EADDR (admin/server.h), as before the one HTTP server. */
static void test_port_busy(void) {
  struct admin_server *a = NULL, *b = NULL;
  T_EQ_INT(admin_server_create(&loop, &cfg, &api, &a), 0);
  T_EQ_INT(admin_server_listen(a), 0);
  admin_server_config c2 = cfg;
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", admin_server_port(a));
  c2.addr = addr;
  c2.port = admin_server_port(a);
  T_EQ_INT(admin_server_create(&loop, &c2, &api, &b), 0);
  T_EQ_INT(admin_server_listen(b), SM_EADDR);
  T_EQ_INT(admin_server_port(b), -1);
  close_once(b);
  close_once(a);
  admin_server_close(NULL, on_count_closed, NULL); /* nothing happens */
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_EQ_INT(uv_loop_init(&loop), 0);
  cfg = (admin_server_config){
      .addr = "127.0.0.1:0",
      .host = "127.0.0.1",
      .port = 0,
      .max_connections = 16,
      .max_body_bytes = 65536,
      .max_header_bytes = 8192,
      .request_timeout_s = 0.5,
      .idle_timeout_s = 10,
  };
  api.loop = &loop;
  api.instance = "t";
  T_RUN(test_create_alloc_fail);
  T_RUN(test_port_busy);
  T_EQ_INT(admin_server_create(&loop, &cfg, &api, &srv), 0);
  admin_router *r = admin_server_router(srv);
  T_EQ_INT(admin_router_add(r, "GET", "/defer/{n}", h_defer, ADMIN_ROLE_PUBLIC), 0);
  T_EQ_INT(admin_router_add(r, "GET", "/fast", h_fast, ADMIN_ROLE_PUBLIC), 0);
  T_EQ_INT(admin_router_add(r, "GET", "/sync", h_sync, ADMIN_ROLE_PUBLIC), 0);
  T_EQ_INT(admin_server_listen(srv), 0);
  T_RUN(test_order);
  T_RUN(test_complete_after_reset);
  T_RUN(test_half_close);
  T_RUN(test_timeout);
  T_RUN(test_pipeline_limit);
  T_RUN(test_server_close);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
