/* test-lifecycle.c - the command lifecycle on a real uv loop with the in-process store, fake
 * agent links, a fake publisher and a store wrapper that can be taken down. */
#include "core/lifecycle.h"
#include "core/registry.h"
#include "store/store.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- a store that can go down ---- */

typedef struct flaky {
  store base;
  store *inner;
  int down;
  int busy;          /* updates refused with SM_ELIMIT (the adapter's pending bound is full) */
  int busy_refusals; /* how many were refused */
  int lose_creates;  /* creates written but answered SM_ETIMEDOUT (a reply that never came) */
  int ob_lists;      /* outbox listings asked for */
} flaky;

#define INNER(s) (((flaky *)(s))->inner)
#define DOWN(s) (((flaky *)(s))->down)
typedef struct lost_answer {
  store_cmd_cb cb;
  void *ud;
} lost_answer;
static void f_lost_cb(void *ud, int err, const sm_command *c, int existed) {
  (void)err, (void)c, (void)existed;
  lost_answer *l = ud;
  l->cb(l->ud, SM_ETIMEDOUT, NULL, 0);
  free(l);
}
static int f_create(store *s, const sm_command *c, store_cmd_cb cb, void *ud) {
  if (DOWN(s))
    return SM_EUNAVAIL;
  if (((flaky *)s)->lose_creates) {
    lost_answer *l = malloc(sizeof(*l));
    l->cb = cb;
    l->ud = ud;
    return store_cmd_create(INNER(s), c, f_lost_cb, l);
  }
  return store_cmd_create(INNER(s), c, cb, ud);
}
static int f_get(store *s, const char *id, store_cmd_cb cb, void *ud) {
  return DOWN(s) ? SM_EUNAVAIL : store_cmd_get(INNER(s), id, cb, ud);
}
static int f_update(store *s, const sm_command *c, command_status e, const char *p, size_t n,
                    store_cmd_cb cb, void *ud) {
  if (((flaky *)s)->busy) {
    ((flaky *)s)->busy_refusals++;
    return SM_ELIMIT;
  }
  return DOWN(s) ? SM_EUNAVAIL : store_cmd_update(INNER(s), c, e, p, n, cb, ud);
}
static int f_list(store *s, const store_filter *f, const char *cur, size_t lim, store_list_cb cb,
                  void *ud) {
  return DOWN(s) ? SM_EUNAVAIL : store_cmd_list(INNER(s), f, cur, lim, cb, ud);
}
static int f_ob_add(store *s, const char *id, const char *p, size_t n, store_done_cb cb, void *ud) {
  return DOWN(s) ? SM_EUNAVAIL : store_outbox_add(INNER(s), id, p, n, cb, ud);
}
static int f_ob_list(store *s, size_t lim, store_outbox_cb cb, void *ud) {
  ((flaky *)s)->ob_lists++;
  return DOWN(s) ? SM_EUNAVAIL : store_outbox_list(INNER(s), lim, cb, ud);
}
static int f_ob_rm(store *s, const char *id, store_done_cb cb, void *ud) {
  return DOWN(s) ? SM_EUNAVAIL : store_outbox_remove(INNER(s), id, cb, ud);
}
static int f_ag_put(store *s, const char *id, const char *in, const char *d, int64_t ttl,
                    store_done_cb cb, void *ud) {
  return store_agent_put(INNER(s), id, in, d, ttl, cb, ud);
}
static int f_ag_del(store *s, const char *id, const char *in, store_done_cb cb, void *ud) {
  return store_agent_del(INNER(s), id, in, cb, ud);
}
static int f_ag_list(store *s, size_t lim, store_agents_cb cb, void *ud) {
  return store_agent_list(INNER(s), lim, cb, ud);
}
static int f_is_up(const store *s) {
  return !((const flaky *)s)->down;
}
static void f_close(store *s, void (*closed)(void *ud), void *ud) {
  store_close(INNER(s), closed, ud);
  free(s);
}
static const store_ops flaky_ops = {"flaky",   f_create,  f_get,   f_update, f_list,
                                    f_ob_add,  f_ob_list, f_ob_rm, f_ag_put, f_ag_del,
                                    f_ag_list, f_is_up,   f_close, NULL,     NULL};

static void flaky_set(store *s, int down) {
  DOWN(s) = down;
  if (s->on_state)
    s->on_state(s->state_ud, !down);
}

/* ---- fake agent links ---- */

#define MAX_SENT 64
typedef struct flink {
  agent_registry *reg;
  agent *a;
  char ids[MAX_SENT][64];
  char types[MAX_SENT][16];
  char cancel_of[MAX_SENT][64];
  int64_t timeouts[MAX_SENT];
  int nsent;
} flink;

static int l_send(void *lk, const agent_command *cmd) {
  flink *l = lk;
  if (l->nsent >= MAX_SENT)
    return SM_EAGAIN;
  snprintf(l->ids[l->nsent], 64, "%s", cmd->id);
  snprintf(l->types[l->nsent], 16, "%s", cmd->type);
  l->cancel_of[l->nsent][0] = '\0';
  for (size_t i = 0; i < cmd->nparams; i++)
    if (strcmp(cmd->params[i].key, "command_id") == 0)
      snprintf(l->cancel_of[l->nsent], 64, "%s", cmd->params[i].value);
  l->timeouts[l->nsent] = cmd->timeout_seconds;
  l->nsent++;
  return 0;
}
static void l_end(void *lk, int reason, const char *message) {
  (void)reason;
  (void)message;
  ((flink *)lk)->a = NULL;
}
static const char *l_peer(void *lk) {
  (void)lk;
  return "fake";
}
static const agent_link_ops link_ops = {"fake", l_send, l_end, l_peer};

static void link_attach(flink *l, agent_registry *reg, const char *id, const char *maxc,
                        const char *caps) {
  memset(l, 0, sizeof(*l));
  l->reg = reg;
  sm_kv meta[2] = {{"max_concurrent", maxc}, {"capabilities", caps}};
  T_EQ_INT(agent_registry_attach(reg, id, strlen(id), AGENT_IDLE, meta, caps ? 2 : 1, &link_ops, l,
                                 &l->a),
           0);
}

static void link_detach(flink *l) {
  agent_registry_detach(l->reg, l->a, l, SM_ECLOSED);
  l->a = NULL;
}

static void link_result(flink *l, const char *id, const char *status) {
  sm_kv data = {"out", "ok"};
  agent_result r = {.command_id = id, .status = status, .data = &data, .ndata = 1};
  agent_registry_result(l->reg, l->a, &r);
}

/* ---- fake publisher ---- */

#define MAX_PUB 64
typedef struct fpub {
  int refuse; /* publish returns SM_ECLOSED */
  int window; /* > 0: SM_ELIMIT while this many are unanswered (the publisher's window) */
  int n;
  char *payload[MAX_PUB];
  char queue[MAX_PUB][32];
  char corr[MAX_PUB][32];
  lifecycle_publish_cb cb[MAX_PUB];
  void *ud[MAX_PUB];
  int answered[MAX_PUB];
} fpub;

static int fp_publish(void *self, const char *payload, size_t len, const char *queue,
                      const char *corr, lifecycle_publish_cb cb, void *ud) {
  fpub *f = self;
  if (f->refuse)
    return SM_ECLOSED;
  if (f->window > 0) {
    int open = 0;
    for (int i = 0; i < f->n; i++)
      open += !f->answered[i];
    if (open >= f->window)
      return SM_ELIMIT;
  }
  T_ASSERT(f->n < MAX_PUB);
  f->payload[f->n] = strndup(payload, len);
  snprintf(f->queue[f->n], 32, "%s", queue ? queue : "(results)");
  snprintf(f->corr[f->n], 32, "%s", corr ? corr : "");
  f->cb[f->n] = cb;
  f->ud[f->n] = ud;
  f->answered[f->n] = 0;
  f->n++;
  return 0;
}

static void fp_confirm_all(fpub *f, int status) {
  for (int i = 0; i < f->n; i++)
    if (!f->answered[i]) {
      f->answered[i] = 1;
      f->cb[i](f->ud[i], status);
    }
}

static void fp_reset(fpub *f) {
  for (int i = 0; i < f->n; i++)
    free(f->payload[i]);
  f->n = 0;
}

