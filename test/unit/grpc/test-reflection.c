/* Unit tests of grpc/reflection.c: every request kind answered from the compiled-in
 * descriptors, errors for unknown names, and allocation failure at each point. */
#include "grpc/reflection.h"
#include "grpc/reflection_desc.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"

#include "reflection_v1alpha.pb-c.h"

#include <stdlib.h>

typedef Grpc__Reflection__V1alpha__ServerReflectionRequest req_t;
typedef Grpc__Reflection__V1alpha__ServerReflectionResponse resp_t;

static grpc_service svcs[4];
static const grpc_service *table[4] = {&svcs[0], &svcs[1], &svcs[2], &svcs[3]};

static resp_t *ask(const grpc_reflection *r, req_t *q) {
  size_t len = grpc__reflection__v1alpha__server_reflection_request__get_packed_size(q);
  uint8_t buf[512];
  T_ASSERT(len <= sizeof(buf));
  grpc__reflection__v1alpha__server_reflection_request__pack(q, buf);
  uint8_t *out = NULL;
  size_t outlen = 0;
  T_EQ_INT(grpc_reflection_answer(r, buf, len, &out, &outlen), 0);
  resp_t *resp = grpc__reflection__v1alpha__server_reflection_response__unpack(NULL, outlen, out);
  free(out);
  T_ASSERT(resp != NULL);
  return resp;
}

static void test_answers(void) {
  grpc_reflection *r;
  svcs[0].name = "scan.AgentService";
  svcs[1].name = "hello.HelloService";
  T_EQ_INT(grpc_reflection_create(table, 4, &svcs[2], &svcs[3], &r), 0);
  T_EQ_STR(svcs[2].name, "grpc.reflection.v1alpha.ServerReflection");
  T_EQ_STR(svcs[3].name, "grpc.reflection.v1.ServerReflection");

  req_t q = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
  q.host = (char *)"h";
  q.message_request_case =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
  q.list_services = (char *)"";
  resp_t *a = ask(r, &q);
  T_EQ_STR(a->valid_host, "h");
  T_ASSERT(a->original_request != NULL);
  T_EQ_INT(a->list_services_response->n_service, 4);
  T_EQ_STR(a->list_services_response->service[1]->name, "hello.HelloService");
  T_EQ_STR(a->list_services_response->service[3]->name, "grpc.reflection.v1.ServerReflection");
  grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);

  const char *syms[] = {"scan.AgentService.Connect", ".hello.ServerMessage", "hello.MessageType",
                        "grpc.health.v1.HealthCheckResponse.ServingStatus"};
  const char *files[] = {"agent.proto", "hello.proto", "hello.proto", "health.proto"};
  for (int i = 0; i < 4; i++) {
    q.message_request_case =
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
    q.file_containing_symbol = (char *)syms[i];
    a = ask(r, &q);
    T_EQ_INT(
        a->message_response_case,
        GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE);
    T_EQ_INT(a->file_descriptor_response->n_file_descriptor_proto, 1);
    int found = 0;
    for (size_t f = 0; f < refl_nfiles; f++)
      if (strcmp(refl_files[f].name, files[i]) == 0) {
        found = 1;
        T_EQ_INT(a->file_descriptor_response->file_descriptor_proto[0].len, refl_files[f].len);
        T_ASSERT(memcmp(a->file_descriptor_response->file_descriptor_proto[0].data,
                        refl_files[f].data, refl_files[f].len) == 0);
      }
    T_ASSERT(found);
    grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);
  }

  q.message_request_case =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME;
  q.file_by_filename = (char *)"reflection_v1.proto";
  a = ask(r, &q);
  T_EQ_INT(a->file_descriptor_response->n_file_descriptor_proto, 1);
  grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);

  /* unknown names: NOT_FOUND on the stream, which stays open */
  q.file_by_filename = (char *)"nope.proto";
  a = ask(r, &q);
  T_EQ_INT(a->error_response->error_code, GRPC_NOT_FOUND);
  grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);
  q.message_request_case =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL;
  q.file_containing_symbol = (char *)"scan";
  a = ask(r, &q);
  T_EQ_INT(a->error_response->error_code, GRPC_NOT_FOUND);
  grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);
  q.message_request_case =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST__NOT_SET;
  a = ask(r, &q);
  T_EQ_INT(a->error_response->error_code, GRPC_INVALID_ARGUMENT);
  grpc__reflection__v1alpha__server_reflection_response__free_unpacked(a, NULL);

  /* bytes that are no request */
  uint8_t *out = NULL;
  size_t outlen = 0;
  const uint8_t junk[] = {0xff, 0xff, 0xff};
  T_EQ_INT(grpc_reflection_answer(r, junk, sizeof(junk), &out, &outlen), SM_EPARSE);
  T_ASSERT(out == NULL);
  grpc_reflection_destroy(r);
}

/* Allocation failure at every point: an error, nothing leaked (ASan), then it works. */
static void test_alloc_failure(void) {
  grpc_reflection *r = NULL;
  int nth;
  for (nth = 0;; nth++) {
    sm_alloc_fail_at(nth, 0);
    int err = grpc_reflection_create(table, 4, &svcs[2], &svcs[3], &r);
    sm_alloc_fail_at(-1, 0);
    if (err == 0)
      break;
    T_EQ_INT(err, SM_ENOMEM);
  }
  T_ASSERT(nth >= 1);
  req_t q = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
  q.message_request_case =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
  q.list_services = (char *)"";
  uint8_t buf[64];
  size_t len = grpc__reflection__v1alpha__server_reflection_request__get_packed_size(&q);
  grpc__reflection__v1alpha__server_reflection_request__pack(&q, buf);
  for (nth = 0;; nth++) {
    uint8_t *out = NULL;
    size_t outlen = 0;
    sm_alloc_fail_at(nth, 0);
    int err = grpc_reflection_answer(r, buf, len, &out, &outlen);
    sm_alloc_fail_at(-1, 0);
    if (err == 0) {
      free(out);
      break;
    }
    T_EQ_INT(err, SM_ENOMEM);
    T_ASSERT(out == NULL);
  }
  T_ASSERT(nth >= 3); /* list, list pointers, the packed response */
  grpc_reflection_destroy(r);
}

int main(void) {
  svcs[0].name = "scan.AgentService";
  svcs[1].name = "hello.HelloService";
  T_RUN(test_answers);
  T_RUN(test_alloc_failure);
  return t_done();
}
