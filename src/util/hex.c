/* hex.c - hexadecimal codec (see hex.h). */
#include "util/hex.h"

int sm_hex_value(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int sm_hex_decode(const char *text, uint8_t *out, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int hi = sm_hex_value((unsigned char)text[2 * i]);
    int lo = hi < 0 ? -1 : sm_hex_value((unsigned char)text[2 * i + 1]);
    if (lo < 0)
      return SM_EINVAL;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 0;
}

void sm_hex_encode(const uint8_t *in, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = sm_hex_digit(in[i] >> 4, 0);
    out[2 * i + 1] = sm_hex_digit(in[i], 0);
  }
  out[2 * n] = '\0';
}
