/* lifecycle.h - the command lifecycle: from an accepted submission to a published result.
 *
 * submit -> store `queued` -> waiting queue -> strategy picks an agent -> agent_send -> store
 * `dispatched` -> agent results (registry on_result) -> `running` -> final status with the result
 * JSON added to the outbox in the same store write -> publish (results queue, reply_to) -> on
 * confirm, outbox entry removed. Timeouts, deadlines, cancels, retries on agent loss, restart
 * recovery and store outages are handled here; nothing accepted is dropped.
 *
 * Store writes of one command happen in order (one in flight per command). A write that fails
 * because the store is away (SM_EUNAVAIL, SM_ETIMEDOUT, SM_ECLOSED) stays at the head of that
 * command's writes and is retried with backoff, and at once when the store reports it is up.
 *
 * Callbacks (the async contract): an API that returns 0 calls its callback exactly once, later,
 * from a loop event (never inside the call that requested it), also on error, on allocation
 * failure (SM_ENOMEM) and when the lifecycle is closed with the work pending (SM_ECANCELED, at
 * the latest before lifecycle_close's `closed` runs). An API that returns an error never calls
 * its callback. The caller keeps ud valid until the callback ran; the lifecycle never frees ud.
 * Records passed to callbacks are borrowed for the call.
 *
 * The lifecycle installs itself as the registry's event listener (forwarding to
 * cfg->agent_events) and as the store's state listener (forwarding through
 * cfg->on_store_state).
 */
#ifndef SM_CORE_LIFECYCLE_H
#define SM_CORE_LIFECYCLE_H

#include "model/command.h"
#include "core/registry.h"
#include "sched/strategy.h"
#include "store/store.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct lifecycle lifecycle;

/* Outcome of one publish: 0 confirmed by the broker; anything else: not confirmed (the result
 * stays in the outbox and is published again on the next replay). The publisher may call it
 * after lifecycle_close: ud stays valid until then (the lifecycle frees it at that answer). */
typedef void (*lifecycle_publish_cb)(void *ud, int status);

/* How results leave the process (RabbitMQ through lifecycle_mq.h, a fake in tests). */
typedef struct lifecycle_publisher {
  /* Publishes payload persistently to queue (NULL: the result queue) with correlation_id (NULL
   * or "": none). payload, queue and correlation_id are borrowed for the call. Returns 0 (cb
   * runs exactly once, later, also when the publisher closes: with an error) or an SM_E* code
   * (cb never runs; the lifecycle retries on the next replay). */
  int (*publish)(void *self, const char *payload, size_t len, const char *queue,
                 const char *correlation_id, lifecycle_publish_cb cb, void *ud);
  void *self;
} lifecycle_publisher;

/* Counters (for metrics). */
typedef struct lifecycle_stats {
  uint64_t received;                       /* submissions stored as new commands */
  uint64_t duplicates;                     /* submissions answered with an existing record */
  uint64_t refused_full;                   /* SM_ELIMIT answers (queue full) */
  uint64_t refused_unavail;                /* SM_EUNAVAIL answers (store down, maintenance) */
  uint64_t dispatched;                     /* sends to agents */
  uint64_t retries;                        /* commands re-queued after their agent was lost */
  uint64_t finished[COMMAND_STATUS_COUNT]; /* commands that reached each final status */
  uint64_t published;                      /* results confirmed by the broker */
  uint64_t publish_failures;               /* publishes refused or not confirmed */
  uint64_t store_retries;                  /* store writes retried after an outage */
  uint64_t writes_merged; /* store writes folded into a later one before they were sent */
  size_t waiting;         /* commands queued or parked here */
  size_t parked;          /* of which no connected agent could take */
  size_t inflight;        /* dispatched or running on agents */
  size_t held;            /* recovered, waiting for their agent to come back */
  size_t pending_writes;  /* store writes not yet acknowledged */
} lifecycle_stats;

typedef struct lifecycle_config {
  size_t queue_size;        /* COMMAND_QUEUE_SIZE: waiting commands admitted */
  double max_agent_load;    /* MAX_AGENT_LOAD */
  double command_timeout_s; /* COMMAND_TIMEOUT: default timeout_seconds */
  double timeout_grace_s;   /* extra time after timeout_seconds before timed_out; 0: 10 */
  int max_retries;          /* MAX_RETRIES: re-dispatches after agent loss */
  double reconnect_grace_s; /* recovery: time for agents to report dispatched/running
                               commands before they are re-queued; 0: 60 */
  const char *instance;     /* INSTANCE_ID stamped on accepted commands */
  const char *result_queue; /* queue name passed to publish; NULL: the publisher's default */
  double store_retry_max_s; /* backoff ceiling of store retries; 0: 5 */
  /* Optional hooks (metrics, intake pause/resume). */
  void (*on_received)(void *ud, const sm_command *c);                /* a new command stored */
  void (*on_finished)(void *ud, const sm_command *c, double exec_s); /* reached final status;
                                                          exec_s: started/dispatched to final */
  void (*on_accepting)(void *ud, int accepting); /* lifecycle_accepting() changed */
  void (*on_store_state)(void *ud, int up);      /* the store's state (forwarded) */
  void *hook_ud;
  agent_registry_events agent_events; /* forwarded after the lifecycle handled each event */
} lifecycle_config;

