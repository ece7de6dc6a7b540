/* test-queue.c - the waiting queue's order, bound and removal; least_loaded placement. */
#include "core/registry.h"
#include "sched/queue.h"
#include "sched/strategy.h"
#include "t.h"
#include "util/err.h"
#include "fake-link.h"

#include <stdlib.h>

static void test_order(void) {
  sched_queue q;
  sched_queue_init(&q, 10);
  sched_item it[6];
  sched_item_init(&it[0], 5, 0, 1);
  sched_item_init(&it[1], 9, 0, 2);
  sched_item_init(&it[2], 5, 2000, 3); /* same priority, a deadline: before it[0] */
  sched_item_init(&it[3], 5, 1000, 4); /* earlier deadline: first of priority 5 */
  sched_item_init(&it[4], 0, 10, 5);
  sched_item_init(&it[5], 5, 0, 6); /* same as it[0], later arrival */
  for (int i = 0; i < 6; i++)
    T_EQ_INT(sched_queue_push(&q, &it[i]), 0);
  T_EQ_INT(sched_queue_push(&q, &it[0]), SM_EEXIST);
  int want[] = {1, 3, 2, 0, 5, 4};
  for (int i = 0; i < 6; i++)
    T_ASSERT(sched_queue_pop(&q) == &it[want[i]]);
  T_ASSERT(sched_queue_pop(&q) == NULL);
  sched_queue_finish(&q);
}

static void test_limit(void) {
  sched_queue q;
  sched_queue_init(&q, 2);
  sched_item it[3];
  for (int i = 0; i < 3; i++)
    sched_item_init(&it[i], 5, 0, (uint64_t)i);
  T_EQ_INT(sched_queue_push(&q, &it[0]), 0);
  T_EQ_INT(sched_queue_push(&q, &it[1]), 0);
  T_EQ_INT(sched_queue_push(&q, &it[2]), SM_ELIMIT);
  T_EQ_INT(sched_queue_requeue(&q, &it[2]), 0); /* accepted once: the bound does not apply */
  T_EQ_INT(sched_queue_len(&q), 3);
  sched_queue_finish(&q);
}

static void test_random_remove(void) {
  enum { N = 2000 };
  sched_queue q;
  sched_queue_init(&q, N);
  sched_item *it = calloc(N, sizeof(*it));
  srand(7);
  for (int i = 0; i < N; i++) {
    sched_item_init(&it[i], rand() % 10, rand() % 3 ? 0 : rand() % 100000, (uint64_t)i);
    T_EQ_INT(sched_queue_push(&q, &it[i]), 0);
  }
  for (int i = 0; i < N; i += 3)
    T_EQ_INT(sched_queue_remove(&q, &it[i]), 1);
  T_EQ_INT(sched_queue_remove(&q, &it[0]), 0);
  sched_item *prev = NULL;
  size_t n = 0;
  for (sched_item *x; (x = sched_queue_pop(&q)) != NULL; prev = x, n++) {
    T_ASSERT(x->seq % 3 != 0);
    if (prev)
      T_ASSERT(!sched_item_before(x, prev));
  }
  T_EQ_INT(n, N - (N + 2) / 3);
  free(it);
  sched_queue_finish(&q);
}

/* ---- placement ---- */

static agent *attach(agent_registry *reg, const char *id, const char *caps, const char *maxc) {
  sm_kv meta[2] = {{"capabilities", caps}, {"max_concurrent", maxc}};
  agent *a = NULL;
  static int link;
  T_EQ_INT(agent_registry_attach(reg, id, strlen(id), AGENT_IDLE, meta, 2, &fake_ops, &link, &a),
           0);
  return a;
}

/* The strategy set is told about every change (the lifecycle forwards registry events). */
static void upd(sched_strategy *s, agent *a) {
  a->load = agent_load_compute(a);
  sched_notify(s, a, SCHED_EV_UPDATE);
}

