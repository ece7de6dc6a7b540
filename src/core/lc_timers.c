/* lc_timers.c - the lifecycle's clocks, the ground floor (it calls no other lc_*.c file; what
 * comes due is reported through lc->ev, see lifecycle-int.h):
 *
 * - the tick: one uv_idle that gathers the work of a loop turn (lc_tick_schedule, reported as
 *   ev->turn);
 * - the due times: one timer for every deadline, execution timeout and reconnect grace, a heap
 *   of the commands' due times (util/heap.h) with the timer armed for the earliest (reported
 *   per command as ev->due);
 * - the store-retry pacer: one timer with a doubling pause (or a short one when the store was
 *   only busy); when it fires, the retries run on that loop turn (lc->wr.now). */
#include "core/lifecycle-int.h"

#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>

/* A store that refuses for being busy (its bounded queue of pending requests is full) is
 * working: its requests complete within milliseconds, so waiting writes are retried shortly,
 * without growing the outage backoff. */
#define LC_RETRY_BUSY_MS 10

/* ---- the tick ----------------------------------------------------------------------------- */

static void tick_cb(uv_idle_t *h) {
  lifecycle *lc = h->data;
  uv_idle_stop(h);
  lc->tick.active = 0;
  if (!lc->cl.closing)
    lc->ev->turn(lc);
}

void lc_tick_schedule(lifecycle *lc) {
  if (lc->tick.active || lc->cl.closing)
    return;
  lc->tick.active = 1;
  uv_idle_start(&lc->tick.idle, tick_cb);
}

/* ---- due times ---------------------------------------------------------------------------- */

static int due_less(const void *a, const void *b, void *ud) {
  (void)ud;
  return ((const lc_cmd *)a)->tm.due < ((const lc_cmd *)b)->tm.due;
}

static void due_moved(void *e, size_t i, void *ud) {
  (void)ud;
  ((lc_cmd *)e)->tm.idx = i;
}

static void due_cb(uv_timer_t *t);
static void retry_timer_cb(uv_timer_t *t);

void lc_timers_init(lifecycle *lc) {
  sm_heap_init(&lc->tm.heap, due_less, due_moved, lc, 0);
  uv_idle_init(lc->loop, &lc->tick.idle);
  uv_timer_init(lc->loop, &lc->tm.timer);
  uv_timer_init(lc->loop, &lc->wr.timer);
  lc->tick.idle.data = lc->tm.timer.data = lc->wr.timer.data = lc;
  lc->wr.retry_ms = LC_RETRY_MIN_MS;
}

void lc_timers_finish(lifecycle *lc) {
  sm_heap_finish(&lc->tm.heap);
}

/* Room for n commands in the heap: each tracked command has at most one entry, so reserving one
 * slot per tracked command when it is tracked makes every later lc_th_set infallible. */
int lc_timers_reserve(lifecycle *lc, size_t n) {
  size_t len = sm_heap_len(&lc->tm.heap);
  return n > len ? sm_heap_reserve(&lc->tm.heap, n - len) : 0;
}

static void arm(lifecycle *lc) {
  if (lc->cl.closing)
    return;
  lc_cmd *k = sm_heap_top(&lc->tm.heap);
  if (k == NULL) {
    uv_timer_stop(&lc->tm.timer);
    return;
  }
  int64_t d = k->tm.due - sm_now_ms();
  uv_timer_start(&lc->tm.timer, due_cb, d > 0 ? (uint64_t)d : 0, 0);
}

void lc_th_remove(lifecycle *lc, lc_cmd *k) {
  size_t i = k->tm.idx;
  if (i == SM_HEAP_NONE)
    return;
  assert(sm_heap_at(&lc->tm.heap, i) == k);
  sm_heap_remove(&lc->tm.heap, i);
  assert(k->tm.idx == SM_HEAP_NONE);
  if (i == 0)
    arm(lc);
}

/* Sets (or with due 0 clears) the command's timer event. */
void lc_th_set(lifecycle *lc, lc_cmd *k, int64_t due) {
  lc_th_remove(lc, k);
  if (due <= 0 || lc->cl.closing)
    return;
  k->tm.due = due;
  int err = sm_heap_push(&lc->tm.heap, k); /* cannot fail: reserved when k was tracked */
  assert(err == 0);
  if (err) {
    sm_log_error("lifecycle", "timer heap out of memory", SM_LS("command_id", k->c->id));
    return;
  }
  if (k->tm.idx == 0)
    arm(lc);
}

static void due_cb(uv_timer_t *t) {
  lifecycle *lc = t->data;
  int64_t now = sm_now_ms();
  lc_cmd *k;
  while ((k = sm_heap_top(&lc->tm.heap)) != NULL && k->tm.due <= now) {
    lc_th_remove(lc, k);
    lc->ev->due(k);
  }
  arm(lc);
}

/* ---- the store-retry pacer ---------------------------------------------------------------- */

static void retry_timer_cb(uv_timer_t *t) {
  lifecycle *lc = t->data;
  lc->wr.armed = 0;
  lc->wr.now = 1;
  lc_tick_schedule(lc);
}

/* Retries after the pause, which doubles up to store_retry_max_s (the store is away). */
void lc_retry_arm(lifecycle *lc) {
  if (lc->wr.armed || lc->cl.closing)
    return;
  lc->wr.armed = 1;
  uv_timer_start(&lc->wr.timer, retry_timer_cb, lc->wr.retry_ms, 0);
  uint64_t max = (uint64_t)(lc->cfg.store_retry_max_s * 1000.0);
  lc->wr.retry_ms = lc->wr.retry_ms * 2 > max ? max : lc->wr.retry_ms * 2;
}

/* Retries shortly: the store refused for being busy, or a retry pass stopped at its batch. */
void lc_retry_arm_busy(lifecycle *lc) {
  if (lc->wr.armed || lc->cl.closing)
    return;
  lc->wr.armed = 1;
  uv_timer_start(&lc->wr.timer, retry_timer_cb, LC_RETRY_BUSY_MS, 0);
}

/* The store answered: the next pause starts short again. */
void lc_retry_calm(lifecycle *lc) {
  lc->wr.retry_ms = LC_RETRY_MIN_MS;
}

/* The store came back: retry on the next loop turn, with the pause reset. */
void lc_retry_now(lifecycle *lc) {
  lc->wr.retry_ms = LC_RETRY_MIN_MS;
  uv_timer_stop(&lc->wr.timer);
  lc->wr.armed = 0;
  lc->wr.now = 1;
  lc_tick_schedule(lc);
}
