/* reflection.c - gRPC server reflection: ServerReflectionInfo is a bidirectional stream of
 * requests, each answered by one response in order. The descriptors are the FileDescriptorProto
 * bytes protoc produced at build time (reflection_desc.h); v1 and v1alpha share the wire format,
 * so both are served by the v1alpha message types. */
#include "grpc/reflection.h"

#include "grpc/reflection_desc.h"
#include "util/alloc.h"
#include "util/err.h"

#include "reflection_v1alpha.pb-c.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* Files the binary carries; a FileDescriptorResponse lists at most all of them. */
#define REFL_MAX_FILES 32

struct grpc_reflection {
  const grpc_service *const *table;
  size_t n;
};

typedef Grpc__Reflection__V1alpha__ServerReflectionRequest refl_req;
typedef Grpc__Reflection__V1alpha__ServerReflectionResponse refl_resp;

static int file_by_name(const char *name) {
  for (size_t i = 0; i < refl_nfiles; i++)
    if (strcmp(refl_files[i].name, name) == 0)
      return (int)i;
  return -1;
}

static int file_by_symbol(const char *sym) {
  if (sym[0] == '.') /* a fully qualified type name as descriptors write it */
    sym++;
  for (size_t i = 0; i < refl_nsymbols; i++)
    if (strcmp(refl_symbols[i].name, sym) == 0)
      return refl_symbols[i].file;
  return -1;
}

/* Appends file f and then, once each, the files it imports (transitively): a client can build
 * the file without asking again. */
static void add_file(int f, int *seen, ProtobufCBinaryData *out, size_t *n) {
  if (seen[f])
    return;
  seen[f] = 1;
  out[(*n)++] =
      (ProtobufCBinaryData){.len = refl_files[f].len, .data = (uint8_t *)refl_files[f].data};
  for (size_t i = 0; i < refl_files[f].ndeps; i++)
    add_file(refl_files[f].deps[i], seen, out, n);
}

static int pack(const refl_resp *resp, uint8_t **out, size_t *outlen) {
  size_t len = grpc__reflection__v1alpha__server_reflection_response__get_packed_size(resp);
  uint8_t *buf = sm_malloc(len ? len : 1);
  if (buf == NULL)
    return SM_ENOMEM;
  grpc__reflection__v1alpha__server_reflection_response__pack(resp, buf);
  *out = buf;
  *outlen = len;
  return 0;
}

