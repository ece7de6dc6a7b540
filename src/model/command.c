/* command.c - the command record: validation, JSON forms, ids, statuses. */
#include "model/command.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/timeutil.h"
#include "util/utf8.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static const char *const status_names[COMMAND_STATUS_COUNT] = {
    "queued", "dispatched", "running", "completed", "failed", "timed_out", "cancelled", "expired",
};

const char *command_status_name(command_status s) {
  if ((unsigned)s >= COMMAND_STATUS_COUNT)
    return "unknown";
  return status_names[s];
}

int command_status_parse(const char *name, command_status *out) {
  if (name == NULL)
    return SM_EINVAL;
  for (int i = 0; i < COMMAND_STATUS_COUNT; i++) {
    if (strcmp(name, status_names[i]) == 0) {
      *out = (command_status)i;
      return 0;
    }
  }
  return SM_EINVAL;
}

int command_status_is_final(command_status s) {
  return s >= COMMAND_COMPLETED && s < COMMAND_STATUS_COUNT;
}

int command_transition_allowed(command_status from, command_status to) {
  if ((unsigned)from >= COMMAND_STATUS_COUNT || (unsigned)to >= COMMAND_STATUS_COUNT)
    return 0;
  if (command_status_is_final(from))
    return 0;
  switch (from) {
  case COMMAND_QUEUED:
    /* failed: retries exhausted or no agent can ever take it (pinned agent refused it). */
    return to == COMMAND_DISPATCHED || to == COMMAND_EXPIRED || to == COMMAND_CANCELLED ||
           to == COMMAND_FAILED;
  case COMMAND_DISPATCHED:
    /* an agent may answer with a final result straight away (rejected, fast commands) */
    return to == COMMAND_RUNNING || to == COMMAND_QUEUED || to == COMMAND_COMPLETED ||
           to == COMMAND_FAILED || to == COMMAND_TIMED_OUT || to == COMMAND_CANCELLED ||
           to == COMMAND_EXPIRED;
  case COMMAND_RUNNING:
    return to == COMMAND_QUEUED || to == COMMAND_COMPLETED || to == COMMAND_FAILED ||
           to == COMMAND_TIMED_OUT || to == COMMAND_CANCELLED;
  default:
    return 0;
  }
}

/* ---- ids ---------------------------------------------------------------------------------- */

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

void command_idgen_init(command_idgen *g) {
  memset(g, 0, sizeof(*g));
  if (getrandom(&g->rng, sizeof(g->rng), 0) != (ssize_t)sizeof(g->rng)) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    g->rng = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec;
  }
  if (g->rng == 0)
    g->rng = 0x853c49e6748fea9bull;
}

void command_idgen_next(command_idgen *g, int64_t now_ms, char out[COMMAND_ID_LEN + 1]) {
  if (now_ms <= g->last_ms) {
    /* same millisecond (or the clock stepped back): keep order with the counter, and borrow
     * the next millisecond when the 12-bit counter runs out */
    now_ms = g->last_ms;
    if (++g->seq > 0xfff) {
      now_ms++;
      g->seq = (uint32_t)(xorshift(&g->rng) & 0x3ff);
    }
  } else {
    g->seq = (uint32_t)(xorshift(&g->rng) & 0x3ff); /* random start, room to count up */
  }
  g->last_ms = now_ms;
  uint64_t ms = (uint64_t)now_ms & 0xffffffffffffull;
  uint64_t hi = (ms << 16) | (0x7ull << 12) | (g->seq & 0xfff);
  uint64_t lo = (xorshift(&g->rng) & 0x3fffffffffffffffull) | 0x8000000000000000ull;
  snprintf(out, COMMAND_ID_LEN + 1,
           "%08" PRIx64 "-%04" PRIx64 "-%04" PRIx64 "-%04" PRIx64 "-%012" PRIx64,
           (uint64_t)(hi >> 32), (uint64_t)((hi >> 16) & 0xffff), (uint64_t)(hi & 0xffff),
           (uint64_t)(lo >> 48), (uint64_t)(lo & 0xffffffffffffull));
}

/* ---- time --------------------------------------------------------------------------------- */

/* The command API's time functions are the project's (util/timeutil.h): one RFC 3339 parser
 * and formatter for the whole process. */
int64_t command_now_ms(void) {
  return sm_now_ms();
}

void command_time_format(int64_t ms, char out[32]) {
  sm_rfc3339(ms, out, 32);
}

int command_time_parse(const char *s, int64_t *out_ms) {
  if (s == NULL)
    return SM_EINVAL;
  return sm_rfc3339_parse(s, out_ms);
}

/* ---- memory ------------------------------------------------------------------------------- */

