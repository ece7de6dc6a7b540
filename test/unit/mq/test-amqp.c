/* test-amqp.c - the RabbitMQ adapter, intake and publisher against a real rabbitmq-server.
 *
 * Run by with-broker.sh, which starts a throwaway broker and exports SM_RABBITMQ_PORT,
 * SM_RABBITMQ_DIR and SM_RABBITMQ_SCRIPT. The cases share one broker and one loop and run in
 * order: connect, confirms and depth, consume with prefetch, pause, dead-lettering, windows,
 * a broker crash and restart (loop keeps running, publishes fail then succeed), heartbeat
 * timeout on a frozen broker, and teardown with every handle closed. Also: a "broker" that
 * accepts TCP and never answers (the loop keeps turning, the attempt times out), allocation
 * failure injected into every allocation of a publish, and publisher / adapter destroyed with
 * publishes awaiting their confirms (every callback once, SM_ECANCELED, nothing leaked).
 */
#include "mq/amqp.h"
#include "mq/intake.h"
#include "mq/publisher.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MAX_SEEN 512

typedef struct ctx {
  uv_loop_t loop;
  uv_timer_t tick; /* keeps the loop turning; counts turns during the outage */
  uint64_t ticks;
  mq_conn *conn;
  mq_intake *intake;
  mq_publisher *pub;
  int ups, downs, last_err;
  /* publishes */
  int confirmed, nacked, closed, canceled;
  /* deliveries */
  int delivered;
  mq_intake_handle handles[MAX_SEEN];
  char corr[MAX_SEEN][64];
  int redelivered_seen;
  int auto_ack;    /* ack each delivery from the callback */
  int reject_next; /* dead-letter the next delivery */
  /* depth */
  uint64_t depth;
  int depth_reports;
  /* publisher */
  int ready_calls;
  /* queue reader (a second adapter consuming a queue we want to inspect) */
  int rd_got;
  struct {
    char reason[128];
    char body[128];
    size_t body_len;
    char corr[64];
    char hdr[64];
    int persistent;
  } rd[8];
} ctx;

static ctx T;

static void on_tick(uv_timer_t *t) {
  (void)t;
  T.ticks++;
}

typedef int (*pred_fn)(void);

/* Runs the loop until pred holds or secs pass; returns pred's last value. */
static int run_until(pred_fn pred, double secs) {
  uint64_t end = uv_now(&T.loop) + (uint64_t)(secs * 1000);
  while (!pred() && uv_now(&T.loop) < end)
    uv_run(&T.loop, UV_RUN_ONCE);
  return pred();
}

static int never(void) {
  return 0;
}

static void run_for(double secs) {
  (void)run_until(never, secs);
}

static void on_state(mq_conn *c, int up, int err, void *ud) {
  (void)c;
  (void)ud;
  if (up)
    T.ups++;
  else
    T.downs++;
  T.last_err = err;
}

static void on_published(int status, void *ud) {
  (void)ud;
  if (status == 0)
    T.confirmed++;
  else if (status == SM_EIO)
    T.nacked++;
  else if (status == SM_ECLOSED)
    T.closed++;
  else if (status == SM_ECANCELED)
    T.canceled++;
}

static void on_depth(mq_conn *c, uint64_t messages, uint32_t consumers, void *ud) {
  (void)c;
  (void)consumers;
  (void)ud;
  T.depth = messages;
  T.depth_reports++;
}

static void copy_slice(char *dst, size_t cap, mq_slice s) {
  size_t n = s.len < cap - 1 ? s.len : cap - 1;
  if (n)
    memcpy(dst, s.base, n);
  dst[n] = 0;
}

static void on_delivery(mq_intake *in, const mq_intake_msg *m, void *ud) {
  (void)ud;
  if (T.delivered < MAX_SEEN) {
    T.handles[T.delivered] = m->handle;
    copy_slice(T.corr[T.delivered], sizeof T.corr[0], m->props.correlation_id);
  }
  T.delivered++;
  T.redelivered_seen += m->redelivered;
  if (T.reject_next) {
    T.reject_next = 0;
    T_EQ_INT(mq_intake_reject_dlq(in, m->handle, "invalid command: bad json"), 0);
    T_EQ_INT(mq_intake_reject_dlq(in, m->handle, "twice"), SM_ESTATE);
    return;
  }
  if (T.auto_ack)
    T_EQ_INT(mq_intake_ack(in, m->handle), 0);
}

static void on_read_delivery(mq_intake *in, const mq_intake_msg *m, void *ud) {
  (void)ud;
  if (T.rd_got < 8) {
    int k = T.rd_got;
    copy_slice(T.rd[k].body, sizeof T.rd[k].body, m->body);
    T.rd[k].body_len = m->body.len;
    copy_slice(T.rd[k].corr, sizeof T.rd[k].corr, m->props.correlation_id);
    T.rd[k].persistent = m->props.persistent;
    T.rd[k].reason[0] = T.rd[k].hdr[0] = 0;
    for (size_t i = 0; i < m->props.n_headers; i++) {
      const mq_header *h = &m->props.headers[i];
      if (h->key.len == 18 && !memcmp(h->key.base, "x-rejection-reason", 18))
        copy_slice(T.rd[k].reason, sizeof T.rd[k].reason, h->value);
      if (h->key.len == 8 && !memcmp(h->key.base, "x-source", 8))
        copy_slice(T.rd[k].hdr, sizeof T.rd[k].hdr, h->value);
    }
  }
  T.rd_got++;
  T_EQ_INT(mq_intake_ack(in, m->handle), 0);
}

