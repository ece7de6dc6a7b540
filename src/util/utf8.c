/* utf8.c - UTF-8 validation and U+FFFD substitution (see utf8.h). */
#include "util/utf8.h"

#include "util/alloc.h"

#include <stdint.h>
#include <string.h>

size_t sm_utf8_char(const char *s, size_t len, size_t *skip) {
  const unsigned char *p = (const unsigned char *)s;
  unsigned char b0 = p[0];
  if (b0 < 0x80)
    return 1;
  /* Table 3-7: the lead byte fixes the length and the range of the second byte; the others are
   * 80..BF. The narrowed second-byte ranges exclude overlongs (E0, F0), surrogates (ED) and
   * code points above U+10FFFF (F4); C0, C1 and F5..FF never start a sequence. */
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 == 0xE0) {
    n = 3;
    lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    n = 3;
  } else if (b0 == 0xED) {
    n = 3;
    hi = 0x9F;
  } else if (b0 == 0xF0) {
    n = 4;
    lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    n = 4;
  } else if (b0 == 0xF4) {
    n = 4;
    hi = 0x8F;
  } else {
    if (skip)
      *skip = 1;
    return 0;
  }
  size_t i = 1;
  for (; i < n && i < len; i++) {
    if (p[i] < lo || p[i] > hi)
      break;
    lo = 0x80;
    hi = 0xBF;
  }
  if (i == n)
    return n;
  if (skip)
    *skip = i;
  return 0;
}

size_t sm_utf8_valid_prefix(const char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    /* ASCII eight bytes at a time: most text is */
    while (len - i >= 8) {
      uint64_t w;
      memcpy(&w, s + i, 8);
      if (w & 0x8080808080808080ull)
        break;
      i += 8;
    }
    if (i >= len)
      break;
    size_t n = sm_utf8_char(s + i, len - i, NULL);
    if (n == 0)
      return i;
    i += n;
  }
  return len;
}

int sm_utf8_valid(const char *s, size_t len) {
  return sm_utf8_valid_prefix(s, len) == len;
}

size_t sm_utf8_sanitized_len(const char *s, size_t len) {
  size_t out = 0, i = 0;
  while (i < len) {
    size_t skip = 1, n = sm_utf8_char(s + i, len - i, &skip);
    if (n) {
      out += n;
      i += n;
    } else {
      out += SM_UTF8_REPLACEMENT_LEN;
      i += skip;
    }
  }
  return out;
}

size_t sm_utf8_sanitize(const char *s, size_t len, char *out) {
  size_t o = 0, i = 0;
  while (i < len) {
    size_t skip = 1, n = sm_utf8_char(s + i, len - i, &skip);
    if (n) {
      memcpy(out + o, s + i, n);
      o += n;
      i += n;
    } else {
      memcpy(out + o, SM_UTF8_REPLACEMENT, SM_UTF8_REPLACEMENT_LEN);
      o += SM_UTF8_REPLACEMENT_LEN;
      i += skip;
    }
  }
  out[o] = '\0';
  return o;
}

char *sm_utf8_sanitize_dup(const char *s, size_t len, size_t *outlen) {
  size_t n = sm_utf8_sanitized_len(s, len);
  char *out = sm_malloc(n + 1);
  if (out == NULL)
    return NULL;
  sm_utf8_sanitize(s, len, out);
  if (outlen)
    *outlen = n;
  return out;
}
