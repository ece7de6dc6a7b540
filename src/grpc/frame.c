/* frame.c - incremental gRPC message reassembly. */
#include "grpc/frame.h"

#include "util/alloc.h"
#include "util/err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void grpc_frame_reader_init(grpc_frame_reader *r, size_t max_len) {
  memset(r, 0, sizeof(*r));
  r->max_len = max_len;
  r->buf_limit = SIZE_MAX;
}

void grpc_frame_reader_finish(grpc_frame_reader *r) {
  free(r->buf);
  r->buf = NULL;
  r->buf_cap = 0;
}

int grpc_frame_reader_partial(const grpc_frame_reader *r) {
  return r->hdr_got > 0;
}

void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER_LEN], int compressed, uint32_t len) {
  out[0] = compressed ? 1 : 0;
  out[1] = (uint8_t)(len >> 24);
  out[2] = (uint8_t)(len >> 16);
  out[3] = (uint8_t)(len >> 8);
  out[4] = (uint8_t)len;
}

/* The reassembly buffer grows with the bytes received, never past the message's size (itself
 * at most max_len, checked before). A large buffer is given back after its message so an idle
 * stream holds no memory. */
#define FRAME_MIN_BUF 1024 /* first allocation for a split message (or its size when smaller) */

void grpc_frame_reader_trim(grpc_frame_reader *r) {
  if (r->hdr_got == 0 && r->buf_cap > GRPC_FRAME_KEEP_BUF) {
    free(r->buf);
    r->buf = NULL;
    r->buf_cap = 0;
  }
}

uint8_t *grpc_frame_reader_detach(grpc_frame_reader *r, const grpc_frame_msg *msg, size_t *cap) {
  *cap = 0;
  if (r->buf == NULL || msg->data != r->buf || r->hdr_got != 0)
    return NULL;
  uint8_t *b = r->buf;
  *cap = r->buf_cap;
  r->buf = NULL;
  r->buf_cap = 0;
  return b;
}

/* Makes room for `want` bytes of the current message: doubles the buffer (so copying stays
 * linear), but never past the message's length nor buf_limit. */
static int reserve(grpc_frame_reader *r, size_t want) {
  if (want <= r->buf_cap)
    return 0;
  if (want > r->buf_limit)
    return SM_ELIMIT;
  size_t cap = r->buf_cap ? r->buf_cap * 2 : FRAME_MIN_BUF;
  if (cap < want)
    cap = want;
  if (cap > r->msg_len)
    cap = r->msg_len;
  if (cap > r->buf_limit)
    cap = r->buf_limit;
  uint8_t *nb = sm_realloc(r->buf, cap);
  if (nb == NULL)
    return SM_ENOMEM;
  r->buf = nb;
  r->buf_cap = cap;
  return 0;
}

int grpc_frame_read(grpc_frame_reader *r, const uint8_t *in, size_t len, size_t *used,
                    grpc_frame_msg *msg) {
  size_t off = 0;

  /* Release a large buffer from the previous message before reading on. */
  grpc_frame_reader_trim(r);

  while (r->hdr_got < GRPC_FRAME_HEADER_LEN) {
    if (off == len) {
      *used = off;
      return 0;
    }
    r->hdr[r->hdr_got++] = in[off++];
    if (r->hdr_got == GRPC_FRAME_HEADER_LEN) {
      if (r->hdr[0] > 1) {
        *used = off;
        return SM_EPROTO;
      }
      r->compressed = r->hdr[0];
      r->msg_len = ((uint32_t)r->hdr[1] << 24) | ((uint32_t)r->hdr[2] << 16) |
                   ((uint32_t)r->hdr[3] << 8) | (uint32_t)r->hdr[4];
      if (r->msg_len > r->max_len) {
        *used = off;
        return SM_ETOOBIG;
      }
      r->buf_got = 0;
    }
  }

  size_t need = r->msg_len - r->buf_got;
  size_t avail = len - off;

  /* Fast path: the whole message is in this chunk and nothing was buffered. */
  if (r->buf_got == 0 && avail >= need) {
    msg->data = in + off;
    msg->len = r->msg_len;
    msg->compressed = r->compressed;
    *used = off + need;
    r->hdr_got = 0;
    return 1;
  }

  size_t take = avail < need ? avail : need;
  int err = reserve(r, r->buf_got + take);
  if (err) {
    *used = off;
    return err;
  }
  if (take) /* memcpy with NULL is undefined even for zero bytes */
    memcpy(r->buf + r->buf_got, in + off, take);
  r->buf_got += take;
  off += take;
  *used = off;
  if (r->buf_got < r->msg_len)
    return 0;
  msg->data = r->buf;
  msg->len = r->msg_len;
  msg->compressed = r->compressed;
  r->hdr_got = 0;
  return 1;
}
