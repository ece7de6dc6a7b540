/* test-strategies.c - property tests of the strategies over random agent sets and command
 * streams (seeded, deterministic), and of broadcast planning off the loop. */
#include "core/registry.h"
#include "model/command.h"
#include "sched/policy.h"
#include "sched/adaptive.h"
#include "sched/balancer.h"
#include "sched/broadcast.h"
#include "sched/queue.h"
#include "sched/strategy.h"
#include "t.h"
#include "util/err.h"
#include "fake-link.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11);
}
static int rndn(int n) {
  return (int)(rnd() % (uint32_t)n);
}

/* The registry forwards its events to the strategy set, as the lifecycle does. */
static void ev_reg(void *ud, agent *a, int replaced) {
  (void)replaced;
  sched_notify(ud, a, SCHED_EV_REGISTER);
}
static void ev_unreg(void *ud, agent *a, int reason) {
  (void)reason;
  sched_notify(ud, a, SCHED_EV_UNREGISTER);
}
static void ev_upd(void *ud, agent *a) {
  sched_notify(ud, a, SCHED_EV_UPDATE);
}

typedef struct world {
  uv_loop_t loop;
  agent_registry *reg;
  sched_strategy *s;
  int links[4096];
} world;

static void world_init(world *w, const char *dflt) {
  uv_loop_init(&w->loop);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 4096, .instance = "t"};
  T_EQ_INT(agent_registry_create(&w->loop, &rc, &w->reg), 0);
  sched_set_config sc = {.default_strategy = dflt, .max_agent_load = 0.8};
  T_EQ_INT(sched_set_create(&w->loop, &sc, &w->s), 0);
  agent_registry_events ev = {
      .on_register = ev_reg, .on_unregister = ev_unreg, .on_update = ev_upd, .ud = w->s};
  agent_registry_set_events(w->reg, &ev);
}

/* The registry's agents as an array (sched/ takes arrays, not the registry). */
static agent *const *agents_of(world *w) {
  static agent *buf[4096];
  size_t n = agent_registry_count(w->reg);
  for (size_t i = 0; i < n; i++)
    buf[i] = agent_registry_at(w->reg, i);
  return buf;
}

static void world_finish(world *w) {
  agent_registry_events none = {0};
  agent_registry_set_events(w->reg, &none);
  sched_strategy_destroy(w->s);
  agent_registry_destroy(w->reg);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  uv_loop_close(&w->loop);
}

static agent *join(world *w, int i, const char *caps, int maxc, double weight, const char *seg) {
  char id[32], mc[16], wt[32];
  snprintf(id, sizeof(id), "ag%d", i);
  snprintf(mc, sizeof(mc), "%d", maxc);
  snprintf(wt, sizeof(wt), "%g", weight);
  sm_kv meta[4] = {
      {"capabilities", caps}, {"max_concurrent", mc}, {"weight", wt}, {"segment", seg}};
  agent *a = NULL;
  T_EQ_INT(agent_registry_attach(w->reg, id, strlen(id), AGENT_IDLE, meta, 4, &fake_ops,
                                 &w->links[i], &a),
           0);
  return a;
}

/* What the lifecycle does around a pick: count the command on the agent, and uncount it. */
static void assign(world *w, agent *a, int delta) {
  a->assigned += delta;
  a->load = agent_load_compute(a);
  sched_notify(w->s, a, SCHED_EV_UPDATE);
}

static const char *const strategies[] = {"round_robin", "least_loaded", "capability_match",
                                         "weighted",    "adaptive",     "locality"};

/* Never a command to an agent without a required capability, at max_concurrent, at or above
 * MAX_AGENT_LOAD, or in MAINTENANCE/ERROR; SM_EAGAIN/SM_ENOENT exactly when a brute-force scan
 * says so. Random agents join, leave, change load, status and descriptor meanwhile. */
