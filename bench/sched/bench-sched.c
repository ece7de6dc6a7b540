/* bench-sched.c - the orchestration benchmarks (issue 4).
 *
 *   bench-sched select [samples]   selection cost per command, 1k/10k/100k agents, each strategy
 *   bench-sched lag [agents]       p99 lateness of a 1 ms timer while a broadcast is planned
 *   bench-sched                    both
 *
 * Agents are registry records with an in-memory link (no sockets): what is measured is the
 * scheduler, not the network.
 */
#include "model/command.h"
#include "core/lifecycle.h"
#include "core/registry.h"
#include "sched/balancer.h"
#include "sched/broadcast.h"
#include "sched/strategy.h"
#include "store/store.h"
#include "util/err.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

static uint64_t rng = 88172645463325252ULL;
static uint32_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 11);
}

static int fake_send(void *link, const agent_command *cmd) {
  (void)cmd;
  ++*(size_t *)link; /* commands sent, all agents share one counter */
  return 0;
}
static void fake_end(void *link, int reason, const char *message) {
  (void)link;
  (void)reason;
  (void)message;
}
static const char *fake_peer(void *link) {
  (void)link;
  return "bench";
}
static const agent_link_ops fake_ops = {"bench", fake_send, fake_end, fake_peer};
static size_t sent_total;

static const char *capsets[] = {"scan_type=nmap,os=linux", "scan_type=masscan,os=linux",
                                "scan_type=nmap,os=windows", "os=linux,gpu=yes"};

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

static agent_registry *make_agents(uv_loop_t *loop, size_t n, const agent_registry_events *ev) {
  agent_registry_config rc = {.agent_timeout_s = 3600, .max_agents = n, .instance = "bench"};
  agent_registry *reg;
  if (agent_registry_create(loop, &rc, &reg) != 0)
    exit(1);
  if (ev)
    agent_registry_set_events(reg, ev);
  for (size_t i = 0; i < n; i++) {
    char id[32], seg[32], wt[8];
    snprintf(id, sizeof(id), "agent-%zu", i);
    snprintf(seg, sizeof(seg), "10.%zu.%zu.0/24", (i / 256) % 256, i % 256);
    snprintf(wt, sizeof(wt), "%u", 1 + rnd() % 4);
    sm_kv meta[5] = {{"capabilities", capsets[i % 4]},
                     {"max_concurrent", "4"},
                     {"segment", seg},
                     {"weight", wt},
                     {"version", "1.2.0"}};
    agent *a;
    if (agent_registry_attach(reg, id, strlen(id), AGENT_IDLE, meta, 5, &fake_ops, &sent_total,
                              &a) != 0)
      exit(1);
  }
  return reg;
}

