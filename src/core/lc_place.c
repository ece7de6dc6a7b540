/* lc_place.c - placement: the waiting queue, the parked list, the per-agent lists, and the pump
 * that gives waiting commands to agents. A command the pump finds past its deadline is reported
 * as ev->due, one it cannot place at all as ev->failed; the registry's events reach it through
 * the state machine (lc_machine.c). */
#include "core/lifecycle-int.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define LC_SCAN_MAX 64               /* consecutive unplaceable commands a pump looks past */
#define LC_PUMP_MAX 4096             /* dispatches per loop turn; the rest on the next turn */
#define LC_PUMP_BUDGET_NS 2000000ULL /* loop time a pump may take; the rest on the next turn */

void lc_place_init(lifecycle *lc) {
  sched_queue_init(&lc->place.q, lc->cfg.queue_size);
  sm_list_init(&lc->place.parked);
  sm_map_init(&lc->place.agents, 0);
}

void lc_place_finish(lifecycle *lc) {
  sched_queue_finish(&lc->place.q);
  sm_map_finish(&lc->place.agents);
}

/* ---- per-agent lists ---------------------------------------------------------------------- */

static void uncount(lifecycle *lc, lc_cmd *k) {
  if (!k->ag.counted)
    return;
  k->ag.counted = 0;
  agent *a = agent_handle_get(lc->reg, &k->ag.ah);
  if (a != NULL && a->assigned > 0) {
    a->assigned--;
    a->load = agent_load_compute(a);
    sched_notify(lc->strategy, a, SCHED_EV_UPDATE);
  }
}

void lc_count_on(lc_cmd *k, agent *a) {
  if (k->ag.counted)
    return;
  k->ag.counted = 1;
  agent_handle_set(&k->ag.ah, a);
  a->assigned++;
  a->load = agent_load_compute(a);
  sched_notify(k->lc->strategy, a, SCHED_EV_UPDATE);
}

/* Puts k on the list of agent_id (and counts it on a when a is live). */
void lc_bind_agent(lifecycle *lc, lc_cmd *k, const char *agent_id, agent *a) {
  assert(k->ag.g == NULL);
  lc_agent *g = sm_map_get(&lc->place.agents, agent_id, strlen(agent_id));
  if (g == NULL) {
    g = sm_calloc(1, sizeof(*g));
    if (g == NULL || (g->id = sm_strdup(agent_id)) == NULL ||
        sm_map_put(&lc->place.agents, g->id, strlen(g->id), g) != 0) {
      if (g)
        free(g->id);
      free(g);
      sm_log_error("lifecycle", "agent index out of memory", SM_LS("agent_id", agent_id));
      return;
    }
    sm_list_init(&g->cmds);
  }
  k->ag.g = g;
  sm_list_push_front(&g->cmds, &k->ag.node);
  g->n++;
  if (a != NULL)
    lc_count_on(k, a);
}

static void unbind_agent(lifecycle *lc, lc_cmd *k) {
  uncount(lc, k);
  lc_agent *g = k->ag.g;
  if (g == NULL)
    return;
  sm_list_remove(&k->ag.node);
  k->ag.g = NULL;
  assert(g->n > 0);
  if (--g->n == 0) {
    assert(sm_list_empty(&g->cmds));
    sm_map_del(&lc->place.agents, g->id, strlen(g->id));
    free(g->id);
    free(g);
  }
}

/* ---- waiting ------------------------------------------------------------------------------ */

static void park(lifecycle *lc, lc_cmd *k) {
  assert(!sm_list_linked(&k->wait));
  k->st = LS_PARKED;
  sm_list_push_front(&lc->place.parked, &k->wait);
  lc->place.nparked++;
}

static void unpark(lifecycle *lc, lc_cmd *k) {
  if (k->st != LS_PARKED)
    return;
  sm_list_remove(&k->wait);
  assert(lc->place.nparked > 0);
  lc->place.nparked--;
}

/* Takes k out of whatever waiting structure holds it (queue, parked, timers, agent). */
void lc_detach_all(lifecycle *lc, lc_cmd *k) {
  sched_queue_remove(&lc->place.q, &k->qi);
  unpark(lc, k);
  lc_th_remove(lc, k);
  if (k->st == LS_ONAGENT)
    lc->place.inflight--;
  if (k->st == LS_HELD)
    lc->place.held--;
  unbind_agent(lc, k);
}

/* Queues k for placement (status queued in memory). */
void lc_enqueue(lifecycle *lc, lc_cmd *k) {
  k->st = LS_QUEUED;
  if (sched_queue_requeue(&lc->place.q, &k->qi) != 0) {
    /* the queue could not grow: wait parked (placed again at the next registration) rather
     * than lose an accepted command */
    sm_log_error("lifecycle", "waiting queue out of memory", SM_LS("command_id", k->c->id));
    park(lc, k);
  }
  lc_th_set(lc, k, k->c->deadline);
  lc_tick_schedule(lc);
}