static void on_ready(mq_publisher *p, void *ud) {
  (void)p;
  (void)ud;
  T.ready_calls++;
}

static char url[128];
static const char *broker_dir, *broker_script;

static void broker(const char *verb, int background) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s %s %s >/dev/null%s", broker_script, verb, broker_dir,
           background ? " 2>&1 &" : "");
  T_EQ_INT(system(cmd), 0);
}

/* Publishes n messages with correlation ids "<prefix><i>" to the command queue. */
static int publish_n(int n, const char *prefix) {
  int ok = 0;
  for (int i = 0; i < n; i++) {
    char corr[64], body[64];
    snprintf(corr, sizeof corr, "%s%d", prefix, i);
    snprintf(body, sizeof body, "{\"type\":\"echo\",\"n\":%d}", i);
    mq_header h = {{"x-source", 8}, {"test", 4}};
    mq_props props = {.content_type = {"application/json", 16},
                      .correlation_id = {corr, strlen(corr)},
                      .reply_to = {"t-replies", 9},
                      .headers = &h,
                      .n_headers = 1,
                      .persistent = 1};
    int err = mq_conn_publish(T.conn, "t-cmd", (mq_slice){body, strlen(body)}, &props, on_published,
                              NULL);
    if (err)
      return err;
    ok++;
  }
  return ok == n ? 0 : SM_EINTERNAL;
}

static int want_confirmed;
static int want_delivered;
static int want_depth;
static int want_ups;
static int want_downs;
static int p_confirmed(void) {
  return T.confirmed >= want_confirmed;
}
static int p_delivered(void) {
  return T.delivered >= want_delivered;
}
static int p_depth(void) {
  return T.depth_reports > 0 && (int)T.depth == want_depth;
}
static int p_ups(void) {
  return T.ups >= want_ups;
}
static int p_downs(void) {
  return T.downs >= want_downs;
}
static int want_read;
static int p_read(void) {
  return T.rd_got >= want_read;
}

/* Consumes n messages of queue through a second adapter (its "command queue" is that queue). */
static void read_queue(const char *queue, int n) {
  mq_conn *rc = NULL;
  mq_intake *ri = NULL;
  mq_conn_opts o = {
      .url = url, .command_queue = queue, .result_queue = "t-res", .depth_interval_s = -1};
  T.rd_got = 0;
  T_EQ_INT(mq_conn_create(&T.loop, &o, &rc), 0);
  T_EQ_INT(mq_intake_create(rc, 4, on_read_delivery, NULL, &ri), 0);
  T_EQ_INT(mq_intake_start(ri), 0);
  T_EQ_INT(mq_conn_start(rc), 0);
  want_read = n;
  T_ASSERT(run_until(p_read, 10));
  run_for(0.2);
  T_EQ_INT(T.rd_got, n);
  mq_intake_destroy(ri);
  mq_conn_destroy(rc);
}
static int p_dead_lettered(void) {
  mq_intake_stats st;
  mq_intake_get_stats(T.intake, &st);
  return st.dead_lettered >= 1;
}
static int p_dead_lettered2(void) {
  mq_intake_stats st;
  mq_intake_get_stats(T.intake, &st);
  return st.dead_lettered >= 2;
}
static int p_too_large(void) {
  mq_intake_stats st;
  mq_intake_get_stats(T.intake, &st);
  return st.too_large >= 1;
}

static void test_bad_url(void) {
  mq_conn *c = NULL;
  mq_conn_opts o = {.url = "http://nope"};
  T_EQ_INT(mq_conn_create(&T.loop, &o, &c), SM_EINVAL);
  T_ASSERT(c == NULL);
}

static void test_connect(void) {
  mq_conn_opts o = {
      .url = url,
      .command_queue = "t-cmd",
      .result_queue = "t-res",
      .heartbeat_s = 2,
      .connect_timeout_s = 5,
      .backoff_min_s = 0.1,
      .backoff_max_s = 0.5,
      .depth_interval_s = 0.1,
      .max_unconfirmed = 300,
      .max_message_bytes = 4096,
  };
  T_EQ_INT(mq_conn_create(&T.loop, &o, &T.conn), 0);
  T_EQ_INT(mq_conn_on_state(T.conn, on_state, NULL), 0);
  mq_conn_on_depth(T.conn, on_depth, NULL);
  T_EQ_INT(mq_conn_publish(T.conn, "t-cmd", (mq_slice){"x", 1}, NULL, NULL, NULL), SM_ECLOSED);
  T_EQ_INT(mq_conn_start(T.conn), 0);
  T_EQ_INT(mq_conn_start(T.conn), SM_ESTATE);
  want_ups = 1;
  T_ASSERT(run_until(p_ups, 10));
  T_ASSERT(mq_conn_is_up(T.conn));
  T_EQ_INT(mq_conn_generation(T.conn), 1);
  T_EQ_STR(mq_conn_command_queue(T.conn), "t-cmd");
}

