/* test-frame.c - grpc/frame: the Length-Prefixed-Message reader and writer. */
#include "grpc/frame.h"

#include "t.h"
#include "util/err.h"

#include <stdint.h>

/* Builds prefix + payload into out; returns the length. */
static size_t frame(uint8_t *out, int compressed, const void *payload, uint32_t len) {
  grpc_frame_header(out, compressed, len);
  if (len)
    memcpy(out + GRPC_FRAME_HEADER_LEN, payload, len);
  return GRPC_FRAME_HEADER_LEN + len;
}

static size_t encode(uint8_t *out, const char *msg, int compressed) {
  size_t n = strlen(msg);
  grpc_frame_header(out, compressed, (uint32_t)n);
  memcpy(out + GRPC_FRAME_HEADER_LEN, msg, n);
  return GRPC_FRAME_HEADER_LEN + n;
}

/* Feeds `in` in chunks of `step` bytes; collects the messages joined by '|'. */
static void feed(grpc_frame_reader *r, const uint8_t *in, size_t len, size_t step, char *out) {
  out[0] = '\0';
  size_t off = 0;
  while (off < len) {
    size_t chunk = len - off < step ? len - off : step;
    size_t pos = 0;
    while (pos < chunk) {
      size_t used;
      grpc_frame_msg m;
      int rc = grpc_frame_read(r, in + off + pos, chunk - pos, &used, &m);
      T_ASSERT(rc >= 0);
      pos += used;
      if (rc == 1) {
        strncat(out, (const char *)m.data, m.len);
        strcat(out, "|");
      }
    }
    off += chunk;
  }
}

static void test_joined_and_split_every_step(void) {
  uint8_t buf[256];
  size_t n = encode(buf, "hello", 0);
  n += encode(buf + n, "", 0);
  n += encode(buf + n, "world!", 0);
  for (size_t step = 1; step <= n; step++) {
    grpc_frame_reader r;
    grpc_frame_reader_init(&r, 1024);
    char out[256];
    feed(&r, buf, n, step, out);
    T_EQ_STR(out, "hello||world!|");
    T_ASSERT(!grpc_frame_reader_partial(&r));
    grpc_frame_reader_finish(&r);
  }
}

static void test_partial(void) {
  uint8_t buf[64];
  size_t n = encode(buf, "abcdef", 0);
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 1024);
  size_t used;
  grpc_frame_msg m;
  T_EQ_INT(grpc_frame_read(&r, buf, n - 1, &used, &m), 0);
  T_EQ_INT(used, n - 1);
  T_ASSERT(grpc_frame_reader_partial(&r));
  T_EQ_INT(grpc_frame_read(&r, buf + n - 1, 1, &used, &m), 1);
  T_EQ_INT(m.len, 6);
  T_ASSERT(memcmp(m.data, "abcdef", 6) == 0);
  grpc_frame_reader_finish(&r);
}

static void test_header(void) {
  uint8_t h[GRPC_FRAME_HEADER_LEN];
  grpc_frame_header(h, 0, 0x01020304);
  T_EQ_INT(h[0], 0);
  T_EQ_INT(h[1], 1);
  T_EQ_INT(h[2], 2);
  T_EQ_INT(h[3], 3);
  T_EQ_INT(h[4], 4);
  grpc_frame_header(h, 1, 0xffffffffu);
  T_EQ_INT(h[0], 1);
  T_EQ_INT(h[4], 0xff);
}

static void test_whole_message_no_copy(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 1024);
  uint8_t buf[64];
  size_t n = frame(buf, 0, "hello", 5);
  grpc_frame_msg m;
  size_t used;
  T_EQ_INT(grpc_frame_read(&r, buf, n, &used, &m), 1);
  T_EQ_INT(used, n);
  T_EQ_INT(m.len, 5);
  T_ASSERT(m.data == buf + GRPC_FRAME_HEADER_LEN); /* points into the input */
  T_ASSERT(memcmp(m.data, "hello", 5) == 0);
  T_EQ_INT(m.compressed, 0);
  T_ASSERT(!grpc_frame_reader_partial(&r));
  T_EQ_INT(grpc_frame_read(&r, buf + n, 0, &used, &m), 0);
  grpc_frame_reader_finish(&r);
}

