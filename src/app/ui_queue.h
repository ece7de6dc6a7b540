/* ui_queue.h - SiriusScan's UI queue protocol (SIRIUS_UI_COMMAND_QUEUE / _RESPONSE_QUEUE) and
 * the Valkey keys the UI reads (`connected_agents`, `cmd:response:<agent>:<command>`).
 *
 * The UI publishes JSON messages to a non-durable queue (`agent_commands` in SiriusScan):
 *   {"command": "<command line>", "agentId": "...", "userId": "...", "timestamp": "...",
 *    "target": {"type": "agent" | "all", "id": "..."}}
 *       runs the command line: a command of type `exec` with params.command, on the target
 *       agent (or a broadcast to every connected agent), through lifecycle_submit like any other;
 *   {"action": "list_agents"}            asks for the connected agents;
 *   {"action": "initialize_session", "agentId": "..."}   succeeds when the agent is connected.
 * Every message gets exactly one JSON reply on the response queue (and on its reply_to, with its
 * correlation_id, when it has them): {"success": true|false, "error": "...", ...data}.
 * A malformed message (invalid UTF-8, not JSON, not an object, unknown action, no command, bad
 * target, limits) is answered with success=false and acked: it is never requeued. A command
 * message is acked only once its command is stored; while the lifecycle refuses for now (store
 * away, queue full, maintenance) the message is nacked with requeue after UI_QUEUE_RETRY_MS.
 * Its idempotency key is "ui:" + the SHA-256 of the body, so a redelivery (a lost ack) is the
 * same command.
 *
 * The Valkey keys (no prefix: the UI reads them as they are):
 *   connected_agents          JSON array of this manager's connected agent ids, written every
 *                             UI_AGENTS_REFRESH_MS and after a register/unregister (at most once
 *                             per UI_AGENTS_MIN_INTERVAL_MS), TTL UI_AGENTS_TTL_MS;
 *   cmd:response:<a>:<id>     for every `exec` command with an agent (whatever its source): JSON
 *                             {command_id, agent_id, command, status, output, error, exit_code,
 *                             start_time, end_time}, written as `pending` when stored, `running`
 *                             when the agent reports it running, and with its final status;
 *                             TTL UI_RESPONSE_TTL_MS.
 */
#ifndef SM_APP_UI_QUEUE_H
#define SM_APP_UI_QUEUE_H

#include "core/lifecycle.h"
#include "core/registry.h"
#include "mq/amqp.h"
#include "store/store.h"
#include "util/err.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define UI_QUEUE_PREFETCH 64                  /* UI messages held unacked */
#define UI_QUEUE_RETRY_MS 1000                /* refused for now: nack (requeue) after this */
#define UI_AGENTS_KEY "connected_agents"      /* the UI's key of connected agent ids */
#define UI_AGENTS_TTL_MS (120 * 1000)         /* its TTL */
#define UI_AGENTS_REFRESH_MS (30 * 1000)      /* rewritten this often */
#define UI_AGENTS_MIN_INTERVAL_MS 1000        /* and at most this often after changes */
#define UI_RESPONSE_TTL_MS (24 * 3600 * 1000) /* cmd:response:* keys live a day */
#define UI_TRACK_MAX 100000                   /* exec commands remembered for `running` */
#define UI_AGENTS_LIST_MAX 100000             /* agent records read for connected_agents */

/* ---- the pure parts (unit-tested) ---- */

typedef enum ui_msg_kind {
  UI_MSG_COMMAND = 0,
  UI_MSG_LIST_AGENTS,
  UI_MSG_INIT_SESSION
} ui_msg_kind;

/* A parsed UI message; strings are owned (ui_msg_clear frees them). */
typedef struct ui_msg {
  ui_msg_kind kind;
  char *command;  /* UI_MSG_COMMAND: the command line */
  char *agent_id; /* the target agent (target.id, else agentId); NULL with all */
  int all;        /* target type `all`: every connected agent */
  char *user_id;  /* userId, or NULL */
} ui_msg;

/* Parses a message body. Returns 0 with *out filled, or SM_EINVAL / SM_EPARSE / SM_ENOMEM with
 * the reason (the reply's "error") in why. */