static int auth_downs, auth_err;
static void on_auth_state(mq_conn *c, int up, int err, void *ud) {
  (void)c;
  (void)ud;
  if (!up) {
    auth_downs++;
    auth_err = err;
  }
}
static int p_auth_down(void) {
  return auth_downs >= 1;
}

static void test_bad_password(void) {
  char bad[160];
  snprintf(bad, sizeof bad, "amqp://guest:wrong@127.0.0.1:%s/", getenv("SM_RABBITMQ_PORT"));
  mq_conn_opts o = {.url = bad, .command_queue = "t-cmd", .backoff_min_s = 5};
  mq_conn *c = NULL;
  T_EQ_INT(mq_conn_create(&T.loop, &o, &c), 0);
  T_EQ_INT(mq_conn_on_state(c, on_auth_state, NULL), 0);
  T_EQ_INT(mq_conn_start(c), 0);
  T_ASSERT(run_until(p_auth_down, 10));
  T_EQ_INT(auth_err, SM_EAUTH);
  T_ASSERT(!mq_conn_is_up(c));
  mq_conn_destroy(c); /* while its retry timer runs */
}

static void test_publish_confirm_and_depth(void) {
  int c0 = T.confirmed;
  T_EQ_INT(publish_n(100, "a"), 0);
  T_EQ_INT(mq_conn_unconfirmed(T.conn), 100);
  want_confirmed = c0 + 100;
  T_ASSERT(run_until(p_confirmed, 10));
  T_EQ_INT(mq_conn_unconfirmed(T.conn), 0);
  T_EQ_INT(T.nacked + T.closed, 0);
  want_depth = 100;
  T_ASSERT(run_until(p_depth, 5));
  uint64_t d = 0;
  T_EQ_INT(mq_conn_queue_depth(T.conn, &d), 0);
  T_EQ_INT(d, 100);
}

static void test_adapter_confirm_window(void) {
  /* max_unconfirmed = 300: the 301st publish in one turn is refused, nothing is lost. */
  int c0 = T.confirmed;
  T_EQ_INT(publish_n(300, "w"), 0);
  T_EQ_INT(mq_conn_publish(T.conn, "t-cmd", (mq_slice){"x", 1}, NULL, on_published, NULL),
           SM_ELIMIT);
  want_confirmed = c0 + 300;
  T_ASSERT(run_until(p_confirmed, 10));
  want_depth = 400;
  T_ASSERT(run_until(p_depth, 5));
}

static void test_consume_prefetch(void) {
  T_EQ_INT(mq_intake_create(T.conn, 10, on_delivery, NULL, &T.intake), 0);
  T_EQ_INT(mq_intake_start(T.intake), 0);
  want_delivered = 10;
  T_ASSERT(run_until(p_delivered, 5));
  run_for(0.3);
  T_EQ_INT(T.delivered, 10); /* the prefetch holds the rest back */
  T_EQ_INT(mq_intake_unacked(T.intake), 10);
  T_EQ_STR(T.corr[0], "a0");
  T_EQ_STR(T.corr[9], "a9");
  for (int i = 0; i < 10; i++)
    T_EQ_INT(mq_intake_ack(T.intake, T.handles[i]), 0);
  T_EQ_INT(mq_intake_ack(T.intake, T.handles[0]), SM_ENOENT);
  T_EQ_INT(mq_intake_unacked(T.intake), 0);
  T.auto_ack = 1;
  want_delivered = 400;
  T_ASSERT(run_until(p_delivered, 10));
  run_for(0.2);
  T_EQ_INT(T.delivered, 400);
  T_EQ_STR(T.corr[99], "a99");
  T_EQ_STR(T.corr[100], "w0");
  want_depth = 0;
  T_ASSERT(run_until(p_depth, 5));
}

static void test_pause_resume(void) {
  T_EQ_INT(mq_intake_pause(T.intake), 0);
  T_ASSERT(mq_intake_paused(T.intake));
  run_for(0.2); /* let basic.cancel reach the broker */
  int d0 = T.delivered, c0 = T.confirmed;
  T_EQ_INT(publish_n(5, "p"), 0);
  want_confirmed = c0 + 5;
  T_ASSERT(run_until(p_confirmed, 5));
  run_for(0.3);
  T_EQ_INT(T.delivered, d0); /* paused: nothing new arrives */
  T_EQ_INT(mq_intake_resume(T.intake), 0);
  want_delivered = d0 + 5;
  T_ASSERT(run_until(p_delivered, 5));
  T_EQ_STR(T.corr[d0], "p0");
}

