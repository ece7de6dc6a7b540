/* services.h - the services the agent listener serves, each one entry of the service table:
 * scan.AgentService (agent_service.c), hello.HelloService (hello_service.c) and
 * grpc.health.v1.Health (health.c). A second agent
 * protocol is one more create function here and one more entry in server.c's table. */
#ifndef SM_GRPC_SERVICES_H
#define SM_GRPC_SERVICES_H

#include "util/err.h"
#include "core/registry.h"
#include "grpc/call.h"

#include <uv.h>

/* ---- scan.AgentService: Ping and Connect, feeding the agent registry ---- */

typedef struct grpc_agent_service grpc_agent_service;

/* Creates the service over reg and fills *svc (its table entry). first_message_ms: a Connect
 * stream that has not registered by then is ended (0: never). Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK int grpc_agent_service_create(agent_registry *reg, uint64_t first_message_ms,
                                            grpc_service *svc, grpc_agent_service **out);

/* Frees the service (its calls must be closed). NULL is fine. */
void grpc_agent_service_destroy(grpc_agent_service *as);

struct agent_tokens;
/* Requires agent tokens (grpc/agent_auth.h) on Ping and Connect from now on; NULL: none. The
 * tokens must outlive the service. */
void grpc_agent_service_set_tokens(grpc_agent_service *as, const struct agent_tokens *tokens);

/* ---- hello.HelloService: SiriusScan's agents (Ping, ExecuteCommand, ConnectStream) over the
 * same registry; see hello_service.c for how commands and results are translated ---- */

typedef struct grpc_hello_service grpc_hello_service;

/* Commands a hello agent is given at once (its max_concurrent: the protocol has no metadata to
 * declare it; SiriusScan's agent runs each command in its own goroutine). */
#define GRPC_HELLO_MAX_CONCURRENT 8
/* Commands awaiting a result on one stream; send answers SM_EAGAIN beyond it. */
#define GRPC_HELLO_MAX_OUTSTANDING 1024

typedef struct grpc_hello_stats {
  uint64_t results;   /* RESULT messages received */
  uint64_t unmatched; /* of which matched no outstanding command
                         (sirius_hello_unmatched_results_total) */
  uint64_t rejected;  /* commands refused: a type hello agents cannot run */
} grpc_hello_stats;

/* Creates the service over reg and fills *svc. Refused commands are reported through a timer
 * on loop. first_message_ms as for scan.AgentService. Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK int grpc_hello_service_create(uv_loop_t *loop, agent_registry *reg,
                                            uint64_t first_message_ms, grpc_service *svc,
                                            grpc_hello_service **out);

/* Closes its timer and frees it in the close callback (run the loop once more); its calls must
 * be closed. NULL is fine. */
void grpc_hello_service_destroy(grpc_hello_service *hs);

/* Agent tokens, as grpc_agent_service_set_tokens. */
void grpc_hello_service_set_tokens(grpc_hello_service *hs, const struct agent_tokens *tokens);

/* Counters since creation. */
void grpc_hello_service_get_stats(const grpc_hello_service *hs, grpc_hello_stats *out);

/* ---- grpc.health.v1.Health: Check and Watch ---- */

typedef struct grpc_health grpc_health;

/* Creates the health service and fills *svc. Known services start SERVING: "" and those in
 * names (NULL-terminated). Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK int grpc_health_create(const char *const *names, grpc_service *svc,
                                     grpc_health **out);

/* Sets a known service's status (grpc.health.v1 ServingStatus: 1 SERVING, 2 NOT_SERVING);
 * every Watch on it hears of the change. Returns 0 or SM_ENOENT. */
SM_MUST_CHECK int grpc_health_set(grpc_health *h, const char *service, int status);

/* Sets every known service's status. */
void grpc_health_set_all(grpc_health *h, int status);

/* Frees it (its calls must be closed). NULL is fine. */
void grpc_health_destroy(grpc_health *h);

#endif
