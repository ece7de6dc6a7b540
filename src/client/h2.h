/* h2.h - the client side of one gRPC call over HTTP/2 (nghttp2 over libuv, h2c with prior
 * knowledge or TLS through net/tls.h): one TCP connection carries one call, which is what an
 * agent's Connect stream needs and keeps each simulated agent cheap.
 *
 * A client_ctx is shared by every call of a loop: it owns the read buffers (one for all
 * connections, since a read is consumed before the next one starts) and the flush list, so each
 * connection's output is gathered and written once per loop turn.
 *
 * Lifetime: client_call_start -> on_ready -> on_message* -> on_closed (always exactly once, from a
 * close callback, after which the call is freed). Nothing calls back inside the call that
 * requested it.
 */
#ifndef SM_CLIENT_H2_H
#define SM_CLIENT_H2_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <protobuf-c/protobuf-c.h>

typedef struct client_ctx client_ctx;
typedef struct client_call client_call;
typedef struct net_tls_ctx net_tls_ctx;

#define CLIENT_CALL_SEND_MAX (1u << 20)      /* queued outgoing bytes per call before SM_ELIMIT */
#define CLIENT_CALL_RECV_MAX (4u << 20)      /* largest accepted incoming message */
#define CLIENT_CALL_CONNECT_TIMEOUT_MS 10000 /* TCP connect plus TLS handshake */
#define CLIENT_CALL_FINISH_TIMEOUT_MS 2000   /* wait for the server to end the call on finish */

/* A request header besides the pseudo-headers and the gRPC ones. */
typedef struct client_header {
  const char *name; /* lower case */
  const char *value;
} client_header;

typedef struct client_call_req {
  const struct sockaddr *addr;      /* server address */
  const struct sockaddr *bind_addr; /* local address to bind before connecting, or NULL */
  const char *authority;            /* :authority */
  const char *path;                 /* e.g. "/scan.AgentService/Connect" */
  const client_header *headers;     /* extra headers (copied by nghttp2 at start) */
  size_t nheaders;
  net_tls_ctx *tls;        /* client TLS context, or NULL for h2c */
  const char *server_name; /* SNI and verified name with TLS, or NULL */
} client_call_req;

typedef struct client_call_cbs {
  /* The connection is up (TLS established) and the request is on its way. */
  void (*on_ready)(client_call *c, void *ud);
  /* One complete, uncompressed message of the response. */
  void (*on_message)(client_call *c, void *ud, const uint8_t *msg, size_t len);
  /* The call is over and its handles are closed. err: 0 when the server ended the call with
   * trailers (grpc_status then holds their status, -1 when absent) or the local side finished;
   * else an SM_E* code. The call is freed right after this returns. */
  void (*on_closed)(void *ud, int err, int grpc_status, const char *grpc_message);
} client_call_cbs;

/* Creates the shared context of a loop. Returns 0 or SM_ENOMEM. */
int client_ctx_create(uv_loop_t *loop, client_ctx **out);

/* Closes the context's handle and frees it in the close callback. All calls must be closed. */
void client_ctx_close(client_ctx *ctx);

/* Starts connecting and submits the request. Returns 0 (on_closed will follow, also on a
 * connection failure), or SM_ENOMEM / SM_EINVAL / SM_ETLS / an address error with nothing
 * started and no callback to come. */
int client_call_start(client_ctx *ctx, const client_call_req *req, const client_call_cbs *cbs,
                      void *ud, client_call **out);

/* Queues one protobuf message (framed) on the request stream. Returns 0, SM_ELIMIT when more
 * than CLIENT_CALL_SEND_MAX bytes would wait, SM_ECLOSED once the call is ending, SM_ENOMEM. */
int client_call_send(client_call *c, const ProtobufCMessage *msg);

/* Bytes queued and not yet taken by HTTP/2 (flow control or a slow peer). */
size_t client_call_queued(const client_call *c);

/* Graceful end: ends the request stream (END_STREAM), sends GOAWAY, waits up to
 * CLIENT_CALL_FINISH_TIMEOUT_MS for the server to end the call, then closes. */
void client_call_finish(client_call *c);

/* Abrupt end: closes the socket now (err SM_ECANCELED in on_closed unless already set). */
void client_call_abort(client_call *c);

/* Whether the call is connected and not ending. */
int client_call_usable(const client_call *c);

#endif
