/* tls.h - TLS through OpenSSL memory BIOs: the adapter that keeps OpenSSL off the socket, so the
 * loop never blocks on it. Knows bytes, not HTTP.
 *
 * The transport moves bytes both ways:
 *
 *   socket read  -> net_tls_feed(ciphertext)   -> net_tls_read(plaintext)  -> protocol
 *   protocol     -> net_tls_write(plaintext)   -> net_tls_take(ciphertext) -> socket write
 *
 * After every feed (and every write) the transport takes the pending ciphertext and sends it:
 * the handshake, alerts and session tickets are produced by feed/read too, not only by write.
 *
 * A context (net_tls_ctx) holds certificates and policy and is shared by many connections; a
 * session (net_tls) is one connection. TLS 1.2 is the minimum; ALPN "h2" is offered by clients
 * and required by servers. Errors are SM_ETLS; the OpenSSL reason is logged once (component
 * "tls") and kept for net_tls_error(). Everything runs on the caller's thread; nothing blocks.
 */
#ifndef SM_NET_TLS_H
#define SM_NET_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct net_tls_ctx net_tls_ctx;
typedef struct net_tls net_tls;

typedef struct net_tls_config {
  /* PEM certificate chain and private key. Server: required. Client: optional (mutual TLS). */
  const char *cert_file;
  const char *key_file;
  /* PEM CA bundle. Server: when set, clients must present a certificate it signed (mutual
   * TLS). Client: the CAs that verify the server; NULL uses the system's default paths. */
  const char *ca_file;
  /* Client only: 0 verifies the server's certificate (and its name, see net_tls_create);
   * 1 skips verification (tests, self-signed development set-ups). Ignored by servers. */
  int insecure;
  /* Server only: 1 serves HTTP/1.1 instead of h2 (the admin listener): ALPN http/1.1 is selected
   * when the client offers it, and a client offering no ALPN is accepted. 0 requires h2. */
  int http1;
} net_tls_config;

/* Creates a server context: loads cert_file/key_file (checking they match), requires ALPN h2,
 * TLS >= 1.2, and verifies client certificates against ca_file when set. Returns 0, SM_EINVAL
 * (missing file name) or SM_ETLS (unreadable or invalid file; reason logged). */
int net_tls_ctx_create_server(const net_tls_config *cfg, net_tls_ctx **out);

/* Creates a client context: offers ALPN h2, TLS >= 1.2, verifies the server unless insecure,
 * presents cert_file/key_file when both are set. Returns 0, SM_EINVAL or SM_ETLS. */
int net_tls_ctx_create_client(const net_tls_config *cfg, net_tls_ctx **out);

/* Frees the context; sessions created from it keep their own reference. NULL is fine. */
void net_tls_ctx_destroy(net_tls_ctx *ctx);

/* Creates a session. server_name (client only; NULL for none) is sent as SNI and, when the
 * context verifies, checked against the certificate (host name or IP address). Returns 0,
 * SM_ENOMEM or SM_ETLS. */
int net_tls_create(net_tls_ctx *ctx, const char *server_name, net_tls **out);

/* Frees the session (no close_notify is sent: call net_tls_shutdown first for that). NULL is
 * fine. */
void net_tls_destroy(net_tls *t);

/* Hands ciphertext received from the peer to the session (copied). Returns 0 or SM_ENOMEM. */
int net_tls_feed(net_tls *t, const uint8_t *data, size_t len);

/* Advances the handshake. Returns 1 once it is complete (and, for a server, ALPN h2 was
 * agreed), 0 while it needs more input from the peer, SM_ETLS on failure. A client starts the
 * handshake with this call (then takes the ClientHello with net_tls_take). */
int net_tls_handshake(net_tls *t);

/* Whether the handshake is complete. */
int net_tls_established(const net_tls *t);

/* Decrypts into buf. Returns the number of plaintext bytes (> 0), 0 when it needs more input,
 * SM_ECLOSED when the peer sent close_notify, SM_ETLS on failure. Drives the handshake when it
 * is not complete yet. Call until it returns 0, then take the ciphertext it may have produced. */
ssize_t net_tls_read(net_tls *t, uint8_t *buf, size_t cap);

/* Encrypts len bytes of plaintext, all of them (records of up to 16 KiB). Returns 0, SM_EAGAIN
 * before the handshake is complete (nothing was taken: retry after it), SM_ECLOSED after
 * shutdown, or SM_ETLS. The ciphertext waits for net_tls_take. */
int net_tls_write(net_tls *t, const uint8_t *data, size_t len);

/* Bytes of ciphertext waiting to be sent. */
size_t net_tls_pending(const net_tls *t);

/* Moves up to cap bytes of waiting ciphertext into buf; returns how many. */
size_t net_tls_take(net_tls *t, uint8_t *buf, size_t cap);

/* Queues a close_notify alert (take it and send it before closing the socket). */
void net_tls_shutdown(net_tls *t);

/* The protocol agreed by ALPN ("h2", "http/1.1"), or NULL before the handshake or without
 * ALPN. */
const char *net_tls_alpn(const net_tls *t);

/* The protocol version agreed ("TLSv1.3"), or NULL before the handshake. */
const char *net_tls_version(const net_tls *t);

/* Whether the peer presented a certificate that verified (mutual TLS on a server). */
int net_tls_peer_verified(const net_tls *t);

/* Subject common name of the verified peer certificate, written into buf (NUL-terminated);
 * returns 0, or SM_ENOENT when there is none. */
int net_tls_peer_cn(const net_tls *t, char *buf, size_t cap);

/* Why the last SM_ETLS happened (OpenSSL's reason), or "" when none did. */
const char *net_tls_error(const net_tls *t);

#endif
