/* lc_recover.c - restart recovery: every non-final command in the store is taken over, page by
 * page. Queued ones wait again; dispatched/running ones are held for the reconnect grace,
 * adopted by the agent that reports them or re-queued; broadcast parents count their children
 * again from the store. */
#include "core/lifecycle-int.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define LC_RECOVER_PAGE 1000 /* commands per recovery page */

static void child_lookup_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  lc_cmd *p = ud;
  lifecycle *lc = p->lc;
  assert(lc->cl.ops_pending > 0 && p->bc.lookups > 0);
  lc->cl.ops_pending--;
  p->bc.lookups--;
  if (lc->cl.closing) {
    lc_closing_release(lc, p);
    lc_maybe_free_lc(lc);
    return;
  }
  if (p->st == LS_PARENT) {
    if (err == SM_ENOENT || (err == 0 && command_status_is_final(cmd->status) &&
                             sm_map_get(&lc->cmds, cmd->id, strlen(cmd->id)) == NULL)) {
      p->bc.done++;
      p->bc.counts[err ? COMMAND_FAILED : cmd->status]++;
    } else if (err) {
      p->bc.done++; /* unreadable child: counted as failed rather than waited on forever */
      p->bc.counts[COMMAND_FAILED]++;
    }
    lc_parent_aggregate(p);
  }
  lc_maybe_free_cmd(lc, p);
}

/* Tracks a stored non-final command this lifecycle does not track and carries it on from its
 * stored status. Returns 1 when it was taken. */
int lc_recover_adopt(lifecycle *lc, const sm_command *src) {
  if (sm_map_get(&lc->cmds, src->id, strlen(src->id)) != NULL ||
      command_status_is_final(src->status))
    return 0;
  sm_command *c = command_clone(src);
  lc_cmd *k = c ? lc_cmd_track(lc, c) : NULL;
  if (k == NULL) {
    command_free(c);
    sm_log_error("lifecycle", "recovery out of memory", SM_LS("command_id", src->id));
    return 0;
  }
  if (c->broadcast && c->parent_id == NULL) {
    if (c->status == COMMAND_QUEUED) {
      lc_bcast_expand(lc, k);
      return 1;
    }
    k->st = LS_PARENT;
    k->bc.total = c->nchildren;
    if (c->nchildren_planned > c->nchildren) {
      /* planned children the crash left uncreated never ran: counted as failed */
      k->bc.total = c->nchildren_planned;
      k->bc.done = c->nchildren_planned - c->nchildren;
      k->bc.counts[COMMAND_FAILED] = k->bc.done;
    }
    for (size_t i = 0; i < c->nchildren; i++) {
      if (store_cmd_get(lc->st, c->children[i], child_lookup_cb, k) == 0) {
        lc->cl.ops_pending++;
        k->bc.lookups++;
      } else {
        k->bc.done++;
        k->bc.counts[COMMAND_FAILED]++;
      }
    }
    lc_parent_aggregate(k);
    return 1;
  }
  if (c->status == COMMAND_QUEUED) {
    lc_enqueue(lc, k);
    return 1;
  }
  k->st = LS_HELD;
  lc->place.held++;
  const char *aid = c->agent_id ? c->agent_id : c->target_agent;
  if (aid) {
    agent *a = agent_registry_find(lc->reg, aid, strlen(aid));
    lc_bind_agent(lc, k, aid, a && a->link_ops ? a : NULL);
  }
  lc_th_set(lc, k, sm_now_ms() + (int64_t)(lc->cfg.reconnect_grace_s * 1000.0));
  return 1;
}

static void retry_later(lifecycle *lc) {
  lc->rec.retry = 1;
  lc_retry_arm(lc);
}

static void recover_listed(void *ud, int err, sm_command *const *cmds, size_t n, const char *next) {
  lifecycle *lc = ud;
  assert(lc->cl.ops_pending > 0);
  lc->cl.ops_pending--;
  if (lc->cl.closing) {
    lc_maybe_free_lc(lc);
    return;
  }
  if (err) {
    sm_log_warn("lifecycle", "recovery listing failed, retrying", SM_LE(err));
    retry_later(lc);
    return;
  }
  for (size_t i = 0; i < n; i++)
    lc->rec.n += (size_t)lc_recover_adopt(lc, cmds[i]);
  if (next != NULL) {
    char *cursor = sm_strdup(next);
    if (cursor == NULL) { /* the same page again later: the commands taken are skipped */
      sm_log_warn("lifecycle", "recovery out of memory, retrying", SM_LE(SM_ENOMEM));
      retry_later(lc);
      return;
    }
    free(lc->rec.cursor);
    lc->rec.cursor = cursor;
    lc_recover_page(lc);
    return;
  }
  free(lc->rec.cursor);
  lc->rec.cursor = NULL;
  lc->rec.running = 0;
  sm_log_info("lifecycle", "recovery done", SM_LI("commands", lc->rec.n));
  if (lc->rec.done)
    lc->rec.done(lc->rec.ud, 0, lc->rec.n);
  lc_tick_schedule(lc);
}

void lc_recover_page(lifecycle *lc) {
  store_filter f = {.status_mask = COMMAND_MASK_ACTIVE};
  int err = store_cmd_list(lc->st, &f, lc->rec.cursor, LC_RECOVER_PAGE, recover_listed, lc);
  if (err) {
    retry_later(lc);
    return;
  }
  lc->cl.ops_pending++;
}

int lifecycle_recover(lifecycle *lc, void (*done)(void *ud, int err, size_t n), void *ud) {
  if (lc == NULL || lc->cl.closing)
    return SM_EINVAL;
  if (lc->rec.running)
    return SM_ESTATE;
  lc->rec.running = 1;
  lc->rec.n = 0;
  lc->rec.done = done;
  lc->rec.ud = ud;
  free(lc->rec.cursor);
  lc->rec.cursor = NULL;
  lc_recover_page(lc);
  return 0;
}

/* At the end of close: a recovery that did not finish answers SM_ECANCELED. */
void lc_recover_cancel(lifecycle *lc) {
  if (!lc->rec.running)
    return;
  lc->rec.running = 0;
  if (lc->rec.done)
    lc->rec.done(lc->rec.ud, SM_ECANCELED, lc->rec.n);
}