/* ---- the fixture ---- */

typedef struct fx {
  uv_loop_t loop;
  store *st;
  agent_registry *reg;
  lifecycle *lc;
  fpub pub;
  int accepting_changes;
  int last_accepting;
  /* answers */
  int answers;
  int err;
  int existed;
  char id[80];
  sm_command *got; /* last record read */
  int got_err;
  size_t outbox_n;
  int outbox_done;
} fx;

static void on_accepting(void *ud, int acc) {
  fx *f = ud;
  f->accepting_changes++;
  f->last_accepting = acc;
}

static void fx_init(fx *f, size_t queue_size, int max_retries) {
  memset(f, 0, sizeof(*f));
  T_EQ_INT(uv_loop_init(&f->loop), 0);
  store *inner;
  T_EQ_INT(store_mem_create(&f->loop, NULL, &inner), 0);
  flaky *fl = calloc(1, sizeof(*fl));
  fl->base.ops = &flaky_ops;
  fl->inner = inner;
  f->st = &fl->base;
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 1000, .instance = "t1"};
  T_EQ_INT(agent_registry_create(&f->loop, &rc, &f->reg), 0);
  lifecycle_config cfg = {.queue_size = queue_size,
                          .max_agent_load = 0.8,
                          .command_timeout_s = 300,
                          .timeout_grace_s = 0.2,
                          .max_retries = max_retries,
                          .reconnect_grace_s = 0.2,
                          .instance = "t1",
                          .store_retry_max_s = 0.05,
                          .on_accepting = on_accepting,
                          .hook_ud = f};
  lifecycle_publisher p = {fp_publish, &f->pub};
  T_EQ_INT(lifecycle_create(&f->loop, &cfg, f->reg, f->st, &p, NULL, &f->lc), 0);
}

static void fx_spin_ms(fx *f, int ms) {
  int64_t end = sm_now_ms() + ms;
  while (sm_now_ms() < end) {
    uv_run(&f->loop, UV_RUN_NOWAIT);
    usleep(500);
  }
}

#define WAIT(f, cond)                                                                              \
  do {                                                                                             \
    int64_t t_end_ = sm_now_ms() + 3000;                                                           \
    while (!(cond)) {                                                                              \
      if (sm_now_ms() > t_end_)                                                                    \
        T_FAIL_("timed out waiting for %s", #cond);                                                \
      uv_run(&(f)->loop, UV_RUN_NOWAIT);                                                           \
      usleep(300);                                                                                 \
    }                                                                                              \
  } while (0)

static void closed_cb(void *ud) {
  (*(int *)ud)++;
}

static void fx_finish(fx *f) {
  int closed = 0;
  fp_confirm_all(&f->pub, SM_ECANCELED);
  fx_spin_ms(f, 5);
  lifecycle_close(f->lc, closed_cb, &closed);
  agent_registry_destroy(f->reg);
  store_close(f->st, closed_cb, &closed);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 2);
  /* a publisher answers every publish it took, also the late ones, also after the close */
  fp_confirm_all(&f->pub, SM_ECANCELED);
  T_EQ_INT(uv_loop_close(&f->loop), 0);
  fp_reset(&f->pub);
  command_free(f->got);
}

static void submit_cb(void *ud, int err, const sm_command *cmd, int existed) {
  fx *f = ud;
  f->answers++;
  f->err = err;
  f->existed = existed;
  if (cmd)
    snprintf(f->id, sizeof(f->id), "%s", cmd->id);
}

static sm_command *mk(const char *json) {
  sm_command *c = NULL;
  char err[128];
  T_EQ_INT(command_parse_text(json, strlen(json), &c, err, sizeof(err)), 0);
  return c;
}

/* Submits and waits for the answer; returns the id in f->id. */
static int submit(fx *f, const char *json) {
  int before = f->answers;
  int err = lifecycle_submit(f->lc, mk(json), submit_cb, f);
  if (err)
    return err;
  WAIT(f, f->answers > before);
  return f->err;
}

static void get_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  fx *f = ud;
  command_free(f->got);
  f->got = cmd ? command_clone(cmd) : NULL;
  f->got_err = err;
  f->answers++;
}

static const sm_command *get(fx *f, const char *id) {
  int before = f->answers;
  T_EQ_INT(lifecycle_get(f->lc, id, get_cb, f), 0);
  WAIT(f, f->answers > before);
  T_EQ_INT(f->got_err, 0);
  return f->got;
}

static command_status status_of(fx *f, const char *id) {
  return get(f, id)->status;
}

#define WAIT_STATUS(f, id, s) WAIT(f, status_of(f, id) == (s))

static void outbox_cb(void *ud, int err, const store_outbox_item *items, size_t n) {
  (void)items;
  fx *f = ud;
  T_EQ_INT(err, 0);
  f->outbox_n = n;
  f->outbox_done = 1;
}

static size_t outbox_len(fx *f) {
  f->outbox_done = 0;
  T_EQ_INT(store_outbox_list(((flaky *)f->st)->inner, 100, outbox_cb, f), 0);
  WAIT(f, f->outbox_done);
  return f->outbox_n;
}

static void cancel_cb(void *ud, int err, const sm_command *cmd) {
  fx *f = ud;
  f->answers++;
  f->err = err;
  if (cmd)
    snprintf(f->id, sizeof(f->id), "%s", cmd->id);
}

static int cancel(fx *f, const char *id) {
  int before = f->answers;
  int err = lifecycle_cancel(f->lc, id, cancel_cb, f);
  if (err)
    return err;
  WAIT(f, f->answers > before);
  return f->err;
}

/* ---- cases ---- */

static void test_happy_path(void) {
  fx f;
  fx_init(&f, 10, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "2", NULL);
  sm_command *c = mk("{\"type\":\"echo\",\"params\":{\"x\":\"1\"}}");
  command_set_str(&c->reply_to, "replies");
  command_set_str(&c->correlation_id, "corr-1");
  int before = f.answers;
  T_EQ_INT(lifecycle_submit(f.lc, c, submit_cb, &f), 0);
  T_EQ_INT(f.answers, before); /* never inside the call */
  WAIT(&f, f.answers > before);
  T_EQ_INT(f.err, 0);
  T_EQ_INT(f.existed, 0);
  char id[80];
  snprintf(id, sizeof(id), "%s", f.id);
  WAIT(&f, l.nsent == 1);
  T_EQ_STR(l.ids[0], id);
  T_EQ_STR(l.types[0], "echo");
  T_EQ_INT(l.timeouts[0], 300); /* COMMAND_TIMEOUT */
  T_EQ_INT(l.a->assigned, 1);
  WAIT_STATUS(&f, id, COMMAND_DISPATCHED);
  T_EQ_INT(f.got->attempts, 1);
  T_EQ_STR(f.got->agent_id, "a1");
  T_ASSERT(f.got->dispatched_at > 0);
  link_result(&l, id, "accepted");
  WAIT_STATUS(&f, id, COMMAND_RUNNING);
  T_ASSERT(f.got->started_at > 0);
  link_result(&l, id, "completed");
  WAIT_STATUS(&f, id, COMMAND_COMPLETED);
  T_ASSERT(f.got->result.present);
  T_EQ_STR(f.got->result.status, "completed");
  T_EQ_STR(f.got->result.data[0].value, "ok");
  T_ASSERT(f.got->completed_at > 0);
  T_EQ_INT(l.a->assigned, 0);
  /* published to the results and to reply_to with the correlation id */
  WAIT(&f, f.pub.n == 2);
  T_EQ_STR(f.pub.queue[0], "(results)");
  T_EQ_STR(f.pub.queue[1], "replies");
  T_EQ_STR(f.pub.corr[1], "corr-1");
  T_ASSERT(strstr(f.pub.payload[0], id) != NULL);
  T_ASSERT(strstr(f.pub.payload[0], "\"completed\"") != NULL);
  T_EQ_INT(outbox_len(&f), 1); /* until confirmed */
  fp_confirm_all(&f.pub, 0);
  WAIT(&f, outbox_len(&f) == 0);
  lifecycle_stats s;
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.received, 1);
  T_EQ_INT(s.finished[COMMAND_COMPLETED], 1);
  T_EQ_INT(s.published, 1);
  fx_finish(&f);
}