static int ucmp(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static void bench_select(size_t samples) {
  static const char *strategies[] = {"round_robin", "least_loaded", "capability_match",
                                     "weighted",    "adaptive",     "locality"};
  size_t sizes[] = {1000, 10000, 100000};
  printf("%-8s %-17s %12s %12s %12s %12s\n", "agents", "strategy", "pick_med_ns", "pick_p99_ns",
         "cycle_med_ns", "cycle_p99_ns");
  for (size_t si = 0; si < 3; si++) {
    for (size_t st = 0; st < 6; st++) {
      uv_loop_t loop;
      uv_loop_init(&loop);
      sched_strategy *s;
      sched_set_config sc = {.default_strategy = strategies[st], .max_agent_load = 0.8};
      if (sched_set_create(&loop, &sc, &s) != 0)
        exit(1);
      agent_registry_events ev = {
          .on_register = ev_reg, .on_unregister = ev_unreg, .on_update = ev_upd, .ud = s};
      size_t n = sizes[si];
      agent_registry *reg = make_agents(&loop, n, &ev);
      uint64_t *pick = malloc(samples * sizeof(*pick));
      uint64_t *cycle = malloc(samples * sizeof(*cycle));
      /* steady state: half the agents' slots busy; each pick is accounted (assigned+1, as the
       * lifecycle does), and the oldest assignment finishes (assigned-1) */
      size_t ring_n = n, head = 0, len = 0;
      agent **ring = malloc(ring_n * sizeof(*ring));
      sm_kv caps[2][1] = {{{"scan_type", "nmap"}}, {{"os", "linux"}}};
      char target[32];
      size_t warm = samples / 4;
      for (size_t i = 0; i < samples + warm; i++) {
        sched_request rq = {.max_agent_load = 0.8};
        if (i % 2) {
          rq.caps = caps[(i / 2) % 2];
          rq.ncaps = 1;
        }
        snprintf(target, sizeof(target), "10.%u.%u.%u", (unsigned)(rnd() % 256),
                 (unsigned)(rnd() % 256), (unsigned)(rnd() % 256));
        sm_kv tp = {"target", target};
        rq.params = &tp;
        rq.nparams = 1;
        agent *out = NULL;
        uint64_t t0 = uv_hrtime();
        int err = sched_pick(s, &rq, &out);
        uint64_t t1 = uv_hrtime();
        if (err == 0) {
          out->assigned++;
          out->load = agent_load_compute(out);
          sched_notify(s, out, SCHED_EV_UPDATE);
          if (len == ring_n) {
            agent *old = ring[head];
            old->assigned--;
            old->load = agent_load_compute(old);
            sched_notify(s, old, SCHED_EV_UPDATE);
            len--;
          }
          ring[head] = out;
          head = (head + 1) % ring_n;
          len++;
        }
        uint64_t t2 = uv_hrtime();
        if (i >= warm) {
          pick[i - warm] = t1 - t0;
          cycle[i - warm] = t2 - t0;
        }
      }
      qsort(pick, samples, sizeof(*pick), ucmp);
      qsort(cycle, samples, sizeof(*cycle), ucmp);
      printf("%-8zu %-17s %12llu %12llu %12llu %12llu\n", n, strategies[st],
             (unsigned long long)pick[samples / 2], (unsigned long long)pick[samples * 99 / 100],
             (unsigned long long)cycle[samples / 2], (unsigned long long)cycle[samples * 99 / 100]);
      fflush(stdout);
      free(ring);
      free(pick);
      free(cycle);
      agent_registry_events none = {0};
      agent_registry_set_events(reg, &none);
      sched_strategy_destroy(s);
      agent_registry_destroy(reg);
      uv_run(&loop, UV_RUN_DEFAULT);
      uv_loop_close(&loop);
    }
  }
}

/* ---- loop lag ----------------------------------------------------------------------------- */

/* Lateness of a 1 ms timer, and the loop thread's CPU time between two ticks: on this shared
 * machine a late tick is either a long loop turn (CPU used) or the thread being preempted (no
 * CPU used), and the second figure tells them apart. */
typedef struct lagmeter {
  uv_timer_t t;
  uint64_t last, last_cpu;
  uint64_t *lag, *cpu;
  size_t n, cap;
  int on;
} lagmeter;

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void lag_tick(uv_timer_t *t) {
  lagmeter *m = t->data;
  uint64_t now = uv_hrtime(), cpu = thread_cpu_ns();
  if (m->on && m->last && m->n < m->cap) {
    uint64_t d = now - m->last;
    m->cpu[m->n] = cpu - m->last_cpu;
    m->lag[m->n++] = d > 1000000 ? d - 1000000 : 0;
  }
  m->last = now;
  m->last_cpu = cpu;
}

/* Starts a phase: samples from here on, and the first one measured from now (not from the last
 * tick of the previous phase, which would count the setup in between as a loop turn). */
static void lag_phase(lagmeter *m) {
  uv_update_time(m->t.loop);
  uv_timer_again(&m->t);
  m->n = 0;
  m->last = 0;
}

static void lag_report(const char *what, lagmeter *m) {
  if (m->n == 0) {
    printf("%s: no samples\n", what);
    return;
  }
  qsort(m->lag, m->n, sizeof(*m->lag), ucmp);
  qsort(m->cpu, m->n, sizeof(*m->cpu), ucmp);
  printf("%-44s samples %6zu  p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms\n", what, m->n,
         m->lag[m->n / 2] / 1e6, m->lag[m->n * 99 / 100] / 1e6, m->lag[m->n - 1] / 1e6);
  printf("%-44s loop CPU between ticks:  p99 %7.3f ms  max %7.3f ms\n", "",
         m->cpu[m->n * 99 / 100] / 1e6, m->cpu[m->n - 1] / 1e6);
}

typedef struct plan_state {
  uv_loop_t *loop;
  lagmeter *m;
  int done;
  size_t matched;
  double plan_ms;
  uv_timer_t stop;
} plan_state;

static void planned(void *ud, int err, sched_bcast_plan *plan) {
  plan_state *ps = ud;
  ps->done = 1;
  if (err == 0) {
    ps->matched = plan->n;
    ps->plan_ms = plan->plan_ms;
  }
  sched_bcast_plan_free(plan);
}

static void stop_cb(uv_timer_t *t) {
  plan_state *ps = t->data;
  if (ps->done)
    uv_stop(ps->loop);
}

/* Lifecycle end to end: the broadcast command through the in-process store. */
typedef struct lc_state {
  lifecycle *lc;
  int accepted;
  size_t want; /* sends that end the run */
} lc_state;

static void submitted(void *ud, int err, const sm_command *cmd, int existed) {
  (void)cmd;
  (void)existed;
  lc_state *s = ud;
  s->accepted = err == 0 ? 1 : -1;
}

/* Stops once every child was sent (lifecycle_get_stats walks every command: too heavy to poll
 * here without adding lag of its own). */
static void lc_stop_cb(uv_timer_t *t) {
  lc_state *s = t->data;
  if (s->accepted && sent_total >= s->want)
    uv_stop(t->loop);
}

static void bench_lag(size_t n) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  agent_registry *reg = make_agents(&loop, n, NULL);
  lagmeter m = {.cap = 200000};
  m.lag = malloc(m.cap * sizeof(*m.lag));
  m.cpu = malloc(m.cap * sizeof(*m.cpu));
  if (m.lag == NULL || m.cpu == NULL)
    exit(1);
  uv_timer_init(&loop, &m.t);
  m.t.data = &m;
  uv_timer_start(&m.t, lag_tick, 1, 1);
  /* baseline: 300 ms of an idle loop */
  m.on = 1;
  uv_timer_t stop;
  uv_timer_init(&loop, &stop);
  plan_state ps = {.loop = &loop, .m = &m, .done = 1};
  stop.data = &ps;
  lag_phase(&m);
  uv_timer_start(&stop, stop_cb, 300, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  char what[96];
  snprintf(what, sizeof(what), "idle loop (%zu agents)", n);
  lag_report(what, &m);
  /* planning: snapshot on the loop, match on the work queue */
  lag_phase(&m);
  ps.done = 0;
  sm_kv cap = {"os", "linux"};
  agent_filter f = {.caps = &cap, .ncaps = 1, .max_load = -1, .min_version = "1.0"};
  sched_bcast_job *job;
  size_t na = agent_registry_count(reg); /* the caller's array (the registry's, in the manager) */
  agent **all = malloc((na ? na : 1) * sizeof(*all));
  for (size_t i = 0; all && i < na; i++)
    all[i] = agent_registry_at(reg, i);
  uint64_t t0 = uv_hrtime();
  if (all == NULL ||
      sched_bcast_start(&loop, all, na, &f, COMMAND_MAX_CHILDREN, planned, &ps, &job) != 0)
    exit(1);
  free(all);
  double snap_ms = (uv_hrtime() - t0) / 1e6;
  uv_timer_start(&stop, stop_cb, 1, 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  double total_ms = (uv_hrtime() - t0) / 1e6;
  snprintf(what, sizeof(what), "broadcast planning (%zu agents)", n);
  lag_report(what, &m);
  printf("  snapshot on the loop %.2f ms, matching on the work queue %.2f ms, total %.2f ms, "
         "%zu matched\n",
         snap_ms, ps.plan_ms, total_ms, ps.matched);

  /* end to end through the lifecycle: plan, apply (parent + children), dispatch */
  store *st;
  store_mem_config mc = {.max_commands = n * 2 + 10};
  if (store_mem_create(&loop, &mc, &st) != 0)
    exit(1);
  sched_strategy *s;
  sched_set_config sc = {.default_strategy = "least_loaded", .max_agent_load = 0.8};
  if (sched_set_create(&loop, &sc, &s) != 0)
    exit(1);
  lifecycle_config lcfg = {.queue_size = 1000, .max_agent_load = 0.8, .instance = "bench"};
  lc_state ls = {0};
  if (lifecycle_create(&loop, &lcfg, reg, st, NULL, s, &ls.lc) != 0 || lifecycle_start(ls.lc))
    exit(1);
  const char *body = "{\"type\":\"status\",\"broadcast\":true,\"capabilities\":{\"os\":\"linux\"}}";
  sm_command *cmd;
  char err[128];
  if (command_parse_text(body, strlen(body), &cmd, err, sizeof(err)) != 0)
    exit(1);
  lag_phase(&m);
  sent_total = 0;
  ls.want = ps.matched;
  t0 = uv_hrtime();
  if (lifecycle_submit(ls.lc, cmd, submitted, &ls) != 0)
    exit(1);
  stop.data = &ls;
  uv_timer_start(&stop, lc_stop_cb, 5, 5);
  uv_run(&loop, UV_RUN_DEFAULT);
  total_ms = (uv_hrtime() - t0) / 1e6;
  lifecycle_stats lst;
  lifecycle_get_stats(ls.lc, &lst);
  snprintf(what, sizeof(what), "broadcast end to end (%zu agents)", n);
  lag_report(what, &m);
  printf("  submit -> every child dispatched: %.0f ms, %llu dispatched\n", total_ms,
         (unsigned long long)lst.dispatched);
  uv_timer_stop(&stop);
  uv_timer_stop(&m.t);
  lifecycle_close(ls.lc, NULL, NULL);
  agent_registry_destroy(reg);
  uv_close((uv_handle_t *)&stop, NULL);
  uv_close((uv_handle_t *)&m.t, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  store_close(st, NULL, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  free(m.lag);
  free(m.cpu);
}

int main(int argc, char **argv) {
  sm_log_configure(SM_LOG_WARN, SM_LOG_JSON);
  const char *what = argc > 1 ? argv[1] : "all";
  if (strcmp(what, "select") == 0 || strcmp(what, "all") == 0)
    bench_select(argc > 2 && strcmp(what, "select") == 0 ? (size_t)atol(argv[2]) : 20000);
  if (strcmp(what, "lag") == 0 || strcmp(what, "all") == 0)
    bench_lag(argc > 2 && strcmp(what, "lag") == 0 ? (size_t)atol(argv[2]) : 100000);
  return 0;
}
