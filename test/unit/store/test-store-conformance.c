/* test-store-conformance.c - one suite, both store backends: `memory` or `valkey` (argv[1] or
 * SM_STORE_BACKEND). For valkey the test starts its own redis-server on a free port.
 * Besides the semantics: allocation failure injected into every allocation of each operation
 * (refused with SM_ENOMEM and no callback, or accepted and its callback runs exactly once), and
 * a store closed with operations pending (each callback once, SM_ECANCELED). */
#include "store/store.h"
#include "util/alloc.h"
#include "util/err.h"
#include "../t.h"
#include "redis-helper.h"

#include <uv.h>

static uv_loop_t *loop;
static store *S;

typedef struct res {
  int done, err, existed;
  sm_command *cmd;
  size_t n;
  char *ids[STORE_MAX_LIST];
  char cursor[STORE_MAX_CURSOR + 1];
  int has_cursor;
  char *payloads[64];
  char *instances[64];
} res;

static void res_clear(res *r) {
  command_free(r->cmd);
  for (size_t i = 0; i < r->n && i < STORE_MAX_LIST; i++)
    free(r->ids[i]);
  for (size_t i = 0; i < 64; i++) {
    free(r->payloads[i]);
    free(r->instances[i]);
  }
  memset(r, 0, sizeof(*r));
}

static void on_guard(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "operation did not complete in time\n");
  abort();
}