static void test_constraints(void) {
  static const char *capsets[] = {"",
                                  "scan_type=nmap",
                                  "scan_type=nmap,os=linux",
                                  "scan_type=masscan,os=linux",
                                  "os=windows",
                                  "scan_type=nmap,os=windows,gpu=yes"};
  static const char *segs[] = {"", "10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/16", "fd00::/64"};
  static const sm_kv reqs[][2] = {
      {{"scan_type", "nmap"}, {NULL, NULL}},      {{"os", "linux"}, {NULL, NULL}},
      {{"scan_type", "nmap"}, {"os", "windows"}}, {{"gpu", "*"}, {NULL, NULL}},
      {{"scan_type", "zmap"}, {NULL, NULL}},      {{"os", ""}, {"scan_type", "masscan"}}};
  static const char *targets[] = {"10.0.0.7",    "10.0.1.9", "10.0.200.1",
                                  "192.168.0.1", "fd00::5",  "10.0.0.0/25"};
  for (int seed = 1; seed <= 40; seed++) {
    rng_state = 0x9e3779b97f4a7c15ULL * (uint64_t)seed;
    world w;
    world_init(&w, strategies[seed % 6]);
    int nag = 3 + rndn(40);
    agent *ag[64] = {0};
    for (int i = 0; i < nag; i++)
      ag[i] = join(&w, i, capsets[rndn(6)], 1 + rndn(4), 1 + rndn(4), segs[rndn(5)]);
    for (int op = 0; op < 600; op++) {
      int r = rndn(100);
      int i = rndn(nag);
      if (r < 8 && ag[i]) { /* heartbeat */
        agent_heartbeat hb = {.cpu_usage = rndn(100), .active_commands = rndn(3)};
        agent_registry_heartbeat(w.reg, ag[i], &hb);
      } else if (r < 12 && ag[i]) { /* status */
        agent_registry_touch(w.reg, ag[i], (enum agent_status)(rndn(5)), NULL, 0);
      } else if (r < 14 && ag[i]) { /* descriptor change */
        sm_kv meta[2] = {{"capabilities", capsets[rndn(6)]}, {"segment", segs[rndn(5)]}};
        agent_registry_touch(w.reg, ag[i], AGENT_IDLE, meta, 2);
      } else if (r < 16 && ag[i]) { /* leaves */
        agent_registry_detach(w.reg, ag[i], &w.links[i], SM_ECLOSED);
        ag[i] = NULL;
      } else if (r < 18 && !ag[i]) { /* (re)joins */
        ag[i] = join(&w, i, capsets[rndn(6)], 1 + rndn(4), 1 + rndn(4), segs[rndn(5)]);
      } else if (r < 40 && ag[i] && ag[i]->assigned > 0) { /* a command finishes */
        assign(&w, ag[i], -1);
      } else {           /* a command is placed */
        int k = rndn(7); /* 6: no requirement */
        sched_request rq = {.max_agent_load = 0.8};
        if (k < 6) {
          rq.caps = reqs[k];
          rq.ncaps = reqs[k][1].key ? 2 : 1;
        }
        sm_kv tp = {"target", targets[rndn(6)]};
        rq.params = &tp;
        rq.nparams = 1;
        if (rndn(10) == 0)
          rq.strategy = strategies[rndn(6)];
        if (rndn(10) == 0) {
          static char want[32];
          snprintf(want, sizeof(want), "ag%d", rndn(nag + 2));
          rq.agent_id = want;
        }
        int any_match = 0, any_avail = 0;
        size_t n = agent_registry_count(w.reg);
        for (size_t j = 0; j < n; j++) {
          agent *b = agent_registry_at(w.reg, j);
          if (sched_agent_matches(b, &rq)) {
            any_match = 1;
            any_avail |= sched_agent_available(b, 0.8);
          }
        }
        agent *out = NULL;
        int err = sched_pick(w.s, &rq, &out);
        if (err == 0) {
          T_ASSERT(sched_agent_matches(out, &rq));
          T_ASSERT(out->assigned < out->max_concurrent);
          T_ASSERT(out->load < 0.8);
          T_ASSERT(out->status != AGENT_MAINTENANCE && out->status != AGENT_ERROR);
          assign(&w, out, 1);
        } else if (err == SM_EAGAIN) {
          T_ASSERT(any_match && !any_avail);
        } else {
          T_EQ_INT(err, SM_ENOENT);
          T_ASSERT(!any_match);
        }
        if (err != 0)
          T_ASSERT(!any_avail);
      }
      sched_lb_check(sched_set_balancer(w.s)); /* the index invariants hold after every step */
    }
    world_finish(&w);
  }
}