sm_command *command_new(void) {
  sm_command *c = sm_calloc(1, sizeof(*c));
  if (c != NULL)
    c->priority = 5;
  return c;
}

static void kvs_free(sm_kv *kv, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free((char *)kv[i].key);
    free((char *)kv[i].value);
  }
  free(kv);
}

static void result_clear(command_result *r) {
  free(r->status);
  kvs_free(r->data, r->ndata);
  free(r->error);
  memset(r, 0, sizeof(*r));
}

void command_result_clear(command_result *r) {
  result_clear(r);
}

void command_free(sm_command *c) {
  if (c == NULL)
    return;
  free(c->id);
  free(c->type);
  kvs_free(c->params, c->nparams);
  free(c->target_agent);
  kvs_free(c->capabilities, c->ncapabilities);
  free(c->strategy);
  kvs_free(c->filter, c->nfilter);
  free(c->agent_id);
  result_clear(&c->result);
  for (size_t i = 0; c->children != NULL && i < c->nchildren; i++)
    free(c->children[i]);
  free(c->children);
  free(c->parent_id);
  free(c->reply_to);
  free(c->correlation_id);
  free(c->idempotency_key);
  free(c->instance);
  free(c);
}

/* strdup that keeps NULL and reports failure separately. */
static int dup_str(char **dst, const char *s) {
  *dst = NULL;
  if (s == NULL)
    return 0;
  *dst = strdup(s);
  return *dst ? 0 : SM_ENOMEM;
}

int command_set_str(char **field, const char *s) {
  char *n = NULL;
  if (dup_str(&n, s))
    return SM_ENOMEM;
  free(*field);
  *field = n;
  return 0;
}

static int kvs_dup(sm_kv **dst, size_t *ndst, const sm_kv *src, size_t n) {
  *dst = NULL;
  *ndst = 0;
  if (n == 0)
    return 0;
  sm_kv *kv = sm_calloc(n, sizeof(*kv));
  if (kv == NULL)
    return SM_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    char *k = NULL, *v = NULL;
    if (dup_str(&k, src[i].key) || dup_str(&v, src[i].value ? src[i].value : "")) {
      free(k);
      kvs_free(kv, i);
      return SM_ENOMEM;
    }
    kv[i].key = k;
    kv[i].value = v;
  }
  *dst = kv;
  *ndst = n;
  return 0;
}

int command_set_result(sm_command *c, const char *status, const sm_kv *data, size_t ndata,
                       const char *error, int64_t completed_at_ms) {
  command_result r = {0};
  r.present = 1;
  r.completed_at = completed_at_ms;
  if (dup_str(&r.status, status) || dup_str(&r.error, error) ||
      kvs_dup(&r.data, &r.ndata, data, ndata)) {
    result_clear(&r);
    return SM_ENOMEM;
  }
  result_clear(&c->result);
  c->result = r;
  return 0;
}

int command_add_child(sm_command *c, const char *id) {
  if (c->nchildren >= COMMAND_MAX_CHILDREN)
    return SM_ELIMIT;
  char **n = sm_realloc(c->children, (c->nchildren + 1) * sizeof(*n));
  if (n == NULL)
    return SM_ENOMEM;
  c->children = n;
  if (dup_str(&n[c->nchildren], id))
    return SM_ENOMEM;
  c->nchildren++;
  return 0;
}

const char *command_agent(const sm_command *c) {
  return c->agent_id ? c->agent_id : c->target_agent;
}

sm_command *command_clone(const sm_command *c) {
  sm_command *n = command_new();
  if (n == NULL)
    return NULL;
  *n = *c;
  /* null every owned pointer first so a failure half-way frees only what was copied */
  n->id = n->type = n->target_agent = n->strategy = n->agent_id = NULL;
  n->parent_id = n->reply_to = n->correlation_id = n->idempotency_key = n->instance = NULL;
  n->params = n->capabilities = n->filter = NULL;
  n->nparams = n->ncapabilities = n->nfilter = 0;
  memset(&n->result, 0, sizeof(n->result));
  n->children = NULL;
  n->nchildren = 0;
  int err = dup_str(&n->id, c->id) | dup_str(&n->type, c->type) |
            dup_str(&n->target_agent, c->target_agent) | dup_str(&n->strategy, c->strategy) |
            dup_str(&n->agent_id, c->agent_id) | dup_str(&n->parent_id, c->parent_id) |
            dup_str(&n->reply_to, c->reply_to) | dup_str(&n->correlation_id, c->correlation_id) |
            dup_str(&n->idempotency_key, c->idempotency_key) | dup_str(&n->instance, c->instance) |
            kvs_dup(&n->params, &n->nparams, c->params, c->nparams) |
            kvs_dup(&n->capabilities, &n->ncapabilities, c->capabilities, c->ncapabilities) |
            kvs_dup(&n->filter, &n->nfilter, c->filter, c->nfilter);
  if (!err && c->result.present)
    err = command_set_result(n, c->result.status, c->result.data, c->result.ndata, c->result.error,
                             c->result.completed_at);
  for (size_t i = 0; !err && c->children != NULL && i < c->nchildren; i++)
    err = command_add_child(n, c->children[i]);
  if (err) {
    command_free(n);
    return NULL;
  }
  if (c->children == NULL)
    n->nchildren = c->nchildren; /* a state snapshot's count */
  return n;
}