static void test_reject_to_dlq(void) {
  T.reject_next = 1;
  int d0 = T.delivered;
  const char *body = "{not json";
  mq_header h = {{"x-source", 8}, {"bad-client", 10}};
  mq_props props = {.correlation_id = {"bad-1", 5}, .headers = &h, .n_headers = 1, .persistent = 1};
  T_EQ_INT(
      mq_conn_publish(T.conn, "t-cmd", (mq_slice){body, strlen(body)}, &props, on_published, NULL),
      0);
  want_delivered = d0 + 1;
  T_ASSERT(run_until(p_delivered, 5));
  T_ASSERT(run_until(p_dead_lettered, 5));
  T_EQ_INT(mq_intake_unacked(T.intake), 0);
  /* A body over max_message_bytes (4096) never reaches the callback: the intake dead-letters
   * it itself, with the bytes it kept. */
  static char big[5000];
  memset(big, 'b', sizeof big);
  d0 = T.delivered;
  T_EQ_INT(mq_conn_publish(T.conn, "t-cmd", (mq_slice){big, sizeof big}, NULL, on_published, NULL),
           0);
  T_ASSERT(run_until(p_too_large, 5));
  T_ASSERT(run_until(p_dead_lettered2, 5));
  T_EQ_INT(T.delivered, d0);
  /* Read the DLQ back through a second adapter. */
  read_queue("t-cmd.dlq", 2);
  T_EQ_STR(T.rd[0].body, "{not json");
  T_EQ_STR(T.rd[0].reason, "invalid command: bad json");
  T_EQ_STR(T.rd[0].corr, "bad-1");
  T_EQ_STR(T.rd[0].hdr, "bad-client");
  T_EQ_INT(T.rd[0].persistent, 1);
  T_EQ_INT(T.rd[1].body_len, 4096);
  T_ASSERT(strncmp(T.rd[1].reason, "message too large: 5000 bytes", 29) == 0);
}

static void test_publisher_window(void) {
  T_EQ_INT(mq_publisher_create(T.conn, 4, &T.pub), 0);
  mq_publisher_on_ready(T.pub, on_ready, NULL);
  int c0 = T.confirmed;
  for (int i = 0; i < 4; i++)
    T_EQ_INT(mq_publisher_publish(T.pub, NULL, (mq_slice){"{\"id\":\"r\"}", 10},
                                  (mq_slice){"corr", 4}, on_published, NULL),
             0);
  T_EQ_INT(mq_publisher_publish(T.pub, NULL, (mq_slice){"{}", 2}, (mq_slice){NULL, 0}, on_published,
                                NULL),
           SM_ELIMIT);
  T_ASSERT(!mq_publisher_can_publish(T.pub));
  T_EQ_INT(mq_publisher_inflight(T.pub), 4);
  T_EQ_INT(T.ready_calls, 0); /* never from inside the call */
  want_confirmed = c0 + 4;
  T_ASSERT(run_until(p_confirmed, 5));
  T_EQ_INT(T.ready_calls, 1);
  T_ASSERT(mq_publisher_can_publish(T.pub));
  mq_publisher_stats st;
  mq_publisher_get_stats(T.pub, &st);
  T_EQ_INT(st.published, 4);
  T_EQ_INT(st.confirmed, 4);
  T_EQ_INT(st.refused, 1);
}

static int keep_seen_after;
static int count_corr_prefix(int from, const char *prefix) {
  int n = 0;
  for (int i = from; i < T.delivered && i < MAX_SEEN; i++)
    n += strncmp(T.corr[i], prefix, strlen(prefix)) == 0;
  return n;
}
static int p_keep_back(void) {
  return count_corr_prefix(keep_seen_after, "keep0") > 0;
}

static void test_broker_restart(void) {
  /* One delivery left unacked across the crash: its handle must go stale. */
  T.auto_ack = 0;
  int d0 = T.delivered;
  want_confirmed = T.confirmed + 1;
  T_EQ_INT(publish_n(1, "keep"), 0);
  want_delivered = d0 + 1;
  T_ASSERT(run_until(p_delivered, 5));
  T_ASSERT(run_until(p_confirmed, 5));
  mq_intake_handle stale = T.handles[d0];
  /* Publishes in flight when the broker dies: each completes, confirmed or SM_ECLOSED. */
  int c0 = T.confirmed, x0 = T.closed;
  T_EQ_INT(publish_n(50, "crash"), 0);
  int downs0 = T.downs, ups0 = T.ups;
  broker("kill", 0);
  want_downs = downs0 + 1;
  T_ASSERT(run_until(p_downs, 10));
  T_ASSERT(!mq_conn_is_up(T.conn));
  int crash_confirmed = T.confirmed - c0;
  T_EQ_INT(crash_confirmed + (T.closed - x0), 50);
  T_EQ_INT(mq_conn_unconfirmed(T.conn), 0);
  T_EQ_INT(mq_intake_ack(T.intake, stale), SM_ECLOSED);
  T_EQ_INT(mq_intake_unacked(T.intake), 0);
  T_EQ_INT(mq_publisher_publish(T.pub, NULL, (mq_slice){"{}", 2}, (mq_slice){NULL, 0}, on_published,
                                NULL),
           SM_ECLOSED);
  T_EQ_INT(mq_conn_publish(T.conn, "t-cmd", (mq_slice){"x", 1}, NULL, NULL, NULL), SM_ECLOSED);
  /* The outage: the loop keeps turning (10 ms ticks) while reconnects fail and back off. */
  uint64_t t0 = T.ticks;
  int fails0 = T.downs;
  run_for(1.0);
  T_ASSERT(T.ticks - t0 >= 50);
  T_ASSERT(T.downs - fails0 >= 2);  /* backoff capped at 0.5 s: several attempts failed */
  T_EQ_INT(T.last_err, SM_ECLOSED); /* connection refused */
  /* Restart in the background and keep the loop running until the adapter is back. */
  T.auto_ack = 1;
  keep_seen_after = T.delivered;
  broker("restart", 1);
  want_ups = ups0 + 1;
  T_ASSERT(run_until(p_ups, 60));
  T_EQ_INT(mq_conn_generation(T.conn), 2);
  T_ASSERT(T.ready_calls >= 2); /* the publisher announced the reconnect */
  c0 = T.confirmed;
  T_EQ_INT(mq_publisher_publish(T.pub, NULL, (mq_slice){"{}", 2}, (mq_slice){NULL, 0}, on_published,
                                NULL),
           0);
  want_confirmed = c0 + 1;
  T_ASSERT(run_until(p_confirmed, 10));
  /* The intake consumes again by itself: the unacked message comes back, and so does every
   * publish the broker had confirmed before it died (persistent, durable queue). */
  T_ASSERT(run_until(p_keep_back, 10));
  run_for(0.5);
  T_ASSERT(count_corr_prefix(keep_seen_after, "crash") >= crash_confirmed);
  T_EQ_INT(mq_intake_unacked(T.intake), 0);
}

