/* lc_machine.c - the state machine: the final transitions (finish, re-queue or fail), and the
 * reactions to everything that happens to a command: the events the mechanisms below report
 * (lc_events, see lifecycle-int.h), the registry's events (agents coming and going, their
 * results), the store's state and the loop turn. It is the one floor that ties the mechanisms
 * together; only the public API (lc_api.c) stands above it. */
#include "core/lifecycle-int.h"

#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

/* ---- transitions -------------------------------------------------------------------------- */

/* Makes k final with status s and writes it with its result to the outbox; a (or NULL) is
 * answered once that write is done. */
void lc_finish_with(lc_cmd *k, command_status s, const char *error, lc_answer *a) {
  lifecycle *lc = k->lc;
  sm_command *c = k->c;
  int64_t now = sm_now_ms();
  lc_detach_all(lc, k);
  if (s == COMMAND_EXPIRED && c->status == COMMAND_RUNNING)
    s = COMMAND_FAILED; /* running -> expired is not a valid transition */
  c->status = s;
  c->completed_at = now;
  if (error != NULL && !c->result.present &&
      command_set_result(c, command_status_name(s), NULL, 0, error, now) != 0)
    sm_log_error("lifecycle", "result out of memory", SM_LS("command_id", c->id));
  k->st = LS_FINAL;
  lc->stats.finished[s]++;
  if (lc->cfg.on_finished) {
    int64_t from = c->started_at ? c->started_at : c->dispatched_at;
    lc->cfg.on_finished(lc->cfg.hook_ud, c, from ? (double)(now - from) / 1000.0 : 0.0);
  }
  sm_log_debug("lifecycle", "command finished", SM_LS("command_id", c->id),
               SM_LS("status", command_status_name(s)));
  lc_write_push(k, 0, 1, a);
  if (c->parent_id)
    lc_child_finished(lc, k);
  lc_tick_schedule(lc); /* an agent slot may be free; k is freed once its writes are done */
}

void lc_finish(lc_cmd *k, command_status s, const char *error) {
  lc_finish_with(k, s, error, NULL);
}

/* Back to queued after the agent went away, or failed when retries are used up. */
void lc_requeue_or_fail(lifecycle *lc, lc_cmd *k, const char *why) {
  if (k->c->attempts > lc->cfg.max_retries) {
    char msg[256];
    snprintf(msg, sizeof(msg), "agent lost: %s", why);
    lc_finish(k, COMMAND_FAILED, msg);
    return;
  }
  lc_detach_all(lc, k);
  k->c->status = COMMAND_QUEUED;
  k->c->started_at = 0;
  lc->stats.retries++;
  sm_log_info("lifecycle", "command re-queued", SM_LS("command_id", k->c->id), SM_LS("reason", why),
              SM_LI("attempts", k->c->attempts));
  lc_write_push(k, 0, 0, NULL);
  lc_enqueue(lc, k);
}

/* ---- accepting ---------------------------------------------------------------------------- */

size_t lc_waiting(const lifecycle *lc) {
  return sched_queue_len(&lc->place.q) + lc->place.nparked + lc->place.creating;
}

int lifecycle_accepting(const lifecycle *lc) {
  return !lc->cl.closing && lc->store_up && !lc->maintenance && lc_waiting(lc) < lc->cfg.queue_size;
}

static void report_accepting(lifecycle *lc) {
  int now = lifecycle_accepting(lc);
  if (now != lc->accepting_reported) {
    lc->accepting_reported = now;
    sm_log_info("lifecycle", now ? "accepting commands" : "not accepting commands",
                SM_LB("store_up", lc->store_up), SM_LB("maintenance", lc->maintenance),
                SM_LI("waiting", lc_waiting(lc)));
    if (lc->cfg.on_accepting)
      lc->cfg.on_accepting(lc->cfg.hook_ud, now);
  }
}

/* ---- the mechanisms' events --------------------------------------------------------------- */

/* Stalled store work again: writes, then a recovery page and an outbox replay that failed. */
static void retry_pass(lifecycle *lc) {
  if (lc->cl.closing)
    return;
  lc_run_retries(lc);
  if (lc->rec.retry) {
    lc->rec.retry = 0;
    lc_recover_page(lc);
  }
  if (lc->ob.retry) {
    lc->ob.retry = 0;
    lifecycle_outbox_replay(lc);
  }
  if (sm_list_empty(&lc->wr.retry) && !lc->rec.retry && !lc->ob.retry)
    lc_retry_calm(lc);
}