sm_command *command_clone_state(const sm_command *c) {
  sm_command *n = command_new();
  if (n == NULL)
    return NULL;
  n->status = c->status;
  n->attempts = c->attempts;
  n->priority = c->priority;
  n->broadcast = c->broadcast;
  n->source = c->source;
  n->created_at = c->created_at;
  n->dispatched_at = c->dispatched_at;
  n->started_at = c->started_at;
  n->completed_at = c->completed_at;
  int err = dup_str(&n->id, c->id) | dup_str(&n->type, c->type) |
            dup_str(&n->target_agent, c->target_agent) | dup_str(&n->agent_id, c->agent_id) |
            dup_str(&n->parent_id, c->parent_id) | dup_str(&n->reply_to, c->reply_to) |
            dup_str(&n->correlation_id, c->correlation_id);
  if (!err && c->result.present)
    err = command_set_result(n, c->result.status, c->result.data, c->result.ndata, c->result.error,
                             c->result.completed_at);
  if (err) {
    command_free(n);
    return NULL;
  }
  n->nchildren = c->nchildren; /* the count only: children stays NULL */
  n->nchildren_planned = c->nchildren_planned;
  return n;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err != NULL && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* a message cut inside a key's character would make the error body invalid UTF-8 */
    err[sm_utf8_valid_prefix(err, strlen(err))] = '\0';
  }
  return code;
}

/* ---- strings of a submitted JSON text ----
 *
 * cJSON hands out strings as C strings: "\u0000" (or a raw NUL byte) inside one ends it early,
 * after the text as a whole was accepted ("ec\u0000ho" would run as "ec"). It also copies any
 * bytes, so invalid UTF-8 would be stored and written back into every listing. The JSON text is
 * therefore scanned once more after cJSON accepted it: every string literal, key or value, must
 * be valid UTF-8 without U+0000. The scan follows the nesting to name the field. */

#define SCAN_DEPTH 64 /* frames whose keys name a field; deeper ones are counted only */

typedef struct scan_frame {
  unsigned char is_array;
  unsigned char want_key; /* object: the next string is a key */
  size_t index;           /* array: the element */
  const char *key;        /* object: the current member's key as written (escapes kept) */
  size_t keylen;
} scan_frame;

/* The problem of the string literal s[0..n) (between its quotes), or NULL. */
static const char *literal_problem(const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '\\') {
      if (i + 6 <= n && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
        return "must not contain NUL (\\u0000)";
      i += (i + 1 < n && s[i + 1] == 'u') ? 6 : 2; /* cJSON checked the escape */
    } else if (ch == 0) {
      return "must not contain NUL";
    } else if (ch >= 0x80) {
      size_t len = sm_utf8_char(s + i, n - i, NULL);
      if (len == 0)
        return "must be valid UTF-8";
      i += len;
    } else {
      i++;
    }
  }
  return NULL;
}

/* Writes the path of the innermost frame: "params.cmd", "element 2: type", "body". */
static void scan_path(const scan_frame *f, size_t depth, int is_key, char *out, size_t cap) {
  size_t o = 0;
  out[0] = '\0';
  size_t shown = depth < SCAN_DEPTH ? depth : SCAN_DEPTH;
  /* a key names its object; a value names its member */
  size_t last = is_key && shown > 0 ? shown - 1 : shown;
  for (size_t d = 0; d < last && o + 1 < cap; d++) {
    int n;
    if (f[d].is_array && d == 0)
      n = snprintf(out + o, cap - o, "element %zu: ", f[d].index);
    else if (f[d].is_array)
      n = snprintf(out + o, cap - o, "[%zu]", f[d].index);
    else {
      size_t kl = f[d].keylen > 64 ? 64 : f[d].keylen;
      while (kl < f[d].keylen && kl > 0 && ((unsigned char)f[d].key[kl] & 0xC0) == 0x80)
        kl--; /* cut at a character boundary */
      n = snprintf(out + o, cap - o, "%s%.*s", o == 0 || out[o - 1] == ' ' ? "" : ".", (int)kl,
                   f[d].key);
    }
    if (n < 0)
      break;
    o += (size_t)n < cap - o ? (size_t)n : cap - o - 1;
  }
  if (o == 0 || out[o - 1] == ' ')
    snprintf(out + o, cap - o, "%s", "body");
}

