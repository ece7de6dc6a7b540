/* test-tcp.c - net/tcp on real loopback sockets, client and server on one loop: echo, gathered
 * writes, the connection limit, backpressure and the stall timeout, graceful and listener
 * close, timers, TLS through net/tls, bad addresses, file descriptors exhausted (EMFILE). */
#include "net/tcp.h"

#include "certs.h"
#include "t.h"
#include "util/err.h"
#include "util/log.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t *loop;
static t_certs certs;

/* ---- the server side: a small protocol ---- */

enum mode { M_ECHO, M_BYE, M_FLOOD, M_TIMER, M_BYE_TIMER };
static enum mode mode;
static int opens, closes, last_close_reason, timers, reads;

static int p_open(net_conn *c) {
  opens++;
  if (mode == M_TIMER || mode == M_BYE_TIMER)
    net_conn_set_timer(c, net_conn_now(c) + 50);
  return 0;
}

static int p_read(net_conn *c, const uint8_t *data, size_t len) {
  reads++;
  if (mode == M_FLOOD) {
    net_conn_want_flush(c);
    return 0;
  }
  /* three writes, one uv_write at the end of the loop turn */
  T_EQ_INT(net_conn_write(c, (const uint8_t *)"<", 1), 0);
  T_EQ_INT(net_conn_write(c, data, len), 0);
  T_EQ_INT(net_conn_write(c, (const uint8_t *)">", 1), 0);
  if (mode == M_BYE || mode == M_BYE_TIMER)
    return SM_ECLOSED; /* graceful: what is queued still goes out */
  return 0;
}

static int p_flush(net_conn *c) {
  static uint8_t chunk[16384];
  if (mode == M_FLOOD) {
    size_t max = 64 * 1024;
    while (net_conn_output(c) < max)
      T_EQ_INT(net_conn_write(c, chunk, sizeof(chunk)), 0);
  }
  return 0;
}

static int p_timer(net_conn *c) {
  (void)c;
  timers++;
  return 0;
}

static void p_close(net_conn *c, int reason) {
  (void)c;
  closes++;
  last_close_reason = reason;
}

static const net_conn_ops ops = {p_open, p_read, p_flush, p_timer, p_close, NULL};

static uint64_t linger_ms; /* make_listener's linger_ms */

static net_listener *make_listener(const char *addr, size_t max_conns, net_tls_ctx *tls) {
  net_listener_config cfg = {.linger_ms = linger_ms,
                             .addr = addr,
                             .max_connections = max_conns,
                             .max_output_bytes = 64 * 1024,
                             .stall_timeout_s = 0.3,
                             .handshake_timeout_s = 0.2,
                             .tls = tls,
                             .ops = &ops,
                             .name = "test"};
  net_listener *l;
  T_EQ_INT(net_listener_create(loop, &cfg, &l), 0);
  return l;
}

static void reset(enum mode m) {
  mode = m;
  opens = closes = timers = reads = 0;
  last_close_reason = 12345;
}

/* ---- the client side ---- */

typedef struct client {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uint8_t got[1 << 16];
  size_t ngot;
  int eof;
  int connected;
  int closed;
  net_tls *tls; /* a TLS client over the socket */
  char rbuf[65536];
} client;

static void c_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)s;
  client *c = h->data;
  *b = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void c_write_raw(client *c, const void *data, size_t len);

static void c_tls_pump(client *c) {
  uint8_t out[32768];
  size_t n;
  while ((n = net_tls_take(c->tls, out, sizeof(out))) > 0)
    c_write_raw(c, out, n);
}

static void c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client *c = s->data;
  if (n < 0) {
    c->eof = 1;
    return;
  }
  if (c->tls) {
    T_EQ_INT(net_tls_feed(c->tls, (const uint8_t *)b->base, (size_t)n), 0);
    ssize_t r;
    while ((r = net_tls_read(c->tls, c->got + c->ngot, sizeof(c->got) - c->ngot)) > 0)
      c->ngot += (size_t)r;
    if (r == SM_ECLOSED)
      c->eof = 1;
    c_tls_pump(c);
    return;
  }
  size_t take = (size_t)n < sizeof(c->got) - c->ngot ? (size_t)n : sizeof(c->got) - c->ngot;
  memcpy(c->got + c->ngot, b->base, take);
  c->ngot += take;
}