static void wait_done(res *r) {
  uv_timer_t guard;
  uv_timer_init(loop, &guard);
  uv_timer_start(&guard, on_guard, 5000, 0);
  while (!r->done)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void cmd_cb(void *ud, int err, const sm_command *c, int existed) {
  res *r = ud;
  r->done++;
  command_free(r->cmd);
  r->err = err;
  r->existed = existed;
  r->cmd = c ? command_clone(c) : NULL;
}

static void list_cb(void *ud, int err, sm_command *const *cmds, size_t n, const char *cursor) {
  res *r = ud;
  T_ASSERT(r->done == 0);
  r->done++;
  r->err = err;
  r->n = n;
  for (size_t i = 0; i < n; i++)
    r->ids[i] = strdup(cmds[i]->id);
  if (cursor) {
    r->has_cursor = 1;
    snprintf(r->cursor, sizeof(r->cursor), "%s", cursor);
  }
}

static void done_cb(void *ud, int err) {
  res *r = ud;
  r->done++;
  r->err = err;
}

static void outbox_cb(void *ud, int err, const store_outbox_item *it, size_t n) {
  res *r = ud;
  T_ASSERT(r->done == 0);
  r->done++;
  r->err = err;
  r->n = n;
  for (size_t i = 0; i < n && i < 64; i++) {
    r->ids[i] = strdup(it[i].id);
    r->payloads[i] = strdup(it[i].payload);
    T_EQ_INT(strlen(it[i].payload), it[i].len);
  }
}

static void agents_cb(void *ud, int err, const store_agent_rec *a, size_t n) {
  res *r = ud;
  T_ASSERT(r->done == 0);
  r->done++;
  r->err = err;
  r->n = n;
  for (size_t i = 0; i < n && i < 64; i++) {
    r->ids[i] = strdup(a[i].id);
    r->instances[i] = strdup(a[i].instance);
    r->payloads[i] = strdup(a[i].data);
  }
}

static void value_cb(void *ud, int err, const char *v, size_t len) {
  res *r = ud;
  T_ASSERT(r->done == 0);
  r->done++;
  r->err = err;
  r->n = v ? len : 0;
  if (v) {
    T_EQ_INT(strlen(v), len); /* NUL-terminated */
    r->payloads[0] = strdup(v);
  }
}

static sm_command *mk(const char *id, const char *type, const char *agent_id, int64_t created) {
  sm_command *c = command_new();
  command_set_str(&c->id, id);
  command_set_str(&c->type, type);
  command_set_str(&c->target_agent, agent_id);
  c->created_at = created;
  return c;
}

/* Creates c and checks the callback is deferred. Returns the result's existed flag. */
static int create(const sm_command *c) {
  res r = {0};
  T_EQ_INT(store_cmd_create(S, c, cmd_cb, &r), 0);
  T_EQ_INT(r.done, 0); /* never inside the call */
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  /* a new record: the caller holds what it sent; an existing one: the stored record */
  T_ASSERT(r.existed ? r.cmd != NULL : r.cmd == NULL);
  int existed = r.existed;
  res_clear(&r);
  return existed;
}

static void test_create_get(void) {
  sm_command *c = mk("c-1", "scan", NULL, 1000);
  sm_kv p = {"target", "10.0.0.5"};
  c->params = calloc(1, sizeof(sm_kv));
  c->params[0].key = strdup(p.key);
  c->params[0].value = strdup(p.value);
  c->nparams = 1;
  T_EQ_INT(create(c), 0);
  T_EQ_INT(create(c), 1); /* same id again: the stored record */

  res r = {0};
  T_EQ_INT(store_cmd_get(S, "c-1", cmd_cb, &r), 0);
  T_EQ_INT(r.done, 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  T_EQ_STR(r.cmd->type, "scan");
  T_EQ_INT(r.cmd->nparams, 1);
  T_EQ_STR(r.cmd->params[0].value, "10.0.0.5");
  T_EQ_INT(r.cmd->status, COMMAND_QUEUED);
  res_clear(&r);

  T_EQ_INT(store_cmd_get(S, "nope", cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, SM_ENOENT);
  T_ASSERT(r.cmd == NULL);
  res_clear(&r);
  command_free(c);
}

static void test_idempotency(void) {
  sm_command *a = mk("idem-a", "echo", NULL, 2000);
  command_set_str(&a->idempotency_key, "key-1");
  T_EQ_INT(create(a), 0);
  sm_command *b = mk("idem-b", "echo", NULL, 2001);
  command_set_str(&b->idempotency_key, "key-1");
  res r = {0};
  T_EQ_INT(store_cmd_create(S, b, cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  T_EQ_INT(r.existed, 1);
  T_EQ_STR(r.cmd->id, "idem-a");
  res_clear(&r);
  T_EQ_INT(store_cmd_get(S, "idem-b", cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, SM_ENOENT);
  res_clear(&r);
  command_free(a);
  command_free(b);
}

static int update(sm_command *c, command_status expected, const char *outbox, res *r) {
  int err = store_cmd_update(S, c, expected, outbox, outbox ? strlen(outbox) : 0, cmd_cb, r);
  if (err)
    return err;
  T_EQ_INT(r->done, 0);
  wait_done(r);
  return r->err;
}

static void test_update_cas(void) {
  sm_command *c = mk("u-1", "scan", NULL, 3000);
  T_EQ_INT(create(c), 0);
  res r = {0};
  c->status = COMMAND_DISPATCHED;
  command_set_str(&c->agent_id, "agent-7");
  c->attempts = 1;
  c->dispatched_at = 3100;
  T_EQ_INT(update(c, COMMAND_QUEUED, NULL, &r), 0);
  T_ASSERT(r.cmd == NULL); /* written: the caller holds the record */
  res_clear(&r);
  T_EQ_INT(store_cmd_get(S, "u-1", cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_STR(r.cmd->agent_id, "agent-7");
  T_EQ_INT(r.cmd->status, COMMAND_DISPATCHED);
  T_EQ_INT(r.cmd->attempts, 1);
  T_EQ_INT(r.cmd->dispatched_at, 3100);
  res_clear(&r);

  /* a stale writer that still believes it is queued loses */
  c->status = COMMAND_CANCELLED;
  T_EQ_INT(update(c, COMMAND_QUEUED, NULL, &r), SM_ESTATE);
  T_ASSERT(r.cmd != NULL);
  T_EQ_INT(r.cmd->status, COMMAND_DISPATCHED);
  res_clear(&r);

  /* final with a result and its outbox entry in the same write */
  c->status = COMMAND_COMPLETED;
  c->completed_at = 3200;
  sm_kv d = {"out", "ok"};
  T_EQ_INT(command_set_result(c, "completed", &d, 1, NULL, 3200), 0);
  T_EQ_INT(update(c, COMMAND_DISPATCHED, "{\"id\":\"u-1\"}", &r), 0);
  res_clear(&r);
  T_EQ_INT(store_cmd_get(S, "u-1", cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.cmd->status, COMMAND_COMPLETED);
  T_ASSERT(r.cmd->result.present);
  T_EQ_STR(r.cmd->result.data[0].value, "ok");
  res_clear(&r);

  /* nothing leaves a final status: refused at once, no callback */
  c->status = COMMAND_FAILED;
  T_EQ_INT(store_cmd_update(S, c, COMMAND_COMPLETED, NULL, 0, cmd_cb, &r), SM_EINVAL);
  /* a writer that expected running on a completed record gets SM_ESTATE */
  T_EQ_INT(update(c, COMMAND_RUNNING, NULL, &r), SM_ESTATE);
  T_EQ_INT(r.cmd->status, COMMAND_COMPLETED);
  res_clear(&r);
  /* absent */
  sm_command *x = mk("u-missing", "scan", NULL, 1);
  x->status = COMMAND_DISPATCHED;
  T_EQ_INT(update(x, COMMAND_QUEUED, NULL, &r), SM_ENOENT);
  res_clear(&r);
  command_free(x);
  command_free(c);

  /* the outbox holds u-1's result */
  T_EQ_INT(store_outbox_list(S, 10, outbox_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.n, 1);
  T_EQ_STR(r.ids[0], "u-1");
  T_EQ_STR(r.payloads[0], "{\"id\":\"u-1\"}");
  res_clear(&r);
  T_EQ_INT(store_outbox_remove(S, "u-1", done_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  res_clear(&r);
}

/* An update writes the lifecycle fields only: what was submitted stays as created, even when
 * the writer holds a state snapshot without it; a broadcast child joins its parent's children
 * list when it is created, and the parent's planned count survives its own updates. */
static void test_fields_and_children(void) {
  sm_command *p = mk("par-1", "scan", NULL, 5000);
  sm_kv prm = {"target", "10.0.0.0/24"};
  p->params = calloc(1, sizeof(sm_kv));
  p->params[0].key = strdup(prm.key);
  p->params[0].value = strdup(prm.value);
  p->nparams = 1;
  p->broadcast = 1;
  command_set_str(&p->reply_to, "replies");
  T_EQ_INT(create(p), 0);
  /* dispatched to three planned children: the snapshot carries the count only */
  command_add_child(p, "par-1.a");
  command_add_child(p, "par-1.b");
  command_add_child(p, "par-1.c");
  p->status = COMMAND_DISPATCHED;
  p->dispatched_at = 5100;
  sm_command *snap = command_clone_state(p);
  T_ASSERT(snap != NULL && snap->children == NULL && snap->nchildren == 3);
  T_ASSERT(snap->nparams == 0);
  res r = {0};
  T_EQ_INT(update(snap, COMMAND_QUEUED, NULL, &r), 0);
  res_clear(&r);
  command_free(snap);
  /* two of the three children are created (a crash took the third) */
  for (int i = 0; i < 2; i++) {
    char id[32];
    snprintf(id, sizeof(id), "par-1.%c", 'a' + i);
    sm_command *ch = mk(id, "scan", NULL, 5200 + i);
    command_set_str(&ch->parent_id, "par-1");
    T_EQ_INT(create(ch), 0);
    T_EQ_INT(create(ch), 1); /* again: not listed twice */
    command_free(ch);
  }
  T_EQ_INT(store_cmd_get(S, "par-1", cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  T_EQ_INT(r.cmd->status, COMMAND_DISPATCHED);
  T_EQ_INT(r.cmd->dispatched_at, 5100);
  T_EQ_INT(r.cmd->nparams, 1);
  T_EQ_STR(r.cmd->params[0].value, "10.0.0.0/24");
  T_EQ_STR(r.cmd->reply_to, "replies");
  T_ASSERT(r.cmd->broadcast);
  T_EQ_INT(r.cmd->nchildren, 2);
  T_EQ_STR(r.cmd->children[0], "par-1.a");
  T_EQ_STR(r.cmd->children[1], "par-1.b");
  T_EQ_INT(r.cmd->nchildren_planned, 3);
  /* the parent, read back, finishes: its children and planned count stay */
  sm_command *back = command_clone(r.cmd);
  res_clear(&r);
  back->status = COMMAND_COMPLETED;
  back->completed_at = 5300;
  T_EQ_INT(command_set_result(back, "completed", NULL, 0, NULL, 5300), 0);
  T_EQ_INT(update(back, COMMAND_DISPATCHED, NULL, &r), 0);
  res_clear(&r);
  command_free(back);
  T_EQ_INT(store_cmd_get(S, "par-1", cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.cmd->status, COMMAND_COMPLETED);
  T_EQ_INT(r.cmd->nchildren, 2);
  T_EQ_INT(r.cmd->nchildren_planned, 3);
  T_ASSERT(r.cmd->result.present);
  T_EQ_STR(r.cmd->result.status, "completed");
  T_EQ_INT(r.cmd->nparams, 1);
  res_clear(&r);
  /* a listing reads the same record */
  store_filter f = {.status_mask = COMMAND_BIT(COMMAND_COMPLETED)};
  T_EQ_INT(store_cmd_list(S, &f, NULL, 100, list_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  int seen = 0;
  for (size_t i = 0; i < r.n; i++)
    seen += strcmp(r.ids[i], "par-1") == 0;
  T_EQ_INT(seen, 1);
  res_clear(&r);
  command_free(p);
}

/* Pages through a listing; returns the number of commands seen, checking creation order. */
static size_t list_all(const store_filter *f, size_t page, char ids[][32]) {
  char cursor[STORE_MAX_CURSOR + 1] = "";
  size_t total = 0;
  for (int guard = 0; guard < 100; guard++) {
    res r = {0};
    T_EQ_INT(store_cmd_list(S, f, cursor[0] ? cursor : NULL, page, list_cb, &r), 0);
    T_EQ_INT(r.done, 0);
    wait_done(&r);
    T_EQ_INT(r.err, 0);
    T_ASSERT(r.n <= page);
    for (size_t i = 0; i < r.n; i++)
      snprintf(ids[total++], 32, "%s", r.ids[i]);
    int more = r.has_cursor;
    if (more)
      snprintf(cursor, sizeof(cursor), "%s", r.cursor);
    res_clear(&r);
    if (!more)
      return total;
  }
  abort();
}

static void test_list(void) {
  /* 25 commands: types alternate, every third on agent a1, created in order */
  for (int i = 0; i < 25; i++) {
    char id[32];
    snprintf(id, sizeof(id), "l-%02d", i);
    sm_command *c = mk(id, i % 2 ? "scan" : "echo", i % 3 == 0 ? "a1" : NULL, 10000 + i);
    T_EQ_INT(create(c), 0);
    if (i % 5 == 0) { /* some dispatched, to filter by status */
      res r = {0};
      c->status = COMMAND_DISPATCHED;
      T_EQ_INT(update(c, COMMAND_QUEUED, NULL, &r), 0);
      res_clear(&r);
    }
    command_free(c);
  }
  static char ids[200][32];
  store_filter all = {0};
  size_t n = list_all(&all, 7, ids);
  /* c-1, idem-a, u-1 and the 25 */
  T_EQ_INT(n, 28);
  T_EQ_STR(ids[0], "c-1");
  T_EQ_STR(ids[3], "l-00");
  T_EQ_STR(ids[27], "l-24");

  store_filter ty = {.type = "scan"};
  n = list_all(&ty, 5, ids);
  T_EQ_INT(n, 12 + 2); /* 12 odd l-*, c-1, u-1 */

  store_filter ag = {.agent_id = "a1"};
  n = list_all(&ag, 4, ids);
  T_EQ_INT(n, 9); /* l-00, 03, ..., 24 */
  T_EQ_STR(ids[8], "l-24");

  store_filter disp = {.status_mask = COMMAND_BIT(COMMAND_DISPATCHED)};
  n = list_all(&disp, 10, ids);
  T_EQ_INT(n, 5);
  T_EQ_STR(ids[0], "l-00");

  store_filter active = {.status_mask = COMMAND_MASK_ACTIVE};
  n = list_all(&active, 100, ids);
  T_EQ_INT(n, 27); /* all but the completed u-1 */

  store_filter combo = {
      .status_mask = COMMAND_BIT(COMMAND_QUEUED), .type = "echo", .agent_id = "a1"};
  n = list_all(&combo, 3, ids);
  /* even i, i%3==0, i%5!=0: 6, 12, 18, 24 */
  T_EQ_INT(n, 4);
  T_EQ_STR(ids[0], "l-06");

  res r = {0};
  T_EQ_INT(store_cmd_list(S, &all, NULL, 0, list_cb, &r), SM_EINVAL);
  T_EQ_INT(store_cmd_list(S, &all, NULL, STORE_MAX_LIST + 1, list_cb, &r), SM_EINVAL);
}

static void test_outbox(void) {
  res r = {0};
  const char *ids[3] = {"o-1", "o-2", "o-3"};
  for (int i = 0; i < 3; i++) {
    T_EQ_INT(store_outbox_add(S, ids[i], "payload", 7, done_cb, &r), 0);
    T_EQ_INT(r.done, 0);
    wait_done(&r);
    T_EQ_INT(r.err, 0);
    res_clear(&r);
  }
  T_EQ_INT(store_outbox_list(S, 2, outbox_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.n, 2);
  T_EQ_STR(r.ids[0], "o-1");
  T_EQ_STR(r.payloads[1], "payload");
  res_clear(&r);
  T_EQ_INT(store_outbox_remove(S, "o-1", done_cb, &r), 0);
  wait_done(&r);
  res_clear(&r);
  T_EQ_INT(store_outbox_remove(S, "o-absent", done_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  res_clear(&r);
  T_EQ_INT(store_outbox_list(S, 10, outbox_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.n, 2);
  T_EQ_STR(r.ids[0], "o-2");
  res_clear(&r);
}

static void test_agents(void) {
  res r = {0};
  T_EQ_INT(store_agent_put(S, "ag-1", "inst-A", "{\"id\":\"ag-1\"}", 10000, done_cb, &r), 0);
  T_EQ_INT(r.done, 0);
  wait_done(&r);
  res_clear(&r);
  T_EQ_INT(store_agent_put(S, "ag-2", "inst-A", "{}", 10000, done_cb, &r), 0);
  wait_done(&r);
  res_clear(&r);
  T_EQ_INT(store_agent_put(S, "ag-short", "inst-B", "{}", 50, done_cb, &r), 0);
  wait_done(&r);
  res_clear(&r);
  usleep(120 * 1000);
  T_EQ_INT(store_agent_list(S, 100, agents_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  T_EQ_INT(r.n, 2); /* ag-short expired */
  res_clear(&r);
  /* another instance does not own ag-1: no delete */
  T_EQ_INT(store_agent_del(S, "ag-1", "inst-B", done_cb, &r), 0);
  wait_done(&r);
  res_clear(&r);
  T_EQ_INT(store_agent_del(S, "ag-2", "inst-A", done_cb, &r), 0);
  wait_done(&r);
  res_clear(&r);
  T_EQ_INT(store_agent_list(S, 100, agents_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.n, 1);
  T_EQ_STR(r.ids[0], "ag-1");
  T_EQ_STR(r.instances[0], "inst-A");
  T_EQ_STR(r.payloads[0], "{\"id\":\"ag-1\"}");
  res_clear(&r);
}

/* ---- exactly once: allocation failure, close with work pending ---------------------------- */

/* Runs the loop for a few turns (completions are deferred to the next turns). */
static void settle(void) {
  for (int i = 0; i < 20; i++)
    uv_run(loop, UV_RUN_NOWAIT);
  usleep(2000);
  for (int i = 0; i < 20; i++)
    uv_run(loop, UV_RUN_NOWAIT);
}

static long af_nth;
typedef int (*af_op)(res *r);

/* Arms the injection right before the store call (the test's own set-up allocates too). */
static void arm(void) {
  sm_alloc_fail_at(af_nth, 0);
}

static int af_create(res *r) {
  char id[64];
  snprintf(id, sizeof id, "af-c-%ld", af_nth);
  sm_command *c = mk(id, "scan", "af-agent", 9000 + af_nth);
  arm();
  int err = store_cmd_create(S, c, cmd_cb, r);
  command_free(c);
  return err;
}
static int af_get(res *r) {
  arm();
  return store_cmd_get(S, "c-1", cmd_cb, r);
}
static int af_update(res *r) {
  /* a fresh queued record each time, made with injection off */
  char id[64];
  snprintf(id, sizeof id, "af-u-%ld", af_nth);
  sm_command *c = mk(id, "scan", NULL, 9500 + af_nth);
  T_EQ_INT(create(c), 0);
  c->status = COMMAND_DISPATCHED;
  command_set_str(&c->agent_id, "agent-af");
  arm();
  int err = store_cmd_update(S, c, COMMAND_QUEUED, "{\"r\":1}", 7, cmd_cb, r);
  command_free(c);
  return err;
}
static int af_list(res *r) {
  store_filter f = {0};
  arm();
  return store_cmd_list(S, &f, NULL, 5, list_cb, r);
}
static int af_outbox_add(res *r) {
  arm();
  return store_outbox_add(S, "af-o", "{\"x\":1}", 7, done_cb, r);
}
static int af_outbox_list(res *r) {
  arm();
  return store_outbox_list(S, 10, outbox_cb, r);
}
static int af_agent_put(res *r) {
  arm();
  return store_agent_put(S, "af-ag", "inst-A", "{}", 10000, done_cb, r);
}
static int af_agent_list(res *r) {
  arm();
  return store_agent_list(S, 100, agents_cb, r);
}

/* Fails the nth allocation from the call on (through its callback) for nth = 0, 1, ... until an
 * attempt meets no injected failure. */
static void alloc_fail_loop(const char *name, af_op op) {
  for (af_nth = 0;; af_nth++) {
    T_ASSERT(af_nth < 500);
    res r = {0};
    unsigned long f0 = sm_alloc_failures();
    int err = op(&r);
    if (err != 0) {
      sm_alloc_fail_at(-1, 0);
      if (err != SM_ENOMEM)
        fprintf(stderr, "%s nth=%ld: %d\n", name, af_nth, err);
      T_EQ_INT(err, SM_ENOMEM);
      settle();
      T_EQ_INT(r.done, 0); /* refused: no callback, ever */
      res_clear(&r);
      continue;
    }
    T_EQ_INT(r.done, 0); /* never inside the call */
    wait_done(&r);
    sm_alloc_fail_at(-1, 0);
    settle();
    T_EQ_INT(r.done, 1);
    T_ASSERT(r.err == 0 || r.err == SM_ENOMEM);
    int injected = sm_alloc_failures() > f0;
    res_clear(&r);
    if (!injected)
      break;
  }
  T_ASSERT(af_nth > 0);
}

static int af_kv_put(res *r) {
  arm();
  return store_kv_put(S, "af:kv", "{\"a\":1}", 7, 10000, done_cb, r);
}
static int af_kv_get(res *r) {
  arm();
  return store_kv_get(S, "af:kv", value_cb, r);
}

/* Plain keys (store_kv_put / store_kv_get): as-is keys, replace, TTL, limits. */
static void kv_get_expect(const char *key, int err, const char *value) {
  res r = {0};
  T_EQ_INT(store_kv_get(S, key, value_cb, &r), 0);
  T_EQ_INT(r.done, 0);
  wait_done(&r);
  T_EQ_INT(r.err, err);
  if (value)
    T_EQ_STR(r.payloads[0], value);
  else
    T_ASSERT(r.payloads[0] == NULL);
  res_clear(&r);
}

static void kv_put_ok(const char *key, const char *value, int64_t ttl_ms) {
  res r = {0};
  T_EQ_INT(store_kv_put(S, key, value, strlen(value), ttl_ms, done_cb, &r), 0);
  T_EQ_INT(r.done, 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  res_clear(&r);
}

static void test_kv(void) {
  kv_get_expect("connected_agents", SM_ENOENT, NULL);
  kv_put_ok("connected_agents", "[\"a1\",\"a2\"]", 60000);
  kv_get_expect("connected_agents", 0, "[\"a1\",\"a2\"]");
  kv_put_ok("connected_agents", "[]", 60000); /* replaced */
  kv_get_expect("connected_agents", 0, "[]");
  kv_put_ok("cmd:response:a1:c1", "{\"status\":\"pending\"}", 60000);
  kv_get_expect("cmd:response:a1:c1", 0, "{\"status\":\"pending\"}");
  /* the TTL: gone once it passed */
  kv_put_ok("short", "x", 50);
  kv_get_expect("short", 0, "x");
  uv_sleep(120);
  kv_get_expect("short", SM_ENOENT, NULL);
  /* an empty value is a value */
  kv_put_ok("empty", "", 60000);
  kv_get_expect("empty", 0, "");
  /* refused at once, no callback */
  res r = {0};
  char big_key[STORE_MAX_KEY + 2];
  memset(big_key, 'k', sizeof big_key - 1);
  big_key[sizeof big_key - 1] = '\0';
  T_EQ_INT(store_kv_put(S, "", "x", 1, 1000, done_cb, &r), SM_EINVAL);
  T_EQ_INT(store_kv_put(S, NULL, "x", 1, 1000, done_cb, &r), SM_EINVAL);
  T_EQ_INT(store_kv_put(S, "k", "x", 1, 0, done_cb, &r), SM_EINVAL);
  T_EQ_INT(store_kv_put(S, "k", NULL, 0, 1000, done_cb, &r), SM_EINVAL);
  T_EQ_INT(store_kv_put(S, "k", "x", (size_t)STORE_MAX_VALUE + 1, 1000, done_cb, &r), SM_EINVAL);
  T_EQ_INT(store_kv_put(S, big_key, "x", 1, 1000, done_cb, &r), SM_EINVAL);
  T_EQ_INT(store_kv_get(S, big_key, value_cb, &r), SM_EINVAL);
  T_EQ_INT(store_kv_get(S, "", value_cb, &r), SM_EINVAL);
  big_key[STORE_MAX_KEY] = '\0'; /* exactly the limit is fine */
  kv_put_ok(big_key, "edge", 60000);
  kv_get_expect(big_key, 0, "edge");
  settle();
  T_EQ_INT(r.done, 0);
  T_ASSERT(store_op_count(S, STORE_OP_KV_PUT) > 0 && store_op_count(S, STORE_OP_KV_GET) > 0);
  T_EQ_STR(store_op_name(STORE_OP_KV_PUT), "kv_put");
  T_EQ_STR(store_op_name(STORE_OP_KV_GET), "kv_get");
}

static void test_alloc_fail(void) {
  alloc_fail_loop("cmd_create", af_create);
  alloc_fail_loop("cmd_get", af_get);
  alloc_fail_loop("cmd_update", af_update);
  alloc_fail_loop("cmd_list", af_list);
  alloc_fail_loop("outbox_add", af_outbox_add);
  alloc_fail_loop("outbox_list", af_outbox_list);
  alloc_fail_loop("agent_put", af_agent_put);
  alloc_fail_loop("agent_list", af_agent_list);
  alloc_fail_loop("kv_put", af_kv_put);
  alloc_fail_loop("kv_get", af_kv_get);
  /* still works */
  res r = {0};
  T_EQ_INT(store_cmd_get(S, "c-1", cmd_cb, &r), 0);
  wait_done(&r);
  T_EQ_INT(r.err, 0);
  T_EQ_STR(r.cmd->id, "c-1");
  res_clear(&r);
  T_EQ_INT(store_outbox_remove(S, "af-o", done_cb, &r), 0);
  wait_done(&r);
  res_clear(&r);
}

static store *S2;
static int s2_closed;
static void on_s2_closed(void *ud) {
  (void)ud;
  s2_closed++;
}
static int s2_up;
static void on_s2_state(void *ud, int up) {
  (void)ud;
  s2_up = up;
}

static store *open_second(const char *backend, int redis_port) {
  store *s = NULL;
  s2_up = 0;
  if (strcmp(backend, "valkey") == 0) {
    store_valkey_config cfg = {.host = "127.0.0.1", .port = redis_port, .prefix = "t2:"};
    T_EQ_INT(store_valkey_create(loop, &cfg, &s), 0);
    store_set_state_cb(s, on_s2_state, NULL);
    while (!s2_up)
      uv_run(loop, UV_RUN_ONCE);
  } else {
    store_mem_config cfg = {0};
    T_EQ_INT(store_mem_create(loop, &cfg, &s), 0);
  }
  return s;
}

#define NPEND 8
static res pend[NPEND];
static int closer_refused;

/* The first callback closes the store: the others still run, once, with SM_ECANCELED, and no
 * new operation is accepted meanwhile. */
static void closing_cb(void *ud, int err) {
  res *r = ud;
  done_cb(ud, err);
  if (r == &pend[0] && !s2_closed) {
    store_close(S2, on_s2_closed, NULL);
    res extra = {0};
    closer_refused = store_cmd_get(S2, "x", cmd_cb, &extra) == SM_EUNAVAIL;
  }
}

static void issue_pending(void) {
  memset(pend, 0, sizeof pend);
  T_EQ_INT(store_agent_put(S2, "p-ag", "i", "{}", 10000, done_cb, &pend[0]), 0);
  T_EQ_INT(store_cmd_get(S2, "nope", cmd_cb, &pend[1]), 0);
  T_EQ_INT(store_cmd_list(S2, NULL, NULL, 10, list_cb, &pend[2]), 0);
  T_EQ_INT(store_outbox_add(S2, "p-o", "{}", 2, done_cb, &pend[3]), 0);
  T_EQ_INT(store_outbox_list(S2, 10, outbox_cb, &pend[4]), 0);
  T_EQ_INT(store_agent_list(S2, 10, agents_cb, &pend[5]), 0);
  T_EQ_INT(store_kv_put(S2, "p-kv", "v", 1, 10000, done_cb, &pend[6]), 0);
  T_EQ_INT(store_kv_get(S2, "p-kv", value_cb, &pend[7]), 0);
}

static void test_close_pending(const char *backend, int redis_port) {
  /* Closed right after the calls: every callback runs once with SM_ECANCELED. */
  S2 = open_second(backend, redis_port);
  s2_closed = 0;
  issue_pending();
  store_close(S2, on_s2_closed, NULL);
  store_close(S2, on_s2_closed, NULL); /* a second close is ignored */
  while (!s2_closed)
    uv_run(loop, UV_RUN_ONCE);
  settle();
  T_EQ_INT(s2_closed, 1);
  for (int i = 0; i < NPEND; i++) {
    T_EQ_INT(pend[i].done, 1);
    T_EQ_INT(pend[i].err, SM_ECANCELED);
    T_EQ_INT(pend[i].n, 0);
    res_clear(&pend[i]);
  }

  /* Closed from inside the first callback. */
  S2 = open_second(backend, redis_port);
  s2_closed = 0;
  closer_refused = 0;
  memset(pend, 0, sizeof pend);
  T_EQ_INT(store_agent_put(S2, "p-ag", "i", "{}", 10000, closing_cb, &pend[0]), 0);
  T_EQ_INT(store_cmd_get(S2, "nope", cmd_cb, &pend[1]), 0);
  T_EQ_INT(store_cmd_list(S2, NULL, NULL, 10, list_cb, &pend[2]), 0);
  T_EQ_INT(store_outbox_list(S2, 10, outbox_cb, &pend[3]), 0);
  T_EQ_INT(store_kv_put(S2, "p-kv", "v", 1, 10000, done_cb, &pend[4]), 0);
  T_EQ_INT(store_kv_get(S2, "p-kv", value_cb, &pend[5]), 0);
  while (!s2_closed)
    uv_run(loop, UV_RUN_ONCE);
  settle();
  T_EQ_INT(s2_closed, 1);
  T_ASSERT(closer_refused);
  T_EQ_INT(pend[0].done, 1);
  T_EQ_INT(pend[0].err, 0);
  for (int i = 1; i < 6; i++) {
    T_EQ_INT(pend[i].done, 1);
    T_EQ_INT(pend[i].err, SM_ECANCELED);
    res_clear(&pend[i]);
  }
  res_clear(&pend[0]);
}

static int closed_flag;
static void on_closed(void *ud) {
  (void)ud;
  closed_flag = 1;
}

static void on_state(void *ud, int up) {
  *(int *)ud = up;
}

int main(int argc, char **argv) {
  const char *backend = argc > 1 ? argv[1] : getenv("SM_STORE_BACKEND");
  if (backend == NULL)
    backend = "memory";
  loop = uv_default_loop();
  test_redis redis = {0};
  if (strcmp(backend, "valkey") == 0) {
    th_redis_start(&redis, NULL);
    store_valkey_config cfg = {.host = "127.0.0.1", .port = redis.port, .prefix = "t:"};
    T_EQ_INT(store_valkey_create(loop, &cfg, &S), 0);
    int up = 0;
    store_set_state_cb(S, on_state, &up);
    while (!up)
      uv_run(loop, UV_RUN_ONCE);
  } else {
    store_mem_config cfg = {0};
    T_EQ_INT(store_mem_create(loop, &cfg, &S), 0);
  }
  fprintf(stderr, "backend: %s\n", store_name(S));
  T_ASSERT(store_is_up(S));
  T_RUN(test_create_get);
  T_RUN(test_idempotency);
  T_RUN(test_update_cas);
  T_RUN(test_list);
  T_RUN(test_fields_and_children);
  T_RUN(test_outbox);
  T_RUN(test_agents);
  T_RUN(test_kv);
  T_RUN(test_alloc_fail);
  fprintf(stderr, "-- test_close_pending\n");
  test_close_pending(backend, redis.port);
  store_close(S, on_closed, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  T_ASSERT(closed_flag);
  if (redis.pid)
    th_redis_stop(&redis);
  T_EQ_INT(uv_loop_close(loop), 0);
  return t_done();
}
