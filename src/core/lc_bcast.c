/* lc_bcast.c - broadcasts: a parent command planned into one child per matching agent; the
 * parent's final status aggregates its children's.
 *
 * Broadcasts are planned off the loop (sched/broadcast.h): the registry is snapshotted, the work
 * queue matches the filter and makes the child ids, and the loop applies the plan a slice per
 * turn (bounded by count and by loop time, see LC_BCAST_BUDGET_NS) so tens of thousands of
 * children never stall it: first every
 * entry is checked against the live registry (an agent that left or re-registered since the
 * snapshot is skipped) and recorded as a child id, then the parent is written with its
 * children, then the children are created and queued.
 *
 * What ends a parent is reported upward: ev->children_done once every child is accounted for,
 * ev->failed when the broadcast cannot be planned or matches no agent. */
#include "core/lifecycle-int.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

/* A loop turn applies at most LC_BCAST_STEP plan entries per parent and spends at most
 * LC_BCAST_BUDGET_NS on all parents together (the clock is read every LC_BCAST_CHECK entries),
 * so a large broadcast, or a loop slowed by a busy machine, never holds the loop for long; the
 * rest waits for the next turn. Placement (lc_pump) has its own budget in the same turn. */
#define LC_BCAST_STEP 256
#define LC_BCAST_BUDGET_NS 1000000ULL
#define LC_BCAST_CHECK 16

typedef struct bcast_budget {
  uint64_t t0;
  size_t n; /* entries applied this turn */
} bcast_budget;

/* Whether this turn's budget is spent (counted one entry at a time). */
static int budget_spent(bcast_budget *b) {
  b->n++;
  return (b->n % LC_BCAST_CHECK) == 0 && uv_hrtime() - b->t0 > LC_BCAST_BUDGET_NS;
}

/* Once every child is accounted for: sets the parent's result and reports ev->children_done.
 * Returns 1 when it did. */
int lc_parent_aggregate(lc_cmd *p) {
  if (p->st != LS_PARENT || p->bc.lookups > 0 || p->bc.done < p->bc.total)
    return 0;
  size_t n = p->bc.total;
  command_status s = COMMAND_FAILED;
  if (p->bc.counts[COMMAND_COMPLETED] == n)
    s = COMMAND_COMPLETED;
  else if (p->bc.counts[COMMAND_CANCELLED] == n)
    s = COMMAND_CANCELLED;
  else if (p->bc.counts[COMMAND_EXPIRED] == n)
    s = COMMAND_EXPIRED;
  sm_kv data[COMMAND_STATUS_COUNT];
  char nums[COMMAND_STATUS_COUNT][24];
  size_t nd = 0;
  for (int i = COMMAND_COMPLETED; i < COMMAND_STATUS_COUNT; i++) {
    if (!p->bc.counts[i])
      continue;
    snprintf(nums[nd], sizeof(nums[nd]), "%zu", p->bc.counts[i]);
    data[nd].key = command_status_name((command_status)i);
    data[nd].value = nums[nd];
    nd++;
  }
  char err[96] = "";
  if (s != COMMAND_COMPLETED)
    snprintf(err, sizeof(err), "%zu of %zu children did not complete",
             n - p->bc.counts[COMMAND_COMPLETED], n);
  if (command_set_result(p->c, command_status_name(s), data, nd, *err ? err : NULL, sm_now_ms()) !=
      0)
    sm_log_error("lifecycle", "result out of memory", SM_LS("command_id", p->c->id));
  p->lc->ev->children_done(p, s);
  return 1;
}

void lc_child_finished(lifecycle *lc, lc_cmd *child) {
  const char *pid = child->c->parent_id;
  lc_cmd *p = sm_map_get(&lc->cmds, pid, strlen(pid));
  if (p == NULL || p->st != LS_PARENT)
    return;
  if (p->bc.done < p->bc.total) {
    p->bc.done++;
    p->bc.counts[child->c->status]++;
  }
  lc_parent_aggregate(p);
}

void lc_child_running(lifecycle *lc, lc_cmd *child) {
  const char *pid = child->c->parent_id;
  lc_cmd *p = sm_map_get(&lc->cmds, pid, strlen(pid));
  if (p == NULL || p->st != LS_PARENT || p->c->status != COMMAND_DISPATCHED)
    return;
  p->c->status = COMMAND_RUNNING;
  p->c->started_at = sm_now_ms();
  lc_write_push(p, 0, 0, NULL);
}

void lc_bcast_agent_gone(lifecycle *lc, const agent *a) {
  SM_LIST_FOREACH(it, &lc->bc.planning) {
    lc_cmd *p = SM_LIST_ENTRY(it, lc_cmd, bc.planning);
    sched_bcast_agent_gone(p->bc.job, a);
  }
}

