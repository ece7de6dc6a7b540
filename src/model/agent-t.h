/* agent-t.h - types of the agent registry, shared by the wire protocols and the admin API.
 * Types only; the functions are in core/registry.h.
 */
#ifndef SM_MODEL_AGENT_T_H
#define SM_MODEL_AGENT_T_H

#include "util/list.h"

#include <stddef.h>
#include <stdint.h>

/* The agent's own state, as it reports it (docs/agent-protocol.md AgentStatus; same numbers). */
enum agent_status {
  AGENT_UNKNOWN = 0,
  AGENT_IDLE = 1,
  AGENT_BUSY = 2,
  AGENT_ERROR = 3,
  AGENT_MAINTENANCE = 4,
};
#define AGENT_STATUS_COUNT 5

/* A borrowed key/value pair (protocol maps, capabilities, params). */
typedef struct sm_kv {
  const char *key;
  const char *value;
} sm_kv;

/* A command on its way to an agent: a borrowed view, valid for the duration of the call. */
typedef struct agent_command {
  const char *id;          /* command id */
  const char *type;        /* "scan", "status", "cancel", ... */
  const sm_kv *params;     /* string parameters */
  size_t nparams;          /* entries in params */
  int64_t timeout_seconds; /* execution timeout at the agent */
} agent_command;

/* A heartbeat's figures, as the agent reports them. */
typedef struct agent_heartbeat {
  int64_t timestamp;   /* agent's clock, unix seconds */
  double cpu_usage;    /* percent, 0..100 (values in 0..1 are taken as fractions) */
  double memory_usage; /* percent, 0..100 (values in 0..1 are taken as fractions) */
  int32_t active_commands;
} agent_heartbeat;

/* A command result from an agent: a borrowed view. */
typedef struct agent_result {
  const char *command_id;
  const char *status; /* accepted, running, completed, failed, cancelled, rejected */
  const sm_kv *data;
  size_t ndata;
  const char *error;
  int64_t completed_at; /* unix seconds */
} agent_result;

/* How the registry reaches an agent's stream, whatever the wire protocol. The transport owns
 * the link object. Exactly one of two things ends the pairing: the transport calls
 * agent_registry_detach (the stream went away by itself), or the registry calls ops->end (the
 * registry let go first: replaced, pruned, shutdown). After either, neither side touches the
 * other's object again. */
typedef struct agent_link_ops {
  const char *protocol; /* e.g. "scan.AgentService" */
  /* Queues a command on the stream. Returns 0, SM_EAGAIN when the stream's output is backed up
   * (retry later), or SM_ECLOSED when the stream is ending. Never calls back synchronously. */
  int (*send)(void *link, const agent_command *cmd);
  /* Hands the link back: the registry has already forgotten this link (and may free the agent
   * record at once), so the transport must drop its agent pointer here and must NOT call
   * agent_registry_detach for this link afterwards. The transport then ends the stream
   * asynchronously (reason is an SM_E* code: SM_EEXIST replaced by a newer stream,
   * SM_ETIMEDOUT pruned, SM_ECANCELED shutdown; message is for the peer, e.g. grpc-message). */
  void (*end)(void *link, int reason, const char *message);
  /* Remote address as text ("127.0.0.1:51234"); never NULL. */
  const char *(*peer)(void *link);
} agent_link_ops;

/* A capability: one key=value pair the agent declared. */
typedef struct agent_capability {
  char *key;
  char *value;
} agent_capability;

#define AGENT_ID_MAX 128          /* bytes in an agent id */
#define AGENT_META_VALUE_MAX 1024 /* bytes in one descriptor value */
#define AGENT_CAPS_MAX 64         /* capabilities per agent */

/* One connected agent. Owned by the registry; read-only outside core/. */
typedef struct agent {
  char *id; /* unique id, NUL-terminated, at most AGENT_ID_MAX bytes */
  size_t id_len;
  char *hostname;         /* descriptor: "" when not sent */
  char *version;          /* semantic version text, "" when not sent */
  char *segment;          /* CIDR of the agent's network segment, "" when not sent */
  agent_capability *caps; /* declared capabilities, sorted by key */
  size_t ncaps;
  int32_t max_concurrent;   /* commands it runs at once, >= 1 */
  double weight;            /* relative capacity, > 0 */
  enum agent_status status; /* last reported state */
  double cpu_usage;         /* percent 0..100, last heartbeat */
  double memory_usage;      /* percent 0..100, last heartbeat */
  int32_t active_commands;  /* last heartbeat's figure */
  int32_t assigned;         /* commands the manager has given it and not seen finish */
  double load;              /* derived, 0..1 */
  int64_t connected_at_ms;  /* unix ms of registration */
  int64_t last_seen_ms;     /* unix ms of the last message */
  uint64_t generation;      /* bumped on each new stream for this id; stale handles compare it */
  uint64_t messages;        /* messages received on the current stream */
  /* transport */
  const agent_link_ops *link_ops; /* NULL while no stream is attached */
  void *link;
  /* agent store mirror (core/agent_mirror.c) */
  int64_t mirrored_ms;       /* unix ms of the last record written to the store; 0: never */
  unsigned mirror_dirty : 1; /* changed since that write */
  /* registry bookkeeping */
  sm_list seen; /* in the registry's list ordered by last_seen, oldest first (pruning) */
  size_t index; /* position in the registry's dense array */
} agent;

/* A stale-safe reference to an agent: resolves to NULL once that stream has gone. */
typedef struct agent_handle {
  char id[AGENT_ID_MAX + 1];
  uint64_t generation;
} agent_handle;

/* What a later issue's selection and the admin API filter agents by. Zero values match all. */
typedef struct agent_filter {
  unsigned status_mask; /* bit (1 << status) for each accepted status; 0: any */
  const sm_kv *caps;    /* required capabilities (value "*" or "" matches any value) */
  size_t ncaps;
  const char *min_version; /* semantic version, NULL: any */
  double max_load;         /* agents with load <= max_load; negative: any */
} agent_filter;

#endif
