/* ui_queue.c - SiriusScan's UI queue protocol and the Valkey keys its UI reads (ui_queue.h). */
#include "app/ui_queue.h"

#include "model/agent_json.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/list.h"
#include "util/log.h"
#include "util/map.h"
#include "util/sha256.h"
#include "util/timeutil.h"
#include "util/utf8.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parsing ---- */

static int why_set(char *why, size_t whylen, int err, const char *text) {
  if (why && whylen)
    snprintf(why, whylen, "%s", text);
  return err;
}

/* A string member: NULL when absent; SM_EINVAL when present and not a string. */
static int str_member(const cJSON *o, const char *name, const char **out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  *out = NULL;
  if (v == NULL || cJSON_IsNull(v))
    return 0;
  if (!cJSON_IsString(v) || v->valuestring == NULL)
    return SM_EINVAL;
  *out = v->valuestring;
  return 0;
}

static int dup_opt(char **dst, const char *s) {
  *dst = NULL;
  if (s == NULL || *s == '\0')
    return 0;
  *dst = sm_strdup(s);
  return *dst ? 0 : SM_ENOMEM;
}

void ui_msg_clear(ui_msg *m) {
  free(m->command);
  free(m->agent_id);
  free(m->user_id);
  memset(m, 0, sizeof(*m));
}

int ui_msg_parse(const char *body, size_t len, ui_msg *out, char *why, size_t whylen) {
  memset(out, 0, sizeof(*out));
  if (body == NULL)
    return why_set(why, whylen, SM_EINVAL, "Invalid command format: empty message");
  /* Strings go back into JSON replies and keys: invalid UTF-8 or a NUL would corrupt them. */
  if (!sm_utf8_valid(body, len) || memchr(body, '\0', len) != NULL)
    return why_set(why, whylen, SM_EINVAL, "Invalid command format: invalid UTF-8");
  cJSON *j = cJSON_ParseWithLength(body, len);
  if (j == NULL)
    return why_set(why, whylen, SM_EPARSE, "Invalid command format: malformed JSON");
  int err = 0;
  const char *action = NULL, *command = NULL, *agent_s = NULL, *user = NULL, *ttype = NULL,
             *tid = NULL;
  if (!cJSON_IsObject(j)) {
    err = why_set(why, whylen, SM_EINVAL, "Invalid command format: not a JSON object");
    goto done;
  }
  if (str_member(j, "action", &action) || str_member(j, "command", &command) ||
      str_member(j, "agentId", &agent_s) || str_member(j, "userId", &user)) {
    err = why_set(why, whylen, SM_EINVAL,
                  "Invalid command format: action, command, agentId and userId must be strings");
    goto done;
  }
  const cJSON *target = cJSON_GetObjectItemCaseSensitive(j, "target");
  if (target != NULL && !cJSON_IsNull(target)) {
    if (!cJSON_IsObject(target) || str_member(target, "type", &ttype) ||
        str_member(target, "id", &tid)) {
      err = why_set(why, whylen, SM_EINVAL, "Invalid target: must be {\"type\", \"id\"} strings");
      goto done;
    }
  }
  if (action != NULL && *action != '\0') {
    if (strcmp(action, "list_agents") == 0) {
      out->kind = UI_MSG_LIST_AGENTS;
    } else if (strcmp(action, "initialize_session") == 0) {
      out->kind = UI_MSG_INIT_SESSION;
      if (agent_s == NULL || *agent_s == '\0') {
        err = why_set(why, whylen, SM_EINVAL, "initialize_session: agentId is required");
        goto done;
      }
      err = dup_opt(&out->agent_id, agent_s);
    } else {
      char buf[160];
      snprintf(buf, sizeof(buf), "Unknown action \"%.60s\"", action);
      err = why_set(why, whylen, SM_EINVAL, buf);
      goto done;
    }
    if (!err)
      err = dup_opt(&out->user_id, user);
    goto done;
  }
  if (command == NULL || *command == '\0') {
    err = why_set(why, whylen, SM_EINVAL, "Unknown or empty command");
    goto done;
  }
  out->kind = UI_MSG_COMMAND;
  if (ttype == NULL || strcmp(ttype, "agent") == 0) {
    /* target.id names the agent; agentId is the older field for the same */
    const char *id = tid && *tid ? tid : agent_s;
    if (id == NULL || *id == '\0') {
      err = why_set(why, whylen, SM_EINVAL, "Invalid target for agent command: no agent id");
      goto done;
    }
    err = dup_opt(&out->agent_id, id);
  } else if (strcmp(ttype, "all") == 0) {
    out->all = 1;
  } else {
    char buf[160];
    snprintf(buf, sizeof(buf), "Invalid target type \"%.60s\" (agent or all)", ttype);
    err = why_set(why, whylen, SM_EINVAL, buf);
    goto done;
  }
  if (!err)
    err = dup_opt(&out->command, command);
  if (!err)
    err = dup_opt(&out->user_id, user);
done:
  cJSON_Delete(j);
  if (err == SM_ENOMEM)
    why_set(why, whylen, SM_ENOMEM, "out of memory");
  if (err)
    ui_msg_clear(out);
  return err;
}

