/* alloc.c - allocation with failure injection (see alloc.h). */
#include "util/alloc.h"

#include <stdlib.h>
#include <string.h>

/* Relaxed atomics: the counters are statistics and the trigger is set by a test between
 * operations, so no ordering with other memory is needed, only freedom from data races with
 * the work queue's threads. */
static long fail_left = -1; /* allocations to let through before failing; -1: off */
static int fail_sticky;
static unsigned long calls;
static unsigned long failures;

static int should_fail(void) {
  __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
  long left = __atomic_load_n(&fail_left, __ATOMIC_RELAXED);
  if (left < 0)
    return 0;
  if (left > 0) {
    __atomic_sub_fetch(&fail_left, 1, __ATOMIC_RELAXED);
    return 0;
  }
  if (!__atomic_load_n(&fail_sticky, __ATOMIC_RELAXED))
    __atomic_store_n(&fail_left, -1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
  return 1;
}

void *sm_malloc(size_t n) {
  return should_fail() ? NULL : malloc(n);
}

void *sm_calloc(size_t n, size_t size) {
  return should_fail() ? NULL : calloc(n, size);
}

void *sm_realloc(void *p, size_t n) {
  return should_fail() ? NULL : realloc(p, n);
}

char *sm_strdup(const char *s) {
  return should_fail() ? NULL : strdup(s);
}

char *sm_strndup(const char *s, size_t n) {
  return should_fail() ? NULL : strndup(s, n);
}

void sm_alloc_fail_at(long nth, int sticky) {
  __atomic_store_n(&fail_sticky, sticky ? 1 : 0, __ATOMIC_RELAXED);
  __atomic_store_n(&fail_left, nth < 0 ? -1 : nth, __ATOMIC_RELAXED);
}

unsigned long sm_alloc_calls(void) {
  return __atomic_load_n(&calls, __ATOMIC_RELAXED);
}

unsigned long sm_alloc_failures(void) {
  return __atomic_load_n(&failures, __ATOMIC_RELAXED);
}
