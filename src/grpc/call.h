/* call.h - a gRPC call (one HTTP/2 stream) as a service handler sees it, and the service table
 * that routes /<service>/<method> to handlers.
 *
 * A second service or protocol is one more grpc_service in the table given to the server: the
 * session parses and checks the request (POST, content-type, te, grpc-timeout, framing, sizes)
 * and hands complete messages to the method; the method answers with grpc_call_send and
 * grpc_call_finish. Everything runs on the loop; no callback runs inside the call that caused
 * it except where said.
 */
#ifndef SM_GRPC_CALL_H
#define SM_GRPC_CALL_H

#include "util/err.h"
#include "grpc/status.h"

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

typedef struct grpc_call grpc_call;

typedef struct grpc_method {
  const char *name; /* "Connect": the last part of :path */
  /* 0: exactly one request message (more, or none, is INTERNAL, answered by the session); the
   * method gets it once the request has ended (END_STREAM), so it never answers a request that
   * turns out to be invalid. */
  int client_streaming;
  /* The request headers were accepted. The handler may finish the call here. */
  void (*on_start)(grpc_call *call);
  /* One complete, uncompressed request message; data is valid during the call only. Not called
   * once the call is finishing. */
  void (*on_message)(grpc_call *call, const uint8_t *data, size_t len);
  /* The client closed its side (END_STREAM); optional. A unary method gets on_message first,
   * right before (and on_half_close only when on_message did not finish the call). */
  void (*on_half_close)(grpc_call *call);
  /* The stream is gone; called exactly once for every started call, and the last callback.
   * reason: 0 when the response was sent in full, SM_ECANCELED when the client reset the
   * stream, SM_EPROTO for a stream error, or why the connection went away (SM_ECLOSED by the
   * peer, SM_ETIMEDOUT stalled or unanswered keepalive, SM_ECANCELED server closing). */
  void (*on_close)(grpc_call *call, int reason);
} grpc_method;

typedef struct grpc_service {
  const char *name; /* "scan.AgentService" */
  const grpc_method *methods;
  size_t nmethods;
  void *ud; /* the service's context: grpc_call_service_data() */
} grpc_service;

/* The service's ud. */
void *grpc_call_service_data(const grpc_call *call);

/* Per-call data of the handler. */
void *grpc_call_data(const grpc_call *call);
void grpc_call_set_data(grpc_call *call, void *data);

/* The value of a request header that is custom metadata (not a pseudo-header, content-type,
 * te or a grpc- header), e.g. "agent-id" or "authorization"; NULL when absent. Names are
 * lower-case. Valid for the call's lifetime. */
const char *grpc_call_header(const grpc_call *call, const char *name);

/* "/scan.AgentService/Connect". */
const char *grpc_call_path(const grpc_call *call);

/* The peer's address as text ("127.0.0.1:51234"); never NULL. */
const char *grpc_call_peer(const grpc_call *call);

/* Sends the response headers now (normally they go with the first message). A streaming
 * method calls it to tell the client it was accepted. Returns 0 or SM_ECLOSED. */
SM_MUST_CHECK int grpc_call_send_headers(grpc_call *call);

/* Encodes msg and queues it as one Length-Prefixed-Message. Returns 0, SM_EAGAIN when the
 * connection's output is over GRPC_MAX_OUTPUT_BYTES (nothing queued: try later), SM_ECLOSED
 * once the call is finishing, SM_ETOOBIG above the maximum message size, or SM_ENOMEM. */
SM_MUST_CHECK int grpc_call_send(grpc_call *call, const ProtobufCMessage *msg);

/* The same with an already encoded message. */
SM_MUST_CHECK int grpc_call_send_bytes(grpc_call *call, const uint8_t *data, size_t len);

/* Ends the call with a status: trailers after the queued messages, or a Trailers-Only response
 * when nothing was sent. message may be NULL. A second call is ignored. on_close follows later,
 * never inside this call. */
void grpc_call_finish(grpc_call *call, int status, const char *message);

/* Whether grpc_call_finish was called (or the stream is gone). */
int grpc_call_finished(const grpc_call *call);

/* Finishes the call with status/message if it is still open after ms milliseconds; 0 cancels.
 * One such timer per call (the first-message timeout of a stream, for instance). message is
 * not copied: it must stay valid while the timer is set (a string the service keeps). */
void grpc_call_set_timeout(grpc_call *call, uint64_t ms, int status, const char *message);

#endif
