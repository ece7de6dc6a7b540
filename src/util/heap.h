/* heap.h - the one binary min-heap: an array of element pointers ordered by a comparison the
 * owner supplies, with an optional index callback so an element knows its position and can be
 * removed or re-keyed in O(log n) (an "indexed" heap, as timer wheels and schedulers need).
 *
 * The heap never owns its elements. Not thread-safe: one owner, one thread.
 */
#ifndef SM_UTIL_HEAP_H
#define SM_UTIL_HEAP_H

#include "util/err.h"

#include <stddef.h>

#define SM_HEAP_NONE ((size_t)-1) /* the position of an element that is in no heap */

/* Whether a must come out before b. */
typedef int (*sm_heap_less_fn)(const void *a, const void *b, void *ud);
/* Element e is now at position i (SM_HEAP_NONE: it left the heap). */
typedef void (*sm_heap_moved_fn)(void *e, size_t i, void *ud);

typedef struct sm_heap {
  void **v;   /* elements, v[0] the least */
  size_t len; /* elements in use */
  size_t cap; /* slots allocated */
  size_t max; /* elements at most (0: no limit but memory) */
  sm_heap_less_fn less;
  sm_heap_moved_fn moved; /* optional */
  void *ud;               /* passed to less and moved */
} sm_heap;

/* An empty heap of at most max elements (0: unbounded). moved may be NULL. */
void sm_heap_init(sm_heap *h, sm_heap_less_fn less, sm_heap_moved_fn moved, void *ud, size_t max);

/* Frees the array (not the elements); the heap is empty and can be used again. */
void sm_heap_finish(sm_heap *h);

/* Adds e. Returns 0, SM_ELIMIT (max reached) or SM_ENOMEM; on error the heap is unchanged. */
SM_MUST_CHECK int sm_heap_push(sm_heap *h, void *e);

/* Makes room for n more elements so that the next n pushes cannot fail with SM_ENOMEM.
 * Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK int sm_heap_reserve(sm_heap *h, size_t n);

/* The least element, or NULL when empty. */
static inline void *sm_heap_top(const sm_heap *h) {
  return h->len ? h->v[0] : NULL;
}

static inline size_t sm_heap_len(const sm_heap *h) {
  return h->len;
}

/* The element at position i (0 <= i < len): for walking all elements in no order. */
static inline void *sm_heap_at(const sm_heap *h, size_t i) {
  return h->v[i];
}

/* Removes and returns the least element, or NULL when empty. */
void *sm_heap_pop(sm_heap *h);

/* Removes the element at position i (as told by the moved callback) and returns it. */
void *sm_heap_remove(sm_heap *h, size_t i);

/* The key of the element at position i changed: restores the order. */
void sm_heap_fix(sm_heap *h, size_t i);

#endif
