/* tcp.h - a TCP listener and its connections on libuv, optionally through TLS (net/tls.h).
 * Knows bytes, not HTTP: a protocol plugs in through net_conn_ops.
 *
 * - Bounded: at most max_connections; extra ones are accepted, sent refuse_data (plaintext, best
 *   effort) and closed at once.
 * - Reads go through one buffer per listener (protocols consume them synchronously), so an
 *   idle connection holds no read buffer.
 * - Writes are gathered: net_conn_write copies into the connection's pending output, and once
 *   per loop turn (a prepare handle, before the loop sleeps) the listener asks each connection
 *   that wants it for more output (ops->on_flush) and hands what is pending to one uv_write.
 * - Backpressure: above max_output_bytes queued, the connection stops reading (and protocols
 *   stop producing, see net_conn_output); when its output makes no progress for stall_timeout
 *   it is dropped.
 * - Two-phase close: net_conn_close marks the connection; its memory and the protocol's
 *   on_close come from the handles' close callbacks, never inside the call that asked. With
 *   linger_ms, a graceful close shuts the write side down after the last byte and discards
 *   input until the peer's EOF (at most linger_ms and NET_LINGER_MAX_BYTES), so the peer reads
 *   the last bytes rather than a reset.
 * - File descriptors exhausted (accept fails with EMFILE/ENFILE): pending connections are
 *   accepted on a reserve descriptor and closed at once (libuv's reserve first, then the
 *   listener's own), so the loop does not spin and established connections go on; a warn line
 *   at most once a second, and one while the descriptor table is nearly full.
 * - Configured by its caller (net_listener_config): this layer reads no settings.
 */
#ifndef SM_NET_TCP_H
#define SM_NET_TCP_H

/* Input a lingering connection discards before it is closed anyway (a peer still flooding). */
#define NET_LINGER_MAX_BYTES (256u * 1024u)

#include "net/tls.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct net_listener net_listener;
typedef struct net_conn net_conn;

typedef struct net_conn_ops {
  /* The connection is ready (TLS: handshake done). Return 0, or an SM_E* code to close it. */
  int (*on_open)(net_conn *c);
  /* Bytes from the peer (plaintext), valid during the call. Return 0 or an SM_E* code (the
   * connection closes after writing what is queued). */
  int (*on_read)(net_conn *c, const uint8_t *data, size_t len);
  /* Before the loop sleeps, when the connection asked (net_conn_want_flush) or after reads and
   * completed writes: produce output with net_conn_write while net_conn_output() is under the
   * limit. Return 0, SM_ECLOSED to close once the output is written, or another SM_E* code to
   * close now. */
  int (*on_flush)(net_conn *c);
  /* The protocol's timer (net_conn_set_timer) is due. Return 0 or an SM_E* code to close. */
  int (*on_timer)(net_conn *c);
  /* The connection is gone (called once, from a close callback, iff on_open was called).
   * reason: SM_ECLOSED peer closed, SM_ETIMEDOUT stalled, what a callback returned, ... */
  void (*on_close)(net_conn *c, int reason);
  /* Optional. The peer finished sending (EOF, or TLS close_notify); reading has stopped. Return
   * 0 to keep the connection (the protocol answers what it was asked, then closes it), or an
   * SM_E* code to close gracefully. NULL: close gracefully with SM_ECLOSED. */
  int (*on_eof)(net_conn *c);
} net_conn_ops;