/* Checks every string literal of the JSON text t[0..n) that cJSON accepted. */
static int check_literals(const char *t, size_t n, char *err, size_t errlen) {
  scan_frame f[SCAN_DEPTH];
  size_t depth = 0;
  for (size_t i = 0; i < n; i++) {
    scan_frame *top = depth > 0 && depth <= SCAN_DEPTH ? &f[depth - 1] : NULL;
    switch (t[i]) {
    case '{':
    case '[':
      if (depth < SCAN_DEPTH)
        f[depth] = (scan_frame){.is_array = t[i] == '[', .want_key = t[i] == '{'};
      depth++;
      break;
    case '}':
    case ']':
      if (depth > 0)
        depth--;
      break;
    case ',':
      if (top && top->is_array)
        top->index++;
      else if (top)
        top->want_key = 1;
      break;
    case '"': {
      size_t start = ++i;
      while (i < n && t[i] != '"')
        i += t[i] == '\\' ? 2 : 1;
      if (i > n)
        i = n;
      int is_key = top && !top->is_array && top->want_key;
      if (is_key) {
        top->key = t + start;
        top->keylen = i - start;
        top->want_key = 0;
      }
      const char *why = literal_problem(t + start, i - start);
      if (why) {
        char path[160];
        scan_path(f, depth, is_key, path, sizeof(path));
        return fail(err, errlen, SM_EINVAL, "%s: %s%s", path, is_key ? "key " : "", why);
      }
      break;
    }
    default:
      break;
    }
  }
  return 0;
}

int command_json_parse(const char *text, size_t len, cJSON **out, char *err, size_t errlen) {
  *out = NULL;
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (j == NULL)
    return fail(err, errlen, SM_EPARSE, "body: invalid JSON");
  if (end == NULL || end < text || end > text + len)
    end = text + len;
  int rc = check_literals(text, (size_t)(end - text), err, errlen);
  if (rc) {
    cJSON_Delete(j);
    return rc;
  }
  *out = j;
  return 0;
}

/* Ids travel in URL paths and store keys: visible ASCII without the URL's reserved separators. */
static int id_chars_ok(const char *s) {
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch <= 0x20 || ch >= 0x7f || ch == '/' || ch == '?' || ch == '#' || ch == '%' || ch == '\\')
      return 0;
  }
  return 1;
}

static int type_chars_ok(const char *s) {
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (!isalnum(ch) && ch != '_' && ch != '-' && ch != '.' && ch != ':')
      return 0;
  }
  return 1;
}

/* A string field: absent/null leaves *dst NULL. */
static int get_string(const cJSON *obj, const char *name, size_t max, int required, char **dst,
                      size_t *total, char *err, size_t errlen) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
  if (it == NULL || cJSON_IsNull(it)) {
    if (required)
      return fail(err, errlen, SM_EINVAL, "%s: required", name);
    return 0;
  }
  if (!cJSON_IsString(it) || it->valuestring == NULL)
    return fail(err, errlen, SM_EINVAL, "%s: must be a string", name);
  size_t len = strlen(it->valuestring);
  if (len == 0) {
    if (required)
      return fail(err, errlen, SM_EINVAL, "%s: must not be empty", name);
    return 0;
  }
  if (len > max)
    return fail(err, errlen, SM_ETOOBIG, "%s: longer than %zu bytes", name, max);
  if (!sm_utf8_valid(it->valuestring, len))
    return fail(err, errlen, SM_EINVAL, "%s: must be valid UTF-8", name);
  *total += len;
  *dst = strdup(it->valuestring);
  return *dst ? 0 : SM_ENOMEM;
}

