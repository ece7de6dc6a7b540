/* Unit tests of util/heap.c: order, positions kept by the moved callback, removal and re-keying
 * in the middle, the size limit, and allocation failure leaving the heap unchanged. */
#include "util/alloc.h"
#include "util/err.h"
#include "util/heap.h"

#include "../t.h"

typedef struct item {
  int key;
  size_t pos;
} item;

static int less(const void *a, const void *b, void *ud) {
  (void)ud;
  return ((const item *)a)->key < ((const item *)b)->key;
}

static void moved(void *e, size_t i, void *ud) {
  (void)ud;
  ((item *)e)->pos = i;
}

static void check_positions(const sm_heap *h) {
  for (size_t i = 0; i < sm_heap_len(h); i++) {
    T_EQ_INT(((item *)sm_heap_at(h, i))->pos, i);
    if (i > 0)
      T_ASSERT(!less(sm_heap_at(h, i), sm_heap_at(h, (i - 1) / 2), NULL));
  }
}

static void test_order(void) {
  enum { N = 1000 };
  static item it[N];
  sm_heap h;
  sm_heap_init(&h, less, moved, NULL, 0);
  T_ASSERT(sm_heap_top(&h) == NULL);
  T_ASSERT(sm_heap_pop(&h) == NULL);
  unsigned x = 12345;
  for (int i = 0; i < N; i++) {
    x = x * 1103515245u + 12345u;
    it[i].key = (int)(x >> 8) % 500;
    T_EQ_INT(sm_heap_push(&h, &it[i]), 0);
  }
  check_positions(&h);
  /* re-key and remove in the middle */
  for (int i = 0; i < N; i += 7) {
    it[i].key = (i * 31) % 600 - 50;
    sm_heap_fix(&h, it[i].pos);
  }
  check_positions(&h);
  for (int i = 3; i < N; i += 11) {
    item *e = sm_heap_remove(&h, it[i].pos);
    T_ASSERT(e == &it[i]);
    T_EQ_INT(e->pos, SM_HEAP_NONE);
  }
  check_positions(&h);
  int last = -1000;
  size_t n = 0;
  item *e;
  while ((e = sm_heap_pop(&h)) != NULL) {
    T_ASSERT(e->key >= last);
    last = e->key;
    n++;
  }
  T_EQ_INT(n, N - (N - 3 + 10) / 11);
  sm_heap_finish(&h);
}

static void test_limits(void) {
  item a = {.key = 1}, b = {.key = 2}, c = {.key = 0};
  sm_heap h;
  sm_heap_init(&h, less, NULL, NULL, 2);
  T_EQ_INT(sm_heap_push(&h, &a), 0);
  T_EQ_INT(sm_heap_push(&h, &b), 0);
  T_EQ_INT(sm_heap_push(&h, &c), SM_ELIMIT);
  T_EQ_INT(sm_heap_len(&h), 2);
  sm_heap_finish(&h);

  /* allocation failure: the push fails and the heap is as it was */
  sm_heap_init(&h, less, moved, NULL, 0);
  sm_alloc_fail_at(0, 0);
  T_EQ_INT(sm_heap_push(&h, &a), SM_ENOMEM);
  T_EQ_INT(sm_heap_len(&h), 0);
  T_EQ_INT(sm_heap_push(&h, &a), 0);
  T_ASSERT(sm_heap_top(&h) == &a);
  sm_heap_finish(&h);
}

int main(void) {
  T_RUN(test_order);
  T_RUN(test_limits);
  return t_done();
}
