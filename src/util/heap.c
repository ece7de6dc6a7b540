/* heap.c - binary min-heap (see heap.h). */
#include "util/heap.h"

#include "util/alloc.h"

#include <assert.h>
#include <stdlib.h>

void sm_heap_init(sm_heap *h, sm_heap_less_fn less, sm_heap_moved_fn moved, void *ud, size_t max) {
  assert(less != NULL);
  *h = (sm_heap){.less = less, .moved = moved, .ud = ud, .max = max};
}

void sm_heap_finish(sm_heap *h) {
  free(h->v);
  h->v = NULL;
  h->len = h->cap = 0;
}

static void place(sm_heap *h, size_t i, void *e) {
  h->v[i] = e;
  if (h->moved)
    h->moved(e, i, h->ud);
}

static void sift_up(sm_heap *h, size_t i) {
  void *e = h->v[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!h->less(e, h->v[parent], h->ud))
      break;
    place(h, i, h->v[parent]);
    i = parent;
  }
  place(h, i, e);
}

static void sift_down(sm_heap *h, size_t i) {
  void *e = h->v[i];
  for (;;) {
    size_t l = 2 * i + 1;
    if (l >= h->len)
      break;
    size_t c = l;
    if (l + 1 < h->len && h->less(h->v[l + 1], h->v[l], h->ud))
      c = l + 1;
    if (!h->less(h->v[c], e, h->ud))
      break;
    place(h, i, h->v[c]);
    i = c;
  }
  place(h, i, e);
}

int sm_heap_reserve(sm_heap *h, size_t n) {
  if (n <= h->cap - h->len)
    return 0;
  size_t need = h->len + n;
  size_t cap = h->cap ? h->cap : 16;
  while (cap < need)
    cap *= 2;
  void **v = sm_realloc(h->v, cap * sizeof(*v));
  if (v == NULL)
    return SM_ENOMEM;
  h->v = v;
  h->cap = cap;
  return 0;
}

int sm_heap_push(sm_heap *h, void *e) {
  assert(e != NULL);
  if (h->max && h->len >= h->max)
    return SM_ELIMIT;
  int err = sm_heap_reserve(h, 1);
  if (err)
    return err;
  h->v[h->len++] = e;
  sift_up(h, h->len - 1);
  return 0;
}

void *sm_heap_remove(sm_heap *h, size_t i) {
  assert(i < h->len);
  void *e = h->v[i];
  void *last = h->v[--h->len];
  if (i < h->len) {
    h->v[i] = last;
    sm_heap_fix(h, i);
  }
  if (h->moved)
    h->moved(e, SM_HEAP_NONE, h->ud);
  return e;
}

void *sm_heap_pop(sm_heap *h) {
  return h->len ? sm_heap_remove(h, 0) : NULL;
}

void sm_heap_fix(sm_heap *h, size_t i) {
  assert(i < h->len);
  if (i > 0 && h->less(h->v[i], h->v[(i - 1) / 2], h->ud))
    sift_up(h, i);
  else
    sift_down(h, i);
}
