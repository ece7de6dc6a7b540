/* queue.c - the waiting queue (an indexed binary heap). */
#include "sched/queue.h"

#include "util/err.h"

#include <stdlib.h>

void sched_queue_init(sched_queue *q, size_t limit) {
  q->heap = NULL;
  q->len = 0;
  q->cap = 0;
  q->limit = limit;
}

void sched_queue_finish(sched_queue *q) {
  free(q->heap);
  q->heap = NULL;
  q->len = q->cap = 0;
}

void sched_item_init(sched_item *it, int priority, int64_t deadline, uint64_t seq) {
  it->priority = priority;
  it->deadline = deadline;
  it->seq = seq;
  it->idx = SCHED_NOT_QUEUED;
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

static void place(sched_queue *q, size_t i, sched_item *it) {
  q->heap[i] = it;
  it->idx = i;
}

static void sift_up(sched_queue *q, size_t i) {
  sched_item *it = q->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!sched_item_before(it, q->heap[parent]))
      break;
    place(q, i, q->heap[parent]);
    i = parent;
  }
  place(q, i, it);
}

static void sift_down(sched_queue *q, size_t i) {
  sched_item *it = q->heap[i];
  for (;;) {
    size_t l = 2 * i + 1, best = i;
    const sched_item *bi = it;
    if (l < q->len && sched_item_before(q->heap[l], bi))
      best = l, bi = q->heap[l];
    if (l + 1 < q->len && sched_item_before(q->heap[l + 1], bi))
      best = l + 1;
    if (best == i)
      break;
    place(q, i, q->heap[best]);
    i = best;
  }
  place(q, i, it);
}

static int insert(sched_queue *q, sched_item *it) {
  if (it->idx != SCHED_NOT_QUEUED)
    return SM_EEXIST;
  if (q->len == q->cap) {
    size_t ncap = q->cap ? q->cap * 2 : 64;
    sched_item **n = realloc(q->heap, ncap * sizeof(*n));
    if (n == NULL)
      return SM_ENOMEM;
    q->heap = n;
    q->cap = ncap;
  }
  place(q, q->len++, it);
  sift_up(q, it->idx);
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

sched_item *sched_queue_peek(const sched_queue *q) {
  return q->len ? q->heap[0] : NULL;
}

int sched_queue_remove(sched_queue *q, sched_item *it) {
  size_t i = it->idx;
  if (i == SCHED_NOT_QUEUED || i >= q->len || q->heap[i] != it)
    return 0;
  it->idx = SCHED_NOT_QUEUED;
  sched_item *last = q->heap[--q->len];
  if (i < q->len) {
    place(q, i, last);
    if (i > 0 && sched_item_before(last, q->heap[(i - 1) / 2]))
      sift_up(q, i);
    else
      sift_down(q, i);
  }
  return 1;
}

sched_item *sched_queue_pop(sched_queue *q) {
  sched_item *it = sched_queue_peek(q);
  if (it)
    sched_queue_remove(q, it);
  return it;
}

size_t sched_queue_len(const sched_queue *q) {
  return q->len;
}