int ui_msg_to_command(const ui_msg *m, const char *idem, sm_command **out, char *why,
                      size_t whylen) {
  *out = NULL;
  if (m->kind != UI_MSG_COMMAND || m->command == NULL)
    return why_set(why, whylen, SM_EINVAL, "not a command message");
  cJSON *j = cJSON_CreateObject();
  cJSON *params = cJSON_CreateObject();
  int ok = j && params && cJSON_AddStringToObject(j, "type", "exec") &&
           cJSON_AddStringToObject(params, "command", m->command);
  if (ok) {
    cJSON_AddItemToObject(j, "params", params);
    params = NULL;
    ok = m->all ? cJSON_AddTrueToObject(j, "broadcast") != NULL
                : cJSON_AddStringToObject(j, "agent_id", m->agent_id) != NULL;
  }
  cJSON_Delete(params);
  sm_command *c = NULL;
  int err = ok ? command_parse(j, &c, why, whylen) : SM_ENOMEM;
  cJSON_Delete(j);
  if (err) {
    if (err == SM_ENOMEM)
      why_set(why, whylen, err, "out of memory");
    return err;
  }
  c->source = COMMAND_SRC_AMQP;
  if (idem && command_set_str(&c->idempotency_key, idem)) {
    command_free(c);
    return why_set(why, whylen, SM_ENOMEM, "out of memory");
  }
  *out = c;
  return 0;
}

int ui_idem_key(const char *body, size_t len, char out[68]) {
  uint8_t d[SM_SHA256_LEN];
  int err = sm_sha256(body, len, d);
  if (err)
    return err;
  memcpy(out, "ui:", 3);
  sm_hex_encode(d, SM_SHA256_LEN, out + 3);
  out[3 + 2 * SM_SHA256_LEN] = '\0';
  return 0;
}

/* ---- replies ---- */

static char *print_owned(cJSON *j, size_t *len) {
  char *s = j ? cJSON_PrintUnformatted(j) : NULL;
  cJSON_Delete(j);
  if (s == NULL)
    return NULL;
  /* cJSON allocates with malloc: copy into our allocator so callers free() uniformly. */
  size_t n = strlen(s);
  char *o = sm_malloc(n + 1);
  if (o)
    memcpy(o, s, n + 1);
  cJSON_free(s);
  if (o && len)
    *len = n;
  return o;
}

char *ui_reply_error(const char *error, size_t *len) {
  cJSON *j = cJSON_CreateObject();
  if (j && (!cJSON_AddFalseToObject(j, "success") ||
            !cJSON_AddStringToObject(j, "error", error ? error : "error"))) {
    cJSON_Delete(j);
    return NULL;
  }
  return print_owned(j, len);
}

char *ui_reply_ok(const char *message, size_t *len) {
  cJSON *j = cJSON_CreateObject();
  if (j && (!cJSON_AddTrueToObject(j, "success") ||
            !cJSON_AddStringToObject(j, "message", message ? message : ""))) {
    cJSON_Delete(j);
    return NULL;
  }
  return print_owned(j, len);
}