static void test_final_statuses(void) {
  fx f;
  fx_init(&f, 10, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "4", NULL);
  const char *agent_status[] = {"failed", "rejected", "cancelled"};
  command_status want[] = {COMMAND_FAILED, COMMAND_FAILED, COMMAND_CANCELLED};
  for (int i = 0; i < 3; i++) {
    T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
    char id[80];
    snprintf(id, sizeof(id), "%s", f.id);
    WAIT(&f, l.nsent == i + 1);
    link_result(&l, id, agent_status[i]); /* final straight from dispatched */
    WAIT_STATUS(&f, id, want[i]);
    T_EQ_STR(f.got->result.status, agent_status[i]);
  }
  fx_finish(&f);
}

static void test_cancel_each_status(void) {
  fx f;
  fx_init(&f, 10, 3);
  /* queued (no agent) */
  T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  char q[80];
  snprintf(q, sizeof(q), "%s", f.id);
  T_EQ_INT(cancel(&f, q), 0);
  T_EQ_INT(status_of(&f, q), COMMAND_CANCELLED);
  T_EQ_INT(cancel(&f, q), SM_ESTATE); /* final: 409 */
  T_EQ_INT(cancel(&f, "nope"), SM_ENOENT);
  /* dispatched */
  flink l;
  link_attach(&l, f.reg, "a1", "4", NULL);
  T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  char d[80];
  snprintf(d, sizeof(d), "%s", f.id);
  WAIT(&f, l.nsent == 1);
  T_EQ_INT(cancel(&f, d), 0);
  T_EQ_INT(status_of(&f, d), COMMAND_CANCELLED);
  T_EQ_STR(l.types[1], "cancel");
  T_EQ_STR(l.cancel_of[1], d);
  T_EQ_INT(l.a->assigned, 0);
  /* running */
  T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  char r[80];
  snprintf(r, sizeof(r), "%s", f.id);
  WAIT(&f, l.nsent == 3);
  link_result(&l, r, "running");
  WAIT_STATUS(&f, r, COMMAND_RUNNING);
  T_EQ_INT(cancel(&f, r), 0);
  T_EQ_INT(status_of(&f, r), COMMAND_CANCELLED);
  T_EQ_STR(l.types[3], "cancel");
  /* the agent's late answer changes nothing */
  link_result(&l, r, "cancelled");
  fx_spin_ms(&f, 10);
  T_EQ_INT(status_of(&f, r), COMMAND_CANCELLED);
  fx_finish(&f);
}

static void test_timeout(void) {
  fx f;
  flink l;
  char id[80];
  fx_init(&f, 10, 3);
  link_attach(&l, f.reg, "a1", "1", NULL);
  sm_command *c = mk("{\"type\":\"sleep\",\"timeout_seconds\":1}");
  int before = f.answers;
  T_EQ_INT(lifecycle_submit(f.lc, c, submit_cb, &f), 0);
  WAIT(&f, f.answers > before);
  snprintf(id, sizeof(id), "%s", f.id);
  WAIT(&f, l.nsent == 1);
  T_EQ_INT(l.timeouts[0], 1);
  link_result(&l, id, "running");
  int64_t t0 = sm_now_ms();
  WAIT_STATUS(&f, id, COMMAND_RUNNING);
  /* 1 s + 0.2 s grace */
  while (status_of(&f, id) != COMMAND_TIMED_OUT) {
    T_ASSERT(sm_now_ms() - t0 < 3000);
    fx_spin_ms(&f, 20);
  }
  T_ASSERT(sm_now_ms() - t0 >= 1000);
  T_EQ_INT(l.nsent, 2);
  T_EQ_STR(l.types[1], "cancel");
  T_EQ_STR(l.cancel_of[1], id);
  T_EQ_INT(l.a->assigned, 0);
  fx_finish(&f);
}

static void test_deadline_expiry(void) {
  fx f;
  fx_init(&f, 10, 3);
  char dl[32], json[128];
  sm_rfc3339(sm_now_ms() + 150, dl, sizeof(dl));
  snprintf(json, sizeof(json), "{\"type\":\"scan\",\"deadline\":\"%s\"}", dl);
  T_EQ_INT(submit(&f, json), 0);
  char id[80];
  snprintf(id, sizeof(id), "%s", f.id);
  T_EQ_INT(status_of(&f, id), COMMAND_QUEUED);
  WAIT_STATUS(&f, id, COMMAND_EXPIRED);
  /* an agent arriving later gets nothing */
  flink l;
  link_attach(&l, f.reg, "a1", "1", NULL);
  fx_spin_ms(&f, 10);
  T_EQ_INT(l.nsent, 0);
  fx_finish(&f);
}

static void test_retries_on_agent_loss(void) {
  fx f;
  fx_init(&f, 10, 2);
  flink l;
  link_attach(&l, f.reg, "a1", "1", NULL);
  T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  char id[80];
  snprintf(id, sizeof(id), "%s", f.id);
  for (int attempt = 1; attempt <= 3; attempt++) {
    WAIT(&f, l.nsent == 1);
    WAIT_STATUS(&f, id, COMMAND_DISPATCHED);
    T_EQ_INT(f.got->attempts, attempt);
    if (attempt == 2) {
      link_result(&l, id, "running");
      WAIT_STATUS(&f, id, COMMAND_RUNNING);
    }
    link_detach(&l);
    if (attempt < 3) {
      WAIT_STATUS(&f, id, COMMAND_QUEUED);
      link_attach(&l, f.reg, "a1", "1", NULL);
    }
  }
  /* MAX_RETRIES = 2 re-dispatches used up */
  WAIT_STATUS(&f, id, COMMAND_FAILED);
  T_ASSERT(f.got->result.error && strstr(f.got->result.error, "agent lost: disconnected"));
  lifecycle_stats s;
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.retries, 2);
  fx_finish(&f);
}

static void test_idempotency(void) {
  fx f;
  fx_init(&f, 10, 3);
  sm_command *c = mk("{\"type\":\"scan\"}");
  command_set_str(&c->idempotency_key, "key-1");
  int before = f.answers;
  T_EQ_INT(lifecycle_submit(f.lc, c, submit_cb, &f), 0);
  WAIT(&f, f.answers > before);
  char id[80];
  snprintf(id, sizeof(id), "%s", f.id);
  T_EQ_INT(f.existed, 0);
  c = mk("{\"type\":\"scan\"}");
  command_set_str(&c->idempotency_key, "key-1");
  before = f.answers;
  T_EQ_INT(lifecycle_submit(f.lc, c, submit_cb, &f), 0);
  WAIT(&f, f.answers > before);
  T_EQ_INT(f.existed, 1);
  T_EQ_STR(f.id, id);
  /* a client-chosen id */
  T_EQ_INT(submit(&f, "{\"id\":\"mine\",\"type\":\"scan\"}"), 0);
  T_EQ_INT(f.existed, 0);
  T_EQ_INT(submit(&f, "{\"id\":\"mine\",\"type\":\"echo\"}"), 0);
  T_EQ_INT(f.existed, 1);
  T_EQ_STR(get(&f, "mine")->type, "scan");
  lifecycle_stats s;
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.received, 2);
  T_EQ_INT(s.duplicates, 2);
  T_EQ_INT(s.waiting, 2);
  fx_finish(&f);
}

static void test_queue_full(void) {
  fx f;
  fx_init(&f, 3, 3);
  for (int i = 0; i < 3; i++)
    T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  T_EQ_INT(lifecycle_accepting(f.lc), 0);
  T_EQ_INT(lifecycle_submit(f.lc, mk("{\"type\":\"scan\"}"), submit_cb, &f), SM_ELIMIT);
  fx_spin_ms(&f, 5);
  T_EQ_INT(f.last_accepting, 0);
  /* room again once an agent takes one */
  flink l;
  link_attach(&l, f.reg, "a1", "1", NULL);
  WAIT(&f, l.nsent == 1);
  WAIT(&f, f.last_accepting == 1);
  T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  /* maintenance refuses with SM_EUNAVAIL */
  lifecycle_set_maintenance(f.lc, 1);
  T_EQ_INT(lifecycle_submit(f.lc, mk("{\"type\":\"scan\"}"), submit_cb, &f), SM_EUNAVAIL);
  lifecycle_set_maintenance(f.lc, 0);
  fx_finish(&f);
}