static void test_joined_messages(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 1024);
  uint8_t buf[128];
  size_t n = frame(buf, 0, "one", 3);
  n += frame(buf + n, 0, "", 0);
  n += frame(buf + n, 1, "three", 5);
  const char *want[] = {"one", "", "three"};
  size_t off = 0;
  for (int i = 0; i < 3; i++) {
    grpc_frame_msg m;
    size_t used;
    T_EQ_INT(grpc_frame_read(&r, buf + off, n - off, &used, &m), 1);
    off += used;
    T_EQ_INT(m.len, strlen(want[i]));
    T_ASSERT(m.len == 0 || memcmp(m.data, want[i], m.len) == 0);
    T_EQ_INT(m.compressed, i == 2);
  }
  T_EQ_INT(off, n);
  grpc_frame_reader_finish(&r);
}

static void test_split_messages(void) {
  /* A message fed in every possible pair of chunks, then byte by byte. */
  static uint8_t payload[3000], buf[3100];
  for (size_t i = 0; i < sizeof(payload); i++)
    payload[i] = (uint8_t)(i * 13);
  size_t n = frame(buf, 0, payload, sizeof(payload));
  for (size_t cut = 1; cut < n; cut += 7) {
    grpc_frame_reader r;
    grpc_frame_reader_init(&r, 4096);
    grpc_frame_msg m;
    size_t used;
    T_EQ_INT(grpc_frame_read(&r, buf, cut, &used, &m), 0);
    T_EQ_INT(used, cut);
    T_ASSERT(grpc_frame_reader_partial(&r));
    T_EQ_INT(grpc_frame_read(&r, buf + cut, n - cut, &used, &m), 1);
    T_EQ_INT(used, n - cut);
    T_EQ_INT(m.len, sizeof(payload));
    T_ASSERT(memcmp(m.data, payload, sizeof(payload)) == 0);
    T_ASSERT(!grpc_frame_reader_partial(&r));
    grpc_frame_reader_finish(&r);
  }
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 4096);
  int got = 0;
  for (size_t i = 0; i < n; i++) {
    grpc_frame_msg m;
    size_t used;
    int rc = grpc_frame_read(&r, buf + i, 1, &used, &m);
    T_EQ_INT(used, 1);
    if (i + 1 < n) {
      T_EQ_INT(rc, 0);
    } else {
      T_EQ_INT(rc, 1);
      T_ASSERT(memcmp(m.data, payload, sizeof(payload)) == 0);
      got = 1;
    }
  }
  T_ASSERT(got);
  grpc_frame_reader_finish(&r);
}

static void test_limit(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 100);
  uint8_t buf[256], body[100] = {0};
  size_t n = frame(buf, 0, body, sizeof(body)); /* exactly the limit passes */
  grpc_frame_msg m;
  size_t used;
  T_EQ_INT(grpc_frame_read(&r, buf, n, &used, &m), 1);
  grpc_frame_reader_finish(&r);

  grpc_frame_reader_init(&r, 100);
  grpc_frame_header(buf, 0, 101);
  /* refused at the prefix, before any of the body is buffered */
  T_EQ_INT(grpc_frame_read(&r, buf, GRPC_FRAME_HEADER_LEN, &used, &m), SM_ETOOBIG);
  T_EQ_INT(used, GRPC_FRAME_HEADER_LEN);
  T_ASSERT(r.buf == NULL);
  grpc_frame_reader_finish(&r);

  /* a 4 GiB announcement */
  grpc_frame_reader_init(&r, 4 << 20);
  grpc_frame_header(buf, 0, 0xffffffffu);
  T_EQ_INT(grpc_frame_read(&r, buf, 5, &used, &m), SM_ETOOBIG);
  grpc_frame_reader_finish(&r);
}

