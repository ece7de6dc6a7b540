/* Unit tests of the small util modules: list.h, hex.c, sha256.c, alloc.c. */
#include "util/alloc.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/list.h"
#include "util/sha256.h"

#include "../t.h"

#include <stdlib.h>

typedef struct node {
  int v;
  sm_list link;
} node;

static void test_list(void) {
  sm_list h;
  sm_list_init(&h);
  T_ASSERT(sm_list_empty(&h));
  T_ASSERT(sm_list_first(&h) == NULL && sm_list_pop_front(&h) == NULL);
  node n[5];
  for (int i = 0; i < 5; i++) {
    n[i].v = i;
    sm_list_init(&n[i].link);
    T_ASSERT(!sm_list_linked(&n[i].link));
  }
  sm_list_push_back(&h, &n[1].link);
  sm_list_push_back(&h, &n[2].link);
  sm_list_push_front(&h, &n[0].link);
  sm_list_insert_after(&n[2].link, &n[3].link);
  int want = 0;
  SM_LIST_FOREACH(it, &h) {
    T_EQ_INT(SM_LIST_ENTRY(it, node, link)->v, want);
    want++;
  }
  T_EQ_INT(want, 4);
  /* removal while walking */
  SM_LIST_FOREACH_SAFE(it, tmp, &h) {
    if (SM_LIST_ENTRY(it, node, link)->v % 2)
      sm_list_remove(it);
  }
  T_ASSERT(!sm_list_linked(&n[1].link));
  T_ASSERT(sm_list_first(&h) == &n[0].link && sm_list_last(&h) == &n[2].link);
  T_ASSERT(sm_list_next(&h, &n[0].link) == &n[2].link);
  T_ASSERT(sm_list_next(&h, &n[2].link) == NULL);
  T_ASSERT(sm_list_prev(&h, &n[0].link) == NULL);
  sm_list other;
  sm_list_init(&other);
  sm_list_push_back(&other, &n[4].link);
  sm_list_splice_back(&h, &other);
  T_ASSERT(sm_list_empty(&other));
  T_ASSERT(sm_list_last(&h) == &n[4].link);
  T_ASSERT(sm_list_pop_front(&h) == &n[0].link);
  T_ASSERT(sm_list_pop_front(&h) == &n[2].link);
  T_ASSERT(sm_list_pop_front(&h) == &n[4].link);
  T_ASSERT(sm_list_empty(&h));
}

static void test_hex(void) {
  T_EQ_INT(sm_hex_value('0'), 0);
  T_EQ_INT(sm_hex_value('a'), 10);
  T_EQ_INT(sm_hex_value('F'), 15);
  T_EQ_INT(sm_hex_value('g'), -1);
  T_EQ_INT(sm_hex_value(0), -1);
  uint8_t b[3];
  T_EQ_INT(sm_hex_decode("00fFa5", b, 3), 0);
  T_ASSERT(b[0] == 0 && b[1] == 0xff && b[2] == 0xa5);
  T_EQ_INT(sm_hex_decode("0x", b, 1), SM_EINVAL);
  T_EQ_INT(sm_hex_decode("x0", b, 1), SM_EINVAL);
  char out[7];
  sm_hex_encode(b, 3, out);
  T_EQ_STR(out, "00ffa5");
  T_ASSERT(sm_hex_digit(10, 1) == 'A' && sm_hex_digit(10, 0) == 'a');
}

static void test_sha256(void) {
  uint8_t d[SM_SHA256_LEN], e[SM_SHA256_LEN];
  T_EQ_INT(sm_sha256("abc", 3, d), 0);
  char hex[2 * SM_SHA256_LEN + 1];
  sm_hex_encode(d, sizeof(d), hex);
  T_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  T_EQ_INT(sm_sha256("abd", 3, e), 0);
  T_ASSERT(!sm_sha256_equal(d, e));
  T_EQ_INT(sm_sha256("abc", 3, e), 0);
  T_ASSERT(sm_sha256_equal(d, e));
}

static void test_alloc(void) {
  unsigned long f0 = sm_alloc_failures();
  sm_alloc_fail_at(1, 0); /* the second allocation from now fails, then no more */
  char *a = sm_strdup("x");
  char *b = sm_malloc(8);
  char *c = sm_calloc(2, 4);
  T_ASSERT(a != NULL && b == NULL && c != NULL);
  T_EQ_INT(sm_alloc_failures() - f0, 1);
  free(a);
  free(c);
  sm_alloc_fail_at(0, 1); /* sticky: every one fails until turned off */
  T_ASSERT(sm_malloc(1) == NULL && sm_strndup("abc", 2) == NULL && sm_realloc(NULL, 4) == NULL);
  sm_alloc_fail_at(-1, 0);
  char *d = sm_strndup("abc", 2);
  T_EQ_STR(d, "ab");
  free(d);
  T_EQ_INT(sm_alloc_failures() - f0, 4);
}

int main(void) {
  T_RUN(test_list);
  T_RUN(test_hex);
  T_RUN(test_sha256);
  T_RUN(test_alloc);
  return t_done();
}
