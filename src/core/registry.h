/* registry.h - the agent registry: who is connected, what they can do, how loaded they are.
 *
 * Independent of any wire protocol: a transport translates its messages into these calls and
 * offers an agent_link_ops to reach the stream. Lookups by id are O(1); pruning of silent agents
 * is O(pruned) thanks to a list ordered by last-seen time.
 */
#ifndef SM_CORE_REGISTRY_H
#define SM_CORE_REGISTRY_H

#include "model/agent.h"
#include "util/err.h"

#include <uv.h>

typedef struct agent_registry agent_registry;

typedef struct agent_registry_config {
  double agent_timeout_s; /* prune agents silent this long (AGENT_TIMEOUT) */
  size_t max_agents;      /* registry capacity; registration beyond it is refused */
  const char *instance;   /* this manager's INSTANCE_ID, reported per agent */
} agent_registry_config;

/* Listener for registry events (the command lifecycle, metrics, the agent store). Every
 * callback is optional and runs on the loop. */
typedef struct agent_registry_events {
  void (*on_register)(void *ud, agent *a, int replaced);
  void (*on_unregister)(void *ud, agent *a, int reason); /* a is still readable here */
  void (*on_update)(void *ud, agent *a);                 /* status/heartbeat/descriptor changed */
  void (*on_result)(void *ud, agent *a, const agent_result *r);
  void *ud;
} agent_registry_events;

/* Creates a registry on loop. Returns 0, SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int agent_registry_create(uv_loop_t *loop, const agent_registry_config *cfg,
                                        agent_registry **out);

/* Stops the prune timer and frees everything once its close callback ran; attached links are
 * ended first. NULL is fine. */
void agent_registry_destroy(agent_registry *reg);

/* Sets (replaces) the event listener. */
void agent_registry_set_events(agent_registry *reg, const agent_registry_events *ev);

/* Starts the prune timer (period: a quarter of the timeout, between 100 ms and 5 s). */
SM_MUST_CHECK int agent_registry_start(agent_registry *reg);

/* Registers the agent `id` on a new stream, described by metadata (hostname, version,
 * capabilities, segment, max_concurrent, weight). When the id is already connected, the old
 * stream is ended (replaced) and the record moves to the new one. Returns 0 with *out set,
 * SM_EINVAL (empty/oversized id or invalid descriptor value), SM_ELIMIT (registry full) or
 * SM_ENOMEM. */
SM_MUST_CHECK int agent_registry_attach(agent_registry *reg, const char *id, size_t id_len,
                                        enum agent_status status, const sm_kv *meta, size_t nmeta,
                                        const agent_link_ops *ops, void *link, agent **out);

/* The transport reports that the agent's stream is gone by itself (reason: SM_ECLOSED for a
 * normal end, or the error). The agent leaves the registry. Never call it for a link the
 * registry already handed back through ops->end. */
void agent_registry_detach(agent_registry *reg, agent *a, void *link, int reason);

/* Any later message: status, metadata updates, last-seen. Returns 0 or SM_EINVAL (a bad
 * descriptor value; the record keeps its old values). */
int agent_registry_touch(agent_registry *reg, agent *a, enum agent_status status, const sm_kv *meta,
                         size_t nmeta);

/* A heartbeat's figures; updates the derived load. */
void agent_registry_heartbeat(agent_registry *reg, agent *a, const agent_heartbeat *hb);

/* A command result; forwarded to the listener. */
void agent_registry_result(agent_registry *reg, agent *a, const agent_result *r);

/* The agent with this id, or NULL. O(1). */
agent *agent_registry_find(const agent_registry *reg, const char *id, size_t id_len);

/* Counters since the registry was created. */
typedef struct agent_registry_stats {
  uint64_t messages;     /* agent messages received (registrations included) */
  uint64_t heartbeats;   /* of which heartbeats */
  uint64_t results;      /* of which command results */
  uint64_t registered;   /* registrations (replacements included) */
  uint64_t pruned;       /* agents pruned for silence */
  uint64_t disconnected; /* agents whose stream ended */
} agent_registry_stats;

void agent_registry_get_stats(const agent_registry *reg, agent_registry_stats *out);

/* Number of registered agents. */
size_t agent_registry_count(const agent_registry *reg);

/* The i-th agent of the dense array (0 <= i < count); order changes when agents leave. */
agent *agent_registry_at(const agent_registry *reg, size_t i);

/* Every agent, as the registry's own dense array of *n entries (any order). Valid until the
 * registry next changes; for handing the fleet to placement (sched_sync, sched_bcast_start),
 * which copies what it keeps. */
agent *const *agent_registry_agents(const agent_registry *reg, size_t *n);

/* Calls fn for each agent passing the filter; stops early when fn returns non-zero. Returns the
 * number of agents visited that matched. */
size_t agent_registry_foreach(agent_registry *reg, const agent_filter *f,
                              int (*fn)(void *ud, agent *a), void *ud);

/* Sends a command on the agent's stream. Returns 0, SM_ECLOSED (no stream), SM_EAGAIN
 * (backed up) or what the link returns. */
SM_MUST_CHECK int agent_send(agent *a, const agent_command *cmd);

/* Sends to every agent the filter matches; returns how many accepted it. */
size_t agent_registry_broadcast(agent_registry *reg, const agent_filter *f,
                                const agent_command *cmd);

/* Ends every attached stream (graceful shutdown); the links detach afterwards. */
void agent_registry_end_all(agent_registry *reg, int reason, const char *message);

/* Handles that survive the agent: fill from a live agent, resolve later (NULL once gone). */
agent *agent_handle_get(const agent_registry *reg, const agent_handle *h);

#endif
