/* broadcast.c - broadcast planning over a snapshot on the uv work queue (see broadcast.h). */
#include "sched/broadcast.h"

#include "util/err.h"
#include "util/semver.h"

#include <stdlib.h>
#include <string.h>

typedef struct bc_agent {
  size_t id_off, ver_off; /* into the arena */
  uint64_t gen;
  unsigned status;
  double load;
  size_t cap_first, ncaps; /* into caps (pairs of offsets) */
} bc_agent;

typedef struct bc_arena {
  char *buf;
  size_t len, cap;
} bc_arena;

struct sched_bcast_job {
  uv_work_t work;
  sched_bcast_cb cb;
  void *ud;
  int cancelled;
  int err;
  /* snapshot */
  bc_arena ar;
  bc_agent *agents;
  size_t n;
  size_t *caps; /* key offset, value offset, ... */
  size_t ncaps, ccaps;
  /* filter copy */
  unsigned status_mask;
  double max_load;
  size_t *fcaps; /* key offset, value offset (or (size_t)-1 for any value) */
  size_t nfcaps;
  size_t fver_off; /* (size_t)-1: none */
  size_t max;
  /* result */
  sched_bcast_plan *plan;
};

#define NONE ((size_t)-1)

static int ar_put(bc_arena *a, const char *s, size_t *off) {
  size_t l = strlen(s) + 1;
  if (a->len + l > a->cap) {
    size_t nc = a->cap ? a->cap : 4096;
    while (nc < a->len + l)
      nc *= 2;
    char *n = realloc(a->buf, nc);
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
  free(j->caps);
  free(j->fcaps);
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

static int snapshot(sched_bcast_job *j, agent_registry *reg, const agent_filter *f) {
  j->n = agent_registry_count(reg);
  j->agents = calloc(j->n ? j->n : 1, sizeof(*j->agents));
  if (j->agents == NULL)
    return SM_ENOMEM;
  for (size_t i = 0; i < j->n; i++) {
    const agent *a = agent_registry_at(reg, i);
    bc_agent *b = &j->agents[i];
    b->gen = a->generation;
    b->status = (unsigned)a->status;
    b->load = a->load;
    if (ar_put(&j->ar, a->id, &b->id_off) || ar_put(&j->ar, a->version ? a->version : "",
                                                    &b->ver_off))
      return SM_ENOMEM;
    b->cap_first = j->ncaps;
    if (j->ncaps + 2 * a->ncaps > j->ccaps) {
      size_t nc = j->ccaps ? j->ccaps * 2 : 1024;
      while (nc < j->ncaps + 2 * a->ncaps)
        nc *= 2;
      size_t *n = realloc(j->caps, nc * sizeof(*n));
      if (n == NULL)
        return SM_ENOMEM;
      j->caps = n;
      j->ccaps = nc;
    }
    for (size_t k = 0; k < a->ncaps; k++) {
      if (ar_put(&j->ar, a->caps[k].key, &j->caps[j->ncaps]) ||
          ar_put(&j->ar, a->caps[k].value, &j->caps[j->ncaps + 1]))
        return SM_ENOMEM;
      j->ncaps += 2;
    }
    b->ncaps = a->ncaps;
  }
  j->status_mask = f ? f->status_mask : 0;
  j->max_load = f ? f->max_load : -1;
  j->fver_off = NONE;
  if (f && f->min_version && *f->min_version && ar_put(&j->ar, f->min_version, &j->fver_off))
    return SM_ENOMEM;
  if (f && f->ncaps) {
    j->fcaps = calloc(2 * f->ncaps, sizeof(*j->fcaps));
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

/* agent_filter_match over the snapshot (same rules). */
static int snap_match(const sched_bcast_job *j, const bc_agent *b, const sm_semver *want) {
  const char *s = j->ar.buf;
  if (j->status_mask && !(j->status_mask & (1u << b->status)))
    return 0;
  if (j->max_load >= 0 && b->load > j->max_load)
    return 0;
  for (size_t k = 0; k < j->nfcaps; k++) {
    const char *key = s + j->fcaps[2 * k];
    const char *have = NULL;
    for (size_t c = 0; c < b->ncaps; c++) {
      if (strcmp(s + j->caps[2 * (b->cap_first / 2 + c)], key) == 0) {
        have = s + j->caps[2 * (b->cap_first / 2 + c) + 1];
        break;
      }
    }
    if (have == NULL)
      return 0;
    if (j->fcaps[2 * k + 1] != NONE && strcmp(s + j->fcaps[2 * k + 1], have) != 0)
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
  size_t *hit = malloc((j->n ? j->n : 1) * sizeof(*hit));
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
  sched_bcast_plan *p = calloc(1, sizeof(*p));
  if (p == NULL || !(p->agent_id = calloc(nh ? nh : 1, sizeof(*p->agent_id))) ||
      !(p->generation = calloc(nh ? nh : 1, sizeof(*p->generation))) ||
      !(p->child_id = calloc(nh ? nh : 1, sizeof(*p->child_id))) ||
      !(p->arena_ = malloc(bytes ? bytes : 1))) {
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

int sched_bcast_start(uv_loop_t *loop, agent_registry *reg, const agent_filter *f, size_t max,
                      sched_bcast_cb cb, void *ud, sched_bcast_job **out) {
  sched_bcast_job *j = calloc(1, sizeof(*j));
  if (j == NULL)
    return SM_ENOMEM;
  j->cb = cb;
  j->ud = ud;
  j->max = max;
  int err = snapshot(j, reg, f);
  if (err) {
    job_free(j);
    return err;
  }
  j->work.data = j;
  if (uv_queue_work(loop, &j->work, plan_work, plan_after) != 0) {
    job_free(j);
    return SM_EIO;
  }
  *out = j;
  return 0;
}

void sched_bcast_cancel(sched_bcast_job *job) {
  if (job)
    job->cancelled = 1;
}