char *ui_reply_command(const char *command_id, const char *agent_id, int all, size_t *len) {
  cJSON *j = cJSON_CreateObject();
  if (j && (!cJSON_AddTrueToObject(j, "success") ||
            !cJSON_AddStringToObject(j, "command_id", command_id ? command_id : "") ||
            !cJSON_AddStringToObject(j, "agent_id", agent_id && !all ? agent_id : "") ||
            !cJSON_AddStringToObject(j, "target", all ? "all" : "agent") ||
            !cJSON_AddStringToObject(j, "message", "Command received, forwarding to agent"))) {
    cJSON_Delete(j);
    return NULL;
  }
  return print_owned(j, len);
}

char *ui_reply_agents(cJSON *agents, size_t *len) {
  cJSON *j = cJSON_CreateObject();
  if (j == NULL || agents == NULL || !cJSON_AddTrueToObject(j, "success")) {
    cJSON_Delete(j);
    cJSON_Delete(agents);
    return NULL;
  }
  int n = cJSON_GetArraySize(agents);
  cJSON_AddItemToObject(j, "agents", agents);
  if (!cJSON_AddNumberToObject(j, "count", n)) {
    cJSON_Delete(j);
    return NULL;
  }
  return print_owned(j, len);
}

/* ---- cmd:response ---- */

const char *ui_response_status(const sm_command *c) {
  switch (c->status) {
  case COMMAND_QUEUED:
  case COMMAND_DISPATCHED:
    return "pending";
  case COMMAND_RUNNING:
    return "running";
  case COMMAND_COMPLETED:
    return "completed";
  default:
    return "failed";
  }
}

int ui_response_key(const char *agent_id, const char *command_id, char *out, size_t outlen) {
  int n = snprintf(out, outlen, "cmd:response:%s:%s", agent_id ? agent_id : "",
                   command_id ? command_id : "");
  return n < 0 || (size_t)n >= outlen ? SM_ETOOBIG : 0;
}

static const char *result_data(const sm_command *c, const char *key) {
  for (size_t i = 0; c->result.present && i < c->result.ndata; i++)
    if (c->result.data[i].key && strcmp(c->result.data[i].key, key) == 0)
      return c->result.data[i].value;
  return NULL;
}

static const char *param(const sm_command *c, const char *key) {
  for (size_t i = 0; i < c->nparams; i++)
    if (c->params[i].key && strcmp(c->params[i].key, key) == 0)
      return c->params[i].value;
  return NULL;
}

char *ui_response_json(const sm_command *c, const char *status, size_t *len) {
  const char *st = status ? status : ui_response_status(c);
  int final = command_status_is_final(c->status) && status == NULL;
  const char *out = result_data(c, "output");
  if (out == NULL)
    out = result_data(c, "stdout");
  const char *error = c->result.present ? c->result.error : NULL;
  if (final && c->status != COMMAND_COMPLETED && (error == NULL || *error == '\0'))
    error = command_status_name(c->status);
  long long code = final && c->status != COMMAND_COMPLETED ? 1 : 0;
  const char *ec = result_data(c, "exit_code");
  if (ec != NULL) {
    char *end = NULL;
    long long v = strtoll(ec, &end, 10);
    if (end != ec && *end == '\0')
      code = v;
  }
  int64_t start = c->started_at      ? c->started_at
                  : c->dispatched_at ? c->dispatched_at
                                     : c->created_at;
  char ts[32], te[32];
  command_time_format(start, ts);
  cJSON *j = cJSON_CreateObject();
  const char *cmdline = param(c, "command");
  int ok = j && cJSON_AddStringToObject(j, "command_id", c->id ? c->id : "") &&
           cJSON_AddStringToObject(j, "agent_id", command_agent(c) ? command_agent(c) : "") &&
           cJSON_AddStringToObject(j, "command", cmdline ? cmdline : "") &&
           cJSON_AddStringToObject(j, "status", st) &&
           cJSON_AddStringToObject(j, "output", out ? out : "") &&
           cJSON_AddStringToObject(j, "error", error ? error : "") &&
           cJSON_AddNumberToObject(j, "exit_code", (double)code) &&
           cJSON_AddStringToObject(j, "start_time", ts);
  if (ok && final && c->completed_at) {
    command_time_format(c->completed_at, te);
    ok = cJSON_AddStringToObject(j, "end_time", te) != NULL;
  } else if (ok) {
    ok = cJSON_AddNullToObject(j, "end_time") != NULL;
  }
  if (!ok) {
    cJSON_Delete(j);
    return NULL;
  }
  return print_owned(j, len);
}

