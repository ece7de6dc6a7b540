/* status.h - gRPC status codes, the grpc-message percent-encoding, grpc-timeout values, and the
 * translation of the project's SM_E* codes into statuses (done once, here). */
#ifndef SM_GRPC_STATUS_H
#define SM_GRPC_STATUS_H

#include "util/err.h"
#include <stddef.h>
#include <stdint.h>

/* gRPC status codes (doc/statuscodes.md of gRPC). */
enum grpc_status {
  GRPC_OK = 0,
  GRPC_CANCELLED = 1,
  GRPC_UNKNOWN = 2,
  GRPC_INVALID_ARGUMENT = 3,
  GRPC_DEADLINE_EXCEEDED = 4,
  GRPC_NOT_FOUND = 5,
  GRPC_ALREADY_EXISTS = 6,
  GRPC_PERMISSION_DENIED = 7,
  GRPC_RESOURCE_EXHAUSTED = 8,
  GRPC_FAILED_PRECONDITION = 9,
  GRPC_ABORTED = 10,
  GRPC_OUT_OF_RANGE = 11,
  GRPC_UNIMPLEMENTED = 12,
  GRPC_INTERNAL = 13,
  GRPC_UNAVAILABLE = 14,
  GRPC_DATA_LOSS = 15,
  GRPC_UNAUTHENTICATED = 16,
};
#define GRPC_STATUS_COUNT 17

/* "OK", "CANCELLED", ...; "UNKNOWN" for values out of range. */
const char *grpc_status_name(int status);

/* The status that reports an SM_E* code to a peer: SM_EEXIST (replaced) -> ABORTED,
 * SM_ETIMEDOUT and SM_ECANCELED (pruned, shutting down) -> UNAVAILABLE, SM_EAUTH ->
 * UNAUTHENTICATED, SM_ETOOBIG and SM_ELIMIT -> RESOURCE_EXHAUSTED, ...; 0 -> OK. */
int grpc_status_from_err(int err);

/* Percent-encodes msg for grpc-message: bytes outside 0x20..0x7E and '%' become %XX. Writes
 * at most cap-1 bytes and a NUL (cutting only between escapes); returns the length written. */
size_t grpc_percent_encode(const char *msg, char *out, size_t cap);

/* Decodes a grpc-message value in place; invalid escapes are kept as they are. Returns the new
 * length. */
size_t grpc_percent_decode(char *s, size_t len);

/* Parses a grpc-timeout value ("1*8DIGIT unit", unit one of H M S m u n) into milliseconds,
 * rounding up (1n is 1 ms; 0 stays 0). Returns 0 or SM_EPARSE. */
SM_MUST_CHECK int grpc_timeout_parse(const char *v, size_t len, uint64_t *ms);

#endif
