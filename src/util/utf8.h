/* utf8.h - the one UTF-8 validator (Unicode 15, Table 3-7: well-formed byte sequences).
 *
 * Every text a peer sends and the manager writes back (JSON bodies, log lines, Prometheus
 * labels, proto3 strings) must be valid UTF-8: validation refuses overlong forms, UTF-16
 * surrogates (U+D800..U+DFFF) and code points above U+10FFFF; sanitizing replaces each maximal
 * ill-formed subpart by one U+FFFD (the Unicode "substitution of maximal subparts" practice, as
 * WHATWG's decoder and Python's errors="replace" do).
 */
#ifndef SM_UTIL_UTF8_H
#define SM_UTIL_UTF8_H

#include "util/err.h"

#include <stddef.h>

#define SM_UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD in UTF-8 */
#define SM_UTF8_REPLACEMENT_LEN 3

/* Length (1..4) of the well-formed sequence that starts s[0..len), len > 0; or 0 when it is
 * ill-formed, and then *skip (when not NULL) gets the length (1..3) of its maximal subpart: the
 * bytes that one U+FFFD stands for. */
size_t sm_utf8_char(const char *s, size_t len, size_t *skip);

/* Whether s[0..len) is well-formed UTF-8. NUL bytes are valid (U+0000): callers that keep C
 * strings refuse them separately. */
int sm_utf8_valid(const char *s, size_t len);

/* The length of the longest well-formed prefix of s[0..len): len when all of it is valid, else
 * the offset of the first ill-formed sequence. */
size_t sm_utf8_valid_prefix(const char *s, size_t len);

/* The number of bytes sm_utf8_sanitize writes for s[0..len) (without the NUL). */
size_t sm_utf8_sanitized_len(const char *s, size_t len);

/* Copies s[0..len) to out with each maximal ill-formed subpart replaced by U+FFFD, and a NUL;
 * out has room for sm_utf8_sanitized_len(s, len) + 1 bytes. Returns the length written. */
size_t sm_utf8_sanitize(const char *s, size_t len, char *out);

/* The same into a new sm_malloc'ed string (length in *outlen when not NULL), or NULL when out
 * of memory. */
SM_MUST_CHECK char *sm_utf8_sanitize_dup(const char *s, size_t len, size_t *outlen);

#endif
