/* test-amqp-batch.c - batched output of the RabbitMQ adapter against a real rabbitmq-server.
 *
 * Run by with-broker.sh (SM_RABBITMQ_PORT). Each case uses its own queues and connections:
 *   - acks of one loop turn that form a run from the lowest unsettled delivery leave as ONE
 *     basic.ack with multiple=1 (the adapter's counters), and the broker took them all: the queue
 *     is empty and a new consumer gets nothing back;
 *   - a delivery left unacked in the middle of the run is never covered: after the connection is
 *     closed exactly that one comes back (redelivered);
 *   - acks queued in the turn the adapter is destroyed still leave (before the close), and the
 *     unacked ones come back;
 *   - a settled delivery cannot be settled again (SM_ENOENT, no frame);
 *   - publishes of one turn leave in a few send() calls, each gets exactly one confirm callback
 *     also when the broker confirms with multiple=1;
 *   - a body larger than a frame is split and arrives intact; allocation failure in a publish
 *     queues nothing and runs no callback; destroy with publishes of the current turn still
 *     buffered runs each callback once with SM_ECANCELED;
 *   - a frozen broker (full socket): the loop keeps turning, the output waits for writability and
 *     every publish is confirmed once the broker runs again.
 */
#include "mq/amqp.h"
#include "mq/intake.h"
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

#define MAXD 1024

static uv_loop_t loop;
static uv_timer_t tick; /* keeps uv_run(UV_RUN_ONCE) from blocking while the broker is silent */
static char url[128];

typedef struct consumer {
  mq_conn *c;
  mq_intake *in;
  int up;
  int n; /* deliveries seen */
  int redelivered;
  mq_intake_handle h[MAXD];
  char corr[MAXD][32];
  size_t body_len[MAXD];
  char *big; /* copy of a large body */
  size_t big_len;
} consumer;

static void on_up(mq_conn *c, int up, int err, void *ud) {
  (void)c;
  (void)err;
  ((consumer *)ud)->up = up;
}

static void on_deliver(mq_intake *in, const mq_intake_msg *m, void *ud) {
  (void)in;
  consumer *k = ud;
  if (k->n < MAXD) {
    k->h[k->n] = m->handle;
    size_t l = m->props.correlation_id.len < 31 ? m->props.correlation_id.len : 31;
    memcpy(k->corr[k->n], m->props.correlation_id.base, l);
    k->corr[k->n][l] = 0;
    k->body_len[k->n] = m->body.len;
    if (m->body.len > 100000 && !k->big) {
      k->big = malloc(m->body.len);
      memcpy(k->big, m->body.base, m->body.len);
      k->big_len = m->body.len;
    }
  }
  k->n++;
  k->redelivered += m->redelivered;
}

static void on_tick(uv_timer_t *t) {
  (void)t;
}

typedef int (*pred_fn)(void *);
static int run_until(pred_fn p, void *arg, double secs) {
  uint64_t end = uv_now(&loop) + (uint64_t)(secs * 1000);
  while (!p(arg) && uv_now(&loop) < end)
    uv_run(&loop, UV_RUN_ONCE);
  return p(arg);
}
static int never(void *a) {
  (void)a;
  return 0;
}
static void run_for(double secs) {
  (void)run_until(never, NULL, secs);
}
static int p_up(void *a) {
  return ((consumer *)a)->up;
}
static int want_n;
static int p_n(void *a) {
  return ((consumer *)a)->n >= want_n;
}

/* A connection on `queue` (its command queue) with an intake that keeps every delivery. */
static void consumer_open(consumer *k, const char *queue, uint16_t prefetch) {
  memset(k, 0, sizeof *k);
  mq_conn_opts o = {.url = url,
                    .command_queue = queue,
                    .result_queue = "b-res",
                    .depth_interval_s = -1,
                    .backoff_min_s = 0.1};
  T_EQ_INT(mq_conn_create(&loop, &o, &k->c), 0);
  T_EQ_INT(mq_conn_on_state(k->c, on_up, k), 0);
  T_EQ_INT(mq_intake_create(k->c, prefetch, on_deliver, k, &k->in), 0);
  T_EQ_INT(mq_intake_start(k->in), 0);
  T_EQ_INT(mq_conn_start(k->c), 0);
  T_ASSERT(run_until(p_up, k, 10));
}

