/* Tests of loadtest/proxy: plain forwarding, each fault (delay, bandwidth, blackhole, drop,
 * reset), closing with connections open and chunks queued (the close callback runs once and
 * nothing leaks), and allocation failure at every allocation of a connection's life. */
#include "loadtest/proxy.h"
#include "t.h"
#include "util/alloc.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uv_loop_t *loop;

/* ---- an echo server ------------------------------------------------------------------------- */

typedef struct echo_conn {
  uv_tcp_t h;
} echo_conn;

static uv_tcp_t echo_srv;
static struct sockaddr_storage echo_addr;

static void echo_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  (void)h;
  *b = uv_buf_init(malloc(n), (unsigned)n);
}

static void echo_closed(uv_handle_t *h) {
  free(h->data);
}

static void echo_written(uv_write_t *w, int st) {
  (void)st;
  free(w->data);
  free(w);
}

static void echo_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n > 0) {
    uv_write_t *w = malloc(sizeof(*w));
    w->data = b->base;
    uv_buf_t o = uv_buf_init(b->base, (unsigned)n);
    if (uv_write(w, s, &o, 1, echo_written) != 0)
      echo_written(w, 0);
    return;
  }
  free(b->base);
  if (n < 0 && !uv_is_closing((uv_handle_t *)s))
    uv_close((uv_handle_t *)s, echo_closed);
}

static void echo_conn_cb(uv_stream_t *srv, int st) {
  T_EQ_INT(st, 0);
  echo_conn *c = malloc(sizeof(*c));
  uv_tcp_init(loop, &c->h);
  c->h.data = c;
  T_EQ_INT(uv_accept(srv, (uv_stream_t *)&c->h), 0);
  uv_read_start((uv_stream_t *)&c->h, echo_alloc, echo_read);
}

static void echo_start(void) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &echo_srv);
  T_EQ_INT(uv_tcp_bind(&echo_srv, (struct sockaddr *)&a, 0), 0);
  T_EQ_INT(uv_listen((uv_stream_t *)&echo_srv, 64, echo_conn_cb), 0);
  int len = sizeof(echo_addr);
  uv_tcp_getsockname(&echo_srv, (struct sockaddr *)&echo_addr, &len);
}

/* ---- a client ------------------------------------------------------------------------------- */

typedef struct client {
  uv_tcp_t h;
  uv_connect_t cr;
  uv_write_t w;
  char got[8192];
  size_t ngot;
  int connected, eof, reset, error, closed;
} client;

static void cl_closed(uv_handle_t *h) {
  ((client *)h->data)->closed = 1;
}

static void cl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client *c = s->data;
  if (n > 0) {
    size_t k = (size_t)n < sizeof(c->got) - c->ngot ? (size_t)n : sizeof(c->got) - c->ngot;
    memcpy(c->got + c->ngot, b->base, k);
    c->ngot += k;
  } else if (n == UV_EOF) {
    c->eof = 1;
  } else if (n == UV_ECONNRESET) {
    c->reset = 1;
  } else if (n < 0) {
    c->error = 1;
  }
  free(b->base);
}

static void cl_connected(uv_connect_t *r, int st) {
  client *c = r->data;
  if (st == 0) {
    c->connected = 1;
    uv_read_start((uv_stream_t *)&c->h, echo_alloc, cl_read);
  } else {
    c->error = 1;
  }
}

static void cl_open(client *c, lt_proxy *p) {
  memset(c, 0, sizeof(*c));
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", lt_proxy_port(p), &a);
  uv_tcp_init(loop, &c->h);
  c->h.data = c;
  c->cr.data = c;
  T_EQ_INT(uv_tcp_connect(&c->cr, &c->h, (struct sockaddr *)&a, cl_connected), 0);
}

static void cl_send(client *c, const char *data, size_t len) {
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  T_EQ_INT(uv_write(&c->w, (uv_stream_t *)&c->h, &b, 1, NULL), 0);
}

static void cl_close(client *c) {
  if (!uv_is_closing((uv_handle_t *)&c->h))
    uv_close((uv_handle_t *)&c->h, cl_closed);
  while (!c->closed)
    uv_run(loop, UV_RUN_ONCE);
}

static void noop_timer(uv_timer_t *t) {
  (void)t;
}

/* Runs the loop until *flag or ms passed; returns *flag. */
static int run_until(const int *flag, uint64_t ms) {
  uv_update_time(loop);
  uint64_t end = uv_now(loop) + ms;
  uv_timer_t t;
  uv_timer_init(loop, &t);
  while (!*flag && uv_now(loop) < end) {
    uv_timer_start(&t, noop_timer, 5, 0);
    uv_run(loop, UV_RUN_ONCE);
    uv_update_time(loop);
  }
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *flag;
}