/* Round robin: with a stable set, the most and least served differ by at most one, also among
 * the agents with a capability. */
static void test_round_robin_even(void) {
  for (int seed = 1; seed <= 20; seed++) {
    rng_state = 0x1234567ULL * (uint64_t)seed;
    world w;
    world_init(&w, "round_robin");
    int nag = 2 + rndn(50);
    agent *ag[64];
    for (int i = 0; i < nag; i++)
      ag[i] = join(&w, i, i % 3 ? "os=linux" : "os=linux,scan_type=nmap", 100, 1, "");
    int served[64] = {0}, served_cap[64] = {0};
    int m = 100 + rndn(500);
    sm_kv cap = {"scan_type", "nmap"};
    for (int c = 0; c < m; c++) {
      sched_request rq = {.max_agent_load = 0.8};
      int withcap = c % 4 == 3;
      if (withcap) {
        rq.caps = &cap;
        rq.ncaps = 1;
      }
      agent *out;
      T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
      int idx = atoi(out->id + 2);
      (withcap ? served_cap : served)[idx]++;
      assign(&w, out, 1);
      assign(&w, out, -1); /* finished at once: load back to 0 */
    }
    (void)ag;
    /* plain commands: among all agents; capability ones: among the nmap agents. Both streams
     * share one rotation, so each stream alone is even only up to the other's interleaving;
     * the sum over both streams is what round robin guarantees. */
    int mx = 0, mn = 1 << 30;
    for (int i = 0; i < nag; i++) {
      int t = served[i] + served_cap[i];
      if (i % 3 == 0)
        continue; /* nmap agents also take the capability stream */
      mx = t > mx ? t : mx;
      mn = t < mn ? t : mn;
    }
    if (nag > 1)
      T_ASSERT(mx - mn <= 1);
    world_finish(&w);
  }
  /* pure: one stream, all agents */
  world w;
  world_init(&w, "round_robin");
  for (int i = 0; i < 17; i++)
    join(&w, i, "", 100, 1, "");
  int served[17] = {0};
  for (int c = 0; c < 1000; c++) {
    sched_request rq = {.max_agent_load = 0.8};
    agent *out;
    T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
    served[atoi(out->id + 2)]++;
    int mx = 0, mn = 1 << 30;
    for (int i = 0; i < 17; i++) {
      mx = served[i] > mx ? served[i] : mx;
      mn = served[i] < mn ? served[i] : mn;
    }
    T_ASSERT(mx - mn <= 1); /* after every single pick */
  }
  world_finish(&w);
}

static void test_weighted_proportions(void) {
  world w;
  world_init(&w, "weighted");
  double weights[] = {1, 2, 3, 4, 0.5};
  double sum = 0;
  for (int i = 0; i < 5; i++) {
    join(&w, i, "", 1000, weights[i], "");
    sum += weights[i];
  }
  int served[5] = {0};
  int m = 21000;
  for (int c = 0; c < m; c++) {
    sched_request rq = {.max_agent_load = 0.8};
    agent *out;
    T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
    served[atoi(out->id + 2)]++;
  }
  for (int i = 0; i < 5; i++)
    T_ASSERT(fabs((double)served[i] / m - weights[i] / sum) < 0.005);
  world_finish(&w);
}