static void consumer_close(consumer *k) {
  mq_intake_destroy(k->in);
  mq_conn_destroy(k->c);
  free(k->big);
  run_for(0.3); /* the close reaches the broker, which requeues the unacked */
}

static int pub_calls[MAXD], pub_status[MAXD];
static void on_pub(int status, void *ud) {
  intptr_t i = (intptr_t)ud;
  pub_calls[i]++;
  pub_status[i] = status;
}
static int pub_total(void) {
  int t = 0;
  for (int i = 0; i < MAXD; i++)
    t += pub_calls[i];
  return t;
}
static int want_pub;
static int p_pub(void *a) {
  (void)a;
  return pub_total() >= want_pub;
}

/* Publishes n persistent messages with correlation ids "<prefix><i>" to queue, in one turn. */
static void publish_n(mq_conn *c, const char *queue, int n, const char *prefix) {
  memset(pub_calls, 0, sizeof pub_calls);
  for (int i = 0; i < n; i++) {
    char corr[32];
    snprintf(corr, sizeof corr, "%s%d", prefix, i);
    mq_props pr = {.correlation_id = {corr, strlen(corr)}, .persistent = 1};
    T_EQ_INT(mq_conn_publish(c, queue, (mq_slice){"{\"type\":\"echo\"}", 15}, &pr, on_pub,
                             (void *)(intptr_t)i),
             0);
  }
  want_pub = n;
  T_ASSERT(run_until(p_pub, NULL, 10));
  for (int i = 0; i < n; i++) {
    T_EQ_INT(pub_calls[i], 1);
    T_EQ_INT(pub_status[i], 0);
  }
}

static void test_run_is_one_multiple_ack(void) {
  consumer k, k2;
  consumer_open(&k, "b-run", 64);
  publish_n(k.c, "b-run", 20, "r");
  want_n = 20;
  T_ASSERT(run_until(p_n, &k, 10));
  mq_conn_stats s0, s1;
  mq_conn_get_stats(k.c, &s0);
  for (int i = 0; i < 20; i++) /* one turn */
    T_EQ_INT(mq_intake_ack(k.in, k.h[i]), 0);
  mq_conn_get_stats(k.c, &s1);
  T_EQ_INT(s1.acks_sent - s0.acks_sent, 0); /* queued until the end of the turn */
  run_for(0.3);
  mq_conn_get_stats(k.c, &s1);
  T_EQ_INT(s1.acks_sent - s0.acks_sent, 1);
  T_EQ_INT(s1.acks_multiple - s0.acks_multiple, 1);
  T_EQ_INT(s1.deliveries_acked - s0.deliveries_acked, 20);
  T_EQ_INT(mq_intake_unacked(k.in), 0);
  /* Settled twice: refused without a frame (the broker would close the channel). */
  T_EQ_INT(mq_conn_ack(k.c, k.h[3].gen, k.h[3].tag), SM_ENOENT);
  T_EQ_INT(mq_conn_nack(k.c, k.h[3].gen, k.h[3].tag, 1), SM_ENOENT);
  run_for(0.2);
  T_ASSERT(mq_conn_is_up(k.c));
  consumer_close(&k);
  /* The broker took every ack: nothing comes back to a new consumer. */
  consumer_open(&k2, "b-run", 64);
  run_for(1.0);
  T_EQ_INT(k2.n, 0);
  consumer_close(&k2);
}

static void test_gap_is_not_covered(void) {
  consumer k, k2;
  consumer_open(&k, "b-gap", 64);
  publish_n(k.c, "b-gap", 10, "g");
  want_n = 10;
  T_ASSERT(run_until(p_n, &k, 10));
  mq_conn_stats s0, s1;
  mq_conn_get_stats(k.c, &s0);
  for (int i = 0; i < 10; i++) /* one turn, all but the fourth */
    if (i != 3)
      T_EQ_INT(mq_intake_ack(k.in, k.h[i]), 0);
  run_for(0.3);
  mq_conn_get_stats(k.c, &s1);
  /* tags 1..3 as one multiple ack, 5..10 one by one (a multiple ack would cover tag 4) */
  T_EQ_INT(s1.acks_multiple - s0.acks_multiple, 1);
  T_EQ_INT(s1.acks_sent - s0.acks_sent, 1 + 6);
  T_EQ_INT(s1.deliveries_acked - s0.deliveries_acked, 9);
  T_EQ_INT(mq_intake_unacked(k.in), 1);
  consumer_close(&k);
  consumer_open(&k2, "b-gap", 64);
  want_n = 1;
  T_ASSERT(run_until(p_n, &k2, 10));
  run_for(0.5);
  T_EQ_INT(k2.n, 1);
  T_EQ_STR(k2.corr[0], "g3");
  T_EQ_INT(k2.redelivered, 1);
  /* Now the gap closes: the next turn's ack of the lowest goes out (singly: nothing else). */
  T_EQ_INT(mq_intake_ack(k2.in, k2.h[0]), 0);
  run_for(0.3);
  consumer_close(&k2);
  consumer_open(&k2, "b-gap", 64);
  run_for(0.8);
  T_EQ_INT(k2.n, 0);
  consumer_close(&k2);
}

