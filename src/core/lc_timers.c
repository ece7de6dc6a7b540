/* lc_timers.c - one timer for every deadline, execution timeout and reconnect grace: a heap of
 * the commands' due times (util/heap.h), the timer armed for the earliest. */
#include "core/lifecycle-int.h"

#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>
#include <stdio.h>

static int due_less(const void *a, const void *b, void *ud) {
  (void)ud;
  return ((const lc_cmd *)a)->tm.due < ((const lc_cmd *)b)->tm.due;
}

static void due_moved(void *e, size_t i, void *ud) {
  (void)ud;
  ((lc_cmd *)e)->tm.idx = i;
}

static void due_cb(uv_timer_t *t);

void lc_timers_init(lifecycle *lc) {
  sm_heap_init(&lc->tm.heap, due_less, due_moved, lc, 0);
  uv_timer_init(lc->loop, &lc->tm.timer);
  lc->tm.timer.data = lc;
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
    switch (k->st) {
    case LS_QUEUED:
    case LS_PARKED:
      lc_finish(k, COMMAND_EXPIRED, "deadline passed before the command started");
      break;
    case LS_HELD:
      lc_requeue_or_fail(lc, k, "agent did not report after the manager restarted");
      break;
    case LS_ONAGENT: {
      agent *a = agent_handle_get(lc->reg, &k->ag.ah);
      if (a != NULL) {
        sm_kv p = {"command_id", k->c->id};
        agent_command ac = {.id = k->c->id, .type = "cancel", .params = &p, .nparams = 1};
        if (agent_send(a, &ac) != 0) /* the command is timed out either way */
          sm_log_debug("lifecycle", "cancel not sent to the agent", SM_LS("command_id", k->c->id));
        sched_report_result(lc->strategy, a, (double)lc_timeout_ms(lc, k->c) / 1000.0, 0);
      }
      char msg[96];
      snprintf(msg, sizeof(msg), "no result within %lld s",
               (long long)(lc_timeout_ms(lc, k->c) / 1000));
      lc_finish(k, COMMAND_TIMED_OUT, msg);
      break;
    }
    default:
      break;
    }
  }
  arm(lc);
}
