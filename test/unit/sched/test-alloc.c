/* test-alloc.c - placement under allocation failure (util/alloc.h's injection hook): every
 * allocation of an operation is made to fail in turn (nth = 0, 1, 2, ... until the operation
 * succeeds, once failing only that allocation and once every one after it). Each time the call
 * fails cleanly with SM_ENOMEM, the indexes stay consistent (sched_lb_check), nothing leaks
 * (ASan's leak check in the sanitizer build) and the module still works afterwards. */
#include "core/registry.h"
#include "sched/balancer.h"
#include "sched/broadcast.h"
#include "sched/queue.h"
#include "sched/strategy.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "fake-link.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NTH_MAX 10000 /* an operation needs far fewer allocations than this */

typedef struct world {
  uv_loop_t loop;
  agent_registry *reg; /* makes the agent records; it tells the set nothing (no events) */
  sched_strategy *s;
  sched_lb *lb;
  int links[512];
} world;

static agent *make(world *w, int i, const char *caps, const char *seg) {
  char id[32];
  snprintf(id, sizeof(id), "ag%d", i);
  sm_kv meta[3] = {{"capabilities", caps}, {"max_concurrent", "4"}, {"segment", seg}};
  agent *a = NULL;
  T_EQ_INT(agent_registry_attach(w->reg, id, strlen(id), AGENT_IDLE, meta, 3, &fake_ops,
                                 &w->links[i], &a),
           0);
  return a;
}

static void world_init(world *w) {
  uv_loop_init(&w->loop);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 512, .instance = "t"};
  T_EQ_INT(agent_registry_create(&w->loop, &rc, &w->reg), 0);
  sched_set_config sc = {.default_strategy = "least_loaded", .max_agent_load = 0.8};
  T_EQ_INT(sched_set_create(&w->loop, &sc, &w->s), 0);
  w->lb = sched_set_balancer(w->s);
}

static void world_finish(world *w) {
  sched_strategy_destroy(w->s);
  agent_registry_destroy(w->reg);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  uv_loop_close(&w->loop);
}

/* 80 agents, 70 of them in one segment (large enough to be pooled, not scanned), with pools
 * and two orderings in use, so that joining touches every kind of index. */
static void populate(world *w) {
  static const char *caps[] = {"scan_type=nmap,os=linux", "os=linux", "scan_type=nmap,gpu=yes"};
  for (int i = 0; i < 80; i++) {
    agent *a = make(w, i, caps[i % 3], i < 70 ? "10.9.0.0/24" : "10.8.0.0/24");
    T_EQ_INT(sched_lb_register(w->lb, a), 0);
  }
  sm_kv nmap = {"scan_type", "nmap"}, tp = {"target", "10.9.0.7"};
  sched_request rq = {.max_agent_load = 0.8, .caps = &nmap, .ncaps = 1};
  agent *out;
  T_EQ_INT(sched_pick(w->s, &rq, &out), 0);
  rq.strategy = "round_robin";
  T_EQ_INT(sched_pick(w->s, &rq, &out), 0);
  sched_request lq = {.max_agent_load = 0.8, .params = &tp, .nparams = 1, .strategy = "locality"};
  T_EQ_INT(sched_pick(w->s, &lq, &out), 0);
  sched_lb_check(w->lb);
}

static void test_set_create(void) {
  for (int sticky = 0; sticky <= 1; sticky++) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    int nth;
    for (nth = 0; nth < NTH_MAX; nth++) {
      sched_strategy *s = NULL;
      sched_set_config sc = {.default_strategy = "adaptive"};
      sm_alloc_fail_at(nth, sticky);
      int err = sched_set_create(&loop, &sc, &s);
      sm_alloc_fail_at(-1, 0);
      if (err == 0) {
        sched_strategy_destroy(s);
        break;
      }
      T_EQ_INT(err, SM_ENOMEM);
      uv_run(&loop, UV_RUN_DEFAULT); /* closes what a failed start opened */
    }
    T_ASSERT(nth > 0 && nth < NTH_MAX);
    uv_run(&loop, UV_RUN_DEFAULT);
    T_EQ_INT(uv_loop_close(&loop), 0);
  }
}

