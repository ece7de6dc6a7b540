/* lifecycle.c - the command lifecycle (see lifecycle.h).
 *
 * Each tracked command is an lc_cmd holding the authoritative in-memory record and a FIFO of
 * store writes (snapshots of the record, each a compare-and-set on the status the previous write
 * left). The FIFO is bounded by the state machine itself: at most (MAX_RETRIES + 1) * 3 + 2
 * writes can exist for one command. One uv_idle "tick" gathers the work of a loop turn
 * (placement, deferred answers, store retries); one timer serves every deadline, execution
 * timeout and reconnect grace through a heap of due times; one timer paces store retries.
 */
#include "core/lifecycle.h"

#include "sched/broadcast.h"
#include "sched/queue.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/map.h"
#include "util/timeutil.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LC_GRACE_DEFAULT_S 10.0       /* timeout grace when the config says 0 */
#define LC_RECONNECT_GRACE_MAX_S 60.0 /* reconnect grace when the config says 0 */
#define LC_SCAN_MAX 64                /* consecutive unplaceable commands a pump looks past */
#define LC_PUMP_MAX 4096              /* dispatches per loop turn; the rest on the next turn */
#define LC_PUMP_BUDGET_NS 2000000ULL  /* loop time a pump may take; the rest on the next turn */
#define LC_BCAST_STEP 256             /* broadcast children created per loop turn */
#define LC_RECOVER_PAGE 1000          /* commands per recovery page */
#define LC_REPLAY_PAGE 1000           /* outbox entries per replay pass */
#define LC_OUTBOX_SWEEP_MS                                                                         \
  5000                      /* a replay pass at least this often: a result whose                   \
                               publish failed without a reconnect following (window                \
                               full, nack) must not wait for one */
#define LC_RETRY_MIN_MS 100 /* first store retry delay */

enum lc_state {
  LS_QUEUED = 0, /* in the waiting queue */
  LS_PARKED,     /* no connected agent could take it: waits for a registration */
  LS_HELD,       /* recovered dispatched/running: waits for its agent to report */
  LS_ONAGENT,    /* dispatched or running on an agent */
  LS_PARENT,     /* broadcast parent tracking children */
  LS_FINAL,      /* final; writes still pending */
};

typedef struct lc_write {
  struct lc_write *next;
  sm_command *snap;        /* the record to write */
  command_status expected; /* CAS: the status the store should hold */
  int create;              /* store_cmd_create instead of an update */
  char *outbox;            /* result JSON added to the outbox in the same write, or NULL */
  size_t outbox_len;
  lifecycle_cmd_cb cb; /* answer once written (cancel), or NULL */
  void *ud;
} lc_write;

typedef struct lc_agent lc_agent;

typedef struct lc_cmd {
  lifecycle *lc;
  sm_command *c; /* authoritative record */
  enum lc_state st;
  command_status chain; /* status the store holds once every queued write is done */
  sched_item qi;        /* waiting queue entry */
  size_t tidx;          /* timer heap index, SCHED_NOT_QUEUED when none */
  int64_t due;          /* unix ms of the next timer event */
  lc_agent *ag;         /* per-agent list it is on, or NULL */
  struct lc_cmd *aprev, *anext;
  int counted;                  /* it counts in the agent's `assigned` */
  agent_handle ah;              /* the agent generation it was counted on */
  struct lc_cmd *pprev, *pnext; /* parked list */
  struct lc_cmd *rnext;         /* store retry list */
  int in_retry;
  struct lc_cmd *snext; /* pump stash */
  lc_write *wq_head, *wq_tail;
  int writing; /* the head write is at the store */
  /* broadcast parent */
  size_t child_total, child_done, child_lookups;
  size_t child_counts[COMMAND_STATUS_COUNT];
  sched_bcast_job *plan_job;      /* broadcast being planned on the work queue */
  sched_bcast_plan *plan;         /* planned broadcast whose children are being created */
  size_t plan_next;               /* next plan entry to create a child for */
  struct lc_cmd *bnext;           /* list of parents creating children */
  struct lc_cmd *plprev, *plnext; /* list of parents being planned (plan_job set) */
} lc_cmd;

struct lc_agent {
  char *id;
  lc_cmd *head;
  size_t n;
};

typedef struct lc_pub {
  lifecycle *lc;
  char *id;
  char *payload;
  size_t len;
  char *reply_to;
  char *corr;
  int outstanding; /* publishes not yet answered */
  int lookup;      /* a store_cmd_get for its reply_to is pending */
  int failed;
} lc_pub;

typedef struct lc_deferred {
  struct lc_deferred *next;
  lifecycle_cmd_cb cb;
  void *ud;
  int err;
  sm_command *cmd;
} lc_deferred;

typedef struct lc_submit {
  lifecycle *lc;
  sm_command *cmd;
  lifecycle_submit_cb cb;
  void *ud;
} lc_submit;

typedef struct lc_cancel {
  lifecycle *lc;
  lifecycle_cmd_cb cb;
  void *ud;
  int stage; /* 0: get, 1: update */
} lc_cancel;

struct lifecycle {
  uv_loop_t *loop;
  lifecycle_config cfg;
  char *instance;
  char *result_queue;
  agent_registry *reg;
  store *st;
  lifecycle_publisher pub;
  int has_pub;
  sched_strategy *strategy;
  int own_strategy;
  command_idgen idgen;
  uint64_t seq;
  sm_map cmds;     /* id -> lc_cmd */
  sm_map agents;   /* agent id -> lc_agent */
  sm_map pubs;     /* command id -> lc_pub in flight */
  sm_map removing; /* command id -> lc_removal: confirmed, outbox removal in flight (a replay
                      must not publish those again) */
  sched_queue q;
  lc_cmd *parked_head;
  size_t nparked;
  lc_cmd **th; /* timer heap */
  size_t th_len, th_cap;
  lc_cmd *retry_head;
  uint64_t retry_ms;
  int retry_armed;
  int retry_now;
  lc_deferred *def_head, *def_tail;
  lc_cmd *bcast_head;    /* broadcast parents creating their children, a step per loop turn */
  lc_cmd *planning_head; /* broadcast parents whose plan is being made */
  size_t creating;       /* submissions at the store */
  size_t inflight, held;
  int maintenance;
  int store_up;
  int accepting_reported;
  /* recovery and replay */
  int recovering, recover_retry;
  char *recover_cursor;
  size_t recovered;
  void (*recover_done)(void *ud, int err, size_t n);
  void *recover_ud;
  int replaying, replay_again, replay_retry, replay_more;
  size_t pub_inflight;
  lifecycle_stats stats;
  /* handles and closing */
  uv_idle_t tick;
  uv_timer_t due_timer;
  uv_timer_t retry_timer;
  uv_timer_t sweep_timer; /* periodic outbox replay (LC_OUTBOX_SWEEP_MS) */
  int tick_active;
  int closing;
  int handles_open;
  uint64_t sweep_failures_seen; /* publish_failures at the last sweep */
  size_t pending_writes;        /* store writes queued on commands (all wq lists together) */
  struct lc_removal *rm_queue;  /* outbox removals the store refused, for the sweep */
  size_t rm_queued;
  size_t ops_pending; /* store operations whose callback has not run */
  void (*closed)(void *ud);
  void *closed_ud;
};

static void tick_schedule(lifecycle *lc);
static void wq_issue(lc_cmd *k);
static void write_push(lc_cmd *k, int create, int with_outbox, lifecycle_cmd_cb cb, void *ud);
static void finish(lc_cmd *k, command_status s, const char *error);
static void maybe_free_lc(lifecycle *lc);
static void child_finished(lifecycle *lc, lc_cmd *child);

static int retryable(int err) {
  return err == SM_EUNAVAIL || err == SM_ETIMEDOUT || err == SM_ECLOSED || err == SM_EAGAIN ||
         err == SM_ELIMIT || err == SM_EIO || err == SM_ECANCELED;
}

static int64_t timeout_ms(const lifecycle *lc, const sm_command *c) {
  double t = c->timeout_seconds > 0 ? (double)c->timeout_seconds : lc->cfg.command_timeout_s;
  return (int64_t)((t + lc->cfg.timeout_grace_s) * 1000.0);
}

/* ---- timer heap --------------------------------------------------------------------------- */

static void th_place(lifecycle *lc, size_t i, lc_cmd *k) {
  lc->th[i] = k;
  k->tidx = i;
}

