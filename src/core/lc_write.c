/* lc_write.c - the store writes of each command: a FIFO of snapshots, one at the store at a
 * time, each a compare-and-set on the status the previous one left; writes refused because the
 * store is away or busy wait on a retry list paced by the retry pacer (lc_timers.c). A written
 * final status with its outbox entry is handed to the outbox (lc_outbox.c) for publishing. */
#include "core/lifecycle-int.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* Writes issued per retry pass: a pass stops at the first refusal anyway, and this keeps one
 * pass from holding the loop when a large backlog waits. */
#define LC_RETRY_BATCH 2000

static void wq_issue(lc_cmd *k);

static lc_write *fifo_head(lc_cmd *k) {
  sm_list *n = sm_list_first(&k->wr.fifo);
  return n ? SM_LIST_ENTRY(n, lc_write, node) : NULL;
}

/* ---- retries ------------------------------------------------------------------------------ */

static void stall(lifecycle *lc, lc_cmd *k, int err) {
  if (!sm_list_linked(&k->wr.retry))
    sm_list_push_front(&lc->wr.retry, &k->wr.retry);
  if (err == SM_ELIMIT || err == SM_EAGAIN)
    lc_retry_arm_busy(lc);
  else
    lc_retry_arm(lc);
}

/* Issues the stalled writes again, in the order they stalled, until the store refuses one. */
void lc_run_retries(lifecycle *lc) {
  if (lc->cl.closing)
    return;
  sm_list due;
  sm_list_init(&due);
  sm_list_splice_back(&due, &lc->wr.retry);
  size_t issued = 0;
  sm_list *n;
  while ((n = sm_list_first(&due)) != NULL) {
    if (issued == LC_RETRY_BATCH) {
      lc_retry_arm_busy(lc); /* the rest on the next pass, soon */
      break;
    }
    lc_cmd *k = SM_LIST_ENTRY(n, lc_cmd, wr.retry);
    sm_list_remove(n);
    lc->stats.store_retries++;
    issued++;
    wq_issue(k);
    int refused = sm_list_linked(&k->wr.retry); /* stalled again at once: full or away */
    lc_maybe_free_cmd(lc, k);
    if (refused)
      break; /* stall() armed the timer; the rest waits with k */
  }
  /* what this pass did not reach goes back behind the few stalled during it */
  sm_list_splice_back(&lc->wr.retry, &due);
}

/* ---- the FIFO ----------------------------------------------------------------------------- */

static void head_done(lifecycle *lc, lc_cmd *k, int err, const sm_command *stored) {
  lc_write *w = fifo_head(k);
  assert(w != NULL);
  sm_list_remove(&w->node);
  assert(lc->wr.pending > 0);
  lc->wr.pending--;
  if (w->answer)
    lc_answer_run(w->answer, err, stored ? stored : k->c);
  if (err == 0 && w->outbox) {
    lc_pub_start(lc, w->snap->id, w->outbox, w->outbox_len, w->snap->reply_to,
                 w->snap->correlation_id);
    w->outbox = NULL;
  }
  lc_write_free(w);
}

/* The store shows another writer already made k final: the queued writes are done (answered
 * SM_ESTATE) and the state machine hears of it. */
static void adopt_final(lifecycle *lc, lc_cmd *k, const sm_command *stored) {
  while (!sm_list_empty(&k->wr.fifo))
    head_done(lc, k, SM_ESTATE, stored);
  lc->ev->final_in_store(k);
}

static void write_failed(lifecycle *lc, lc_cmd *k, int err, const sm_command *stored) {
  lc_write *w = fifo_head(k);
  if (lc_retryable(err)) {
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
  assert(lc->cl.ops_pending > 0 && k->wr.writing);
  lc->cl.ops_pending--;
  k->wr.writing = 0;
  if (lc->cl.closing) {
    lc_closing_release(lc, k);
    lc_maybe_free_lc(lc);
    return;
  }
  if (err == 0) {
    lc_retry_calm(lc);
    head_done(lc, k, 0, cmd);
    wq_issue(k);
  } else {
    write_failed(lc, k, err, cmd);
  }
  lc_maybe_free_cmd(lc, k);
}

static void wq_issue(lc_cmd *k) {
  lifecycle *lc = k->lc;
  lc_write *w = fifo_head(k);
  if (w == NULL || k->wr.writing || sm_list_linked(&k->wr.retry) || lc->cl.closing)
    return;
  int err = w->create ? store_cmd_create(lc->st, w->snap, write_cb, k)
                      : store_cmd_update(lc->st, w->snap, w->expected, w->outbox, w->outbox_len,
                                         write_cb, k);
  if (err == 0) {
    k->wr.writing = 1;
    lc->cl.ops_pending++;
    return;
  }
  write_failed(lc, k, err, NULL);
}

static lc_write *push_new(lifecycle *lc, lc_cmd *k, lc_write *w) {
  sm_list_push_back(&k->wr.fifo, &w->node);
  lc->wr.pending++;
  return w;
}

/* Appends a write of k's current record (with the result JSON for the outbox when with_outbox
 * and a publisher is set). a (or NULL) is answered once the write is done; when the write cannot
 * be made (out of memory) it is answered with SM_ENOMEM on the next loop turn. */
void lc_write_push(lc_cmd *k, int create, int with_outbox, lc_answer *a) {
  lifecycle *lc = k->lc;
  lc_write *w = sm_calloc(1, sizeof(*w));
  /* an update writes only the lifecycle fields: its snapshot copies only those */
  if (w == NULL || (w->snap = create ? command_clone(k->c) : command_clone_state(k->c)) == NULL) {
    free(w);
    sm_log_error("lifecycle", "store write out of memory", SM_LS("command_id", k->c->id));
    if (a != NULL)
      lc_answer_defer(lc, a, SM_ENOMEM, NULL);
    return;
  }
  w->create = create;
  w->expected = k->chain;
  k->chain = w->snap->status;
  w->answer = a;
  /* A write not yet at the store takes this one's place (dispatched then running then final
   * of a fast command: one write): the store never showed the skipped state, and the newer
   * record carries every field the older one would have written. The merged write keeps the
   * older one's compare-and-set status. Writes that answer someone stay as they are. */
  sm_list *tn = sm_list_last(&k->wr.fifo);
  lc_write *t = tn ? SM_LIST_ENTRY(tn, lc_write, node) : NULL;
  if (t != NULL && !create && !t->create && t->answer == NULL && t->outbox == NULL &&
      !(k->wr.writing && tn == sm_list_first(&k->wr.fifo)) &&
      command_transition_allowed(t->expected, w->snap->status)) {
    command_free(t->snap);
    t->snap = w->snap;
    t->answer = a;
    w->snap = NULL;
    free(w);
    w = t;
    lc->stats.writes_merged++;
  } else {
    w = push_new(lc, k, w);
  }
  if (with_outbox && lc->ob.has_pub) {
    cJSON *j = command_to_json(k->c);
    w->outbox = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (w->outbox == NULL)
      sm_log_error("lifecycle", "result JSON out of memory", SM_LS("command_id", k->c->id));
    else
      w->outbox_len = strlen(w->outbox);
  }
  wq_issue(k);
}