static void test_capacity_and_load(void) {
  fx f;
  fx_init(&f, 100, 3);
  flink a, b;
  link_attach(&a, f.reg, "a", "2", NULL);
  link_attach(&b, f.reg, "b", "3", NULL);
  agent_heartbeat hb = {.cpu_usage = 85}; /* b at or above MAX_AGENT_LOAD */
  agent_registry_heartbeat(f.reg, b.a, &hb);
  char ids[5][80];
  for (int i = 0; i < 5; i++) {
    T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
    snprintf(ids[i], 80, "%s", f.id);
  }
  fx_spin_ms(&f, 20);
  T_EQ_INT(a.nsent, 2); /* max_concurrent */
  T_EQ_INT(b.nsent, 0); /* loaded */
  T_EQ_INT(a.a->assigned, 2);
  link_result(&a, a.ids[0], "completed");
  WAIT(&f, a.nsent == 3);
  hb.cpu_usage = 10;
  agent_registry_heartbeat(f.reg, b.a, &hb);
  WAIT(&f, b.nsent == 2);
  T_EQ_INT(b.a->assigned, 2);
  lifecycle_stats s;
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.inflight, 4);
  T_EQ_INT(s.waiting, 0);
  fx_finish(&f);
}

static void test_priority_order(void) {
  fx f;
  fx_init(&f, 100, 3);
  const char *js[] = {"{\"id\":\"p1\",\"type\":\"scan\",\"priority\":1}",
                      "{\"id\":\"p9\",\"type\":\"scan\",\"priority\":9}",
                      "{\"id\":\"p5a\",\"type\":\"scan\"}", "{\"id\":\"p5b\",\"type\":\"scan\"}"};
  for (int i = 0; i < 4; i++)
    T_EQ_INT(submit(&f, js[i]), 0);
  flink l;
  link_attach(&l, f.reg, "a1", "1", NULL);
  const char *want[] = {"p9", "p5a", "p5b", "p1"};
  for (int i = 0; i < 4; i++) {
    WAIT(&f, l.nsent == i + 1);
    T_EQ_STR(l.ids[i], want[i]);
    link_result(&l, l.ids[i], "completed");
  }
  fx_finish(&f);
}

static void test_no_head_of_line_blocking(void) {
  fx f;
  fx_init(&f, 100, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "4", "os=linux");
  T_EQ_INT(submit(&f, "{\"id\":\"ghost\",\"type\":\"scan\",\"priority\":9,\"agent_id\":\"g\"}"), 0);
  T_EQ_INT(submit(&f, "{\"id\":\"win\",\"type\":\"scan\",\"priority\":9,"
                      "\"capabilities\":{\"os\":\"windows\"}}"),
           0);
  T_EQ_INT(submit(&f, "{\"id\":\"ok\",\"type\":\"scan\",\"priority\":1}"), 0);
  WAIT(&f, l.nsent == 1);
  T_EQ_STR(l.ids[0], "ok");
  lifecycle_stats s;
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.parked, 2);
  /* the named agent arrives: its command goes there */
  flink g;
  link_attach(&g, f.reg, "g", "1", NULL);
  WAIT(&f, g.nsent == 1);
  T_EQ_STR(g.ids[0], "ghost");
  fx_finish(&f);
}

static void seed_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)cmd;
  (void)existed;
  fx *f = ud;
  T_EQ_INT(err, 0);
  f->answers++;
}

static void seed(fx *f, const char *id, command_status s, const char *agent_id) {
  sm_command *c = mk("{\"type\":\"scan\"}");
  command_set_str(&c->id, id);
  c->status = s;
  c->created_at = sm_now_ms();
  if (agent_id) {
    command_set_str(&c->agent_id, agent_id);
    c->attempts = 1;
    c->dispatched_at = c->created_at;
  }
  int before = f->answers;
  T_EQ_INT(store_cmd_create(f->st, c, seed_cb, f), 0);
  WAIT(f, f->answers > before);
  command_free(c);
}

static void recovered_cb(void *ud, int err, size_t n) {
  fx *f = ud;
  T_EQ_INT(err, 0);
  f->outbox_n = n;
  f->answers++;
}

static void test_recovery(void) {
  fx f;
  fx_init(&f, 100, 3);
  seed(&f, "q1", COMMAND_QUEUED, NULL);
  seed(&f, "d1", COMMAND_DISPATCHED, "back");
  seed(&f, "r1", COMMAND_RUNNING, "gone");
  seed(&f, "done", COMMAND_COMPLETED, NULL);
  flink back;
  link_attach(&back, f.reg, "back", "4", NULL);
  int before = f.answers;
  T_EQ_INT(lifecycle_recover(f.lc, recovered_cb, &f), 0);
  WAIT(&f, f.answers > before);
  T_EQ_INT(f.outbox_n, 3);
  /* q1 is placed at once; d1 counts on its agent while held */
  WAIT(&f, back.nsent == 1);
  T_EQ_STR(back.ids[0], "q1");
  T_EQ_INT(back.a->assigned, 2);
  /* the agent reports d1: adopted */
  link_result(&back, "d1", "running");
  WAIT_STATUS(&f, "d1", COMMAND_RUNNING);
  link_result(&back, "d1", "completed");
  WAIT_STATUS(&f, "d1", COMMAND_COMPLETED);
  /* r1's agent never comes back: re-queued after the grace and placed on "back" */
  WAIT(&f, back.nsent == 2);
  T_EQ_STR(back.ids[1], "r1");
  WAIT_STATUS(&f, "r1", COMMAND_DISPATCHED);
  T_EQ_INT(f.got->attempts, 2);
  T_EQ_STR(f.got->agent_id, "back");
  fx_finish(&f);
}

static void test_outbox_replay(void) {
  fx f;
  fx_init(&f, 10, 3);
  f.pub.refuse = 1; /* broker away */
  flink l;
  link_attach(&l, f.reg, "a1", "1", NULL);
  sm_command *c = mk("{\"type\":\"scan\"}");
  command_set_str(&c->reply_to, "rq");
  command_set_str(&c->correlation_id, "c9");
  int before = f.answers;
  T_EQ_INT(lifecycle_submit(f.lc, c, submit_cb, &f), 0);
  WAIT(&f, f.answers > before);
  char id[80];
  snprintf(id, sizeof(id), "%s", f.id);
  WAIT(&f, l.nsent == 1);
  link_result(&l, id, "completed");
  WAIT_STATUS(&f, id, COMMAND_COMPLETED);
  fx_spin_ms(&f, 10);
  T_EQ_INT(f.pub.n, 0);
  T_EQ_INT(outbox_len(&f), 1);
  /* the broker is back; a nack first, then a confirm */
  f.pub.refuse = 0;
  lifecycle_outbox_replay(f.lc);
  WAIT(&f, f.pub.n == 2);
  T_EQ_STR(f.pub.queue[1], "rq");
  T_EQ_STR(f.pub.corr[1], "c9");
  fp_confirm_all(&f.pub, SM_EIO);
  fx_spin_ms(&f, 10);
  T_EQ_INT(outbox_len(&f), 1);
  lifecycle_outbox_replay(f.lc);
  WAIT(&f, f.pub.n == 4);
  T_ASSERT(strstr(f.pub.payload[2], id) != NULL);
  fp_confirm_all(&f.pub, 0);
  WAIT(&f, outbox_len(&f) == 0);
  fx_finish(&f);
}

/* Replays that race a result's publish and its outbox removal never publish it again: not while
 * the broker has not confirmed it, not in the turn its confirm arrives (the removal is gathered,
 * not yet written), and not after the removal. */
