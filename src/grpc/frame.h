/* frame.h - gRPC message framing (the 5-byte Length-Prefixed-Message of PROTOCOL-HTTP2):
 * one byte Compressed-Flag, four bytes big-endian Message-Length, then the message.
 *
 * The reader is incremental: feed it DATA frame payloads of any size; it yields each complete
 * message, without copying when a message lies whole inside one input chunk. Messages larger
 * than the reader's maximum are refused before any byte of them is buffered.
 *
 * A split message is buffered as its bytes arrive: the buffer grows geometrically (at most twice
 * the bytes received, and never past the length the prefix claims), so a peer that announces a
 * large message and sends little costs little. The owner bounds the buffer with buf_limit
 * (per-connection and global budgets, set before each read) and reads buf_cap after each call to
 * account for what the reader holds.
 */
#ifndef SM_GRPC_FRAME_H
#define SM_GRPC_FRAME_H

#include "util/err.h"
#include <stddef.h>
#include <stdint.h>

#define GRPC_FRAME_HEADER_LEN 5
/* A reassembly buffer this small is kept between messages (larger ones are given back). */
#define GRPC_FRAME_KEEP_BUF 4096

typedef struct grpc_frame_reader {
  size_t max_len;   /* largest accepted message */
  size_t buf_limit; /* largest buf_cap the next read may grow to (SIZE_MAX after init) */
  uint8_t hdr[GRPC_FRAME_HEADER_LEN];
  size_t hdr_got;   /* header bytes seen of the current message */
  uint32_t msg_len; /* length of the current message once the header is complete */
  int compressed;   /* Compressed-Flag of the current message */
  uint8_t *buf;     /* reassembly buffer for a message split across chunks */
  size_t buf_got;   /* bytes of the current message in buf */
  size_t buf_cap;   /* bytes allocated for buf: what the reader holds */
} grpc_frame_reader;

/* A complete message; `data` points into the input or into the reader's buffer and stays valid
 * until the next call of grpc_frame_read. */
typedef struct grpc_frame_msg {
  const uint8_t *data;
  size_t len;
  int compressed;
} grpc_frame_msg;

void grpc_frame_reader_init(grpc_frame_reader *r, size_t max_len);
void grpc_frame_reader_finish(grpc_frame_reader *r);

/* Consumes bytes from in[0..len). Sets *used to the bytes consumed. Returns 1 with *msg filled
 * when a message completed (call again with the rest of the input), 0 when all input was
 * consumed without completing one, SM_ETOOBIG when a message announces more than max_len bytes,
 * SM_EPROTO for a Compressed-Flag other than 0 or 1, SM_ELIMIT when buffering the input would
 * take buf_cap past buf_limit (nothing of it is buffered then), SM_ENOMEM. After an error the
 * reader is unusable (the stream must end). */
SM_MUST_CHECK int grpc_frame_read(grpc_frame_reader *r, const uint8_t *in, size_t len, size_t *used,
                                  grpc_frame_msg *msg);

/* Whether a message is partly received (a stream ending now would truncate it). */
int grpc_frame_reader_partial(const grpc_frame_reader *r);

/* Between messages: gives back a buffer larger than a small reusable one, so that an idle
 * stream holds (almost) no memory. Does nothing while a message is partly received. */
void grpc_frame_reader_trim(grpc_frame_reader *r);

/* Hands the buffer holding the message just returned by grpc_frame_read over to the caller (who
 * frees it): NULL when that message was not copied (it lay whole in the input). *cap is set to
 * the buffer's size. The reader starts the next message with no buffer. */
uint8_t *grpc_frame_reader_detach(grpc_frame_reader *r, const grpc_frame_msg *msg, size_t *cap);

/* Writes the 5-byte prefix of a message of `len` bytes. */
void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER_LEN], int compressed, uint32_t len);

#endif
