/* queue.c - the waiting queue: two indexed heaps (util/heap.h) over the same items, one in
 * priority order, one in age order (see queue.h). */
#include "sched/queue.h"

#include "util/timeutil.h"

#include <assert.h>
#include <stdlib.h>

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

static int prio_less(const void *a, const void *b, void *ud) {
  (void)ud;
  return sched_item_before(a, b);
}

static int age_less(const void *x, const void *y, void *ud) {
  (void)ud;
  const sched_item *a = x, *b = y;
  if (a->since_ms != b->since_ms)
    return a->since_ms < b->since_ms;
  return a->seq < b->seq;
}

static void prio_moved(void *e, size_t i, void *ud) {
  (void)ud;
  ((sched_item *)e)->idx = i == SM_HEAP_NONE ? SCHED_NOT_QUEUED : i;
}

static void age_moved(void *e, size_t i, void *ud) {
  (void)ud;
  ((sched_item *)e)->aidx = i == SM_HEAP_NONE ? SCHED_NOT_QUEUED : i;
}

void sched_queue_init(sched_queue *q, size_t limit) {
  sm_heap_init(&q->heap, prio_less, prio_moved, NULL, 0);
  sm_heap_init(&q->aheap, age_less, age_moved, NULL, 0);
  q->limit = limit;
  q->aging_ms = SCHED_AGING_DEFAULT_MS;
  q->aged = 0;
}

void sched_queue_set_aging(sched_queue *q, int64_t aging_ms) {
  q->aging_ms = aging_ms;
}

void sched_queue_finish(sched_queue *q) {
  sm_heap_finish(&q->heap);
  sm_heap_finish(&q->aheap);
}

void sched_item_init(sched_item *it, int priority, int64_t deadline, uint64_t seq) {
  it->priority = priority;
  it->deadline = deadline;
  it->seq = seq;
  it->since_ms = 0;
  it->idx = SCHED_NOT_QUEUED;
  it->aidx = SCHED_NOT_QUEUED;
}

SM_MUST_CHECK static int insert(sched_queue *q, sched_item *it) {
  if (it->idx != SCHED_NOT_QUEUED)
    return SM_EEXIST;
  assert(it->aidx == SCHED_NOT_QUEUED);
  /* room in both heaps first: the two pushes below then cannot fail, so an item is in both or
   * in neither */
  if (sm_heap_reserve(&q->heap, 1) != 0 || sm_heap_reserve(&q->aheap, 1) != 0)
    return SM_ENOMEM;
  if (it->since_ms == 0)
    it->since_ms = sm_now_ms();
  int err = sm_heap_push(&q->heap, it);
  assert(err == 0);
  err = sm_heap_push(&q->aheap, it);
  assert(err == 0);
  (void)err;
  assert(sm_heap_len(&q->heap) == sm_heap_len(&q->aheap));
  return 0;
}

int sched_queue_push(sched_queue *q, sched_item *it) {
  if (sched_queue_len(q) >= q->limit)
    return SM_ELIMIT;
  return insert(q, it);
}

int sched_queue_requeue(sched_queue *q, sched_item *it) {
  return insert(q, it);
}

sched_item *sched_queue_peek_at(const sched_queue *q, int64_t now_ms) {
  if (sched_queue_len(q) == 0)
    return NULL;
  sched_item *old = sm_heap_top(&q->aheap);
  if (q->aging_ms > 0 && now_ms - old->since_ms >= q->aging_ms)
    return old;
  return sm_heap_top(&q->heap);
}

sched_item *sched_queue_peek(const sched_queue *q) {
  return sched_queue_peek_at(q, sm_now_ms());
}

int sched_queue_remove(sched_queue *q, sched_item *it) {
  size_t i = it->idx, ai = it->aidx;
  if (i == SCHED_NOT_QUEUED || i >= sm_heap_len(&q->heap) || sm_heap_at(&q->heap, i) != it)
    return 0;
  assert(ai < sm_heap_len(&q->aheap) && sm_heap_at(&q->aheap, ai) == it);
  sm_heap_remove(&q->heap, i);
  sm_heap_remove(&q->aheap, ai);
  assert(it->idx == SCHED_NOT_QUEUED && it->aidx == SCHED_NOT_QUEUED);
  return 1;
}

sched_item *sched_queue_pop_at(sched_queue *q, int64_t now_ms) {
  sched_item *it = sched_queue_peek_at(q, now_ms);
  if (it) {
    if (it == sm_heap_top(&q->aheap) && it != sm_heap_top(&q->heap))
      q->aged++;
    int removed = sched_queue_remove(q, it);
    assert(removed);
    (void)removed;
  }
  return it;
}

sched_item *sched_queue_pop(sched_queue *q) {
  return sched_queue_pop_at(q, sm_now_ms());
}

size_t sched_queue_len(const sched_queue *q) {
  return sm_heap_len(&q->heap);
}
