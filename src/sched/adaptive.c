/* adaptive.c - weights learned from each agent's recent execution times and failure rate
 * (exponentially decaying averages fed by results), applied by stride scheduling like
 * weighted.c. The learned weight is declared weight x (fleet median time / agent's time) x
 * (1 - failure rate), bounded; it is recomputed for all agents on the uv work queue (the median
 * needs every agent), at most every recompute_s while new results arrived, and applied on the
 * loop to the agents whose generation did not change meanwhile. */
#include "sched/adaptive.h"

#include "sched/balancer.h"
#include "sched/policy.h"
#include "util/alloc.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

typedef struct ad_job ad_job;

typedef struct adaptive {
  sched_stride st;
  sched_lb *lb;
  double alpha;
  uv_timer_t *timer; /* own allocation: freed in its close callback, after the state is gone */
  ad_job *job;       /* recompute on the work queue */
  int dirty;         /* results arrived since the last recompute started */
} adaptive;

typedef struct adaptive_agent {
  double pass;
  double ewma_s;    /* decaying average execution time, seconds */
  double ewma_fail; /* decaying failure rate, 0..1 */
  uint64_t samples; /* results seen */
  double aweight;   /* learned weight in use */
} adaptive_agent;

extern const sched_policy sched_policy_adaptive;

static void key(const void *self, const sched_agent_view *v, const void *mine, sched_key *k) {
  (void)self;
  (void)v;
  *k = (sched_key){.k0 = ((const adaptive_agent *)mine)->pass};
}

static void joined(void *self, const sched_agent_view *v, void *mine) {
  adaptive_agent *m = mine;
  sched_stride_join(&((adaptive *)self)->st, &m->pass);
  m->aweight = v->weight;
}

static void available(void *self, const sched_agent_view *v, void *mine) {
  (void)v;
  sched_stride_join(&((adaptive *)self)->st, &((adaptive_agent *)mine)->pass);
}

static int charged(void *self, const sched_agent_view *v, void *mine) {
  (void)v;
  adaptive_agent *m = mine;
  sched_stride_charge(&((adaptive *)self)->st, &m->pass, m->aweight);
  return 1;
}

static void result(void *self, const sched_agent_view *v, void *mine, double exec_s, int ok) {
  (void)v;
  adaptive *ad = self;
  adaptive_agent *m = mine;
  if (!(exec_s >= 0))
    exec_s = 0;
  double al = ad->alpha;
  if (m->samples == 0) {
    m->ewma_s = exec_s;
    m->ewma_fail = ok ? 0.0 : 1.0;
  } else {
    m->ewma_s = al * exec_s + (1 - al) * m->ewma_s;
    m->ewma_fail = al * (ok ? 0.0 : 1.0) + (1 - al) * m->ewma_fail;
  }
  m->samples++;
  ad->dirty = 1; /* the periodic timer starts a recompute off the loop */
}

/* ---- recompute ---------------------------------------------------------------------------- */

/* The snapshot the work queue computes over: plain arrays, no pointers into live objects. */
typedef struct ad_in {
  uint64_t gen;
  double weight, ewma_s, ewma_fail;
  uint64_t samples;
  size_t id_off; /* into ad_job.ids */
} ad_in;

struct ad_job {
  uv_work_t work;
  adaptive *ad; /* NULL once the strategy is gone: the result is dropped */
  size_t n;
  ad_in *in;
  char *ids;
  double *out;
};

static int dcmp(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return a < b ? -1 : a > b;
}

/* Learned weight = declared weight x speed relative to the fleet's median execution time x
 * reliability. Bounded so a slow or failing agent keeps a trickle (it must be able to show it
 * recovered) and a fast one cannot take everything. */
static void ad_compute(ad_job *j) {
  double *t = sm_malloc((j->n ? j->n : 1) * sizeof(*t));
  size_t nt = 0;
  for (size_t i = 0; t && i < j->n; i++)
    if (j->in[i].samples)
      t[nt++] = j->in[i].ewma_s;
  double median = 1.0;
  if (nt) {
    qsort(t, nt, sizeof(*t), dcmp);
    median = t[nt / 2];
  }
  free(t);
  if (median < 1e-3)
    median = 1e-3;
  for (size_t i = 0; i < j->n; i++) {
    const ad_in *x = &j->in[i];
    double w = x->weight;
    if (x->samples) {
      double speed = median / (x->ewma_s > 1e-3 ? x->ewma_s : 1e-3);
      speed = speed < 0.05 ? 0.05 : speed > 20 ? 20 : speed;
      double rel = 1.0 - x->ewma_fail;
      rel = rel < 0.02 ? 0.02 : rel;
      w = x->weight * speed * rel;
    }
    j->out[i] = w;
  }
}

static void ad_job_free(ad_job *j) {
  free(j->in);
  free(j->ids);
  free(j->out);
  free(j);
}

