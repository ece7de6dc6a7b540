/* cmd_handlers.c - the command and administration routes: POST/GET /api/commands,
 * GET /api/commands/{id}, PUT /api/commands/{id}/cancel, GET /api/status,
 * POST /api/admin/maintenance and /api/admin/shutdown.
 *
 * The command routes answer from lifecycle/store callbacks, so they defer their response
 * (http_response_defer) and complete it from the callback. The context of a call holds the
 * deferred handle, never the request or the connection: if the client leaves, the completion is
 * dropped by the server.
 *
 * POST /api/commands with an array: every element is validated first (nothing is stored when
 * one is invalid: 400 naming the element's index and field), then each is submitted. With an
 * Idempotency-Key header K, element i gets the key "K:i" (a single object gets K itself), so
 * retrying the same array with the same key returns the same commands. When every element is
 * accepted the answer is 202 with an array of {"id","status"} in order (plus "duplicate": true
 * for an idempotent repeat). When some are refused (queue full, store down mid-batch) the answer
 * carries the status of the first refusal (429 or 503, with Retry-After) and a body
 * {"error":{...},"results":[...]} whose results hold {"id","status"} for the elements accepted and
 * {"error":{...}} for the others, so a client can retry with the same key.
 */
#include "admin/cmd_handlers.h"

#include "admin/api.h"
#include "admin/json.h"
#include "core/lifecycle.h"
#include "core/registry.h"
#include "model/command.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RETRY_AFTER_UNAVAIL "5" /* store down or maintenance */
#define RETRY_AFTER_FULL "1"    /* queue full */

/* ---- helpers ---- */

static void respond_error(http_response *res, int status, const char *code, const char *msg) {
  http_response_error(res, status, code, msg);
  if (status == 503)
    http_response_header(res, "Retry-After", RETRY_AFTER_UNAVAIL);
  else if (status == 429)
    http_response_header(res, "Retry-After", RETRY_AFTER_FULL);
}

/* Maps a lifecycle/store error to an HTTP answer. */
static void respond_sm_error(http_response *res, const admin_api *m, int err) {
  switch (err) {
  case SM_EAGAIN:
    respond_error(res, 429, "overloaded", "too many store requests in flight, retry shortly");
    break;
  case SM_EUNAVAIL:
  case SM_ETIMEDOUT:
  case SM_ECLOSED:
  case SM_ECANCELED:
    if (admin_api_maintenance(m))
      respond_error(res, 503, "maintenance", "the manager is in maintenance mode");
    else
      respond_error(res, 503, "unavailable", "the command store is unavailable");
    break;
  case SM_ELIMIT:
    respond_error(res, 429, "queue_full", "the command queue is full");
    break;
  case SM_ENOENT:
    respond_error(res, 404, "not_found", "command not found");
    break;
  case SM_ENOMEM:
    respond_error(res, 500, "internal", "out of memory");
    break;
  default: {
    char msg[96];
    snprintf(msg, sizeof(msg), "internal error: %s", sm_strerror(err));
    respond_error(res, 500, "internal", msg);
  }
  }
}

/* Completes d with the answer to err. An abandoned d (client or server gone) is completed
 * without looking at m: the server that holds the api may be freed by then. */
static void complete_error(http_deferred *d, const admin_api *m, int err) {
  if (http_deferred_abandoned(d)) {
    http_deferred_complete(d, &(http_response){0});
    return;
  }
  http_response r;
  http_response_init(&r);
  respond_sm_error(&r, m, err);
  http_deferred_complete(d, &r);
}

static void complete_json(http_deferred *d, int status, cJSON *o) {
  http_response r;
  http_response_init(&r);
  admin_respond_json(&r, status, o);
  http_deferred_complete(d, &r);
}

/* The lifecycle, or NULL with a 503 answered. */
static lifecycle *need_lifecycle(const admin_api *m, http_response *res) {
  if (m->lifecycle == NULL) {
    respond_error(res, 503, "unavailable", "the command lifecycle is not running");
    return NULL;
  }
  return m->lifecycle;
}

