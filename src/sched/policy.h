/* policy.h - the interface of one placement strategy: a vtable in its own file (round_robin.c,
 * least_loaded.c, capability_match.c, weighted.c, adaptive.c, locality.c) that holds its own
 * state and is driven by the balancer (balancer.h). Adding a strategy is one new file defining a
 * `const sched_policy sched_policy_<name>` and one line in the table of strategy.c.
 *
 * Division of labour:
 *  - the balancer owns the indexes (agents by id, requirement pools, segment groups) and, per
 *    pool, one heap for each strategy that has an ordering (`key`) and has been used;
 *  - the strategy says how agents are ordered (`key`: lower first, ties broken by the balancer),
 *    which indexed facts its key reads (`key_deps`: the balancer re-sorts when they change),
 *    keeps its own per-agent fields (`agent_size` bytes per indexed agent, e.g. a stride pass)
 *    and global state (`state_size` bytes, e.g. virtual time, a recompute timer), reacts to
 *    agents joining, becoming available again, being picked and reporting results, and decides
 *    how a command is placed (`pick`, usually one call of sched_lb_pick with its own ordering).
 *
 * Every hook runs on the loop thread, from inside a balancer call; a hook must not call back
 * into the balancer except where noted (pick and the strategy's own public functions may).
 * `self` is the strategy's zeroed state block, `mine` its zeroed per-agent block (both owned by
 * the balancer, valid until finish / the agent's unregister).
 */
#ifndef SM_SCHED_POLICY_H
#define SM_SCHED_POLICY_H

#include "sched/request.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct sched_lb;

/* An ordering key: lexicographic (k0, k1, k2), lower first. */
typedef struct sched_key {
  double k0, k1;
  uint64_t k2;
} sched_key;

/* What the balancer has indexed of one agent, as strategies see it (read only). */
typedef struct sched_agent_view {
  agent *a;         /* the live record */
  uint64_t gen;     /* agent generation when last indexed */
  double load;      /* as indexed */
  int32_t assigned; /* as indexed */
  size_t ncaps;     /* capability count */
  double weight;    /* declared weight, > 0 */
  uint64_t served;  /* balancer clock of its last pick, 0: never */
} sched_agent_view;

/* key_deps: the view fields a key reads besides the strategy's own per-agent block. */
#define SCHED_DEP_LOAD 1u   /* load, assigned (a heartbeat, a pick's accounting) */
#define SCHED_DEP_SERVED 2u /* served (every pick, whatever the strategy) */

/* What a strategy gets at creation. */
typedef struct sched_policy_env {
  uv_loop_t *loop;
  struct sched_lb *lb;
  double max_agent_load; /* MAX_AGENT_LOAD */
  double ewma_alpha;     /* weight of a new sample in decaying averages, 0..1 */
  double recompute_s;    /* period of background recomputes, > 0 */
} sched_policy_env;

typedef struct sched_policy sched_policy;

struct sched_policy {
  const char *name;  /* LOAD_BALANCING_STRATEGY value, e.g. "least_loaded" */
  size_t state_size; /* bytes of global state (zeroed), 0: none */
  size_t agent_size; /* bytes of per-agent state (zeroed at register), 0: none */
  unsigned key_deps; /* SCHED_DEP_* */

  /* Places req: 0 with *out; SM_EAGAIN when agents that could run it exist but none can take
   * it now; SM_ENOENT when no connected agent could ever take it; SM_ENOMEM. May call the
   * balancer (sched_lb_pick, sched_lb_pick_local). */
  int (*pick)(void *self, struct sched_lb *lb, const sched_request *req, agent **out);

  /* The ordering of this strategy's heaps, lower first (ties: the balancer's record order).
   * NULL: the strategy keeps no heaps (it picks through another strategy's ordering). */
  void (*key)(const void *self, const sched_agent_view *v, const void *mine, sched_key *k);

  /* Optional. Creation (SM_ENOMEM etc. fails the balancer's creation) and destruction; finish
   * runs only when start succeeded. */
  int (*start)(void *self, const sched_policy_env *env);
  void (*finish)(void *self);
  /* Optional. An agent was indexed (registered): initialise mine. */
  void (*joined)(void *self, const sched_agent_view *v, void *mine);
  /* Optional. An agent can take commands again (it was busy, loaded, away). */
  void (*available)(void *self, const sched_agent_view *v, void *mine);
  /* Optional. A pick by this strategy's ordering went to v; returns 1 when this strategy's own
   * key of v changed (its heaps are then re-sorted), else 0. */
  int (*charged)(void *self, const sched_agent_view *v, void *mine);
  /* Optional. A command finished on v after exec_s seconds, ok or not. */
  void (*result)(void *self, const sched_agent_view *v, void *mine, double exec_s, int ok);
};

/* Stride scheduling (weighted.c, adaptive.c): the agent with the lowest pass goes next and its
 * pass advances by 1/weight; vtime is the pass of the last pick, where a joining or returning
 * agent starts so that time spent away does not turn into a burst. */
typedef struct sched_stride {
  double vtime;
} sched_stride;

static inline void sched_stride_join(const sched_stride *s, double *pass) {
  if (*pass < s->vtime)
    *pass = s->vtime;
}

static inline void sched_stride_charge(sched_stride *s, double *pass, double weight) {
  s->vtime = *pass;
  *pass += 1.0 / (weight > 1e-6 ? weight : 1e-6);
}

#endif