static void test_register(void) {
  for (int sticky = 0; sticky <= 1; sticky++) {
    world w;
    world_init(&w);
    populate(&w);
    agent *a = make(&w, 200, "scan_type=nmap,os=linux", "10.9.0.0/24");
    size_t count = sched_lb_count(w.lb), pools = sched_lb_pools(w.lb);
    int nth;
    for (nth = 0; nth < NTH_MAX; nth++) {
      sm_alloc_fail_at(nth, sticky);
      int err = sched_lb_register(w.lb, a);
      sm_alloc_fail_at(-1, 0);
      sched_lb_check(w.lb);
      if (err == 0)
        break;
      T_EQ_INT(err, SM_ENOMEM);
      T_ASSERT(sched_lb_find(w.lb, "ag200", 5) == NULL);
      T_EQ_INT(sched_lb_count(w.lb), count);
      T_EQ_INT(sched_lb_pools(w.lb), pools);
    }
    T_ASSERT(nth > 0 && nth < NTH_MAX);
    T_EQ_INT(sched_lb_count(w.lb), count + 1);
    /* indexed everywhere: explicit, by capability pool, by segment pool */
    sm_kv nmap = {"scan_type", "nmap"};
    sched_request rq = {.max_agent_load = 0.8, .agent_id = "ag200", .caps = &nmap, .ncaps = 1};
    agent *out;
    T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
    T_ASSERT(out == a);
    /* a descriptor change (new pools) under failure: the agent drops out of the index, and its
     * next update brings it back */
    agent_registry_touch(
        w.reg, a, AGENT_IDLE,
        (sm_kv[]){{"capabilities", "os=linux,gpu=yes"}, {"segment", "10.7.0.0/24"}}, 2);
    for (nth = 0; nth < NTH_MAX; nth++) {
      sm_alloc_fail_at(nth, sticky);
      int err = sched_lb_update(w.lb, a);
      sm_alloc_fail_at(-1, 0);
      sched_lb_check(w.lb);
      if (err == 0)
        break;
      T_EQ_INT(err, SM_ENOMEM);
      T_ASSERT(sched_lb_find(w.lb, "ag200", 5) == NULL);
    }
    T_ASSERT(nth < NTH_MAX);
    T_ASSERT(sched_lb_find(w.lb, "ag200", 5) != NULL);
    sched_lb_unregister(w.lb, a);
    sched_lb_check(w.lb);
    T_EQ_INT(sched_lb_count(w.lb), count);
    world_finish(&w);
  }
}

/* A pick that needs a new pool (new requirement, new segment) and a new ordering. */
static void test_pick(void) {
  static const char *strategies[] = {"capability_match", "weighted", "adaptive", "locality"};
  for (int sticky = 0; sticky <= 1; sticky++) {
    for (int si = 0; si < 4; si++) {
      world w;
      world_init(&w);
      populate(&w);
      sm_kv req[2] = {{"gpu", "*"}, {"scan_type", "nmap"}}, tp = {"target", "10.9.0.99"};
      sched_request rq = {.max_agent_load = 0.8,
                          .caps = si == 3 ? NULL : req,
                          .ncaps = si == 3 ? 0 : 2,
                          .params = &tp,
                          .nparams = 1,
                          .strategy = strategies[si]};
      if (si == 3) /* a segment pool of its own: a new requirement inside the segment */
        rq.caps = req, rq.ncaps = 1;
      size_t pools = sched_lb_pools(w.lb);
      int nth;
      agent *out = NULL;
      for (nth = 0; nth < NTH_MAX; nth++) {
        sm_alloc_fail_at(nth, sticky);
        int err = sched_pick(w.s, &rq, &out);
        sm_alloc_fail_at(-1, 0);
        sched_lb_check(w.lb);
        if (err == 0)
          break;
        T_EQ_INT(err, SM_ENOMEM);
        T_EQ_INT(sched_lb_pools(w.lb), pools);
      }
      /* locality under a single failure may place outside the segment (a preference, not a
       * constraint) instead of failing */
      T_ASSERT((nth > 0 || (si == 3 && !sticky)) && nth < NTH_MAX);
      T_ASSERT(out != NULL && sched_agent_matches(out, &rq));
      T_ASSERT(sched_lb_pools(w.lb) > pools);
      world_finish(&w);
    }
  }
}