static int read_pid(const char *path) {
  FILE *f = fopen(path, "r");
  int pid = 0;
  if (f) {
    if (fscanf(f, "%d", &pid) != 1)
      pid = 0;
    fclose(f);
  }
  return pid;
}

static void test_heartbeat_timeout(void) {
  /* A frozen broker keeps the TCP connection open: only heartbeats can tell (2 s -> <= 4.5 s). */
  char path[512];
  snprintf(path, sizeof path, "%s/rabbit.pid", broker_dir);
  int pid = read_pid(path);
  T_ASSERT(pid > 0);
  int downs0 = T.downs, ups0 = T.ups;
  T_EQ_INT(kill(pid, SIGSTOP), 0);
  want_downs = downs0 + 1;
  int detected = run_until(p_downs, 8);
  int err = T.last_err;
  kill(pid, SIGCONT);
  T_ASSERT(detected);
  T_EQ_INT(err, SM_ETIMEDOUT);
  want_ups = ups0 + 1;
  T_ASSERT(run_until(p_ups, 20));
}

static void test_results_queue(void) {
  /* The publisher's messages: persistent, JSON, with the correlation id when given. */
  read_queue("t-res", 5);
  T_EQ_STR(T.rd[0].body, "{\"id\":\"r\"}");
  T_EQ_STR(T.rd[0].corr, "corr");
  T_EQ_INT(T.rd[0].persistent, 1);
  T_EQ_STR(T.rd[4].body, "{}");
  T_EQ_STR(T.rd[4].corr, "");
}

/* ---- a broker that accepts TCP and never says a word ---------------------------------------- */

static uv_tcp_t silent_srv;
static uv_tcp_t silent_peer[4];
static int silent_accepted;
static int silent_downs, silent_err;

static void on_silent_conn(uv_stream_t *srv, int status) {
  T_EQ_INT(status, 0);
  T_ASSERT(silent_accepted < 4);
  uv_tcp_t *peer = &silent_peer[silent_accepted];
  T_EQ_INT(uv_tcp_init(&T.loop, peer), 0);
  T_EQ_INT(uv_accept(srv, (uv_stream_t *)peer), 0);
  silent_accepted++; /* and never read nor write */
}

static void on_silent_state(mq_conn *c, int up, int err, void *ud) {
  (void)c;
  (void)ud;
  T_ASSERT(!up);
  silent_downs++;
  silent_err = err;
}

static int p_silent_down(void) {
  return silent_downs >= 1;
}