static void test_outbox_replay_races(void) {
  fx f;
  fx_init(&f, 10, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "1", NULL);
  T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  char id[80];
  snprintf(id, sizeof(id), "%s", f.id);
  WAIT(&f, l.nsent == 1);
  link_result(&l, id, "completed");
  WAIT(&f, f.pub.n == 1); /* published, not confirmed */
  for (int i = 0; i < 3; i++) {
    lifecycle_outbox_replay(f.lc);
    fx_spin_ms(&f, 5);
  }
  T_EQ_INT(f.pub.n, 1);
  T_EQ_INT(outbox_len(&f), 1);
  fp_confirm_all(&f.pub, 0);
  lifecycle_outbox_replay(f.lc); /* same turn: the removal is not written yet */
  fx_spin_ms(&f, 10);
  T_EQ_INT(f.pub.n, 1);
  WAIT(&f, outbox_len(&f) == 0);
  lifecycle_outbox_replay(f.lc);
  fx_spin_ms(&f, 10);
  T_EQ_INT(f.pub.n, 1);
  fx_finish(&f);
}

/* Results refused for the publisher's window wait in memory and go out, in order, as it makes
 * room: no outbox listing (a read of every entry back from the store) is needed for them. */
static void test_publish_window_parks_results(void) {
  fx f;
  fx_init(&f, 10, 3);
  f.pub.window = 2;
  flink l;
  link_attach(&l, f.reg, "a1", "8", NULL);
  char ids[5][80];
  for (int i = 0; i < 5; i++) {
    T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
    snprintf(ids[i], sizeof(ids[i]), "%s", f.id);
  }
  WAIT(&f, l.nsent == 5);
  int lists0 = ((flaky *)f.st)->ob_lists;
  for (int i = 0; i < 5; i++)
    link_result(&l, ids[i], "completed");
  WAIT(&f, f.pub.n == 2);
  fx_spin_ms(&f, 20);
  T_EQ_INT(f.pub.n, 2); /* the window is full: three wait */
  T_EQ_INT(outbox_len(&f), 5);
  for (int round = 0; round < 2; round++) {
    fp_confirm_all(&f.pub, 0);
    lifecycle_publisher_ready(f.lc); /* the publisher has room again */
    fx_spin_ms(&f, 10);
  }
  T_EQ_INT(f.pub.n, 5);
  T_EQ_INT(((flaky *)f.st)->ob_lists, lists0); /* all five from memory */
  fp_confirm_all(&f.pub, 0);
  for (int i = 0; i < 5; i++) /* each once, in the order they finished */
    T_ASSERT(strstr(f.pub.payload[i], ids[i]) != NULL);
  WAIT(&f, outbox_len(&f) == 0);
  lifecycle_stats st;
  lifecycle_get_stats(f.lc, &st);
  T_EQ_INT(st.publish_failures, 0);
  fx_finish(&f);
}

/* A create that was written but whose answer was lost (a timeout) is answered 503; the client's
 * retry finds the stored record and the command is carried on, not left queued until a
 * restart. */
static void test_lost_create_answer_adopted(void) {
  fx f;
  fx_init(&f, 10, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "2", NULL);
  ((flaky *)f.st)->lose_creates = 1;
  T_EQ_INT(submit(&f, "{\"id\":\"lost-1\",\"type\":\"scan\"}"), SM_EUNAVAIL);
  fx_spin_ms(&f, 20);
  T_EQ_INT(l.nsent, 0); /* not tracked: nothing dispatched */
  ((flaky *)f.st)->lose_creates = 0;
  T_EQ_INT(submit(&f, "{\"id\":\"lost-1\",\"type\":\"scan\"}"), 0);
  T_EQ_INT(f.existed, 1);
  WAIT(&f, l.nsent == 1);
  link_result(&l, "lost-1", "completed");
  WAIT_STATUS(&f, "lost-1", COMMAND_COMPLETED);
  /* a third submission of the finished command is only a duplicate */
  T_EQ_INT(submit(&f, "{\"id\":\"lost-1\",\"type\":\"scan\"}"), 0);
  T_EQ_INT(f.existed, 1);
  fx_spin_ms(&f, 20);
  T_EQ_INT(l.nsent, 1);
  fx_finish(&f);
}

static void test_store_outage(void) {
  fx f;
  fx_init(&f, 10, 3);
  fx_spin_ms(&f, 5);
  flink l;
  link_attach(&l, f.reg, "a1", "2", NULL);
  T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
  char id[80];
  snprintf(id, sizeof(id), "%s", f.id);
  WAIT(&f, l.nsent == 1);
  WAIT_STATUS(&f, id, COMMAND_DISPATCHED);
  flaky_set(f.st, 1);
  fx_spin_ms(&f, 5);
  T_EQ_INT(f.last_accepting, 0);
  T_EQ_INT(lifecycle_accepting(f.lc), 0);
  T_EQ_INT(lifecycle_submit(f.lc, mk("{\"type\":\"scan\"}"), submit_cb, &f), SM_EUNAVAIL);
  /* results keep arriving while the store is away */
  link_result(&l, id, "running");
  link_result(&l, id, "completed");
  fx_spin_ms(&f, 150); /* several retry rounds */
  lifecycle_stats s;
  lifecycle_get_stats(f.lc, &s);
  /* running and completed, neither sent yet: one write carries both (and the started time) */
  T_EQ_INT(s.pending_writes, 1);
  T_EQ_INT(s.writes_merged, 1);
  T_ASSERT(s.store_retries > 0);
  DOWN(f.st) = 0;
  T_EQ_INT(status_of(&f, id), COMMAND_DISPATCHED); /* nothing written yet */
  DOWN(f.st) = 1;
  flaky_set(f.st, 0);
  WAIT_STATUS(&f, id, COMMAND_COMPLETED);
  T_ASSERT(f.got->started_at > 0);
  WAIT(&f, f.pub.n == 1);
  WAIT(&f, f.last_accepting == 1);
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.pending_writes, 0);
  fx_finish(&f);
}

/* A store that refuses for being busy (its pending-request bound is full) while many writes wait:
 * each retry pass stops at the first refusal instead of offering every waiting write again
 * (which once turned an overload into a retry storm), and everything drains once it has room. */
static void test_busy_store_retries_are_paced(void) {
  fx f;
  fx_init(&f, 100, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "64", NULL);
  char ids[40][80];
  for (int i = 0; i < 40; i++) {
    T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
    snprintf(ids[i], sizeof(ids[i]), "%s", f.id);
  }
  WAIT(&f, l.nsent == 40);
  for (int i = 0; i < 40; i++)
    WAIT_STATUS(&f, ids[i], COMMAND_DISPATCHED);
  flaky *fl = (flaky *)f.st;
  fl->busy = 1;
  for (int i = 0; i < 40; i++)
    link_result(&l, l.ids[i], "completed");
  fx_spin_ms(&f, 100);
  /* 40 writes wait; a pass offers one and stops: about one refusal per 10 ms pass, not 40 */
  T_ASSERT(fl->busy_refusals >= 40);     /* each write was tried once when it came */
  T_ASSERT(fl->busy_refusals < 40 + 30); /* then paced, ~10 passes in 100 ms */
  lifecycle_stats s;
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.pending_writes, 40);
  fl->busy = 0;
  for (int i = 0; i < 40; i++)
    WAIT_STATUS(&f, ids[i], COMMAND_COMPLETED);
  lifecycle_get_stats(f.lc, &s);
  T_EQ_INT(s.pending_writes, 0);
  fx_finish(&f);
}

static void test_broadcast(void) {
  fx f;
  fx_init(&f, 10, 3);
  flink a, b, c;
  link_attach(&a, f.reg, "a", "1", "scan_type=nmap");
  link_attach(&b, f.reg, "b", "1", "scan_type=nmap");
  link_attach(&c, f.reg, "c", "1", "scan_type=zmap");
  T_EQ_INT(submit(&f, "{\"id\":\"bc\",\"type\":\"status\",\"broadcast\":true,"
                      "\"capabilities\":{\"scan_type\":\"nmap\"}}"),
           0);
  WAIT(&f, a.nsent == 1 && b.nsent == 1);
  fx_spin_ms(&f, 5);
  T_EQ_INT(c.nsent, 0);
  WAIT_STATUS(&f, "bc", COMMAND_DISPATCHED);
  T_EQ_INT(f.got->nchildren, 2);
  link_result(&a, a.ids[0], "running");
  WAIT_STATUS(&f, "bc", COMMAND_RUNNING);
  link_result(&a, a.ids[0], "completed");
  link_result(&b, b.ids[0], "completed");
  WAIT_STATUS(&f, "bc", COMMAND_COMPLETED);
  T_EQ_STR(get(&f, a.ids[0])->parent_id, "bc");
  /* one child fails: the parent fails */
  T_EQ_INT(submit(&f, "{\"id\":\"bc2\",\"type\":\"status\",\"broadcast\":true}"), 0);
  WAIT(&f, a.nsent == 2 && b.nsent == 2 && c.nsent == 1);
  link_result(&a, a.ids[1], "completed");
  link_result(&b, b.ids[1], "failed");
  link_result(&c, c.ids[0], "completed");
  WAIT_STATUS(&f, "bc2", COMMAND_FAILED);
  T_ASSERT(strstr(f.got->result.error, "1 of 3") != NULL);
  /* no matching agent */
  T_EQ_INT(submit(&f, "{\"id\":\"bc3\",\"type\":\"status\",\"broadcast\":true,"
                      "\"capabilities\":{\"os\":\"plan9\"}}"),
           0);
  WAIT_STATUS(&f, "bc3", COMMAND_FAILED);
  fx_finish(&f);
}

