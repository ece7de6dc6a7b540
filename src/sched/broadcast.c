/* broadcast.c - broadcast planning over a snapshot on the uv work queue (see broadcast.h). */
#include "sched/broadcast.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/map.h"
#include "util/semver.h"

#include <stdlib.h>
#include <string.h>

typedef struct bc_agent {
  size_t id_off, ver_off; /* into the arena; ver_off NONE when no min_version filter */
  uint64_t gen;
  unsigned status;
  double load;
  size_t vals; /* into vals: one value offset (or NONE: absent) per filter capability */
} bc_agent;

typedef struct bc_arena {
  char *buf;
  size_t len, cap;
} bc_arena;

struct sched_bcast_job {
  uv_work_t work;
  uv_loop_t *loop;
  sched_bcast_cb cb;
  void *ud;
  int cancelled;
  int queued; /* on the work queue: freed by its after-work callback */
  int err;
  /* snapshot, built a step per loop turn */
  uv_idle_t *idle; /* own allocation: freed in its close callback */
  agent **ptrs;    /* the agents when the broadcast started (copy of the caller's array) */
  size_t nptrs, next;
  sm_map dead;      /* agents gone before they were copied (key: the pointer's bytes) */
  void **dead_keys; /* the cells holding those keys (freed with the job) */
  size_t ndead, cdead;
  bc_arena ar;
  bc_agent *agents;
  size_t n;
  size_t *vals;
  size_t nvals;
  /* filter copy */
  unsigned status_mask;
  double max_load;
  size_t *fcaps; /* key offset, value offset (or NONE for any value) */
  size_t nfcaps;
  size_t fver_off; /* NONE: none */
  size_t max;
  /* result */
  sched_bcast_plan *plan;
};

#define NONE ((size_t)-1)

SM_MUST_CHECK static int ar_put(bc_arena *a, const char *s, size_t *off) {
  size_t l = strlen(s) + 1;
  if (a->len + l > a->cap) {
    size_t nc = a->cap ? a->cap : 65536;
    while (nc < a->len + l)
      nc *= 2;
    char *n = sm_realloc(a->buf, nc);
    if (n == NULL)
      return SM_ENOMEM;
    a->buf = n;
    a->cap = nc;
  }
  memcpy(a->buf + a->len, s, l);
  *off = a->len;
  a->len += l;
  return 0;
}

static void job_free(sched_bcast_job *j) {
  free(j->ar.buf);
  free(j->agents);
  free(j->vals);
  free(j->fcaps);
  free(j->ptrs);
  for (size_t i = 0; i < j->ndead; i++)
    free(j->dead_keys[i]);
  free(j->dead_keys);
  sm_map_finish(&j->dead);
  sched_bcast_plan_free(j->plan);
  free(j);
}

void sched_bcast_plan_free(sched_bcast_plan *p) {
  if (p == NULL)
    return;
  free(p->agent_id);
  free(p->generation);
  free(p->child_id);
  free(p->arena_);
  free(p);
}

SM_MUST_CHECK static int copy_filter(sched_bcast_job *j, const agent_filter *f) {
  j->status_mask = f ? f->status_mask : 0;
  j->max_load = f ? f->max_load : -1;
  j->fver_off = NONE;
  if (f && f->min_version && *f->min_version && ar_put(&j->ar, f->min_version, &j->fver_off))
    return SM_ENOMEM;
  if (f && f->ncaps) {
    j->fcaps = sm_calloc(2 * f->ncaps, sizeof(*j->fcaps));
    if (j->fcaps == NULL)
      return SM_ENOMEM;
    for (size_t k = 0; k < f->ncaps; k++) {
      const char *v = f->caps[k].value;
      if (ar_put(&j->ar, f->caps[k].key, &j->fcaps[2 * k]))
        return SM_ENOMEM;
      if (v == NULL || *v == '\0' || strcmp(v, "*") == 0)
        j->fcaps[2 * k + 1] = NONE;
      else if (ar_put(&j->ar, v, &j->fcaps[2 * k + 1]))
        return SM_ENOMEM;
    }
    j->nfcaps = f->ncaps;
  }
  return 0;
}

