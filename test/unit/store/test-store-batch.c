/* test-store-batch.c - group commit in the Valkey store, against a real redis-server: the writes
 * of one loop turn go out as one script call (INFO commandstats), each record of a mixed batch
 * gets its own result, the size bound holds under a flood (SLOWLOG shows every call's arguments),
 * a batch whose call fails fails every record in it, close with a gathered batch, and allocation
 * failure while gathering and sending (each callback exactly once, nothing leaked). */
#include "store/store.h"
#include "store/valkey.h"
#include "util/alloc.h"
#include "util/err.h"
#include "../t.h"
#include "redis-helper.h"

#include <strings.h>
#include <uv.h>

static uv_loop_t *loop;
static test_redis redis;
static sm_valkey *probe; /* a second connection that reads the server's counters */

static void on_guard(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "timed out waiting\n");
  abort();
}

/* Runs the loop until *flag >= want. */
static void run_until(const int *flag, int want) {
  uv_timer_t g;
  uv_timer_init(loop, &g);
  uv_timer_start(&g, on_guard, 10000, 0);
  while (*flag < want)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&g, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* ---- the probe ---------------------------------------------------------------------------- */

typedef struct probe_res {
  int done, err;
  long long evalsha;  /* INFO commandstats: calls of evalsha + eval */
  int max_records;    /* SLOWLOG: the most records one apply call carried */
  int apply_calls;    /* SLOWLOG: apply calls seen */
  long long n_record; /* fields per record with its tag (10 for creates) */
} probe_res;

static void on_info(void *ud, int err, const sm_valkey_reply *r) {
  probe_res *p = ud;
  p->done++;
  p->err = err;
  size_t len = 0;
  const char *s = r ? sm_valkey_reply_str(r, &len) : NULL;
  p->evalsha = 0;
  for (const char *k = s; k && (k = strstr(k, "cmdstat_eval")) != NULL; k++) {
    const char *c = strstr(k, "calls=");
    if (c)
      p->evalsha += strtoll(c + 6, NULL, 10);
  }
}

static void on_ok(void *ud, int err, const sm_valkey_reply *r) {
  (void)r;
  probe_res *p = ud;
  p->done++;
  p->err = err;
}

/* SLOWLOG GET: entries [id, time, duration, [args], addr, name]; redis keeps the first 31
 * arguments and ends with "... (N more arguments)". */
static void on_slowlog(void *ud, int err, const sm_valkey_reply *r) {
  probe_res *p = ud;
  p->done++;
  p->err = err;
  for (size_t i = 0; r && i < sm_valkey_reply_count(r); i++) {
    const sm_valkey_reply *args = sm_valkey_reply_elem(sm_valkey_reply_elem(r, i), 3);
    size_t n = sm_valkey_reply_count(args);
    const char *a0 = n ? sm_valkey_reply_str(sm_valkey_reply_elem(args, 0), NULL) : NULL;
    if (a0 == NULL || (strcasecmp(a0, "EVALSHA") != 0 && strcasecmp(a0, "EVAL") != 0))
      continue;
    long long argc = (long long)n;
    const char *last = sm_valkey_reply_str(sm_valkey_reply_elem(args, n - 1), NULL);
    long long more = 0;
    if (last && sscanf(last, "... (%lld more arguments)", &more) == 1)
      argc = (long long)n - 1 + more;
    int recs = (int)((argc - 5) / p->n_record);
    p->apply_calls++;
    if (recs > p->max_records)
      p->max_records = recs;
  }
}

static void probe_cmd(probe_res *p, sm_valkey_cb cb, int argc, const char **argv) {
  size_t lens[8];
  for (int i = 0; i < argc; i++)
    lens[i] = strlen(argv[i]);
  p->done = 0;
  T_EQ_INT(sm_valkey_command(probe, argc, argv, lens, cb, p), 0);
  run_until(&p->done, 1);
  T_EQ_INT(p->err, 0);
}

static long long script_calls(void) {
  probe_res p = {0};
  const char *argv[] = {"INFO", "commandstats"};
  probe_cmd(&p, on_info, 2, argv);
  return p.evalsha;
}

/* ---- store helpers ------------------------------------------------------------------------ */

typedef struct res {
  int done, err, existed;
  int status; /* of the record handed over, -1 none */
  char id[64];
} res;

static void cmd_cb(void *ud, int err, const sm_command *c, int existed) {
  res *r = ud;
  r->done++;
  r->err = err;
  r->existed = existed;
  r->status = c ? (int)c->status : -1;
  snprintf(r->id, sizeof(r->id), "%s", c && c->id ? c->id : "");
}

static void done_cb(void *ud, int err) {
  res *r = ud;
  r->done++;
  r->err = err;
}

static int total_done(const res *r, int n) {
  int t = 0;
  for (int i = 0; i < n; i++)
    t += r[i].done;
  return t;
}

static sm_command *mk(const char *id, int64_t created) {
  sm_command *c = command_new();
  command_set_str(&c->id, id);
  command_set_str(&c->type, "echo");
  c->created_at = created;
  return c;
}

static int up_flag;
static void on_state(void *ud, int up) {
  *(int *)ud = up;
}

static store *open_store_d(size_t batch_max, double timeout_s, unsigned delay_ms) {
  store *s = NULL;
  store_valkey_config cfg = {.host = "127.0.0.1",
                             .port = redis.port,
                             .prefix = "b:",
                             .batch_max = batch_max,
                             .request_timeout_s = timeout_s,
                             .batch_delay_ms = delay_ms};
  T_EQ_INT(store_valkey_create(loop, &cfg, &s), 0);
  up_flag = 0;
  store_set_state_cb(s, on_state, &up_flag);
  run_until(&up_flag, 1);
  return s;
}

static store *open_store(size_t batch_max, double timeout_s) {
  return open_store_d(batch_max, timeout_s, 0);
}

static int closed;
static void on_closed(void *ud) {
  (void)ud;
  closed++;
}

static void close_store(store *s) {
  int before = closed;
  store_close(s, on_closed, NULL);
  run_until(&closed, before + 1);
}

static void run_until_total_impl(const res *r, int n) {
  uv_timer_t g;
  uv_timer_init(loop, &g);
  uv_timer_start(&g, on_guard, 10000, 0);
  while (total_done(r, n) < n)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&g, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* Creates n records id <prefix>-<i> in one loop turn; returns when every callback ran. */
static void create_many(store *s, const char *prefix, int n, res *r) {
  for (int i = 0; i < n; i++) {
    char id[64];
    snprintf(id, sizeof(id), "%s-%d", prefix, i);
    sm_command *c = mk(id, 1000 + i);
    memset(&r[i], 0, sizeof(r[i]));
    T_EQ_INT(store_cmd_create(s, c, cmd_cb, &r[i]), 0);
    command_free(c);
  }
  T_EQ_INT(total_done(r, n), 0); /* never inside the call */
  run_until_total_impl(r, n);
}

/* ---- tests -------------------------------------------------------------------------------- */

static res R[2000];

static void test_one_call_per_turn(void) {
  store *s = open_store(0, 0);
  create_many(s, "warm", 1, R); /* the first call loads the script (NOSCRIPT, then EVAL) */
  uint64_t c0 = store_op_count(s, STORE_OP_CMD_CREATE);
  long long e0 = script_calls();
  create_many(s, "one", 200, R);
  for (int i = 0; i < 200; i++) {
    T_EQ_INT(R[i].done, 1);
    T_EQ_INT(R[i].err, 0);
    T_EQ_INT(R[i].existed, 0);
  }
  T_EQ_INT(script_calls() - e0, 1);
  T_EQ_INT(store_op_count(s, STORE_OP_CMD_CREATE) - c0, 200); /* counted per record */

  /* 200 updates, then 200 outbox removals, each in one turn: one call each */
  e0 = script_calls();
  for (int i = 0; i < 200; i++) {
    char id[64];
    snprintf(id, sizeof(id), "one-%d", i);
    sm_command *c = mk(id, 1000 + i);
    c->status = COMMAND_DISPATCHED;
    command_set_str(&c->agent_id, "a-1");
    memset(&R[i], 0, sizeof(R[i]));
    T_EQ_INT(store_cmd_update(s, c, COMMAND_QUEUED, NULL, 0, cmd_cb, &R[i]), 0);
    command_free(c);
  }
  run_until_total_impl(R, 200);
  for (int i = 0; i < 200; i++) {
    T_EQ_INT(R[i].err, 0);
    T_EQ_INT(R[i].status, -1); /* written: the caller holds the record */
  }
  T_EQ_INT(script_calls() - e0, 1);
  e0 = script_calls();
  for (int i = 0; i < 200; i++) {
    memset(&R[i], 0, sizeof(R[i]));
    T_EQ_INT(store_outbox_remove(s, "absent", done_cb, &R[i]), 0);
  }
  run_until_total_impl(R, 200);
  for (int i = 0; i < 200; i++)
    T_EQ_INT(R[i].err, 0);
  T_EQ_INT(script_calls() - e0, 1);
  close_store(s);
}

static void test_mixed_results(void) {
  store *s = open_store(0, 0);
  res pre[2];
  sm_command *ex = mk("mix-exist", 2000);
  sm_command *cas = mk("mix-cas", 2001);
  command_set_str(&cas->idempotency_key, "mix-key");
  memset(pre, 0, sizeof(pre));
  T_EQ_INT(store_cmd_create(s, ex, cmd_cb, &pre[0]), 0);
  T_EQ_INT(store_cmd_create(s, cas, cmd_cb, &pre[1]), 0);
  run_until_total_impl(pre, 2);
  cas->status = COMMAND_DISPATCHED;
  memset(pre, 0, sizeof(pre));
  T_EQ_INT(store_cmd_update(s, cas, COMMAND_QUEUED, NULL, 0, cmd_cb, &pre[0]), 0);
  run_until_total_impl(pre, 1);
  T_EQ_INT(pre[0].err, 0);

  long long e0 = script_calls();
  res r[7];
  memset(r, 0, sizeof(r));
  sm_command *fresh = mk("mix-new", 2002);
  sm_command *dup_key = mk("mix-other", 2003);
  command_set_str(&dup_key->idempotency_key, "mix-key");
  sm_command *absent = mk("mix-absent", 2004);
  absent->status = COMMAND_DISPATCHED;
  T_EQ_INT(store_cmd_create(s, ex, cmd_cb, &r[0]), 0); /* the id exists */
  cas->status = COMMAND_CANCELLED;                     /* a stale writer: */
  T_EQ_INT(store_cmd_update(s, cas, COMMAND_QUEUED, NULL, 0, cmd_cb, &r[1]), 0);
  T_EQ_INT(store_cmd_create(s, fresh, cmd_cb, &r[2]), 0);   /* created */
  T_EQ_INT(store_cmd_create(s, dup_key, cmd_cb, &r[3]), 0); /* the key exists */
  T_EQ_INT(store_cmd_update(s, absent, COMMAND_QUEUED, NULL, 0, cmd_cb, &r[4]), 0);
  fresh->status = COMMAND_DISPATCHED; /* the record created earlier in the same batch */
  T_EQ_INT(store_cmd_update(s, fresh, COMMAND_QUEUED, "{\"r\":1}", 7, cmd_cb, &r[5]), 0);
  T_EQ_INT(store_outbox_remove(s, "mix-none", done_cb, &r[6]), 0);
  run_until_total_impl(r, 7);
  T_EQ_INT(script_calls() - e0, 1);
  for (int i = 0; i < 7; i++)
    T_EQ_INT(r[i].done, 1);
  T_EQ_INT(r[0].err, 0);
  T_EQ_INT(r[0].existed, 1);
  T_EQ_STR(r[0].id, "mix-exist");
  T_EQ_INT(r[1].err, SM_ESTATE);
  T_EQ_INT(r[1].status, COMMAND_DISPATCHED); /* the stored record */
  T_EQ_INT(r[2].err, 0);
  T_EQ_INT(r[2].existed, 0);
  T_EQ_STR(r[2].id, ""); /* created: no record handed back */
  T_EQ_INT(r[3].err, 0);
  T_EQ_INT(r[3].existed, 1);
  T_EQ_STR(r[3].id, "mix-cas"); /* the record the key made */
  T_EQ_INT(r[4].err, SM_ENOENT);
  T_EQ_INT(r[4].status, -1);
  T_EQ_INT(r[5].err, 0);
  T_EQ_INT(r[5].status, -1);
  T_EQ_INT(r[6].err, 0);
  command_free(ex);
  command_free(cas);
  command_free(fresh);
  command_free(dup_key);
  command_free(absent);
  close_store(s);
}

static void test_flood_bound(void) {
  probe_res p = {0};
  const char *cfg1[] = {"CONFIG", "SET", "slowlog-log-slower-than", "0"};
  const char *cfg2[] = {"CONFIG", "SET", "slowlog-max-len", "100000"};
  const char *reset[] = {"SLOWLOG", "RESET"};
  probe_cmd(&p, on_ok, 4, cfg1);
  probe_cmd(&p, on_ok, 4, cfg2);
  store *s = open_store(16, 0);
  probe_cmd(&p, on_ok, 2, reset);
  create_many(s, "flood", 1000, R);
  for (int i = 0; i < 1000; i++)
    T_EQ_INT(R[i].err, 0);
  const char *get[] = {"SLOWLOG", "GET", "100000"};
  p.n_record = 10;
  probe_cmd(&p, on_slowlog, 3, get);
  fprintf(stderr, "flood: %d apply calls, at most %d records each\n", p.apply_calls, p.max_records);
  T_EQ_INT(p.max_records, 16);
  T_EQ_INT(p.apply_calls, (1000 + 15) / 16);
  const char *off[] = {"CONFIG", "SET", "slowlog-log-slower-than", "10000"};
  probe_cmd(&p, on_ok, 4, off);
  close_store(s);
}

/* VALKEY_BATCH_DELAY_MS: records of several loop turns within the window share one call. */
static void test_delay_window(void) {
  store *s = open_store_d(0, 0, 50);
  create_many(s, "dwarm", 1, R);
  long long e0 = script_calls();
  for (int i = 0; i < 3; i++) {
    char id[32];
    snprintf(id, sizeof(id), "delay-%d", i);
    sm_command *c = mk(id, 7000 + i);
    memset(&R[i], 0, sizeof(R[i]));
    T_EQ_INT(store_cmd_create(s, c, cmd_cb, &R[i]), 0);
    command_free(c);
    for (int k = 0; k < 5; k++) /* other loop turns pass; the batch waits */
      uv_run(loop, UV_RUN_NOWAIT);
  }
  T_EQ_INT(total_done(R, 3), 0);
  run_until_total_impl(R, 3);
  for (int i = 0; i < 3; i++)
    T_EQ_INT(R[i].err, 0);
  T_EQ_INT(script_calls() - e0, 1);
  close_store(s);
}

static void test_close_gathered(void) {
  store *s = open_store(0, 0);
  res r[8];
  memset(r, 0, sizeof(r));
  for (int i = 0; i < 6; i++) {
    char id[32];
    snprintf(id, sizeof(id), "gone-%d", i);
    sm_command *c = mk(id, 3000 + i);
    if (i < 4) {
      T_EQ_INT(store_cmd_create(s, c, cmd_cb, &r[i]), 0);
    } else {
      c->status = COMMAND_DISPATCHED;
      T_EQ_INT(store_cmd_update(s, c, COMMAND_QUEUED, NULL, 0, cmd_cb, &r[i]), 0);
    }
    command_free(c);
  }
  T_EQ_INT(store_outbox_remove(s, "gone", done_cb, &r[6]), 0);
  T_EQ_INT(store_outbox_remove(s, "gone2", done_cb, &r[7]), 0);
  int before = closed;
  store_close(s, on_closed, NULL);
  run_until(&closed, before + 1);
  for (int i = 0; i < 8; i++) {
    T_EQ_INT(r[i].done, 1);
    T_EQ_INT(r[i].err, SM_ECANCELED);
  }
  /* none was written */
  s = open_store(0, 0);
  res g = {0};
  T_EQ_INT(store_cmd_get(s, "gone-0", cmd_cb, &g), 0);
  run_until(&g.done, 1);
  T_EQ_INT(g.err, SM_ENOENT);
  close_store(s);
}

/* The server dies (or stops answering) with a batch on its way: every record fails. */
static void test_failed_batch(void) {
  store *s = open_store(0, 0.3);
  /* stopped: the call times out, every record gets SM_ETIMEDOUT */
  for (int i = 0; i < 50; i++) {
    char id[32];
    snprintf(id, sizeof(id), "stop-%d", i);
    sm_command *c = mk(id, 4000 + i);
    memset(&R[i], 0, sizeof(R[i]));
    T_EQ_INT(store_cmd_create(s, c, cmd_cb, &R[i]), 0);
    command_free(c);
  }
  kill(redis.pid, SIGSTOP);
  run_until_total_impl(R, 50);
  kill(redis.pid, SIGCONT);
  for (int i = 0; i < 50; i++) {
    T_EQ_INT(R[i].done, 1);
    T_EQ_INT(R[i].err, SM_ETIMEDOUT);
  }
  run_until(&up_flag, 1);
  /* killed: every record gets an error, none is reported written */
  for (int i = 0; i < 50; i++) {
    char id[32];
    snprintf(id, sizeof(id), "dead-%d", i);
    sm_command *c = mk(id, 5000 + i);
    memset(&R[i], 0, sizeof(R[i]));
    T_EQ_INT(store_cmd_create(s, c, cmd_cb, &R[i]), 0);
    command_free(c);
  }
  th_redis_kill(&redis);
  run_until_total_impl(R, 50);
  for (int i = 0; i < 50; i++) {
    T_EQ_INT(R[i].done, 1);
    T_ASSERT(R[i].err == SM_EUNAVAIL || R[i].err == SM_ETIMEDOUT);
  }
  close_store(s);
  th_redis_start(&redis, NULL); /* same port */
  sm_valkey_close(probe, NULL, NULL);
  probe = NULL;
}

/* Allocation failure injected at every allocation of a turn that gathers and sends a batch of
 * creates, an update and an outbox removal: each accepted record's callback runs exactly once. */
static void test_alloc_fail(void) {
  store *s = open_store(0, 0);
  long nth;
  for (nth = 0;; nth++) {
    T_ASSERT(nth < 2000);
    char uid[32];
    snprintf(uid, sizeof(uid), "afu-%ld", nth);
    sm_command *u = mk(uid, 6000);
    res pre = {0};
    T_EQ_INT(store_cmd_create(s, u, cmd_cb, &pre), 0);
    run_until(&pre.done, 1);
    u->status = COMMAND_DISPATCHED;
    res r[5];
    memset(r, 0, sizeof(r));
    int accepted[5] = {0};
    sm_command *cs[3];
    for (int i = 0; i < 3; i++) {
      char id[32];
      snprintf(id, sizeof(id), "afc-%ld-%d", nth, i);
      cs[i] = mk(id, 6001 + i);
    }
    unsigned long f0 = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0); /* from here on: the store's allocations only */
    for (int i = 0; i < 3; i++) {
      int err = store_cmd_create(s, cs[i], cmd_cb, &r[i]);
      T_ASSERT(err == 0 || err == SM_ENOMEM);
      accepted[i] = err == 0;
    }
    int err = store_cmd_update(s, u, COMMAND_QUEUED, "{}", 2, cmd_cb, &r[3]);
    T_ASSERT(err == 0 || err == SM_ENOMEM);
    accepted[3] = err == 0;
    err = store_outbox_remove(s, uid, done_cb, &r[4]);
    T_ASSERT(err == 0 || err == SM_ENOMEM);
    accepted[4] = err == 0;
    int want = 0;
    for (int i = 0; i < 5; i++) {
      T_EQ_INT(r[i].done, 0);
      want += accepted[i];
    }
    uv_timer_t g;
    uv_timer_init(loop, &g);
    uv_timer_start(&g, on_guard, 10000, 0);
    while (total_done(r, 5) < want)
      uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&g, NULL);
    sm_alloc_fail_at(-1, 0);
    for (int i = 0; i < 20; i++)
      uv_run(loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 5; i++) {
      T_EQ_INT(r[i].done, accepted[i]);
      if (accepted[i])
        T_ASSERT(r[i].err == 0 || r[i].err == SM_ENOMEM);
    }
    command_free(u);
    for (int i = 0; i < 3; i++)
      command_free(cs[i]);
    if (sm_alloc_failures() == f0)
      break;
  }
  fprintf(stderr, "alloc_fail: %ld injection points\n", nth);
  T_ASSERT(nth > 3);
  /* still works */
  create_many(s, "after-af", 5, R);
  for (int i = 0; i < 5; i++)
    T_EQ_INT(R[i].err, 0);
  close_store(s);
}

static int probe_up;
static void on_probe_state(void *ud, int up) {
  (void)ud;
  probe_up = up;
}

static void open_probe(void) {
  sm_valkey_config vc = {.host = "127.0.0.1", .port = redis.port};
  probe_up = 0;
  T_EQ_INT(sm_valkey_create(loop, &vc, on_probe_state, NULL, &probe), 0);
  run_until(&probe_up, 1);
}

int main(void) {
  loop = uv_default_loop();
  th_redis_start(&redis, NULL);
  open_probe();
  T_RUN(test_one_call_per_turn);
  T_RUN(test_mixed_results);
  T_RUN(test_flood_bound);
  T_RUN(test_delay_window);
  T_RUN(test_close_gathered);
  T_RUN(test_alloc_fail);
  T_RUN(test_failed_batch);
  uv_run(loop, UV_RUN_DEFAULT);
  th_redis_stop(&redis);
  T_EQ_INT(uv_loop_close(loop), 0);
  return t_done();
}
