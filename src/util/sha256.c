/* sha256.c - SHA-256 through OpenSSL's EVP interface (see sha256.h). */
#include "util/sha256.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

int sm_sha256(const void *data, size_t len, uint8_t out[SM_SHA256_LEN]) {
  unsigned n = 0;
  if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != SM_SHA256_LEN)
    return SM_ENOMEM;
  return 0;
}

int sm_sha256_equal(const uint8_t a[SM_SHA256_LEN], const uint8_t b[SM_SHA256_LEN]) {
  return CRYPTO_memcmp(a, b, SM_SHA256_LEN) == 0;
}
