/* lc_api.c - the command lifecycle's public face (see lifecycle.h), the top floor: creation,
 * start and close, submissions, cancels and the pass-throughs to the store. The state machine
 * is lc_machine.c; the other floors are listed in lifecycle-int.h. */
#include "core/lifecycle-int.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct lc_submit {
  lifecycle *lc;
  sm_command *cmd;
  lifecycle_submit_cb cb;
  void *ud;
} lc_submit;

/* ---- submissions -------------------------------------------------------------------------- */

/* The store's answer to a submission: on success (cmd NULL: the record is s->cmd) the command
 * is tracked and the submitter answered before it is queued, so that the record it is answered
 * with is the one accepted. */
static void submit_created(void *ud, int err, const sm_command *cmd, int existed) {
  lc_submit *s = ud;
  lifecycle *lc = s->lc;
  assert(lc->cl.ops_pending > 0 && lc->place.creating > 0);
  lc->cl.ops_pending--;
  lc->place.creating--;
  lc_cmd *k = NULL;
  if (err == 0 && !existed) {
    if (!lc->cl.closing && sm_map_get(&lc->cmds, s->cmd->id, strlen(s->cmd->id)) == NULL &&
        (k = lc_cmd_track(lc, s->cmd)) != NULL) {
      s->cmd = NULL;
      lc->stats.received++;
    } else if (!lc->cl.closing) {
      sm_log_error("lifecycle", "command stored but not tracked (recovered at restart)",
                   SM_LS("command_id", s->cmd->id));
    }
  } else if (err == 0 && existed) {
    lc->stats.duplicates++;
    /* Stored by this instance but not tracked: an earlier submission's write ran although its
     * answer was lost (a timeout), and its client was told 503. The retry that finds it
     * carries it on, or it would wait for the next restart's recovery. */
    if (!lc->cl.closing && cmd != NULL && cmd->instance != NULL &&
        strcmp(cmd->instance, lc->instance) == 0 && lc_recover_adopt(lc, cmd))
      sm_log_info("lifecycle", "stored command adopted on resubmission",
                  SM_LS("command_id", cmd->id), SM_LS("status", command_status_name(cmd->status)));
  } else if (err == SM_EUNAVAIL || err == SM_ETIMEDOUT || err == SM_ECLOSED) {
    err = SM_EUNAVAIL;
    lc->stats.refused_unavail++;
  }
  if (s->cb)
    s->cb(s->ud, err, cmd != NULL ? cmd : (k != NULL ? k->c : s->cmd), existed);
  if (k != NULL) {
    if (lc->cfg.on_received)
      lc->cfg.on_received(lc->cfg.hook_ud, k->c);
    if (k->c->broadcast)
      lc_bcast_expand(lc, k);
    else
      lc_enqueue(lc, k);
  }
  command_free(s->cmd);
  free(s);
  if (lc->cl.closing)
    lc_maybe_free_lc(lc);
  else
    lc_tick_schedule(lc);
}