/* Answer to a submission: err 0 with the stored record (existed: an earlier submission with
 * the same id or idempotency key), or SM_EUNAVAIL (store down: 503), SM_ELIMIT (queue full:
 * 429), another SM_E* (500; SM_ECANCELED when the store closed with it pending). cmd is
 * borrowed for the call and may be NULL on error. */
typedef void (*lifecycle_submit_cb)(void *ud, int err, const sm_command *cmd, int existed);

/* Answer to a cancel: 0 with the cancelled record; SM_ESTATE with the final record (409);
 * SM_ENOENT (404); SM_EUNAVAIL (503); SM_ENOMEM (the cancel could not be recorded);
 * SM_ECANCELED (the lifecycle closed first). cmd is borrowed and may be NULL on error. */
typedef void (*lifecycle_cmd_cb)(void *ud, int err, const sm_command *cmd);

/* Creates the lifecycle (borrowing loop, reg and st, which must outlive it; cfg is copied).
 * publisher may be NULL (no RabbitMQ: results are stored, no outbox); it is copied, its self
 * borrowed. strategy: the placement strategy set (sched/strategy.h); once creation succeeded the
 * lifecycle owns it and destroys it at close; when creation fails it stays the caller's. NULL: a
 * least_loaded set made (and owned) here. It takes over the registry's and the store's listeners
 * (see above). Returns 0, SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int lifecycle_create(uv_loop_t *loop, const lifecycle_config *cfg,
                                   agent_registry *reg, store *st,
                                   const lifecycle_publisher *publisher, sched_strategy *strategy,
                                   lifecycle **out);

/* Starts: recovery (lifecycle_recover) and an outbox replay. Returns 0 or an SM_E* code. */
SM_MUST_CHECK int lifecycle_start(lifecycle *lc);

/* Reloads every non-final command from the store (paged): queued ones are enqueued;
 * dispatched/running ones are held for reconnect_grace_s, adopted by an agent that reports a
 * result for them, else re-queued. Retries by itself while the store is down. Returns 0, then
 * done (optional) runs exactly once: when the listing is complete (err 0, with the number of
 * commands taken over) or with SM_ECANCELED when the lifecycle closes first; or SM_ESTATE (a
 * recovery is running) / SM_EINVAL at once, without done. */
SM_MUST_CHECK int lifecycle_recover(lifecycle *lc, void (*done)(void *ud, int err, size_t n),
                                    void *ud);

/* Publishes every outbox entry again (at start and when the publisher reconnects). Duplicates
 * carry the same id. */
void lifecycle_outbox_replay(lifecycle *lc);

/* The publisher has room again after refusing for its window (call it from its ready
 * callback): the results held in memory meanwhile go out, and the outbox is replayed only if
 * some refused result could not be held. */
void lifecycle_publisher_ready(lifecycle *lc);

/* Submits a parsed command (source, idempotency_key, reply_to, correlation_id already set by
 * the intake). Takes ownership of cmd in every case (freed on error). Returns 0 (cb runs
 * exactly once, later, with the store's answer) or, at once without calling cb: SM_EUNAVAIL
 * (store down or maintenance mode), SM_ELIMIT (waiting queue full), SM_EAGAIN (the store's
 * request queue is full), SM_ENOMEM, SM_EINVAL (also after lifecycle_close). */
SM_MUST_CHECK int lifecycle_submit(lifecycle *lc, sm_command *cmd, lifecycle_submit_cb cb,
                                   void *ud);

/* Cancels a command in any non-final status (the agent is told when it holds it). Returns 0
 * (cb runs exactly once, later; see lifecycle_cmd_cb) or, at once without calling cb,
 * SM_EUNAVAIL, SM_ENOMEM or SM_EINVAL (also after lifecycle_close). */
SM_MUST_CHECK int lifecycle_cancel(lifecycle *lc, const char *id, lifecycle_cmd_cb cb, void *ud);

/* Pass-throughs to the store: its contract applies (store.h). */
SM_MUST_CHECK int lifecycle_get(lifecycle *lc, const char *id, store_cmd_cb cb, void *ud);
SM_MUST_CHECK int lifecycle_list(lifecycle *lc, const store_filter *f, const char *cursor,
                                 size_t limit, store_list_cb cb, void *ud);

/* Maintenance mode: new submissions are refused with SM_EUNAVAIL; work in flight continues. */
void lifecycle_set_maintenance(lifecycle *lc, int on);

/* Whether new submissions would be accepted now (store up, not maintenance, queue not full):
 * the AMQP intake pauses while this is 0 (cfg.on_accepting reports changes). */
int lifecycle_accepting(const lifecycle *lc);

/* Current counters. */
void lifecycle_get_stats(const lifecycle *lc, lifecycle_stats *out);

/* Stops all work and frees the lifecycle once its handles are closed and every store operation
 * it started has called back; then closed(ud) runs (optional). Before closed runs, every
 * callback still owed has run exactly once: cancels and recovery with SM_ECANCELED (queued
 * writes are not made), submissions and writes at the store with the store's answer. Publishes
 * awaiting their confirm are let go: their answers may come later and touch nothing but their
 * own state. Close the publisher before and the store after (pending store operations then
 * complete with SM_ECANCELED, which lets the lifecycle finish). NULL is fine. */
void lifecycle_close(lifecycle *lc, void (*closed)(void *ud), void *ud);

#endif