static void test_queue_push(void) {
  for (int sticky = 0; sticky <= 1; sticky++) {
    enum { N = 100 };
    sched_item it[N];
    sched_queue q;
    sched_queue_init(&q, N);
    sched_queue_set_aging(&q, 0);
    int failed = 0;
    for (int i = 0; i < N; i++) {
      sched_item_init(&it[i], i % 10, 0, (uint64_t)i);
      int nth;
      for (nth = 0; nth < NTH_MAX; nth++) {
        sm_alloc_fail_at(nth, sticky);
        int err = sched_queue_push(&q, &it[i]);
        sm_alloc_fail_at(-1, 0);
        if (err == 0)
          break;
        failed++;
        T_EQ_INT(err, SM_ENOMEM);
        T_EQ_INT(sched_queue_len(&q), (size_t)i);
        T_ASSERT(it[i].idx == SCHED_NOT_QUEUED && it[i].aidx == SCHED_NOT_QUEUED);
      }
      T_ASSERT(nth < NTH_MAX);
    }
    T_ASSERT(failed > 0); /* the heaps grew at least once */
    T_EQ_INT(sched_queue_len(&q), N);
    sched_item *prev = NULL;
    for (sched_item *x; (x = sched_queue_pop(&q)) != NULL; prev = x)
      T_ASSERT(prev == NULL || !sched_item_before(x, prev));
    sched_queue_finish(&q);
  }
}

typedef struct plan_res {
  int called;
  int err;
  sched_bcast_plan *plan;
} plan_res;

static void plan_cb(void *ud, int err, sched_bcast_plan *plan) {
  plan_res *r = ud;
  r->called++;
  r->err = err;
  r->plan = plan;
}

/* Broadcast planning: either the start fails (no callback ever) or the callback runs exactly
 * once, with SM_ENOMEM or the plan. */
static void test_broadcast(void) {
  world w;
  world_init(&w);
  populate(&w);
  agent *all[80];
  for (size_t i = 0; i < 80; i++)
    all[i] = agent_registry_at(w.reg, i);
  sm_kv cap = {"os", "linux"};
  agent_filter f = {.caps = &cap, .ncaps = 1, .max_load = -1, .min_version = "0.0.1"};
  int nth, async_failures = 0;
  for (nth = 0; nth < NTH_MAX; nth++) {
    plan_res r = {0};
    sched_bcast_job *job = NULL;
    sm_alloc_fail_at(nth, 0);
    int err = sched_bcast_start(&w.loop, all, 80, &f, 1000, plan_cb, &r, &job);
    if (err == 0)
      sched_bcast_agent_gone(job, all[5]); /* the departure record may fail too */
    uv_run(&w.loop, UV_RUN_DEFAULT);
    sm_alloc_fail_at(-1, 0);
    if (err) {
      T_EQ_INT(err, SM_ENOMEM);
      T_EQ_INT(r.called, 0);
      continue;
    }
    T_EQ_INT(r.called, 1);
    if (r.err) {
      T_EQ_INT(r.err, SM_ENOMEM);
      T_ASSERT(r.plan == NULL);
      async_failures++;
      continue;
    }
    T_ASSERT(r.plan != NULL);
    for (size_t i = 0; i < r.plan->n; i++)
      T_ASSERT(strcmp(r.plan->agent_id[i], "ag5") != 0);
    sched_bcast_plan_free(r.plan);
    break;
  }
  T_ASSERT(nth > 0 && nth < NTH_MAX);
  T_ASSERT(async_failures > 0);
  world_finish(&w);
}

int main(void) {
  T_RUN(test_set_create);
  T_RUN(test_register);
  T_RUN(test_pick);
  T_RUN(test_queue_push);
  T_RUN(test_broadcast);
  return t_done();
}
