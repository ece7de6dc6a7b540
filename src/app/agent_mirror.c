/* agent_mirror.c - see agent_mirror.h. */
#include "app/agent_mirror.h"

#include "model/agent_json.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <stdlib.h>
#include <string.h>

#define AGENT_MIRROR_TICK_MS 1000 /* flush period */
#define AGENT_MIRROR_MIN_MS 5000  /* a changing agent is written at most this often */
#define AGENT_MIRROR_MAX_PER_TICK                                                                  \
  4000                                /* writes started per tick (bounds a burst after an outage) */
#define AGENT_MIRROR_MAX_PENDING 2000 /* store operations in flight */

struct agent_mirror {
  uv_timer_t timer;
  store *st;
  agent_registry *reg;
  char *instance;
  int64_t ttl_ms;
  size_t pending; /* store operations not yet answered */
  int closing;
  int timer_open;
  uint64_t puts, dels;
};

static void maybe_free(agent_mirror *m) {
  if (!m->closing || m->pending > 0 || m->timer_open)
    return;
  free(m->instance);
  free(m);
}

static void op_done(void *ud, int err) {
  agent_mirror *m = ud;
  m->pending--;
  if (err && err != SM_ECANCELED && !m->closing)
    sm_log_debug("mirror", "agent record write failed", SM_LE(err));
  maybe_free(m);
}

/* Writes one agent's record; returns 0 or the store's refusal. */
static int put(agent_mirror *m, agent *a, int64_t now) {
  if (m->pending >= AGENT_MIRROR_MAX_PENDING)
    return SM_ELIMIT;
  cJSON *j = agent_to_json(a, m->instance);
  char *text = j ? cJSON_PrintUnformatted(j) : NULL;
  cJSON_Delete(j);
  if (text == NULL)
    return SM_ENOMEM;
  int err = store_agent_put(m->st, a->id, m->instance, text, m->ttl_ms, op_done, m);
  cJSON_free(text);
  if (err)
    return err;
  m->pending++;
  m->puts++;
  a->mirrored_ms = now;
  a->mirror_dirty = 0;
  return 0;
}

static void tick(uv_timer_t *t) {
  agent_mirror *m = t->data;
  if (!store_is_up(m->st))
    return;
  int64_t now = sm_now_ms();
  int64_t refresh = m->ttl_ms / 3;
  size_t n = agent_registry_count(m->reg), started = 0;
  for (size_t i = 0; i < n && started < AGENT_MIRROR_MAX_PER_TICK; i++) {
    agent *a = agent_registry_at(m->reg, i);
    int64_t age = now - a->mirrored_ms;
    if (a->mirrored_ms && age < refresh && !(a->mirror_dirty && age >= AGENT_MIRROR_MIN_MS))
      continue;
    if (put(m, a, now))
      break; /* store busy or away: the next tick catches up */
    started++;
  }
}

int agent_mirror_create(uv_loop_t *loop, store *st, agent_registry *reg, const char *instance,
                        double ttl_s, agent_mirror **out) {
  if (st == NULL || reg == NULL || instance == NULL || ttl_s < 3)
    return SM_EINVAL;
  agent_mirror *m = sm_calloc(1, sizeof(*m));
  if (m == NULL)
    return SM_ENOMEM;
  m->instance = sm_strdup(instance);
  if (m->instance == NULL) {
    free(m);
    return SM_ENOMEM;
  }
  m->st = st;
  m->reg = reg;
  m->ttl_ms = (int64_t)(ttl_s * 1000.0);
  uv_timer_init(loop, &m->timer);
  m->timer.data = m;
  m->timer_open = 1;
  uv_timer_start(&m->timer, tick, AGENT_MIRROR_TICK_MS, AGENT_MIRROR_TICK_MS);
  *out = m;
  return 0;
}

void agent_mirror_on_register(agent_mirror *m, agent *a) {
  if (m == NULL || m->closing)
    return;
  a->mirrored_ms = 0; /* written on the next tick (a new stream may belong to a new peer) */
  a->mirror_dirty = 1;
}

void agent_mirror_on_update(agent_mirror *m, agent *a) {
  if (m == NULL || m->closing)
    return;
  a->mirror_dirty = 1;
}

void agent_mirror_on_unregister(agent_mirror *m, agent *a) {
  if (m == NULL || m->closing || a->mirrored_ms == 0)
    return;
  /* Deleted only while this instance owns the record: the agent may already be on another. */
  if (store_agent_del(m->st, a->id, m->instance, op_done, m) == 0) {
    m->pending++;
    m->dels++;
  }
}

void agent_mirror_counts(const agent_mirror *m, uint64_t *puts, uint64_t *dels) {
  *puts = m->puts;
  *dels = m->dels;
}

static void timer_closed(uv_handle_t *h) {
  agent_mirror *m = h->data;
  m->timer_open = 0;
  maybe_free(m);
}

void agent_mirror_close(agent_mirror *m) {
  if (m == NULL || m->closing)
    return;
  m->closing = 1;
  uv_close((uv_handle_t *)&m->timer, timer_closed);
}