/* Copies one agent: only what the filter looks at. */
SM_MUST_CHECK static int copy_agent(sched_bcast_job *j, const agent *a) {
  bc_agent *b = &j->agents[j->n];
  b->gen = a->generation;
  b->status = (unsigned)a->status;
  b->load = a->load;
  b->ver_off = NONE;
  if (ar_put(&j->ar, a->id, &b->id_off))
    return SM_ENOMEM;
  if (j->fver_off != NONE && ar_put(&j->ar, a->version ? a->version : "", &b->ver_off))
    return SM_ENOMEM;
  b->vals = j->nvals;
  for (size_t k = 0; k < j->nfcaps; k++) {
    const char *have = agent_cap_value(a, j->ar.buf + j->fcaps[2 * k]);
    size_t off = NONE;
    if (have && ar_put(&j->ar, have, &off))
      return SM_ENOMEM;
    j->vals[j->nvals++] = off;
  }
  j->n++;
  return 0;
}

/* agent_filter_match over the snapshot (same rules). */
static int snap_match(const sched_bcast_job *j, const bc_agent *b, const sm_semver *want) {
  const char *s = j->ar.buf;
  if (j->status_mask && !(j->status_mask & (1u << b->status)))
    return 0;
  if (j->max_load >= 0 && b->load > j->max_load)
    return 0;
  for (size_t k = 0; k < j->nfcaps; k++) {
    size_t have = j->vals[b->vals + k];
    if (have == NONE)
      return 0;
    if (j->fcaps[2 * k + 1] != NONE && strcmp(s + j->fcaps[2 * k + 1], s + have) != 0)
      return 0;
  }
  if (want) {
    sm_semver have;
    if (sm_semver_parse(s + b->ver_off, &have) || sm_semver_cmp(&have, want) < 0)
      return 0;
  }
  return 1;
}

static void plan_work(uv_work_t *w) {
  sched_bcast_job *j = w->data;
  uint64_t t0 = uv_hrtime();
  sm_semver want;
  const sm_semver *wp = NULL;
  if (j->fver_off != NONE) {
    if (sm_semver_parse(j->ar.buf + j->fver_off, &want) != 0) {
      j->err = SM_EINVAL;
      return;
    }
    wp = &want;
  }
  size_t *hit = sm_malloc((j->n ? j->n : 1) * sizeof(*hit));
  if (hit == NULL) {
    j->err = SM_ENOMEM;
    return;
  }
  size_t nh = 0, bytes = 0;
  for (size_t i = 0; i < j->n && nh < j->max; i++) {
    if (snap_match(j, &j->agents[i], wp)) {
      hit[nh++] = i;
      bytes += strlen(j->ar.buf + j->agents[i].id_off) + 1;
    }
  }
  sched_bcast_plan *p = sm_calloc(1, sizeof(*p));
  if (p == NULL || !(p->agent_id = sm_calloc(nh ? nh : 1, sizeof(*p->agent_id))) ||
      !(p->generation = sm_calloc(nh ? nh : 1, sizeof(*p->generation))) ||
      !(p->child_id = sm_calloc(nh ? nh : 1, sizeof(*p->child_id))) ||
      !(p->arena_ = sm_malloc(bytes ? bytes : 1))) {
    sched_bcast_plan_free(p);
    free(hit);
    j->err = SM_ENOMEM;
    return;
  }
  command_idgen g;
  command_idgen_init(&g); /* a generator of its own: the loop's is not touched from here */
  int64_t now = command_now_ms();
  size_t off = 0;
  for (size_t i = 0; i < nh; i++) {
    const bc_agent *b = &j->agents[hit[i]];
    const char *id = j->ar.buf + b->id_off;
    size_t l = strlen(id) + 1;
    memcpy(p->arena_ + off, id, l);
    p->agent_id[i] = p->arena_ + off;
    off += l;
    p->generation[i] = b->gen;
    command_idgen_next(&g, now, p->child_id[i]);
  }
  p->n = nh;
  p->snapshot = j->n;
  free(hit);
  p->plan_ms = (double)(uv_hrtime() - t0) / 1e6;
  j->plan = p;
}

static void plan_after(uv_work_t *w, int status) {
  sched_bcast_job *j = w->data;
  if (!j->cancelled) {
    int err = status ? SM_ECANCELED : j->err;
    sched_bcast_plan *p = err ? NULL : j->plan;
    j->plan = NULL;
    j->cb(j->ud, err, p);
  }
  job_free(j);
}

