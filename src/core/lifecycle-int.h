/* lifecycle-int.h - the lifecycle's internal structures, shared by the files that implement
 * lifecycle.h and by nothing else (never include it outside src/core/).
 *
 * The files stand on floors; a file calls only files on the floors below it:
 *
 *   8  lc_api.c      the public API: create / start / close, submit, cancel, pass-throughs
 *   7  lc_machine.c  the state machine: finish, re-queue or fail, and the reactions to the
 *                    mechanisms' events (lc_events), the registry, the store's state, the tick
 *   6  lc_recover.c  restart recovery
 *   5  lc_bcast.c    broadcast planning, children and the parent's aggregate
 *   4  lc_place.c    placement: waiting queue, parked list, per-agent lists, the pump
 *   3  lc_write.c    the per-command FIFO of store writes and their retries
 *   2  lc_outbox.c   publishing results, outbox removal, replay and sweep
 *   1  lc_cmd.c      the records: command tracking and freeing, answers, close bookkeeping
 *   0  lc_timers.c   the clocks: the loop tick, the heap of due times, the store-retry pacer
 *
 * What a lower floor must tell the state machine goes up through lc->ev (struct lc_events, set
 * once by lc_api.c at create), the way a libuv handle calls its owner's callback.
 *
 * Each tracked command is an lc_cmd holding the authoritative in-memory record and a FIFO of
 * store writes (snapshots of the record, each a compare-and-set on the status the previous write
 * left). The FIFO is bounded by the state machine itself: at most (MAX_RETRIES + 1) * 3 + 2
 * writes can exist for one command. One uv_idle "tick" gathers the work of a loop turn
 * (placement, deferred answers, store retries); one timer serves every deadline, execution
 * timeout and reconnect grace through a heap of due times; one timer paces store retries.
 */
#ifndef SM_CORE_LIFECYCLE_INT_H
#define SM_CORE_LIFECYCLE_INT_H

#include "core/lifecycle.h"

#include "sched/broadcast.h"
#include "sched/queue.h"
#include "util/heap.h"
#include "util/list.h"
#include "util/map.h"

#include <stddef.h>
#include <stdint.h>

#define LC_GRACE_DEFAULT_S 10.0       /* timeout grace when the config says 0 */
#define LC_RECONNECT_GRACE_MAX_S 60.0 /* reconnect grace when the config says 0 */
#define LC_RETRY_MIN_MS 100           /* first store retry delay */

enum lc_state {
  LS_QUEUED = 0, /* in the waiting queue */
  LS_PARKED,     /* no connected agent could take it: waits for a registration */
  LS_HELD,       /* recovered dispatched/running: waits for its agent to report */
  LS_ONAGENT,    /* dispatched or running on an agent */
  LS_PARENT,     /* broadcast parent tracking children */
  LS_FINAL,      /* final; writes still pending */
};

/* A cancel's answer, from the call that accepted it until its callback ran. It is allocated
 * before the cancel is accepted, so that no later step can fail to answer: it rides on a store
 * write or a store operation, or waits on lc->tick.answers for the next loop turn. */
typedef struct lc_answer {
  sm_list node; /* on lc->tick.answers while deferred */
  lifecycle *lc;
  lifecycle_cmd_cb cb; /* may be NULL */
  void *ud;
  int err;
  sm_command *cmd; /* the record answered with (owned), or NULL */
  int stage;       /* a cancel through the store: 0 reading, 1 updating */
} lc_answer;

typedef struct lc_write {
  sm_list node;            /* in the command's write FIFO */
  sm_command *snap;        /* the record to write */
  command_status expected; /* CAS: the status the store should hold */
  int create;              /* store_cmd_create instead of an update */
  char *outbox;            /* result JSON added to the outbox in the same write, or NULL */
  size_t outbox_len;
  lc_answer *answer; /* answered once written (cancel), or NULL */
} lc_write;

typedef struct lc_agent {
  char *id;
  sm_list cmds; /* lc_cmd.ag.node */
  size_t n;
} lc_agent;

typedef struct lc_cmd {
  lifecycle *lc;
  sm_command *c; /* authoritative record */
  enum lc_state st;
  command_status chain; /* status the store holds once every queued write is done */
  sched_item qi;        /* waiting queue entry */
  sm_list wait;         /* parked list (LS_PARKED) or a pump's stash */
  struct {
    size_t idx;  /* timer heap position, SM_HEAP_NONE when none */
    int64_t due; /* unix ms of the next timer event */
  } tm;
  struct {
    lc_agent *g;     /* per-agent list it is on, or NULL */
    sm_list node;    /* in g->cmds */
    int counted;     /* it counts in the agent's `assigned` */
    agent_handle ah; /* the agent generation it was counted on */
  } ag;
  struct {
    sm_list fifo;  /* lc_write.node, the head at (or next to go to) the store */
    sm_list retry; /* on lc->wr.retry while stalled */
    int writing;   /* the head write is at the store */
  } wr;
  struct { /* broadcast parent */
    size_t total, done, lookups;
    size_t counts[COMMAND_STATUS_COUNT];
    sched_bcast_job *job;   /* broadcast being planned on the work queue */
    sched_bcast_plan *plan; /* planned broadcast whose children are being created */
    size_t next;            /* next plan entry to create a child for */
    sm_list step;           /* on lc->bc.stepping while creating children */
    sm_list planning;       /* on lc->bc.planning while job is set */
  } bc;
} lc_cmd;