static void test_adaptive(void) {
  world w;
  world_init(&w, "adaptive");
  sched_lb *lb = sched_set_balancer(w.s);
  T_ASSERT(lb != NULL);
  agent *ag[4];
  for (int i = 0; i < 4; i++)
    ag[i] = join(&w, i, "", 1000, 1, "");
  /* learned: ag0 1 s, ag1 2 s, ag2 4 s, ag3 1 s but half its commands fail */
  double t[] = {1, 2, 4, 1};
  for (int r = 0; r < 60; r++)
    for (int i = 0; i < 4; i++)
      sched_report_result(w.s, ag[i], t[i], i == 3 ? r % 2 : 1);
  /* off the loop: the weights change only once the work queue's result is applied */
  T_EQ_INT(sched_adaptive_recompute(lb), 0);
  T_EQ_INT(sched_adaptive_recompute(lb), SM_EAGAIN);
  T_ASSERT(sched_adaptive_weight(lb, ag[2]) == 1.0);
  uv_run(&w.loop, UV_RUN_DEFAULT);
  double wt[4], sum = 0;
  for (int i = 0; i < 4; i++)
    sum += wt[i] = sched_adaptive_weight(lb, ag[i]);
  T_ASSERT(wt[0] > wt[1] && wt[1] > wt[2]);
  T_ASSERT(wt[3] < wt[0]); /* failing costs weight */
  int served[4] = {0};
  int m = 20000;
  for (int c = 0; c < m; c++) {
    sched_request rq = {.max_agent_load = 0.8};
    agent *out;
    T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
    served[atoi(out->id + 2)]++;
  }
  for (int i = 0; i < 4; i++)
    T_ASSERT(fabs((double)served[i] / m - wt[i] / sum) < 0.01);
  /* the speed ratio shows through: ag0 twice ag1, four times ag2 */
  T_ASSERT(fabs((double)served[0] / served[1] - 2.0) < 0.1);
  T_ASSERT(fabs((double)served[0] / served[2] - 4.0) < 0.2);
  /* a stale plan entry (the agent re-registered meanwhile) is skipped, not applied */
  sched_report_result(w.s, ag[2], 0.01, 1);
  T_EQ_INT(sched_adaptive_recompute(lb), 0);
  double before = sched_adaptive_weight(lb, ag[2]);
  agent *again = join(&w, 2, "", 1000, 1, ""); /* new stream, new generation */
  T_ASSERT(again == ag[2]);
  uv_run(&w.loop, UV_RUN_DEFAULT);
  T_ASSERT(sched_adaptive_weight(lb, ag[2]) == before);
  world_finish(&w);
}

static void test_locality(void) {
  world w;
  world_init(&w, "locality");
  agent *a24 = join(&w, 0, "", 1, 1, "10.0.0.0/24");
  agent *b24 = join(&w, 1, "", 1, 1, "10.0.1.0/24");
  agent *c16 = join(&w, 2, "", 1, 1, "10.0.0.0/16");
  agent *any = join(&w, 3, "", 1, 1, "");
  agent *v6 = join(&w, 4, "", 1, 1, "fd00::/64");
  sm_kv tp = {"target", "10.0.0.5"};
  sched_request rq = {.max_agent_load = 0.8, .params = &tp, .nparams = 1};
  agent *out;
  for (int rep = 0; rep < 5; rep++) { /* stable preference */
    T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
    T_ASSERT(out == a24);
  }
  assign(&w, a24, 1); /* full: the wider segment next */
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  T_ASSERT(out == c16);
  assign(&w, c16, 1); /* both full: anyone */
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  T_ASSERT(out == b24 || out == any || out == v6);
  tp.value = "10.0.1.0/25"; /* a CIDR target inside 10.0.1.0/24 */
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  T_ASSERT(out == b24);
  tp.value = "fd00::1234";
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  T_ASSERT(out == v6);
  tp.value = "not-an-ip"; /* falls back to any eligible agent */
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  char n[64];
  T_EQ_INT(sched_cidr_normalize("10.1.2.3/8", n), 0);
  T_EQ_STR(n, "10.0.0.0/8");
  T_EQ_INT(sched_cidr_normalize("10.1.2.3/33", n), SM_EINVAL);
  world_finish(&w);
}