/* ---- a broadcast larger than one slice (LC_BCAST_STEP is 256 entries per turn) ---- */

#define BIG_N 600
static void quiet(int on);
static unsigned long inject(long nth);
static int injected(unsigned long before);
static flink big[BIG_N];

static void big_attach(fx *f) {
  for (int i = 0; i < BIG_N; i++) {
    char id[16];
    snprintf(id, sizeof(id), "g%03d", i);
    link_attach(&big[i], f->reg, id, "1", "os=linux");
  }
}

static size_t big_sent(void) {
  size_t n = 0;
  for (int i = 0; i < BIG_N; i++)
    n += (size_t)big[i].nsent;
  return n;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every matching agent gets exactly one child, the parent lists each child once, and every
 * child is in the store under its parent. */
static void test_broadcast_slices(void) {
  fx f;
  fx_init(&f, 10, 3);
  f.pub.refuse = 1; /* results stay in the outbox: the fake publisher holds only MAX_PUB */
  big_attach(&f);
  T_EQ_INT(submit(&f, "{\"id\":\"big\",\"type\":\"status\",\"broadcast\":true,"
                      "\"capabilities\":{\"os\":\"linux\"}}"),
           0);
  WAIT(&f, big_sent() == BIG_N);
  fx_spin_ms(&f, 10);
  for (int i = 0; i < BIG_N; i++)
    T_EQ_INT(big[i].nsent, 1);
  WAIT_STATUS(&f, "big", COMMAND_DISPATCHED);
  T_EQ_INT(f.got->nchildren, BIG_N);
  char **ids = calloc(BIG_N, sizeof(*ids));
  for (int i = 0; i < BIG_N; i++)
    ids[i] = strdup(f.got->children[i]);
  qsort(ids, BIG_N, sizeof(*ids), cmp_str);
  for (int i = 1; i < BIG_N; i++)
    T_ASSERT(strcmp(ids[i - 1], ids[i]) != 0);
  for (int i = 0; i < BIG_N; i++) {
    T_EQ_STR(get(&f, ids[i])->parent_id, "big");
    free(ids[i]);
  }
  free(ids);
  for (int i = 0; i < BIG_N; i++)
    link_result(&big[i], big[i].ids[0], "completed");
  WAIT_STATUS(&f, "big", COMMAND_COMPLETED);
  T_EQ_INT(f.got->result.ndata, 1);
  T_EQ_STR(f.got->result.data[0].value, "600");
  fx_finish(&f);
}

static void recovered_n(void *ud, int err, size_t n) {
  (void)n;
  *(int *)ud = err == 0 ? 1 : -1;
}

/* The lifecycle closes while the children are being created; a new one on the same store
 * recovers the parent: the children created before the close run, the ones never created count
 * as failed, and the parent's aggregate covers every child exactly once. */
static void test_broadcast_close_mid_slicing(void) {
  fx f;
  fx_init(&f, 10, 3);
  f.pub.refuse = 1;
  big_attach(&f);
  T_EQ_INT(submit(&f, "{\"id\":\"big\",\"type\":\"status\",\"broadcast\":true}"), 0);
  WAIT(&f, big_sent() > 0); /* children are being created and dispatched */
  size_t before = big_sent();
  int closed = 0;
  lifecycle_close(f.lc, closed_cb, &closed);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 1);
  lifecycle_config cfg = {.queue_size = 10,
                          .max_agent_load = 0.8,
                          .command_timeout_s = 300,
                          .timeout_grace_s = 0.2,
                          .max_retries = 3,
                          .reconnect_grace_s = 0.05,
                          .instance = "t1",
                          .store_retry_max_s = 0.05};
  lifecycle_publisher p = {fp_publish, &f.pub};
  T_EQ_INT(lifecycle_create(&f.loop, &cfg, f.reg, f.st, &p, NULL, &f.lc), 0);
  int rec = 0;
  T_EQ_INT(lifecycle_recover(f.lc, recovered_n, &rec), 0);
  WAIT(&f, rec != 0);
  T_EQ_INT(rec, 1);
  WAIT_STATUS(&f, "big", COMMAND_DISPATCHED);
  /* the children created before the close are listed; the planned count covers the rest */
  size_t nchildren =
      f.got->nchildren_planned > f.got->nchildren ? f.got->nchildren_planned : f.got->nchildren;
  T_ASSERT(nchildren == BIG_N || before < BIG_N);
  /* complete whatever each agent was sent (held children are adopted by the report) */
  for (int i = 0; i < BIG_N; i++)
    for (int j = 0; j < big[i].nsent; j++)
      link_result(&big[i], big[i].ids[j], "completed");
  fx_spin_ms(&f, 300); /* reconnect grace: held children not reported are re-queued */
  for (int i = 0; i < BIG_N; i++)
    for (int j = 0; j < big[i].nsent; j++)
      link_result(&big[i], big[i].ids[j], "completed");
  WAIT(&f, command_status_is_final(status_of(&f, "big")));
  size_t counted = 0;
  for (size_t i = 0; i < f.got->result.ndata; i++)
    counted += (size_t)strtoul(f.got->result.data[i].value, NULL, 10);
  T_EQ_INT(counted, nchildren);
  fx_finish(&f);
}

/* An allocation fails at each point of applying a broadcast in turn: the parent still ends with
 * every child accounted for once (a child that could not be made counts as failed), nothing
 * leaks, and the lifecycle still works. */
static void test_broadcast_alloc_fail_slicing(void) {
  quiet(1);
  for (long nth = 0;; nth += 397) {
    fx f;
    fx_init(&f, 10, 3);
    f.pub.refuse = 1;
    big_attach(&f);
    T_EQ_INT(submit(&f, "{\"id\":\"big\",\"type\":\"status\",\"broadcast\":true}"), 0);
    unsigned long b = inject(nth);
    fx_spin_ms(&f, 60);
    int hit = injected(b);
    /* complete everything sent until the parent is final */
    int64_t end = sm_now_ms() + 1500;
    while (!command_status_is_final(status_of(&f, "big"))) {
      /* A write the store refuses for lack of memory is retried like any other, so the
       * parent always gets final: nothing is dropped. */
      T_ASSERT(sm_now_ms() < end + 1500);
      for (int i = 0; i < BIG_N; i++)
        for (int j = 0; j < big[i].nsent; j++)
          link_result(&big[i], big[i].ids[j], "completed");
      fx_spin_ms(&f, 5);
    }
    (void)hit;
    size_t counted = 0;
    for (size_t i = 0; i < f.got->result.ndata; i++)
      counted += (size_t)strtoul(f.got->result.data[i].value, NULL, 10);
    /* the store lists the children created; its planned count covers the ones that could not
     * be (counted as failed) */
    size_t planned =
        f.got->nchildren_planned > f.got->nchildren ? f.got->nchildren_planned : f.got->nchildren;
    T_EQ_INT(counted, planned);
    T_ASSERT(planned <= BIG_N);
    for (int i = 0; i < BIG_N; i++)
      T_ASSERT(big[i].nsent <= 1); /* no child created twice */
    /* the lifecycle still works: a command for an agent now free is sent and completes */
    big[0].nsent = 0;
    T_EQ_INT(submit(&f, "{\"type\":\"scan\",\"agent_id\":\"g000\"}"), 0);
    WAIT(&f, big[0].nsent == 1);
    link_result(&big[0], big[0].ids[0], "completed");
    WAIT_STATUS(&f, f.id, COMMAND_COMPLETED);
    fx_finish(&f);
    if (!hit)
      break;
  }
  quiet(0);
}