static int got_n_flag;
static int got_n(client *c, size_t n, uint64_t ms) {
  uint64_t end = uv_now(loop) + ms;
  while (c->ngot < n && uv_now(loop) < end && !c->eof && !c->reset && !c->error) {
    got_n_flag = 0;
    run_until(&got_n_flag, 5);
  }
  return c->ngot >= n;
}

static lt_proxy *proxy_new(void) {
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  lt_proxy *p = NULL;
  T_EQ_INT(lt_proxy_create(loop, "t", (struct sockaddr *)&a, (struct sockaddr *)&echo_addr, &p), 0);
  T_ASSERT(lt_proxy_port(p) > 0);
  return p;
}

static int closed_calls;
static void on_closed(void *ud) {
  (void)ud;
  closed_calls++;
}

static void proxy_free(lt_proxy *p) {
  closed_calls = 0;
  lt_proxy_close(p, on_closed, NULL);
  T_EQ_INT(closed_calls, 0); /* never inside the call */
  int one = 0;
  while (closed_calls == 0) {
    run_until(&one, 5);
  }
  T_EQ_INT(closed_calls, 1);
}

/* ---- cases ---------------------------------------------------------------------------------- */

static void test_forward(void) {
  lt_proxy *p = proxy_new();
  client c;
  cl_open(&c, p);
  T_ASSERT(run_until(&c.connected, 2000));
  cl_send(&c, "hello", 5);
  T_ASSERT(got_n(&c, 5, 2000));
  T_ASSERT(memcmp(c.got, "hello", 5) == 0);
  lt_proxy_stats st;
  lt_proxy_stats_get(p, &st);
  T_EQ_INT(st.accepted, 1);
  T_EQ_INT(st.bytes_up, 5);
  T_EQ_INT(st.bytes_down, 5);
  cl_close(&c);
  proxy_free(p);
}

static void test_delay(void) {
  lt_proxy *p = proxy_new();
  client c;
  cl_open(&c, p);
  T_ASSERT(run_until(&c.connected, 2000));
  lt_proxy_set_fault(p, LT_FAULT_DELAY, 150);
  uint64_t t0 = uv_now(loop);
  cl_send(&c, "abc", 3);
  T_ASSERT(got_n(&c, 3, 3000));
  T_ASSERT(uv_now(loop) - t0 >= 290); /* delayed both ways */
  lt_proxy_set_fault(p, LT_FAULT_NONE, 0);
  c.ngot = 0;
  t0 = uv_now(loop);
  cl_send(&c, "d", 1);
  T_ASSERT(got_n(&c, 1, 2000));
  T_ASSERT(uv_now(loop) - t0 < 150);
  cl_close(&c);
  proxy_free(p);
}

static void test_bandwidth(void) {
  lt_proxy *p = proxy_new();
  client c;
  cl_open(&c, p);
  T_ASSERT(run_until(&c.connected, 2000));
  lt_proxy_set_fault(p, LT_FAULT_BANDWIDTH, 4000);
  static char buf[2000];
  memset(buf, 'x', sizeof(buf));
  uint64_t t0 = uv_now(loop);
  cl_send(&c, buf, sizeof(buf));
  T_ASSERT(got_n(&c, sizeof(buf), 5000));
  /* 2000 bytes at 4000 B/s: half a second one way (the way back overlaps it) */
  T_ASSERT(uv_now(loop) - t0 >= 400);
  T_ASSERT(memcmp(c.got, buf, sizeof(buf)) == 0);
  cl_close(&c);
  proxy_free(p);
}

static void test_blackhole(void) {
  lt_proxy *p = proxy_new();
  client c;
  cl_open(&c, p);
  T_ASSERT(run_until(&c.connected, 2000));
  lt_proxy_set_fault(p, LT_FAULT_BLACKHOLE, 0);
  cl_send(&c, "ping", 4);
  T_ASSERT(!got_n(&c, 4, 300)); /* nothing comes back, and the socket stays open */
  T_ASSERT(!c.eof && !c.reset);
  client c2; /* a new connection is accepted but stalls as well */
  cl_open(&c2, p);
  T_ASSERT(run_until(&c2.connected, 2000));
  cl_send(&c2, "x", 1);
  T_ASSERT(!got_n(&c2, 1, 200));
  lt_proxy_set_fault(p, LT_FAULT_NONE, 0);
  T_ASSERT(got_n(&c, 4, 2000));
  T_ASSERT(memcmp(c.got, "ping", 4) == 0);
  T_ASSERT(got_n(&c2, 1, 2000));
  cl_close(&c);
  cl_close(&c2);
  proxy_free(p);
}

