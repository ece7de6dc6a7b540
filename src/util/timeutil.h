/* timeutil.h - wall-clock time and RFC 3339 text. */
#ifndef SM_UTIL_TIMEUTIL_H
#define SM_UTIL_TIMEUTIL_H

#include <stddef.h>
#include <stdint.h>

/* Unix time in milliseconds (CLOCK_REALTIME). */
int64_t sm_now_ms(void);

/* Formats unix ms as "2026-11-28T12:00:00.123Z" into buf (at least 32 bytes); returns buf. */
char *sm_rfc3339(int64_t unix_ms, char *buf, size_t size);

/* Parses RFC 3339 ("2026-11-28T12:00:00Z", fractional seconds and +hh:mm offsets accepted)
 * into unix ms. Returns 0 or SM_EINVAL. */
int sm_rfc3339_parse(const char *s, int64_t *unix_ms);

/* Parses a duration: "15", "15s", "500ms", "2m", "1h", "1.5" (seconds). Returns 0 or
 * SM_EINVAL; negative values are refused. */
int sm_duration_parse(const char *s, double *seconds);

#endif