static ad_job *ad_snapshot(adaptive *ad) {
  sched_lb *lb = ad->lb;
  ad_job *j = sm_calloc(1, sizeof(*j));
  if (j == NULL)
    return NULL;
  size_t n = sched_lb_count(lb), bytes = 0;
  for (size_t i = 0; i < n; i++)
    bytes += sched_lb_at(lb, i)->a->id_len + 1;
  j->n = n;
  j->in = sm_calloc(n ? n : 1, sizeof(*j->in));
  j->out = sm_calloc(n ? n : 1, sizeof(*j->out));
  j->ids = sm_malloc(bytes ? bytes : 1);
  if (!j->in || !j->out || !j->ids) {
    ad_job_free(j);
    return NULL;
  }
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const sched_agent_view *v = sched_lb_at(lb, i);
    const adaptive_agent *m = sched_lb_agent_state(lb, v, &sched_policy_adaptive);
    size_t l = v->a->id_len;
    memcpy(j->ids + off, v->a->id, l);
    j->ids[off + l] = '\0';
    j->in[i] = (ad_in){.gen = v->gen,
                       .weight = v->weight,
                       .ewma_s = m->ewma_s,
                       .ewma_fail = m->ewma_fail,
                       .samples = m->samples,
                       .id_off = off};
    off += l + 1;
  }
  j->ad = ad;
  return j;
}

/* Applies a computed plan on the loop: entries whose agent left or re-registered since the
 * snapshot (generation changed) are skipped, not trusted. */
static void ad_apply(adaptive *ad, const ad_job *j) {
  for (size_t i = 0; i < j->n; i++) {
    const char *id = j->ids + j->in[i].id_off;
    const sched_agent_view *v = sched_lb_find(ad->lb, id, strlen(id));
    if (v && v->gen == j->in[i].gen) {
      adaptive_agent *m = sched_lb_agent_state(ad->lb, v, &sched_policy_adaptive);
      m->aweight = j->out[i];
    }
  }
}

static void ad_work(uv_work_t *w) {
  ad_compute(w->data);
}

static void ad_after(uv_work_t *w, int status) {
  ad_job *j = w->data;
  adaptive *ad = j->ad;
  if (ad != NULL) {
    assert(ad->job == j);
    ad->job = NULL;
    if (status == 0)
      ad_apply(ad, j);
  }
  ad_job_free(j);
}

static adaptive *state_of(const sched_lb *lb) {
  adaptive *ad = sched_lb_policy_state(lb, &sched_policy_adaptive);
  assert(ad != NULL && "the balancer drives the adaptive strategy");
  return ad;
}

void sched_adaptive_recompute_now(sched_lb *lb) {
  adaptive *ad = state_of(lb);
  ad_job *j = ad_snapshot(ad);
  if (j == NULL)
    return;
  ad_compute(j);
  ad_apply(ad, j);
  ad_job_free(j);
}

int sched_adaptive_recompute(sched_lb *lb) {
  adaptive *ad = state_of(lb);
  if (ad->job)
    return SM_EAGAIN;
  ad_job *j = ad_snapshot(ad);
  if (j == NULL)
    return SM_ENOMEM;
  j->work.data = j;
  if (uv_queue_work(ad->timer->loop, &j->work, ad_work, ad_after) != 0) {
    ad_job_free(j);
    return SM_EIO;
  }
  ad->job = j;
  return 0;
}

double sched_adaptive_weight(const sched_lb *lb, const agent *a) {
  const sched_agent_view *v = sched_lb_find(lb, a->id, a->id_len);
  if (v == NULL)
    return 0;
  const adaptive_agent *m = sched_lb_agent_state(lb, v, &sched_policy_adaptive);
  return m ? m->aweight : 0;
}

static void recompute_tick(uv_timer_t *t) {
  adaptive *ad = t->data;
  if (ad->dirty && sched_adaptive_recompute(ad->lb) == 0)
    ad->dirty = 0;
}

/* ---- life --------------------------------------------------------------------------------- */

static int start(void *self, const sched_policy_env *env) {
  adaptive *ad = self;
  ad->lb = env->lb;
  ad->alpha = env->ewma_alpha;
  ad->timer = sm_malloc(sizeof(*ad->timer));
  if (ad->timer == NULL)
    return SM_ENOMEM;
  uv_timer_init(env->loop, ad->timer);
  ad->timer->data = ad;
  uint64_t ms = (uint64_t)(env->recompute_s * 1000.0);
  uv_timer_start(ad->timer, recompute_tick, ms, ms);
  uv_unref((uv_handle_t *)ad->timer); /* the balancer never keeps a loop alive by itself */
  return 0;
}

static void timer_closed(uv_handle_t *h) {
  free(h);
}

static void finish(void *self) {
  adaptive *ad = self;
  uv_close((uv_handle_t *)ad->timer, timer_closed);
  if (ad->job)
    ad->job->ad = NULL; /* freed by its after-work callback */
}

static int pick(void *self, sched_lb *lb, const sched_request *req, agent **out) {
  (void)self;
  return sched_lb_pick(lb, req, NULL, &sched_policy_adaptive, out);
}

const sched_policy sched_policy_adaptive = {.name = "adaptive",
                                            .state_size = sizeof(adaptive),
                                            .agent_size = sizeof(adaptive_agent),
                                            .key = key,
                                            .start = start,
                                            .finish = finish,
                                            .joined = joined,
                                            .available = available,
                                            .charged = charged,
                                            .result = result,
                                            .pick = pick};
