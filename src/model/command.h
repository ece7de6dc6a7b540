/* command.h - the command record: what REST and AMQP submit, what the store keeps, what the API
 * reports (docs/api.md "Commands").
 *
 * A command is parsed and validated once at intake (command_parse), lives in the store in its
 * serialized form (command_serialize / command_deserialize) and is reported through
 * command_to_json. Every string of a command is owned by it (heap copies); command_free frees
 * them all. Times are unix milliseconds, 0 meaning "not yet".
 */
#ifndef SM_MODEL_COMMAND_H
#define SM_MODEL_COMMAND_H

#include "model/agent-t.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on what a submitter controls; the parser refuses anything beyond them. */
#define COMMAND_MAX_ID 128              /* bytes of id (also of agent_id, idempotency key) */
#define COMMAND_MAX_TYPE 64             /* bytes of type */
#define COMMAND_MAX_PARAMS 64           /* entries of params, of capabilities, of filter */
#define COMMAND_MAX_KEY 256             /* bytes of a params/capabilities key */
#define COMMAND_MAX_VALUE (64 * 1024)   /* bytes of one value */
#define COMMAND_MAX_TOTAL (1024 * 1024) /* bytes of a whole command (keys + values + fields) */
#define COMMAND_MAX_TIMEOUT_S (30LL * 24 * 3600) /* timeout_seconds upper bound: 30 days */
#define COMMAND_MAX_CHILDREN 100000              /* children of a broadcast */
#define COMMAND_ID_LEN 36                        /* generated ids: UUIDv7 text form */

typedef enum command_status {
  COMMAND_QUEUED = 0, /* stored, waiting for an agent */
  COMMAND_DISPATCHED, /* sent on an agent's stream */
  COMMAND_RUNNING,    /* the agent said accepted/running */
  COMMAND_COMPLETED,  /* final: the agent reported success */
  COMMAND_FAILED,     /* final: agent failure, rejection, or retries exhausted */
  COMMAND_TIMED_OUT,  /* final: no final result within timeout_seconds + grace */
  COMMAND_CANCELLED,  /* final: cancelled by an operator */
  COMMAND_EXPIRED,    /* final: deadline passed before it started */
  COMMAND_STATUS_COUNT
} command_status;

/* Bit of a status in a status mask (store listings). */
#define COMMAND_BIT(s) (1u << (unsigned)(s))
#define COMMAND_MASK_ALL ((1u << COMMAND_STATUS_COUNT) - 1u)
#define COMMAND_MASK_ACTIVE                                                                        \
  (COMMAND_BIT(COMMAND_QUEUED) | COMMAND_BIT(COMMAND_DISPATCHED) | COMMAND_BIT(COMMAND_RUNNING))

typedef enum command_source { COMMAND_SRC_REST = 0, COMMAND_SRC_AMQP } command_source;

typedef struct command_result {
  int present;  /* a result was recorded */
  char *status; /* the agent's result status ("completed", "failed", ...) or NULL */
  sm_kv *data;  /* owned strings */
  size_t ndata;
  char *error;          /* NULL: none */
  int64_t completed_at; /* unix ms */
} command_result;

typedef struct sm_command {
  /* as submitted */
  char *id;      /* unique; client-chosen or generated */
  char *type;    /* non-empty */
  sm_kv *params; /* owned strings; numbers/booleans kept as their text */
  size_t nparams;
  char *target_agent;  /* "agent_id" as submitted: run on this agent; NULL: any */
  sm_kv *capabilities; /* the agent must have all of these */
  size_t ncapabilities;
  int priority;            /* 0..9, higher first; default 5 */
  int64_t timeout_seconds; /* execution timeout at the agent; 0: COMMAND_TIMEOUT */
  int64_t deadline;        /* unix ms; 0: none. Not started by then -> expired */
  char *strategy;          /* overrides LOAD_BALANCING_STRATEGY; NULL: default */
  int broadcast;           /* one child command per agent matching the filter */
  sm_kv *filter;           /* broadcast agent filter (status, segment, min_version, ...) */
  size_t nfilter;
  /* lifecycle */
  command_status status;
  char *agent_id;     /* the agent it was dispatched to; NULL: none yet */
  int attempts;       /* dispatches so far */
  int64_t created_at; /* unix ms */
  int64_t dispatched_at;
  int64_t started_at;
  int64_t completed_at;
  command_result result;
  char **children; /* broadcast: child command ids (owned); NULL with nchildren > 0 in a state
                      snapshot (command_clone_state): the count only */
  size_t nchildren;
  size_t nchildren_planned; /* broadcast parent read from the store: the children it was
                               dispatched to (children lists the ones created; 0: unknown) */
  char *parent_id;          /* broadcast child: the parent's id */
  /* intake */
  char *reply_to;        /* AMQP reply_to of the intake message */
  char *correlation_id;  /* AMQP correlation_id */
  char *idempotency_key; /* Idempotency-Key header */
  command_source source; /* rest or amqp */
  char *instance;        /* INSTANCE_ID of the manager that accepted it */
} sm_command;

/* Generator of unique, time-sortable ids (UUIDv7 with a 12-bit counter in rand_a, so ids made in
 * the same millisecond still sort in creation order). Caller-owned, no globals. */
typedef struct command_idgen {
  int64_t last_ms; /* unix ms of the last id */
  uint32_t seq;    /* counter within last_ms */
  uint64_t rng;    /* xorshift state for the random bits */
} command_idgen;

/* Seeds the generator from the OS random source. */
void command_idgen_init(command_idgen *g);