/* Whether a Content-Type names JSON: application/json or any type/subtype+json, with
 * parameters. */
static int is_json_type(const char *ct) {
  if (ct == NULL)
    return 0;
  while (*ct == ' ' || *ct == '\t')
    ct++;
  size_t n = strcspn(ct, ";");
  while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
    n--;
  if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
    return 1;
  return n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0;
}

static cJSON *id_status_json(const sm_command *c, int existed) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return NULL;
  if (!cJSON_AddStringToObject(o, "id", c->id ? c->id : "") ||
      !cJSON_AddStringToObject(o, "status", command_status_name(c->status)) ||
      (existed && !cJSON_AddTrueToObject(o, "duplicate"))) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

/* ---- POST /api/commands ---- */

typedef struct submit_item {
  int done;
  int err;     /* 0: accepted */
  int existed; /* an earlier submission's record */
  char *id;    /* the stored id (accepted) */
  command_status status;
} submit_item;

typedef struct submit_ctx {
  http_deferred *d;
  const admin_api *m;
  int is_array; /* answer with an array */
  size_t n;     /* elements */
  size_t left;  /* callbacks still to come */
  submit_item items[];
} submit_ctx;

static void submit_free(submit_ctx *x) {
  for (size_t i = 0; i < x->n; i++)
    free(x->items[i].id);
  free(x);
}

/* Error object of a refused element. */
static cJSON *item_error_json(const admin_api *m, int err) {
  http_response r;
  http_response_init(&r);
  respond_sm_error(&r, m, err);
  cJSON *o = r.body ? cJSON_ParseWithLength(r.body, r.body_len) : NULL;
  http_response_finish(&r);
  return o;
}

static void submit_answer(submit_ctx *x) {
  if (http_deferred_abandoned(x->d)) {
    http_deferred_complete(x->d, &(http_response){0});
    return;
  }
  int first_err = 0;
  for (size_t i = 0; i < x->n && !first_err; i++)
    first_err = x->items[i].err;
  if (!x->is_array) {
    if (first_err) {
      complete_error(x->d, x->m, first_err);
      return;
    }
    cJSON *o = id_status_json(&(sm_command){.id = x->items[0].id, .status = x->items[0].status},
                              x->items[0].existed);
    complete_json(x->d, 202, o);
    return;
  }
  cJSON *arr = cJSON_CreateArray();
  int bad = arr == NULL;
  for (size_t i = 0; !bad && i < x->n; i++) {
    submit_item *it = &x->items[i];
    cJSON *e = it->err
                   ? item_error_json(x->m, it->err)
                   : id_status_json(&(sm_command){.id = it->id, .status = it->status}, it->existed);
    if (e == NULL)
      bad = 1;
    else
      cJSON_AddItemToArray(arr, e);
  }
  if (bad) {
    cJSON_Delete(arr);
    complete_error(x->d, x->m, SM_ENOMEM);
    return;
  }
  if (!first_err) {
    complete_json(x->d, 202, arr);
    return;
  }
  /* Some refused: the status of the first refusal, with the per-element results. */
  http_response r;
  http_response_init(&r);
  respond_sm_error(&r, x->m, first_err);
  cJSON *o = r.body ? cJSON_ParseWithLength(r.body, r.body_len) : NULL;
  http_response_finish(&r);
  if (o == NULL || !cJSON_AddItemToObject(o, "results", arr)) {
    cJSON_Delete(o);
    cJSON_Delete(arr);
    complete_error(x->d, x->m, SM_ENOMEM);
    return;
  }
  admin_respond_json(&r, r.status, o); /* replaces the body only: Retry-After stays */
  http_deferred_complete(x->d, &r);
}

typedef struct submit_ref {
  submit_ctx *x;
  size_t i;
} submit_ref;