static void test_destroy_with_queued_acks(void) {
  consumer k, k2;
  consumer_open(&k, "b-close", 64);
  publish_n(k.c, "b-close", 6, "c");
  want_n = 6;
  T_ASSERT(run_until(p_n, &k, 10));
  /* Same turn: ack 0,1,2,4 and destroy. The queued acks leave before the close; 3 and 5 were
   * never acked and must come back. */
  T_EQ_INT(mq_intake_ack(k.in, k.h[0]), 0);
  T_EQ_INT(mq_intake_ack(k.in, k.h[1]), 0);
  T_EQ_INT(mq_intake_ack(k.in, k.h[2]), 0);
  T_EQ_INT(mq_intake_ack(k.in, k.h[4]), 0);
  consumer_close(&k);
  consumer_open(&k2, "b-close", 64);
  want_n = 2;
  T_ASSERT(run_until(p_n, &k2, 10));
  run_for(0.5);
  T_EQ_INT(k2.n, 2);
  int saw3 = !strcmp(k2.corr[0], "c3") || !strcmp(k2.corr[1], "c3");
  int saw5 = !strcmp(k2.corr[0], "c5") || !strcmp(k2.corr[1], "c5");
  T_ASSERT(saw3 && saw5);
  T_EQ_INT(mq_intake_ack(k2.in, k2.h[0]), 0);
  T_EQ_INT(mq_intake_ack(k2.in, k2.h[1]), 0);
  run_for(0.2);
  consumer_close(&k2);
}

static void test_publish_turn_batched(void) {
  consumer k;
  consumer_open(&k, "b-pub", 16);
  mq_conn_stats s0, s1;
  mq_conn_get_stats(k.c, &s0);
  publish_n(k.c, "b-res", 800, "p"); /* one turn (a declared durable queue: confirms come after
                                        the broker stored them); each callback once, status 0 */
  mq_conn_get_stats(k.c, &s1);
  T_EQ_INT(s1.publishes - s0.publishes, 800);
  /* ~800 * 90 bytes leave in a handful of send() calls, not one (or three) per message. */
  T_ASSERT(s1.writes - s0.writes < 40);
  /* The broker confirmed with multiple=1: fewer confirm frames than publishes. */
  fprintf(stderr, "800 publishes: %llu writes, %llu confirm frames\n",
          (unsigned long long)(s1.writes - s0.writes),
          (unsigned long long)(s1.confirms - s0.confirms));
  T_ASSERT(s1.confirms - s0.confirms < 800);
  T_EQ_INT(mq_conn_unconfirmed(k.c), 0);
  run_for(0.2);
  T_EQ_INT(pub_total(), 800); /* no late second callback */
  consumer_close(&k);
}

