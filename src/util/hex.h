/* hex.h - the one hexadecimal codec (digests, percent-encoding, request ids). */
#ifndef SM_UTIL_HEX_H
#define SM_UTIL_HEX_H

#include "util/err.h"

#include <stddef.h>
#include <stdint.h>

/* The value of hex digit c (either case), or -1 when c is not one. */
int sm_hex_value(int c);

/* The digit of v (0..15): upper case with upper, else lower case. */
static inline char sm_hex_digit(unsigned v, int upper) {
  return (upper ? "0123456789ABCDEF" : "0123456789abcdef")[v & 15u];
}

/* Decodes 2*n hex digits of text into n bytes. Returns 0 or SM_EINVAL (a non-digit). */
SM_MUST_CHECK int sm_hex_decode(const char *text, uint8_t *out, size_t n);

/* Writes 2*n lower-case digits of the n bytes of in, and a NUL, into out (2*n + 1 bytes). */
void sm_hex_encode(const uint8_t *in, size_t n, char *out);

#endif
