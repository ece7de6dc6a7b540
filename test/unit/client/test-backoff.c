/* Unit tests of client/backoff.c: generator determinism and backoff bounds. */
#include "client/backoff.h"
#include "t.h"

static void test_rng_deterministic(void) {
  client_rng a, b;
  client_rng_seed(&a, 42);
  client_rng_seed(&b, 42);
  for (int i = 0; i < 100; i++)
    T_EQ_INT(client_rng_next(&a) == client_rng_next(&b), 1);
  client_rng_seed(&a, 0); /* zero seed still gives a working generator */
  T_ASSERT(client_rng_next(&a) != client_rng_next(&a));
}

static void test_unit_and_chance(void) {
  client_rng r;
  int hits = 0;
  client_rng_seed(&r, 1);
  for (int i = 0; i < 10000; i++) {
    double u = client_rng_unit(&r);
    T_ASSERT(u >= 0.0 && u < 1.0);
    hits += client_rng_chance(&r, 0.25);
  }
  T_ASSERT(hits > 2200 && hits < 2800);
  T_EQ_INT(client_rng_chance(&r, 0), 0);
  T_EQ_INT(client_rng_chance(&r, 1), 1);
}

static void test_ceiling(void) {
  T_EQ_INT(client_backoff_ceiling(100, 30000, 0), 100);
  T_EQ_INT(client_backoff_ceiling(100, 30000, 1), 200);
  T_EQ_INT(client_backoff_ceiling(100, 30000, 5), 3200);
  T_EQ_INT(client_backoff_ceiling(100, 30000, 9), 30000);
  T_EQ_INT(client_backoff_ceiling(100, 30000, 4000000000u), 30000); /* no overflow */
  T_EQ_INT(client_backoff_ceiling(500, 500, 3), 500);
}

static void test_delay_full_jitter_bounds(void) {
  client_rng r;
  client_rng_seed(&r, 9);
  for (uint32_t attempt = 0; attempt < 40; attempt++) {
    uint64_t cap = client_backoff_ceiling(100, 30000, attempt), max = 0, min = UINT64_MAX;
    for (int i = 0; i < 2000; i++) {
      uint64_t d = client_backoff_delay(&r, 100, 30000, attempt);
      T_ASSERT(d <= cap);
      if (d > max)
        max = d;
      if (d < min)
        min = d;
    }
    /* full jitter: spread over the whole [0, cap] range */
    T_ASSERT(min < cap / 10 + 1);
    T_ASSERT(max > cap - cap / 10 - 1);
  }
}

int main(void) {
  T_RUN(test_rng_deterministic);
  T_RUN(test_unit_and_chance);
  T_RUN(test_ceiling);
  T_RUN(test_delay_full_jitter_bounds);
  return t_done();
}
