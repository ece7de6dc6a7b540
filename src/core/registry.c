/* registry.c - agents by id (hash map), in a dense array (iteration), and in a list ordered by
 * last-seen time (pruning takes only the expired head of the list). */
#include "core/registry.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/map.h"
#include "util/semver.h"
#include "util/timeutil.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct agent_registry {
  uv_loop_t *loop;
  agent_registry_config cfg;
  char *instance; /* copy of cfg.instance */
  agent_registry_events ev;
  sm_map by_id;  /* id -> agent */
  agent **items; /* dense array of every agent */
  size_t len, cap;
  sm_list seen; /* agent.seen, oldest last_seen first */
  uv_timer_t prune_timer;
  int timer_started;
  uint64_t next_generation; /* registry-wide, so a handle never matches a later stream */
  agent_registry_stats stats;
};

void agent_registry_get_stats(const agent_registry *reg, agent_registry_stats *out) {
  *out = reg->stats;
}

/* ---- seen list ---- */

/* An agent seen now goes to the tail: the list stays ordered by last_seen_ms. */
static void mark_seen(agent_registry *reg, agent *a) {
  a->last_seen_ms = sm_now_ms();
  assert(sm_list_linked(&a->seen));
  if (reg->seen.prev != &a->seen) {
    sm_list_remove(&a->seen);
    sm_list_push_back(&reg->seen, &a->seen);
  }
}

/* ---- descriptor ---- */

static void free_caps(agent_capability *caps, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(caps[i].key);
    free(caps[i].value);
  }
  free(caps);
}

static int cap_cmp(const void *x, const void *y) {
  return strcmp(((const agent_capability *)x)->key, ((const agent_capability *)y)->key);
}

static char *dup_trim(const char *s, size_t n) {
  while (n && (*s == ' ' || *s == '\t')) {
    s++;
    n--;
  }
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    n--;
  return sm_strndup(s, n);
}

/* "k=v,k2=v2" -> sorted capabilities; a bare "k" means k=true; a repeated key keeps the last. */
static int parse_caps(const char *text, agent_capability **out, size_t *nout) {
  agent_capability *caps = NULL;
  size_t n = 0;
  const char *p = text;
  while (*p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', len);
    size_t klen = eq ? (size_t)(eq - p) : len;
    char *key = dup_trim(p, klen);
    char *val = eq ? dup_trim(eq + 1, len - klen - 1) : sm_strdup("true");
    if (key == NULL || val == NULL) {
      free(key);
      free(val);
      free_caps(caps, n);
      return SM_ENOMEM;
    }
    if (*key == '\0') {
      free(key);
      free(val);
    } else {
      size_t i;
      for (i = 0; i < n && strcmp(caps[i].key, key) != 0; i++)
        ;
      if (i < n) {
        free(caps[i].value);
        caps[i].value = val;
        free(key);
      } else {
        if (n == AGENT_CAPS_MAX) {
          free(key);
          free(val);
          free_caps(caps, n);
          return SM_EINVAL;
        }
        agent_capability *nc = sm_realloc(caps, (n + 1) * sizeof(*nc));
        if (nc == NULL) {
          free(key);
          free(val);
          free_caps(caps, n);
          return SM_ENOMEM;
        }
        caps = nc;
        caps[n].key = key;
        caps[n].value = val;
        n++;
      }
    }
    if (end == NULL)
      break;
    p = end + 1;
  }
  if (n > 1)
    qsort(caps, n, sizeof(*caps), cap_cmp);
  *out = caps;
  *nout = n;
  return 0;
}

static int parse_int(const char *s, long lo, long hi, int32_t *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < lo || v > hi)
    return SM_EINVAL;
  *out = (int32_t)v;
  return 0;
}

/* Replaces *slot by a copy of v (the last of repeated keys wins). */
static int stage_str(char **slot, const char *v) {
  char *c = sm_strdup(v);
  if (c == NULL)
    return SM_ENOMEM;
  free(*slot);
  *slot = c;
  return 0;
}

/* Applies descriptor metadata. Everything is validated and copied first so that a bad message
 * (SM_EINVAL) or a failed allocation (SM_ENOMEM) changes nothing. Unknown keys are ignored
 * (agents may send more than we use). */