static void th_up(lifecycle *lc, size_t i) {
  lc_cmd *k = lc->th[i];
  while (i > 0 && k->due < lc->th[(i - 1) / 2]->due) {
    th_place(lc, i, lc->th[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  th_place(lc, i, k);
}

static void th_down(lifecycle *lc, size_t i) {
  lc_cmd *k = lc->th[i];
  for (;;) {
    size_t l = 2 * i + 1, b = i;
    int64_t bd = k->due;
    if (l < lc->th_len && lc->th[l]->due < bd)
      b = l, bd = lc->th[l]->due;
    if (l + 1 < lc->th_len && lc->th[l + 1]->due < bd)
      b = l + 1;
    if (b == i)
      break;
    th_place(lc, i, lc->th[b]);
    i = b;
  }
  th_place(lc, i, k);
}

static void due_cb(uv_timer_t *t);

static void th_arm(lifecycle *lc) {
  if (lc->closing)
    return;
  if (lc->th_len == 0) {
    uv_timer_stop(&lc->due_timer);
    return;
  }
  int64_t d = lc->th[0]->due - sm_now_ms();
  uv_timer_start(&lc->due_timer, due_cb, d > 0 ? (uint64_t)d : 0, 0);
}

static void th_remove(lifecycle *lc, lc_cmd *k) {
  size_t i = k->tidx;
  if (i == SCHED_NOT_QUEUED)
    return;
  k->tidx = SCHED_NOT_QUEUED;
  lc_cmd *last = lc->th[--lc->th_len];
  if (i < lc->th_len) {
    th_place(lc, i, last);
    th_up(lc, i);
    th_down(lc, last->tidx);
  }
  if (i == 0)
    th_arm(lc);
}

/* Sets (or with due 0 clears) the command's timer event. */
static void th_set(lifecycle *lc, lc_cmd *k, int64_t due) {
  th_remove(lc, k);
  if (due <= 0)
    return;
  if (lc->th_len == lc->th_cap) {
    size_t ncap = lc->th_cap ? lc->th_cap * 2 : 64;
    lc_cmd **n = sm_realloc(lc->th, ncap * sizeof(*n));
    if (n == NULL) {
      sm_log_error("lifecycle", "timer heap out of memory", SM_LS("command_id", k->c->id));
      return;
    }
    lc->th = n;
    lc->th_cap = ncap;
  }
  k->due = due;
  th_place(lc, lc->th_len++, k);
  th_up(lc, k->tidx);
  if (k->tidx == 0)
    th_arm(lc);
}

/* ---- per-agent lists ---------------------------------------------------------------------- */

static void agent_recompute(agent *a) {
  a->load = agent_load_compute(a);
}

static void uncount(lifecycle *lc, lc_cmd *k) {
  if (!k->counted)
    return;
  k->counted = 0;
  agent *a = agent_handle_get(lc->reg, &k->ah);
  if (a != NULL && a->assigned > 0) {
    a->assigned--;
    agent_recompute(a);
    sched_notify(lc->strategy, a, SCHED_EV_UPDATE);
  }
}

static void count_on(lc_cmd *k, agent *a) {
  if (k->counted)
    return;
  k->counted = 1;
  agent_handle_set(&k->ah, a);
  a->assigned++;
  agent_recompute(a);
  sched_notify(k->lc->strategy, a, SCHED_EV_UPDATE);
}

/* Puts k on the list of agent_id (and counts it on a when a is live). */
static void bind_agent(lifecycle *lc, lc_cmd *k, const char *agent_id, agent *a) {
  lc_agent *g = sm_map_get(&lc->agents, agent_id, strlen(agent_id));
  if (g == NULL) {
    g = sm_calloc(1, sizeof(*g));
    if (g == NULL || (g->id = sm_strdup(agent_id)) == NULL ||
        sm_map_put(&lc->agents, g->id, strlen(g->id), g) != 0) {
      if (g)
        free(g->id);
      free(g);
      sm_log_error("lifecycle", "agent index out of memory", SM_LS("agent_id", agent_id));
      return;
    }
  }
  k->ag = g;
  k->aprev = NULL;
  k->anext = g->head;
  if (g->head)
    g->head->aprev = k;
  g->head = k;
  g->n++;
  if (a != NULL)
    count_on(k, a);
}

static void unbind_agent(lifecycle *lc, lc_cmd *k) {
  uncount(lc, k);
  lc_agent *g = k->ag;
  if (g == NULL)
    return;
  if (k->aprev)
    k->aprev->anext = k->anext;
  else
    g->head = k->anext;
  if (k->anext)
    k->anext->aprev = k->aprev;
  k->ag = NULL;
  k->aprev = k->anext = NULL;
  if (--g->n == 0) {
    sm_map_del(&lc->agents, g->id, strlen(g->id));
    free(g->id);
    free(g);
  }
}

/* ---- parked list -------------------------------------------------------------------------- */

static void park(lifecycle *lc, lc_cmd *k) {
  k->st = LS_PARKED;
  k->pprev = NULL;
  k->pnext = lc->parked_head;
  if (lc->parked_head)
    lc->parked_head->pprev = k;
  lc->parked_head = k;
  lc->nparked++;
}

static void unpark(lifecycle *lc, lc_cmd *k) {
  if (k->st != LS_PARKED)
    return;
  if (k->pprev)
    k->pprev->pnext = k->pnext;
  else
    lc->parked_head = k->pnext;
  if (k->pnext)
    k->pnext->pprev = k->pprev;
  k->pprev = k->pnext = NULL;
  lc->nparked--;
}

/* Takes k out of whatever waiting structure holds it (queue, parked, timers, agent). */
static void detach_all(lifecycle *lc, lc_cmd *k) {
  sched_queue_remove(&lc->q, &k->qi);
  unpark(lc, k);
  th_remove(lc, k);
  if (k->st == LS_ONAGENT)
    lc->inflight--;
  if (k->st == LS_HELD)
    lc->held--;
  unbind_agent(lc, k);
}

/* ---- command records ---------------------------------------------------------------------- */

static lc_cmd *cmd_track(lifecycle *lc, sm_command *c) {
  lc_cmd *k = sm_calloc(1, sizeof(*k));
  if (k == NULL)
    return NULL;
  k->lc = lc;
  k->c = c;
  k->chain = c->status;
  k->tidx = SCHED_NOT_QUEUED;
  sched_item_init(&k->qi, c->priority, c->deadline, ++lc->seq);
  k->qi.since_ms = c->created_at; /* aging counts from acceptance, also after a restart */
  if (sm_map_put(&lc->cmds, c->id, strlen(c->id), k) != 0) {
    free(k);
    return NULL;
  }
  return k;
}

static void write_free(lc_write *w) {
  command_free(w->snap);
  free(w->outbox);
  free(w);
}

static void planning_unlink(lifecycle *lc, lc_cmd *p) {
  if (p->plprev)
    p->plprev->plnext = p->plnext;
  else if (lc->planning_head == p)
    lc->planning_head = p->plnext;
  if (p->plnext)
    p->plnext->plprev = p->plprev;
  p->plprev = p->plnext = NULL;
}

static void cmd_free(lifecycle *lc, lc_cmd *k) {
  if (k->plan_job)
    planning_unlink(lc, k);
  sched_bcast_cancel(k->plan_job);
  sched_bcast_plan_free(k->plan);
  if (sm_map_get(&lc->cmds, k->c->id, strlen(k->c->id)) == k)
    sm_map_del(&lc->cmds, k->c->id, strlen(k->c->id));
  while (k->wq_head) {
    lc_write *w = k->wq_head;
    k->wq_head = w->next;
    write_free(w);
    lc->pending_writes--;
  }
  command_free(k->c);
  free(k);
}

/* While closing: frees k once no store callback refers to it any more. */
static void closing_release(lifecycle *lc, lc_cmd *k) {
  if (!k->writing && k->child_lookups == 0)
    cmd_free(lc, k);
}

static void maybe_free_cmd(lifecycle *lc, lc_cmd *k) {
  if (k->st == LS_FINAL && k->wq_head == NULL && !k->writing && !k->in_retry &&
      k->child_lookups == 0 && k->plan_job == NULL && k->plan == NULL)
    cmd_free(lc, k);
}

/* The registry's agents as an array (sched/ takes arrays, not the registry). NULL: out of
 * memory. */
static agent **reg_agents(agent_registry *reg, size_t *n) {
  *n = agent_registry_count(reg);
  agent **v = sm_malloc((*n ? *n : 1) * sizeof(*v));
  for (size_t i = 0; v && i < *n; i++)
    v[i] = agent_registry_at(reg, i);
  return v;
}

/* Queues k for placement (status queued in memory). */
static void enqueue(lifecycle *lc, lc_cmd *k) {
  k->st = LS_QUEUED;
  if (sched_queue_requeue(&lc->q, &k->qi) != 0)
    sm_log_error("lifecycle", "queue out of memory", SM_LS("command_id", k->c->id));
  th_set(lc, k, k->c->deadline);
  tick_schedule(lc);
}

/* ---- deferred answers and the tick -------------------------------------------------------- */

static void defer_answer(lifecycle *lc, lifecycle_cmd_cb cb, void *ud, int err,
                         const sm_command *c) {
  if (cb == NULL)
    return;
  lc_deferred *d = sm_calloc(1, sizeof(*d));
  if (d == NULL) {
    sm_log_error("lifecycle", "deferred answer out of memory", SM_LE(SM_ENOMEM));
    return;
  }
  d->cb = cb;
  d->ud = ud;
  d->err = err;
  d->cmd = c ? command_clone(c) : NULL;
  if (lc->def_tail)
    lc->def_tail->next = d;
  else
    lc->def_head = d;
  lc->def_tail = d;
  tick_schedule(lc);
}

static size_t waiting(const lifecycle *lc) {
  return sched_queue_len(&lc->q) + lc->nparked + lc->creating;
}

int lifecycle_accepting(const lifecycle *lc) {
  return !lc->closing && lc->store_up && !lc->maintenance && waiting(lc) < lc->cfg.queue_size;
}

static void report_accepting(lifecycle *lc) {
  int now = lifecycle_accepting(lc);
  if (now != lc->accepting_reported) {
    lc->accepting_reported = now;
    sm_log_info("lifecycle", now ? "accepting commands" : "not accepting commands",
                SM_LB("store_up", lc->store_up), SM_LB("maintenance", lc->maintenance),
                SM_LI("waiting", waiting(lc)));
    if (lc->cfg.on_accepting)
      lc->cfg.on_accepting(lc->cfg.hook_ud, now);
  }
}

static void expire(lifecycle *lc, lc_cmd *k) {
  (void)lc;
  finish(k, COMMAND_EXPIRED, "deadline passed before the command started");
}

static int dispatch(lifecycle *lc, lc_cmd *k, agent *a) {
  sm_command *c = k->c;
  int64_t t = c->timeout_seconds > 0 ? c->timeout_seconds : (int64_t)lc->cfg.command_timeout_s;
  agent_command ac = {.id = c->id,
                      .type = c->type,
                      .params = c->params,
                      .nparams = c->nparams,
                      .timeout_seconds = t};
  int err = agent_send(a, &ac);
  if (err)
    return err;
  int64_t now = sm_now_ms();
  c->status = COMMAND_DISPATCHED;
  c->attempts++;
  c->dispatched_at = now;
  c->started_at = 0;
  if (command_set_str(&c->agent_id, a->id) != 0)
    sm_log_error("lifecycle", "out of memory", SM_LS("command_id", c->id));
  k->st = LS_ONAGENT;
  lc->inflight++;
  bind_agent(lc, k, a->id, a);
  th_set(lc, k, now + timeout_ms(lc, c));
  lc->stats.dispatched++;
  write_push(k, 0, 0, NULL, NULL);
  sm_log_debug("lifecycle", "command dispatched", SM_LS("command_id", c->id),
               SM_LS("agent_id", a->id), SM_LI("attempt", c->attempts));
  return 0;
}

static void pump(lifecycle *lc) {
  size_t misses = 0, sent = 0;
  lc_cmd *stash = NULL;
  int64_t now = sm_now_ms();
  uint64_t t0 = uv_hrtime();
  while (sent < LC_PUMP_MAX && misses < LC_SCAN_MAX) {
    sched_item *it = sched_queue_pop_at(&lc->q, now);
    if (it == NULL)
      break;
    lc_cmd *k = (lc_cmd *)((char *)it - offsetof(lc_cmd, qi));
    sm_command *c = k->c;
    if (c->deadline > 0 && c->deadline <= now) {
      expire(lc, k);
      continue;
    }
    sched_request rq = {.id = c->id,
                        .type = c->type,
                        .agent_id = c->target_agent,
                        .caps = c->capabilities,
                        .ncaps = c->ncapabilities,
                        .params = c->params,
                        .nparams = c->nparams,
                        .priority = c->priority,
                        .max_agent_load = lc->cfg.max_agent_load,
                        .strategy = c->strategy};
    agent *a = NULL;
    int err = sched_pick(lc->strategy, &rq, &a);
    if (err == SM_EINVAL) { /* a strategy this build does not know (an older record) */
      finish(k, COMMAND_FAILED, "unknown strategy");
      continue;
    }
    if (err == 0) {
      th_remove(lc, k);
      err = dispatch(lc, k, a);
      if (err == 0) {
        sent++;
        misses = 0;
        if ((sent & 63) == 0 && uv_hrtime() - t0 > LC_PUMP_BUDGET_NS) {
          tick_schedule(lc); /* keep the loop responsive: the rest on the next turn */
          break;
        }
        continue;
      }
      th_set(lc, k, c->deadline);
      err = SM_EAGAIN;
    }
    misses++;
    if (err == SM_ENOENT) {
      park(lc, k);
      continue;
    }
    k->snext = stash;
    stash = k;
    if ((rq.agent_id == NULL || *rq.agent_id == '\0') && rq.ncaps == 0)
      break; /* no agent has room at all: nothing behind can be placed either */
  }
  while (stash) {
    lc_cmd *k = stash;
    stash = k->snext;
    k->snext = NULL;
    if (sched_queue_requeue(&lc->q, &k->qi) != 0)
      sm_log_error("lifecycle", "queue out of memory", SM_LS("command_id", k->c->id));
  }
  if (sent == LC_PUMP_MAX)
    tick_schedule(lc);
}

static void run_retries(lifecycle *lc);
static void recover_page(lifecycle *lc);
static void bcast_step(lifecycle *lc);

static void tick_cb(uv_idle_t *h) {
  lifecycle *lc = h->data;
  uv_idle_stop(h);
  lc->tick_active = 0;
  if (lc->closing)
    return;
  while (lc->def_head) {
    lc_deferred *d = lc->def_head;
    lc->def_head = d->next;
    if (lc->def_head == NULL)
      lc->def_tail = NULL;
    d->cb(d->ud, d->err, d->cmd);
    command_free(d->cmd);
    free(d);
  }
  if (lc->retry_now) {
    lc->retry_now = 0;
    run_retries(lc);
  }
  if (lc->bcast_head)
    bcast_step(lc);
  if (sched_queue_len(&lc->q))
    pump(lc);
  report_accepting(lc);
}

static void tick_schedule(lifecycle *lc) {
  if (lc->tick_active || lc->closing)
    return;
  lc->tick_active = 1;
  uv_idle_start(&lc->tick, tick_cb);
}

/* ---- store writes ------------------------------------------------------------------------- */

static void retry_timer_cb(uv_timer_t *t) {
  lifecycle *lc = t->data;
  lc->retry_armed = 0;
  run_retries(lc);
}

static void retry_arm(lifecycle *lc) {
  if (lc->retry_armed || lc->closing)
    return;
  lc->retry_armed = 1;
  uv_timer_start(&lc->retry_timer, retry_timer_cb, lc->retry_ms, 0);
  uint64_t max = (uint64_t)(lc->cfg.store_retry_max_s * 1000.0);
  lc->retry_ms = lc->retry_ms * 2 > max ? max : lc->retry_ms * 2;
}

/* A store that refuses for being busy (its bounded queue of pending requests is full) is
 * working: its requests complete within milliseconds, so waiting writes are retried shortly,
 * without growing the outage backoff. */
#define LC_RETRY_BUSY_MS 10
/* Writes issued per retry pass: a pass stops at the first refusal anyway, and this keeps one
 * pass from holding the loop when a large backlog waits. */
#define LC_RETRY_BATCH 2000

static void retry_arm_busy(lifecycle *lc) {
  if (lc->retry_armed || lc->closing)
    return;
  lc->retry_armed = 1;
  uv_timer_start(&lc->retry_timer, retry_timer_cb, LC_RETRY_BUSY_MS, 0);
}

static void stall(lifecycle *lc, lc_cmd *k, int err) {
  if (!k->in_retry) {
    k->in_retry = 1;
    k->rnext = lc->retry_head;
    lc->retry_head = k;
  }
  if (err == SM_ELIMIT || err == SM_EAGAIN)
    retry_arm_busy(lc);
  else
    retry_arm(lc);
}

static void run_retries(lifecycle *lc) {
  if (lc->closing)
    return;
  lc_cmd *list = lc->retry_head;
  lc->retry_head = NULL;
  size_t issued = 0;
  while (list) {
    if (issued == LC_RETRY_BATCH) {
      retry_arm_busy(lc); /* the rest on the next pass, soon */
      break;
    }
    lc_cmd *k = list;
    list = k->rnext;
    k->in_retry = 0;
    k->rnext = NULL;
    lc->stats.store_retries++;
    issued++;
    wq_issue(k);
    int refused = k->in_retry; /* stalled again at once: the store is full or away */
    maybe_free_cmd(lc, k);
    if (refused)
      break; /* stall() armed the timer; the rest waits with k */
  }
  if (list) { /* put back what this pass did not reach, behind the few stalled during it */
    lc_cmd **end = &lc->retry_head;
    while (*end)
      end = &(*end)->rnext;
    *end = list;
  }
  if (lc->recover_retry) {
    lc->recover_retry = 0;
    recover_page(lc);
  }
  if (lc->replay_retry) {
    lc->replay_retry = 0;
    lifecycle_outbox_replay(lc);
  }
  if (lc->retry_head == NULL && !lc->recover_retry && !lc->replay_retry)
    lc->retry_ms = LC_RETRY_MIN_MS;
}

static void pub_start(lifecycle *lc, const char *id, char *payload, size_t len,
                      const char *reply_to, const char *corr);

static void head_done(lifecycle *lc, lc_cmd *k, int err, const sm_command *stored) {
  lc_write *w = k->wq_head;
  k->wq_head = w->next;
  if (k->wq_head == NULL)
    k->wq_tail = NULL;
  lc->pending_writes--;
  if (w->cb)
    w->cb(w->ud, err, stored ? stored : w->snap);
  if (err == 0 && w->outbox) {
    pub_start(lc, w->snap->id, w->outbox, w->outbox_len, w->snap->reply_to,
              w->snap->correlation_id);
    w->outbox = NULL;
  }
  write_free(w);
}

/* Finalizes k locally when the store shows another writer already made it final. */
static void adopt_final(lifecycle *lc, lc_cmd *k, const sm_command *stored) {
  while (k->wq_head)
    head_done(lc, k, SM_ESTATE, stored);
  if (k->st != LS_FINAL) {
    detach_all(lc, k);
    k->st = LS_FINAL;
    if (k->c->parent_id)
      child_finished(lc, k);
  }
}

static void write_failed(lifecycle *lc, lc_cmd *k, int err, const sm_command *stored) {
  lc_write *w = k->wq_head;
  if (retryable(err)) {
    stall(lc, k, err);
    return;
  }
  if (err == SM_ESTATE && stored != NULL) {
    if (command_status_is_final(stored->status)) {
      sm_log_info("lifecycle", "command already final in the store", SM_LS("command_id", k->c->id),
                  SM_LS("status", command_status_name(stored->status)));
      adopt_final(lc, k, stored);
      return;
    }
    if (stored->status == w->snap->status ||
        command_transition_allowed(stored->status, w->snap->status)) {
      if (w->expected != stored->status) {
        w->expected = stored->status; /* rebase onto what the store holds, then write again */
        wq_issue(k);
        return;
      }
    }
  }
  sm_log_error("lifecycle", "store write dropped", SM_LS("command_id", k->c->id), SM_LE(err),
               SM_LS("status", command_status_name(w->snap->status)));
  head_done(lc, k, err, stored);
  wq_issue(k);
}

static void write_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  lc_cmd *k = ud;
  lifecycle *lc = k->lc;
  lc->ops_pending--;
  k->writing = 0;
  if (lc->closing) {
    closing_release(lc, k);
    maybe_free_lc(lc);
    return;
  }
  if (err == 0) {
    lc->retry_ms = LC_RETRY_MIN_MS;
    head_done(lc, k, 0, cmd);
    wq_issue(k);
  } else {
    write_failed(lc, k, err, cmd);
  }
  maybe_free_cmd(lc, k);
}

static void wq_issue(lc_cmd *k) {
  lifecycle *lc = k->lc;
  lc_write *w = k->wq_head;
  if (w == NULL || k->writing || k->in_retry || lc->closing)
    return;
  int err = w->create ? store_cmd_create(lc->st, w->snap, write_cb, k)
                      : store_cmd_update(lc->st, w->snap, w->expected, w->outbox, w->outbox_len,
                                         write_cb, k);
  if (err == 0) {
    k->writing = 1;
    lc->ops_pending++;
    return;
  }
  write_failed(lc, k, err, NULL);
}

/* Appends a write of k's current record. */
static void write_push(lc_cmd *k, int create, int with_outbox, lifecycle_cmd_cb cb, void *ud) {
  lifecycle *lc = k->lc;
  lc_write *w = sm_calloc(1, sizeof(*w));
  if (w == NULL || (w->snap = command_clone(k->c)) == NULL) {
    free(w);
    sm_log_error("lifecycle", "store write out of memory", SM_LS("command_id", k->c->id));
    return;
  }
  w->create = create;
  w->expected = k->chain;
  k->chain = w->snap->status;
  w->cb = cb;
  w->ud = ud;
  if (with_outbox && lc->has_pub) {
    cJSON *j = command_to_json(k->c);
    w->outbox = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (w->outbox == NULL)
      sm_log_error("lifecycle", "result JSON out of memory", SM_LS("command_id", k->c->id));
    else
      w->outbox_len = strlen(w->outbox);
  }
  if (k->wq_tail)
    k->wq_tail->next = w;
  else
    k->wq_head = w;
  k->wq_tail = w;
  k->lc->pending_writes++;
  wq_issue(k);
}

/* ---- transitions -------------------------------------------------------------------------- */

static void finish_with(lc_cmd *k, command_status s, const char *error, lifecycle_cmd_cb cb,
                        void *ud) {
  lifecycle *lc = k->lc;
  sm_command *c = k->c;
  int64_t now = sm_now_ms();
  detach_all(lc, k);
  if (s == COMMAND_EXPIRED && c->status == COMMAND_RUNNING)
    s = COMMAND_FAILED; /* running -> expired is not a valid transition */
  c->status = s;
  c->completed_at = now;
  if (error != NULL && !c->result.present)
    command_set_result(c, command_status_name(s), NULL, 0, error, now);
  k->st = LS_FINAL;
  lc->stats.finished[s]++;
  if (lc->cfg.on_finished) {
    int64_t from = c->started_at ? c->started_at : c->dispatched_at;
    lc->cfg.on_finished(lc->cfg.hook_ud, c, from ? (double)(now - from) / 1000.0 : 0.0);
  }
  sm_log_debug("lifecycle", "command finished", SM_LS("command_id", c->id),
               SM_LS("status", command_status_name(s)));
  write_push(k, 0, 1, cb, ud);
  if (c->parent_id)
    child_finished(lc, k);
  tick_schedule(lc); /* an agent slot may be free; k is freed once its writes are done */
}

static void finish(lc_cmd *k, command_status s, const char *error) {
  finish_with(k, s, error, NULL, NULL);
}

/* Back to queued after the agent went away, or failed when retries are used up. */
static void requeue_or_fail(lifecycle *lc, lc_cmd *k, const char *why) {
  if (k->c->attempts > lc->cfg.max_retries) {
    char msg[256];
    snprintf(msg, sizeof(msg), "agent lost: %s", why);
    finish(k, COMMAND_FAILED, msg);
    return;
  }
  detach_all(lc, k);
  k->c->status = COMMAND_QUEUED;
  k->c->started_at = 0;
  lc->stats.retries++;
  sm_log_info("lifecycle", "command re-queued", SM_LS("command_id", k->c->id), SM_LS("reason", why),
              SM_LI("attempts", k->c->attempts));
  write_push(k, 0, 0, NULL, NULL);
  enqueue(lc, k);
}

static void due_cb(uv_timer_t *t) {
  lifecycle *lc = t->data;
  int64_t now = sm_now_ms();
  while (lc->th_len && lc->th[0]->due <= now) {
    lc_cmd *k = lc->th[0];
    th_remove(lc, k);
    switch (k->st) {
    case LS_QUEUED:
    case LS_PARKED:
      expire(lc, k);
      break;
    case LS_HELD:
      requeue_or_fail(lc, k, "agent did not report after the manager restarted");
      break;
    case LS_ONAGENT: {
      agent *a = agent_handle_get(lc->reg, &k->ah);
      if (a != NULL) {
        sm_kv p = {"command_id", k->c->id};
        agent_command ac = {.id = k->c->id, .type = "cancel", .params = &p, .nparams = 1};
        agent_send(a, &ac);
        sched_report_result(lc->strategy, a, (double)timeout_ms(lc, k->c) / 1000.0, 0);
      }
      char msg[96];
      snprintf(msg, sizeof(msg), "no result within %lld s",
               (long long)(timeout_ms(lc, k->c) / 1000));
      finish(k, COMMAND_TIMED_OUT, msg);
      break;
    }
    default:
      break;
    }
  }
  th_arm(lc);
}

/* ---- broadcast ---------------------------------------------------------------------------- */

static int parent_aggregate(lc_cmd *p) {
  lifecycle *lc = p->lc;
  if (p->st != LS_PARENT || p->child_lookups > 0 || p->child_done < p->child_total)
    return 0;
  size_t n = p->child_total;
  command_status s = COMMAND_FAILED;
  if (p->child_counts[COMMAND_COMPLETED] == n)
    s = COMMAND_COMPLETED;
  else if (p->child_counts[COMMAND_CANCELLED] == n)
    s = COMMAND_CANCELLED;
  else if (p->child_counts[COMMAND_EXPIRED] == n)
    s = COMMAND_EXPIRED;
  sm_kv data[COMMAND_STATUS_COUNT];
  char nums[COMMAND_STATUS_COUNT][24];
  size_t nd = 0;
  for (int i = COMMAND_COMPLETED; i < COMMAND_STATUS_COUNT; i++) {
    if (!p->child_counts[i])
      continue;
    snprintf(nums[nd], sizeof(nums[nd]), "%zu", p->child_counts[i]);
    data[nd].key = command_status_name((command_status)i);
    data[nd].value = nums[nd];
    nd++;
  }
  char err[96] = "";
  if (s != COMMAND_COMPLETED)
    snprintf(err, sizeof(err), "%zu of %zu children did not complete",
             n - p->child_counts[COMMAND_COMPLETED], n);
  command_set_result(p->c, command_status_name(s), data, nd, *err ? err : NULL, sm_now_ms());
  (void)lc;
  finish(p, s, NULL);
  return 1;
}

static void child_finished(lifecycle *lc, lc_cmd *child) {
  const char *pid = child->c->parent_id;
  lc_cmd *p = sm_map_get(&lc->cmds, pid, strlen(pid));
  if (p == NULL || p->st != LS_PARENT)
    return;
  if (p->child_done < p->child_total) {
    p->child_done++;
    p->child_counts[child->c->status]++;
  }
  parent_aggregate(p);
}

static void child_running(lifecycle *lc, lc_cmd *child) {
  const char *pid = child->c->parent_id;
  lc_cmd *p = sm_map_get(&lc->cmds, pid, strlen(pid));
  if (p == NULL || p->st != LS_PARENT || p->c->status != COMMAND_DISPATCHED)
    return;
  p->c->status = COMMAND_RUNNING;
  p->c->started_at = sm_now_ms();
  write_push(p, 0, 0, NULL, NULL);
}

/* Broadcasts are planned off the loop (sched/broadcast.h): the registry is snapshotted, the work
 * queue matches the filter and makes the child ids, and the loop applies the plan a step per
 * turn (LC_BCAST_STEP entries) so tens of thousands of children never stall it: first every
 * entry is checked against the live registry (an agent that left or re-registered since the
 * snapshot is skipped) and recorded as a child id, then the parent is written with its
 * children, then the children are created and queued. */
static void bcast_planned(void *ud, int err, sched_bcast_plan *plan) {
  lc_cmd *p = ud;
  lifecycle *lc = p->lc;
  p->plan_job = NULL;
  planning_unlink(lc, p);
  if (p->st == LS_FINAL) { /* cancelled while planning */
    sched_bcast_plan_free(plan);
    maybe_free_cmd(lc, p);
    return;
  }
  if (err) {
    finish(p, COMMAND_FAILED,
           err == SM_EINVAL ? "filter: min_version is not a semantic version"
                            : "broadcast planning failed");
    return;
  }
  sm_log_info("lifecycle", "broadcast planned", SM_LS("command_id", p->c->id),
              SM_LI("agents", plan->snapshot), SM_LI("matched", plan->n),
              SM_LI("plan_us", (long long)(plan->plan_ms * 1000.0)));
  p->plan = plan;
  p->plan_next = 0;
  p->child_total = 0;
  free(p->c->children);
  p->c->children = plan->n ? sm_calloc(plan->n, sizeof(*p->c->children)) : NULL;
  p->c->nchildren = 0;
  if (plan->n && p->c->children == NULL) {
    sched_bcast_plan_free(plan);
    p->plan = NULL;
    finish(p, COMMAND_FAILED, "out of memory planning the broadcast");
    return;
  }
  p->bnext = lc->bcast_head;
  lc->bcast_head = p;
  tick_schedule(lc);
}

/* Validates plan entries into the parent's children; returns 1 when all are done. */
static int bcast_validate(lifecycle *lc, lc_cmd *p) {
  sched_bcast_plan *pl = p->plan;
  sm_command *c = p->c;
  size_t end = p->plan_next + LC_BCAST_STEP < pl->n ? p->plan_next + LC_BCAST_STEP : pl->n;
  for (size_t i = p->plan_next; i < end; i++) {
    const char *id = pl->agent_id[i];
    agent *a = agent_registry_find(lc->reg, id, strlen(id));
    if (a == NULL || a->generation != pl->generation[i] || a->link_ops == NULL)
      continue; /* stale: left or re-registered since the snapshot */
    char *cid = sm_strdup(pl->child_id[i]);
    if (cid == NULL)
      continue;
    /* compact in place: entry nchildren of the plan is the agent of child nchildren */
    pl->agent_id[c->nchildren] = pl->agent_id[i];
    pl->generation[c->nchildren] = pl->generation[i];
    memcpy(pl->child_id[c->nchildren], pl->child_id[i], sizeof(pl->child_id[i]));
    c->children[c->nchildren++] = cid;
  }
  p->plan_next = end;
  return end == pl->n;
}

/* Creates and queues one child for plan entry i. */
static void bcast_child(lifecycle *lc, lc_cmd *p, size_t i, int64_t now) {
  sm_command *c = p->c;
  const char *id = p->plan->child_id[i];
  sm_command *ch = command_new();
  if (ch == NULL || command_set_str(&ch->id, id) || command_set_str(&ch->type, c->type) ||
      command_set_str(&ch->target_agent, p->plan->agent_id[i]) ||
      command_set_str(&ch->parent_id, c->id) || command_set_str(&ch->instance, lc->instance)) {
    command_free(ch);
    goto lost;
  }
  ch->params = sm_calloc(c->nparams ? c->nparams : 1, sizeof(*ch->params));
  for (size_t j = 0; ch->params && j < c->nparams; j++) {
    ch->params[j].key = sm_strdup(c->params[j].key);
    ch->params[j].value = sm_strdup(c->params[j].value);
    ch->nparams++;
  }
  ch->priority = c->priority;
  ch->timeout_seconds = c->timeout_seconds;
  ch->deadline = c->deadline;
  ch->source = c->source;
  ch->created_at = now;
  lc_cmd *kc = cmd_track(lc, ch);
  if (kc == NULL) {
    command_free(ch);
    goto lost;
  }
  write_push(kc, 1, 0, NULL, NULL);
  enqueue(lc, kc);
  return;
lost:
  sm_log_error("lifecycle", "broadcast child out of memory", SM_LS("command_id", id));
  if (p->child_done < p->child_total) {
    p->child_done++;
    p->child_counts[COMMAND_FAILED]++;
  }
}

/* One step of every broadcast being applied. */
static void bcast_step(lifecycle *lc) {
  lc_cmd **pp = &lc->bcast_head;
  while (*pp) {
    lc_cmd *p = *pp;
    int done = 0;
    if (p->st == LS_FINAL) { /* cancelled meanwhile: children not yet created never will be */
      done = 1;
    } else if (p->st != LS_PARENT) {
      if (bcast_validate(lc, p)) {
        if (p->c->nchildren == 0) {
          done = 1;
          finish(p, COMMAND_FAILED, "no agent matches the broadcast filter");
        } else {
          /* the parent (with its children's ids) is written first: a crash in between leaves
           * children that recovery counts as missing rather than a parent that would
           * broadcast twice */
          int64_t now = sm_now_ms();
          p->c->status = COMMAND_DISPATCHED;
          p->c->dispatched_at = now;
          p->st = LS_PARENT;
          p->child_total = p->c->nchildren;
          p->plan->n = p->c->nchildren;
          p->plan_next = 0;
          write_push(p, 0, 0, NULL, NULL);
        }
      }
    } else {
      int64_t now = sm_now_ms();
      size_t end =
          p->plan_next + LC_BCAST_STEP < p->plan->n ? p->plan_next + LC_BCAST_STEP : p->plan->n;
      for (size_t i = p->plan_next; i < end; i++)
        bcast_child(lc, p, i, now);
      p->plan_next = end;
      done = end == p->plan->n;
      parent_aggregate(p);
    }
    if (done) {
      *pp = p->bnext;
      p->bnext = NULL;
      sched_bcast_plan_free(p->plan);
      p->plan = NULL;
      maybe_free_cmd(lc, p);
    } else {
      pp = &p->bnext;
    }
  }
  if (lc->bcast_head)
    tick_schedule(lc);
}

/* Plans one child per agent matching the parent's filter (status, min_version, max_load, and
 * capabilities from `capabilities` plus any other filter key). */
static void bcast_expand(lifecycle *lc, lc_cmd *p) {
  sm_command *c = p->c;
  agent_filter f = {.max_load = -1};
  sm_kv *caps = sm_calloc(c->ncapabilities + c->nfilter + 1, sizeof(*caps));
  if (caps == NULL) {
    finish(p, COMMAND_FAILED, "out of memory planning the broadcast");
    return;
  }
  size_t nc = 0;
  for (size_t i = 0; i < c->ncapabilities; i++)
    caps[nc++] = c->capabilities[i];
  for (size_t i = 0; i < c->nfilter; i++) {
    const sm_kv *kv = &c->filter[i];
    if (strcmp(kv->key, "status") == 0) {
      char buf[128];
      snprintf(buf, sizeof(buf), "%s", kv->value);
      for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
           tok = strtok_r(NULL, ", ", &save)) {
        enum agent_status s;
        if (agent_status_parse(tok, &s) == 0)
          f.status_mask |= 1u << s;
      }
    } else if (strcmp(kv->key, "min_version") == 0) {
      f.min_version = kv->value;
    } else if (strcmp(kv->key, "max_load") == 0) {
      f.max_load = strtod(kv->value, NULL);
    } else {
      caps[nc++] = *kv;
    }
  }
  f.caps = caps;
  f.ncaps = nc;
  size_t nag;
  agent **ags = reg_agents(lc->reg, &nag);
  int err = ags ? sched_bcast_start(lc->loop, ags, nag, &f, COMMAND_MAX_CHILDREN, bcast_planned, p,
                                    &p->plan_job)
                : SM_ENOMEM;
  free(ags);
  free(caps);
  if (err) {
    finish(p, COMMAND_FAILED, "out of memory planning the broadcast");
    return;
  }
  p->plprev = NULL;
  p->plnext = lc->planning_head;
  if (lc->planning_head)
    lc->planning_head->plprev = p;
  lc->planning_head = p;
}

/* ---- registry events ---------------------------------------------------------------------- */

static void ev_register(void *ud, agent *a, int replaced) {
  lifecycle *lc = ud;
  if (!lc->closing) {
    lc_agent *g = sm_map_get(&lc->agents, a->id, a->id_len);
    for (lc_cmd *k = g ? g->head : NULL; k; k = k->anext) {
      /* the registry reset `assigned` for the new stream: count what it still holds */
      k->counted = 0;
      count_on(k, a);
    }
    sched_notify(lc->strategy, a, SCHED_EV_REGISTER);
    /* a new agent may take parked commands */
    while (lc->parked_head) {
      lc_cmd *k = lc->parked_head;
      unpark(lc, k);
      k->st = LS_QUEUED;
      if (sched_queue_requeue(&lc->q, &k->qi) != 0)
        sm_log_error("lifecycle", "queue out of memory", SM_LS("command_id", k->c->id));
    }
    tick_schedule(lc);
  }
  if (lc->cfg.agent_events.on_register)
    lc->cfg.agent_events.on_register(lc->cfg.agent_events.ud, a, replaced);
}

static const char *loss_reason(int reason) {
  switch (reason) {
  case SM_ECLOSED:
    return "disconnected";
  case SM_ETIMEDOUT:
    return "no message within AGENT_TIMEOUT";
  case SM_ECANCELED:
    return "manager shutting down";
  default:
    return sm_strerror(reason);
  }
}

static void ev_unregister(void *ud, agent *a, int reason) {
  lifecycle *lc = ud;
  if (!lc->closing) {
    lc_agent *g = sm_map_get(&lc->agents, a->id, a->id_len);
    lc_cmd *k = g ? g->head : NULL;
    while (k) {
      lc_cmd *next = k->anext; /* k may leave the list (and g may be freed) */
      if (k->st == LS_ONAGENT)
        requeue_or_fail(lc, k, loss_reason(reason));
      else
        k->counted = 0; /* held: waits for the agent to come back */
      k = next;
    }
    sched_notify(lc->strategy, a, SCHED_EV_UNREGISTER);
    for (lc_cmd *p = lc->planning_head; p; p = p->plnext)
      sched_bcast_agent_gone(p->plan_job, a); /* a broadcast still copying skips it */
  }
  if (lc->cfg.agent_events.on_unregister)
    lc->cfg.agent_events.on_unregister(lc->cfg.agent_events.ud, a, reason);
}

static void ev_update(void *ud, agent *a) {
  lifecycle *lc = ud;
  if (!lc->closing)
    sched_notify(lc->strategy, a, SCHED_EV_UPDATE);
  if (!lc->closing && sched_queue_len(&lc->q))
    tick_schedule(lc); /* the agent's load may have dropped */
  if (lc->cfg.agent_events.on_update)
    lc->cfg.agent_events.on_update(lc->cfg.agent_events.ud, a);
}

static void handle_result(lifecycle *lc, agent *a, const agent_result *r) {
  if (r->command_id == NULL)
    return;
  lc_cmd *k = sm_map_get(&lc->cmds, r->command_id, strlen(r->command_id));
  if (k == NULL || (k->st != LS_ONAGENT && k->st != LS_HELD) || k->c->agent_id == NULL ||
      strcmp(k->c->agent_id, a->id) != 0) {
    sm_log_debug("lifecycle", "result for a command not running here",
                 SM_LS("command_id", r->command_id), SM_LS("agent_id", a->id));
    return;
  }
  const char *s = r->status ? r->status : "";
  int progress = strcmp(s, "accepted") == 0 || strcmp(s, "running") == 0;
  command_status fin;
  if (strcmp(s, "completed") == 0)
    fin = COMMAND_COMPLETED;
  else if (strcmp(s, "failed") == 0 || strcmp(s, "rejected") == 0)
    fin = COMMAND_FAILED;
  else if (strcmp(s, "cancelled") == 0)
    fin = COMMAND_CANCELLED;
  else if (!progress) {
    sm_log_warn("lifecycle", "unknown result status", SM_LS("command_id", r->command_id),
                SM_LS("status", s));
    return;
  }
  if (k->st == LS_HELD) {
    /* adopted: the agent still had it after our restart */
    lc->held--;
    k->st = LS_ONAGENT;
    lc->inflight++;
    count_on(k, a);
    th_set(lc, k, sm_now_ms() + timeout_ms(lc, k->c));
  }
  if (progress) {
    if (k->c->status == COMMAND_DISPATCHED) {
      k->c->status = COMMAND_RUNNING;
      k->c->started_at = sm_now_ms();
      write_push(k, 0, 0, NULL, NULL);
      if (k->c->parent_id)
        child_running(lc, k);
    }
    return;
  }
  int64_t from = k->c->started_at ? k->c->started_at : k->c->dispatched_at;
  if (from > 0) /* feeds the adaptive strategy: how long and how well this agent ran it */
    sched_report_result(lc->strategy, a, (double)(sm_now_ms() - from) / 1000.0,
                        fin == COMMAND_COMPLETED);
  int64_t at = r->completed_at > 0 ? r->completed_at * 1000 : sm_now_ms();
  if (command_set_result(k->c, s, r->data, r->ndata, r->error && *r->error ? r->error : NULL, at) !=
      0)
    sm_log_error("lifecycle", "result out of memory", SM_LS("command_id", k->c->id));
  finish(k, fin, NULL);
}

static void ev_result(void *ud, agent *a, const agent_result *r) {
  lifecycle *lc = ud;
  if (!lc->closing)
    handle_result(lc, a, r);
  if (lc->cfg.agent_events.on_result)
    lc->cfg.agent_events.on_result(lc->cfg.agent_events.ud, a, r);
}

static void store_state(void *ud, int up) {
  lifecycle *lc = ud;
  lc->store_up = up;
  sm_log_info("lifecycle", up ? "store up" : "store down", SM_LS("store", store_name(lc->st)));
  if (up && !lc->closing) {
    lc->retry_ms = LC_RETRY_MIN_MS;
    uv_timer_stop(&lc->retry_timer);
    lc->retry_armed = 0;
    lc->retry_now = 1;
  }
  tick_schedule(lc);
  if (lc->cfg.on_store_state)
    lc->cfg.on_store_state(lc->cfg.hook_ud, up);
}

/* ---- publishing --------------------------------------------------------------------------- */

static void pub_free(lc_pub *p) {
  free(p->id);
  free(p->payload);
  free(p->reply_to);
  free(p->corr);
  free(p);
}

/* A confirmed result whose outbox entry is being removed. It stays in lc->removing (so that a
 * replay does not publish it again) until the store took the removal; a removal the store
 * refused (busy, away) waits in lc->rm_queue and is issued again by the sweep. */
typedef struct lc_removal {
  lifecycle *lc;
  char *id;
  struct lc_removal *next; /* in rm_queue while queued */
  int queued;
} lc_removal;

#define LC_RM_QUEUE_MAX 100000 /* refused removals kept for retry; beyond, a duplicate later */

static void removal_forget(lifecycle *lc, lc_removal *r) {
  if (sm_map_get(&lc->removing, r->id, strlen(r->id)) == r)
    sm_map_del(&lc->removing, r->id, strlen(r->id));
  free(r->id);
  free(r);
}

static void outbox_removed(void *ud, int err);

/* Issues r's removal; on an immediate refusal queues r for the sweep, or forgets (frees) it when
 * the queue is full. */
static void removal_issue(lifecycle *lc, lc_removal *r) {
  if (store_outbox_remove(lc->st, r->id, outbox_removed, r) == 0) {
    lc->ops_pending++;
    return;
  }
  if (lc->rm_queued >= LC_RM_QUEUE_MAX) {
    removal_forget(lc, r); /* the entry stays and is published again later: a duplicate */
    return;
  }
  r->queued = 1;
  r->next = lc->rm_queue;
  lc->rm_queue = r;
  lc->rm_queued++;
}

static void outbox_removed(void *ud, int err) {
  lc_removal *r = ud;
  lifecycle *lc = r->lc;
  lc->ops_pending--;
  if (err && !lc->closing) {
    sm_log_debug("lifecycle", "outbox removal failed, queued again", SM_LE(err));
    removal_issue(lc, r); /* r may be freed here */
    maybe_free_lc(lc);
    return;
  }
  removal_forget(lc, r);
  maybe_free_lc(lc);
}

/* Re-issues queued removals (from the sweep); stops at the first refusal. */
static void removals_retry(lifecycle *lc) {
  while (lc->rm_queue) {
    lc_removal *r = lc->rm_queue;
    if (store_outbox_remove(lc->st, r->id, outbox_removed, r) != 0)
      return;
    lc->rm_queue = r->next;
    lc->rm_queued--;
    r->queued = 0;
    r->next = NULL;
    lc->ops_pending++;
  }
}

/* Removes a confirmed result from the outbox, remembering the id until the store took it. */
static void outbox_remove(lifecycle *lc, const char *id) {
  lc_removal *r = sm_calloc(1, sizeof(*r));
  char *copy = r ? sm_strdup(id) : NULL;
  if (copy == NULL) {
    free(r);
    return; /* the entry stays and is published again later: a duplicate, not a loss */
  }
  r->lc = lc;
  r->id = copy;
  lc_removal *old = sm_map_get(&lc->removing, copy, strlen(copy));
  if (old != NULL) /* an earlier removal of the same id is pending: track the newest */
    sm_map_replace(&lc->removing, copy, strlen(copy), r);
  else if (sm_map_put(&lc->removing, copy, strlen(copy), r) != 0) {
    free(copy);
    free(r);
    return;
  }
  removal_issue(lc, r);
}

static void pub_settle(lc_pub *p) {
  lifecycle *lc = p->lc;
  sm_map_del(&lc->pubs, p->id, strlen(p->id));
  lc->pub_inflight--;
  if (!p->failed) {
    lc->stats.published++;
    outbox_remove(lc, p->id);
  } else {
    lc->stats.publish_failures++;
  }
  pub_free(p);
  if (lc->pub_inflight == 0 && lc->replay_more && !lc->replaying) {
    lc->replay_more = 0;
    lifecycle_outbox_replay(lc);
  }
}

static void pub_done(void *ud, int status) {
  lc_pub *p = ud;
  if (p->lc->closing)
    return; /* freed by lifecycle_close */
  if (status != 0)
    p->failed = 1;
  if (--p->outstanding == 0)
    pub_settle(p);
}

/* Publishes to the result queue and reply_to; takes payload. */
static void pub_send(lc_pub *p) {
  lifecycle *lc = p->lc;
  p->outstanding = 1; /* held while issuing so no answer settles p early */
  int err = lc->pub.publish(lc->pub.self, p->payload, p->len, lc->result_queue, NULL, pub_done, p);
  if (err == 0)
    p->outstanding++;
  else
    p->failed = 1;
  if (p->reply_to && *p->reply_to) {
    err = lc->pub.publish(lc->pub.self, p->payload, p->len, p->reply_to, p->corr, pub_done, p);
    if (err == 0)
      p->outstanding++;
    else
      p->failed = 1;
  }
  if (--p->outstanding == 0)
    pub_settle(p);
}

static lc_pub *pub_new(lifecycle *lc, const char *id, const char *reply_to, const char *corr) {
  if (sm_map_get(&lc->pubs, id, strlen(id)) != NULL)
    return NULL; /* a publish of this id is already in flight */
  lc_pub *p = sm_calloc(1, sizeof(*p));
  if (p == NULL)
    return NULL;
  p->lc = lc;
  p->id = sm_strdup(id);
  p->reply_to = reply_to ? sm_strdup(reply_to) : NULL;
  p->corr = corr ? sm_strdup(corr) : NULL;
  if (p->id == NULL || sm_map_put(&lc->pubs, p->id, strlen(p->id), p) != 0) {
    pub_free(p);
    return NULL;
  }
  lc->pub_inflight++;
  return p;
}

static void pub_start(lifecycle *lc, const char *id, char *payload, size_t len,
                      const char *reply_to, const char *corr) {
  lc_pub *p = lc->has_pub ? pub_new(lc, id, reply_to, corr) : NULL;
  if (p == NULL) {
    free(payload);
    return;
  }
  p->payload = payload;
  p->len = len;
  pub_send(p);
}

static void replay_got(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  lc_pub *p = ud;
  lifecycle *lc = p->lc;
  lc->ops_pending--;
  p->lookup = 0;
  if (lc->closing) {
    pub_free(p);
    maybe_free_lc(lc);
    return;
  }
  if (err == 0 && cmd != NULL) {
    free(p->reply_to);
    free(p->corr);
    p->reply_to = cmd->reply_to ? sm_strdup(cmd->reply_to) : NULL;
    p->corr = cmd->correlation_id ? sm_strdup(cmd->correlation_id) : NULL;
  }
  pub_send(p);
}

static void replay_listed(void *ud, int err, const store_outbox_item *items, size_t n) {
  lifecycle *lc = ud;
  lc->ops_pending--;
  lc->replaying = 0;
  if (lc->closing) {
    maybe_free_lc(lc);
    return;
  }
  if (err) {
    lc->replay_retry = 1;
    retry_arm(lc);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (sm_map_get(&lc->removing, items[i].id, strlen(items[i].id)) != NULL)
      continue; /* already confirmed; its removal is on its way */
    lc_pub *p = pub_new(lc, items[i].id, NULL, NULL);
    if (p == NULL)
      continue;
    p->payload = sm_malloc(items[i].len + 1);
    if (p->payload == NULL) {
      p->failed = 1;
      p->outstanding = 0;
      pub_settle(p);
      continue;
    }
    memcpy(p->payload, items[i].payload, items[i].len);
    p->payload[items[i].len] = '\0';
    p->len = items[i].len;
    /* reply_to lives in the command record */
    if (store_cmd_get(lc->st, p->id, replay_got, p) == 0) {
      lc->ops_pending++;
      p->lookup = 1;
    } else
      pub_send(p);
  }
  if (n > 0)
    sm_log_info("lifecycle", "outbox replayed", SM_LI("entries", n));
  lc->replay_more = n == LC_REPLAY_PAGE;
  if (lc->replay_again) {
    lc->replay_again = 0;
    lc->replay_more = 1;
  }
  if (lc->replay_more && lc->pub_inflight == 0) {
    lc->replay_more = 0;
    lifecycle_outbox_replay(lc);
  }
}

void lifecycle_outbox_replay(lifecycle *lc) {
  if (lc == NULL || lc->closing || !lc->has_pub)
    return;
  if (lc->replaying) {
    lc->replay_again = 1;
    return;
  }
  int err = store_outbox_list(lc->st, LC_REPLAY_PAGE, replay_listed, lc);
  if (err) {
    lc->replay_retry = 1;
    retry_arm(lc);
    return;
  }
  lc->replaying = 1;
  lc->ops_pending++;
}

static void sweep_cb(uv_timer_t *t);
static void sweep_cb(uv_timer_t *t) {
  lifecycle *lc = t->data;
  removals_retry(lc);
  if (lc->stats.publish_failures != lc->sweep_failures_seen || lc->pub_inflight == 0) {
    lc->sweep_failures_seen = lc->stats.publish_failures;
    lifecycle_outbox_replay(lc);
  }
}

/* ---- recovery ----------------------------------------------------------------------------- */

static void child_lookup_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  lc_cmd *p = ud;
  lifecycle *lc = p->lc;
  lc->ops_pending--;
  if (lc->closing) {
    p->child_lookups--;
    closing_release(lc, p);
    maybe_free_lc(lc);
    return;
  }
  p->child_lookups--;
  if (p->st == LS_PARENT) {
    if (err == SM_ENOENT || (err == 0 && command_status_is_final(cmd->status) &&
                             sm_map_get(&lc->cmds, cmd->id, strlen(cmd->id)) == NULL)) {
      p->child_done++;
      p->child_counts[err ? COMMAND_FAILED : cmd->status]++;
    } else if (err) {
      p->child_done++; /* unreadable child: counted as failed rather than waited on forever */
      p->child_counts[COMMAND_FAILED]++;
    }
    parent_aggregate(p);
  }
  maybe_free_cmd(lc, p);
}