static void test_capability_match(void) {
  world w;
  world_init(&w, "capability_match");
  agent *gen = join(&w, 0, "scan_type=nmap,os=linux,gpu=yes,zone=a", 4, 1, "");
  agent *spec = join(&w, 1, "scan_type=nmap", 4, 1, "");
  sm_kv cap = {"scan_type", "nmap"};
  sched_request rq = {.max_agent_load = 0.8, .caps = &cap, .ncaps = 1};
  agent *out;
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  T_ASSERT(out == spec); /* tightest fit first */
  assign(&w, spec, 4);
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  T_ASSERT(out == gen);
  sm_kv gpu = {"gpu", "*"};
  rq.caps = &gpu;
  T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
  T_ASSERT(out == gen);
  T_ASSERT(sched_lb_pools(sched_set_balancer(w.s)) >= 2);
  agent *cands[4];
  rq.caps = &cap;
  assign(&w, spec, -4);
  sched_request cr = {.max_agent_load = 0.8, .caps = &cap, .ncaps = 1};
  T_EQ_INT(sched_lb_candidates(sched_set_balancer(w.s), &cr, sched_policy_find("capability_match"),
                               cands, 4),
           2);
  T_ASSERT(cands[0] == spec && cands[1] == gen);
  world_finish(&w);
}

/* Priority, then deadline, with arrivals and departures interleaved: every pop is the best of
 * what is queued (brute force), aging off. */