static int add_id(cJSON *a, sm_map *seen, const char *id) {
  if (sm_map_get(seen, id, strlen(id)) != NULL)
    return 0;
  cJSON *s = cJSON_CreateString(id);
  if (s == NULL || sm_map_put(seen, id, strlen(id), (void *)id) != 0) {
    cJSON_Delete(s);
    return SM_ENOMEM;
  }
  cJSON_AddItemToArray(a, s);
  return 0;
}

char *ui_agents_json(agent_registry *reg, const char *instance, const store_agent_rec *recs,
                     size_t n, size_t *len) {
  cJSON *a = cJSON_CreateArray();
  sm_map seen;
  sm_map_init(&seen, 0);
  size_t nl = reg ? agent_registry_count(reg) : 0;
  int err = a ? 0 : SM_ENOMEM;
  for (size_t i = 0; !err && i < nl; i++)
    err = add_id(a, &seen, agent_registry_at(reg, i)->id);
  for (size_t i = 0; !err && recs && i < n; i++) {
    if (recs[i].id == NULL || *recs[i].id == '\0' ||
        (instance && recs[i].instance && strcmp(recs[i].instance, instance) == 0))
      continue;
    err = add_id(a, &seen, recs[i].id);
  }
  sm_map_finish(&seen);
  if (err) {
    cJSON_Delete(a);
    return NULL;
  }
  return print_owned(a, len);
}

/* ---- the consumer ---- */

/* A command message waiting for its submission's answer, or held until its requeue. Outlives
 * the consumer when destroyed with the submission in flight (u NULL: the answer frees it). */
typedef struct ui_pending {
  sm_list node; /* u->held while waiting for the requeue timer; else on no list */
  ui_queue *u;
  uint64_t gen, tag;
  char *reply_to;
  char *correlation_id;
  char *agent_id; /* NULL with all */
  int all;
  int in_flight;
} ui_pending;

/* An exec command remembered for its `running` write (the result hook carries only the id). */
typedef struct ui_track {
  char *id;
  sm_command *c; /* a clone: id, agent, command line, times */
} ui_track;

/* A key write in flight: it completes into nothing after the consumer is gone. */
typedef struct ui_kv_op {
  sm_list node; /* u->kv_ops while attached */
  ui_queue *u;
  int agents; /* the connected_agents write */
} ui_kv_op;

struct ui_queue {
  uv_loop_t *loop;
  mq_conn *conn;
  lifecycle *lc;
  agent_registry *reg;
  store *st;
  char *response_queue;
  char *instance;
  uv_timer_t retry_timer;  /* nacks the held messages */
  uv_timer_t agents_timer; /* connected_agents refresh */
  int closing_handles;
  int started;
  int64_t agents_last_ms; /* last connected_agents write started */
  int agents_busy;        /* a connected_agents write is in flight */
  int agents_dirty;       /* changed while that write was in flight */
  sm_list held;           /* ui_pending waiting for the requeue */
  sm_list kv_ops;
  sm_list inflight; /* ui_pending with a submission in flight */
  sm_map track;     /* command id -> ui_track */
  ui_queue_stats stats;
};

static void pending_free(ui_pending *p) {
  free(p->reply_to);
  free(p->correlation_id);
  free(p->agent_id);
  free(p);
}

static char *slice_dup_ok(mq_slice s) {
  /* reply_to and correlation_id go back out as AMQP strings: refuse NUL and invalid UTF-8 */
  if (s.len == 0 || memchr(s.base, '\0', s.len) != NULL || !sm_utf8_valid(s.base, s.len))
    return NULL;
  return sm_strndup(s.base, s.len);
}

/* Publishes one reply to the response queue, and to reply_to when given (and different). */
static void reply(ui_queue *u, const char *reply_to, const char *corr, char *body) {
  if (body == NULL) {
    sm_log_error("ui-queue", "reply out of memory: none sent");
    return;
  }
  size_t len = strlen(body);
  mq_props props = {.content_type = {"application/json", 16}};
  if (corr)
    props.correlation_id = (mq_slice){corr, strlen(corr)};
  const char *qs[2] = {u->response_queue, reply_to};
  for (int i = 0; i < 2; i++) {
    if (qs[i] == NULL || (i == 1 && strcmp(qs[1], qs[0]) == 0))
      continue;
    int err = mq_conn_publish(u->conn, qs[i], (mq_slice){body, len}, &props, NULL, NULL);
    if (err)
      sm_log_warn("ui-queue", "reply not published", SM_LS("queue", qs[i]), SM_LE(err));
    else
      u->stats.replies++;
  }
  free(body);
}

