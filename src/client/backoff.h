/* backoff.h - the client's random numbers and reconnect backoff (exponential, full jitter).
 *
 * The generator is explicit state (no rand()): --seed makes a run reproducible, and each agent
 * can own a stream so agents do not share hidden state.
 */
#ifndef SM_CLIENT_BACKOFF_H
#define SM_CLIENT_BACKOFF_H

#include <stdint.h>

typedef struct client_rng {
  uint64_t s; /* xorshift64* state, never 0 */
} client_rng;

/* Seeds the generator; any seed (0 too) gives a valid non-zero state. */
void client_rng_seed(client_rng *r, uint64_t seed);

/* A uniformly distributed 64-bit value. */
uint64_t client_rng_next(client_rng *r);

/* A double uniformly in [0, 1). */
double client_rng_unit(client_rng *r);

/* True with probability p (p <= 0: never, p >= 1: always). */
int client_rng_chance(client_rng *r, double p);

/* The capped exponential ceiling of attempt n (0-based): min(max_ms, min_ms * 2^n). */
uint64_t client_backoff_ceiling(uint32_t min_ms, uint32_t max_ms, uint32_t attempt);

/* A full-jitter delay for attempt n: uniform in [0, ceiling]. */
uint64_t client_backoff_delay(client_rng *r, uint32_t min_ms, uint32_t max_ms, uint32_t attempt);

#endif
