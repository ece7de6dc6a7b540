/* Tests of util/utf8: the validator against a reference decoder (every 1-, 2- and 3-byte string,
 * random longer ones), the Unicode examples of maximal subparts, and the sanitizer. */
#include "util/alloc.h"
#include "util/utf8.h"

#include "../t.h"

#include <stdint.h>
#include <stdlib.h>

/* Reference: decode by the bit patterns, then refuse what the code point rules forbid. */
static int ref_valid(const unsigned char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    unsigned char b = s[i];
    size_t n;
    uint32_t cp, min;
    if (b < 0x80) {
      i++;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 2, cp = b & 0x1F, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      n = 3, cp = b & 0x0F, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      n = 4, cp = b & 0x07, min = 0x10000;
    } else {
      return 0;
    }
    if (len - i < n)
      return 0;
    for (size_t k = 1; k < n; k++) {
      if ((s[i + k] & 0xC0) != 0x80)
        return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += n;
  }
  return 1;
}

static void test_exhaustive_short(void) {
  unsigned char b[3];
  for (uint32_t v = 0; v < (1u << 24); v++) {
    b[0] = (unsigned char)(v >> 16), b[1] = (unsigned char)(v >> 8), b[2] = (unsigned char)v;
    if (v < 256)
      T_EQ_INT(sm_utf8_valid((const char *)b + 2, 1), ref_valid(b + 2, 1));
    if (v < 65536)
      T_EQ_INT(sm_utf8_valid((const char *)b + 1, 2), ref_valid(b + 1, 2));
    if (sm_utf8_valid((const char *)b, 3) != ref_valid(b, 3))
      T_FAIL_("3 bytes %02x %02x %02x", b[0], b[1], b[2]);
  }
}

static void test_random(void) {
  srand(12);
  unsigned char buf[64];
  /* bytes drawn from a set that makes valid and nearly valid sequences likely */
  static const unsigned char pool[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                                       0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
                                       0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
  for (int it = 0; it < 2000000; it++) {
    size_t len = (size_t)(rand() % 12);
    for (size_t i = 0; i < len; i++)
      buf[i] = (it & 1) ? (unsigned char)rand() : pool[(size_t)rand() % sizeof(pool)];
    if (sm_utf8_valid((const char *)buf, len) != ref_valid(buf, len))
      T_FAIL_("random string of %zu bytes, first %02x", len, buf[0]);
  }
}

static void test_cases(void) {
  T_ASSERT(sm_utf8_valid("", 0));
  T_ASSERT(sm_utf8_valid("plain ascii, long enough for words", 34));
  T_ASSERT(sm_utf8_valid("a\0b", 3)); /* NUL is U+0000 */
  T_ASSERT(sm_utf8_valid("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", 9));
  T_ASSERT(sm_utf8_valid("\xF4\x8F\xBF\xBF", 4));  /* U+10FFFF */
  T_ASSERT(!sm_utf8_valid("\xF4\x90\x80\x80", 4)); /* U+110000 */
  T_ASSERT(!sm_utf8_valid("\xC0\x80", 2));         /* overlong NUL */
  T_ASSERT(!sm_utf8_valid("\xE0\x80\xAF", 3));     /* overlong / */
  T_ASSERT(!sm_utf8_valid("\xF0\x8F\xBF\xBF", 4)); /* overlong U+FFFF */
  T_ASSERT(!sm_utf8_valid("\xED\xA0\x80", 3));     /* U+D800 */
  T_ASSERT(!sm_utf8_valid("\xED\xBF\xBF", 3));     /* U+DFFF */
  T_ASSERT(sm_utf8_valid("\xED\x9F\xBF", 3));      /* U+D7FF */
  T_ASSERT(!sm_utf8_valid("\xFF\xFE", 2));
  T_ASSERT(!sm_utf8_valid("abcdefgh\xE2\x82", 10)); /* cut at the end, after the word loop */
  T_EQ_INT(sm_utf8_valid_prefix("abcdefghij\x80", 11), 10);
  T_EQ_INT(sm_utf8_valid_prefix("\xC3\xA9\xC3", 3), 2);
}

static void check_sanitize(const char *in, size_t len, const char *want) {
  char out[256];
  T_ASSERT(sm_utf8_sanitized_len(in, len) + 1 <= sizeof(out));
  size_t n = sm_utf8_sanitize(in, len, out);
  T_EQ_INT(n, sm_utf8_sanitized_len(in, len));
  T_EQ_INT(n, strlen(want));
  T_ASSERT(memcmp(out, want, n) == 0);
  T_ASSERT(sm_utf8_valid(out, n));
}

#define R SM_UTF8_REPLACEMENT

static void test_sanitize(void) {
  check_sanitize("ok \xC3\xA9", 5, "ok \xC3\xA9");
  check_sanitize("\xFF\xFE", 2, R R);
  /* Unicode 15, 3.9, Table 3-8: one U+FFFD per maximal subpart */
  check_sanitize("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", 13,
                 "a" R R R "b" R "c" R R "d");
  check_sanitize("\xC0\xAF\xE0\x80\xBF\xF0\x81\x82\x41", 9, R R R R R R R R "A");
  check_sanitize("\xED\xA0\x80\x41", 4, R R R "A");
  check_sanitize("\xF4\x91\x92\x93\xFF\x41\x80\xBF\x42", 9, R R R R R "A" R R "B");
  check_sanitize("\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41", 9, R R R R "A");
  check_sanitize("\xE2\x82", 2, R); /* cut at the end: one subpart */

  size_t n = 0;
  char *d = NULL;
  for (int nth = 0;; nth++) {
    sm_alloc_fail_at(nth, 0);
    d = sm_utf8_sanitize_dup("x\xFFy", 3, &n);
    sm_alloc_fail_at(-1, 0);
    if (d != NULL)
      break;
  }
  T_EQ_INT(n, 5);
  T_EQ_STR(d, "x" R "y");
  free(d);
}

/* The sanitizer's output is always valid, for any input. */
static void test_sanitize_random(void) {
  srand(7);
  unsigned char in[48];
  char out[48 * 3 + 1];
  for (int it = 0; it < 200000; it++) {
    size_t len = (size_t)(rand() % (int)sizeof(in));
    for (size_t i = 0; i < len; i++)
      in[i] = (unsigned char)rand();
    size_t n = sm_utf8_sanitize((const char *)in, len, out);
    T_ASSERT(sm_utf8_valid(out, n));
    if (sm_utf8_valid((const char *)in, len))
      T_ASSERT(n == len && memcmp(in, out, len) == 0);
  }
}

int main(void) {
  T_RUN(test_cases);
  T_RUN(test_exhaustive_short);
  T_RUN(test_random);
  T_RUN(test_sanitize);
  T_RUN(test_sanitize_random);
  return t_done();
}
