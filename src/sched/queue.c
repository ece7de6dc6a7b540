/* queue.c - the waiting queue: two indexed binary heaps over the same items (priority, age). */
#include "sched/queue.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/timeutil.h"

#include <stdlib.h>

void sched_queue_init(sched_queue *q, size_t limit) {
  q->heap = NULL;
  q->aheap = NULL;
  q->len = 0;
  q->cap = 0;
  q->limit = limit;
  q->aging_ms = SCHED_AGING_DEFAULT_MS;
  q->aged = 0;
}

void sched_queue_set_aging(sched_queue *q, int64_t aging_ms) {
  q->aging_ms = aging_ms;
}

void sched_queue_finish(sched_queue *q) {
  free(q->heap);
  free(q->aheap);
  q->heap = q->aheap = NULL;
  q->len = q->cap = 0;
}

void sched_item_init(sched_item *it, int priority, int64_t deadline, uint64_t seq) {
  it->priority = priority;
  it->deadline = deadline;
  it->seq = seq;
  it->since_ms = 0;
  it->idx = SCHED_NOT_QUEUED;
  it->aidx = SCHED_NOT_QUEUED;
}

int sched_item_before(const sched_item *a, const sched_item *b) {
  if (a->priority != b->priority)
    return a->priority > b->priority;
  /* no deadline sorts after any deadline */
  int64_t da = a->deadline > 0 ? a->deadline : INT64_MAX;
  int64_t db = b->deadline > 0 ? b->deadline : INT64_MAX;
  if (da != db)
    return da < db;
  return a->seq < b->seq;
}

static int older(const sched_item *a, const sched_item *b) {
  if (a->since_ms != b->since_ms)
    return a->since_ms < b->since_ms;
  return a->seq < b->seq;
}

/* One heap routine for both orders: `age` selects the array, the index field and the order. */
static void place(sched_queue *q, int age, size_t i, sched_item *it) {
  if (age) {
    q->aheap[i] = it;
    it->aidx = i;
  } else {
    q->heap[i] = it;
    it->idx = i;
  }
}

static int before(int age, const sched_item *a, const sched_item *b) {
  return age ? older(a, b) : sched_item_before(a, b);
}

static void sift_up(sched_queue *q, int age, size_t i) {
  sched_item **h = age ? q->aheap : q->heap;
  sched_item *it = h[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(age, it, h[parent]))
      break;
    place(q, age, i, h[parent]);
    i = parent;
  }
  place(q, age, i, it);
}

static void sift_down(sched_queue *q, int age, size_t i) {
  sched_item **h = age ? q->aheap : q->heap;
  sched_item *it = h[i];
  for (;;) {
    size_t l = 2 * i + 1, best = i;
    const sched_item *bi = it;
    if (l < q->len && before(age, h[l], bi))
      best = l, bi = h[l];
    if (l + 1 < q->len && before(age, h[l + 1], bi))
      best = l + 1;
    if (best == i)
      break;
    place(q, age, i, h[best]);
    i = best;
  }
  place(q, age, i, it);
}

static int insert(sched_queue *q, sched_item *it) {
  if (it->idx != SCHED_NOT_QUEUED)
    return SM_EEXIST;
  if (q->len == q->cap) {
    size_t ncap = q->cap ? q->cap * 2 : 64;
    sched_item **n = sm_realloc(q->heap, ncap * sizeof(*n));
    if (n == NULL)
      return SM_ENOMEM;
    q->heap = n;
    n = sm_realloc(q->aheap, ncap * sizeof(*n));
    if (n == NULL)
      return SM_ENOMEM; /* heap keeps its larger size; cap grows on the next try */
    q->aheap = n;
    q->cap = ncap;
  }
  if (it->since_ms == 0)
    it->since_ms = sm_now_ms();
  size_t i = q->len++;
  place(q, 0, i, it);
  place(q, 1, i, it);
  sift_up(q, 0, it->idx);
  sift_up(q, 1, it->aidx);
  return 0;
}

int sched_queue_push(sched_queue *q, sched_item *it) {
  if (q->len >= q->limit)
    return SM_ELIMIT;
  return insert(q, it);
}

int sched_queue_requeue(sched_queue *q, sched_item *it) {
  return insert(q, it);
}

sched_item *sched_queue_peek_at(const sched_queue *q, int64_t now_ms) {
  if (q->len == 0)
    return NULL;
  sched_item *old = q->aheap[0];
  if (q->aging_ms > 0 && now_ms - old->since_ms >= q->aging_ms)
    return old;
  return q->heap[0];
}

sched_item *sched_queue_peek(const sched_queue *q) {
  return sched_queue_peek_at(q, sm_now_ms());
}

/* Removes position i of one heap, moving the last item into it. */
static void heap_del(sched_queue *q, int age, size_t i, size_t newlen) {
  sched_item **h = age ? q->aheap : q->heap;
  sched_item *last = h[newlen];
  if (i < newlen) {
    place(q, age, i, last);
    if (i > 0 && before(age, last, h[(i - 1) / 2]))
      sift_up(q, age, i);
    else
      sift_down(q, age, i);
  }
}

int sched_queue_remove(sched_queue *q, sched_item *it) {
  size_t i = it->idx, ai = it->aidx;
  if (i == SCHED_NOT_QUEUED || i >= q->len || q->heap[i] != it)
    return 0;
  it->idx = SCHED_NOT_QUEUED;
  it->aidx = SCHED_NOT_QUEUED;
  size_t n = --q->len;
  /* sift routines bound themselves by q->len, already the new length */
  heap_del(q, 0, i, n);
  heap_del(q, 1, ai, n);
  return 1;
}

sched_item *sched_queue_pop_at(sched_queue *q, int64_t now_ms) {
  sched_item *it = sched_queue_peek_at(q, now_ms);
  if (it) {
    if (q->len && it == q->aheap[0] && it != q->heap[0])
      q->aged++;
    sched_queue_remove(q, it);
  }
  return it;
}

sched_item *sched_queue_pop(sched_queue *q) {
  return sched_queue_pop_at(q, sm_now_ms());
}

size_t sched_queue_len(const sched_queue *q) {
  return q->len;
}