static void settle(ui_queue *u, uint64_t gen, uint64_t tag, int requeue) {
  int err = requeue ? mq_conn_nack(u->conn, gen, tag, 1) : mq_conn_ack(u->conn, gen, tag);
  if (err)
    sm_log_debug("ui-queue", "settle not sent (the broker redelivers it)", SM_LE(err),
                 SM_LI("tag", tag));
}

static void fail_msg(ui_queue *u, const mq_message *m, const char *reply_to, const char *corr,
                     const char *why) {
  u->stats.rejected++;
  sm_log_info("ui-queue", "message refused", SM_LS("error", why));
  reply(u, reply_to, corr, ui_reply_error(why, NULL));
  settle(u, m->generation, m->delivery_tag, 0);
}

static void on_retry(uv_timer_t *t);

/* Keeps p for the requeue timer (the lifecycle refused for now). */
static void hold(ui_queue *u, ui_pending *p) {
  u->stats.requeued++;
  sm_list_push_back(&u->held, &p->node);
  if (!uv_is_active((uv_handle_t *)&u->retry_timer))
    uv_timer_start(&u->retry_timer, on_retry, UI_QUEUE_RETRY_MS, 0);
}

static int transient(int err) {
  return err == SM_EUNAVAIL || err == SM_ELIMIT || err == SM_EAGAIN || err == SM_ETIMEDOUT ||
         err == SM_ECLOSED;
}

static void on_retry(uv_timer_t *t) {
  ui_queue *u = t->data;
  sm_list *it;
  while ((it = sm_list_pop_front(&u->held)) != NULL) {
    ui_pending *p = SM_LIST_ENTRY(it, ui_pending, node);
    settle(u, p->gen, p->tag, 1); /* a stale generation: the broker has it back already */
    pending_free(p);
  }
}

static void submitted(void *ud, int err, const sm_command *cmd, int existed) {
  ui_pending *p = ud;
  ui_queue *u = p->u;
  p->in_flight = 0;
  if (u == NULL) {
    pending_free(p); /* consumer gone: unacked, the broker redelivers it */
    return;
  }
  sm_list_remove(&p->node);
  if (err == 0) {
    u->stats.commands++;
    sm_log_info("ui-queue", "command accepted", SM_LS("command_id", cmd ? cmd->id : NULL),
                SM_LS("agent_id", p->agent_id), SM_LB("existed", existed));
    reply(u, p->reply_to, p->correlation_id,
          ui_reply_command(cmd ? cmd->id : NULL, p->agent_id, p->all, NULL));
    settle(u, p->gen, p->tag, 0);
    pending_free(p);
    return;
  }
  if (transient(err)) {
    hold(u, p);
    return;
  }
  u->stats.rejected++;
  reply(u, p->reply_to, p->correlation_id, ui_reply_error(sm_strerror(err), NULL));
  settle(u, p->gen, p->tag, 0);
  pending_free(p);
}