/* A string map: strings as is, numbers and booleans as their text, objects/arrays refused. */
static int get_map(const cJSON *obj, const char *name, sm_kv **dst, size_t *ndst, size_t *total,
                   char *err, size_t errlen) {
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(obj, name);
  if (m == NULL || cJSON_IsNull(m))
    return 0;
  if (!cJSON_IsObject(m))
    return fail(err, errlen, SM_EINVAL, "%s: must be an object", name);
  size_t n = (size_t)cJSON_GetArraySize(m);
  if (n == 0)
    return 0;
  if (n > COMMAND_MAX_PARAMS)
    return fail(err, errlen, SM_ETOOBIG, "%s: more than %d entries", name, COMMAND_MAX_PARAMS);
  sm_kv *kv = sm_calloc(n, sizeof(*kv));
  if (kv == NULL)
    return SM_ENOMEM;
  size_t i = 0;
  int rc = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, m) {
    char num[64];
    const char *val;
    const char *key = it->string ? it->string : "";
    if (*key == '\0') {
      rc = fail(err, errlen, SM_EINVAL, "%s: empty key", name);
      break;
    }
    if (strlen(key) > COMMAND_MAX_KEY) {
      rc = fail(err, errlen, SM_ETOOBIG, "%s: key longer than %d bytes", name, COMMAND_MAX_KEY);
      break;
    }
    if (!sm_utf8_valid(key, strlen(key))) {
      rc = fail(err, errlen, SM_EINVAL, "%s: key must be valid UTF-8", name);
      break;
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(kv[j].key, key) == 0) {
        rc = fail(err, errlen, SM_EINVAL, "%s.%s: duplicate key", name, key);
        break;
      }
    }
    if (rc)
      break;
    if (cJSON_IsString(it)) {
      val = it->valuestring;
    } else if (cJSON_IsBool(it)) {
      val = cJSON_IsTrue(it) ? "true" : "false";
    } else if (cJSON_IsNumber(it)) {
      double d = it->valuedouble;
      if (d == floor(d) && fabs(d) < 9.007199254740992e15)
        snprintf(num, sizeof(num), "%lld", (long long)d);
      else
        snprintf(num, sizeof(num), "%.17g", d);
      val = num;
    } else {
      rc = fail(err, errlen, SM_EINVAL, "%s.%s: must be a string, number or boolean", name, key);
      break;
    }
    size_t vlen = strlen(val);
    if (vlen > COMMAND_MAX_VALUE) {
      rc = fail(err, errlen, SM_ETOOBIG, "%s.%s: value longer than %d bytes", name, key,
                COMMAND_MAX_VALUE);
      break;
    }
    if (!sm_utf8_valid(val, vlen)) {
      rc = fail(err, errlen, SM_EINVAL, "%s.%s: must be valid UTF-8", name, key);
      break;
    }
    *total += strlen(key) + vlen;
    kv[i].key = sm_strdup(key);
    kv[i].value = sm_strdup(val);
    i++;
    if (kv[i - 1].key == NULL || kv[i - 1].value == NULL) {
      rc = SM_ENOMEM;
      break;
    }
  }
  if (rc) {
    kvs_free(kv, i);
    return rc;
  }
  *dst = kv;
  *ndst = i;
  return 0;
}

static int get_int(const cJSON *obj, const char *name, long long lo, long long hi, int *present,
                   long long *out, char *err, size_t errlen) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
  *present = 0;
  if (it == NULL || cJSON_IsNull(it))
    return 0;
  if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
      it->valuedouble < (double)lo || it->valuedouble > (double)hi)
    return fail(err, errlen, SM_EINVAL, "%s: must be an integer %lld..%lld", name, lo, hi);
  *present = 1;
  *out = (long long)it->valuedouble;
  return 0;
}

static const char *const strategy_names[] = {
    "round_robin", "least_loaded", "capability_match", "weighted", "adaptive", "locality", NULL};

const char *const *command_strategy_names(void) {
  return strategy_names;
}

int command_strategy_known(const char *name) {
  for (size_t i = 0; name && *name && strategy_names[i]; i++)
    if (strcmp(strategy_names[i], name) == 0)
      return 1;
  return 0;
}

