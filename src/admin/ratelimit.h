/* ratelimit.h - token buckets keyed by a short string (an API key's name, a client address),
 * in a table of bounded size: when it is full the least recently used bucket is dropped, so a
 * flood of addresses costs a fixed amount of memory. A dropped bucket comes back full, which is
 * what an idle client would have had anyway; a client that keeps sending stays at the front.
 */
#ifndef SM_ADMIN_RATELIMIT_H
#define SM_ADMIN_RATELIMIT_H

#include "util/err.h"

#include <stddef.h>
#include <stdint.h>

#define ADMIN_RATELIMIT_KEY_MAX 64 /* key bytes kept; longer keys are truncated */

typedef struct admin_ratelimit admin_ratelimit;

/* A table of buckets refilling rps tokens per second up to burst, holding at most max_entries
 * buckets. Returns 0, SM_EINVAL (rps <= 0, burst < 1 or max_entries 0) or SM_ENOMEM. */
SM_MUST_CHECK int admin_ratelimit_create(double rps, double burst, size_t max_entries,
                                         admin_ratelimit **out);

/* Frees the table. NULL is fine. */
void admin_ratelimit_destroy(admin_ratelimit *rl);

/* Takes one token from key's bucket at now_ms (a monotonic clock). Returns 0 when the request
 * may go on, else the whole seconds (>= 1) until a token is there, for Retry-After. Out of
 * memory allows the request (the limiter never turns into an outage). */
int admin_ratelimit_take(admin_ratelimit *rl, const char *key, size_t len, uint64_t now_ms);

/* Buckets held now (at most max_entries). */
size_t admin_ratelimit_size(const admin_ratelimit *rl);

#endif