static int apply_meta(agent *a, const sm_kv *meta, size_t n) {
  int32_t max_conc = a->max_concurrent;
  double weight = a->weight;
  agent_capability *caps = NULL;
  size_t ncaps = 0;
  int have_caps = 0;
  char *str[3] = {NULL, NULL, NULL}; /* hostname, version, segment */
  int err;

  for (size_t i = 0; i < n; i++) {
    const char *k = meta[i].key, *v = meta[i].value;
    if (k == NULL || v == NULL)
      continue;
    if (strlen(v) > AGENT_META_VALUE_MAX) {
      err = SM_EINVAL;
      goto fail;
    }
    if (strcmp(k, "max_concurrent") == 0) {
      if (parse_int(v, 1, 100000, &max_conc)) {
        err = SM_EINVAL;
        goto fail;
      }
    } else if (strcmp(k, "weight") == 0) {
      char *end;
      weight = strtod(v, &end);
      if (*v == '\0' || *end != '\0' || !(weight > 0) || weight > 1e6) {
        err = SM_EINVAL;
        goto fail;
      }
    } else if (strcmp(k, "capabilities") == 0) {
      free_caps(caps, ncaps);
      caps = NULL;
      ncaps = 0;
      err = parse_caps(v, &caps, &ncaps);
      if (err)
        goto fail;
      have_caps = 1;
    }
  }
  for (size_t i = 0; i < n; i++) {
    const char *k = meta[i].key, *v = meta[i].value;
    if (k == NULL || v == NULL)
      continue;
    err = 0;
    if (strcmp(k, "hostname") == 0)
      err = stage_str(&str[0], v);
    else if (strcmp(k, "version") == 0)
      err = stage_str(&str[1], v);
    else if (strcmp(k, "segment") == 0)
      err = stage_str(&str[2], v);
    if (err)
      goto fail;
  }
  char **slot[3] = {&a->hostname, &a->version, &a->segment};
  for (int i = 0; i < 3; i++)
    if (str[i] != NULL) {
      free(*slot[i]);
      *slot[i] = str[i];
    }
  a->max_concurrent = max_conc;
  a->weight = weight;
  if (have_caps) {
    free_caps(a->caps, a->ncaps);
    a->caps = caps;
    a->ncaps = ncaps;
  }
  return 0;
fail:
  free_caps(caps, ncaps);
  for (int i = 0; i < 3; i++)
    free(str[i]);
  return err;
}

/* ---- lifecycle ---- */

static void agent_free(agent *a) {
  if (a == NULL)
    return;
  free(a->id);
  free(a->hostname);
  free(a->version);
  free(a->segment);
  free_caps(a->caps, a->ncaps);
  free(a);
}

static int agent_new(const char *id, size_t id_len, agent **out) {
  agent *a = sm_calloc(1, sizeof(*a));
  if (a == NULL)
    return SM_ENOMEM;
  a->id = sm_strndup(id, id_len);
  a->id_len = id_len;
  a->hostname = sm_strdup("");
  a->version = sm_strdup("");
  a->segment = sm_strdup("");
  if (!a->id || !a->hostname || !a->version || !a->segment) {
    agent_free(a);
    return SM_ENOMEM;
  }
  a->max_concurrent = 1;
  a->weight = 1.0;
  sm_list_init(&a->seen);
  *out = a;
  return 0;
}

/* Takes the agent out of every index and frees it; the link must already be dealt with. */
static void registry_remove(agent_registry *reg, agent *a, int reason) {
  if (reg->ev.on_unregister)
    reg->ev.on_unregister(reg->ev.ud, a, reason);
  sm_map_del(&reg->by_id, a->id, a->id_len);
  sm_list_remove(&a->seen);
  size_t i = a->index;
  assert(i < reg->len && reg->items[i] == a);
  reg->items[i] = reg->items[--reg->len];
  reg->items[i]->index = i;
  agent_free(a);
}

/* The registry lets go of the link first and tells the transport. */
static void release_link(agent *a, int reason, const char *message) {
  const agent_link_ops *ops = a->link_ops;
  void *link = a->link;
  a->link_ops = NULL;
  a->link = NULL;
  if (ops && ops->end)
    ops->end(link, reason, message);
}

static void prune_cb(uv_timer_t *t) {
  agent_registry *reg = t->data;
  int64_t cutoff = sm_now_ms() - (int64_t)(reg->cfg.agent_timeout_s * 1000.0);
  sm_list *n;
  while ((n = sm_list_first(&reg->seen)) != NULL &&
         SM_LIST_ENTRY(n, agent, seen)->last_seen_ms < cutoff) {
    agent *a = SM_LIST_ENTRY(n, agent, seen);
    sm_log_info("registry", "agent pruned", SM_LS("agent_id", a->id),
                SM_LI("silent_ms", sm_now_ms() - a->last_seen_ms));
    release_link(a, SM_ETIMEDOUT, "agent timed out");
    reg->stats.pruned++;
    registry_remove(reg, a, SM_ETIMEDOUT);
  }
}