int command_parse(const cJSON *json, sm_command **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cJSON_IsObject(json))
    return fail(err, errlen, SM_EINVAL, "command: must be a JSON object");
  sm_command *c = command_new();
  if (c == NULL)
    return SM_ENOMEM;
  size_t total = 0;
  long long v;
  int present;
  int rc = get_string(json, "id", COMMAND_MAX_ID, 0, &c->id, &total, err, errlen);
  if (!rc && c->id && !id_chars_ok(c->id))
    rc = fail(err, errlen, SM_EINVAL, "id: only visible ASCII without / ? # %% \\");
  if (!rc)
    rc = get_string(json, "type", COMMAND_MAX_TYPE, 1, &c->type, &total, err, errlen);
  if (!rc && !type_chars_ok(c->type))
    rc = fail(err, errlen, SM_EINVAL, "type: only letters, digits and _ - . :");
  if (!rc)
    rc = get_map(json, "params", &c->params, &c->nparams, &total, err, errlen);
  if (!rc)
    rc = get_string(json, "agent_id", COMMAND_MAX_ID, 0, &c->target_agent, &total, err, errlen);
  if (!rc)
    rc = get_map(json, "capabilities", &c->capabilities, &c->ncapabilities, &total, err, errlen);
  if (!rc)
    rc = get_int(json, "priority", 0, 9, &present, &v, err, errlen);
  if (!rc && present)
    c->priority = (int)v;
  if (!rc)
    rc = get_int(json, "timeout_seconds", 1, COMMAND_MAX_TIMEOUT_S, &present, &v, err, errlen);
  if (!rc && present)
    c->timeout_seconds = v;
  if (!rc) {
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(json, "deadline");
    if (d != NULL && !cJSON_IsNull(d)) {
      if (!cJSON_IsString(d) || command_time_parse(d->valuestring, &c->deadline) != 0 ||
          c->deadline <= 0)
        rc = fail(err, errlen, SM_EINVAL, "deadline: must be an RFC 3339 time");
    }
  }
  if (!rc)
    rc = get_string(json, "strategy", COMMAND_MAX_TYPE, 0, &c->strategy, &total, err, errlen);
  if (!rc && c->strategy && !command_strategy_known(c->strategy))
    rc = fail(err, errlen, SM_EINVAL,
              "strategy: unknown (round_robin, least_loaded, capability_match, weighted, "
              "adaptive, locality)");
  if (!rc) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(json, "broadcast");
    if (b != NULL && !cJSON_IsNull(b)) {
      if (!cJSON_IsBool(b))
        rc = fail(err, errlen, SM_EINVAL, "broadcast: must be a boolean");
      else
        c->broadcast = cJSON_IsTrue(b);
    }
  }
  if (!rc)
    rc = get_map(json, "filter", &c->filter, &c->nfilter, &total, err, errlen);
  if (!rc && total > COMMAND_MAX_TOTAL)
    rc = fail(err, errlen, SM_ETOOBIG, "command: larger than %d bytes", COMMAND_MAX_TOTAL);
  if (rc) {
    command_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

int command_parse_text(const char *text, size_t len, sm_command **out, char *err, size_t errlen) {
  *out = NULL;
  if (len > COMMAND_MAX_TOTAL + 64 * 1024)
    return fail(err, errlen, SM_ETOOBIG, "command: larger than %d bytes", COMMAND_MAX_TOTAL);
  cJSON *j = NULL;
  int rc = command_json_parse(text, len, &j, err, errlen);
  if (rc)
    return rc;
  rc = command_parse(j, out, err, errlen);
  cJSON_Delete(j);
  return rc;
}

/* ---- JSON forms --------------------------------------------------------------------------- */

static int add_map(cJSON *obj, const char *name, const sm_kv *kv, size_t n) {
  cJSON *m = cJSON_AddObjectToObject(obj, name);
  if (m == NULL)
    return SM_ENOMEM;
  for (size_t i = 0; i < n; i++)
    if (cJSON_AddStringToObject(m, kv[i].key, kv[i].value) == NULL)
      return SM_ENOMEM;
  return 0;
}

static int add_time(cJSON *obj, const char *name, int64_t ms) {
  if (ms == 0)
    return cJSON_AddNullToObject(obj, name) ? 0 : SM_ENOMEM;
  char buf[32];
  command_time_format(ms, buf);
  return cJSON_AddStringToObject(obj, name, buf) ? 0 : SM_ENOMEM;
}

static int add_str(cJSON *obj, const char *name, const char *s) {
  return (s ? cJSON_AddStringToObject(obj, name, s) : cJSON_AddNullToObject(obj, name)) ? 0
                                                                                        : SM_ENOMEM;
}

/* The "children" array of child ids. Returns 0 or SM_ENOMEM. */
static int add_children(cJSON *o, const sm_command *c) {
  cJSON *ch = cJSON_AddArrayToObject(o, "children");
  if (ch == NULL)
    return SM_ENOMEM;
  for (size_t i = 0; c->children != NULL && i < c->nchildren; i++) {
    cJSON *s = cJSON_CreateString(c->children[i]);
    if (s == NULL || !cJSON_AddItemToArray(ch, s)) {
      cJSON_Delete(s);
      return SM_ENOMEM;
    }
  }
  return 0;
}

cJSON *command_to_json(const sm_command *c) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return NULL;
  int rc = add_str(o, "id", c->id) | add_str(o, "type", c->type) |
           add_str(o, "status", command_status_name(c->status)) |
           add_map(o, "params", c->params, c->nparams) | add_str(o, "agent_id", command_agent(c));
  if (c->ncapabilities)
    rc |= add_map(o, "capabilities", c->capabilities, c->ncapabilities);
  rc |= (cJSON_AddNumberToObject(o, "priority", c->priority) ? 0 : SM_ENOMEM);
  if (c->timeout_seconds)
    rc |=
        (cJSON_AddNumberToObject(o, "timeout_seconds", (double)c->timeout_seconds) ? 0 : SM_ENOMEM);
  if (c->deadline)
    rc |= add_time(o, "deadline", c->deadline);
  if (c->strategy)
    rc |= add_str(o, "strategy", c->strategy);
  if (c->broadcast) {
    rc |= (cJSON_AddTrueToObject(o, "broadcast") ? 0 : SM_ENOMEM);
    if (c->nfilter)
      rc |= add_map(o, "filter", c->filter, c->nfilter);
  }
  rc |= (cJSON_AddNumberToObject(o, "attempts", c->attempts) ? 0 : SM_ENOMEM);
  rc |= add_time(o, "created_at", c->created_at) | add_time(o, "dispatched_at", c->dispatched_at) |
        add_time(o, "started_at", c->started_at) | add_time(o, "completed_at", c->completed_at);
  if (c->result.present) {
    cJSON *r = cJSON_AddObjectToObject(o, "result");
    if (r == NULL) {
      rc |= SM_ENOMEM;
    } else {
      rc |= add_str(r, "status", c->result.status) |
            add_map(r, "data", c->result.data, c->result.ndata) |
            add_str(r, "error", c->result.error) |
            add_time(r, "completed_at", c->result.completed_at);
    }
  } else {
    rc |= (cJSON_AddNullToObject(o, "result") ? 0 : SM_ENOMEM);
  }
  if (c->broadcast || c->nchildren) {
    rc |= add_children(o, c);
  }
  if (c->parent_id)
    rc |= add_str(o, "parent_id", c->parent_id);
  if (c->correlation_id)
    rc |= add_str(o, "correlation_id", c->correlation_id);
  rc |= add_str(o, "source", c->source == COMMAND_SRC_AMQP ? "amqp" : "rest");
  if (c->instance)
    rc |= add_str(o, "instance", c->instance);
  if (rc) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

/* Store form: short keys, every field, times as integers (ms). */
static int add_int(cJSON *o, const char *k, int64_t v) {
  return cJSON_AddNumberToObject(o, k, (double)v) ? 0 : SM_ENOMEM;
}

static int add_opt(cJSON *o, const char *k, const char *s) {
  return s == NULL ? 0 : (cJSON_AddStringToObject(o, k, s) ? 0 : SM_ENOMEM);
}

static int result_fields(cJSON *r, const command_result *res) {
  return add_opt(r, "status", res->status) | add_map(r, "data", res->data, res->ndata) |
         add_opt(r, "error", res->error) | add_int(r, "at", res->completed_at);
}

char *command_result_serialize(const command_result *r, size_t *len) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return NULL;
  char *text = result_fields(o, r) ? NULL : cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (text != NULL && len != NULL)
    *len = strlen(text);
  return text;
}