/* Writes a new id (COMMAND_ID_LEN chars + NUL) for time now_ms (unix ms) into out. */
void command_idgen_next(command_idgen *g, int64_t now_ms, char out[COMMAND_ID_LEN + 1]);

/* A new zeroed command (status queued, priority 5), or NULL. */
sm_command *command_new(void);

/* Frees c and everything it owns. NULL is fine. */
void command_free(sm_command *c);

/* A deep copy, or NULL when out of memory. */
sm_command *command_clone(const sm_command *c);

/* A state snapshot: a copy of what a store update writes (store.h) and what a write's
 * bookkeeping reads: id, type, target_agent, agent_id, parent_id, reply_to, correlation_id, the
 * status, attempts, priority, broadcast, source, times and result. children stays NULL while
 * nchildren keeps the count (a broadcast parent's children ids are not copied: they are stored
 * by the children's own creation). NULL when out of memory. */
sm_command *command_clone_state(const sm_command *c);

/* The placement strategies a command may name (docs/settings.md LOAD_BALANCING_STRATEGY), NULL-
 * terminated; sched/ has one strategy for each (its tests check that they agree). */
const char *const *command_strategy_names(void);

/* Whether name is one of them. NULL and "" are not. */
int command_strategy_known(const char *name);

/* Parses and validates a submitted command (docs/api.md fields; unknown fields are ignored).
 * On failure writes "field: reason" into err (e.g. "type: required") and returns SM_EINVAL,
 * SM_ETOOBIG (a limit above, the message names it) or SM_ENOMEM. On success *out is a new
 * command with status queued and id NULL when none was given. */
int command_parse(const cJSON *json, sm_command **out, char *err, size_t errlen);

/* Reads a submitted JSON text (REST body, AMQP message) for command_parse. Beyond JSON, every
 * string in it, key or value, must be valid UTF-8 without NUL (U+0000, as \u0000 or a raw byte):
 * cJSON's C strings would end at a NUL and invalid UTF-8 would be written back into every JSON
 * answer. Returns 0 with *out the document (the caller deletes it); SM_EPARSE with
 * "body: invalid JSON"; or SM_EINVAL with "field: reason" in err, e.g. "type: must not contain
 * NUL (\u0000)", "params.cmd: must be valid UTF-8", "element 2: type: ..." in an array. */
int command_json_parse(const char *text, size_t len, cJSON **out, char *err, size_t errlen);

/* command_parse from text read by command_json_parse (its errors, then command_parse's). */
int command_parse_text(const char *text, size_t len, sm_command **out, char *err, size_t errlen);

/* The API form (docs/api.md): RFC 3339 UTC times, "agent_id" the dispatched or requested
 * agent, result and children when present. NULL when out of memory. */
cJSON *command_to_json(const sm_command *c);

/* The store form: every field, times in ms. Returns a malloc'ed NUL-terminated string (length in
 * *len when len is not NULL) or NULL when out of memory. */
char *command_serialize(const sm_command *c, size_t *len);

/* Reads the store form. Returns 0, SM_EPARSE (not a command record) or SM_ENOMEM. */
int command_deserialize(const char *text, size_t len, sm_command **out);

/* The store form of a result alone (the `result` member of command_serialize). Returns a
 * malloc'ed NUL-terminated string (length in *len when not NULL) or NULL when out of memory. */
char *command_result_serialize(const command_result *r, size_t *len);

/* Reads a result's store form into *out (cleared first; present set). Returns 0, SM_EPARSE or
 * SM_ENOMEM (then *out is cleared). */
int command_result_deserialize(const char *text, size_t len, command_result *out);

/* "queued", "dispatched", ...; "unknown" outside the enum. */
const char *command_status_name(command_status s);

/* Parses a status name. Returns 0 or SM_EINVAL. */
int command_status_parse(const char *name, command_status *out);

/* Whether s is final (completed, failed, timed_out, cancelled, expired). */
int command_status_is_final(command_status s);

/* Whether the lifecycle may move a command from `from` to `to`:
 * queued->dispatched|expired|cancelled|failed, dispatched->running|queued (retry)|final,
 * running->queued (retry)|final (not expired); nothing leaves a final status. */
int command_transition_allowed(command_status from, command_status to);

/* Sets the result (deep copies; replaces an earlier one). Returns 0 or SM_ENOMEM. */
int command_set_result(sm_command *c, const char *status, const sm_kv *data, size_t ndata,
                       const char *error, int64_t completed_at_ms);

/* Frees what r owns and zeroes it. */
void command_result_clear(command_result *r);

/* Replaces a string field (*field) by a copy of s (NULL clears). Returns 0 or SM_ENOMEM. */
int command_set_str(char **field, const char *s);

/* Appends a child id. Returns 0, SM_ELIMIT or SM_ENOMEM. */
int command_add_child(sm_command *c, const char *id);

/* The agent the command runs or should run on (agent_id, else target_agent), or NULL. */
const char *command_agent(const sm_command *c);

/* Parses RFC 3339 ("2026-11-28T12:00:00Z", fractions, +hh:mm offsets) into unix ms.
 * Returns 0 or SM_EINVAL. */
int command_time_parse(const char *s, int64_t *out_ms);

/* Formats unix ms as RFC 3339 UTC with milliseconds ("2026-11-28T12:00:00.000Z"). */
void command_time_format(int64_t ms, char out[32]);

/* The current wall-clock time in unix ms. */
int64_t command_now_ms(void);

#endif