static void on_submitted(void *ud, int err, const sm_command *cmd, int existed) {
  submit_ref *ref = ud;
  submit_ctx *x = ref->x;
  submit_item *it = &x->items[ref->i];
  free(ref);
  it->done = 1;
  it->err = err;
  it->existed = existed;
  if (!err && cmd != NULL) {
    it->status = cmd->status;
    if ((it->id = sm_strdup(cmd->id ? cmd->id : "")) == NULL)
      it->err = SM_ENOMEM; /* it was stored: a retry with the same key finds it */
  } else if (!err) {
    it->err = SM_EINTERNAL;
  }
  if (--x->left == 0) {
    submit_answer(x);
    submit_free(x);
  }
}

/* Parses element (index i of an array, or -1) into *out; on failure answers 400. */
static int parse_one(const cJSON *el, long index, sm_command **out, http_response *res) {
  char err[256], msg[320];
  if (!cJSON_IsObject(el)) {
    if (index >= 0)
      snprintf(msg, sizeof(msg), "element %ld: expected a JSON object", index);
    else
      snprintf(msg, sizeof(msg), "body: expected a JSON object or an array of objects");
    respond_error(res, 400, "invalid_field", msg);
    return -1;
  }
  err[0] = '\0';
  int rc = command_parse(el, out, err, sizeof(err));
  if (rc == SM_ENOMEM) {
    respond_error(res, 500, "internal", "out of memory");
    return -1;
  }
  if (rc) {
    if (index >= 0)
      snprintf(msg, sizeof(msg), "element %ld: %s", index, err[0] ? err : "invalid command");
    else
      snprintf(msg, sizeof(msg), "%s", err[0] ? err : "invalid command");
    respond_error(res, 400, rc == SM_ETOOBIG ? "too_large" : "invalid_field", msg);
    return -1;
  }
  return 0;
}

static void h_submit(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  lifecycle *lc = need_lifecycle(m, res);
  if (lc == NULL)
    return;
  if (!is_json_type(http_request_header(req, "Content-Type"))) {
    respond_error(res, 415, "unsupported_media_type", "Content-Type must be application/json");
    return;
  }
  const char *key = http_request_header(req, "Idempotency-Key");
  if (key != NULL && (key[0] == '\0' || strlen(key) > ADMIN_IDEMPOTENCY_KEY_MAX)) {
    respond_error(res, 400, "invalid_field",
                  "Idempotency-Key: must be 1 to " ADMIN_STR(ADMIN_IDEMPOTENCY_KEY_MAX) " bytes");
    return;
  }
  cJSON *doc = NULL;
  char why[256];
  int perr = command_json_parse(req->body ? req->body : "", req->body_len, &doc, why, sizeof(why));
  if (perr) {
    respond_error(res, 400, perr == SM_EPARSE ? "bad_request" : "invalid_field", why);
    return;
  }
  int is_array = cJSON_IsArray(doc);
  size_t n = is_array ? (size_t)cJSON_GetArraySize(doc) : 1;
  if (is_array && (n == 0 || n > ADMIN_SUBMIT_MAX)) {
    respond_error(res, 400, "invalid_field",
                  n == 0 ? "body: empty array"
                         : "body: more than " ADMIN_STR(ADMIN_SUBMIT_MAX) " commands in one array");
    cJSON_Delete(doc);
    return;
  }
  sm_command **cmds = sm_calloc(n, sizeof(*cmds));
  submit_ctx *x = sm_calloc(1, sizeof(*x) + n * sizeof(x->items[0]));
  if (cmds == NULL || x == NULL) {
    free(cmds);
    free(x);
    cJSON_Delete(doc);
    respond_error(res, 500, "internal", "out of memory");
    return;
  }
  /* Validate everything before storing anything. */
  int bad = 0;
  size_t i = 0;
  const cJSON *el = is_array ? doc->child : doc;
  for (; !bad && i < n; i++, el = is_array ? el->next : NULL)
    bad = parse_one(el, is_array ? (long)i : -1, &cmds[i], res);
  cJSON_Delete(doc);
  for (i = 0; !bad && i < n; i++) {
    char k[ADMIN_IDEMPOTENCY_KEY_MAX + 16];
    cmds[i]->source = COMMAND_SRC_REST;
    if (key == NULL)
      continue;
    if (is_array)
      snprintf(k, sizeof(k), "%s:%zu", key, i);
    else
      snprintf(k, sizeof(k), "%s", key);
    if (command_set_str(&cmds[i]->idempotency_key, k)) {
      respond_error(res, 500, "internal", "out of memory");
      bad = 1;
    }
  }
  /* Refuse a batch as a whole when it cannot be taken now (nothing stored). */
  if (!bad && admin_api_maintenance(m)) {
    respond_error(res, 503, "maintenance", "the manager is in maintenance mode");
    bad = 1;
  } else if (!bad && n > 1) {
    lifecycle_stats st;
    lifecycle_get_stats(lc, &st);
    size_t cap = m->command_queue_size;
    if (!lifecycle_accepting(lc) || (cap && st.waiting + n > cap)) {
      admin_deps dep;
      admin_api_deps(m, &dep);
      int store_down = strcmp(dep.store_backend, "none") != 0 && !dep.store_up;
      respond_sm_error(res, m, store_down ? SM_EUNAVAIL : SM_ELIMIT);
      bad = 1;
    }
  }
  if (bad || (x->d = http_response_defer(res)) == NULL) {
    if (!bad)
      respond_error(res, 500, "internal", "out of memory");
    for (i = 0; i < n; i++)
      command_free(cmds[i]);
    free(cmds);
    free(x);
    return;
  }
  x->m = m;
  x->is_array = is_array;
  x->n = n;
  x->left = n + 1; /* +1 while this loop runs, so no early answer */
  int refused = 0;
  for (i = 0; i < n; i++) {
    submit_item *it = &x->items[i];
    submit_ref *ref = refused ? NULL : sm_malloc(sizeof(*ref));
    if (refused) {
      command_free(cmds[i]);
      it->err = refused;
    } else if (ref == NULL) {
      command_free(cmds[i]);
      it->err = refused = SM_ENOMEM;
    } else {
      ref->x = x;
      ref->i = i;
      int rc = lifecycle_submit(lc, cmds[i], on_submitted, ref); /* takes cmds[i] */
      if (rc == 0)
        continue;
      free(ref);
      /* The elements after a refusal are not tried: they would be refused too. */
      it->err = refused = rc;
    }
    it->done = 1;
    x->left--;
  }
  free(cmds);
  if (--x->left == 0) {
    submit_answer(x); /* every element refused at once: answered inside the handler */
    submit_free(x);
  }
}

