/* backoff.c - xorshift64* and full-jitter exponential backoff. */
#include "client/backoff.h"

void client_rng_seed(client_rng *r, uint64_t seed) {
  /* splitmix64 scrambles weak seeds (0, 1, 2, ...) into well-spread states. */
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  r->s = z ? z : 0x2545f4914f6cdd1dULL;
}

uint64_t client_rng_next(client_rng *r) {
  uint64_t x = r->s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->s = x;
  return x * 0x2545f4914f6cdd1dULL;
}

double client_rng_unit(client_rng *r) {
  return (double)(client_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

int client_rng_chance(client_rng *r, double p) {
  if (p <= 0)
    return 0;
  if (p >= 1)
    return 1;
  return client_rng_unit(r) < p;
}

uint64_t client_backoff_ceiling(uint32_t min_ms, uint32_t max_ms, uint32_t attempt) {
  uint64_t c = min_ms ? min_ms : 1;
  /* Doubling stops at the cap, so no shift can overflow. */
  for (uint32_t i = 0; i < attempt && c < max_ms; i++)
    c *= 2;
  return c < max_ms ? c : max_ms;
}

uint64_t client_backoff_delay(client_rng *r, uint32_t min_ms, uint32_t max_ms, uint32_t attempt) {
  uint64_t c = client_backoff_ceiling(min_ms, max_ms, attempt);
  return client_rng_next(r) % (c + 1);
}
