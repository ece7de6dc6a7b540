/* store.c - the store interface's dispatch and the checks both backends share. */
#include "store/store.h"

#include "util/err.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* Operations asked for after store_close are refused (SM_EUNAVAIL, no callback): a callback that
 * runs during the close must not queue work on a store being freed. */
#define REFUSE_IF_CLOSING(s)                                                                       \
  do {                                                                                             \
    if ((s)->closing)                                                                              \
      return SM_EUNAVAIL;                                                                          \
  } while (0)

/* Counts an operation the backend accepted (its callback is owed). */
static int counted(store *s, store_op op, int err) {
  if (err == 0)
    s->op_count[op]++;
  return err;
}

uint64_t store_op_count(const store *s, store_op op) {
  return op < STORE_OP_COUNT ? s->op_count[op] : 0;
}

const char *store_op_name(store_op op) {
  static const char *const names[STORE_OP_COUNT] = {
      "cmd_create",    "cmd_get",   "cmd_update", "cmd_list",   "outbox_add", "outbox_list",
      "outbox_remove", "agent_put", "agent_del",  "agent_list", "kv_put",     "kv_get"};
  return op < STORE_OP_COUNT ? names[op] : "unknown";
}

void store_set_state_cb(store *s, store_state_cb cb, void *ud) {
  s->on_state = cb;
  s->state_ud = ud;
}

int store_sort_key(const sm_command *c, char *out, size_t outlen) {
  int64_t t = c->created_at < 0 ? 0 : c->created_at;
  int n = snprintf(out, outlen, "%013" PRId64 ":%s", t, c->id ? c->id : "");
  return n < 0 || (size_t)n >= outlen ? SM_ETOOBIG : 0;
}

int store_cmd_create(store *s, const sm_command *c, store_cmd_cb cb, void *ud) {
  if (c == NULL || c->id == NULL || c->type == NULL || cb == NULL || strlen(c->id) > COMMAND_MAX_ID)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_CMD_CREATE, s->ops->cmd_create(s, c, cb, ud));
}

int store_cmd_get(store *s, const char *id, store_cmd_cb cb, void *ud) {
  if (id == NULL || cb == NULL || strlen(id) > COMMAND_MAX_ID)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_CMD_GET, s->ops->cmd_get(s, id, cb, ud));
}

int store_cmd_update(store *s, const sm_command *c, command_status expected,
                     const char *outbox_payload, size_t outbox_len, store_cmd_cb cb, void *ud) {
  if (c == NULL || c->id == NULL || cb == NULL)
    return SM_EINVAL;
  /* rewriting a non-final record in place (same status: agent, attempts) is allowed too */
  if (expected != c->status && !command_transition_allowed(expected, c->status))
    return SM_EINVAL;
  if (expected == c->status && command_status_is_final(expected))
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_CMD_UPDATE,
                 s->ops->cmd_update(s, c, expected, outbox_payload, outbox_len, cb, ud));
}

int store_cmd_list(store *s, const store_filter *f, const char *cursor, size_t limit,
                   store_list_cb cb, void *ud) {
  static const store_filter none = {0};
  if (cb == NULL || limit == 0 || limit > STORE_MAX_LIST ||
      (cursor && strlen(cursor) > STORE_MAX_CURSOR))
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(
      s, STORE_OP_CMD_LIST,
      s->ops->cmd_list(s, f ? f : &none, cursor && *cursor ? cursor : NULL, limit, cb, ud));
}

int store_outbox_add(store *s, const char *id, const char *payload, size_t len, store_done_cb cb,
                     void *ud) {
  if (id == NULL || payload == NULL || cb == NULL)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_OUTBOX_ADD, s->ops->outbox_add(s, id, payload, len, cb, ud));
}

int store_outbox_list(store *s, size_t limit, store_outbox_cb cb, void *ud) {
  if (cb == NULL || limit == 0 || limit > STORE_MAX_LIST)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_OUTBOX_LIST, s->ops->outbox_list(s, limit, cb, ud));
}

int store_outbox_remove(store *s, const char *id, store_done_cb cb, void *ud) {
  if (id == NULL || cb == NULL)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_OUTBOX_REMOVE, s->ops->outbox_remove(s, id, cb, ud));
}

int store_agent_put(store *s, const char *id, const char *instance, const char *data,
                    int64_t ttl_ms, store_done_cb cb, void *ud) {
  if (id == NULL || *id == '\0' || instance == NULL || data == NULL || ttl_ms <= 0 || cb == NULL)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_AGENT_PUT, s->ops->agent_put(s, id, instance, data, ttl_ms, cb, ud));
}

int store_agent_del(store *s, const char *id, const char *instance, store_done_cb cb, void *ud) {
  if (id == NULL || cb == NULL)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_AGENT_DEL, s->ops->agent_del(s, id, instance, cb, ud));
}

int store_agent_list(store *s, size_t limit, store_agents_cb cb, void *ud) {
  if (cb == NULL || limit == 0 || limit > 100000)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_AGENT_LIST, s->ops->agent_list(s, limit, cb, ud));
}

static int kv_key_ok(const char *key) {
  size_t n = key ? strlen(key) : 0;
  return n > 0 && n <= STORE_MAX_KEY;
}

int store_kv_put(store *s, const char *key, const char *value, size_t len, int64_t ttl_ms,
                 store_done_cb cb, void *ud) {
  if (!kv_key_ok(key) || value == NULL || len > STORE_MAX_VALUE || ttl_ms <= 0 || cb == NULL)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_KV_PUT, s->ops->kv_put(s, key, value, len, ttl_ms, cb, ud));
}

int store_kv_get(store *s, const char *key, store_value_cb cb, void *ud) {
  if (!kv_key_ok(key) || cb == NULL)
    return SM_EINVAL;
  REFUSE_IF_CLOSING(s);
  return counted(s, STORE_OP_KV_GET, s->ops->kv_get(s, key, cb, ud));
}

int store_is_up(const store *s) {
  return s->ops->is_up(s);
}

const char *store_name(const store *s) {
  return s->ops->name;
}

void store_close(store *s, void (*closed)(void *ud), void *ud) {
  if (s == NULL || s->closing)
    return;
  s->closing = 1;
  s->ops->close(s, closed, ud);
}

int store_filter_match(const store_filter *f, const sm_command *c) {
  if (f->status_mask && !(f->status_mask & COMMAND_BIT(c->status)))
    return 0;
  if (f->type && strcmp(f->type, c->type) != 0)
    return 0;
  if (f->agent_id) {
    const char *a = command_agent(c);
    if (a == NULL || strcmp(a, f->agent_id) != 0)
      return 0;
  }
  return 1;
}