static void recover_one(lifecycle *lc, const sm_command *src) {
  if (sm_map_get(&lc->cmds, src->id, strlen(src->id)) != NULL)
    return;
  sm_command *c = command_clone(src);
  lc_cmd *k = c ? cmd_track(lc, c) : NULL;
  if (k == NULL) {
    command_free(c);
    sm_log_error("lifecycle", "recovery out of memory", SM_LS("command_id", src->id));
    return;
  }
  lc->recovered++;
  if (c->broadcast && c->parent_id == NULL) {
    if (c->status == COMMAND_QUEUED) {
      bcast_expand(lc, k);
      return;
    }
    k->st = LS_PARENT;
    k->child_total = c->nchildren;
    for (size_t i = 0; i < c->nchildren; i++) {
      if (store_cmd_get(lc->st, c->children[i], child_lookup_cb, k) == 0) {
        lc->ops_pending++;
        k->child_lookups++;
      } else {
        k->child_done++;
        k->child_counts[COMMAND_FAILED]++;
      }
    }
    parent_aggregate(k);
    return;
  }
  if (c->status == COMMAND_QUEUED) {
    enqueue(lc, k);
    return;
  }
  k->st = LS_HELD;
  lc->held++;
  const char *aid = c->agent_id ? c->agent_id : c->target_agent;
  if (aid) {
    agent *a = agent_registry_find(lc->reg, aid, strlen(aid));
    bind_agent(lc, k, aid, a && a->link_ops ? a : NULL);
  }
  th_set(lc, k, sm_now_ms() + (int64_t)(lc->cfg.reconnect_grace_s * 1000.0));
}