static void test_drop_and_reset(void) {
  for (int reset = 0; reset <= 1; reset++) {
    lt_proxy *p = proxy_new();
    client c;
    cl_open(&c, p);
    T_ASSERT(run_until(&c.connected, 2000));
    cl_send(&c, "a", 1);
    T_ASSERT(got_n(&c, 1, 2000));
    lt_proxy_set_fault(p, reset ? LT_FAULT_RESET : LT_FAULT_DROP, 0);
    int *flag = reset ? &c.reset : &c.eof;
    T_ASSERT(run_until(flag, 2000));
    /* while the fault lasts, new connections are closed at once */
    client c2;
    cl_open(&c2, p);
    T_ASSERT(run_until(reset ? &c2.reset : &c2.eof, 2000) || c2.error || c2.eof);
    lt_proxy_stats st;
    lt_proxy_stats_get(p, &st);
    T_EQ_INT(st.refused, 1);
    T_EQ_INT(st.active, 0);
    cl_close(&c);
    cl_close(&c2);
    lt_proxy_set_fault(p, LT_FAULT_NONE, 0);
    client c3;
    cl_open(&c3, p);
    T_ASSERT(run_until(&c3.connected, 2000));
    cl_send(&c3, "b", 1);
    T_ASSERT(got_n(&c3, 1, 2000));
    cl_close(&c3);
    proxy_free(p);
  }
}

static void test_close_with_connections_open(void) {
  lt_proxy *p = proxy_new();
  client c[3];
  for (int i = 0; i < 3; i++) {
    cl_open(&c[i], p);
    T_ASSERT(run_until(&c[i].connected, 2000));
  }
  lt_proxy_set_fault(p, LT_FAULT_DELAY, 10000); /* chunks stay queued */
  for (int i = 0; i < 3; i++)
    cl_send(&c[i], "queued", 6);
  int none = 0;
  run_until(&none, 100);
  lt_proxy_stats st;
  lt_proxy_stats_get(p, &st);
  T_EQ_INT(st.active, 3);
  proxy_free(p); /* the callback runs once; ASan finds any chunk or pair left behind */
  for (int i = 0; i < 3; i++) {
    T_ASSERT(run_until(&c[i].eof, 2000) || c[i].reset);
    cl_close(&c[i]);
  }
}

static void test_alloc_failure(void) {
  /* creation */
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  lt_proxy *p = NULL;
  sm_alloc_fail_at(0, 0);
  T_EQ_INT(lt_proxy_create(loop, "t", (struct sockaddr *)&a, (struct sockaddr *)&echo_addr, &p),
           SM_ENOMEM);
  sm_alloc_fail_at(-1, 0);
  /* every allocation of a connection's life: the pair, then its chunks */
  p = proxy_new();
  for (long nth = 0;; nth++) {
    unsigned long before = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0);
    client c;
    cl_open(&c, p);
    run_until(&c.connected, 2000);
    if (c.connected)
      cl_send(&c, "abcdef", 6);
    int ok = got_n(&c, 6, 300);
    int failed = sm_alloc_failures() != before;
    sm_alloc_fail_at(-1, 0);
    if (!ok) {
      T_ASSERT(failed); /* a failure closes the connection; nothing else does */
      T_ASSERT(run_until(&c.eof, 2000) || c.reset || c.error);
    }
    cl_close(&c);
    /* the proxy still serves */
    client d;
    cl_open(&d, p);
    T_ASSERT(run_until(&d.connected, 2000));
    cl_send(&d, "ok", 2);
    T_ASSERT(got_n(&d, 2, 2000));
    cl_close(&d);
    if (!failed)
      break;
    T_ASSERT(nth < 50);
  }
  /* closing with a connection refused for lack of memory in flight */
  sm_alloc_fail_at(0, 1);
  client e;
  cl_open(&e, p);
  int none = 0;
  run_until(&none, 50);
  proxy_free(p);
  sm_alloc_fail_at(-1, 0);
  cl_close(&e);
}

static void test_parse_addr(void) {
  struct sockaddr_storage ss;
  T_EQ_INT(lt_proxy_parse_addr("127.0.0.1:80", &ss), 0);
  T_EQ_INT(lt_proxy_parse_addr("localhost:80", &ss), 0);
  T_EQ_INT(lt_proxy_parse_addr("[::1]:80", &ss), 0);
  T_EQ_INT(lt_proxy_parse_addr("127.0.0.1", &ss), SM_EINVAL);
  T_EQ_INT(lt_proxy_parse_addr("127.0.0.1:99999", &ss), SM_EINVAL);
  T_EQ_INT(lt_proxy_parse_addr("example.com:80", &ss), SM_EINVAL);
}

int main(void) {
  loop = uv_default_loop();
  echo_start();
  T_RUN(test_parse_addr);
  T_RUN(test_forward);
  T_RUN(test_delay);
  T_RUN(test_bandwidth);
  T_RUN(test_blackhole);
  T_RUN(test_drop_and_reset);
  T_RUN(test_close_with_connections_open);
  T_RUN(test_alloc_failure);
  uv_close((uv_handle_t *)&echo_srv, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(loop), 0);
  return t_done();
}