char *command_serialize(const sm_command *c, size_t *len) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return NULL;
  int rc = add_int(o, "v", 1) | add_opt(o, "id", c->id) | add_opt(o, "type", c->type) |
           add_map(o, "params", c->params, c->nparams) | add_opt(o, "target", c->target_agent) |
           add_map(o, "caps", c->capabilities, c->ncapabilities) | add_int(o, "prio", c->priority) |
           add_int(o, "timeout", c->timeout_seconds) | add_int(o, "deadline", c->deadline) |
           add_opt(o, "strategy", c->strategy) | add_int(o, "bcast", c->broadcast) |
           add_map(o, "filter", c->filter, c->nfilter) |
           add_opt(o, "status", command_status_name(c->status)) | add_opt(o, "agent", c->agent_id) |
           add_int(o, "attempts", c->attempts) | add_int(o, "created", c->created_at) |
           add_int(o, "dispatched", c->dispatched_at) | add_int(o, "started", c->started_at) |
           add_int(o, "completed", c->completed_at) | add_opt(o, "parent", c->parent_id) |
           add_opt(o, "reply_to", c->reply_to) | add_opt(o, "corr", c->correlation_id) |
           add_opt(o, "idem", c->idempotency_key) | add_int(o, "src", c->source) |
           add_opt(o, "instance", c->instance);
  if (c->result.present) {
    cJSON *r = cJSON_AddObjectToObject(o, "result");
    rc |= r ? result_fields(r, &c->result) : SM_ENOMEM;
  }
  if (c->nchildren && c->children != NULL) {
    rc |= add_children(o, c);
  }
  char *text = rc ? NULL : cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (text != NULL && len != NULL)
    *len = strlen(text);
  return text;
}

static int read_str(const cJSON *o, const char *k, char **dst) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
  if (it == NULL || cJSON_IsNull(it))
    return 0;
  if (!cJSON_IsString(it))
    return SM_EPARSE;
  return dup_str(dst, it->valuestring);
}

static int64_t read_int(const cJSON *o, const char *k) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(it) ? (int64_t)it->valuedouble : 0;
}