/* ---- GET /api/commands/{id} ---- */

typedef struct get_ctx {
  http_deferred *d;
  const admin_api *m;
} get_ctx;

static void on_got(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  get_ctx *x = ud;
  if (err || cmd == NULL)
    complete_error(x->d, x->m, err ? err : SM_ENOENT);
  else if (http_deferred_abandoned(x->d))
    http_deferred_complete(x->d, &(http_response){0});
  else
    complete_json(x->d, 200, command_to_json(cmd));
  free(x);
}

static int check_id(const char *id, http_response *res) {
  if (id == NULL || id[0] == '\0' || strlen(id) > COMMAND_MAX_ID) {
    respond_error(res, 404, "not_found", "command not found");
    return -1;
  }
  return 0;
}

/* The common start of the routes on one command ({id}): checks the id and defers the response.
 * Returns the call's context with *lc and *id set, or NULL when an answer was already given. */
static get_ctx *command_call(const admin_api *m, http_request *req, http_response *res,
                             lifecycle **lc, const char **id) {
  *lc = need_lifecycle(m, res);
  *id = http_request_param(req, "id");
  if (*lc == NULL || check_id(*id, res))
    return NULL;
  get_ctx *x = sm_calloc(1, sizeof(*x));
  if (x == NULL || (x->d = http_response_defer(res)) == NULL) {
    free(x);
    respond_error(res, 500, "internal", "out of memory");
    return NULL;
  }
  x->m = m;
  return x;
}

static void h_get(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  lifecycle *lc;
  const char *id;
  get_ctx *x = command_call(m, req, res, &lc, &id);
  if (x == NULL)
    return;
  int rc = lifecycle_get(lc, id, on_got, x);
  if (rc) {
    complete_error(x->d, m, rc);
    free(x);
  }
}