/* Takes reply_to and corr (freed here or by the pending submission). */
static void handle_command(ui_queue *u, const mq_message *m, const ui_msg *msg, char *reply_to,
                           char *corr) {
  char why[256];
  sm_command *cmd = NULL;
  ui_pending *p = NULL;
  if (!msg->all && agent_registry_find(u->reg, msg->agent_id, strlen(msg->agent_id)) == NULL) {
    snprintf(why, sizeof(why), "Agent %.200s not connected", msg->agent_id);
    fail_msg(u, m, reply_to, corr, why);
    goto out;
  }
  char idem[68];
  if (ui_idem_key(m->body.base, m->body.len, idem) != 0)
    idem[0] = '\0';
  int err = ui_msg_to_command(msg, idem[0] ? idem : NULL, &cmd, why, sizeof(why));
  if (err && err != SM_ENOMEM) {
    fail_msg(u, m, reply_to, corr, why);
    goto out;
  }
  if (!err)
    p = sm_calloc(1, sizeof(*p));
  if (p == NULL || (msg->agent_id && (p->agent_id = sm_strdup(msg->agent_id)) == NULL)) {
    free(p);
    command_free(cmd);
    sm_log_error("ui-queue", "out of memory: message requeued");
    settle(u, m->generation, m->delivery_tag, 1);
    goto out;
  }
  sm_list_init(&p->node);
  p->u = u;
  p->gen = m->generation;
  p->tag = m->delivery_tag;
  p->all = msg->all;
  p->reply_to = reply_to;
  p->correlation_id = corr;
  reply_to = corr = NULL; /* p's now */
  p->in_flight = 1;
  sm_list_push_back(&u->inflight, &p->node);
  err = lifecycle_submit(u->lc, cmd, submitted, p);
  if (err == 0)
    return;
  p->in_flight = 0;
  sm_list_remove(&p->node);
  if (transient(err)) {
    hold(u, p);
    return;
  }
  u->stats.rejected++;
  reply(u, p->reply_to, p->correlation_id, ui_reply_error(sm_strerror(err), NULL));
  settle(u, p->gen, p->tag, 0);
  pending_free(p);
out:
  free(reply_to);
  free(corr);
}

static cJSON *agents_array(ui_queue *u) {
  cJSON *arr = cJSON_CreateArray();
  size_t n = agent_registry_count(u->reg);
  for (size_t i = 0; arr && i < n; i++) {
    cJSON *a = agent_to_json(agent_registry_at(u->reg, i), u->instance);
    if (a == NULL) {
      cJSON_Delete(arr);
      return NULL;
    }
    cJSON_AddItemToArray(arr, a);
  }
  return arr;
}

static void on_deliver(mq_conn *c, const mq_message *m, void *ud) {
  ui_queue *u = ud;
  (void)c;
  u->stats.messages++;
  char *reply_to = slice_dup_ok(m->props.reply_to);
  char *corr = slice_dup_ok(m->props.correlation_id);
  char why[256];
  ui_msg msg;
  if (m->body_size > m->body.len) {
    snprintf(why, sizeof(why), "message too large: %zu bytes, limit %zu", m->body_size,
             m->body.len);
    fail_msg(u, m, reply_to, corr, why);
    free(reply_to);
    free(corr);
    return;
  }
  int err = ui_msg_parse(m->body.base, m->body.len, &msg, why, sizeof(why));
  if (err == SM_ENOMEM) {
    settle(u, m->generation, m->delivery_tag, 1);
  } else if (err) {
    fail_msg(u, m, reply_to, corr, why);
  } else if (msg.kind == UI_MSG_LIST_AGENTS) {
    reply(u, reply_to, corr, ui_reply_agents(agents_array(u), NULL));
    settle(u, m->generation, m->delivery_tag, 0);
  } else if (msg.kind == UI_MSG_INIT_SESSION) {
    if (agent_registry_find(u->reg, msg.agent_id, strlen(msg.agent_id)) == NULL) {
      snprintf(why, sizeof(why), "Agent %.200s not found", msg.agent_id);
      fail_msg(u, m, reply_to, corr, why);
    } else {
      reply(u, reply_to, corr, ui_reply_ok("Session initialized successfully", NULL));
      settle(u, m->generation, m->delivery_tag, 0);
    }
  } else {
    handle_command(u, m, &msg, reply_to, corr); /* takes reply_to and corr */
    ui_msg_clear(&msg);
    return;
  }
  if (!err)
    ui_msg_clear(&msg);
  free(reply_to);
  free(corr);
}

/* ---- the keys ---- */

static void kv_done(void *ud, int err) {
  ui_kv_op *op = ud;
  ui_queue *u = op->u;
  if (u != NULL) {
    sm_list_remove(&op->node);
    if (err) {
      u->stats.kv_failed++;
      sm_log_debug("ui-queue", "UI key write failed", SM_LE(err));
    }
    if (op->agents) {
      u->agents_busy = 0;
      if (u->agents_dirty)
        ui_queue_agents_changed(u);
    }
  }
  free(op);
}