int grpc_reflection_answer(const grpc_reflection *r, const uint8_t *data, size_t len, uint8_t **out,
                           size_t *outlen) {
  assert(refl_nfiles <= REFL_MAX_FILES);
  refl_req *req = grpc__reflection__v1alpha__server_reflection_request__unpack(NULL, len, data);
  if (req == NULL)
    return SM_EPARSE;
  refl_resp resp = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__INIT;
  resp.valid_host = req->host;
  resp.original_request = req;

  Grpc__Reflection__V1alpha__FileDescriptorResponse fdr =
      GRPC__REFLECTION__V1ALPHA__FILE_DESCRIPTOR_RESPONSE__INIT;
  ProtobufCBinaryData files[REFL_MAX_FILES];
  int seen[REFL_MAX_FILES] = {0};
  Grpc__Reflection__V1alpha__ListServiceResponse lsr =
      GRPC__REFLECTION__V1ALPHA__LIST_SERVICE_RESPONSE__INIT;
  Grpc__Reflection__V1alpha__ServiceResponse *svc = NULL, **svcp = NULL;
  Grpc__Reflection__V1alpha__ExtensionNumberResponse enr =
      GRPC__REFLECTION__V1ALPHA__EXTENSION_NUMBER_RESPONSE__INIT;
  Grpc__Reflection__V1alpha__ErrorResponse er = GRPC__REFLECTION__V1ALPHA__ERROR_RESPONSE__INIT;
  int f = -1, err = 0;

  switch (req->message_request_case) {
  case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
    f = file_by_name(req->file_by_filename);
    if (f < 0) {
      er.error_code = GRPC_NOT_FOUND;
      er.error_message = (char *)"file not found";
    }
    break;
  case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
    f = file_by_symbol(req->file_containing_symbol);
    if (f < 0) {
      er.error_code = GRPC_NOT_FOUND;
      er.error_message = (char *)"symbol not found";
    }
    break;
  case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
    /* None of the files declares an extension. */
    er.error_code = GRPC_NOT_FOUND;
    er.error_message = (char *)"extension not found";
    break;
  case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
    if (file_by_symbol(req->all_extension_numbers_of_type) < 0) {
      er.error_code = GRPC_NOT_FOUND;
      er.error_message = (char *)"type not found";
    } else {
      enr.base_type_name = req->all_extension_numbers_of_type;
      resp.message_response_case =
          GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
      resp.all_extension_numbers_response = &enr;
    }
    break;
  case GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
    svc = sm_calloc(r->n ? r->n : 1, sizeof(*svc));
    svcp = sm_calloc(r->n ? r->n : 1, sizeof(*svcp));
    if (svc == NULL || svcp == NULL) {
      err = SM_ENOMEM;
      break;
    }
    for (size_t i = 0; i < r->n; i++) {
      grpc__reflection__v1alpha__service_response__init(&svc[i]);
      svc[i].name = (char *)r->table[i]->name;
      svcp[i] = &svc[i];
    }
    lsr.n_service = r->n;
    lsr.service = svcp;
    resp.message_response_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
    resp.list_services_response = &lsr;
    break;
  default:
    er.error_code = GRPC_INVALID_ARGUMENT;
    er.error_message = (char *)"no request";
    break;
  }
  if (f >= 0) {
    size_t n = 0;
    add_file(f, seen, files, &n);
    fdr.n_file_descriptor_proto = n;
    fdr.file_descriptor_proto = files;
    resp.message_response_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
    resp.file_descriptor_response = &fdr;
  } else if (er.error_code) {
    resp.message_response_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    resp.error_response = &er;
  }
  if (err == 0)
    err = pack(&resp, out, outlen);
  free(svc);
  free(svcp);
  grpc__reflection__v1alpha__server_reflection_request__free_unpacked(req, NULL);
  return err;
}

static void info_message(grpc_call *call, const uint8_t *data, size_t len) {
  const grpc_reflection *r = grpc_call_service_data(call);
  uint8_t *out = NULL;
  size_t outlen = 0;
  int err = grpc_reflection_answer(r, data, len, &out, &outlen);
  if (err == SM_EPARSE) {
    grpc_call_finish(call, GRPC_INVALID_ARGUMENT, "cannot decode ServerReflectionRequest");
    return;
  }
  if (err == 0) {
    err = grpc_call_send_bytes(call, out, outlen);
    free(out);
  }
  /* A reflection client waits for each answer before asking again, so output over the bound
   * (SM_EAGAIN) means it is not reading: end the call rather than buffer more. */
  if (err)
    grpc_call_finish(call, grpc_status_from_err(err), "cannot answer");
}

static void info_half_close(grpc_call *call) {
  grpc_call_finish(call, GRPC_OK, NULL);
}

static const grpc_method reflection_methods[] = {
    {.name = "ServerReflectionInfo",
     .client_streaming = 1,
     .on_message = info_message,
     .on_half_close = info_half_close},
};

int grpc_reflection_create(const grpc_service *const *table, size_t n, grpc_service *v1alpha,
                           grpc_service *v1, grpc_reflection **out) {
  grpc_reflection *r = sm_calloc(1, sizeof(*r));
  if (r == NULL)
    return SM_ENOMEM;
  r->table = table;
  r->n = n;
  *v1alpha = (grpc_service){.name = "grpc.reflection.v1alpha.ServerReflection",
                            .methods = reflection_methods,
                            .nmethods = 1,
                            .ud = r};
  *v1 = (grpc_service){.name = "grpc.reflection.v1.ServerReflection",
                       .methods = reflection_methods,
                       .nmethods = 1,
                       .ud = r};
  *out = r;
  return 0;
}

void grpc_reflection_destroy(grpc_reflection *r) {
  free(r);
}