/* ---- the async contract: allocation failure and close with work pending ---- */

/* One callback's record: how often it ran and with what. */
typedef struct once {
  int calls;
  int err;
} once;

static void once_cmd_cb(void *ud, int err, const sm_command *cmd) {
  (void)cmd;
  once *o = ud;
  o->calls++;
  o->err = err;
}

static void once_submit_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)cmd;
  (void)existed;
  once *o = ud;
  o->calls++;
  o->err = err;
}

static void quiet(int on) {
  sm_log_configure(on ? (enum sm_log_level)(SM_LOG_ERROR + 1) : SM_LOG_WARN, SM_LOG_CONSOLE);
}

/* Injection on: the nth allocation from now fails (once). Returns the failure count before. */
static unsigned long inject(long nth) {
  unsigned long before = sm_alloc_failures();
  sm_alloc_fail_at(nth, 0);
  return before;
}

/* Injection off; whether the injected failure happened. */
static int injected(unsigned long before) {
  sm_alloc_fail_at(-1, 0);
  return sm_alloc_failures() > before;
}

/* Submits, dispatches and completes one command: the lifecycle still works. */
static void still_works(fx *f, flink *l) {
  l->nsent = 0;
  T_EQ_INT(submit(f, "{\"type\":\"scan\"}"), 0);
  char id[80];
  snprintf(id, sizeof(id), "%s", f->id);
  WAIT(f, l->nsent >= 1 && strcmp(l->ids[l->nsent - 1], id) == 0);
  link_result(l, id, "completed");
  WAIT_STATUS(f, id, COMMAND_COMPLETED);
}

static void test_alloc_fail_submit(void) {
  fx f;
  fx_init(&f, 1000, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "1000", NULL);
  /* warm the strategy first: an allocation failing while the balancer builds its first pool
   * leaves it unable to place anything (a sched/ matter, reported) */
  still_works(&f, &l);
  quiet(1);
  long nth;
  for (nth = 0; nth < 500; nth++) {
    sm_command *c = mk("{\"type\":\"scan\"}");
    once o = {0, 0};
    l.nsent = 0;
    unsigned long before = inject(nth);
    int rc = lifecycle_submit(f.lc, c, once_submit_cb, &o);
    if (rc != 0) {
      fx_spin_ms(&f, 2);
      T_EQ_INT(o.calls, 0); /* an error return never calls back */
    } else {
      WAIT(&f, o.calls > 0);
      fx_spin_ms(&f, 2); /* the placement and writes that follow, under the same injection */
      T_EQ_INT(o.calls, 1);
    }
    if (!injected(before)) {
      T_EQ_INT(rc, 0);
      T_EQ_INT(o.err, 0);
      break;
    }
  }
  T_ASSERT(nth > 0 && nth < 500);
  fprintf(stderr, "   %ld allocation failures injected\n", nth);
  quiet(0);
  still_works(&f, &l);
  fx_finish(&f);
}

static void test_alloc_fail_result(void) {
  fx f;
  fx_init(&f, 1000, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "1000", NULL);
  still_works(&f, &l); /* the strategy warmed up, see test_alloc_fail_submit */
  long nth;
  for (nth = 0; nth < 500; nth++) {
    l.nsent = 0;
    sm_command *c = mk("{\"type\":\"scan\"}");
    T_EQ_INT(command_set_str(&c->reply_to, "rq"), 0);
    int before_answers = f.answers;
    T_EQ_INT(lifecycle_submit(f.lc, c, submit_cb, &f), 0);
    WAIT(&f, f.answers > before_answers);
    char id[80];
    snprintf(id, sizeof(id), "%s", f.id);
    WAIT(&f, l.nsent == 1);
    link_result(&l, id, "running");
    fx_spin_ms(&f, 2);
    quiet(1);
    unsigned long before = inject(nth);
    link_result(&l, id, "completed"); /* result, final write with outbox, publish */
    fx_spin_ms(&f, 3);
    int hit = injected(before);
    quiet(0);
    fp_confirm_all(&f.pub, 0);
    fp_reset(&f.pub);
    fx_spin_ms(&f, 2);
    if (!hit) {
      T_EQ_INT(status_of(&f, id), COMMAND_COMPLETED);
      break;
    }
  }
  T_ASSERT(nth > 0 && nth < 500);
  fprintf(stderr, "   %ld allocation failures injected\n", nth);
  still_works(&f, &l);
  fx_finish(&f);
}

static void test_alloc_fail_cancel(void) {
  fx f;
  fx_init(&f, 1000, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "1000", NULL);
  still_works(&f, &l); /* the strategy warmed up, see test_alloc_fail_submit */
  long nth;
  for (nth = 0; nth < 500; nth++) {
    /* a tracked command on the agent, and one the store holds for another instance */
    l.nsent = 0;
    T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
    char id[80], other[80];
    snprintf(id, sizeof(id), "%s", f.id);
    snprintf(other, sizeof(other), "other-%ld", nth);
    seed(&f, other, COMMAND_QUEUED, NULL);
    WAIT(&f, l.nsent == 1);
    once o1 = {0, 0}, o2 = {0, 0};
    quiet(1);
    unsigned long before = inject(nth);
    int rc1 = lifecycle_cancel(f.lc, id, once_cmd_cb, &o1);
    int rc2 = lifecycle_cancel(f.lc, other, once_cmd_cb, &o2);
    if (rc1 == 0)
      WAIT(&f, o1.calls > 0);
    if (rc2 == 0)
      WAIT(&f, o2.calls > 0);
    fx_spin_ms(&f, 3);
    int hit = injected(before);
    quiet(0);
    T_EQ_INT(o1.calls, rc1 == 0);
    T_EQ_INT(o2.calls, rc2 == 0);
    fp_confirm_all(&f.pub, 0);
    fp_reset(&f.pub);
    fx_spin_ms(&f, 2);
    if (!hit) {
      T_EQ_INT(o1.err, 0);
      T_EQ_INT(o2.err, 0);
      T_EQ_INT(status_of(&f, id), COMMAND_CANCELLED);
      T_EQ_INT(status_of(&f, other), COMMAND_CANCELLED);
      break;
    }
  }
  T_ASSERT(nth > 0 && nth < 500);
  fprintf(stderr, "   %ld allocation failures injected\n", nth);
  still_works(&f, &l);
  fx_finish(&f);
}

/* The write path: a command driven through running to completed and cancelled, with one
 * allocation failing anywhere in the lifecycle or the in-process store. */
static void test_alloc_fail_writes(void) {
  fx f;
  fx_init(&f, 1000, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "1000", NULL);
  still_works(&f, &l); /* the strategy warmed up, see test_alloc_fail_submit */
  long nth;
  for (nth = 0; nth < 500; nth++) {
    l.nsent = 0;
    sm_command *c1 = mk("{\"type\":\"scan\"}"), *c2 = mk("{\"type\":\"scan\"}");
    once s1 = {0, 0}, s2 = {0, 0}, k2 = {0, 0};
    quiet(1);
    unsigned long before = inject(nth);
    int rc1 = lifecycle_submit(f.lc, c1, once_submit_cb, &s1);
    int rc2 = lifecycle_submit(f.lc, c2, once_submit_cb, &s2);
    if (rc1 == 0)
      WAIT(&f, s1.calls > 0);
    if (rc2 == 0)
      WAIT(&f, s2.calls > 0);
    fx_spin_ms(&f, 2);
    for (int i = 0; i < l.nsent; i++)
      link_result(&l, l.ids[i], "running");
    fx_spin_ms(&f, 2);
    if (l.nsent > 0)
      link_result(&l, l.ids[0], "completed");
    int krc = l.nsent > 1 ? lifecycle_cancel(f.lc, l.ids[1], once_cmd_cb, &k2) : -1;
    if (krc == 0)
      WAIT(&f, k2.calls > 0);
    fx_spin_ms(&f, 3);
    int hit = injected(before);
    quiet(0);
    T_EQ_INT(s1.calls, rc1 == 0);
    T_EQ_INT(s2.calls, rc2 == 0);
    T_EQ_INT(k2.calls, krc == 0);
    fp_confirm_all(&f.pub, 0);
    fp_reset(&f.pub);
    fx_spin_ms(&f, 2);
    if (!hit) {
      T_EQ_INT(l.nsent, 3); /* two dispatches and the cancel */
      T_EQ_INT(k2.err, 0);
      break;
    }
  }
  T_ASSERT(nth > 0 && nth < 500);
  fprintf(stderr, "   %ld allocation failures injected\n", nth);
  still_works(&f, &l);
  fx_finish(&f);
}