static void c_connected(uv_connect_t *req, int status) {
  client *c = req->data;
  T_EQ_INT(status, 0);
  c->connected = 1;
  if (c->tls) {
    net_tls_handshake(c->tls);
    c_tls_pump(c);
  }
}

static void c_connect(client *c, int port, int read) {
  memset(c, 0, sizeof(*c));
  uv_tcp_init(loop, &c->tcp);
  c->tcp.data = c;
  c->conn.data = c;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  T_EQ_INT(uv_tcp_connect(&c->conn, &c->tcp, (const struct sockaddr *)&a, c_connected), 0);
  if (read)
    uv_read_start((uv_stream_t *)&c->tcp, c_alloc, c_read);
}

static void c_written(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void c_write_raw(client *c, const void *data, size_t len) {
  uv_write_t *w = malloc(sizeof(*w) + len);
  memcpy(w + 1, data, len);
  uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)len);
  T_EQ_INT(uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, c_written), 0);
}

static void c_write(client *c, const char *s) {
  if (c->tls) {
    T_EQ_INT(net_tls_write(c->tls, (const uint8_t *)s, strlen(s)), 0);
    c_tls_pump(c);
  } else {
    c_write_raw(c, s, strlen(s));
  }
}

static void c_closed(uv_handle_t *h) {
  client *c = h->data;
  c->closed = 1;
}

static void c_close(client *c) {
  uv_close((uv_handle_t *)&c->tcp, c_closed);
}

