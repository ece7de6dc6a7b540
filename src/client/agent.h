/* agent.h - simulated agents: a fleet of one or many agents on one loop, each holding one
 * Connect stream to the manager, registering, heartbeating and executing commands, with
 * reconnects (exponential backoff, full jitter) and the failure modes of client_opts.
 */
#ifndef SM_CLIENT_AGENT_H
#define SM_CLIENT_AGENT_H

#include <stdint.h>
#include <uv.h>

#include "client/opts.h"

typedef struct client_fleet client_fleet;

/* Counters of a fleet since its start. */
typedef struct client_stats {
  uint32_t agents;                                 /* agents in the fleet */
  uint32_t connected;                              /* agents with a usable stream now */
  uint64_t connects;                               /* streams opened (registrations sent) */
  uint64_t disconnects;                            /* streams lost or ended by the server */
  uint64_t commands;                               /* commands received */
  uint64_t results;                                /* final results sent */
  uint64_t completed, failed, cancelled, rejected; /* final results by status */
  uint64_t heartbeats;                             /* heartbeats sent */
  uint64_t acks;                                   /* hello: ACKNOWLEDGMENT messages received */
} client_stats;

/* Creates a fleet from parsed options: resolves --server, --source-addrs, the TLS context.
 * Returns 0, SM_EADDR (server or source address), SM_ETLS (certificate files), SM_ENOMEM; on
 * error err holds a one-line reason. Nothing is started. */
int client_fleet_create(uv_loop_t *loop, const client_opts *o, client_fleet **out, char *err,
                        size_t errlen);

/* Starts connecting every agent (spread over --ramp-ms). */
void client_fleet_start(client_fleet *f);

/* Graceful stop: ends every stream (END_STREAM, GOAWAY), stops running commands, closes every
 * handle; `done` runs once all are closed, after which client_fleet_destroy may be called. */
void client_fleet_stop(client_fleet *f, void (*done)(client_fleet *f, void *ud), void *ud);

/* Frees a stopped fleet (or one never started). NULL is fine. */
void client_fleet_destroy(client_fleet *f);

/* The counters so far. */
void client_fleet_stats(const client_fleet *f, client_stats *out);

#endif
