/* session.h - the nghttp2 adapter: one server-side HTTP/2 connection carrying gRPC calls.
 *
 * Knows neither sockets nor TLS: the transport hands it received bytes (grpc_session_recv),
 * asks it for output once per loop turn (grpc_session_flush) and runs its timer
 * (grpc_session_timer), all through grpc_session_io. Unit tests drive it with an in-memory
 * HTTP/2 client.
 */
#ifndef SM_GRPC_SESSION_H
#define SM_GRPC_SESSION_H

#include "util/err.h"
#include "grpc/call.h"

#include <stddef.h>
#include <stdint.h>

typedef struct grpc_session grpc_session;

/* Request bytes held by every session of a server (partial messages, and the message of a unary
 * call until the client half-closes), against GRPC_MAX_BUFFERED_BYTES. Owned by the server. */
typedef struct grpc_buffer_pool {
  size_t used;             /* bytes held now */
  size_t max;              /* 0: no global bound */
  uint64_t refused;        /* calls refused because the pool was full */
  uint64_t warned_ms;      /* last warn line (rate-limited) */
  uint64_t warned_refused; /* `refused` at that line */
} grpc_buffer_pool;

/* Limits and the service table; shared by every session of a server, must outlive them. */
typedef struct grpc_session_config {
  const grpc_service *const *services; /* the service table */
  size_t nservices;
  size_t max_message_bytes;      /* GRPC_MAX_MESSAGE_BYTES, either direction */
  uint32_t max_streams;          /* SETTINGS_MAX_CONCURRENT_STREAMS */
  uint32_t max_header_bytes;     /* SETTINGS_MAX_HEADER_LIST_SIZE, enforced per request */
  uint32_t stream_window;        /* SETTINGS_INITIAL_WINDOW_SIZE */
  uint32_t connection_window;    /* receive window of the connection */
  uint64_t keepalive_ms;         /* PING after this much silence; 0: never */
  uint64_t keepalive_timeout_ms; /* close when the PING gets no answer in this */
  uint64_t idle_ms;              /* close a connection without calls after this; 0: never */
  uint64_t preface_ms;           /* the client preface and first frame must arrive in this of the
                                    session's start, else the connection is closed; 0: no bound */
  size_t max_output_bytes;       /* stop producing above this (transport + queued messages) */
  uint64_t stall_ms;             /* close when output stays above the maximum this long */
  /* Request buffering (see grpc_buffer_pool): a connection holding more than
   * max_buffered_per_conn bytes is closed with GOAWAY ENHANCE_YOUR_CALM; a call that would take
   * the pool past its max ends with RESOURCE_EXHAUSTED; a request message (for a unary method:
   * the request up to END_STREAM) not complete message_timeout_ms after its first byte ends the
   * call with DEADLINE_EXCEEDED. 0 / NULL: no such bound. */
  size_t max_buffered_per_conn;
  grpc_buffer_pool *pool;
  uint64_t message_timeout_ms;
  /* Optional call observer (metrics): on_call_start when a call to a served method starts;
   * on_call_end when a call ends with a status (known: a served method; started: on_call_start
   * ran for it). Calls reset by the peer end without on_call_end. */
  void (*on_call_start)(void *ud, const char *path);
  void (*on_call_end)(void *ud, const char *path, int known, int started, int status);
  void *observer_ud;
} grpc_session_config;

/* What the session needs from its transport. `io` is passed back as the first argument. */
typedef struct grpc_session_io {
  /* Bytes queued in the transport and not yet written to the peer. */
  size_t (*output)(void *io);
  /* Queues bytes for the peer (copied). Returns 0 or an SM_E* code. */
  int (*write)(void *io, const uint8_t *data, size_t len);
  /* Asks for a grpc_session_flush soon (at the end of this loop turn). */
  void (*want_flush)(void *io);
  /* Asks for grpc_session_timer at due_ms (the clock of now()); replaces any earlier request. */
  void (*set_timer)(void *io, uint64_t due_ms);
  /* Monotonic milliseconds. */
  uint64_t (*now)(void *io);
  /* The peer's address as text; never NULL. */
  const char *(*peer)(void *io);
} grpc_session_io;

/* Creates a session and queues the server's SETTINGS. Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK int grpc_session_create(const grpc_session_config *cfg, const grpc_session_io *io,
                                      void *io_ud, grpc_session **out);

/* Processes bytes from the peer. Returns 0, or SM_EPROTO (bad preface, flood, connection
 * error: close the connection after a last grpc_session_flush) or SM_ENOMEM. */
SM_MUST_CHECK int grpc_session_recv(grpc_session *s, const uint8_t *data, size_t len);

/* Produces output through io->write while io->output() is under the maximum. Returns 0,
 * SM_ECLOSED when the session is over (GOAWAY exchanged, no calls left: close the connection
 * once the output is written), or SM_EPROTO. */
SM_MUST_CHECK int grpc_session_flush(grpc_session *s);

/* Runs due work: deadlines, keepalive PINGs, the idle and stall limits. Returns 0, or
 * SM_ETIMEDOUT when the connection must be dropped (unanswered PING, stalled output). */
SM_MUST_CHECK int grpc_session_timer(grpc_session *s);

/* Graceful shutdown: GOAWAY now; calls in progress may finish, new ones are refused. */
void grpc_session_drain(grpc_session *s);

/* Open calls. */
size_t grpc_session_calls(const grpc_session *s);

/* Request bytes this session holds (its share of the pool). */
size_t grpc_session_buffered(const grpc_session *s);

/* Frees the session; every open call gets on_close(call, reason). NULL is fine. */
void grpc_session_destroy(grpc_session *s, int reason);

#endif