/* While closing: k leaves every list of this file (the lists' heads are about to go). */
void lc_place_close(lifecycle *lc, lc_cmd *k) {
  (void)lc;
  if (sm_list_linked(&k->wait))
    sm_list_remove(&k->wait);
  if (k->ag.g != NULL)
    sm_list_remove(&k->ag.node);
  k->ag.g = NULL;
  k->tm.idx = SM_HEAP_NONE;
}

/* ---- the pump ----------------------------------------------------------------------------- */

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
  lc->place.inflight++;
  lc_bind_agent(lc, k, a->id, a);
  lc_th_set(lc, k, now + lc_timeout_ms(lc, c));
  lc->stats.dispatched++;
  lc_write_push(k, 0, 0, NULL);
  sm_log_debug("lifecycle", "command dispatched", SM_LS("command_id", c->id),
               SM_LS("agent_id", a->id), SM_LI("attempt", c->attempts));
  return 0;
}

void lc_pump(lifecycle *lc) {
  size_t misses = 0, sent = 0;
  sm_list stash;
  sm_list_init(&stash);
  int64_t now = sm_now_ms();
  uint64_t t0 = uv_hrtime();
  while (sent < LC_PUMP_MAX && misses < LC_SCAN_MAX) {
    sched_item *it = sched_queue_pop_at(&lc->place.q, now);
    if (it == NULL)
      break;
    lc_cmd *k = (lc_cmd *)((char *)it - offsetof(lc_cmd, qi));
    sm_command *c = k->c;
    if (c->deadline > 0 && c->deadline <= now) {
      assert(k->st == LS_QUEUED); /* so the due event reads it as the deadline */
      lc->ev->due(k);             /* its deadline: expired before it started */
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
      lc->ev->failed(k, "unknown strategy");
      continue;
    }
    if (err == 0) {
      lc_th_remove(lc, k);
      err = dispatch(lc, k, a);
      if (err == 0) {
        sent++;
        misses = 0;
        if ((sent & 63) == 0 && uv_hrtime() - t0 > LC_PUMP_BUDGET_NS) {
          lc_tick_schedule(lc); /* keep the loop responsive: the rest on the next turn */
          break;
        }
        continue;
      }
      lc_th_set(lc, k, c->deadline);
      err = SM_EAGAIN;
    }
    misses++;
    if (err == SM_ENOENT) {
      park(lc, k);
      continue;
    }
    assert(!sm_list_linked(&k->wait));
    sm_list_push_front(&stash, &k->wait);
    if ((rq.agent_id == NULL || *rq.agent_id == '\0') && rq.ncaps == 0)
      break; /* no agent has room at all: nothing behind can be placed either */
  }
  sm_list *n;
  while ((n = sm_list_pop_front(&stash)) != NULL) {
    lc_cmd *k = SM_LIST_ENTRY(n, lc_cmd, wait);
    int err = sched_queue_requeue(&lc->place.q, &k->qi);
    assert(err == 0); /* it was popped this turn: its slot is still there */
    if (err)
      park(lc, k);
  }
  if (sent == LC_PUMP_MAX)
    lc_tick_schedule(lc);
}

/* ---- agents coming and going ------------------------------------------------------------- */

/* The per-agent list of id, or NULL when no command is on it. */
lc_agent *lc_place_agent(lifecycle *lc, const char *id, size_t len) {
  return sm_map_get(&lc->place.agents, id, len);
}

/* Agent a (re-)registered: what it still holds counts on it again, and the parked commands go
 * back to the queue (a new agent may take them). */
void lc_place_agent_back(lifecycle *lc, agent *a) {
  lc_agent *g = lc_place_agent(lc, a->id, a->id_len);
  if (g != NULL)
    SM_LIST_FOREACH(it, &g->cmds) {
      /* the registry reset `assigned` for the new stream: count what it still holds */
      lc_cmd *k = SM_LIST_ENTRY(it, lc_cmd, ag.node);
      k->ag.counted = 0;
      lc_count_on(k, a);
    }
  sched_notify(lc->strategy, a, SCHED_EV_REGISTER);
  sm_list parked, *n;
  sm_list_init(&parked);
  sm_list_splice_back(&parked, &lc->place.parked);
  while ((n = sm_list_pop_front(&parked)) != NULL) {
    lc_cmd *k = SM_LIST_ENTRY(n, lc_cmd, wait);
    assert(k->st == LS_PARKED && lc->place.nparked > 0);
    lc->place.nparked--;
    k->st = LS_QUEUED;
    if (sched_queue_requeue(&lc->place.q, &k->qi) != 0)
      park(lc, k); /* the queue could not grow: stays parked for the next registration */
  }
  lc_tick_schedule(lc);
}