static void idle_closed(uv_handle_t *h) {
  free(h);
}

static void stop_idle(sched_bcast_job *j) {
  if (j->idle) {
    uv_idle_stop(j->idle);
    uv_close((uv_handle_t *)j->idle, idle_closed);
    j->idle = NULL;
  }
}

/* Fails the job from the loop: the callback runs here, from the idle callback, never from the
 * call that started the job. */
static void fail_now(sched_bcast_job *j, int err) {
  stop_idle(j);
  j->cb(j->ud, err, NULL);
  job_free(j);
}

static void snap_step(uv_idle_t *h) {
  sched_bcast_job *j = h->data;
  if (j->err) { /* a departure could not be recorded: the snapshot cannot be trusted */
    fail_now(j, j->err);
    return;
  }
  size_t end =
      j->next + SCHED_BCAST_SNAP_STEP < j->nptrs ? j->next + SCHED_BCAST_SNAP_STEP : j->nptrs;
  for (size_t i = j->next; i < end; i++) {
    const agent *a = j->ptrs[i];
    if (j->ndead && sm_map_get(&j->dead, (const char *)&j->ptrs[i], sizeof(a)))
      continue;
    if (copy_agent(j, a) != 0) {
      fail_now(j, SM_ENOMEM);
      return;
    }
  }
  j->next = end;
  if (end < j->nptrs)
    return;
  stop_idle(j);
  j->work.data = j;
  if (uv_queue_work(j->loop, &j->work, plan_work, plan_after) != 0) {
    j->cb(j->ud, SM_EIO, NULL);
    job_free(j);
    return;
  }
  j->queued = 1;
}

int sched_bcast_start(uv_loop_t *loop, agent *const *agents, size_t n, const agent_filter *f,
                      size_t max, sched_bcast_cb cb, void *ud, sched_bcast_job **out) {
  sched_bcast_job *j = sm_calloc(1, sizeof(*j));
  if (j == NULL)
    return SM_ENOMEM;
  j->loop = loop;
  j->cb = cb;
  j->ud = ud;
  j->max = max;
  sm_map_init(&j->dead, 0);
  j->nptrs = n;
  j->ptrs = sm_malloc((n ? n : 1) * sizeof(*j->ptrs));
  j->agents = sm_calloc(n ? n : 1, sizeof(*j->agents));
  j->idle = sm_malloc(sizeof(*j->idle));
  int err = j->ptrs && j->agents && j->idle ? copy_filter(j, f) : SM_ENOMEM;
  if (err == 0 && j->nfcaps &&
      (j->vals = sm_malloc((n ? n : 1) * j->nfcaps * sizeof(*j->vals))) == NULL)
    err = SM_ENOMEM;
  if (err) {
    free(j->idle);
    job_free(j);
    return err;
  }
  if (n)
    memcpy(j->ptrs, agents, n * sizeof(*j->ptrs));
  uv_idle_init(loop, j->idle);
  j->idle->data = j;
  uv_idle_start(j->idle, snap_step);
  *out = j;
  return 0;
}

void sched_bcast_agent_gone(sched_bcast_job *j, const agent *a) {
  if (j == NULL || j->cancelled || j->queued || j->next >= j->nptrs || j->err)
    return;
  if (j->ndead == j->cdead) {
    size_t nc = j->cdead ? j->cdead * 2 : 16;
    void **n = sm_realloc(j->dead_keys, nc * sizeof(*n));
    if (n == NULL) {
      j->err = SM_ENOMEM; /* the next step fails the job */
      return;
    }
    j->dead_keys = n;
    j->cdead = nc;
  }
  /* each key lives in its own cell: the map keeps pointers to key bytes */
  agent **cell = sm_malloc(sizeof(*cell));
  if (cell == NULL) {
    j->err = SM_ENOMEM;
    return;
  }
  *cell = (agent *)a;
  if (sm_map_put(&j->dead, (const char *)cell, sizeof(*cell), cell) != 0) {
    free(cell);
    j->err = SM_ENOMEM;
    return;
  }
  j->dead_keys[j->ndead++] = cell;
}

void sched_bcast_cancel(sched_bcast_job *job) {
  if (job == NULL)
    return;
  job->cancelled = 1;
  if (!job->queued) { /* still copying on the loop: nothing else refers to it */
    stop_idle(job);
    job_free(job);
  }
}