static void test_least_loaded(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 10, .instance = "t"};
  agent_registry *reg;
  T_EQ_INT(agent_registry_create(&loop, &rc, &reg), 0);
  sched_strategy *s;
  sched_set_config sc = {.default_strategy = "least_loaded", .max_agent_load = 0.8};
  T_EQ_INT(sched_set_create(&loop, &sc, &s), 0);
  sched_request rq = {.max_agent_load = 0.8};
  agent *out = NULL;
  T_EQ_INT(sched_pick(s, &rq, &out), SM_ENOENT); /* nobody */
  agent *a = attach(reg, "a", "scan_type=nmap", "2");
  agent *b = attach(reg, "b", "os=linux", "1");
  agent *all[2] = {a, b};
  T_EQ_INT(sched_sync(s, all, 2), 0);
  T_EQ_INT(sched_pick(s, &rq, &out), 0);
  T_ASSERT(out == a || out == b);
  /* least loaded: a has one of two slots in use (load 0.5), b none */
  a->assigned = 1;
  upd(s, a);
  T_EQ_INT(sched_pick(s, &rq, &out), 0);
  T_ASSERT(out == b);
  /* capabilities: only a */
  sm_kv cap = {"scan_type", "nmap"};
  rq.caps = &cap;
  rq.ncaps = 1;
  T_EQ_INT(sched_pick(s, &rq, &out), 0);
  T_ASSERT(out == a);
  a->assigned = 2; /* at max_concurrent */
  upd(s, a);
  T_EQ_INT(sched_pick(s, &rq, &out), SM_EAGAIN);
  sm_kv nocap = {"scan_type", "masscan"};
  rq.caps = &nocap;
  T_EQ_INT(sched_pick(s, &rq, &out), SM_ENOENT);
  rq.caps = NULL;
  rq.ncaps = 0;
  /* MAX_AGENT_LOAD: b at 0.9 cpu is not eligible, a is full */
  agent_heartbeat hb = {.cpu_usage = 90};
  agent_registry_heartbeat(reg, b, &hb);
  upd(s, b);
  T_EQ_INT(sched_pick(s, &rq, &out), SM_EAGAIN);
  hb.cpu_usage = 10;
  agent_registry_heartbeat(reg, b, &hb);
  upd(s, b);
  T_EQ_INT(sched_pick(s, &rq, &out), 0);
  T_ASSERT(out == b);
  /* maintenance and error are skipped */
  agent_registry_touch(reg, b, AGENT_MAINTENANCE, NULL, 0);
  upd(s, b);
  T_EQ_INT(sched_pick(s, &rq, &out), SM_EAGAIN);
  agent_registry_touch(reg, b, AGENT_ERROR, NULL, 0);
  upd(s, b);
  T_EQ_INT(sched_pick(s, &rq, &out), SM_EAGAIN);
  agent_registry_touch(reg, b, AGENT_BUSY, NULL, 0);
  upd(s, b);
  /* explicit agent */
  rq.agent_id = "a";
  T_EQ_INT(sched_pick(s, &rq, &out), SM_EAGAIN);
  rq.agent_id = "ghost";
  T_EQ_INT(sched_pick(s, &rq, &out), SM_ENOENT);
  rq.agent_id = "b";
  T_EQ_INT(sched_pick(s, &rq, &out), 0);
  T_ASSERT(out == b);
  /* an unknown per-command strategy */
  rq.agent_id = NULL;
  rq.strategy = "fastest";
  T_EQ_INT(sched_pick(s, &rq, &out), SM_EINVAL);
  rq.strategy = "round_robin";
  T_EQ_INT(sched_pick(s, &rq, &out), 0);
  sched_strategy_destroy(s);
  agent_registry_destroy(reg);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

/* Aging: a low-priority item that waited aging_ms goes before newer high-priority ones. */
static void test_aging(void) {
  sched_queue q;
  sched_queue_init(&q, 100);
  sched_queue_set_aging(&q, 1000);
  sched_item low, hi[3];
  sched_item_init(&low, 0, 0, 1);
  low.since_ms = 10000;
  T_EQ_INT(sched_queue_push(&q, &low), 0);
  for (int i = 0; i < 3; i++) {
    sched_item_init(&hi[i], 9, 0, (uint64_t)(2 + i));
    hi[i].since_ms = 10500 + i;
    T_EQ_INT(sched_queue_push(&q, &hi[i]), 0);
  }
  T_ASSERT(sched_queue_peek_at(&q, 10900) == &hi[0]); /* not aged yet: priority order */
  T_ASSERT(sched_queue_pop_at(&q, 10900) == &hi[0]);
  T_ASSERT(sched_queue_pop_at(&q, 11000) == &low); /* waited 1000 ms: goes first */
  T_EQ_INT(q.aged, 1);
  T_ASSERT(sched_queue_pop_at(&q, 11000) == &hi[1]);
  /* a requeued item keeps its age */
  T_EQ_INT(sched_queue_requeue(&q, &low), 0);
  T_ASSERT(sched_queue_pop_at(&q, 11001) == &low);
  T_ASSERT(sched_queue_pop_at(&q, 11001) == &hi[2]);
  T_ASSERT(sched_queue_pop_at(&q, 11001) == NULL);
  /* aging off */
  sched_queue_set_aging(&q, 0);
  T_EQ_INT(sched_queue_push(&q, &low), 0);
  T_EQ_INT(sched_queue_push(&q, &hi[0]), 0);
  T_ASSERT(sched_queue_pop_at(&q, INT64_MAX / 2) == &hi[0]);
  sched_queue_finish(&q);
}

int main(void) {
  T_RUN(test_order);
  T_RUN(test_limit);
  T_RUN(test_random_remove);
  T_RUN(test_least_loaded);
  T_RUN(test_aging);
  return t_done();
}