static int read_map(const cJSON *o, const char *k, sm_kv **dst, size_t *n) {
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, k);
  if (m == NULL)
    return 0;
  if (!cJSON_IsObject(m))
    return SM_EPARSE;
  size_t cnt = (size_t)cJSON_GetArraySize(m), i = 0;
  if (cnt == 0)
    return 0;
  sm_kv *kv = sm_calloc(cnt, sizeof(*kv));
  if (kv == NULL)
    return SM_ENOMEM;
  const cJSON *it;
  cJSON_ArrayForEach(it, m) {
    if (!cJSON_IsString(it) || it->string == NULL) {
      kvs_free(kv, i);
      return SM_EPARSE;
    }
    kv[i].key = sm_strdup(it->string);
    kv[i].value = sm_strdup(it->valuestring);
    i++;
    if (!kv[i - 1].key || !kv[i - 1].value) {
      kvs_free(kv, i);
      return SM_ENOMEM;
    }
  }
  *dst = kv;
  *n = i;
  return 0;
}

/* Reads a result's store form into res (cleared first); on failure res is cleared. */
static int read_result(const cJSON *r, command_result *res) {
  result_clear(res);
  res->present = 1;
  res->completed_at = read_int(r, "at");
  int rc = read_str(r, "status", &res->status);
  if (!rc)
    rc = read_str(r, "error", &res->error);
  if (!rc)
    rc = read_map(r, "data", &res->data, &res->ndata);
  if (rc)
    result_clear(res);
  return rc;
}

int command_result_deserialize(const char *text, size_t len, command_result *out) {
  cJSON *o = cJSON_ParseWithLength(text, len);
  if (o == NULL)
    return SM_EPARSE;
  int rc = cJSON_IsObject(o) ? read_result(o, out) : SM_EPARSE;
  cJSON_Delete(o);
  return rc;
}

int command_deserialize(const char *text, size_t len, sm_command **out) {
  *out = NULL;
  cJSON *o = cJSON_ParseWithLength(text, len);
  if (o == NULL)
    return SM_EPARSE;
  sm_command *c = command_new();
  if (c == NULL) {
    cJSON_Delete(o);
    return SM_ENOMEM;
  }
  char *status = NULL;
  int rc = cJSON_IsObject(o) ? 0 : SM_EPARSE;
  if (!rc)
    rc = read_str(o, "id", &c->id);
  if (!rc)
    rc = read_str(o, "type", &c->type);
  if (!rc)
    rc = read_map(o, "params", &c->params, &c->nparams);
  if (!rc)
    rc = read_str(o, "target", &c->target_agent);
  if (!rc)
    rc = read_map(o, "caps", &c->capabilities, &c->ncapabilities);
  if (!rc)
    rc = read_str(o, "strategy", &c->strategy);
  if (!rc)
    rc = read_map(o, "filter", &c->filter, &c->nfilter);
  if (!rc)
    rc = read_str(o, "status", &status);
  if (!rc)
    rc = read_str(o, "agent", &c->agent_id);
  if (!rc)
    rc = read_str(o, "parent", &c->parent_id);
  if (!rc)
    rc = read_str(o, "reply_to", &c->reply_to);
  if (!rc)
    rc = read_str(o, "corr", &c->correlation_id);
  if (!rc)
    rc = read_str(o, "idem", &c->idempotency_key);
  if (!rc)
    rc = read_str(o, "instance", &c->instance);
  if (!rc && (c->id == NULL || c->type == NULL || command_status_parse(status, &c->status)))
    rc = SM_EPARSE;
  if (!rc) {
    c->priority = (int)read_int(o, "prio");
    c->timeout_seconds = read_int(o, "timeout");
    c->deadline = read_int(o, "deadline");
    c->broadcast = read_int(o, "bcast") != 0;
    c->attempts = (int)read_int(o, "attempts");
    c->created_at = read_int(o, "created");
    c->dispatched_at = read_int(o, "dispatched");
    c->started_at = read_int(o, "started");
    c->completed_at = read_int(o, "completed");
    c->source = read_int(o, "src") == COMMAND_SRC_AMQP ? COMMAND_SRC_AMQP : COMMAND_SRC_REST;
  }
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "result");
  if (!rc && cJSON_IsObject(r))
    rc = read_result(r, &c->result);
  const cJSON *ch = cJSON_GetObjectItemCaseSensitive(o, "children");
  if (!rc && cJSON_IsArray(ch)) {
    const cJSON *it;
    cJSON_ArrayForEach(it, ch) {
      if (!cJSON_IsString(it)) {
        rc = SM_EPARSE;
        break;
      }
      if ((rc = command_add_child(c, it->valuestring)) != 0)
        break;
    }
  }
  free(status);
  cJSON_Delete(o);
  if (rc) {
    command_free(c);
    return rc;
  }
  *out = c;
  return 0;
}
