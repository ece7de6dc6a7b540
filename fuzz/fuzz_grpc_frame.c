/* fuzz_grpc_frame - gRPC message reassembly (grpc/frame.c) and the protobuf decode of every
 * message an agent sends (scan.PingRequest, scan.AgentMessage, grpc.health.v1
 * HealthCheckRequest).
 *
 * Input: byte 0 picks the reader's maximum message size, bytes 1-2 seed the chunking, the rest
 * is the stream of Length-Prefixed-Messages. The stream is read twice, whole and cut into chunks
 * of pseudo-random sizes (as DATA frames arrive): both readings must yield the same messages and
 * end the same way (the differential oracle). Each message is decoded as every agent message
 * type; whatever decodes is encoded again and must decode to the same encoding. */
#include "fuzz.h"

#include "agent.pb-c.h"
#include "health.pb-c.h"
#include "grpc/frame.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 64

typedef struct reading {
  size_t n;
  uint8_t *msg[MAX_MSGS];
  size_t len[MAX_MSGS];
  int compressed[MAX_MSGS];
  int end;     /* 0 (input consumed) or the error that ended the reading */
  int partial; /* grpc_frame_reader_partial at the end */
} reading;

static void reading_free(reading *r) {
  for (size_t i = 0; i < r->n && i < MAX_MSGS; i++)
    free(r->msg[i]);
}

static uint32_t next_rand(uint32_t *s) {
  *s = *s * 1103515245u + 12345u;
  return *s >> 16;
}

/* Reads in[0..len) in chunks of pseudo-random sizes (seed 0: one chunk). */
static void read_stream(size_t max_len, const uint8_t *in, size_t len, uint32_t seed,
                        reading *out) {
  grpc_frame_reader r;
  grpc_frame_reader_init(&r, max_len);
  memset(out, 0, sizeof(*out));
  size_t off = 0;
  while (off < len && out->end == 0) {
    size_t chunk = len - off;
    if (seed != 0) {
      size_t c = 1 + next_rand(&seed) % 64;
      chunk = c < chunk ? c : chunk;
    }
    const uint8_t *p = in + off;
    size_t left = chunk;
    while (left > 0) {
      size_t used = 0;
      grpc_frame_msg m;
      int rc = grpc_frame_read(&r, p, left, &used, &m);
      if (used > left)
        fz_fail("grpc_frame_read used %zu of %zu bytes", used, left);
      p += used;
      left -= used;
      if (rc < 0) {
        out->end = rc;
        break;
      }
      if (rc == 0) {
        if (left != 0)
          fz_fail("grpc_frame_read returned 0 with %zu bytes unused", left);
        break;
      }
      if (m.len > max_len)
        fz_fail("message of %zu bytes above the maximum %zu", m.len, max_len);
      if (out->n < MAX_MSGS) {
        out->msg[out->n] = malloc(m.len ? m.len : 1);
        if (m.len)
          memcpy(out->msg[out->n], m.data, m.len);
        out->len[out->n] = m.len;
        out->compressed[out->n] = m.compressed;
      }
      out->n++;
      if (left == 0)
        break;
    }
    off += chunk - left;
    if (out->end)
      break;
  }
  out->partial = grpc_frame_reader_partial(&r);
  grpc_frame_reader_finish(&r);
}

/* Drops the unknown fields of m and of every message inside it. The manager never encodes a
 * message it decoded, so unknown fields never travel on; and protobuf-c keeps some it should
 * refuse: a field-0 tag written as an overlong varint ("80 00") decodes, is kept as unknown,
 * and is encoded again as a plain 0x00 tag, which no decoder accepts
 * (fuzz/crashes/grpc_frame/field0-overlong-tag). */
static void strip_unknown(ProtobufCMessage *m) {
  for (unsigned i = 0; i < m->n_unknown_fields; i++)
    free(m->unknown_fields[i].data);
  free(m->unknown_fields);
  m->unknown_fields = NULL;
  m->n_unknown_fields = 0;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    char *at = (char *)m + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(size_t *)((char *)m + f->quantifier_offset);
      ProtobufCMessage **sub = *(ProtobufCMessage ***)at;
      for (size_t k = 0; k < n; k++)
        if (sub[k] != NULL)
          strip_unknown(sub[k]);
    } else {
      ProtobufCMessage *sub = *(ProtobufCMessage **)at;
      if (sub != NULL && (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
                          *(uint32_t *)((char *)m + f->quantifier_offset) == f->id))
        strip_unknown(sub);
    }
  }
}

/* Decodes msg as type, encodes it again (without unknown fields), and checks the second
 * encoding decodes to the same bytes (protobuf-c's canonical form is stable after one round). */
static void roundtrip(const ProtobufCMessageDescriptor *d, const uint8_t *msg, size_t len) {
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, msg);
  if (m == NULL)
    return;
  if (!protobuf_c_message_check(m))
    fz_fail("%s: decoded message fails protobuf_c_message_check", d->name);
  strip_unknown(m);
  size_t n1 = protobuf_c_message_get_packed_size(m);
  uint8_t *b1 = malloc(n1 ? n1 : 1);
  if (protobuf_c_message_pack(m, b1) != n1)
    fz_fail("%s: packed size differs", d->name);
  protobuf_c_message_free_unpacked(m, NULL);
  ProtobufCMessage *m2 = protobuf_c_message_unpack(d, NULL, n1, b1);
  if (m2 == NULL)
    fz_fail("%s: re-encoding does not decode", d->name);
  size_t n2 = protobuf_c_message_get_packed_size(m2);
  uint8_t *b2 = malloc(n2 ? n2 : 1);
  protobuf_c_message_pack(m2, b2);
  if (n1 != n2 || memcmp(b1, b2, n1) != 0)
    fz_fail("%s: encoding is not stable", d->name);
  protobuf_c_message_free_unpacked(m2, NULL);
  free(b1);
  free(b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  static const size_t maxes[] = {0, 1, 5, 64, 4096, 65536, 4u << 20, 16u << 20};
  size_t max_len = maxes[fz_u8(&in) % (sizeof(maxes) / sizeof(maxes[0]))];
  uint32_t seed = fz_u16(&in);

  reading whole, cut;
  read_stream(max_len, in.p, in.n, 0, &whole);
  read_stream(max_len, in.p, in.n, seed | 1u, &cut);
  if (whole.n != cut.n || whole.end != cut.end || whole.partial != cut.partial)
    fz_fail("whole reading: %zu messages end %d partial %d; in chunks: %zu end %d partial %d",
            whole.n, whole.end, whole.partial, cut.n, cut.end, cut.partial);
  for (size_t i = 0; i < whole.n && i < MAX_MSGS; i++) {
    if (whole.len[i] != cut.len[i] || whole.compressed[i] != cut.compressed[i] ||
        memcmp(whole.msg[i], cut.msg[i], whole.len[i]) != 0)
      fz_fail("message %zu differs between the whole and the chunked reading", i);
    roundtrip(&scan__ping_request__descriptor, whole.msg[i], whole.len[i]);
    roundtrip(&scan__agent_message__descriptor, whole.msg[i], whole.len[i]);
    roundtrip(&grpc__health__v1__health_check_request__descriptor, whole.msg[i], whole.len[i]);
  }
  reading_free(&whole);
  reading_free(&cut);
  return 0;
}