/* Close with work pending: a cancel waiting on a write at the store, one on a write stalled by
 * the store outage, a deferred answer, a cancel through the store, a publish awaiting its
 * confirm. Every callback runs once with SM_ECANCELED before `closed`; the confirm that comes
 * after the close touches nothing freed (ASan). */
typedef struct close_fx {
  once *all[8];
  int n;
  int closed;
  int all_done_at_close;
} close_fx;

static void close_closed(void *ud) {
  close_fx *x = ud;
  x->closed++;
  x->all_done_at_close = 1;
  for (int i = 0; i < x->n; i++)
    if (x->all[i]->calls != 1)
      x->all_done_at_close = 0;
}

static void test_close_with_pending(void) {
  fx f;
  fx_init(&f, 100, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "100", NULL);
  char ids[5][80];
  for (int i = 0; i < 5; i++) {
    T_EQ_INT(submit(&f, "{\"type\":\"scan\"}"), 0);
    snprintf(ids[i], sizeof(ids[i]), "%s", f.id);
  }
  WAIT(&f, l.nsent == 5);
  /* ids[0]: completed, its publish awaits the confirm */
  link_result(&l, ids[0], "completed");
  WAIT(&f, f.pub.n == 1);
  seed(&f, "elsewhere", COMMAND_QUEUED, NULL);
  fx_spin_ms(&f, 5);
  once at_store = {0, 0}, on_write = {0, 0}, stalled = {0, 0}, deferred = {0, 0};
  /* through the store (untracked) and on a write at the store */
  T_EQ_INT(lifecycle_cancel(f.lc, "elsewhere", once_cmd_cb, &at_store), 0);
  T_EQ_INT(lifecycle_cancel(f.lc, ids[1], once_cmd_cb, &on_write), 0);
  /* the store goes away: writes stall */
  flaky_set(f.st, 1);
  link_result(&l, ids[2], "completed");                                /* final write stalled */
  T_EQ_INT(lifecycle_cancel(f.lc, ids[2], once_cmd_cb, &deferred), 0); /* SM_ESTATE, deferred */
  T_EQ_INT(lifecycle_cancel(f.lc, ids[3], once_cmd_cb, &stalled), 0);
  close_fx x = {{&at_store, &on_write, &stalled, &deferred}, 4, 0, 0};
  T_EQ_INT(at_store.calls + on_write.calls + stalled.calls + deferred.calls, 0);
  int closed = 0;
  lifecycle_close(f.lc, close_closed, &x);
  T_EQ_INT(lifecycle_submit(f.lc, mk("{\"type\":\"scan\"}"), submit_cb, &f), SM_EINVAL);
  agent_registry_destroy(f.reg);
  store_close(f.st, closed_cb, &closed);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  T_EQ_INT(x.closed, 1);
  T_EQ_INT(closed, 1);
  T_ASSERT(x.all_done_at_close);
  for (int i = 0; i < x.n; i++) {
    T_EQ_INT(x.all[i]->calls, 1);
    T_EQ_INT(x.all[i]->err, SM_ECANCELED);
  }
  /* the broker confirms after the lifecycle is gone */
  fp_confirm_all(&f.pub, 0);
  T_EQ_INT(uv_loop_close(&f.loop), 0);
  fp_reset(&f.pub);
  command_free(f.got);
}

/* A publish confirm arriving after lifecycle_close (and after the lifecycle was freed). */
static void test_pub_done_after_close(void) {
  fx f;
  fx_init(&f, 10, 3);
  flink l;
  link_attach(&l, f.reg, "a1", "1", NULL);
  sm_command *c = mk("{\"type\":\"scan\"}");
  T_EQ_INT(command_set_str(&c->reply_to, "rq"), 0); /* two publishes: results and reply_to */
  int before = f.answers;
  T_EQ_INT(lifecycle_submit(f.lc, c, submit_cb, &f), 0);
  WAIT(&f, f.answers > before);
  WAIT(&f, l.nsent == 1);
  link_result(&l, f.id, "completed");
  WAIT(&f, f.pub.n == 2);
  /* one answer before the close, one after */
  f.pub.answered[0] = 1;
  f.pub.cb[0](f.pub.ud[0], 0);
  int closed = 0;
  lifecycle_close(f.lc, closed_cb, &closed);
  agent_registry_destroy(f.reg);
  store_close(f.st, closed_cb, &closed);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 2);
  fp_confirm_all(&f.pub, 0); /* frees the publish's state, reads nothing of the lifecycle */
  T_EQ_INT(uv_loop_close(&f.loop), 0);
  fp_reset(&f.pub);
  command_free(f.got);
}

/* lifecycle_create under allocation failure: SM_ENOMEM, nothing leaks, a given strategy stays
 * the caller's (and one made by the lifecycle is destroyed). */
static void test_alloc_fail_create(void) {
  fx f;
  fx_init(&f, 10, 3);
  lifecycle_config cfg = {.queue_size = 10, .instance = "t1", .result_queue = "results"};
  lifecycle_publisher p = {fp_publish, &f.pub};
  for (int given = 0; given < 2; given++) {
    long nth;
    for (nth = 0; nth < 200; nth++) {
      sched_strategy *strategy = NULL;
      sched_set_config sc = {.default_strategy = "least_loaded", .max_agent_load = 0.8};
      if (given)
        T_EQ_INT(sched_set_create(&f.loop, &sc, &strategy), 0);
      lifecycle *lc = NULL;
      unsigned long before = inject(nth);
      int rc = lifecycle_create(&f.loop, &cfg, f.reg, f.st, &p, strategy, &lc);
      int hit = injected(before);
      if (rc != 0) {
        T_EQ_INT(rc, SM_ENOMEM);
        sched_strategy_destroy(strategy); /* still ours */
        continue;
      }
      int closed = 0;
      lifecycle_close(lc, closed_cb, &closed);
      WAIT(&f, closed == 1);
      if (!hit)
        break;
    }
    T_ASSERT(nth > 0 && nth < 200);
  }
  fx_finish(&f);
}

int main(void) {
  sm_log_configure(SM_LOG_WARN, SM_LOG_CONSOLE);
  T_RUN(test_happy_path);
  T_RUN(test_final_statuses);
  T_RUN(test_cancel_each_status);
  T_RUN(test_timeout);
  T_RUN(test_deadline_expiry);
  T_RUN(test_retries_on_agent_loss);
  T_RUN(test_idempotency);
  T_RUN(test_queue_full);
  T_RUN(test_capacity_and_load);
  T_RUN(test_priority_order);
  T_RUN(test_no_head_of_line_blocking);
  T_RUN(test_recovery);
  T_RUN(test_outbox_replay);
  T_RUN(test_store_outage);
  T_RUN(test_lost_create_answer_adopted);
  T_RUN(test_outbox_replay_races);
  T_RUN(test_publish_window_parks_results);
  T_RUN(test_busy_store_retries_are_paced);
  T_RUN(test_broadcast);
  T_RUN(test_broadcast_slices);
  T_RUN(test_broadcast_close_mid_slicing);
  T_RUN(test_alloc_fail_submit);
  T_RUN(test_alloc_fail_result);
  T_RUN(test_alloc_fail_cancel);
  T_RUN(test_alloc_fail_writes);
  T_RUN(test_close_with_pending);
  T_RUN(test_pub_done_after_close);
  T_RUN(test_alloc_fail_create);
  T_RUN(test_broadcast_alloc_fail_slicing);
  return t_done();
}
