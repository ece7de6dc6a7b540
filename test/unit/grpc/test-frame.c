/* Tests of grpc/frame: messages joined in one chunk, split byte by byte, limits, bad flags. */
#include "t.h"
#include "grpc/frame.h"
#include "util/err.h"

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

static void test_joined_and_split(void) {
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

static void test_limit(void) {
  uint8_t hdr[5];
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 100);
  grpc_frame_header(hdr, 0, 101);
  size_t used;
  grpc_frame_msg m;
  T_EQ_INT(grpc_frame_read(&r, hdr, 5, &used, &m), SM_ETOOBIG);
  T_ASSERT(r.buf == NULL); /* nothing was allocated for the refused message */
  grpc_frame_reader_finish(&r);

  grpc_frame_reader_init(&r, 100);
  grpc_frame_header(hdr, 0, 100);
  T_EQ_INT(grpc_frame_read(&r, hdr, 5, &used, &m), 0);
  grpc_frame_reader_finish(&r);
}

static void test_bad_flag_and_compressed(void) {
  uint8_t buf[16];
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, 100);
  size_t n = encode(buf, "x", 1);
  size_t used;
  grpc_frame_msg m;
  T_EQ_INT(grpc_frame_read(&r, buf, n, &used, &m), 1);
  T_EQ_INT(m.compressed, 1);
  buf[0] = 2;
  T_EQ_INT(grpc_frame_read(&r, buf, n, &used, &m), SM_EPROTO);
  grpc_frame_reader_finish(&r);
}

int main(void) {
  T_RUN(test_joined_and_split);
  T_RUN(test_partial);
  T_RUN(test_limit);
  T_RUN(test_bad_flag_and_compressed);
  return t_done();
}