static void test_silent_broker(void) {
  struct sockaddr_in addr;
  T_EQ_INT(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
  T_EQ_INT(uv_tcp_init(&T.loop, &silent_srv), 0);
  T_EQ_INT(uv_tcp_bind(&silent_srv, (const struct sockaddr *)&addr, 0), 0);
  T_EQ_INT(uv_listen((uv_stream_t *)&silent_srv, 8, on_silent_conn), 0);
  struct sockaddr_in bound;
  int len = sizeof bound;
  T_EQ_INT(uv_tcp_getsockname(&silent_srv, (struct sockaddr *)&bound, &len), 0);
  char u[128];
  snprintf(u, sizeof u, "amqp://guest:guest@127.0.0.1:%d/", ntohs(bound.sin_port));
  mq_conn_opts o = {.url = u, .connect_timeout_s = 0.6, .backoff_min_s = 30};
  mq_conn *c = NULL;
  T_EQ_INT(mq_conn_create(&T.loop, &o, &c), 0);
  T_EQ_INT(mq_conn_on_state(c, on_silent_state, NULL), 0);
  uint64_t t0 = uv_now(&T.loop), ticks0 = T.ticks;
  T_EQ_INT(mq_conn_start(c), 0);
  /* The loop keeps turning while the handshake waits: no single turn takes long. */
  uint64_t longest = 0;
  while (!p_silent_down() && uv_now(&T.loop) - t0 < 5000) {
    uint64_t before = uv_hrtime();
    uv_run(&T.loop, UV_RUN_ONCE);
    uint64_t took = (uv_hrtime() - before) / 1000000;
    if (took > longest)
      longest = took;
  }
  uint64_t waited = uv_now(&T.loop) - t0;
  T_ASSERT(p_silent_down());
  T_EQ_INT(silent_accepted, 1);
  T_EQ_INT(silent_err, SM_ETIMEDOUT);
  T_ASSERT(waited >= 550 && waited < 2000);
  T_ASSERT(T.ticks - ticks0 >= 30); /* the 10 ms timer kept firing */
  T_ASSERT(longest < 100);
  T_ASSERT(!mq_conn_is_up(c));
  mq_conn_destroy(c);
  for (int i = 0; i < silent_accepted; i++)
    uv_close((uv_handle_t *)&silent_peer[i], NULL);
  uv_close((uv_handle_t *)&silent_srv, NULL);
  run_for(0.05);
}

/* ---- exactly-once callbacks: allocation failure and destroy with publishes pending ---------- */

#define N_OPS 64
static int op_calls[N_OPS];
static int op_status[N_OPS];

static void on_op_done(int status, void *ud) {
  int i = (int)(intptr_t)ud;
  op_calls[i]++;
  op_status[i] = status;
}

static int op_total(void) {
  int n = 0;
  for (int i = 0; i < N_OPS; i++)
    n += op_calls[i];
  return n;
}

static int op_want;
static int p_ops(void) {
  return op_total() >= op_want;
}

static void ops_reset(void) {
  memset(op_calls, 0, sizeof op_calls);
  memset(op_status, 0, sizeof op_status);
}

static void test_publisher_alloc_fail(void) {
  /* Creation under failure: SM_ENOMEM, nothing half made. */
  mq_publisher *p = NULL;
  int err;
  for (long nth = 0;; nth++) {
    sm_alloc_fail_at(nth, 0);
    err = mq_publisher_create(T.conn, 8, &p);
    sm_alloc_fail_at(-1, 0);
    if (err == 0)
      break;
    T_EQ_INT(err, SM_ENOMEM);
    T_ASSERT(nth < 10);
  }
  /* Each allocation of a publish fails in turn: refused with SM_ENOMEM and no callback, or
   * accepted and its callback runs exactly once; the publisher works afterwards. */
  ops_reset();
  long nth;
  for (nth = 0; nth < 20; nth++) {
    sm_alloc_fail_at(nth, 0);
    err = mq_publisher_publish(p, "t-drop", (mq_slice){"{\"f\":1}", 7}, (mq_slice){"fail", 4},
                               on_op_done, (void *)(intptr_t)0);
    sm_alloc_fail_at(-1, 0);
    if (err == 0)
      break;
    T_EQ_INT(err, SM_ENOMEM);
    run_for(0.02);
    T_EQ_INT(op_calls[0], 0);
    T_EQ_INT(mq_publisher_inflight(p), 0);
  }
  T_ASSERT(nth >= 1 && nth < 20);
  op_want = 1;
  T_ASSERT(run_until(p_ops, 5));
  run_for(0.05);
  T_EQ_INT(op_calls[0], 1);
  T_EQ_INT(op_status[0], 0);
  /* A sticky failure of everything: still refused cleanly. */
  sm_alloc_fail_at(0, 1);
  err = mq_publisher_publish(p, "t-drop", (mq_slice){"{}", 2}, (mq_slice){NULL, 0}, on_op_done,
                             (void *)(intptr_t)1);
  sm_alloc_fail_at(-1, 0);
  T_EQ_INT(err, SM_ENOMEM);
  run_for(0.02);
  T_EQ_INT(op_calls[1], 0);
  T_EQ_INT(mq_publisher_publish(p, "t-drop", (mq_slice){"{}", 2}, (mq_slice){NULL, 0}, on_op_done,
                                (void *)(intptr_t)2),
           0);
  op_want = 2;
  T_ASSERT(run_until(p_ops, 5));
  T_EQ_INT(op_status[2], 0);
  mq_publisher_destroy(p);
}

static int destroy_in_cb_pub_calls;
static mq_publisher *destroy_in_cb_pub;
static void on_op_destroy_pub(int status, void *ud) {
  on_op_done(status, ud);
  if (destroy_in_cb_pub) { /* the first callback destroys its publisher: the rest still run */
    mq_publisher *p = destroy_in_cb_pub;
    destroy_in_cb_pub = NULL;
    destroy_in_cb_pub_calls++;
    mq_publisher_destroy(p);
  }
}

static void test_publisher_destroy_pending(void) {
  mq_publisher *p = NULL;
  T_EQ_INT(mq_publisher_create(T.conn, 64, &p), 0);
  ops_reset();
  for (int i = 0; i < 20; i++)
    T_EQ_INT(mq_publisher_publish(p, "t-drop", (mq_slice){"{}", 2}, (mq_slice){NULL, 0}, on_op_done,
                                  (void *)(intptr_t)i),
             0);
  T_EQ_INT(mq_publisher_inflight(p), 20);
  mq_publisher_destroy(p); /* before any confirm arrived */
  for (int i = 0; i < 20; i++) {
    T_EQ_INT(op_calls[i], 1);
    T_EQ_INT(op_status[i], SM_ECANCELED);
  }
  /* The adapter still completes (and frees) its records; nobody hears of it twice. */
  T_ASSERT(mq_conn_unconfirmed(T.conn) > 0);
  for (int i = 0; i < 100 && mq_conn_unconfirmed(T.conn) > 0; i++)
    run_for(0.02);
  T_EQ_INT(mq_conn_unconfirmed(T.conn), 0);
  T_EQ_INT(op_total(), 20);

  /* Destroyed from inside a callback of its own: every other callback still runs once. */
  T_EQ_INT(mq_publisher_create(T.conn, 64, &p), 0);
  ops_reset();
  for (int i = 0; i < 10; i++)
    T_EQ_INT(mq_publisher_publish(p, "t-drop", (mq_slice){"{}", 2}, (mq_slice){NULL, 0},
                                  on_op_destroy_pub, (void *)(intptr_t)i),
             0);
  destroy_in_cb_pub = p;
  op_want = 10;
  T_ASSERT(run_until(p_ops, 5));
  run_for(0.1);
  T_EQ_INT(destroy_in_cb_pub_calls, 1);
  T_EQ_INT(op_total(), 10);
  for (int i = 0; i < 10; i++)
    T_EQ_INT(op_calls[i], 1);
  T_EQ_INT(mq_conn_unconfirmed(T.conn), 0);
}

static mq_conn *conn2;
static int p_conn2_up(void) {
  return mq_conn_is_up(conn2);
}

static void test_conn_destroy_pending(void) {
  /* A second connection destroyed with publishes (direct and through a publisher) awaiting
   * their confirms: each callback runs once, inside mq_conn_destroy, with SM_ECANCELED. */
  mq_conn_opts o = {
      .url = url, .command_queue = "t-cmd", .result_queue = "t-res", .depth_interval_s = -1};
  T_EQ_INT(mq_conn_create(&T.loop, &o, &conn2), 0);
  T_EQ_INT(mq_conn_start(conn2), 0);
  T_ASSERT(run_until(p_conn2_up, 10));
  mq_publisher *p = NULL;
  T_EQ_INT(mq_publisher_create(conn2, 64, &p), 0);
  ops_reset();
  for (int i = 0; i < 10; i++)
    T_EQ_INT(
        mq_conn_publish(conn2, "t-drop", (mq_slice){"x", 1}, NULL, on_op_done, (void *)(intptr_t)i),
        0);
  for (int i = 10; i < 20; i++)
    T_EQ_INT(mq_publisher_publish(p, "t-drop", (mq_slice){"{}", 2}, (mq_slice){NULL, 0}, on_op_done,
                                  (void *)(intptr_t)i),
             0);
  mq_conn_destroy(conn2);
  for (int i = 0; i < 20; i++) {
    T_EQ_INT(op_calls[i], 1);
    T_EQ_INT(op_status[i], SM_ECANCELED);
  }
  T_EQ_INT(mq_publisher_inflight(p), 0);
  mq_publisher_destroy(p); /* nothing left: no callback again */
  run_for(0.1);
  T_EQ_INT(op_total(), 20);
}

/* The auxiliary consumer (SiriusScan's UI queue): declared non-durable with its reply queue,
 * consumed on channel 1 beside the intake with its own tag; its deliveries reach only its hook
 * and settle with mq_conn_ack; pausing the intake (basic.cancel of the main consumer) leaves it
 * consuming; without a hook its deliveries are requeued. */
static struct {
  int got, main_got;
  uint64_t gen, tag[16];
  char body[16][32];
  int ack;
} X;

static void on_aux(mq_conn *c, const mq_message *m, void *ud) {
  (void)ud;
  if (X.got < 16) {
    copy_slice(X.body[X.got], sizeof X.body[0], m->body);
    X.tag[X.got] = m->delivery_tag;
  }
  X.gen = m->generation;
  if (X.ack)
    T_EQ_INT(mq_conn_ack(c, m->generation, m->delivery_tag), 0);
  X.got++;
}

static void on_aux_main(mq_intake *in, const mq_intake_msg *m, void *ud) {
  (void)ud;
  X.main_got++;
  T_EQ_INT(mq_intake_ack(in, m->handle), 0);
}

static int x_want;
static int p_aux(void) {
  return X.got >= x_want;
}
static int p_aux_main(void) {
  return X.main_got >= x_want;
}
static mq_conn *xc;
static int xc_ups;
static void on_xc_state(mq_conn *c, int up, int err, void *ud) {
  (void)c, (void)err, (void)ud;
  xc_ups += up;
}
static int p_xc_up(void) {
  return xc_ups > 0;
}

static void test_aux_consumer(void) {
  mq_conn_opts o = {.url = url,
                    .command_queue = "t-aux-cmd",
                    .result_queue = "t-aux-res",
                    .aux_queue = "t-ui",
                    .aux_reply_queue = "t-ui-resp",
                    .aux_prefetch = 4,
                    .depth_interval_s = -1};
  T_EQ_INT(mq_conn_create(&T.loop, &o, &xc), 0);
  T_EQ_INT(mq_conn_on_state(xc, on_xc_state, NULL), 0);
  mq_conn_set_aux_consumer(xc, on_aux, NULL);
  mq_intake *in = NULL;
  T_EQ_INT(mq_intake_create(xc, 8, on_aux_main, NULL, &in), 0);
  T_EQ_INT(mq_intake_start(in), 0);
  T_EQ_INT(mq_conn_start(xc), 0);
  T_ASSERT(run_until(p_xc_up, 10));
  /* the UI's messages reach the aux hook only, the intake's the intake only */
  for (int i = 0; i < 6; i++) {
    char b[16];
    int n = snprintf(b, sizeof b, "ui%d", i);
    T_EQ_INT(mq_conn_publish(xc, "t-ui", (mq_slice){b, (size_t)n}, NULL, NULL, NULL), 0);
  }
  T_EQ_INT(mq_conn_publish(xc, "t-aux-cmd", (mq_slice){"m0", 2}, NULL, NULL, NULL), 0);
  x_want = 4;
  T_ASSERT(run_until(p_aux, 5));
  x_want = 1;
  T_ASSERT(run_until(p_aux_main, 5));
  run_for(0.3);
  T_EQ_INT(X.got, 4); /* its own prefetch holds the rest back */
  T_EQ_INT(X.main_got, 1);
  T_EQ_STR(X.body[0], "ui0");
  for (int i = 0; i < 4; i++)
    T_EQ_INT(mq_conn_ack(xc, X.gen, X.tag[i]), 0);
  X.ack = 1;
  x_want = 6;
  T_ASSERT(run_until(p_aux, 5));
  T_EQ_STR(X.body[5], "ui5");
  /* pausing the intake cancels only its consumer */
  T_EQ_INT(mq_intake_pause(in), 0);
  run_for(0.2);
  T_EQ_INT(mq_conn_publish(xc, "t-ui", (mq_slice){"ui6", 3}, NULL, NULL, NULL), 0);
  T_EQ_INT(mq_conn_publish(xc, "t-aux-cmd", (mq_slice){"m1", 2}, NULL, NULL, NULL), 0);
  x_want = 7;
  T_ASSERT(run_until(p_aux, 5));
  run_for(0.3);
  T_EQ_INT(X.main_got, 1);
  T_EQ_INT(mq_intake_resume(in), 0);
  x_want = 2;
  T_ASSERT(run_until(p_aux_main, 5));
  /* without a hook a delivery goes back to the queue (and comes back with the hook) */
  mq_conn_set_aux_consumer(xc, NULL, NULL);
  T_EQ_INT(mq_conn_publish(xc, "t-ui", (mq_slice){"ui7", 3}, NULL, NULL, NULL), 0);
  run_for(0.3);
  T_EQ_INT(X.got, 7);
  mq_conn_set_aux_consumer(xc, on_aux, NULL);
  x_want = 8;
  T_ASSERT(run_until(p_aux, 5));
  T_EQ_STR(X.body[7], "ui7");
  mq_intake_destroy(in);
  mq_conn_destroy(xc);
  run_for(0.1);
}

static void test_teardown(void) {
  mq_publisher_destroy(T.pub);
  mq_intake_destroy(T.intake);
  mq_conn_destroy(T.conn);
  mq_conn_destroy(NULL);
  uv_close((uv_handle_t *)&T.tick, NULL);
  T_EQ_INT(uv_run(&T.loop, UV_RUN_DEFAULT), 0);
  T_EQ_INT(uv_loop_close(&T.loop), 0);
}

int main(void) {
  const char *port = getenv("SM_RABBITMQ_PORT");
  broker_dir = getenv("SM_RABBITMQ_DIR");
  broker_script = getenv("SM_RABBITMQ_SCRIPT");
  if (!port || !broker_dir || !broker_script) {
    fprintf(stderr, "run through with-broker.sh\n");
    return 1;
  }
  sm_log_configure(SM_LOG_WARN, SM_LOG_CONSOLE);
  snprintf(url, sizeof url, "amqp://guest:guest@localhost:%s/", port);
  T_EQ_INT(uv_loop_init(&T.loop), 0);
  uv_timer_init(&T.loop, &T.tick);
  uv_timer_start(&T.tick, on_tick, 10, 10);
  T_RUN(test_bad_url);
  T_RUN(test_silent_broker);
  T_RUN(test_connect);
  T_RUN(test_bad_password);
  T_RUN(test_publish_confirm_and_depth);
  T_RUN(test_adapter_confirm_window);
  T_RUN(test_consume_prefetch);
  T_RUN(test_pause_resume);
  T_RUN(test_reject_to_dlq);
  T_RUN(test_publisher_window);
  T_RUN(test_publisher_alloc_fail);
  T_RUN(test_publisher_destroy_pending);
  T_RUN(test_conn_destroy_pending);
  T_RUN(test_broker_restart);
  T_RUN(test_heartbeat_timeout);
  T_RUN(test_results_queue);
  T_RUN(test_aux_consumer);
  T_RUN(test_teardown);
  return t_done();
}