static void recover_listed(void *ud, int err, sm_command *const *cmds, size_t n, const char *next) {
  lifecycle *lc = ud;
  lc->ops_pending--;
  if (lc->closing) {
    maybe_free_lc(lc);
    return;
  }
  if (err) {
    sm_log_warn("lifecycle", "recovery listing failed, retrying", SM_LE(err));
    lc->recover_retry = 1;
    retry_arm(lc);
    return;
  }
  for (size_t i = 0; i < n; i++)
    recover_one(lc, cmds[i]);
  free(lc->recover_cursor);
  lc->recover_cursor = next ? sm_strdup(next) : NULL;
  if (next != NULL && lc->recover_cursor != NULL) {
    recover_page(lc);
    return;
  }
  lc->recovering = 0;
  sm_log_info("lifecycle", "recovery done", SM_LI("commands", lc->recovered));
  if (lc->recover_done)
    lc->recover_done(lc->recover_ud, 0, lc->recovered);
  tick_schedule(lc);
}

static void recover_page(lifecycle *lc) {
  store_filter f = {.status_mask = COMMAND_MASK_ACTIVE};
  int err = store_cmd_list(lc->st, &f, lc->recover_cursor, LC_RECOVER_PAGE, recover_listed, lc);
  if (err) {
    lc->recover_retry = 1;
    retry_arm(lc);
    return;
  }
  lc->ops_pending++;
}