/* ---- PUT /api/commands/{id}/cancel ---- */

static void on_cancelled(void *ud, int err, const sm_command *cmd) {
  get_ctx *x = ud;
  if (err == SM_ESTATE && cmd != NULL) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = o ? cJSON_AddObjectToObject(o, "error") : NULL;
    char msg[96];
    snprintf(msg, sizeof(msg), "the command is already %s", command_status_name(cmd->status));
    cJSON *c = command_to_json(cmd);
    if (e == NULL || !cJSON_AddStringToObject(e, "code", "conflict") ||
        !cJSON_AddStringToObject(e, "message", msg) || c == NULL ||
        !cJSON_AddItemToObject(o, "command", c)) {
      cJSON_Delete(c);
      cJSON_Delete(o);
      o = NULL;
    }
    complete_json(x->d, 409, o);
  } else if (err == SM_ESTATE) {
    http_response r;
    http_response_init(&r);
    respond_error(&r, 409, "conflict", "the command is already final");
    http_deferred_complete(x->d, &r);
  } else if (err || cmd == NULL) {
    complete_error(x->d, x->m, err ? err : SM_EINTERNAL);
  } else {
    complete_json(x->d, 200, command_to_json(cmd));
  }
  free(x);
}

static void h_cancel(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  lifecycle *lc;
  const char *id;
  get_ctx *x = command_call(m, req, res, &lc, &id);
  if (x == NULL)
    return;
  int rc = lifecycle_cancel(lc, id, on_cancelled, x);
  if (rc) {
    complete_error(x->d, m, rc);
    free(x);
  }
}

/* ---- GET /api/commands ---- */

static int bad_param(http_response *res, const char *name, const char *why) {
  char msg[160];
  snprintf(msg, sizeof(msg), "invalid query parameter '%s': %s", name, why);
  http_response_error(res, 400, "invalid_parameter", msg);
  return -1;
}

typedef struct list_ctx {
  http_deferred *d;
  const admin_api *m;
} list_ctx;

static void on_listed(void *ud, int err, sm_command *const *cmds, size_t n,
                      const char *next_cursor) {
  list_ctx *x = ud;
  if (err == SM_EINVAL || err == SM_EPARSE) {
    http_response r;
    http_response_init(&r);
    bad_param(&r, "cursor", "not a cursor of this listing");
    http_deferred_complete(x->d, &r);
    free(x);
    return;
  }
  if (err) {
    complete_error(x->d, x->m, err);
    free(x);
    return;
  }
  if (http_deferred_abandoned(x->d)) {
    http_deferred_complete(x->d, &(http_response){0});
    free(x);
    return;
  }
  cJSON *o = cJSON_CreateObject();
  cJSON *arr = o ? cJSON_AddArrayToObject(o, "commands") : NULL;
  int bad = arr == NULL;
  for (size_t i = 0; !bad && i < n; i++) {
    cJSON *c = command_to_json(cmds[i]);
    if (c == NULL)
      bad = 1;
    else
      cJSON_AddItemToArray(arr, c);
  }
  if (!bad && !(next_cursor ? cJSON_AddStringToObject(o, "next_cursor", next_cursor)
                            : cJSON_AddNullToObject(o, "next_cursor")))
    bad = 1;
  if (bad) {
    cJSON_Delete(o);
    o = NULL;
  }
  complete_json(x->d, 200, o);
  free(x);
}

