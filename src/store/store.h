/* store.h - the command store, the result outbox and the agent store, behind one vtable so the
 * Valkey backend (store_valkey.c) and the in-process backend (store_mem.c) look the same.
 *
 * Every operation is asynchronous: it returns 0 and later runs its callback once on the loop,
 * or returns a negative SM_E* code and never runs the callback (SM_EUNAVAIL: the store is
 * disconnected, retry later, or closing; SM_ELIMIT: too many requests pending; SM_ENOMEM). A
 * callback runs exactly once for every operation that returned 0, also when the store is closed
 * with the operation pending (SM_ECANCELED), and never inside the call that asked for it. Records
 * handed to callbacks are borrowed for the callback's duration (clone what you keep).
 *
 * Listing order is creation order (created_at, then id). A cursor is an opaque string from a
 * previous page; a page may hold fewer than `limit` entries when filters skip records, and the
 * listing ends when next_cursor is NULL.
 */
#ifndef SM_STORE_STORE_H
#define SM_STORE_STORE_H

#include "util/err.h"
#include "model/command.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct store store;

#define STORE_MAX_LIST 1000  /* largest page of a listing */
#define STORE_MAX_CURSOR 192 /* bytes of a cursor */

/* Listing filter; zero/NULL members do not filter. */
typedef struct store_filter {
  unsigned status_mask; /* COMMAND_BIT(s) bits; 0: any status */
  const char *agent_id; /* the command's agent (dispatched or requested) */
  const char *type;     /* command type */
} store_filter;

typedef struct store_outbox_item {
  const char *id;      /* command id */
  const char *payload; /* the result message (JSON), NUL-terminated */
  size_t len;
} store_outbox_item;

typedef struct store_agent_rec {
  const char *id;       /* agent id */
  const char *instance; /* INSTANCE_ID of the manager holding its stream */
  const char *data;     /* the agent as JSON (the registry's view), opaque to the store */
  int64_t expires_at;   /* unix ms */
} store_agent_rec;

/* A command result. `existed` (create only): the id or idempotency key was already there and
 * cmd is the stored record. SM_ESTATE (update): the stored status was not the expected one;
 * cmd is the stored record. */
typedef void (*store_cmd_cb)(void *ud, int err, const sm_command *cmd, int existed);
typedef void (*store_list_cb)(void *ud, int err, sm_command *const *cmds, size_t n,
                              const char *next_cursor);
typedef void (*store_done_cb)(void *ud, int err);
typedef void (*store_outbox_cb)(void *ud, int err, const store_outbox_item *items, size_t n);
typedef void (*store_agents_cb)(void *ud, int err, const store_agent_rec *recs, size_t n);
/* A plain key's value (borrowed for the call; NUL-terminated, len bytes), or err. */
typedef void (*store_value_cb)(void *ud, int err, const char *value, size_t len);
/* Connection state of the backend (the in-process one is always up): 1 up, 0 down. */
typedef void (*store_state_cb)(void *ud, int up);

typedef struct store_ops {
  const char *name; /* "valkey" or "memory" */
  int (*cmd_create)(store *s, const sm_command *c, store_cmd_cb cb, void *ud);
  int (*cmd_get)(store *s, const char *id, store_cmd_cb cb, void *ud);
  int (*cmd_update)(store *s, const sm_command *c, command_status expected,
                    const char *outbox_payload, size_t outbox_len, store_cmd_cb cb, void *ud);
  int (*cmd_list)(store *s, const store_filter *f, const char *cursor, size_t limit,
                  store_list_cb cb, void *ud);
  int (*outbox_add)(store *s, const char *id, const char *payload, size_t len, store_done_cb cb,
                    void *ud);
  int (*outbox_list)(store *s, size_t limit, store_outbox_cb cb, void *ud);
  int (*outbox_remove)(store *s, const char *id, store_done_cb cb, void *ud);
  int (*agent_put)(store *s, const char *id, const char *instance, const char *data, int64_t ttl_ms,
                   store_done_cb cb, void *ud);
  int (*agent_del)(store *s, const char *id, const char *instance, store_done_cb cb, void *ud);
  int (*agent_list)(store *s, size_t limit, store_agents_cb cb, void *ud);
  int (*is_up)(const store *s);
  void (*close)(store *s, void (*closed)(void *ud), void *ud);
  int (*kv_put)(store *s, const char *key, const char *value, size_t len, int64_t ttl_ms,
                store_done_cb cb, void *ud);
  int (*kv_get)(store *s, const char *key, store_value_cb cb, void *ud);
} store_ops;

