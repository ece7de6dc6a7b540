/* test-valkey.c - the hiredis adapter against a real redis-server: AUTH, SELECT, reconnect after
 * the server is killed and restarted, per-request timeout (server paused with SIGSTOP), and the
 * pending-request limit. */
#include "store/valkey.h"
#include "util/err.h"
#include "../t.h"
#include "redis-helper.h"

#include <uv.h>

static uv_loop_t *loop;

typedef struct st {
  int up;
  int changes;
} st;

static void on_state(void *ud, int up) {
  st *s = ud;
  s->up = up;
  s->changes++;
}

typedef struct rep {
  int done, err;
  char str[128];
  long long integer;
  int type;
} rep;

static void on_rep(void *ud, int err, const sm_valkey_reply *r) {
  rep *p = ud;
  p->done++;
  p->err = err;
  if (r) {
    p->type = sm_valkey_reply_type(r);
    size_t len = 0;
    const char *s = sm_valkey_reply_str(r, &len);
    if (s)
      snprintf(p->str, sizeof(p->str), "%.*s", (int)len, s);
    if (p->type == SM_VK_INTEGER)
      p->integer = sm_valkey_reply_int(r);
  }
}

static void on_guard(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "timed out waiting\n");
  abort();
}

/* Runs the loop until *flag equals want (guarded by a timeout). */
static void run_until(int *flag, int want, int ms) {
  uv_timer_t g;
  uv_timer_init(loop, &g);
  uv_timer_start(&g, on_guard, (uint64_t)ms, 0);
  while (*flag != want)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&g, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static int cmd(sm_valkey *v, rep *p, int argc, const char **argv) {
  size_t lens[8];
  for (int i = 0; i < argc; i++)
    lens[i] = strlen(argv[i]);
  memset(p, 0, sizeof(*p));
  return sm_valkey_command(v, argc, argv, lens, on_rep, p);
}

static int closed;
static void on_closed(void *ud) {
  (void)ud;
  closed++;
}

static void close_v(sm_valkey *v) {
  int before = closed;
  sm_valkey_close(v, on_closed, NULL);
  run_until(&closed, before + 1, 2000);
}

static void test_auth_select(void) {
  test_redis r = {0};
  th_redis_start(&r, "s3cret");
  /* a wrong password never comes up */
  st s1 = {0};
  sm_valkey *bad;
  sm_valkey_config c1 = {.host = "127.0.0.1",
                         .port = r.port,
                         .password = "wrong",
                         .backoff_min_s = 0.05,
                         .backoff_max_s = 0.1};
  T_EQ_INT(sm_valkey_create(loop, &c1, on_state, &s1, &bad), 0);
  for (int i = 0; i < 30; i++) {
    usleep(10000);
    uv_run(loop, UV_RUN_NOWAIT);
  }
  T_EQ_INT(s1.up, 0);
  rep p;
  const char *ping[] = {"PING"};
  T_EQ_INT(cmd(bad, &p, 1, ping), SM_EUNAVAIL);
  close_v(bad);

  /* the right password, db 3: a key set there is not in db 0 */
  st s2 = {0}, s3 = {0};
  sm_valkey *v3, *v0;
  sm_valkey_config c3 = {.host = "127.0.0.1", .port = r.port, .password = "s3cret", .db = 3};
  sm_valkey_config c0 = {.host = "127.0.0.1", .port = r.port, .password = "s3cret"};
  T_EQ_INT(sm_valkey_create(loop, &c3, on_state, &s2, &v3), 0);
  T_EQ_INT(sm_valkey_create(loop, &c0, on_state, &s3, &v0), 0);
  run_until(&s2.up, 1, 3000);
  run_until(&s3.up, 1, 3000);
  const char *set[] = {"SET", "k", "in-db-3"};
  T_EQ_INT(cmd(v3, &p, 3, set), 0);
  T_EQ_INT(p.done, 0);
  run_until(&p.done, 1, 2000);
  T_EQ_INT(p.err, 0);
  T_EQ_STR(p.str, "OK");
  const char *get[] = {"GET", "k"};
  T_EQ_INT(cmd(v0, &p, 2, get), 0);
  run_until(&p.done, 1, 2000);
  T_EQ_INT(p.type, SM_VK_NIL);
  T_EQ_INT(cmd(v3, &p, 2, get), 0);
  run_until(&p.done, 1, 2000);
  T_EQ_STR(p.str, "in-db-3");
  /* an error reply is translated and its text readable */
  const char *bogus[] = {"NOSUCHCOMMAND"};
  T_EQ_INT(cmd(v3, &p, 1, bogus), 0);
  run_until(&p.done, 1, 2000);
  T_EQ_INT(p.err, SM_EIO);
  T_EQ_INT(p.type, SM_VK_ERROR);
  close_v(v3);
  close_v(v0);
  th_redis_stop(&r);
}

static void test_reconnect(void) {
  test_redis r = {0};
  th_redis_start(&r, NULL);
  st s = {0};
  sm_valkey *v;
  sm_valkey_config c = {
      .host = "127.0.0.1", .port = r.port, .backoff_min_s = 0.05, .backoff_max_s = 0.2};
  T_EQ_INT(sm_valkey_create(loop, &c, on_state, &s, &v), 0);
  run_until(&s.up, 1, 3000);
  rep p;
  const char *ping[] = {"PING"};
  T_EQ_INT(cmd(v, &p, 1, ping), 0);
  run_until(&p.done, 1, 2000);
  T_EQ_STR(p.str, "PONG");

  th_redis_kill(&r);
  run_until(&s.up, 0, 3000);
  T_EQ_INT(cmd(v, &p, 1, ping), SM_EUNAVAIL); /* fail fast while down */
  /* it keeps retrying for a while without coming up */
  for (int i = 0; i < 30; i++) {
    usleep(10000);
    uv_run(loop, UV_RUN_NOWAIT);
  }
  T_EQ_INT(s.up, 0);
  th_redis_start(&r, NULL); /* same port */
  run_until(&s.up, 1, 5000);
  T_EQ_INT(cmd(v, &p, 1, ping), 0);
  run_until(&p.done, 1, 2000);
  T_EQ_STR(p.str, "PONG");
  sm_valkey_stats stats;
  sm_valkey_get_stats(v, &stats);
  T_EQ_INT(stats.reconnects, 1);

  /* in-flight requests when the server dies complete with SM_EUNAVAIL */
  const char *sleep_cmd[] = {"DEBUG", "SLEEP", "2"};
  T_EQ_INT(cmd(v, &p, 3, sleep_cmd), 0);
  for (int i = 0; i < 5; i++)
    uv_run(loop, UV_RUN_NOWAIT);
  th_redis_kill(&r);
  run_until(&p.done, 1, 3000);
  T_EQ_INT(p.err, SM_EUNAVAIL);
  close_v(v);
  th_redis_stop(&r);
}

static void test_timeout_and_limit(void) {
  test_redis r = {0};
  th_redis_start(&r, NULL);
  st s = {0};
  sm_valkey *v;
  sm_valkey_config c = {
      .host = "127.0.0.1", .port = r.port, .request_timeout_s = 0.2, .max_pending = 5};
  T_EQ_INT(sm_valkey_create(loop, &c, on_state, &s, &v), 0);
  run_until(&s.up, 1, 3000);

  kill(r.pid, SIGSTOP);
  rep p[6];
  const char *ping[] = {"PING"};
  for (int i = 0; i < 5; i++)
    T_EQ_INT(cmd(v, &p[i], 1, ping), 0);
  T_EQ_INT(cmd(v, &p[5], 1, ping), SM_ELIMIT); /* the pending-queue bound */
  uint64_t t0 = uv_now(loop);
  run_until(&p[4].done, 1, 3000);
  for (int i = 0; i < 5; i++) {
    T_EQ_INT(p[i].done, 1);
    T_EQ_INT(p[i].err, SM_ETIMEDOUT);
  }
  T_ASSERT(uv_now(loop) - t0 >= 150);
  /* timed-out requests still hold their slots until the late replies arrive */
  T_EQ_INT(cmd(v, &p[5], 1, ping), SM_ELIMIT);
  kill(r.pid, SIGCONT);
  sm_valkey_stats stats;
  for (int i = 0; i < 200; i++) {
    sm_valkey_get_stats(v, &stats);
    if (stats.pending == 0)
      break;
    uv_run(loop, UV_RUN_ONCE);
  }
  T_EQ_INT(stats.pending, 0);
  T_EQ_INT(stats.timeouts, 5);
  for (int i = 0; i < 5; i++)
    T_EQ_INT(p[i].done, 1); /* late replies were dropped, not delivered twice */
  T_EQ_INT(cmd(v, &p[0], 1, ping), 0);
  run_until(&p[0].done, 1, 2000);
  T_EQ_INT(p[0].err, 0);

  /* closing cancels what is pending, inside the close call */
  const char *slow[] = {"DEBUG", "SLEEP", "1"};
  T_EQ_INT(cmd(v, &p[1], 3, slow), 0);
  sm_valkey_close(v, on_closed, NULL);
  T_EQ_INT(p[1].done, 1);
  T_EQ_INT(p[1].err, SM_ECANCELED);
  int before = closed;
  (void)before;
  uv_run(loop, UV_RUN_DEFAULT);
  th_redis_stop(&r);
}

int main(void) {
  loop = uv_default_loop();
  T_RUN(test_auth_select);
  T_RUN(test_reconnect);
  T_RUN(test_timeout_and_limit);
  uv_run(loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(loop), 0);
  return t_done();
}
