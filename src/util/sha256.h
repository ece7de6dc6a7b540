/* sha256.h - the one SHA-256 (OpenSSL's), for API keys and agent tokens kept as digests. */
#ifndef SM_UTIL_SHA256_H
#define SM_UTIL_SHA256_H

#include "util/err.h"

#include <stddef.h>
#include <stdint.h>

#define SM_SHA256_LEN 32 /* bytes in a digest */

/* out = SHA-256(data[0..len)). Returns 0 or SM_ENOMEM (OpenSSL could not allocate). */
SM_MUST_CHECK int sm_sha256(const void *data, size_t len, uint8_t out[SM_SHA256_LEN]);

/* Whether two digests are equal, in time independent of where they differ. */
int sm_sha256_equal(const uint8_t a[SM_SHA256_LEN], const uint8_t b[SM_SHA256_LEN]);

#endif