static int kv_put(ui_queue *u, const char *key, char *value, size_t len, int64_t ttl_ms,
                  int agents) {
  if (value == NULL)
    return SM_ENOMEM;
  ui_kv_op *op = sm_calloc(1, sizeof(*op));
  int err = op ? store_kv_put(u->st, key, value, len, ttl_ms, kv_done, op) : SM_ENOMEM;
  free(value);
  if (err) {
    free(op);
    u->stats.kv_failed++;
    sm_log_debug("ui-queue", "UI key write refused", SM_LS("key", key), SM_LE(err));
    return err;
  }
  sm_list_init(&op->node);
  op->u = u;
  op->agents = agents;
  sm_list_push_back(&u->kv_ops, &op->node);
  u->stats.kv_writes++;
  return 0;
}

/* The other instances' agents arrived (or not: then this instance's alone); write the key. */
static void agents_listed(void *ud, int err, const store_agent_rec *recs, size_t n) {
  ui_kv_op *op = ud;
  ui_queue *u = op->u;
  if (u == NULL) {
    free(op);
    return;
  }
  sm_list_remove(&op->node);
  free(op);
  if (err)
    sm_log_debug("ui-queue", "agent records not read: connected_agents lists this instance's",
                 SM_LE(err));
  size_t len = 0;
  char *v = ui_agents_json(u->reg, u->instance, err ? NULL : recs, err ? 0 : n, &len);
  if (kv_put(u, UI_AGENTS_KEY, v, len, UI_AGENTS_TTL_MS, 1) != 0) {
    u->agents_busy = 0; /* the next refresh or change tries again */
    if (u->agents_dirty)
      ui_queue_agents_changed(u);
  }
}

static void agents_write(ui_queue *u) {
  u->agents_last_ms = (int64_t)uv_now(u->loop);
  u->agents_dirty = 0;
  ui_kv_op *op = sm_calloc(1, sizeof(*op));
  int err = op ? store_agent_list(u->st, UI_AGENTS_LIST_MAX, agents_listed, op) : SM_ENOMEM;
  if (err) {
    free(op);
    u->stats.kv_failed++;
    sm_log_debug("ui-queue", "agent records not listed", SM_LE(err));
    return;
  }
  sm_list_init(&op->node);
  op->u = u;
  op->agents = 1;
  sm_list_push_back(&u->kv_ops, &op->node);
  u->agents_busy = 1;
}

static void on_agents_timer(uv_timer_t *t) {
  ui_queue *u = t->data;
  if (u->agents_busy)
    u->agents_dirty = 1; /* rewritten when the write in flight completes */
  else
    agents_write(u);
  uv_timer_start(&u->agents_timer, on_agents_timer, UI_AGENTS_REFRESH_MS, 0);
}

void ui_queue_agents_changed(ui_queue *u) {
  if (u == NULL || !u->started)
    return;
  if (u->agents_busy) {
    u->agents_dirty = 1;
    return;
  }
  int64_t now = (int64_t)uv_now(u->loop);
  int64_t due = u->agents_last_ms + UI_AGENTS_MIN_INTERVAL_MS;
  uint64_t wait = now >= due ? 0 : (uint64_t)(due - now);
  /* the refresh timer doubles as the rate limit: one write at most per interval */
  uint64_t left = uv_timer_get_due_in(&u->agents_timer);
  if (!uv_is_active((uv_handle_t *)&u->agents_timer) || left > wait)
    uv_timer_start(&u->agents_timer, on_agents_timer, wait, 0);
}

/* An exec command that runs on one agent (a broadcast parent runs nowhere itself). */
static int is_exec(const sm_command *c) {
  return c->id && c->type && strcmp(c->type, "exec") == 0 && !c->broadcast;
}

static void response_write(ui_queue *u, const sm_command *c, const char *status) {
  if (command_agent(c) == NULL)
    return; /* not placed yet: written once it runs somewhere */
  char key[COMMAND_MAX_ID * 2 + 32];
  if (ui_response_key(command_agent(c), c->id, key, sizeof(key)) != 0)
    return;
  size_t len = 0;
  char *v = ui_response_json(c, status, &len);
  (void)kv_put(u, key, v, len, UI_RESPONSE_TTL_MS, 0);
}

static void track_free(ui_track *t) {
  command_free(t->c);
  free(t);
}

