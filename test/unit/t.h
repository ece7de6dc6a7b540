/* t.h - the unit tests' assertions. Each test program runs its cases in order and exits non-zero
 * at the first failure, printing file, line and the failed expression.
 *
 *   static void test_split(void) { T_EQ_INT(f(1), 2); }
 *   int main(void) { T_RUN(test_split); return t_done(); }
 */
#ifndef SM_TEST_T_H
#define SM_TEST_T_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_cases_ = 0;

#define T_FAIL_(fmt, ...)                                                                          \
  do {                                                                                             \
    fprintf(stderr, "%s:%d: " fmt "\n", __FILE__, __LINE__, __VA_ARGS__);                          \
    abort();                                                                                       \
  } while (0)

#define T_ASSERT(cond)                                                                             \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      T_FAIL_("assertion failed: %s", #cond);                                                      \
  } while (0)

#define T_EQ_INT(a, b)                                                                             \
  do {                                                                                             \
    long long t_a_ = (long long)(a), t_b_ = (long long)(b);                                        \
    if (t_a_ != t_b_)                                                                              \
      T_FAIL_("%s == %s: %lld != %lld", #a, #b, t_a_, t_b_);                                       \
  } while (0)

#define T_EQ_STR(a, b)                                                                             \
  do {                                                                                             \
    const char *t_a_ = (a), *t_b_ = (b);                                                           \
    if (t_a_ == NULL || t_b_ == NULL || strcmp(t_a_, t_b_) != 0)                                   \
      T_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, t_a_ ? t_a_ : "(null)",                        \
              t_b_ ? t_b_ : "(null)");                                                             \
  } while (0)

#define T_RUN(fn)                                                                                  \
  do {                                                                                             \
    fprintf(stderr, "-- %s\n", #fn);                                                               \
    fn();                                                                                          \
    t_cases_++;                                                                                    \
  } while (0)

static inline int t_done(void) {
  fprintf(stderr, "%d cases passed\n", t_cases_);
  return 0;
}

#endif