int agent_registry_create(uv_loop_t *loop, const agent_registry_config *cfg, agent_registry **out) {
  if (loop == NULL || cfg == NULL || out == NULL || cfg->agent_timeout_s <= 0 ||
      cfg->max_agents == 0)
    return SM_EINVAL;
  agent_registry *reg = sm_calloc(1, sizeof(*reg));
  if (reg == NULL)
    return SM_ENOMEM;
  reg->loop = loop;
  reg->cfg = *cfg;
  reg->instance = sm_strdup(cfg->instance ? cfg->instance : "");
  if (reg->instance == NULL) {
    free(reg);
    return SM_ENOMEM;
  }
  reg->cfg.instance = reg->instance;
  sm_map_init(&reg->by_id, cfg->max_agents);
  sm_list_init(&reg->seen);
  uv_timer_init(loop, &reg->prune_timer);
  reg->prune_timer.data = reg;
  *out = reg;
  return 0;
}

static void registry_free_cb(uv_handle_t *h) {
  agent_registry *reg = h->data;
  sm_map_finish(&reg->by_id);
  free(reg->items);
  free(reg->instance);
  free(reg);
}

void agent_registry_destroy(agent_registry *reg) {
  if (reg == NULL)
    return;
  agent_registry_end_all(reg, SM_ECANCELED, "manager shutting down");
  uv_close((uv_handle_t *)&reg->prune_timer, registry_free_cb);
}

void agent_registry_set_events(agent_registry *reg, const agent_registry_events *ev) {
  reg->ev = *ev;
}

int agent_registry_start(agent_registry *reg) {
  double period = reg->cfg.agent_timeout_s / 4.0;
  if (period < 0.1)
    period = 0.1;
  if (period > 5.0)
    period = 5.0;
  uint64_t ms = (uint64_t)(period * 1000.0);
  reg->timer_started = 1;
  return sm_err_from_uv(uv_timer_start(&reg->prune_timer, prune_cb, ms, ms));
}

int agent_registry_attach(agent_registry *reg, const char *id, size_t id_len,
                          enum agent_status status, const sm_kv *meta, size_t nmeta,
                          const agent_link_ops *ops, void *link, agent **out) {
  if (id_len == 0 || id_len > AGENT_ID_MAX || memchr(id, '\0', id_len) != NULL)
    return SM_EINVAL;
  for (size_t i = 0; i < id_len; i++) {
    unsigned char c = (unsigned char)id[i];
    if (c < 0x20 || c == 0x7f)
      return SM_EINVAL;
  }
  if ((unsigned)status >= AGENT_STATUS_COUNT)
    status = AGENT_UNKNOWN;

  agent *a = sm_map_get(&reg->by_id, id, id_len);
  if (a != NULL) {
    /* The new stream wins once its descriptor is applied: apply_meta validates every value
     * before changing anything, so a bad one leaves the old stream as it was. */
    int err = apply_meta(a, meta, nmeta);
    if (err)
      return err;
    sm_log_info("registry", "agent replaced by a new stream", SM_LS("agent_id", a->id),
                SM_LS("old_peer", a->link_ops ? a->link_ops->peer(a->link) : ""),
                SM_LS("new_peer", ops->peer(link)));
    release_link(a, SM_EEXIST, "replaced by a new connection for this agent id");
    a->link_ops = ops;
    a->link = link;
    a->status = status;
    a->generation = ++reg->next_generation;
    a->messages = 1;
    a->assigned = 0;
    a->connected_at_ms = sm_now_ms();
    mark_seen(reg, a);
    a->load = agent_load_compute(a);
    reg->stats.messages++;
    reg->stats.registered++;
    if (reg->ev.on_register)
      reg->ev.on_register(reg->ev.ud, a, 1);
    *out = a;
    return 0;
  }

  if (reg->len >= reg->cfg.max_agents)
    return SM_ELIMIT;
  int err = agent_new(id, id_len, &a);
  if (err)
    return err;
  err = apply_meta(a, meta, nmeta);
  if (err) {
    agent_free(a);
    return err;
  }
  if (reg->len == reg->cap) {
    size_t ncap = reg->cap ? reg->cap * 2 : 64;
    agent **ni = sm_realloc(reg->items, ncap * sizeof(*ni));
    if (ni == NULL) {
      agent_free(a);
      return SM_ENOMEM;
    }
    reg->items = ni;
    reg->cap = ncap;
  }
  err = sm_map_put(&reg->by_id, a->id, a->id_len, a);
  if (err) {
    agent_free(a);
    return err;
  }
  a->index = reg->len;
  reg->items[reg->len++] = a;
  a->link_ops = ops;
  a->link = link;
  a->status = status;
  a->generation = ++reg->next_generation;
  a->messages = 1;
  a->connected_at_ms = sm_now_ms();
  a->last_seen_ms = a->connected_at_ms;
  sm_list_push_back(&reg->seen, &a->seen);
  a->load = agent_load_compute(a);
  reg->stats.messages++;
  reg->stats.registered++;
  sm_log_info("registry", "agent registered", SM_LS("agent_id", a->id),
              SM_LS("hostname", a->hostname), SM_LS("version", a->version),
              SM_LS("peer", ops->peer(link)), SM_LS("protocol", ops->protocol));
  if (reg->ev.on_register)
    reg->ev.on_register(reg->ev.ud, a, 0);
  *out = a;
  return 0;
}