void lc_on_turn(lifecycle *lc) {
  lc_answers_flush(lc, 0);
  if (lc->wr.now) {
    lc->wr.now = 0;
    retry_pass(lc);
  }
  if (!sm_list_empty(&lc->bc.stepping))
    lc_bcast_step(lc);
  if (sched_queue_len(&lc->place.q))
    lc_pump(lc);
  report_accepting(lc);
}

void lc_on_due(lc_cmd *k) {
  lifecycle *lc = k->lc;
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

void lc_on_failed(lc_cmd *k, const char *why) {
  lc_finish(k, COMMAND_FAILED, why);
}

void lc_on_children_done(lc_cmd *p, command_status s) {
  lc_finish(p, s, NULL);
}

void lc_on_final_in_store(lc_cmd *k) {
  if (k->st == LS_FINAL)
    return;
  lc_detach_all(k->lc, k);
  k->st = LS_FINAL;
  if (k->c->parent_id)
    lc_child_finished(k->lc, k);
}

/* ---- the store's state -------------------------------------------------------------------- */

void lc_store_state(void *ud, int up) {
  lifecycle *lc = ud;
  lc->store_up = up;
  sm_log_info("lifecycle", up ? "store up" : "store down", SM_LS("store", store_name(lc->st)));
  if (up && !lc->cl.closing)
    lc_retry_now(lc);
  lc_tick_schedule(lc);
  if (lc->cfg.on_store_state)
    lc->cfg.on_store_state(lc->cfg.hook_ud, up);
}

/* ---- registry events ---------------------------------------------------------------------- */

static void ev_register(void *ud, agent *a, int replaced) {
  lifecycle *lc = ud;
  if (!lc->cl.closing)
    lc_place_agent_back(lc, a);
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
  if (!lc->cl.closing) {
    lc_agent *g = lc_place_agent(lc, a->id, a->id_len);
    if (g != NULL) {
      /* k may leave the list, and the last one frees g: count down instead of walking to g */
      size_t n = g->n;
      sm_list *it = g->cmds.next;
      while (n-- > 0) {
        lc_cmd *k = SM_LIST_ENTRY(it, lc_cmd, ag.node);
        it = it->next;
        if (k->st == LS_ONAGENT)
          lc_requeue_or_fail(lc, k, loss_reason(reason));
        else
          k->ag.counted = 0; /* held: waits for the agent to come back */
      }
    }
    sched_notify(lc->strategy, a, SCHED_EV_UNREGISTER);
    lc_bcast_agent_gone(lc, a); /* a broadcast still copying skips it */
  }
  if (lc->cfg.agent_events.on_unregister)
    lc->cfg.agent_events.on_unregister(lc->cfg.agent_events.ud, a, reason);
}

static void ev_update(void *ud, agent *a) {
  lifecycle *lc = ud;
  if (!lc->cl.closing)
    sched_notify(lc->strategy, a, SCHED_EV_UPDATE);
  if (!lc->cl.closing && sched_queue_len(&lc->place.q))
    lc_tick_schedule(lc); /* the agent's load may have dropped */
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
    lc->place.held--;
    k->st = LS_ONAGENT;
    lc->place.inflight++;
    lc_count_on(k, a);
    lc_th_set(lc, k, sm_now_ms() + lc_timeout_ms(lc, k->c));
  }
  if (progress) {
    if (k->c->status == COMMAND_DISPATCHED) {
      k->c->status = COMMAND_RUNNING;
      k->c->started_at = sm_now_ms();
      lc_write_push(k, 0, 0, NULL);
      if (k->c->parent_id)
        lc_child_running(lc, k);
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
  lc_finish(k, fin, NULL);
}

static void ev_result(void *ud, agent *a, const agent_result *r) {
  lifecycle *lc = ud;
  if (!lc->cl.closing)
    handle_result(lc, a, r);
  if (lc->cfg.agent_events.on_result)
    lc->cfg.agent_events.on_result(lc->cfg.agent_events.ud, a, r);
}

/* Installs the lifecycle as the registry's listener (it forwards to cfg.agent_events). */
void lc_listen_registry(lifecycle *lc) {
  agent_registry_events ev = {.on_register = ev_register,
                              .on_unregister = ev_unregister,
                              .on_update = ev_update,
                              .on_result = ev_result,
                              .ud = lc};
  agent_registry_set_events(lc->reg, &ev);
}
