/* health.c - grpc.health.v1.Health: Check answers at once, Watch streams every change. */
#include "grpc/services.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include "health.pb-c.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define HEALTH_MAX_SERVICES 8
#define HEALTH_NAME_MAX 200

typedef struct watcher {
  sm_list node; /* on grpc_health.watchers */
  grpc_call *call;
  int sent; /* last status sent; -1 none */
  char service[HEALTH_NAME_MAX + 1];
} watcher;

struct grpc_health {
  struct {
    char *name;
    int status;
  } known[HEALTH_MAX_SERVICES];
  size_t nknown;
  sm_list watchers; /* watcher.node: open Watch calls that were answered once */
};

/* The status of a service for Watch: SERVICE_UNKNOWN when it is not known. */
static int status_of(const grpc_health *h, const char *service, int *known) {
  for (size_t i = 0; i < h->nknown; i++) {
    if (strcmp(h->known[i].name, service) == 0) {
      *known = 1;
      return h->known[i].status;
    }
  }
  *known = 0;
  return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
}

static int send_status(grpc_call *call, int status) {
  Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
  return grpc_call_send(call, &r.base);
}

/* Decodes the request's service name into out; 0 or an error already reported to the call. */
static int request_service(grpc_call *call, const uint8_t *data, size_t len, char *out) {
  Grpc__Health__V1__HealthCheckRequest *req =
      grpc__health__v1__health_check_request__unpack(NULL, len, data);
  if (req == NULL) {
    grpc_call_finish(call, GRPC_INTERNAL, "cannot decode grpc.health.v1.HealthCheckRequest");
    return SM_EPARSE;
  }
  int err = 0;
  if (strlen(req->service) > HEALTH_NAME_MAX) {
    grpc_call_finish(call, GRPC_INVALID_ARGUMENT, "service name too long");
    err = SM_EINVAL;
  } else {
    strcpy(out, req->service);
  }
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
  return err;
}

static void check_message(grpc_call *call, const uint8_t *data, size_t len) {
  grpc_health *h = grpc_call_service_data(call);
  char service[HEALTH_NAME_MAX + 1];
  if (request_service(call, data, len, service) != 0)
    return;
  int known;
  int status = status_of(h, service, &known);
  if (!known) {
    grpc_call_finish(call, GRPC_NOT_FOUND, "unknown service");
    return;
  }
  int err = send_status(call, status);
  grpc_call_finish(call, err ? grpc_status_from_err(err) : GRPC_OK, NULL);
}

static void watch_message(grpc_call *call, const uint8_t *data, size_t len) {
  grpc_health *h = grpc_call_service_data(call);
  watcher *w = sm_calloc(1, sizeof(*w));
  if (w == NULL) {
    grpc_call_finish(call, GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (request_service(call, data, len, w->service) != 0) {
    free(w);
    return;
  }
  int known;
  sm_list_init(&w->node);
  w->call = call;
  w->sent = status_of(h, w->service, &known);
  int err = send_status(call, w->sent);
  if (err) {
    free(w);
    grpc_call_finish(call, grpc_status_from_err(err), NULL);
    return;
  }
  sm_list_push_back(&h->watchers, &w->node);
  grpc_call_set_data(call, w);
}

static void watch_close(grpc_call *call, int reason) {
  (void)reason;
  watcher *w = grpc_call_data(call);
  if (w == NULL)
    return;
  assert(sm_list_linked(&w->node));
  sm_list_remove(&w->node);
  grpc_call_set_data(call, NULL);
  free(w);
}

static const grpc_method health_methods[] = {
    {.name = "Check", .on_message = check_message},
    {.name = "Watch", .on_message = watch_message, .on_close = watch_close},
};

int grpc_health_set(grpc_health *h, const char *service, int status) {
  int known;
  status_of(h, service, &known);
  if (!known)
    return SM_ENOENT;
  for (size_t i = 0; i < h->nknown; i++)
    if (strcmp(h->known[i].name, service) == 0)
      h->known[i].status = status;
  SM_LIST_FOREACH(it, &h->watchers) {
    watcher *w = SM_LIST_ENTRY(it, watcher, node);
    if (w->sent == status || strcmp(w->service, service) != 0)
      continue;
    /* A watcher whose connection is backed up misses this one; it gets the next change. */
    if (send_status(w->call, status) == 0)
      w->sent = status;
  }
  return 0;
}

void grpc_health_set_all(grpc_health *h, int status) {
  for (size_t i = 0; i < h->nknown; i++) {
    int err = grpc_health_set(h, h->known[i].name, status);
    assert(err == 0); /* every known name is known */
    (void)err;
  }
}

int grpc_health_create(const char *const *names, grpc_service *svc, grpc_health **out) {
  grpc_health *h = sm_calloc(1, sizeof(*h));
  if (h == NULL)
    return SM_ENOMEM;
  sm_list_init(&h->watchers);
  const char *all[HEALTH_MAX_SERVICES];
  size_t n = 0;
  all[n++] = "";
  for (size_t i = 0; names && names[i] && n < HEALTH_MAX_SERVICES; i++)
    all[n++] = names[i];
  for (size_t i = 0; i < n; i++) {
    h->known[i].name = sm_strdup(all[i]);
    if (h->known[i].name == NULL) {
      grpc_health_destroy(h);
      return SM_ENOMEM;
    }
    h->known[i].status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    h->nknown++;
  }
  svc->name = "grpc.health.v1.Health";
  svc->methods = health_methods;
  svc->nmethods = sizeof(health_methods) / sizeof(health_methods[0]);
  svc->ud = h;
  *out = h;
  return 0;
}

void grpc_health_destroy(grpc_health *h) {
  if (h == NULL)
    return;
  assert(sm_list_empty(&h->watchers)); /* its calls must be closed first */
  for (size_t i = 0; i < h->nknown; i++)
    free(h->known[i].name);
  free(h);
}