void ui_queue_cmd_received(ui_queue *u, const sm_command *c) {
  if (u == NULL || !is_exec(c))
    return;
  response_write(u, c, "pending");
  if (u->track.len >= UI_TRACK_MAX || sm_map_get(&u->track, c->id, strlen(c->id)))
    return;
  ui_track *t = sm_calloc(1, sizeof(*t));
  if (t == NULL || (t->c = command_clone(c)) == NULL) {
    free(t);
    return;
  }
  t->id = t->c->id;
  if (sm_map_put(&u->track, t->id, strlen(t->id), t) != 0)
    track_free(t);
}

void ui_queue_cmd_finished(ui_queue *u, const sm_command *c) {
  if (u == NULL || c->id == NULL)
    return;
  ui_track *t = sm_map_del(&u->track, c->id, strlen(c->id));
  if (t)
    track_free(t);
  if (is_exec(c))
    response_write(u, c, NULL);
}

void ui_queue_result(ui_queue *u, agent *a, const agent_result *r) {
  if (u == NULL || r == NULL || r->command_id == NULL || r->status == NULL ||
      strcmp(r->status, "running") != 0)
    return;
  ui_track *t = sm_map_get(&u->track, r->command_id, strlen(r->command_id));
  if (t == NULL || t->c->status == COMMAND_RUNNING)
    return; /* unknown here (e.g. recovered after a restart), or already written */
  t->c->status = COMMAND_RUNNING;
  if (t->c->started_at == 0)
    t->c->started_at = sm_now_ms();
  if (a != NULL && command_set_str(&t->c->agent_id, a->id) != 0)
    return;
  response_write(u, t->c, "running");
}

/* ---- life ---- */

int ui_queue_create(uv_loop_t *loop, mq_conn *conn, lifecycle *lc, agent_registry *reg, store *st,
                    const char *response_queue, const char *instance, ui_queue **out) {
  if (!loop || !conn || !lc || !reg || !st || !response_queue || !*response_queue || !out)
    return SM_EINVAL;
  ui_queue *u = sm_calloc(1, sizeof(*u));
  if (u == NULL)
    return SM_ENOMEM;
  u->response_queue = sm_strdup(response_queue);
  u->instance = sm_strdup(instance ? instance : "");
  if (!u->response_queue || !u->instance) {
    free(u->response_queue);
    free(u->instance);
    free(u);
    return SM_ENOMEM;
  }
  u->loop = loop;
  u->conn = conn;
  u->lc = lc;
  u->reg = reg;
  u->st = st;
  sm_list_init(&u->held);
  sm_list_init(&u->kv_ops);
  sm_list_init(&u->inflight);
  sm_map_init(&u->track, 0);
  uv_timer_init(loop, &u->retry_timer);
  uv_timer_init(loop, &u->agents_timer);
  u->retry_timer.data = u->agents_timer.data = u;
  *out = u;
  return 0;
}

int ui_queue_start(ui_queue *u) {
  mq_conn_set_aux_consumer(u->conn, on_deliver, u);
  u->started = 1;
  uv_timer_start(&u->agents_timer, on_agents_timer, 0, 0);
  return 0;
}

void ui_queue_get_stats(const ui_queue *u, ui_queue_stats *out) {
  *out = u->stats;
}

static void on_closed(uv_handle_t *h) {
  ui_queue *u = h->data;
  if (--u->closing_handles == 0)
    free(u);
}

void ui_queue_destroy(ui_queue *u) {
  if (u == NULL)
    return;
  mq_conn_set_aux_consumer(u->conn, NULL, NULL);
  sm_list *it;
  while ((it = sm_list_pop_front(&u->held)) != NULL)
    pending_free(SM_LIST_ENTRY(it, ui_pending, node)); /* unacked: redelivered */
  while ((it = sm_list_pop_front(&u->inflight)) != NULL)
    SM_LIST_ENTRY(it, ui_pending, node)->u = NULL; /* freed by its answer */
  while ((it = sm_list_pop_front(&u->kv_ops)) != NULL)
    SM_LIST_ENTRY(it, ui_kv_op, node)->u = NULL;
  for (size_t i = 0; i < u->track.cap; i++)
    if (u->track.slots[i].key)
      track_free(u->track.slots[i].value);
  sm_map_finish(&u->track);
  free(u->response_queue);
  free(u->instance);
  u->closing_handles = 2;
  uv_close((uv_handle_t *)&u->retry_timer, on_closed);
  uv_close((uv_handle_t *)&u->agents_timer, on_closed);
}
