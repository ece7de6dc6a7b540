/* balancer.h - the load balancer: an index of the connected agents kept current from registry
 * events, so that choosing an agent for a command is O(log n) and never a scan of all agents.
 *
 * Indexes:
 *  - by id (hash map): explicit agent_id requests;
 *  - pools: the set of agents that satisfy one requirement (a set of capabilities, optionally
 *    one network segment), created the first time a command needs it and kept current
 *    incrementally afterwards (an agent is re-checked only against the pools anchored at one of
 *    its own capability keys or its segment). At most SCHED_POOLS_MAX exist; the least recently
 *    used goes first.
 *  - per pool, one indexed binary heap per active ordering (least load, least recently served,
 *    tightest capability fit, weighted stride pass, adaptive stride pass) holding only the
 *    agents that can take a command now (connected, not MAINTENANCE/ERROR, below max_concurrent
 *    and MAX_AGENT_LOAD). A pick is the top of one heap; the key changes a pick or a heartbeat
 *    cause are O(log n) per pool the agent is in.
 *
 * The balancer never owns agents: the caller must report register, update (load, assigned,
 * status, descriptor) and unregister of every agent through these calls, on the loop thread.
 */
#ifndef SM_SCHED_BALANCER_H
#define SM_SCHED_BALANCER_H

#include "core/registry.h"
#include "sched/strategy.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SCHED_POOLS_MAX 1024 /* requirement pools kept; the least recently used is dropped */

typedef struct sched_lb sched_lb;

/* Orderings a pool can keep (strategies share them). */
typedef enum sched_ord {
  SCHED_ORD_LOAD = 0, /* lowest load, then fewest assigned, then least recently served */
  SCHED_ORD_RR,       /* least recently served (round robin) */
  SCHED_ORD_FIT,      /* fewest capabilities (tightest fit), then load, then least recently */
  SCHED_ORD_WEIGHTED, /* lowest stride pass, pass += 1/weight per pick */
  SCHED_ORD_ADAPTIVE, /* lowest stride pass, pass += 1/learned weight per pick */
  SCHED_ORD_COUNT
} sched_ord;

typedef struct sched_lb_config {
  double max_agent_load; /* MAX_AGENT_LOAD; <= 0: 0.8 */
  double ewma_alpha;     /* weight of a new sample in the adaptive averages; <= 0: 0.2 */
  double recompute_s;    /* adaptive weights recomputed (off the loop) this often while new
                            results arrived; <= 0: 1 s */
} sched_lb_config;

/* Creates an empty balancer on loop (the loop runs the adaptive recompute). Returns 0, SM_EINVAL
 * or SM_ENOMEM. */
int sched_lb_create(uv_loop_t *loop, const sched_lb_config *cfg, sched_lb **out);

/* Forgets every agent and frees the balancer; a recompute running on the work queue finishes
 * and is freed later without touching anything else. NULL is fine. */
void sched_lb_destroy(sched_lb *lb);

/* Starts maintaining ordering o in every pool (O(pool members) once). */
void sched_lb_activate(sched_lb *lb, sched_ord o);

/* An agent registered (or re-registered on a new stream: same record, new generation). */
int sched_lb_register(sched_lb *lb, agent *a);

/* The agent left; a is still readable during the call. */
void sched_lb_unregister(sched_lb *lb, agent *a);

/* The agent's load, assigned count, status or descriptor changed. Unknown agents are
 * registered. */
void sched_lb_update(sched_lb *lb, agent *a);

/* Registers every agent of reg (start-up; O(n)). */
void sched_lb_sync(sched_lb *lb, agent_registry *reg);

/* A finished command's outcome on agent a: execution time in seconds and success. Feeds the
 * adaptive averages (O(1)); the learned weights follow at the next recompute. */
void sched_lb_result(sched_lb *lb, agent *a, double exec_s, int ok);

/* Chooses an agent for req by ordering o (agent_id, capabilities and availability honoured) and
 * charges the pick to it (round robin turn, stride pass). seg (normalized CIDR text or NULL)
 * restricts to agents of that segment. Returns 0 with *out, SM_EAGAIN (some agent matches but
 * none can take it now) or SM_ENOENT (no connected agent matches). */
int sched_lb_pick(sched_lb *lb, const sched_request *req, const char *seg, sched_ord o,
                  agent **out);

/* Locality: tries (at most `tries`) the segments of connected agents that contain target (an
 * address or CIDR), most specific first, least loaded within each; then any agent by load.
 * Same returns as sched_lb_pick. */
int sched_lb_pick_local(sched_lb *lb, const sched_request *req, const char *target, int tries,
                        agent **out);

/* Agents for a command: up to max agents that match req and can take it now, best first by
 * ordering o, without charging any pick. Returns how many were written to out. O(max log max)
 * when most agents in the pool match. */
size_t sched_lb_candidates(sched_lb *lb, const sched_request *req, sched_ord o, agent **out,
                           size_t max);

/* Locality: the most specific segment (longest prefix) of the connected agents that contains
 * target (an IPv4/IPv6 address or CIDR). Writes the normalized segment into seg and returns 0,
 * or SM_ENOENT (none, or target unparsable). Only prefix lengths some agent uses are tried, from
 * below `below` (the length found last time; pass 129 to start). *len receives the length. */
int sched_lb_segment_for(const sched_lb *lb, const char *target, int below, char seg[64], int *len);

/* Normalizes a CIDR or address ("10.0.0.7/24" -> "10.0.0.0/24", "10.0.0.7" -> "10.0.0.7/32").
 * Returns 0 or SM_EINVAL. */
int sched_cidr_normalize(const char *text, char out[64]);

/* Recomputes the adaptive weights of all agents now, on the calling thread (tests, bench). */
void sched_lb_recompute_now(sched_lb *lb);

/* Starts a recompute on the uv work queue over a snapshot; applied on the loop. Returns 0, or
 * SM_EAGAIN when one is already running. */
int sched_lb_recompute(sched_lb *lb);

/* The adaptive weight in use for agent a (its weight until results were learned). */
double sched_lb_adaptive_weight(const sched_lb *lb, const agent *a);

/* Number of agents indexed and of pools. */
size_t sched_lb_count(const sched_lb *lb);
size_t sched_lb_pools(const sched_lb *lb);

#endif
