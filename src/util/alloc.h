/* alloc.h - the manager's allocation functions, with a failure injection hook for tests.
 *
 * Every allocation in src/ goes through these (memory is released with plain free()). They
 * behave as malloc(3) and friends; in addition a test can make allocations fail on purpose
 * (sm_alloc_fail_at), the way nghttp2's failmalloc tests do, to prove that every path handles
 * NULL: the call fails cleanly, a callback still runs exactly once, and nothing leaks.
 *
 * The hook is process-wide (the one exception to "no globals", with the logger) and safe to
 * read from the uv work queue's threads; tests set it from the loop thread only.
 */
#ifndef SM_UTIL_ALLOC_H
#define SM_UTIL_ALLOC_H

#include "util/err.h"

#include <stddef.h>

SM_MUST_CHECK void *sm_malloc(size_t n);
SM_MUST_CHECK void *sm_calloc(size_t n, size_t size);
SM_MUST_CHECK void *sm_realloc(void *p, size_t n);
SM_MUST_CHECK char *sm_strdup(const char *s);
SM_MUST_CHECK char *sm_strndup(const char *s, size_t n);

/* Test hook: the allocation `nth` from now (0: the very next one) fails, and with `sticky` every
 * one after it too. nth < 0 turns injection off (the default). */
void sm_alloc_fail_at(long nth, int sticky);

/* Allocations made through these functions since the process started (successful or not), and
 * those that failed because of the hook. */
unsigned long sm_alloc_calls(void);
unsigned long sm_alloc_failures(void);

#endif