int lifecycle_recover(lifecycle *lc, void (*done)(void *ud, int err, size_t n), void *ud) {
  if (lc->recovering)
    return SM_ESTATE;
  lc->recovering = 1;
  lc->recovered = 0;
  lc->recover_done = done;
  lc->recover_ud = ud;
  free(lc->recover_cursor);
  lc->recover_cursor = NULL;
  recover_page(lc);
  return 0;
}

/* ---- submissions -------------------------------------------------------------------------- */

static void submit_created(void *ud, int err, const sm_command *cmd, int existed) {
  lc_submit *s = ud;
  lifecycle *lc = s->lc;
  lc->ops_pending--;
  lc->creating--;
  if (err == 0 && !existed && !lc->closing &&
      sm_map_get(&lc->cmds, s->cmd->id, strlen(s->cmd->id)) == NULL) {
    lc_cmd *k = cmd_track(lc, s->cmd);
    if (k != NULL) {
      s->cmd = NULL;
      lc->stats.received++;
      if (lc->cfg.on_received)
        lc->cfg.on_received(lc->cfg.hook_ud, k->c);
      if (k->c->broadcast)
        bcast_expand(lc, k);
      else
        enqueue(lc, k);
    } else {
      sm_log_error("lifecycle", "command stored but not tracked (recovered at restart)",
                   SM_LS("command_id", cmd->id));
    }
  } else if (err == 0 && existed) {
    lc->stats.duplicates++;
  } else if (err == SM_EUNAVAIL || err == SM_ETIMEDOUT || err == SM_ECLOSED) {
    err = SM_EUNAVAIL;
    lc->stats.refused_unavail++;
  }
  if (s->cb)
    s->cb(s->ud, err, cmd, existed);
  command_free(s->cmd);
  free(s);
  if (lc->closing)
    maybe_free_lc(lc);
  else
    tick_schedule(lc);
}