static void test_queue_order_property(void) {
  enum { N = 3000 };
  sched_item *it = calloc(N, sizeof(*it));
  int *in = calloc(N, sizeof(*in));
  for (int seed = 1; seed <= 5; seed++) {
    rng_state = 77ULL * (uint64_t)seed;
    sched_queue q;
    sched_queue_init(&q, N);
    sched_queue_set_aging(&q, 0);
    memset(in, 0, N * sizeof(*in));
    int pushed = 0;
    while (pushed < N || sched_queue_len(&q)) {
      if (pushed < N && (rndn(3) || !sched_queue_len(&q))) {
        sched_item_init(&it[pushed], rndn(10), rndn(2) ? 0 : 1 + rndn(1000), (uint64_t)pushed);
        T_EQ_INT(sched_queue_push(&q, &it[pushed]), 0);
        in[pushed++] = 1;
        continue;
      }
      sched_item *x = sched_queue_pop(&q);
      int xi = (int)(x - it);
      T_ASSERT(in[xi]);
      for (int j = 0; j < pushed; j++)
        if (in[j] && j != xi)
          T_ASSERT(!sched_item_before(&it[j], x));
      in[xi] = 0;
    }
    sched_queue_finish(&q);
  }
  free(it);
  free(in);
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

static void test_broadcast_plan(void) {
  world w;
  world_init(&w, "least_loaded");
  for (int i = 0; i < 300; i++) {
    agent *a = join(&w, i, i % 3 == 0 ? "scan_type=nmap" : "os=linux", 1, 1, "");
    if (i % 30 == 0)
      agent_registry_touch(w.reg, a, AGENT_MAINTENANCE, NULL, 0);
  }
  sm_kv cap = {"scan_type", "nmap"};
  agent_filter f = {.caps = &cap, .ncaps = 1, .max_load = -1, .status_mask = 1u << AGENT_IDLE};
  plan_res r = {0};
  sched_bcast_job *job;
  T_EQ_INT(sched_bcast_start(&w.loop, agents_of(&w), agent_registry_count(w.reg), &f, 1000, plan_cb,
                             &r, &job),
           0);
  T_EQ_INT(r.called, 0); /* never inside the call */
  uv_run(&w.loop, UV_RUN_DEFAULT);
  T_EQ_INT(r.called, 1);
  T_EQ_INT(r.err, 0);
  T_EQ_INT(r.plan->n, 100 - 10);
  for (size_t i = 0; i < r.plan->n; i++) {
    agent *a = agent_registry_find(w.reg, r.plan->agent_id[i], strlen(r.plan->agent_id[i]));
    T_ASSERT(a && agent_filter_match(&f, a) && a->generation == r.plan->generation[i]);
    T_EQ_INT(strlen(r.plan->child_id[i]), 36);
    if (i)
      T_ASSERT(strcmp(r.plan->child_id[i], r.plan->child_id[i - 1]) != 0);
  }
  sched_bcast_plan_free(r.plan);
  /* the max, and a cancelled job never calls back */
  plan_res r2 = {0};
  T_EQ_INT(sched_bcast_start(&w.loop, agents_of(&w), agent_registry_count(w.reg), &f, 7, plan_cb,
                             &r2, &job),
           0);
  uv_run(&w.loop, UV_RUN_DEFAULT);
  T_EQ_INT(r2.plan->n, 7);
  sched_bcast_plan_free(r2.plan);
  plan_res r3 = {0};
  T_EQ_INT(sched_bcast_start(&w.loop, agents_of(&w), agent_registry_count(w.reg), &f, 7, plan_cb,
                             &r3, &job),
           0);
  sched_bcast_cancel(job);
  uv_run(&w.loop, UV_RUN_DEFAULT);
  T_EQ_INT(r3.called, 0);
  /* an agent leaving while the snapshot is being copied is skipped (not read after free) */
  plan_res r5 = {0};
  T_EQ_INT(sched_bcast_start(&w.loop, agents_of(&w), agent_registry_count(w.reg), &f, 1000, plan_cb,
                             &r5, &job),
           0);
  agent *gone = agent_registry_find(w.reg, "ag3", 3);
  sched_bcast_agent_gone(job, gone);
  agent_registry_detach(w.reg, gone, &w.links[3], SM_ECLOSED);
  uv_run(&w.loop, UV_RUN_DEFAULT);
  T_EQ_INT(r5.err, 0);
  T_EQ_INT(r5.plan->n, 100 - 10 - 1);
  for (size_t i = 0; i < r5.plan->n; i++)
    T_ASSERT(strcmp(r5.plan->agent_id[i], "ag3") != 0);
  sched_bcast_plan_free(r5.plan);
  /* a bad min_version */
  f.min_version = "not.a.version";
  plan_res r4 = {0};
  T_EQ_INT(sched_bcast_start(&w.loop, agents_of(&w), agent_registry_count(w.reg), &f, 7, plan_cb,
                             &r4, &job),
           0);
  uv_run(&w.loop, UV_RUN_DEFAULT);
  T_EQ_INT(r4.err, SM_EINVAL);
  world_finish(&w);
}

/* Every strategy the command model accepts (model/command.h) has a strategy file here, and
 * every strategy here is one the command model accepts. */
static void test_names_agree(void) {
  const char *const *cmd = command_strategy_names();
  const char *const *ours = sched_strategy_names();
  size_t ncmd = 0, nours = 0;
  for (; cmd[ncmd]; ncmd++) {
    const sched_policy *p = sched_policy_find(cmd[ncmd]);
    T_ASSERT(p != NULL);
    T_EQ_STR(p->name, cmd[ncmd]);
    T_ASSERT(sched_strategy_known(cmd[ncmd]));
  }
  for (; ours[nours]; nours++) {
    T_ASSERT(command_strategy_known(ours[nours]));
    T_ASSERT(sched_policy_find(ours[nours]) != NULL);
  }
  T_EQ_INT(ncmd, nours);
  /* and each can be the default of a set, and picks through it */
  for (size_t i = 0; i < nours; i++) {
    world w;
    world_init(&w, ours[i]);
    agent *a = join(&w, 0, "", 1, 1, "10.0.0.0/24");
    sched_request rq = {.max_agent_load = 0.8};
    agent *out = NULL;
    T_EQ_INT(sched_pick(w.s, &rq, &out), 0);
    T_ASSERT(out == a);
    world_finish(&w);
  }
  T_ASSERT(!sched_strategy_known("") && !sched_strategy_known(NULL));
  T_ASSERT(!sched_strategy_known("random"));
}

int main(void) {
  T_RUN(test_names_agree);
  T_RUN(test_constraints);
  T_RUN(test_round_robin_even);
  T_RUN(test_weighted_proportions);
  T_RUN(test_adaptive);
  T_RUN(test_locality);
  T_RUN(test_capability_match);
  T_RUN(test_queue_order_property);
  T_RUN(test_broadcast_plan);
  return t_done();
}
