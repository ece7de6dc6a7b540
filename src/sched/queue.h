/* queue.h - the waiting queue: a bounded binary heap of commands waiting for an agent.
 *
 * Order: priority (0..9, higher first), then deadline (earliest first, none last), then arrival
 * (seq, lowest first). Items are intrusive (a sched_item embedded in the caller's record), so
 * push, pop and removal of any item are O(log n) without allocation per item.
 */
#ifndef SM_SCHED_QUEUE_H
#define SM_SCHED_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#define SCHED_NOT_QUEUED ((size_t)-1) /* sched_item.idx of an item outside any queue */

/* The ordering key of one waiting command; embed it in the record that waits. */
typedef struct sched_item {
  int priority;     /* 0..9, higher first */
  int64_t deadline; /* unix ms; 0: none (sorts after every deadline) */
  uint64_t seq;     /* arrival order, lower first */
  size_t idx;       /* position in the heap; SCHED_NOT_QUEUED when outside */
} sched_item;

typedef struct sched_queue {
  sched_item **heap; /* heap[0] is the head */
  size_t len;        /* items queued */
  size_t cap;        /* allocated slots */
  size_t limit;      /* admission bound (COMMAND_QUEUE_SIZE) for sched_queue_push */
} sched_queue;

/* Initializes an empty queue admitting at most limit items through sched_queue_push. */
void sched_queue_init(sched_queue *q, size_t limit);

/* Frees the heap array (not the items). */
void sched_queue_finish(sched_queue *q);

/* Marks an item as outside any queue (call once before its first push). */
void sched_item_init(sched_item *it, int priority, int64_t deadline, uint64_t seq);

/* Adds a new item. Returns 0, SM_ELIMIT when len >= limit, SM_EEXIST when it is already queued,
 * or SM_ENOMEM. */
int sched_queue_push(sched_queue *q, sched_item *it);

/* Adds an item that was already admitted once (a retry, a recovered command): the limit does
 * not apply, since refusing it would lose an accepted command. Returns 0, SM_EEXIST or
 * SM_ENOMEM. */
int sched_queue_requeue(sched_queue *q, sched_item *it);

/* The head without removing it, or NULL. */
sched_item *sched_queue_peek(const sched_queue *q);

/* Removes and returns the head, or NULL. */
sched_item *sched_queue_pop(sched_queue *q);

/* Removes it if queued (anywhere in the heap). Returns 1 if it was queued, else 0. */
int sched_queue_remove(sched_queue *q, sched_item *it);

/* Items queued. */
size_t sched_queue_len(const sched_queue *q);

/* Whether a is ahead of b in the queue's order. */
int sched_item_before(const sched_item *a, const sched_item *b);

#endif