/* Operations by kind, counted by the dispatch in store.c (valkey_operations_total{op}). */
typedef enum store_op {
  STORE_OP_CMD_CREATE = 0,
  STORE_OP_CMD_GET,
  STORE_OP_CMD_UPDATE,
  STORE_OP_CMD_LIST,
  STORE_OP_OUTBOX_ADD,
  STORE_OP_OUTBOX_LIST,
  STORE_OP_OUTBOX_REMOVE,
  STORE_OP_AGENT_PUT,
  STORE_OP_AGENT_DEL,
  STORE_OP_AGENT_LIST,
  STORE_OP_KV_PUT,
  STORE_OP_KV_GET,
  STORE_OP_COUNT
} store_op;

/* The common head of every backend. */
struct store {
  const store_ops *ops;
  store_state_cb on_state; /* optional */
  void *state_ud;
  uint64_t op_count[STORE_OP_COUNT]; /* operations the backend accepted, by store_op */
  int closing;                       /* store_close was called: operations are refused */
};

/* Operations of kind op the backend accepted since creation. */
uint64_t store_op_count(const store *s, store_op op);

/* "cmd_create", "cmd_get", ... (the op label of valkey_operations_total). */
const char *store_op_name(store_op op);

typedef struct store_valkey_config {
  const char *host;         /* VALKEY_HOST */
  int port;                 /* VALKEY_PORT */
  const char *password;     /* VALKEY_PASSWORD; NULL: no AUTH */
  int db;                   /* VALKEY_DB */
  const char *prefix;       /* key prefix, "sm:" when NULL */
  double connect_timeout_s; /* 0: 5 s */
  double request_timeout_s; /* 0: 5 s */
  size_t max_pending;       /* requests in flight, and records gathered or in flight; 0: 10000 */
  size_t batch_max;         /* VALKEY_BATCH_MAX: records per group-commit call; 0: 256 */
  unsigned batch_delay_ms;  /* VALKEY_BATCH_DELAY_MS: wait after a batch's first record; 0: send
                               it at the end of the loop turn */
} store_valkey_config;

typedef struct store_mem_config {
  size_t max_commands; /* records kept; beyond it the oldest final one is evicted, and when all
                          are active creation fails with SM_ELIMIT. 0: 100000 */
  size_t max_outbox;   /* outbox entries; 0: 100000 */
  size_t max_agents;   /* agent records; 0: 100000 */
} store_mem_config;

/* Creates the in-process store. Returns 0, SM_ENOMEM. */
SM_MUST_CHECK int store_mem_create(uv_loop_t *loop, const store_mem_config *cfg, store **out);

/* Creates the Valkey store and starts connecting (state reported through store_set_state_cb).
 * Returns 0, SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int store_valkey_create(uv_loop_t *loop, const store_valkey_config *cfg, store **out);

/* Sets the connection state listener. */
void store_set_state_cb(store *s, store_state_cb cb, void *ud);

/* Stores a new command (id, type and created_at set; normally status queued). When the
 * idempotency key or the id is already stored, nothing is written and the callback gets the
 * stored record with existed=1. */
SM_MUST_CHECK int store_cmd_create(store *s, const sm_command *c, store_cmd_cb cb, void *ud);