int lifecycle_submit(lifecycle *lc, sm_command *cmd, lifecycle_submit_cb cb, void *ud) {
  int err = 0;
  if (lc == NULL || cmd == NULL || cmd->type == NULL || lc->cl.closing) {
    err = SM_EINVAL;
    goto fail;
  }
  if (!lc->store_up || lc->maintenance) {
    lc->stats.refused_unavail++;
    err = SM_EUNAVAIL;
    goto fail;
  }
  if (lc_waiting(lc) >= lc->cfg.queue_size) {
    lc->stats.refused_full++;
    err = SM_ELIMIT;
    lc_tick_schedule(lc); /* reports accepting = 0 */
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
  lc->cl.ops_pending++;
  lc->place.creating++;
  return 0;
fail:
  command_free(cmd);
  return err;
}

/* ---- cancel ------------------------------------------------------------------------------- */

/* Cancels a tracked command; a (or NULL) is answered exactly once. */
static void cancel_tracked(lifecycle *lc, lc_cmd *k, lc_answer *a) {
  if (k->st == LS_FINAL) {
    lc_answer_defer(lc, a, SM_ESTATE, k->c);
    return;
  }
  if (k->st == LS_ONAGENT || k->st == LS_HELD) {
    agent *ag = k->c->agent_id
                    ? agent_registry_find(lc->reg, k->c->agent_id, strlen(k->c->agent_id))
                    : NULL;
    if (ag != NULL && ag->link_ops != NULL) {
      sm_kv p = {"command_id", k->c->id};
      agent_command ac = {.id = k->c->id, .type = "cancel", .params = &p, .nparams = 1};
      if (agent_send(ag, &ac) != 0) /* cancelled here whether the agent hears or not */
        sm_log_debug("lifecycle", "cancel not sent to the agent", SM_LS("command_id", k->c->id));
    }
  }
  if (k->st == LS_PARENT) {
    k->st = LS_QUEUED; /* stop aggregating: the parent's own status is `cancelled` */
    for (size_t i = 0; i < k->c->nchildren; i++) {
      const char *cid = k->c->children[i];
      lc_cmd *ch = sm_map_get(&lc->cmds, cid, strlen(cid));
      if (ch != NULL && ch->st != LS_FINAL)
        cancel_tracked(lc, ch, NULL);
    }
  }
  lc_finish_with(k, COMMAND_CANCELLED, NULL, a);
}

static void cancel_store_cb(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  lc_answer *a = ud;
  lifecycle *lc = a->lc;
  assert(lc->cl.ops_pending > 0);
  lc->cl.ops_pending--;
  if (lc->cl.closing) {
    lc_answer_run(a, SM_ECANCELED, NULL);
    lc_maybe_free_lc(lc);
    return;
  }
  if (a->stage == 0 && err == 0) {
    /* maybe it became tracked meanwhile (recovery) */
    lc_cmd *k = sm_map_get(&lc->cmds, cmd->id, strlen(cmd->id));
    if (k != NULL) {
      cancel_tracked(lc, k, a);
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
        if (lc->ob.has_pub) {
          cJSON *j = command_to_json(n);
          payload = j ? cJSON_PrintUnformatted(j) : NULL;
          cJSON_Delete(j);
        }
        a->stage = 1;
        err = store_cmd_update(lc->st, n, from, payload, payload ? strlen(payload) : 0,
                               cancel_store_cb, a);
        free(payload);
        if (err == 0) {
          lc->cl.ops_pending++;
          a->cmd = n; /* the record written: the store answers success without one */
          return;
        }
        command_free(n);
      } else {
        err = SM_ENOMEM;
      }
    }
  } else if (a->stage == 1 && err == 0 && lc->ob.has_pub) {
    cmd = a->cmd;
    cJSON *j = command_to_json(cmd);
    char *payload = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (payload) /* else the outbox entry is published by the next replay */
      lc_pub_start(lc, cmd->id, payload, strlen(payload), cmd->reply_to, cmd->correlation_id);
  }
  if (lc_retryable(err))
    err = SM_EUNAVAIL;
  lc_answer_run(a, err, cmd != NULL || err ? cmd : a->cmd);
}

int lifecycle_cancel(lifecycle *lc, const char *id, lifecycle_cmd_cb cb, void *ud) {
  if (lc == NULL || id == NULL || lc->cl.closing)
    return SM_EINVAL;
  lc_cmd *k = sm_map_get(&lc->cmds, id, strlen(id));
  if (k == NULL && !lc->store_up)
    return SM_EUNAVAIL;
  /* the answer exists before the cancel is accepted: no later step can fail to answer */
  lc_answer *a = lc_answer_new(lc, cb, ud);
  if (a == NULL)
    return SM_ENOMEM;
  if (k != NULL) {
    cancel_tracked(lc, k, a);
    return 0;
  }
  int err = store_cmd_get(lc->st, id, cancel_store_cb, a);
  if (err) {
    free(a);
    return lc_retryable(err) ? SM_EUNAVAIL : err;
  }
  lc->cl.ops_pending++;
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
  lc_tick_schedule(lc);
}

void lifecycle_get_stats(const lifecycle *lc, lifecycle_stats *out) {
  *out = lc->stats;
  out->waiting = lc_waiting(lc);
  out->parked = lc->place.nparked;
  out->inflight = lc->place.inflight;
  out->held = lc->place.held;
  out->pending_writes = lc->wr.pending;
}

/* ---- create, start, close ----------------------------------------------------------------- */

/* ev->drained: closing, the handles closed and every store operation answered. Callbacks still
 * owed run first, with SM_ECANCELED; then the lifecycle is freed and `closed` runs. */
static void drained(lifecycle *lc) {
  lc_answers_flush(lc, 1);
  lc_recover_cancel(lc);
  lc_timers_finish(lc);
  lc_place_finish(lc);
  sm_map_finish(&lc->cmds);
  lc_outbox_finish(lc);
  free(lc->rec.cursor);
  free(lc->instance);
  free(lc->result_queue);
  sched_strategy_destroy(lc->strategy);
  void (*closed)(void *) = lc->cl.closed;
  void *cud = lc->cl.ud;
  free(lc);
  if (closed)
    closed(cud);
}

/* Set once at create: how the mechanisms report upward (see lifecycle-int.h). */
static const lc_events events = {.turn = lc_on_turn,
                                 .due = lc_on_due,
                                 .failed = lc_on_failed,
                                 .children_done = lc_on_children_done,
                                 .final_in_store = lc_on_final_in_store,
                                 .drained = drained};

