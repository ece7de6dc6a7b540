/* queue.h - the waiting queue: a bounded priority queue of commands waiting for an agent.
 *
 * Order: priority (0..9, higher first), then deadline (earliest first, none last), then arrival
 * (seq, lowest first). Aging keeps low priority from starving: a second heap orders the same
 * items by the time they first entered the queue, and an item that has waited aging_ms or more
 * goes out before the priority order (oldest first). With a steady stream of high-priority work a
 * priority-0 command therefore waits at most about aging_ms plus the time to place the items
 * that aged before it. Items are intrusive (a sched_item embedded in the caller's record) and
 * both orders are indexed heaps (util/heap.h), so push, pop and removal of any item are
 * O(log n) without allocation per item. The queue never owns its items. Loop thread only.
 */
#ifndef SM_SCHED_QUEUE_H
#define SM_SCHED_QUEUE_H

#include "util/err.h"
#include "util/heap.h"

#include <stddef.h>
#include <stdint.h>

#define SCHED_NOT_QUEUED ((size_t)-1) /* sched_item.idx of an item outside any queue */
#define SCHED_AGING_DEFAULT_MS 60000  /* wait after which an item overtakes higher priorities */

/* The ordering key of one waiting command; embed it in the record that waits. */
typedef struct sched_item {
  int priority;     /* 0..9, higher first */
  int64_t deadline; /* unix ms; 0: none (sorts after every deadline) */
  uint64_t seq;     /* arrival order, lower first */
  int64_t since_ms; /* unix ms it first waited (0: set by the first push); kept across requeues */
  size_t idx;       /* position in the priority heap; SCHED_NOT_QUEUED when outside */
  size_t aidx;      /* position in the age heap */
} sched_item;

typedef struct sched_queue {
  sm_heap heap;     /* priority order; its top is the head */
  sm_heap aheap;    /* age order (since_ms, seq); its top is the oldest */
  size_t limit;     /* admission bound (COMMAND_QUEUE_SIZE) for sched_queue_push */
  int64_t aging_ms; /* an item waiting this long goes before the priority order; <= 0: never */
  uint64_t aged;    /* items that left through aging (counter) */
} sched_queue;

/* Initializes an empty queue admitting at most limit items through sched_queue_push, with the
 * default aging (SCHED_AGING_DEFAULT_MS). */
void sched_queue_init(sched_queue *q, size_t limit);

/* Sets the aging threshold in ms (<= 0 turns aging off). */
void sched_queue_set_aging(sched_queue *q, int64_t aging_ms);

/* Frees the heap arrays (not the items; those still queued keep stale positions and must be
 * re-initialised before another push). */
void sched_queue_finish(sched_queue *q);

/* Marks an item as outside any queue (call once before its first push); since_ms is 0 (set to
 * the time of the first push). Set it->since_ms afterwards to age from an earlier time. */
void sched_item_init(sched_item *it, int priority, int64_t deadline, uint64_t seq);

/* Adds a new item. Returns 0, SM_ELIMIT when len >= limit, SM_EEXIST when it is already queued,
 * or SM_ENOMEM; on error the queue and the item are unchanged. */
SM_MUST_CHECK int sched_queue_push(sched_queue *q, sched_item *it);

/* Adds an item that was already admitted once (a retry, a recovered command): the limit does
 * not apply, since refusing it would lose an accepted command. Returns 0, SM_EEXIST or
 * SM_ENOMEM (queue and item unchanged). */
SM_MUST_CHECK int sched_queue_requeue(sched_queue *q, sched_item *it);

/* The item the next pop at time now_ms (unix ms) returns, without removing it, or NULL. */
sched_item *sched_queue_peek_at(const sched_queue *q, int64_t now_ms);

/* Removes and returns the next item at time now_ms: the oldest when it has waited aging_ms or
 * more, else the priority head. NULL when empty. */
sched_item *sched_queue_pop_at(sched_queue *q, int64_t now_ms);

/* sched_queue_peek_at / sched_queue_pop_at at the current time. */
sched_item *sched_queue_peek(const sched_queue *q);
sched_item *sched_queue_pop(sched_queue *q);

/* Removes it if queued (anywhere in the heap). Returns 1 if it was queued, else 0. */
int sched_queue_remove(sched_queue *q, sched_item *it);

/* Items queued. */
size_t sched_queue_len(const sched_queue *q);

/* Whether a is ahead of b in the queue's priority order. */
int sched_item_before(const sched_item *a, const sched_item *b);

#endif