static void test_bad_flag(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 100);
  uint8_t buf[16];
  frame(buf, 0, "x", 1);
  buf[0] = 2;
  grpc_frame_msg m;
  size_t used;
  T_EQ_INT(grpc_frame_read(&r, buf, 6, &used, &m), SM_EPROTO);
  grpc_frame_reader_finish(&r);
  buf[0] = 0x80;
  grpc_frame_reader_init(&r, 100);
  T_EQ_INT(grpc_frame_read(&r, buf, 6, &used, &m), SM_EPROTO);
  grpc_frame_reader_finish(&r);
}

static void test_zero_length(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 0); /* only empty messages allowed */
  uint8_t buf[16];
  size_t n = frame(buf, 0, NULL, 0);
  grpc_frame_msg m;
  size_t used;
  T_EQ_INT(grpc_frame_read(&r, buf, n, &used, &m), 1);
  T_EQ_INT(m.len, 0);
  /* the prefix split in two */
  T_EQ_INT(grpc_frame_read(&r, buf, 3, &used, &m), 0);
  T_EQ_INT(grpc_frame_read(&r, buf + 3, 2, &used, &m), 1);
  T_EQ_INT(m.len, 0);
  grpc_frame_reader_finish(&r);
}

static void test_large_buffer_released(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 1 << 20);
  static uint8_t buf[100000], body[90000];
  size_t n = frame(buf, 0, body, sizeof(body));
  grpc_frame_msg m;
  size_t used;
  T_EQ_INT(grpc_frame_read(&r, buf, 10, &used, &m), 0);
  T_EQ_INT(grpc_frame_read(&r, buf + 10, n - 10, &used, &m), 1);
  T_ASSERT(r.buf_cap >= 90000);
  /* the next read gives the big buffer back: an idle stream holds no memory */
  uint8_t small[16];
  size_t sn = frame(small, 0, "ab", 2);
  T_EQ_INT(grpc_frame_read(&r, small, 3, &used, &m), 0);
  T_ASSERT(r.buf_cap == 0);
  T_EQ_INT(grpc_frame_read(&r, small + 3, sn - 3, &used, &m), 1);
  T_ASSERT(memcmp(m.data, "ab", 2) == 0);
  grpc_frame_reader_finish(&r);
}

/* A prefix claiming a large message costs nothing until its bytes come; then the buffer grows
 * with them (at most twice what arrived), never past the claimed length. */
static void test_buffer_grows_with_data(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 1 << 20);
  uint8_t hdr[GRPC_FRAME_HEADER_LEN];
  const uint32_t len = 1000000;
  grpc_frame_header(hdr, 0, len);
  grpc_frame_msg m;
  size_t used;
  T_EQ_INT(grpc_frame_read(&r, hdr, sizeof(hdr), &used, &m), 0);
  T_EQ_INT(r.buf_cap, 0); /* the prefix alone: nothing allocated */
  T_ASSERT(grpc_frame_reader_partial(&r));
  static uint8_t body[1000000];
  for (size_t i = 0; i < sizeof(body); i++)
    body[i] = (uint8_t)(i * 7);
  T_EQ_INT(grpc_frame_read(&r, body, 1, &used, &m), 0);
  T_ASSERT(r.buf_cap > 0 && r.buf_cap <= 1024);
  size_t got = 1, step = 1;
  while (got < len) {
    size_t n = len - got < step ? len - got : step;
    int rc = grpc_frame_read(&r, body + got, n, &used, &m);
    T_EQ_INT(used, n);
    got += n;
    T_ASSERT(r.buf_cap <= len);
    T_ASSERT(r.buf_cap <= 2 * got || r.buf_cap <= 1024);
    if (got < len) {
      T_EQ_INT(rc, 0);
    } else {
      T_EQ_INT(rc, 1);
      T_EQ_INT(m.len, len);
      T_ASSERT(memcmp(m.data, body, len) == 0);
    }
    step = step * 3 + 1;
  }
  T_EQ_INT(r.buf_cap, len);
  grpc_frame_reader_finish(&r);
}