int lifecycle_create(uv_loop_t *loop, const lifecycle_config *cfg, agent_registry *reg, store *st,
                     const lifecycle_publisher *publisher, sched_strategy *strategy,
                     lifecycle **out) {
  int err = SM_EINVAL;
  lifecycle *lc = NULL;
  sched_strategy *made = NULL; /* a default set made here, destroyed here on failure */
  if (loop == NULL || cfg == NULL || reg == NULL || st == NULL || out == NULL ||
      cfg->queue_size == 0 || (publisher && publisher->publish == NULL))
    goto fail;
  err = SM_ENOMEM;
  lc = sm_calloc(1, sizeof(*lc));
  if (lc == NULL)
    goto fail;
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
  if (lc->instance == NULL || (cfg->result_queue && lc->result_queue == NULL))
    goto fail;
  lc->cfg.instance = lc->instance;
  lc->cfg.result_queue = lc->result_queue;
  if (strategy == NULL) {
    sched_set_config sc = {.default_strategy = "least_loaded",
                           .max_agent_load = lc->cfg.max_agent_load};
    err = sched_set_create(loop, &sc, &made);
    if (err)
      goto fail;
    strategy = made;
  }
  lc->strategy = strategy; /* given or made here: the lifecycle destroys it at close */
  size_t nagents;
  agent *const *agents = agent_registry_agents(reg, &nagents);
  err = sched_sync(lc->strategy, agents, nagents); /* agents registered before the lifecycle */
  if (err)
    goto fail;
  lc->reg = reg;
  lc->st = st;
  if (publisher) {
    lc->ob.pub = *publisher;
    lc->ob.has_pub = 1;
  }
  lc->ev = &events;
  command_idgen_init(&lc->idgen);
  sm_map_init(&lc->cmds, 0);
  lc_place_init(lc);
  lc_outbox_init(lc);
  lc_timers_init(lc);
  sm_list_init(&lc->wr.retry);
  sm_list_init(&lc->bc.stepping);
  sm_list_init(&lc->bc.planning);
  sm_list_init(&lc->tick.answers);
  lc->store_up = store_is_up(st);
  lc->accepting_reported = -1;
  lc->cl.handles_open = 4; /* tick, timers, retry, sweep */
  lc_listen_registry(lc);
  store_set_state_cb(st, lc_store_state, lc);
  *out = lc;
  return 0;
fail:
  if (lc != NULL) {
    free(lc->instance);
    free(lc->result_queue);
    free(lc);
  }
  sched_strategy_destroy(made); /* a given strategy stays the caller's when creation fails */
  return err;
}

int lifecycle_start(lifecycle *lc) {
  int err = lifecycle_recover(lc, NULL, NULL);
  if (err)
    return err;
  lc_outbox_start(lc);
  lc_tick_schedule(lc);
  return 0;
}

static void handle_closed(uv_handle_t *h) {
  lifecycle *lc = h->data;
  assert(lc->cl.handles_open > 0);
  lc->cl.handles_open--;
  lc_maybe_free_lc(lc);
}

void lifecycle_close(lifecycle *lc, void (*closed)(void *ud), void *ud) {
  if (lc == NULL || lc->cl.closing)
    return;
  lc->cl.closing = 1;
  lc->cl.closed = closed;
  lc->cl.ud = ud;
  agent_registry_events none = lc->cfg.agent_events;
  agent_registry_set_events(lc->reg, &none);
  store_set_state_cb(lc->st, NULL, NULL);
  /* Every command leaves every list (their heads are reset below) and the map; those a store
   * callback still refers to are freed in that callback, the others now. Queued writes answer
   * SM_ECANCELED. The agents are not touched: the registry may be going away too. */
  sm_list doomed;
  sm_list_init(&doomed);
  for (size_t i = 0; i < lc->cmds.cap; i++) {
    if (lc->cmds.slots[i].key == NULL)
      continue;
    lc_cmd *k = lc->cmds.slots[i].value;
    lc_place_close(lc, k);
    lc_cmd_release_bcast(k);
    if (sm_list_linked(&k->wr.retry))
      sm_list_remove(&k->wr.retry);
    sm_list_push_back(&doomed, &k->wait);
  }
  sm_map_finish(&lc->cmds);
  sm_map_init(&lc->cmds, 0);
  sm_heap_finish(&lc->tm.heap); /* empty; the commands' positions were reset above */
  for (size_t i = 0; i < lc->place.agents.cap; i++)
    if (lc->place.agents.slots[i].key) {
      lc_agent *g = lc->place.agents.slots[i].value;
      free(g->id);
      free(g);
    }
  sm_map_finish(&lc->place.agents);
  sm_map_init(&lc->place.agents, 0);
  sm_list *n;
  while ((n = sm_list_pop_front(&doomed)) != NULL)
    lc_closing_release(lc, SM_LIST_ENTRY(n, lc_cmd, wait));
  lc_outbox_close(lc);
  uv_close((uv_handle_t *)&lc->tick.idle, handle_closed);
  uv_close((uv_handle_t *)&lc->tm.timer, handle_closed);
  uv_close((uv_handle_t *)&lc->wr.timer, handle_closed);
  uv_close((uv_handle_t *)&lc->ob.sweep, handle_closed);
}