static void h_list(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  lifecycle *lc = need_lifecycle(m, res);
  if (lc == NULL)
    return;
  store_filter f = {0};
  long limit = ADMIN_COMMANDS_DEFAULT_LIMIT;
  const char *cursor = NULL;
  for (size_t i = 0; i < req->nqpairs; i++) {
    const char *k = req->qpairs[i].key, *v = req->qpairs[i].value;
    if (strcmp(k, "status") == 0) {
      /* Repeatable and comma-separated: any of the listed statuses. */
      char buf[256];
      if (strlen(v) >= sizeof(buf)) {
        bad_param(res, "status", "too long");
        return;
      }
      snprintf(buf, sizeof(buf), "%s", v);
      char *save = NULL;
      int cnt = 0;
      for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save), cnt++) {
        command_status st;
        if (command_status_parse(t, &st)) {
          bad_param(res, "status",
                    "expected queued, dispatched, running, completed, failed, timed_out, "
                    "cancelled or expired");
          return;
        }
        f.status_mask |= COMMAND_BIT(st);
      }
      if (cnt == 0) {
        bad_param(res, "status", "empty");
        return;
      }
    } else if (strcmp(k, "agent_id") == 0) {
      if (v[0] == '\0' || strlen(v) > COMMAND_MAX_ID) {
        bad_param(res, "agent_id", "expected 1 to 128 bytes");
        return;
      }
      f.agent_id = v;
    } else if (strcmp(k, "type") == 0) {
      if (v[0] == '\0' || strlen(v) > COMMAND_MAX_TYPE) {
        bad_param(res, "type", "expected 1 to 64 bytes");
        return;
      }
      f.type = v;
    } else if (strcmp(k, "limit") == 0) {
      char *end;
      errno = 0;
      long l = strtol(v, &end, 10);
      if (!isdigit((unsigned char)v[0]) || *end || errno || l < 1 || l > ADMIN_COMMANDS_MAX_LIMIT) {
        bad_param(res, "limit", "expected an integer between 1 and 1000");
        return;
      }
      limit = l;
    } else if (strcmp(k, "cursor") == 0) {
      if (v[0] == '\0' || strlen(v) > STORE_MAX_CURSOR) {
        bad_param(res, "cursor", "not a cursor of this listing");
        return;
      }
      cursor = v;
    }
    /* Unknown keys are ignored, like GET /api/agents does. */
  }
  list_ctx *x = sm_calloc(1, sizeof(*x));
  if (x == NULL || (x->d = http_response_defer(res)) == NULL) {
    free(x);
    respond_error(res, 500, "internal", "out of memory");
    return;
  }
  x->m = m;
  /* The filter strings live in the request, which the store copies before returning. */
  int rc = lifecycle_list(lc, &f, cursor, (size_t)limit, on_listed, x);
  if (rc) {
    if (rc == SM_EINVAL || rc == SM_EPARSE) {
      http_response r;
      http_response_init(&r);
      bad_param(&r, "cursor", "not a cursor of this listing");
      http_deferred_complete(x->d, &r);
    } else {
      complete_error(x->d, m, rc);
    }
    free(x);
  }
}

/* ---- GET /api/status ---- */

/* Adds a whole number. cJSON prints every number with "%1.15g" and reads it back with sscanf
 * to check the round trip, which made number formatting the largest cost of GET /api/status;
 * counters are integers, so they are written as raw JSON text instead. */
static cJSON *add_count(cJSON *o, const char *key, double v) {
  char buf[32];
  if (!(v >= 0 && v < 9007199254740992.0)) /* not a non-negative integer a double holds */
    return cJSON_AddNumberToObject(o, key, v);
  uint64_t n = (uint64_t)v;
  char *p = buf + sizeof(buf);
  *--p = '\0';
  do {
    *--p = (char)('0' + n % 10);
    n /= 10;
  } while (n);
  return cJSON_AddRawToObject(o, key, p);
}