/* buf_limit bounds the buffer: input that does not fit is refused with SM_ELIMIT. */
static void test_buffer_limit(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 1 << 20);
  static uint8_t buf[10000], body[9000];
  memset(body, 'b', sizeof(body));
  size_t n = frame(buf, 0, body, 9000);
  r.buf_limit = 5000;
  grpc_frame_msg m;
  size_t used;
  T_EQ_INT(grpc_frame_read(&r, buf, 4005, &used, &m), 0);
  T_ASSERT(r.buf_cap >= 4000 && r.buf_cap <= 5000);
  T_EQ_INT(grpc_frame_read(&r, buf + 4005, n - 4005, &used, &m), SM_ELIMIT);
  T_ASSERT(r.buf_cap <= 5000);
  grpc_frame_reader_finish(&r);

  /* exactly at the limit passes; a whole message in the input needs no buffer at all */
  grpc_frame_reader_init(&r, 1 << 20);
  r.buf_limit = 9000;
  T_EQ_INT(grpc_frame_read(&r, buf, 100, &used, &m), 0);
  T_EQ_INT(grpc_frame_read(&r, buf + 100, n - 100, &used, &m), 1);
  T_EQ_INT(r.buf_cap, 9000);
  grpc_frame_reader_finish(&r);
  grpc_frame_reader_init(&r, 1 << 20);
  r.buf_limit = 0;
  T_EQ_INT(grpc_frame_read(&r, buf, n, &used, &m), 1);
  T_EQ_INT(m.len, 9000);
  T_EQ_INT(r.buf_cap, 0);
  grpc_frame_reader_finish(&r);
}

/* The caller may take the buffer of a completed message; trim gives back large ones. */
static void test_detach_and_trim(void) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 1 << 20);
  static uint8_t buf[20000], body[10000];
  memset(body, 'c', sizeof(body));
  size_t n = frame(buf, 0, body, 10000);
  grpc_frame_msg m;
  size_t used, cap;
  T_EQ_INT(grpc_frame_read(&r, buf, n, &used, &m), 1);
  T_ASSERT(grpc_frame_reader_detach(&r, &m, &cap) == NULL); /* not copied */
  T_EQ_INT(cap, 0);
  T_EQ_INT(grpc_frame_read(&r, buf, 50, &used, &m), 0);
  T_EQ_INT(grpc_frame_read(&r, buf + 50, n - 50, &used, &m), 1);
  uint8_t *b = grpc_frame_reader_detach(&r, &m, &cap);
  T_ASSERT(b != NULL && b == m.data && cap >= 10000);
  T_EQ_INT(r.buf_cap, 0);
  T_ASSERT(memcmp(b, body, 10000) == 0);
  free(b);
  /* trim: a large buffer goes, and never while a message is partly received */
  T_EQ_INT(grpc_frame_read(&r, buf, 50, &used, &m), 0);
  size_t before = r.buf_cap;
  grpc_frame_reader_trim(&r);
  T_EQ_INT(r.buf_cap, before);
  T_EQ_INT(grpc_frame_read(&r, buf + 50, n - 50, &used, &m), 1);
  grpc_frame_reader_trim(&r);
  T_EQ_INT(r.buf_cap, 0);
  grpc_frame_reader_finish(&r);
}

int main(void) {
  T_RUN(test_joined_and_split_every_step);
  T_RUN(test_partial);
  T_RUN(test_header);
  T_RUN(test_whole_message_no_copy);
  T_RUN(test_joined_messages);
  T_RUN(test_split_messages);
  T_RUN(test_limit);
  T_RUN(test_bad_flag);
  T_RUN(test_zero_length);
  T_RUN(test_large_buffer_released);
  T_RUN(test_buffer_grows_with_data);
  T_RUN(test_buffer_limit);
  T_RUN(test_detach_and_trim);
  return t_done();
}