void agent_registry_detach(agent_registry *reg, agent *a, void *link, int reason) {
  if (a == NULL || a->link != link)
    return; /* defensive: a link the registry no longer holds */
  a->link_ops = NULL;
  a->link = NULL;
  reg->stats.disconnected++;
  sm_log_info("registry", "agent disconnected", SM_LS("agent_id", a->id),
              SM_LS("reason", sm_err_name(reason)));
  registry_remove(reg, a, reason);
}

int agent_registry_touch(agent_registry *reg, agent *a, enum agent_status status, const sm_kv *meta,
                         size_t nmeta) {
  mark_seen(reg, a);
  a->messages++;
  reg->stats.messages++;
  if ((unsigned)status < AGENT_STATUS_COUNT)
    a->status = status;
  int err = nmeta ? apply_meta(a, meta, nmeta) : 0;
  a->load = agent_load_compute(a);
  if (reg->ev.on_update)
    reg->ev.on_update(reg->ev.ud, a);
  return err;
}

static double clamp_pct(double v) {
  if (!(v >= 0)) /* also NaN */
    return 0;
  if (v <= 1.0)
    return v * 100.0; /* a fraction */
  return v > 100.0 ? 100.0 : v;
}

void agent_registry_heartbeat(agent_registry *reg, agent *a, const agent_heartbeat *hb) {
  mark_seen(reg, a);
  reg->stats.heartbeats++;
  a->cpu_usage = clamp_pct(hb->cpu_usage);
  a->memory_usage = clamp_pct(hb->memory_usage);
  a->active_commands = hb->active_commands < 0 ? 0 : hb->active_commands;
  a->load = agent_load_compute(a);
  if (reg->ev.on_update)
    reg->ev.on_update(reg->ev.ud, a);
}

void agent_registry_result(agent_registry *reg, agent *a, const agent_result *r) {
  mark_seen(reg, a);
  reg->stats.results++;
  if (reg->ev.on_result)
    reg->ev.on_result(reg->ev.ud, a, r);
}

agent *agent_registry_find(const agent_registry *reg, const char *id, size_t id_len) {
  return sm_map_get(&reg->by_id, id, id_len);
}

size_t agent_registry_count(const agent_registry *reg) {
  return reg->len;
}

agent *agent_registry_at(const agent_registry *reg, size_t i) {
  return i < reg->len ? reg->items[i] : NULL;
}

agent *const *agent_registry_agents(const agent_registry *reg, size_t *n) {
  *n = reg->len;
  return reg->items;
}

size_t agent_registry_foreach(agent_registry *reg, const agent_filter *f,
                              int (*fn)(void *ud, agent *a), void *ud) {
  size_t n = 0;
  for (size_t i = 0; i < reg->len; i++) {
    agent *a = reg->items[i];
    if (!agent_filter_match(f, a))
      continue;
    n++;
    if (fn && fn(ud, a))
      break;
  }
  return n;
}

int agent_send(agent *a, const agent_command *cmd) {
  if (a->link_ops == NULL)
    return SM_ECLOSED;
  return a->link_ops->send(a->link, cmd);
}

size_t agent_registry_broadcast(agent_registry *reg, const agent_filter *f,
                                const agent_command *cmd) {
  size_t sent = 0;
  for (size_t i = 0; i < reg->len; i++) {
    agent *a = reg->items[i];
    if (agent_filter_match(f, a) && agent_send(a, cmd) == 0)
      sent++;
  }
  return sent;
}

void agent_registry_end_all(agent_registry *reg, int reason, const char *message) {
  while (reg->len) {
    agent *a = reg->items[reg->len - 1];
    release_link(a, reason, message);
    registry_remove(reg, a, reason);
  }
}

agent *agent_handle_get(const agent_registry *reg, const agent_handle *h) {
  agent *a = sm_map_get(&reg->by_id, h->id, strlen(h->id));
  return a && a->generation == h->generation && a->link_ops ? a : NULL;
}
