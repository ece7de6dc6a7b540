/* reflection_desc.h - the protobuf descriptors compiled into the binary for gRPC server
 * reflection: generated at build time by embed_descriptors.py from protoc's FileDescriptorSet
 * of proto/ (every service the agent listener serves, with its imports). */
#ifndef SM_GRPC_REFLECTION_DESC_H
#define SM_GRPC_REFLECTION_DESC_H

#include <stddef.h>
#include <stdint.h>

typedef struct refl_file {
  const char *name;    /* "agent.proto" */
  const uint8_t *data; /* the serialized google.protobuf.FileDescriptorProto */
  size_t len;
  const int *deps; /* indexes into refl_files of its direct imports */
  size_t ndeps;
} refl_file;

typedef struct refl_symbol {
  const char *name; /* fully qualified, without a leading dot: "scan.AgentService.Connect" */
  int file;         /* index into refl_files */
} refl_symbol;

extern const refl_file refl_files[];
extern const size_t refl_nfiles;
extern const refl_symbol refl_symbols[];
extern const size_t refl_nsymbols;

#endif