/* Runs the loop until cond holds (or fails after ~3 s). */
#define RUN_UNTIL(cond)                                                                            \
  do {                                                                                             \
    uint64_t t0_ = uv_now(loop);                                                                   \
    while (!(cond)) {                                                                              \
      uv_run(loop, UV_RUN_ONCE);                                                                   \
      uv_update_time(loop);                                                                        \
      if (uv_now(loop) - t0_ > 3000)                                                               \
        T_FAIL_("timed out waiting for %s", #cond);                                                \
    }                                                                                              \
  } while (0)

/* A timer keeps UV_RUN_ONCE from blocking forever while nothing else is due. */
static uv_timer_t tick;
static void tick_cb(uv_timer_t *t) {
  (void)t;
}

static int listener_closed;
static void on_listener_closed(void *ud) {
  (void)ud;
  listener_closed = 1;
}

static void close_listener(net_listener *l) {
  listener_closed = 0;
  net_listener_close(l, on_listener_closed, NULL);
  RUN_UNTIL(listener_closed);
}

/* ---- cases ---- */

static void test_echo_gathered(void) {
  reset(M_ECHO);
  net_listener *l = make_listener("127.0.0.1:0", 10, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  int port = net_listener_port(l);
  T_ASSERT(port > 0);
  client c;
  c_connect(&c, port, 1);
  RUN_UNTIL(c.connected && opens == 1);
  T_EQ_INT(net_listener_connections(l), 1);
  c_write(&c, "hello");
  RUN_UNTIL(c.ngot == 7);
  T_ASSERT(memcmp(c.got, "<hello>", 7) == 0);
  c_close(&c);
  RUN_UNTIL(closes == 1 && c.closed);
  T_EQ_INT(last_close_reason, SM_ECLOSED);
  T_EQ_INT(net_listener_connections(l), 0);
  close_listener(l);
}

static void test_graceful_close_after_reply(void) {
  reset(M_BYE);
  net_listener *l = make_listener("127.0.0.1:0", 10, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  client c;
  c_connect(&c, net_listener_port(l), 1);
  RUN_UNTIL(c.connected);
  c_write(&c, "bye");
  RUN_UNTIL(c.eof);
  T_EQ_INT(c.ngot, 5); /* the reply arrived before the close */
  T_ASSERT(memcmp(c.got, "<bye>", 5) == 0);
  RUN_UNTIL(closes == 1);
  T_EQ_INT(last_close_reason, SM_ECLOSED);
  c_close(&c);
  RUN_UNTIL(c.closed);
  close_listener(l);
}

/* With linger_ms, a graceful close shuts the write side down and discards input: the client
 * reads the reply and EOF even though it is still sending; a client that keeps sending past
 * NET_LINGER_MAX_BYTES is closed then, long before the linger time. */
static void test_linger_bounded(void) {
  reset(M_BYE);
  linger_ms = 10000;
  net_listener *l = make_listener("127.0.0.1:0", 10, NULL);
  linger_ms = 0;
  T_EQ_INT(net_listener_listen(l), 0);
  client c;
  c_connect(&c, net_listener_port(l), 1);
  RUN_UNTIL(c.connected);
  c_write(&c, "bye");
  RUN_UNTIL(c.eof); /* the write side was shut down after the reply */
  T_EQ_INT(c.ngot, 5);
  T_EQ_INT(closes, 0); /* lingering: waiting for the client's EOF */
  uint64_t t0 = uv_now(loop);
  static char junk[64 * 1024];
  memset(junk, 'x', sizeof(junk));
  for (int i = 0; i < 8; i++) /* 512 KiB > NET_LINGER_MAX_BYTES */
    c_write_raw(&c, junk, sizeof(junk));
  RUN_UNTIL(closes == 1);
  T_ASSERT(uv_now(loop) - t0 < 5000);
  c_close(&c);
  RUN_UNTIL(c.closed);
  close_listener(l);
}

/* A protocol timer that comes due while its connection lingers is not run, and does not spin
 * the loop (it once re-armed itself at 0 ms forever inside one pass of the loop's timers). */
static void test_linger_with_protocol_timer(void) {
  reset(M_BYE_TIMER);
  linger_ms = 10000;
  net_listener *l = make_listener("127.0.0.1:0", 10, NULL);
  linger_ms = 0;
  T_EQ_INT(net_listener_listen(l), 0);
  client c;
  c_connect(&c, net_listener_port(l), 1);
  RUN_UNTIL(c.connected);
  c_write(&c, "bye");
  RUN_UNTIL(c.eof);
  uint64_t t0 = uv_now(loop);
  while (uv_now(loop) - t0 < 150) /* past the protocol's 50 ms timer */
    uv_run(loop, UV_RUN_NOWAIT);
  T_EQ_INT(timers, 0);
  T_EQ_INT(closes, 0);
  c_close(&c); /* the client's EOF ends the linger */
  RUN_UNTIL(closes == 1 && c.closed);
  close_listener(l);
}

static void test_connection_limit(void) {
  reset(M_ECHO);
  net_listener *l = make_listener("127.0.0.1:0", 2, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  client c[3];
  for (int i = 0; i < 3; i++)
    c_connect(&c[i], net_listener_port(l), 1);
  RUN_UNTIL(c[0].connected && c[1].connected && c[2].connected && opens == 2);
  RUN_UNTIL(c[2].eof); /* the third was accepted and closed at once */
  T_EQ_INT(net_listener_connections(l), 2);
  c_write(&c[0], "a");
  RUN_UNTIL(c[0].ngot == 3);
  for (int i = 0; i < 3; i++)
    c_close(&c[i]);
  RUN_UNTIL(closes == 2 && c[0].closed && c[1].closed && c[2].closed);
  close_listener(l);
}

static void test_backpressure_and_stall(void) {
  reset(M_FLOOD);
  net_listener *l = make_listener("127.0.0.1:0", 10, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  client c;
  c_connect(&c, net_listener_port(l), 0); /* never reads */
  int small = 4096;
  RUN_UNTIL(c.connected);
  uv_recv_buffer_size((uv_handle_t *)&c.tcp, &small);
  c_write(&c, "go");
  RUN_UNTIL(reads == 1);
  /* the server fills the socket, stops at its limit, stops reading, then drops the peer */
  uint64_t t0 = uv_now(loop);
  RUN_UNTIL(closes == 1);
  T_EQ_INT(last_close_reason, SM_ETIMEDOUT);
  T_ASSERT(uv_now(loop) - t0 >= 250);
  c_close(&c);
  RUN_UNTIL(c.closed);
  close_listener(l);
}

static void test_timer(void) {
  reset(M_TIMER);
  net_listener *l = make_listener("127.0.0.1:0", 10, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  client c;
  c_connect(&c, net_listener_port(l), 1);
  RUN_UNTIL(timers == 1);
  c_close(&c);
  RUN_UNTIL(closes == 1 && c.closed);
  close_listener(l);
}

static void test_listener_close_with_connections(void) {
  reset(M_ECHO);
  net_listener *l = make_listener("127.0.0.1:0", 10, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  client c[2];
  c_connect(&c[0], net_listener_port(l), 1);
  c_connect(&c[1], net_listener_port(l), 1);
  RUN_UNTIL(opens == 2);
  close_listener(l);
  T_EQ_INT(closes, 2);
  T_EQ_INT(last_close_reason, SM_ECANCELED);
  RUN_UNTIL(c[0].eof && c[1].eof);
  c_close(&c[0]);
  c_close(&c[1]);
  RUN_UNTIL(c[0].closed && c[1].closed);
}

static void test_addresses(void) {
  reset(M_ECHO);
  net_listener *l = make_listener("no-such-host.invalid:1", 10, NULL);
  T_EQ_INT(net_listener_listen(l), SM_EADDR);
  close_listener(l);
  l = make_listener("127.0.0.1:99999", 10, NULL);
  T_EQ_INT(net_listener_listen(l), SM_EADDR);
  close_listener(l);
  net_listener *a = make_listener("127.0.0.1:0", 10, NULL);
  T_EQ_INT(net_listener_listen(a), 0);
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", net_listener_port(a));
  net_listener *b = make_listener(addr, 10, NULL);
  T_EQ_INT(net_listener_listen(b), SM_EEXIST);
  close_listener(b);
  close_listener(a);
  l = make_listener("[::1]:0", 10, NULL);
  int err = net_listener_listen(l);
  T_ASSERT(err == 0 || err == SM_EADDR); /* IPv6 may be off in a container */
  close_listener(l);
  l = make_listener("localhost:0", 10, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  close_listener(l);
  net_listener_config bad = {.addr = "127.0.0.1:0"};
  T_EQ_INT(net_listener_create(loop, &bad, &l), SM_EINVAL);
}

static void test_tls_echo_and_handshake_timeout(void) {
  reset(M_ECHO);
  net_tls_config sc = {.cert_file = certs.server_cert, .key_file = certs.server_key};
  net_tls_config cc = {.ca_file = certs.ca};
  net_tls_ctx *sctx, *cctx;
  T_EQ_INT(net_tls_ctx_create_server(&sc, &sctx), 0);
  T_EQ_INT(net_tls_ctx_create_client(&cc, &cctx), 0);
  net_listener *l = make_listener("127.0.0.1:0", 10, sctx);
  T_EQ_INT(net_listener_listen(l), 0);

  client c;
  c_connect(&c, net_listener_port(l), 1);
  T_EQ_INT(net_tls_create(cctx, "localhost", &c.tls), 0);
  RUN_UNTIL(opens == 1 && net_tls_established(c.tls));
  c_write(&c, "secret");
  RUN_UNTIL(c.ngot == 8);
  T_ASSERT(memcmp(c.got, "<secret>", 8) == 0);
  c_close(&c);
  RUN_UNTIL(closes == 1 && c.closed);
  net_tls_destroy(c.tls);

  /* a client that never says hello: dropped after the handshake timeout, never opened */
  client idle;
  c_connect(&idle, net_listener_port(l), 1);
  RUN_UNTIL(idle.eof);
  T_EQ_INT(opens, 1);
  T_EQ_INT(closes, 1);
  c_close(&idle);
  RUN_UNTIL(idle.closed);

  /* plaintext to the TLS port: refused */
  client plain;
  c_connect(&plain, net_listener_port(l), 1);
  RUN_UNTIL(plain.connected);
  c_write(&plain, "GET / HTTP/1.1\r\n\r\n");
  RUN_UNTIL(plain.eof);
  c_close(&plain);
  RUN_UNTIL(plain.closed);

  close_listener(l);
  net_tls_ctx_destroy(sctx);
  net_tls_ctx_destroy(cctx);
}

/* ---- file descriptors exhausted ---- */

static int fillers[4096];
static int nfillers;

/* Opens /dev/null until open fails (EMFILE): the descriptor table is full. */
static void fds_fill(void) {
  int fd;
  while (nfillers < (int)(sizeof(fillers) / sizeof(fillers[0])) &&
         (fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
    fillers[nfillers++] = fd;
  T_ASSERT(nfillers < (int)(sizeof(fillers) / sizeof(fillers[0])));
  T_EQ_INT(errno, EMFILE);
}

static void fds_release(int n) {
  while (n-- > 0 && nfillers > 0)
    close(fillers[--nfillers]);
}

static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
}

/* Runs the loop for ms and returns the CPU milliseconds it took. */
static double run_for(int ms) {
  double c0 = cpu_ms();
  uint64_t t0 = uv_now(loop);
  while (uv_now(loop) - t0 < (uint64_t)ms) {
    uv_run(loop, UV_RUN_ONCE);
    uv_update_time(loop);
  }
  return cpu_ms() - c0;
}

/* With the table full a newcomer is accepted on a reserve descriptor and closed at once (it
 * does not wait, the loop does not spin), an established connection is served on, and once
 * descriptors are free new connections are served again. lose_uv_reserve: libuv's own reserve
 * descriptor is gone (it only reopens it when a descriptor is free), so the listener's own
 * reserve must do it: without it the pending connection stayed in the backlog and connection_cb
 * ran on every loop turn with UV_EMFILE. */
static void fd_exhaustion_case(int lose_uv_reserve) {
  struct rlimit old, low;
  T_EQ_INT(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 256;
  T_EQ_INT(setrlimit(RLIMIT_NOFILE, &low), 0);

  reset(M_ECHO);
  net_listener *l = make_listener("127.0.0.1:0", 100, NULL);
  T_EQ_INT(net_listener_listen(l), 0);
  int port = net_listener_port(l);
  client a, b, c;
  c_connect(&a, port, 1);
  RUN_UNTIL(a.connected && opens == 1);

  /* b's handle exists before the table fills (uv_tcp_init may open libuv's reserve) */
  memset(&b, 0, sizeof(b));
  uv_tcp_init(loop, &b.tcp);
  b.tcp.data = &b;
  b.conn.data = &b;
  if (lose_uv_reserve) {
    T_ASSERT(loop->emfile_fd >= 0);
    close(loop->emfile_fd);
    loop->emfile_fd = -1;
  }
  fds_fill();
  fds_release(1); /* one for b's socket: the server has none left to accept it */
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);
  T_EQ_INT(uv_tcp_connect(&b.conn, &b.tcp, (const struct sockaddr *)&sa, c_connected), 0);
  uv_read_start((uv_stream_t *)&b.tcp, c_alloc, c_read);
  RUN_UNTIL(b.connected && b.eof); /* closed at once, not left waiting */
  T_EQ_INT(opens, 1);
  T_EQ_INT(net_listener_connections(l), 1);
  T_EQ_INT(net_listener_fd_dropped(l), lose_uv_reserve ? 1 : 0);

  /* the loop is idle again, not spinning on the listening socket */
  double spent = run_for(300);
  T_ASSERT(spent < 150.0);

  /* the established connection is served (it needs no new descriptor) */
  c_write(&a, "still");
  RUN_UNTIL(a.ngot == 7);
  T_ASSERT(memcmp(a.got, "<still>", 7) == 0);

  /* descriptors free up: new connections are served again */
  c_close(&b);
  RUN_UNTIL(b.closed);
  fds_release(nfillers);
  T_EQ_INT(setrlimit(RLIMIT_NOFILE, &old), 0);
  c_connect(&c, port, 1);
  RUN_UNTIL(c.connected && opens == 2);
  c_write(&c, "back");
  RUN_UNTIL(c.ngot == 6);
  T_ASSERT(memcmp(c.got, "<back>", 6) == 0);

  c_close(&a);
  c_close(&c);
  RUN_UNTIL(a.closed && c.closed && closes == 2);
  close_listener(l);
}

static void test_fd_exhaustion_libuv_reserve(void) {
  fd_exhaustion_case(0);
}

static void test_fd_exhaustion_own_reserve(void) {
  fd_exhaustion_case(1);
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  signal(SIGPIPE, SIG_IGN);
  if (t_certs_make(&certs) != 0) {
    fprintf(stderr, "cannot make test certificates with the openssl command\n");
    return 1;
  }
  loop = uv_default_loop();
  uv_timer_init(loop, &tick);
  uv_timer_start(&tick, tick_cb, 10, 10);
  T_RUN(test_echo_gathered);
  T_RUN(test_graceful_close_after_reply);
  T_RUN(test_linger_bounded);
  T_RUN(test_linger_with_protocol_timer);
  T_RUN(test_connection_limit);
  T_RUN(test_backpressure_and_stall);
  T_RUN(test_timer);
  T_RUN(test_listener_close_with_connections);
  T_RUN(test_addresses);
  T_RUN(test_tls_echo_and_handshake_timeout);
  T_RUN(test_fd_exhaustion_libuv_reserve);
  T_RUN(test_fd_exhaustion_own_reserve);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(loop), 0);
  t_certs_remove(&certs);
  return t_done();
}