/* A result being published (lc_outbox.c). */
typedef struct lc_pub {
  lifecycle *lc; /* NULL once the lifecycle closed: the last answer frees it */
  char *id;
  char *payload;
  size_t len;
  char *reply_to;
  char *corr;
  int outstanding; /* publishes not yet answered */
  int lookup;      /* a store_cmd_get for its reply_to is pending */
  int failed;
  sm_list park; /* on lc->ob.parked: refused for the publisher's window, sent when it has room */
} lc_pub;

/* The events the mechanisms report upward, each named by what happened; lc_machine.c (lc_api.c
 * for drained) decides what follows. They are called from the loop, never while a mechanism's
 * own list is half updated, and may themselves call down into any mechanism. */
typedef struct lc_events {
  /* The loop turn that lc_tick_schedule asked for (lc_timers.c). */
  void (*turn)(lifecycle *lc);
  /* k's due time came (lc_timers.c; lc_place.c for a deadline found passed by the pump): by
   * k->st its deadline, its execution timeout or its reconnect grace. k is off the heap. */
  void (*due)(lc_cmd *k);
  /* A mechanism cannot carry k further (lc_place.c: unknown strategy; lc_bcast.c: the
   * broadcast could not be planned or matched no agent). */
  void (*failed)(lc_cmd *k, const char *why);
  /* Every child of broadcast parent p is accounted for; s aggregates them and p's result is
   * set (lc_bcast.c). */
  void (*children_done)(lc_cmd *p, command_status s);
  /* A write found k already final in the store, made so by another writer; k's queued writes
   * are done (lc_write.c). */
  void (*final_in_store)(lc_cmd *k);
  /* The lifecycle is closing, its handles are closed and no store operation is pending: it
   * may be freed (lc_cmd.c). */
  void (*drained)(lifecycle *lc);
} lc_events;

struct lifecycle {
  uv_loop_t *loop;
  const lc_events *ev;
  lifecycle_config cfg;
  char *instance;
  char *result_queue;
  agent_registry *reg;
  store *st;
  sched_strategy *strategy; /* owned */
  command_idgen idgen;
  uint64_t seq;
  sm_map cmds; /* id -> lc_cmd */
  lifecycle_stats stats;
  int maintenance;
  int store_up;
  int accepting_reported;
  struct { /* lc_place.c */
    sched_queue q;
    sm_list parked; /* lc_cmd.wait */
    size_t nparked;
    int overflow;    /* a result refused for the window could not be parked: replay when ready */
    size_t creating; /* submissions at the store */
    size_t inflight, held;
    sm_map agents; /* agent id -> lc_agent */
  } place;
  struct { /* lc_timers.c: the per-turn idle handle; lc_cmd.c: the deferred answers */
    uv_idle_t idle;
    int active;
    sm_list answers; /* lc_answer.node, deferred to the next turn */
  } tick;
  struct {        /* lc_timers.c */
    sm_heap heap; /* lc_cmd by tm.due */
    uv_timer_t timer;
  } tm;
  struct { /* lc_write.c; the retry pacer's fields (retry_ms, armed, now, timer): lc_timers.c */
    sm_list retry; /* lc_cmd.wr.retry: commands whose head write waits for a retry */
    uint64_t retry_ms;
    int armed;
    int now;        /* retry at the next tick (the store came up) */
    size_t pending; /* store writes queued on commands (all FIFOs together) */
    uv_timer_t timer;
  } wr;
  struct {            /* lc_bcast.c */
    sm_list stepping; /* lc_cmd.bc.step: parents creating their children */
    sm_list planning; /* lc_cmd.bc.planning: parents whose plan is being made */
  } bc;
  struct { /* lc_recover.c */
    int running, retry;
    char *cursor;
    size_t n;
    void (*done)(void *ud, int err, size_t n);
    void *ud;
  } rec;
  struct { /* lc_outbox.c */
    lifecycle_publisher pub;
    int has_pub;
    sm_map pubs;    /* command id -> lc_pub in flight (or parked) */
    sm_list parked; /* lc_pub.park: refused for the window, oldest first */
    size_t nparked;
    int overflow;     /* a result refused for the window could not be parked: replay when ready */
    sm_map removing;  /* command id -> lc_removal: confirmed, outbox removal in flight (a
                         replay must not publish those again) */
    sm_list rm_queue; /* lc_removal.node: removals the store refused, for the sweep */
    size_t rm_queued;
    int replaying, again, retry, more;
    size_t inflight;
    uv_timer_t sweep;       /* periodic outbox replay */
    uint64_t failures_seen; /* publish_failures at the last sweep */
  } ob;
  struct {
    int closing;
    int handles_open;
    size_t ops_pending; /* store operations whose callback has not run */
    void (*closed)(void *ud);
    void *ud;
  } cl;
};