SM_MUST_CHECK int ui_msg_parse(const char *body, size_t len, ui_msg *out, char *why, size_t whylen);
void ui_msg_clear(ui_msg *m);

/* The command of a UI_MSG_COMMAND message: type exec, params.command, agent_id or broadcast,
 * source amqp, idempotency key idem (may be NULL). Returns 0, SM_EINVAL / SM_ETOOBIG (why says
 * which limit) or SM_ENOMEM. */
SM_MUST_CHECK int ui_msg_to_command(const ui_msg *m, const char *idem, sm_command **out, char *why,
                                    size_t whylen);

/* "ui:" + hex SHA-256 of body into out (at least 68 bytes). Returns 0 or an SM_E* code. */
SM_MUST_CHECK int ui_idem_key(const char *body, size_t len, char out[68]);

/* Replies (malloc'ed NUL-terminated JSON, length in *len; NULL when out of memory). */
char *ui_reply_error(const char *error, size_t *len);
char *ui_reply_command(const char *command_id, const char *agent_id, int all, size_t *len);
/* Takes ownership of agents (a cJSON array), also on failure. */
char *ui_reply_agents(cJSON *agents, size_t *len);
char *ui_reply_ok(const char *message, size_t *len);

/* The cmd:response status of c: pending (queued, dispatched), running, completed, failed (every
 * other final status). */
const char *ui_response_status(const sm_command *c);

/* The key ("cmd:response:<agent>:<id>") into out. Returns 0 or SM_ETOOBIG. */
SM_MUST_CHECK int ui_response_key(const char *agent_id, const char *command_id, char *out,
                                  size_t outlen);

/* The cmd:response JSON of c (status as above, or `status` when not NULL). Output from the
 * result's `output` or `stdout`, exit_code from `exit_code` (else 0, or 1 for failed), error
 * from the result (else the final status name for a failure without one). NULL: out of memory. */
char *ui_response_json(const sm_command *c, const char *status, size_t *len);

/* The connected_agents value: a JSON array of the ids of reg's agents and of the live agent
 * records (store_agent_list) held by other instances than `instance` (each id once; this
 * instance's own records are left to reg, which knows at once when an agent left). recs may be
 * NULL. NULL: out of memory. */
char *ui_agents_json(agent_registry *reg, const char *instance, const store_agent_rec *recs,
                     size_t n, size_t *len);

/* ---- the consumer ---- */
/* connected_agents lists every manager's agents: this one's registry and the other instances'
 * live agent records from the shared store. */

typedef struct ui_queue ui_queue;

typedef struct ui_queue_stats {
  uint64_t messages; /* deliveries handled */
  uint64_t commands; /* commands stored (replied success) */
  uint64_t rejected; /* replied success=false */
  uint64_t requeued; /* nacked with requeue (lifecycle refused for now) */
  uint64_t replies;  /* replies published */
  uint64_t kv_writes, kv_failed;
} ui_queue_stats;

/* Creates the consumer on conn (created with opts.aux_queue = the UI queue) and the key writer
 * on st; borrows everything, which must outlive it. response_queue and instance are copied.
 * Returns 0, SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int ui_queue_create(uv_loop_t *loop, mq_conn *conn, lifecycle *lc,
                                  agent_registry *reg, store *st, const char *response_queue,
                                  const char *instance, ui_queue **out);

/* Starts consuming and the connected_agents refresh. Returns 0. */
SM_MUST_CHECK int ui_queue_start(ui_queue *u);

/* Hooks from the manager (NULL u is fine for each). */
void ui_queue_agents_changed(ui_queue *u);                          /* register / unregister */
void ui_queue_cmd_received(ui_queue *u, const sm_command *c);       /* stored: pending */
void ui_queue_cmd_finished(ui_queue *u, const sm_command *c);       /* final */
void ui_queue_result(ui_queue *u, agent *a, const agent_result *r); /* running */

void ui_queue_get_stats(const ui_queue *u, ui_queue_stats *out);

/* Stops consuming (held deliveries return to the queue with the connection or are redelivered)
 * and frees u after its timers closed. Submissions and key writes in flight complete into
 * nothing. NULL is fine. */
void ui_queue_destroy(ui_queue *u);

#endif