int lifecycle_submit(lifecycle *lc, sm_command *cmd, lifecycle_submit_cb cb, void *ud) {
  int err = 0;
  if (lc == NULL || cmd == NULL || cmd->type == NULL || lc->closing) {
    err = SM_EINVAL;
    goto fail;
  }
  if (!lc->store_up || lc->maintenance) {
    lc->stats.refused_unavail++;
    err = SM_EUNAVAIL;
    goto fail;
  }
  if (waiting(lc) >= lc->cfg.queue_size) {
    lc->stats.refused_full++;
    err = SM_ELIMIT;
    tick_schedule(lc); /* reports accepting = 0 */
    goto fail;
  }
  int64_t now = sm_now_ms();
  if (cmd->id == NULL) {
    char id[COMMAND_ID_LEN + 1];
    command_idgen_next(&lc->idgen, now, id);
    if ((err = command_set_str(&cmd->id, id)) != 0)
      goto fail;
  }
  if (cmd->instance == NULL && (err = command_set_str(&cmd->instance, lc->instance)) != 0)
    goto fail;
  cmd->status = COMMAND_QUEUED;
  cmd->attempts = 0;
  cmd->created_at = now;
  lc_submit *s = sm_calloc(1, sizeof(*s));
  if (s == NULL) {
    err = SM_ENOMEM;
    goto fail;
  }
  s->lc = lc;
  s->cmd = cmd;
  s->cb = cb;
  s->ud = ud;
  err = store_cmd_create(lc->st, cmd, submit_created, s);
  if (err) {
    free(s);
    if (err == SM_ETIMEDOUT || err == SM_ECLOSED)
      err = SM_EUNAVAIL;
    else if (err == SM_ELIMIT) /* the store's own request bound, not the waiting queue */
      err = SM_EAGAIN;
    goto fail;
  }
  lc->ops_pending++;
  lc->creating++;
  return 0;
fail:
  command_free(cmd);
  return err;
}