static void bcast_planned(void *ud, int err, sched_bcast_plan *plan) {
  lc_cmd *p = ud;
  lifecycle *lc = p->lc;
  p->bc.job = NULL;
  sm_list_remove(&p->bc.planning);
  if (p->st == LS_FINAL) { /* cancelled while planning */
    sched_bcast_plan_free(plan);
    lc_maybe_free_cmd(lc, p);
    return;
  }
  if (err) {
    lc->ev->failed(p, err == SM_EINVAL ? "filter: min_version is not a semantic version"
                                       : "broadcast planning failed");
    return;
  }
  sm_log_info("lifecycle", "broadcast planned", SM_LS("command_id", p->c->id),
              SM_LI("agents", plan->snapshot), SM_LI("matched", plan->n),
              SM_LI("plan_us", (long long)(plan->plan_ms * 1000.0)));
  p->bc.plan = plan;
  p->bc.next = 0;
  p->bc.total = 0;
  free(p->c->children);
  p->c->children = plan->n ? sm_calloc(plan->n, sizeof(*p->c->children)) : NULL;
  p->c->nchildren = 0;
  if (plan->n && p->c->children == NULL) {
    sched_bcast_plan_free(plan);
    p->bc.plan = NULL;
    lc->ev->failed(p, "out of memory planning the broadcast");
    return;
  }
  sm_list_push_back(&lc->bc.stepping, &p->bc.step);
  lc_tick_schedule(lc);
}

/* Validates plan entries into the parent's children, a slice per call; returns 1 when all are
 * done. */
static int bcast_validate(lifecycle *lc, lc_cmd *p, bcast_budget *b) {
  sched_bcast_plan *pl = p->bc.plan;
  sm_command *c = p->c;
  size_t end = p->bc.next + LC_BCAST_STEP < pl->n ? p->bc.next + LC_BCAST_STEP : pl->n;
  size_t i;
  for (i = p->bc.next; i < end; i++) {
    if (budget_spent(b)) /* entry i waits for the next turn */
      break;
    const char *id = pl->agent_id[i];
    agent *a = agent_registry_find(lc->reg, id, strlen(id));
    if (a == NULL || a->generation != pl->generation[i] || a->link_ops == NULL)
      continue; /* stale: left or re-registered since the snapshot */
    char *cid = sm_strdup(pl->child_id[i]);
    if (cid == NULL)
      continue;
    /* compact in place: entry nchildren of the plan is the agent of child nchildren */
    pl->agent_id[c->nchildren] = pl->agent_id[i];
    pl->generation[c->nchildren] = pl->generation[i];
    memcpy(pl->child_id[c->nchildren], pl->child_id[i], sizeof(pl->child_id[i]));
    c->children[c->nchildren++] = cid;
  }
  p->bc.next = i;
  return i == pl->n;
}

/* Creates and queues one child for plan entry i. */
static void bcast_child(lifecycle *lc, lc_cmd *p, size_t i, int64_t now) {
  sm_command *c = p->c;
  const char *id = p->bc.plan->child_id[i];
  sm_command *ch = command_new();
  if (ch == NULL || command_set_str(&ch->id, id) || command_set_str(&ch->type, c->type) ||
      command_set_str(&ch->target_agent, p->bc.plan->agent_id[i]) ||
      command_set_str(&ch->parent_id, c->id) || command_set_str(&ch->instance, lc->instance))
    goto lost;
  ch->params = sm_calloc(c->nparams ? c->nparams : 1, sizeof(*ch->params));
  if (ch->params == NULL)
    goto lost;
  for (size_t j = 0; j < c->nparams; j++) {
    ch->params[j].key = sm_strdup(c->params[j].key);
    ch->params[j].value = sm_strdup(c->params[j].value);
    ch->nparams++;
    if (ch->params[j].key == NULL || ch->params[j].value == NULL)
      goto lost;
  }
  ch->priority = c->priority;
  ch->timeout_seconds = c->timeout_seconds;
  ch->deadline = c->deadline;
  ch->source = c->source;
  ch->created_at = now;
  lc_cmd *kc = lc_cmd_track(lc, ch);
  if (kc == NULL)
    goto lost;
  lc_write_push(kc, 1, 0, NULL);
  lc_enqueue(lc, kc);
  return;
lost:
  command_free(ch);
  sm_log_error("lifecycle", "broadcast child out of memory", SM_LS("command_id", id));
  if (p->bc.done < p->bc.total) {
    p->bc.done++;
    p->bc.counts[COMMAND_FAILED]++;
  }
}