static void h_status(void *ud, http_request *req, http_response *res) {
  (void)req;
  const admin_api *m = ud;
  cJSON *o = cJSON_CreateObject();
  if (o == NULL) {
    admin_respond_json(res, 500, NULL);
    return;
  }
  int64_t now = sm_now_ms();
  double uptime = m->started_at_ms > 0 && now > m->started_at_ms
                      ? (double)(now - m->started_at_ms) / 1000.0
                      : 0.0;
  int bad = !cJSON_AddStringToObject(o, "version", m->version ? m->version : SM_VERSION) ||
            !cJSON_AddStringToObject(o, "env", m->env ? m->env : "production") ||
            !cJSON_AddStringToObject(o, "instance", m->instance ? m->instance : "") ||
            !add_count(o, "uptime_seconds", (double)(int64_t)uptime) ||
            !cJSON_AddBoolToObject(o, "maintenance", admin_api_maintenance(m)) ||
            !cJSON_AddBoolToObject(o, "draining", admin_api_draining(m));

  /* agents: total and by status */
  size_t by[AGENT_STATUS_COUNT] = {0}, total = m->registry ? agent_registry_count(m->registry) : 0;
  for (size_t i = 0; i < total; i++) {
    const agent *a = agent_registry_at(m->registry, i);
    if (a != NULL && (unsigned)a->status < AGENT_STATUS_COUNT)
      by[a->status]++;
  }
  cJSON *ag = cJSON_AddObjectToObject(o, "agents");
  cJSON *bs = ag ? cJSON_AddObjectToObject(ag, "by_status") : NULL;
  bad |= bs == NULL || !add_count(ag, "total", (double)total);
  for (int st = 0; bs && st < AGENT_STATUS_COUNT; st++)
    bad |= !add_count(bs, agent_status_name((enum agent_status)st), (double)by[st]);
  if (ag && m->registry) {
    agent_registry_stats rs;
    agent_registry_get_stats(m->registry, &rs);
    bad |= !add_count(ag, "messages_total", (double)rs.messages);
    bad |= !add_count(ag, "heartbeats_total", (double)rs.heartbeats);
    bad |= !add_count(ag, "results_total", (double)rs.results);
    bad |= !add_count(ag, "registered_total", (double)rs.registered);
    bad |= !add_count(ag, "pruned_total", (double)rs.pruned);
    bad |= !add_count(ag, "disconnected_total", (double)rs.disconnected);
  }

  /* commands: the lifecycle's counters */
  cJSON *cm = cJSON_AddObjectToObject(o, "commands");
  bad |= cm == NULL;
  if (cm && m->lifecycle) {
    lifecycle_stats st;
    lifecycle_get_stats(m->lifecycle, &st);
    struct {
      const char *k;
      double v;
    } f[] = {
        {"received", (double)st.received},
        {"duplicates", (double)st.duplicates},
        {"queued", (double)st.waiting},
        {"parked", (double)st.parked},
        {"inflight", (double)st.inflight},
        {"held", (double)st.held},
        {"dispatched", (double)st.dispatched},
        {"retries", (double)st.retries},
        {"completed", (double)st.finished[COMMAND_COMPLETED]},
        {"failed", (double)st.finished[COMMAND_FAILED]},
        {"timed_out", (double)st.finished[COMMAND_TIMED_OUT]},
        {"cancelled", (double)st.finished[COMMAND_CANCELLED]},
        {"expired", (double)st.finished[COMMAND_EXPIRED]},
        {"refused_full", (double)st.refused_full},
        {"refused_unavailable", (double)st.refused_unavail},
        {"published", (double)st.published},
        {"publish_failures", (double)st.publish_failures},
        {"store_retries", (double)st.store_retries},
        {"store_writes_merged", (double)st.writes_merged},
        {"pending_writes", (double)st.pending_writes},
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
      bad |= !add_count(cm, f[i].k, f[i].v);
    bad |= !cJSON_AddBoolToObject(cm, "accepting", lifecycle_accepting(m->lifecycle));
  }

  admin_deps dep;
  admin_api_deps(m, &dep);
  cJSON *sto = cJSON_AddObjectToObject(o, "store");
  bad |= sto == NULL || !cJSON_AddStringToObject(sto, "backend", dep.store_backend) ||
         !cJSON_AddBoolToObject(sto, "up", dep.store_up);
  cJSON *mq = cJSON_AddObjectToObject(o, "rabbitmq");
  bad |= mq == NULL || !cJSON_AddBoolToObject(mq, "configured", dep.mq_configured) ||
         !cJSON_AddBoolToObject(mq, "up", dep.mq_up);
  if (bad) {
    cJSON_Delete(o);
    o = NULL;
  }
  admin_respond_json(res, 200, o);
}

/* ---- POST /api/admin/maintenance, /api/admin/shutdown ---- */

static void h_maintenance(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  if (!is_json_type(http_request_header(req, "Content-Type"))) {
    respond_error(res, 415, "unsupported_media_type", "Content-Type must be application/json");
    return;
  }
  cJSON *doc = cJSON_ParseWithLength(req->body ? req->body : "", req->body_len);
  if (doc == NULL) {
    respond_error(res, 400, "bad_request", "body: invalid JSON");
    return;
  }
  const cJSON *en = cJSON_IsObject(doc) ? cJSON_GetObjectItemCaseSensitive(doc, "enabled") : NULL;
  if (!cJSON_IsBool(en)) {
    cJSON_Delete(doc);
    respond_error(res, 400, "invalid_field", "enabled: required, true or false");
    return;
  }
  int on = cJSON_IsTrue(en);
  cJSON_Delete(doc);
  if (admin_api_maintenance(m) != on)
    sm_log_warn("admin", on ? "maintenance mode on" : "maintenance mode off",
                SM_LS("client", req->peer ? req->peer : "-"));
  if (m->set_maintenance)
    m->set_maintenance(m->ud, on);
  cJSON *o = cJSON_CreateObject();
  if (o && !cJSON_AddBoolToObject(o, "maintenance", on)) {
    cJSON_Delete(o);
    o = NULL;
  }
  admin_respond_json(res, 200, o);
}

typedef struct shutdown_req {
  uv_timer_t timer;
  void (*shutdown)(void *ud, const char *why); /* copied: the api may be gone by then */
  void *ud;
} shutdown_req;

static void on_shutdown_timer_closed(uv_handle_t *h) {
  free(h->data);
}

static void on_shutdown_timer(uv_timer_t *t) {
  shutdown_req *s = t->data;
  s->shutdown(s->ud, "api");
  uv_close((uv_handle_t *)&s->timer, on_shutdown_timer_closed);
}

static void h_shutdown(void *ud, http_request *req, http_response *res) {
  const admin_api *m = ud;
  shutdown_req *s = m->loop && m->shutdown ? sm_calloc(1, sizeof(*s)) : NULL;
  if (s == NULL) {
    respond_error(res, 500, "internal", "cannot schedule the shutdown");
    return;
  }
  /* On the next loop turn: the 202 is flushed in this one, before the drain starts. */
  s->shutdown = m->shutdown;
  s->ud = m->ud;
  uv_timer_init(m->loop, &s->timer);
  s->timer.data = s;
  uv_timer_start(&s->timer, on_shutdown_timer, 0, 0);
  sm_log_warn("admin", "shutdown requested", SM_LS("client", req->peer ? req->peer : "-"));
  static const char body[] = "{\"status\":\"shutting_down\"}";
  http_response_set(res, 202, "application/json", body, sizeof(body) - 1);
}

int admin_cmd_handlers_register(admin_router *r) {
  int err = 0;
  err = err ? err : admin_router_add(r, "GET", "/api/commands", h_list, ADMIN_ROLE_VIEWER);
  err = err ? err : admin_router_add(r, "POST", "/api/commands", h_submit, ADMIN_ROLE_OPERATOR);
  err = err ? err : admin_router_add(r, "GET", "/api/commands/{id}", h_get, ADMIN_ROLE_VIEWER);
  err =
      err ? err
          : admin_router_add(r, "PUT", "/api/commands/{id}/cancel", h_cancel, ADMIN_ROLE_OPERATOR);
  err = err ? err : admin_router_add(r, "GET", "/api/status", h_status, ADMIN_ROLE_VIEWER);
  err =
      err ? err
          : admin_router_add(r, "POST", "/api/admin/maintenance", h_maintenance, ADMIN_ROLE_ADMIN);
  err =
      err ? err : admin_router_add(r, "POST", "/api/admin/shutdown", h_shutdown, ADMIN_ROLE_ADMIN);
  return err;
}