/* ---- cancel ------------------------------------------------------------------------------- */

static void cancel_store_cb(void *ud, int err, const sm_command *cmd, int existed);

static void cancel_tracked(lifecycle *lc, lc_cmd *k, lifecycle_cmd_cb cb, void *ud) {
  if (k->st == LS_FINAL) {
    defer_answer(lc, cb, ud, SM_ESTATE, k->c);
    return;
  }
  if (k->st == LS_ONAGENT || k->st == LS_HELD) {
    agent *a = k->c->agent_id ? agent_registry_find(lc->reg, k->c->agent_id, strlen(k->c->agent_id))
                              : NULL;
    if (a != NULL && a->link_ops != NULL) {
      sm_kv p = {"command_id", k->c->id};
      agent_command ac = {.id = k->c->id, .type = "cancel", .params = &p, .nparams = 1};
      agent_send(a, &ac);
    }
  }
  if (k->st == LS_PARENT) {
    k->st = LS_QUEUED; /* stop aggregating: the parent's own status is `cancelled` */
    for (size_t i = 0; i < k->c->nchildren; i++) {
      const char *cid = k->c->children[i];
      lc_cmd *ch = sm_map_get(&lc->cmds, cid, strlen(cid));
      if (ch != NULL && ch->st != LS_FINAL)
        cancel_tracked(lc, ch, NULL, NULL);
    }
  }
  finish_with(k, COMMAND_CANCELLED, NULL, cb, ud);
}

static void cancel_store_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  lc_cancel *x = ud;
  lifecycle *lc = x->lc;
  lc->ops_pending--;
  if (lc->closing) {
    if (x->cb)
      x->cb(x->ud, SM_ECANCELED, NULL);
    free(x);
    maybe_free_lc(lc);
    return;
  }
  if (x->stage == 0 && err == 0) {
    /* maybe it became tracked meanwhile (recovery) */
    lc_cmd *k = sm_map_get(&lc->cmds, cmd->id, strlen(cmd->id));
    if (k != NULL) {
      cancel_tracked(lc, k, x->cb, x->ud);
      free(x);
      return;
    }
    if (command_status_is_final(cmd->status)) {
      err = SM_ESTATE;
    } else {
      /* held by another manager instance (or stale): cancel in the store; the owner's next
       * write fails its compare-and-set and adopts the final status */
      sm_command *n = command_clone(cmd);
      char *payload = NULL;
      if (n != NULL) {
        command_status from = n->status;
        n->status = COMMAND_CANCELLED;
        n->completed_at = sm_now_ms();
        if (lc->has_pub) {
          cJSON *j = command_to_json(n);
          payload = j ? cJSON_PrintUnformatted(j) : NULL;
          cJSON_Delete(j);
        }
        x->stage = 1;
        err = store_cmd_update(lc->st, n, from, payload, payload ? strlen(payload) : 0,
                               cancel_store_cb, x);
        if (err == 0)
          lc->ops_pending++;
        free(payload);
        command_free(n);
        if (err == 0)
          return;
      } else {
        err = SM_ENOMEM;
      }
    }
  } else if (x->stage == 1 && err == 0 && lc->has_pub) {
    cJSON *j = command_to_json(cmd);
    char *payload = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (payload)
      pub_start(lc, cmd->id, payload, strlen(payload), cmd->reply_to, cmd->correlation_id);
  }
  if (retryable(err))
    err = SM_EUNAVAIL;
  if (x->cb)
    x->cb(x->ud, err, cmd);
  free(x);
}