/* lc_machine.c (floor 7) */
void lc_finish_with(lc_cmd *k, command_status s, const char *error, lc_answer *a);
void lc_finish(lc_cmd *k, command_status s, const char *error);
void lc_requeue_or_fail(lifecycle *lc, lc_cmd *k, const char *why);
size_t lc_waiting(const lifecycle *lc);
void lc_listen_registry(lifecycle *lc);
void lc_store_state(void *ud, int up);
void lc_on_turn(lifecycle *lc);
void lc_on_due(lc_cmd *k);
void lc_on_failed(lc_cmd *k, const char *why);
void lc_on_children_done(lc_cmd *p, command_status s);
void lc_on_final_in_store(lc_cmd *k);

/* lc_recover.c (floor 6) */
void lc_recover_page(lifecycle *lc);
int lc_recover_adopt(lifecycle *lc, const sm_command *src);
void lc_recover_cancel(lifecycle *lc);

/* lc_bcast.c (floor 5) */
void lc_bcast_expand(lifecycle *lc, lc_cmd *p);
void lc_bcast_step(lifecycle *lc);
int lc_parent_aggregate(lc_cmd *p);
void lc_child_finished(lifecycle *lc, lc_cmd *child);
void lc_child_running(lifecycle *lc, lc_cmd *child);
void lc_bcast_agent_gone(lifecycle *lc, const agent *a);

/* lc_place.c (floor 4) */
void lc_place_init(lifecycle *lc);
void lc_place_finish(lifecycle *lc);
void lc_enqueue(lifecycle *lc, lc_cmd *k);
void lc_detach_all(lifecycle *lc, lc_cmd *k);
void lc_bind_agent(lifecycle *lc, lc_cmd *k, const char *agent_id, agent *a);
void lc_count_on(lc_cmd *k, agent *a);
void lc_pump(lifecycle *lc);
void lc_place_close(lifecycle *lc, lc_cmd *k);
lc_agent *lc_place_agent(lifecycle *lc, const char *id, size_t len);
void lc_place_agent_back(lifecycle *lc, agent *a);

/* lc_write.c (floor 3) */
void lc_write_push(lc_cmd *k, int create, int with_outbox, lc_answer *a);
void lc_run_retries(lifecycle *lc);

/* lc_outbox.c (floor 2) */
void lc_outbox_init(lifecycle *lc);
void lc_pub_start(lifecycle *lc, const char *id, char *payload, size_t len, const char *reply_to,
                  const char *corr);
void lc_outbox_start(lifecycle *lc);
void lc_outbox_close(lifecycle *lc);
void lc_outbox_finish(lifecycle *lc);

/* lc_cmd.c (floor 1) */
int lc_retryable(int err);
int64_t lc_timeout_ms(const lifecycle *lc, const sm_command *c);
lc_answer *lc_answer_new(lifecycle *lc, lifecycle_cmd_cb cb, void *ud);
void lc_answer_defer(lifecycle *lc, lc_answer *a, int err, const sm_command *c);
void lc_answer_run(lc_answer *a, int err, const sm_command *c);
void lc_answers_flush(lifecycle *lc, int cancel);
lc_cmd *lc_cmd_track(lifecycle *lc, sm_command *c);
void lc_cmd_release_bcast(lc_cmd *k);
void lc_write_free(lc_write *w);
void lc_maybe_free_cmd(lifecycle *lc, lc_cmd *k);
void lc_closing_release(lifecycle *lc, lc_cmd *k);
void lc_maybe_free_lc(lifecycle *lc);

/* lc_timers.c (floor 0) */
void lc_tick_schedule(lifecycle *lc);
void lc_timers_init(lifecycle *lc);
void lc_timers_finish(lifecycle *lc);
SM_MUST_CHECK int lc_timers_reserve(lifecycle *lc, size_t n);
void lc_th_set(lifecycle *lc, lc_cmd *k, int64_t due);
void lc_th_remove(lifecycle *lc, lc_cmd *k);
void lc_retry_arm(lifecycle *lc);
void lc_retry_arm_busy(lifecycle *lc);
void lc_retry_calm(lifecycle *lc);
void lc_retry_now(lifecycle *lc);

#endif
