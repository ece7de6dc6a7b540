/* lc_cmd.c - the lifecycle's records and their bookkeeping, which decides nothing: the command
 * records (tracking, freeing once nothing refers to them), the answers owed to cancels (run now
 * or deferred to the next loop turn), the close bookkeeping, and small facts every floor needs
 * (which store errors are worth a retry, a command's execution timeout). It calls only the
 * clocks (lc_timers.c); see the floors in lifecycle-int.h. */
#include "core/lifecycle-int.h"

#include "util/alloc.h"
#include "util/err.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

int lc_retryable(int err) {
  return err == SM_EUNAVAIL || err == SM_ETIMEDOUT || err == SM_ECLOSED || err == SM_EAGAIN ||
         err == SM_ELIMIT || err == SM_EIO || err == SM_ECANCELED || err == SM_ENOMEM;
}

int64_t lc_timeout_ms(const lifecycle *lc, const sm_command *c) {
  double t = c->timeout_seconds > 0 ? (double)c->timeout_seconds : lc->cfg.command_timeout_s;
  return (int64_t)((t + lc->cfg.timeout_grace_s) * 1000.0);
}

/* ---- answers ------------------------------------------------------------------------------ */

lc_answer *lc_answer_new(lifecycle *lc, lifecycle_cmd_cb cb, void *ud) {
  lc_answer *a = sm_calloc(1, sizeof(*a));
  if (a == NULL)
    return NULL;
  sm_list_init(&a->node);
  a->lc = lc;
  a->cb = cb;
  a->ud = ud;
  return a;
}

/* Calls the answer's callback now (from a loop event) and frees it. */
void lc_answer_run(lc_answer *a, int err, const sm_command *c) {
  assert(!sm_list_linked(&a->node));
  if (a->cb)
    a->cb(a->ud, err, c);
  command_free(a->cmd);
  free(a);
}

/* Answers on the next loop turn (or, closing, before the lifecycle is freed, with
 * SM_ECANCELED). Cannot fail: the record is copied when memory allows, else cmd is NULL. */
void lc_answer_defer(lifecycle *lc, lc_answer *a, int err, const sm_command *c) {
  if (a == NULL)
    return;
  a->err = err;
  a->cmd = c ? command_clone(c) : NULL;
  sm_list_push_back(&lc->tick.answers, &a->node);
  lc_tick_schedule(lc);
}

/* Runs the deferred answers: as deferred, or (cancel) with SM_ECANCELED at the end of close. */
void lc_answers_flush(lifecycle *lc, int cancel) {
  sm_list *n;
  while ((n = sm_list_pop_front(&lc->tick.answers)) != NULL) {
    lc_answer *a = SM_LIST_ENTRY(n, lc_answer, node);
    if (cancel)
      lc_answer_run(a, SM_ECANCELED, NULL);
    else
      lc_answer_run(a, a->err, a->cmd);
  }
}

/* ---- command records ---------------------------------------------------------------------- */

lc_cmd *lc_cmd_track(lifecycle *lc, sm_command *c) {
  /* one timer heap slot per tracked command, so that setting its timer cannot fail later */
  if (lc_timers_reserve(lc, lc->cmds.len + 1) != 0)
    return NULL;
  lc_cmd *k = sm_calloc(1, sizeof(*k));
  if (k == NULL)
    return NULL;
  k->lc = lc;
  k->c = c;
  k->chain = c->status;
  k->tm.idx = SM_HEAP_NONE;
  sm_list_init(&k->wait);
  sm_list_init(&k->ag.node);
  sm_list_init(&k->wr.fifo);
  sm_list_init(&k->wr.retry);
  sm_list_init(&k->bc.step);
  sm_list_init(&k->bc.planning);
  sched_item_init(&k->qi, c->priority, c->deadline, ++lc->seq);
  k->qi.since_ms = c->created_at; /* aging counts from acceptance, also after a restart */
  if (sm_map_put(&lc->cmds, c->id, strlen(c->id), k) != 0) {
    free(k);
    return NULL;
  }
  return k;
}

void lc_write_free(lc_write *w) {
  command_free(w->snap);
  free(w->outbox);
  free(w);
}

/* Frees every write of k; their answers are deferred with SM_ECANCELED (k goes away: closing,
 * or final with nothing left to write). */
static void drop_writes(lifecycle *lc, lc_cmd *k) {
  sm_list *n;
  while ((n = sm_list_pop_front(&k->wr.fifo)) != NULL) {
    lc_write *w = SM_LIST_ENTRY(n, lc_write, node);
    if (w->answer)
      lc_answer_defer(lc, w->answer, SM_ECANCELED, NULL);
    lc_write_free(w);
    assert(lc->wr.pending > 0);
    lc->wr.pending--;
  }
  if (sm_list_linked(&k->wr.retry))
    sm_list_remove(&k->wr.retry);
}

/* k lets go of its broadcast work (freed, or the lifecycle closing). */
void lc_cmd_release_bcast(lc_cmd *k) {
  if (sm_list_linked(&k->bc.planning))
    sm_list_remove(&k->bc.planning);
  if (sm_list_linked(&k->bc.step))
    sm_list_remove(&k->bc.step);
  sched_bcast_cancel(k->bc.job); /* its callback must not run afterwards */
  k->bc.job = NULL;
  sched_bcast_plan_free(k->bc.plan);
  k->bc.plan = NULL;
}

/* Frees k; writes still queued answer SM_ECANCELED. */
static void cmd_free(lifecycle *lc, lc_cmd *k) {
  assert(!k->wr.writing && k->bc.lookups == 0);
  assert(lc->cl.closing || (k->tm.idx == SM_HEAP_NONE && k->ag.g == NULL));
  lc_cmd_release_bcast(k);
  if (sm_map_get(&lc->cmds, k->c->id, strlen(k->c->id)) == k)
    sm_map_del(&lc->cmds, k->c->id, strlen(k->c->id));
  drop_writes(lc, k);
  command_free(k->c);
  free(k);
}

/* While closing: frees k once no store callback refers to it any more. */
void lc_closing_release(lifecycle *lc, lc_cmd *k) {
  if (!k->wr.writing && k->bc.lookups == 0)
    cmd_free(lc, k);
}

/* Frees k once it is final and nothing is left to do for it (writes, broadcast work). */
void lc_maybe_free_cmd(lifecycle *lc, lc_cmd *k) {
  if (k->st == LS_FINAL && sm_list_empty(&k->wr.fifo) && !k->wr.writing &&
      !sm_list_linked(&k->wr.retry) && k->bc.lookups == 0 && k->bc.job == NULL &&
      k->bc.plan == NULL && !sm_list_linked(&k->bc.step))
    cmd_free(lc, k);
}

/* ---- closing ------------------------------------------------------------------------------ */

/* Reports ev->drained once the lifecycle is closing, its handles closed and every store
 * operation answered (lc is freed then: the caller must not touch it afterwards). */
void lc_maybe_free_lc(lifecycle *lc) {
  if (!lc->cl.closing || lc->cl.handles_open > 0 || lc->cl.ops_pending > 0)
    return;
  lc->ev->drained(lc);
}