/* Creates the children of a slice of plan entries; returns 1 when all are created. */
static int bcast_children(lifecycle *lc, lc_cmd *p, bcast_budget *b) {
  int64_t now = sm_now_ms();
  size_t n = p->bc.plan->n;
  size_t end = p->bc.next + LC_BCAST_STEP < n ? p->bc.next + LC_BCAST_STEP : n;
  size_t i;
  for (i = p->bc.next; i < end; i++) {
    if (budget_spent(b))
      break;
    bcast_child(lc, p, i, now);
  }
  p->bc.next = i;
  return i == n;
}

/* One slice of every broadcast being applied, within one turn's budget. */
void lc_bcast_step(lifecycle *lc) {
  bcast_budget b = {.t0 = uv_hrtime()};
  SM_LIST_FOREACH_SAFE(it, tmp, &lc->bc.stepping) {
    lc_cmd *p = SM_LIST_ENTRY(it, lc_cmd, bc.step);
    int done = 0;
    if (b.n >= LC_BCAST_CHECK && uv_hrtime() - b.t0 > LC_BCAST_BUDGET_NS)
      break;                 /* the rest on the next turn */
    if (p->st == LS_FINAL) { /* cancelled meanwhile: children not yet created never will be */
      done = 1;
    } else if (p->st != LS_PARENT) {
      if (bcast_validate(lc, p, &b)) {
        if (p->c->nchildren == 0) {
          done = 1;
          lc->ev->failed(p, "no agent matches the broadcast filter");
        } else {
          /* the parent (with its children's ids) is written first: a crash in between leaves
           * children that recovery counts as missing rather than a parent that would
           * broadcast twice */
          int64_t now = sm_now_ms();
          p->c->status = COMMAND_DISPATCHED;
          p->c->dispatched_at = now;
          p->st = LS_PARENT;
          p->bc.total = p->c->nchildren;
          p->bc.plan->n = p->c->nchildren;
          p->bc.next = 0;
          lc_write_push(p, 0, 0, NULL);
        }
      }
    } else if (p->chain == COMMAND_QUEUED) {
      /* the parent's write could not be queued (out of memory): no child is created before
       * it is, or a restart would find a queued parent and broadcast again */
      lc_write_push(p, 0, 0, NULL);
    } else {
      done = bcast_children(lc, p, &b);
      lc_parent_aggregate(p);
    }
    if (done) {
      sm_list_remove(&p->bc.step);
      sched_bcast_plan_free(p->bc.plan);
      p->bc.plan = NULL;
      lc_maybe_free_cmd(lc, p);
    }
  }
  if (!sm_list_empty(&lc->bc.stepping))
    lc_tick_schedule(lc);
}

/* Plans one child per agent matching the parent's filter (status, min_version, max_load, and
 * capabilities from `capabilities` plus any other filter key). */
void lc_bcast_expand(lifecycle *lc, lc_cmd *p) {
  sm_command *c = p->c;
  agent_filter f = {.max_load = -1};
  sm_kv *caps = sm_calloc(c->ncapabilities + c->nfilter + 1, sizeof(*caps));
  if (caps == NULL) {
    lc->ev->failed(p, "out of memory planning the broadcast");
    return;
  }
  size_t nc = 0;
  for (size_t i = 0; i < c->ncapabilities; i++)
    caps[nc++] = c->capabilities[i];
  for (size_t i = 0; i < c->nfilter; i++) {
    const sm_kv *kv = &c->filter[i];
    if (strcmp(kv->key, "status") == 0) {
      char buf[128];
      snprintf(buf, sizeof(buf), "%s", kv->value);
      for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok;
           tok = strtok_r(NULL, ", ", &save)) {
        enum agent_status s;
        if (agent_status_parse(tok, &s) == 0)
          f.status_mask |= 1u << s;
      }
    } else if (strcmp(kv->key, "min_version") == 0) {
      f.min_version = kv->value;
    } else if (strcmp(kv->key, "max_load") == 0) {
      f.max_load = strtod(kv->value, NULL);
    } else {
      caps[nc++] = *kv;
    }
  }
  f.caps = caps;
  f.ncaps = nc;
  size_t nagents;
  agent *const *agents = agent_registry_agents(lc->reg, &nagents);
  int err = sched_bcast_start(lc->loop, agents, nagents, &f, COMMAND_MAX_CHILDREN, bcast_planned, p,
                              &p->bc.job);
  free(caps);
  if (err) {
    lc->ev->failed(p, "out of memory planning the broadcast");
    return;
  }
  sm_list_push_front(&lc->bc.planning, &p->bc.planning);
}