/* Reads a command; SM_ENOENT when absent. */
SM_MUST_CHECK int store_cmd_get(store *s, const char *id, store_cmd_cb cb, void *ud);

/* Replaces the stored record by c if its stored status is still `expected` (compare-and-set, so
 * a stale writer cannot overwrite a final status) and the transition is allowed (else returns
 * SM_EINVAL at once). With outbox_payload, the same atomic write also adds it to the outbox
 * under c->id. Callback errors: SM_ENOENT, SM_ESTATE (cmd: the stored record). */
SM_MUST_CHECK int store_cmd_update(store *s, const sm_command *c, command_status expected,
                                   const char *outbox_payload, size_t outbox_len, store_cmd_cb cb,
                                   void *ud);

/* One page (limit 1..STORE_MAX_LIST) of commands matching f, after cursor (NULL: from the
 * start). */
SM_MUST_CHECK int store_cmd_list(store *s, const store_filter *f, const char *cursor, size_t limit,
                                 store_list_cb cb, void *ud);

/* Adds (or replaces) the outbox entry of a command: a result waiting for the broker's confirm. */
SM_MUST_CHECK int store_outbox_add(store *s, const char *id, const char *payload, size_t len,
                                   store_done_cb cb, void *ud);

/* The oldest outbox entries, up to limit (1..STORE_MAX_LIST). */
SM_MUST_CHECK int store_outbox_list(store *s, size_t limit, store_outbox_cb cb, void *ud);

/* Removes an outbox entry once confirmed (absent is fine). */
SM_MUST_CHECK int store_outbox_remove(store *s, const char *id, store_done_cb cb, void *ud);

/* Writes the agent's record (owned by instance) with a time to live. */
SM_MUST_CHECK int store_agent_put(store *s, const char *id, const char *instance, const char *data,
                                  int64_t ttl_ms, store_done_cb cb, void *ud);

/* Deletes the agent's record; with instance, only if that instance still owns it (another
 * manager may have taken the agent over). */
SM_MUST_CHECK int store_agent_del(store *s, const char *id, const char *instance, store_done_cb cb,
                                  void *ud);

/* Live (unexpired) agent records, up to limit (1..100000). */
SM_MUST_CHECK int store_agent_list(store *s, size_t limit, store_agents_cb cb, void *ud);

/* Plain keys for other readers (SiriusScan's UI reads `connected_agents` and
 * `cmd:response:<agent>:<command>`): the key is used AS IS, without the store's prefix, and
 * expires after ttl_ms (> 0). A key is 1..STORE_MAX_KEY bytes, a value at most
 * STORE_MAX_VALUE bytes (else SM_EINVAL at once). kv_put replaces the value and its TTL. */
#define STORE_MAX_KEY 512
#define STORE_MAX_VALUE (4u * 1024 * 1024)
SM_MUST_CHECK int store_kv_put(store *s, const char *key, const char *value, size_t len,
                               int64_t ttl_ms, store_done_cb cb, void *ud);

/* Reads a plain key (as above); SM_ENOENT when absent or expired. */
SM_MUST_CHECK int store_kv_get(store *s, const char *key, store_value_cb cb, void *ud);

/* Whether command c passes the listing filter f (both backends list through it). */
int store_filter_match(const store_filter *f, const sm_command *c);

/* Whether the backend is connected (GET /ready). */
int store_is_up(const store *s);

/* "valkey" or "memory". */
const char *store_name(const store *s);

/* Closes the store: pending operations complete with SM_ECANCELED (possibly inside this call),
 * and closed(ud) runs on the loop once every handle is closed; then s is freed. NULL is fine. */
void store_close(store *s, void (*closed)(void *ud), void *ud);

/* The index key of a listing: "<created_at as 13 digits>:<id>" (sorts by creation time). */
SM_MUST_CHECK int store_sort_key(const sm_command *c, char *out, size_t outlen);

#endif