int lifecycle_cancel(lifecycle *lc, const char *id, lifecycle_cmd_cb cb, void *ud) {
  if (lc == NULL || id == NULL || lc->closing)
    return SM_EINVAL;
  lc_cmd *k = sm_map_get(&lc->cmds, id, strlen(id));
  if (k != NULL) {
    cancel_tracked(lc, k, cb, ud);
    return 0;
  }
  if (!lc->store_up)
    return SM_EUNAVAIL;
  lc_cancel *x = sm_calloc(1, sizeof(*x));
  if (x == NULL)
    return SM_ENOMEM;
  x->lc = lc;
  x->cb = cb;
  x->ud = ud;
  int err = store_cmd_get(lc->st, id, cancel_store_cb, x);
  if (err) {
    free(x);
    return retryable(err) ? SM_EUNAVAIL : err;
  }
  lc->ops_pending++;
  return 0;
}

/* ---- the rest ----------------------------------------------------------------------------- */

int lifecycle_get(lifecycle *lc, const char *id, store_cmd_cb cb, void *ud) {
  return store_cmd_get(lc->st, id, cb, ud);
}

int lifecycle_list(lifecycle *lc, const store_filter *f, const char *cursor, size_t limit,
                   store_list_cb cb, void *ud) {
  return store_cmd_list(lc->st, f, cursor, limit, cb, ud);
}

void lifecycle_set_maintenance(lifecycle *lc, int on) {
  lc->maintenance = on ? 1 : 0;
  tick_schedule(lc);
}

void lifecycle_get_stats(const lifecycle *lc, lifecycle_stats *out) {
  *out = lc->stats;
  out->waiting = waiting(lc);
  out->parked = lc->nparked;
  out->inflight = lc->inflight;
  out->held = lc->held;
  out->pending_writes = lc->pending_writes;
}

int lifecycle_create(uv_loop_t *loop, const lifecycle_config *cfg, agent_registry *reg, store *st,
                     const lifecycle_publisher *publisher, sched_strategy *strategy,
                     lifecycle **out) {
  if (loop == NULL || cfg == NULL || reg == NULL || st == NULL || cfg->queue_size == 0 ||
      (publisher && publisher->publish == NULL))
    return SM_EINVAL;
  lifecycle *lc = sm_calloc(1, sizeof(*lc));
  if (lc == NULL)
    return SM_ENOMEM;
  lc->loop = loop;
  lc->cfg = *cfg;
  if (lc->cfg.timeout_grace_s <= 0)
    lc->cfg.timeout_grace_s = LC_GRACE_DEFAULT_S;
  if (lc->cfg.reconnect_grace_s <= 0)
    lc->cfg.reconnect_grace_s = LC_RECONNECT_GRACE_MAX_S;
  if (lc->cfg.store_retry_max_s <= 0)
    lc->cfg.store_retry_max_s = 5.0;
  if (lc->cfg.command_timeout_s <= 0)
    lc->cfg.command_timeout_s = 300;
  if (lc->cfg.max_agent_load <= 0)
    lc->cfg.max_agent_load = 0.8;
  if (lc->cfg.max_retries < 0)
    lc->cfg.max_retries = 0;
  lc->instance = sm_strdup(cfg->instance ? cfg->instance : "");
  lc->result_queue = cfg->result_queue ? sm_strdup(cfg->result_queue) : NULL;
  if (lc->instance == NULL || (cfg->result_queue && lc->result_queue == NULL)) {
    free(lc->instance);
    free(lc);
    return SM_ENOMEM;
  }
  lc->cfg.instance = lc->instance;
  lc->cfg.result_queue = lc->result_queue;
  if (strategy == NULL) {
    sched_set_config sc = {.default_strategy = "least_loaded",
                           .max_agent_load = lc->cfg.max_agent_load};
    int err = sched_set_create(loop, &sc, &strategy);
    if (err) {
      free(lc->instance);
      free(lc->result_queue);
      free(lc);
      return err;
    }
  }
  lc->own_strategy = 1; /* given or made here: the lifecycle destroys it */
  lc->strategy = strategy;
  size_t nag; /* agents that registered before the lifecycle existed */
  agent **ags = reg_agents(reg, &nag);
  if (ags == NULL || sched_sync(strategy, ags, nag) != 0)
    sm_log_error("lifecycle", "placement index out of memory", SM_LE(SM_ENOMEM));
  free(ags);
  lc->reg = reg;
  lc->st = st;
  if (publisher) {
    lc->pub = *publisher;
    lc->has_pub = 1;
  }
  command_idgen_init(&lc->idgen);
  sm_map_init(&lc->cmds, 0);
  sm_map_init(&lc->agents, 0);
  sm_map_init(&lc->pubs, 0);
  sm_map_init(&lc->removing, 0);
  sched_queue_init(&lc->q, cfg->queue_size);
  lc->retry_ms = LC_RETRY_MIN_MS;
  lc->store_up = store_is_up(st);
  lc->accepting_reported = -1;
  uv_idle_init(loop, &lc->tick);
  uv_timer_init(loop, &lc->due_timer);
  uv_timer_init(loop, &lc->retry_timer);
  uv_timer_init(loop, &lc->sweep_timer);
  lc->sweep_timer.data = lc;
  lc->tick.data = lc->due_timer.data = lc->retry_timer.data = lc;
  lc->handles_open = 4;
  agent_registry_events ev = {.on_register = ev_register,
                              .on_unregister = ev_unregister,
                              .on_update = ev_update,
                              .on_result = ev_result,
                              .ud = lc};
  agent_registry_set_events(reg, &ev);
  store_set_state_cb(st, store_state, lc);
  *out = lc;
  return 0;
}

int lifecycle_start(lifecycle *lc) {
  int err = lifecycle_recover(lc, NULL, NULL);
  if (err)
    return err;
  lifecycle_outbox_replay(lc);
  if (lc->has_pub)
    uv_timer_start(&lc->sweep_timer, sweep_cb, LC_OUTBOX_SWEEP_MS, LC_OUTBOX_SWEEP_MS);
  tick_schedule(lc);
  return 0;
}

static void maybe_free_lc(lifecycle *lc) {
  if (!lc->closing || lc->handles_open > 0 || lc->ops_pending > 0)
    return;
  free(lc->th);
  sched_queue_finish(&lc->q);
  sm_map_finish(&lc->cmds);
  sm_map_finish(&lc->agents);
  sm_map_finish(&lc->pubs);
  while (lc->rm_queue) { /* queued removals have no store operation pending */
    lc_removal *r = lc->rm_queue;
    lc->rm_queue = r->next;
    free(r->id);
    free(r);
  }
  sm_map_finish(&lc->removing); /* the others were freed by their store callbacks */
  free(lc->recover_cursor);
  free(lc->instance);
  free(lc->result_queue);
  if (lc->own_strategy)
    sched_strategy_destroy(lc->strategy);
  void (*closed)(void *) = lc->closed;
  void *cud = lc->closed_ud;
  free(lc);
  if (closed)
    closed(cud);
}

static void handle_closed(uv_handle_t *h) {
  lifecycle *lc = h->data;
  lc->handles_open--;
  maybe_free_lc(lc);
}

void lifecycle_close(lifecycle *lc, void (*closed)(void *ud), void *ud) {
  if (lc == NULL || lc->closing)
    return;
  lc->closing = 1;
  lc->closed = closed;
  lc->closed_ud = ud;
  agent_registry_events none = lc->cfg.agent_events;
  agent_registry_set_events(lc->reg, &none);
  store_set_state_cb(lc->st, NULL, NULL);
  /* free what no store callback refers to; the rest is freed in its callback. The agents are
   * not touched: the registry may be going away too. */
  size_t nk = 0, np = 0, ng = 0;
  void **all = sm_calloc(lc->cmds.len + lc->pubs.len + lc->agents.len + 1, sizeof(*all));
  if (all != NULL) {
    for (size_t i = 0; i < lc->cmds.cap; i++)
      if (lc->cmds.slots[i].key)
        all[nk++] = lc->cmds.slots[i].value;
    for (size_t i = 0; i < lc->pubs.cap; i++)
      if (lc->pubs.slots[i].key)
        all[nk + np++] = lc->pubs.slots[i].value;
    for (size_t i = 0; i < lc->agents.cap; i++)
      if (lc->agents.slots[i].key)
        all[nk + np + ng++] = lc->agents.slots[i].value;
  }
  sm_map_finish(&lc->cmds);
  sm_map_init(&lc->cmds, 0);
  sm_map_finish(&lc->pubs);
  sm_map_init(&lc->pubs, 0);
  sm_map_finish(&lc->agents);
  sm_map_init(&lc->agents, 0);
  for (size_t i = 0; i < nk; i++) {
    lc_cmd *k = all[i];
    k->ag = NULL;
    sched_bcast_cancel(k->plan_job); /* its callback must not run after close */
    k->plan_job = NULL;
    k->plprev = k->plnext = NULL;
    closing_release(lc, k);
  }
  for (size_t i = 0; i < np; i++) {
    lc_pub *p = all[nk + i];
    if (!p->lookup)
      pub_free(p); /* the publisher is closed first: no answer will come */
  }
  for (size_t i = 0; i < ng; i++) {
    lc_agent *g = all[nk + np + i];
    free(g->id);
    free(g);
  }
  free(all);
  while (lc->def_head) {
    lc_deferred *d = lc->def_head;
    lc->def_head = d->next;
    command_free(d->cmd);
    free(d);
  }
  uv_close((uv_handle_t *)&lc->tick, handle_closed);
  uv_close((uv_handle_t *)&lc->due_timer, handle_closed);
  uv_close((uv_handle_t *)&lc->retry_timer, handle_closed);
  uv_close((uv_handle_t *)&lc->sweep_timer, handle_closed);
}
