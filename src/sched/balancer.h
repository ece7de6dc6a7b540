/* balancer.h - the load balancer: the indexes of the connected agents, kept current from
 * registry events, so that placing a command is O(log n) and never a scan of all agents. The
 * strategies (policy.h) are vtables the balancer calls; it knows none of them by name.
 *
 * Indexes:
 *  - by id (hash map): explicit agent_id requests and lookups by strategies;
 *  - pools: the set of agents that satisfy one requirement (a set of capabilities, optionally
 *    one network segment), created the first time a command needs it and kept current
 *    incrementally afterwards (an agent is re-checked only against the pools anchored at one of
 *    its own capability keys or its segment). At most SCHED_POOLS_MAX exist; the least recently
 *    used goes first.
 *  - per pool, one indexed binary heap (util/heap.h) per strategy that has an ordering and has
 *    been used, holding only the agents that can take a command now (connected, not
 *    MAINTENANCE/ERROR, below max_concurrent and MAX_AGENT_LOAD). A pick is the top of one heap;
 *    the key changes a pick or a heartbeat cause are O(log n) per pool the agent is in.
 *  - segment groups (locality): the agents of each normalized segment, and how many agents use
 *    each prefix length.
 * Invariants (asserted in debug builds): an agent is in a pool's heap iff it is a member of the
 * pool and available; heap positions stored in the nodes match the heaps.
 *
 * The balancer never owns agents: the caller must report register, update (load, assigned,
 * status, descriptor) and unregister of every agent through these calls, on the loop thread.
 */
#ifndef SM_SCHED_BALANCER_H
#define SM_SCHED_BALANCER_H

#include "sched/policy.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SCHED_POOLS_MAX 1024  /* requirement pools kept; the least recently used is dropped */
#define SCHED_POLICIES_MAX 16 /* strategies one balancer can drive */

typedef struct sched_lb sched_lb;

typedef struct sched_lb_config {
  double max_agent_load; /* MAX_AGENT_LOAD; <= 0: 0.8 */
  double ewma_alpha;     /* weight of a new sample in the adaptive averages; <= 0: 0.2 */
  double recompute_s;    /* adaptive weights recomputed (off the loop) this often while new
                            results arrived; <= 0: 1 s */
} sched_lb_config;

/* Creates an empty balancer on loop driving the n strategies of policies (borrowed, must
 * outlive the balancer; each started with its env). Returns 0, SM_EINVAL or SM_ENOMEM (or a
 * strategy's start error); on error nothing is left allocated. */
SM_MUST_CHECK int sched_lb_create(uv_loop_t *loop, const sched_lb_config *cfg,
                                  const sched_policy *const *policies, size_t n, sched_lb **out);

/* Forgets every agent, finishes every strategy and frees the balancer. NULL is fine. */
void sched_lb_destroy(sched_lb *lb);

/* The strategy with this name among the balancer's, or NULL. */
const sched_policy *sched_lb_policy(const sched_lb *lb, const char *name);

/* The state block of strategy p in lb (NULL when p is not one of lb's). */
void *sched_lb_policy_state(const sched_lb *lb, const sched_policy *p);

/* An agent registered (or re-registered on a new stream: same record, new generation).
 * Returns 0 or SM_ENOMEM (then the agent is not indexed; the balancer is unchanged). */
SM_MUST_CHECK int sched_lb_register(sched_lb *lb, agent *a);

/* The agent left; a is still readable during the call. */
void sched_lb_unregister(sched_lb *lb, agent *a);

/* The agent's load, assigned count, status or descriptor changed. Unknown agents are
 * registered. Returns 0 or SM_ENOMEM (the agent is then not indexed, or in fewer pools; the
 * next update or pick repairs it). */
SM_MUST_CHECK int sched_lb_update(sched_lb *lb, agent *a);

/* Registers the n agents of agents (start-up; O(n)). Returns 0 or the first error (the others
 * are still tried). */
SM_MUST_CHECK int sched_lb_sync(sched_lb *lb, agent *const *agents, size_t n);

/* A finished command's outcome on agent a: execution time in seconds and success; forwarded to
 * every strategy's result hook. */
void sched_lb_result(sched_lb *lb, agent *a, double exec_s, int ok);

/* Chooses an agent for req by the ordering of strategy order (agent_id, capabilities and
 * availability honoured) and charges the pick to it (its served clock; order's charged hook).
 * seg (normalized CIDR text or NULL) restricts to agents of that segment. Returns 0 with *out,
 * SM_EAGAIN (some agent matches but none can take it now), SM_ENOENT (no connected agent
 * matches), SM_EINVAL (order has no ordering or is not one of lb's) or SM_ENOMEM (its pool could
 * not be built). */
SM_MUST_CHECK int sched_lb_pick(sched_lb *lb, const sched_request *req, const char *seg,
                                const sched_policy *order, agent **out);

/* Locality: tries (at most `tries`) the segments of connected agents that contain target (an
 * address or CIDR), most specific first, best by order within each; then any agent by order.
 * Same returns as sched_lb_pick. */
SM_MUST_CHECK int sched_lb_pick_local(sched_lb *lb, const sched_request *req, const char *target,
                                      int tries, const sched_policy *order, agent **out);

/* Agents for a command: up to max agents that match req and can take it now, best first by the
 * ordering of order, without charging any pick. Returns how many were written to out (0 also
 * when out of memory). O(max log max) when most agents in the pool match. */
size_t sched_lb_candidates(sched_lb *lb, const sched_request *req, const sched_policy *order,
                           agent **out, size_t max);

/* Locality: the most specific segment (longest prefix) of the connected agents that contains
 * target (an IPv4/IPv6 address or CIDR). Writes the normalized segment into seg and returns 0,
 * or SM_ENOENT (none, or target unparsable). Only prefix lengths some agent uses are tried, from
 * below `below` (the length found last time; pass 129 to start). *len receives the length. */
SM_MUST_CHECK int sched_lb_segment_for(const sched_lb *lb, const char *target, int below,
                                       char seg[64], int *len);

/* Normalizes a CIDR or address ("10.0.0.7/24" -> "10.0.0.0/24", "10.0.0.7" -> "10.0.0.7/32").
 * Returns 0 or SM_EINVAL. */
SM_MUST_CHECK int sched_cidr_normalize(const char *text, char out[64]);

/* For strategies: the indexed agents (i < sched_lb_count), by id, and strategy p's per-agent
 * block of one of them. */
const sched_agent_view *sched_lb_at(const sched_lb *lb, size_t i);
const sched_agent_view *sched_lb_find(const sched_lb *lb, const char *id, size_t id_len);
void *sched_lb_agent_state(const sched_lb *lb, const sched_agent_view *v, const sched_policy *p);

/* Number of agents indexed and of pools. */
size_t sched_lb_count(const sched_lb *lb);
size_t sched_lb_pools(const sched_lb *lb);

/* Checks every invariant of the indexes (O(everything)); aborts through assert on a violation.
 * For tests; a no-op under NDEBUG. */
void sched_lb_check(const sched_lb *lb);

#endif
