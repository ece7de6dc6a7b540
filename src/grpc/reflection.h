/* reflection.h - gRPC server reflection (grpc.reflection.v1alpha and grpc.reflection.v1
 * ServerReflection/ServerReflectionInfo) from the descriptors compiled into the binary
 * (grpc/reflection_desc.h), so `grpcurl -plaintext host:port list` and `describe` work. */
#ifndef SM_GRPC_REFLECTION_H
#define SM_GRPC_REFLECTION_H

#include "grpc/call.h"
#include "util/err.h"

#include <stddef.h>

typedef struct grpc_reflection grpc_reflection;

/* Creates the reflection service and fills its two table entries: *v1alpha
 * ("grpc.reflection.v1alpha.ServerReflection") and *v1 ("grpc.reflection.v1.ServerReflection"),
 * whose messages are the same on the wire. list_services answers the names in table[0..n) at
 * request time: table must outlive the service (it may include the two entries themselves).
 * Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK int grpc_reflection_create(const grpc_service *const *table, size_t n,
                                         grpc_service *v1alpha, grpc_service *v1,
                                         grpc_reflection **out);

/* Frees it (its calls must be closed; they keep no state). NULL is fine. */
void grpc_reflection_destroy(grpc_reflection *r);

/* Answers one serialized ServerReflectionRequest: *out is the serialized
 * ServerReflectionResponse (free() it). Exposed for unit tests. Returns 0, SM_EPARSE when the
 * request does not decode, or SM_ENOMEM. */
SM_MUST_CHECK int grpc_reflection_answer(const grpc_reflection *r, const uint8_t *req, size_t len,
                                         uint8_t **out, size_t *outlen);

#endif