static void test_large_body_and_alloc_fail(void) {
  consumer k, r;
  consumer_open(&r, "b-big", 4); /* declares b-big, reads it below */
  consumer_open(&k, "b-big-src", 16);
  size_t len = 300000; /* > the 128 KiB frame: three body frames */
  char *body = malloc(len);
  for (size_t i = 0; i < len; i++)
    body[i] = (char)('a' + i % 26);
  memset(pub_calls, 0, sizeof pub_calls);
  mq_props pr = {.correlation_id = {"big", 3}, .persistent = 1};
  int nth = 0, err;
  for (;; nth++) {
    sm_alloc_fail_at(nth, 0);
    err = mq_conn_publish(k.c, "b-big", (mq_slice){body, len}, &pr, on_pub, (void *)(intptr_t)0);
    sm_alloc_fail_at(-1, 0);
    if (err == 0)
      break;
    T_EQ_INT(err, SM_ENOMEM);
    T_EQ_INT(mq_conn_unconfirmed(k.c), 0);
    run_for(0.05);
    T_EQ_INT(pub_calls[0], 0); /* nothing queued, no callback */
    T_ASSERT(mq_conn_is_up(k.c));
  }
  T_ASSERT(nth >= 1); /* the buffer had to grow: the failure path was exercised */
  want_pub = 1;
  T_ASSERT(run_until(p_pub, NULL, 10));
  T_EQ_INT(pub_calls[0], 1);
  T_EQ_INT(pub_status[0], 0);
  want_n = 1;
  T_ASSERT(run_until(p_n, &r, 10));
  T_EQ_INT(r.n, 1);
  T_ASSERT(r.big_len == len && memcmp(r.big, body, len) == 0);
  T_EQ_INT(mq_intake_ack(r.in, r.h[0]), 0);
  run_for(0.2);
  consumer_close(&r);
  free(body);
  consumer_close(&k);
}

static void test_destroy_with_buffered_publishes(void) {
  consumer k;
  consumer_open(&k, "b-drop", 4);
  memset(pub_calls, 0, sizeof pub_calls);
  for (int i = 0; i < 50; i++)
    T_EQ_INT(
        mq_conn_publish(k.c, "b-dropsink", (mq_slice){"x", 1}, NULL, on_pub, (void *)(intptr_t)i),
        0);
  mq_intake_destroy(k.in);
  mq_conn_destroy(k.c); /* same turn: still in the output buffer */
  for (int i = 0; i < 50; i++) {
    T_EQ_INT(pub_calls[i], 1);
    T_EQ_INT(pub_status[i], SM_ECANCELED);
  }
  run_for(0.3);
  T_EQ_INT(pub_total(), 50);
}

static void test_full_socket(void) {
  /* A frozen broker stops reading: the output waits for writability instead of blocking the
   * loop, and every publish is confirmed once the broker runs again. */
  char path[512];
  snprintf(path, sizeof path, "%s/rabbit.pid", getenv("SM_RABBITMQ_DIR"));
  FILE *f = fopen(path, "r");
  int pid = 0;
  if (f) {
    if (fscanf(f, "%d", &pid) != 1)
      pid = 0;
    fclose(f);
  }
  T_ASSERT(pid > 0);
  consumer k;
  consumer_open(&k, "b-full", 4);
  size_t len = 32768;
  char *body = calloc(1, len);
  memset(pub_calls, 0, sizeof pub_calls);
  T_EQ_INT(kill(pid, SIGSTOP), 0);
  for (int i = 0; i < 1000; i++) /* 32 MB: more than the socket buffers hold */
    T_EQ_INT(
        mq_conn_publish(k.c, "b-res", (mq_slice){body, len}, NULL, on_pub, (void *)(intptr_t)i), 0);
  uint64_t t0 = uv_now(&loop);
  run_for(0.5); /* the loop keeps turning */
  T_ASSERT(uv_now(&loop) - t0 < 2000);
  T_EQ_INT(pub_total(), 0);
  kill(pid, SIGCONT);
  want_pub = 1000;
  T_ASSERT(run_until(p_pub, NULL, 60));
  for (int i = 0; i < 1000; i++) {
    T_EQ_INT(pub_calls[i], 1);
    T_EQ_INT(pub_status[i], 0);
  }
  free(body);
  consumer_close(&k);
}

int main(void) {
  const char *port = getenv("SM_RABBITMQ_PORT");
  if (!port) {
    fprintf(stderr, "run through with-broker.sh\n");
    return 1;
  }
  sm_log_configure(SM_LOG_WARN, SM_LOG_CONSOLE);
  snprintf(url, sizeof url, "amqp://guest:guest@localhost:%s/", port);
  T_EQ_INT(uv_loop_init(&loop), 0);
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, on_tick, 10, 10);
  T_RUN(test_run_is_one_multiple_ack);
  T_RUN(test_gap_is_not_covered);
  T_RUN(test_destroy_with_queued_acks);
  T_RUN(test_publish_turn_batched);
  T_RUN(test_large_body_and_alloc_fail);
  T_RUN(test_destroy_with_buffered_publishes);
  T_RUN(test_full_socket);
  uv_close((uv_handle_t *)&tick, NULL);
  T_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