typedef struct net_listener_config {
  const char *addr;           /* "host:port", ":port", "[v6]:port"; port 0 picks one */
  size_t max_connections;     /* MAX_CONNECTIONS */
  size_t max_output_bytes;    /* per connection, before reading stops */
  double stall_timeout_s;     /* drop a connection whose output is stuck this long */
  double handshake_timeout_s; /* TLS handshake must finish in this */
  net_tls_ctx *tls;           /* NULL: plaintext; borrowed, must outlive the listener */
  const net_conn_ops *ops;
  void *ud;         /* the protocol's context: net_listener_data() */
  const char *name; /* for logs, e.g. "grpc" */
  /* Bytes written (best effort, plaintext only) to a connection refused over max_connections,
   * e.g. an HTTP 503; borrowed, must outlive the listener. NULL: closed without a word. */
  const uint8_t *refuse_data;
  size_t refuse_len;
  /* After a graceful close wrote everything: discard input this long waiting for the peer's EOF
   * before closing (see the top). 0: close at once. */
  uint64_t linger_ms;
} net_listener_config;

/* Splits "host:port", ":port" (host 0.0.0.0) or "[v6]:port" into host (NUL-terminated) and port.
 * Returns 0 or SM_EADDR. */
SM_MUST_CHECK int net_addr_split(const char *addr, char host[256], int *port);

/* Creates a listener (nothing bound yet). Returns 0, SM_EINVAL or SM_ENOMEM. */
int net_listener_create(uv_loop_t *loop, const net_listener_config *cfg, net_listener **out);

/* Binds and listens. Returns 0, SM_EADDR (bad or unresolvable address), SM_EEXIST (in use),
 * SM_EPERM, or another SM_E* code. */
int net_listener_listen(net_listener *l);

/* The bound port (useful with port 0); 0 before listening. */
int net_listener_port(const net_listener *l);

/* Stops accepting: the listening socket closes; connections stay. */
void net_listener_stop(net_listener *l);

/* Open connections. */
size_t net_listener_connections(const net_listener *l);

/* Connections closed at accept by the listener's own reserve descriptor because file
 * descriptors ran out (those libuv's reserve closed are not counted: libuv does not say). */
size_t net_listener_fd_dropped(const net_listener *l);

/* Calls fn for every open connection (fn may close it). */
void net_listener_foreach(net_listener *l, void (*fn)(net_conn *c, void *ud), void *ud);

/* Closes the listening socket and every connection (their on_close run), then calls cb(ud)
 * after the last close callback and frees the listener. */
void net_listener_close(net_listener *l, void (*cb)(void *ud), void *ud);

/* The protocol's listener context (net_listener_config.ud). */
void *net_listener_data(const net_listener *l);

/* --- for protocols, on a connection --- */

void *net_conn_data(const net_conn *c);
void net_conn_set_data(net_conn *c, void *data);
net_listener *net_conn_listener(const net_conn *c);

/* "ip:port" of the peer; never NULL. */
const char *net_conn_peer(const net_conn *c);

/* The TLS session, or NULL on plaintext. */
net_tls *net_conn_tls(const net_conn *c);

/* Queues bytes for the peer (copied; encrypted first on TLS). Sent at the end of the loop
 * turn. Returns 0, SM_ECLOSED when closing, SM_ETLS or SM_ENOMEM. */
int net_conn_write(net_conn *c, const uint8_t *data, size_t len);

/* Bytes queued and not yet written to the socket. */
size_t net_conn_output(const net_conn *c);

/* hold 1: stops reading for the protocol (its own queue is full), independently of the output
 * backpressure; 0: reads again (unless something else holds it). Input is only delivered
 * while reading, apart from the rest of a TLS read already decrypted. */
void net_conn_hold(net_conn *c, int hold);

/* Asks for ops->on_flush before the loop sleeps. */
void net_conn_want_flush(net_conn *c);

/* Calls ops->on_timer at due_ms (uv_now clock); 0 cancels. */
void net_conn_set_timer(net_conn *c, uint64_t due_ms);

/* The loop's clock in ms (uv_now). */
uint64_t net_conn_now(const net_conn *c);

/* Closes the connection. graceful: write what is queued first (bounded by the stall
 * timeout); else at once. ops->on_close follows from the close callback. */
void net_conn_close(net_conn *c, int reason, int graceful);

#endif
