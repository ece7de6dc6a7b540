/* Tests of util/map: insert, lookup, delete with backward shift, limits. */
#include "t.h"
#include "util/err.h"
#include "util/map.h"

#include <stdio.h>

static void test_basic(void) {
  sm_map m;
  sm_map_init(&m, 0);
  T_ASSERT(sm_map_get(&m, "a", 1) == NULL);
  T_ASSERT(sm_map_del(&m, "a", 1) == NULL);
  int v1 = 1, v2 = 2;
  T_EQ_INT(sm_map_put(&m, "a", 1, &v1), 0);
  T_EQ_INT(sm_map_put(&m, "a", 1, &v2), SM_EEXIST);
  T_ASSERT(sm_map_get(&m, "a", 1) == &v1);
  T_EQ_INT(sm_map_replace(&m, "a", 1, &v2), 0);
  T_ASSERT(sm_map_get(&m, "a", 1) == &v2);
  T_EQ_INT(sm_map_replace(&m, "b", 1, &v2), SM_ENOENT);
  T_ASSERT(sm_map_del(&m, "a", 1) == &v2);
  T_EQ_INT(m.len, 0);
  sm_map_finish(&m);
}

/* Many keys with deletions in between: every remaining key stays reachable (checks the
 * backward-shift deletion keeps probe runs intact). */
static void test_many(void) {
  enum { N = 20000 };
  static char keys[N][16];
  sm_map m;
  sm_map_init(&m, 0);
  for (int i = 0; i < N; i++) {
    snprintf(keys[i], sizeof(keys[i]), "agent-%d", i);
    T_EQ_INT(sm_map_put(&m, keys[i], strlen(keys[i]), keys[i]), 0);
  }
  for (int i = 0; i < N; i += 3)
    T_ASSERT(sm_map_del(&m, keys[i], strlen(keys[i])) == keys[i]);
  for (int i = 0; i < N; i++) {
    void *v = sm_map_get(&m, keys[i], strlen(keys[i]));
    if (i % 3 == 0)
      T_ASSERT(v == NULL);
    else
      T_ASSERT(v == keys[i]);
  }
  T_EQ_INT(m.len, N - (N + 2) / 3);
  sm_map_finish(&m);
}

static void test_limit(void) {
  sm_map m;
  sm_map_init(&m, 2);
  int v = 0;
  T_EQ_INT(sm_map_put(&m, "a", 1, &v), 0);
  T_EQ_INT(sm_map_put(&m, "b", 1, &v), 0);
  T_EQ_INT(sm_map_put(&m, "c", 1, &v), SM_ELIMIT);
  sm_map_del(&m, "a", 1);
  T_EQ_INT(sm_map_put(&m, "c", 1, &v), 0);
  sm_map_finish(&m);
}

int main(void) {
  T_RUN(test_basic);
  T_RUN(test_many);
  T_RUN(test_limit);
  return t_done();
}
