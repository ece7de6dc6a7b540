/* tls.c - the OpenSSL adapter: TLS sessions over memory BIOs (see tls.h). */
#include "net/tls.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ALPN wire form: length-prefixed protocol names. gRPC speaks only h2. */
static const unsigned char alpn_h2[] = {2, 'h', '2'};
/* The admin listener's (net_tls_config.http1). */
static const unsigned char alpn_http1[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

/* A memory BIO keeps its largest allocation; one that grew past this while a big record went
 * through is replaced when empty so an idle connection holds no large buffer. */
#define TLS_BIO_KEEP 4096

#define TLS_ERR_MAX 160

struct net_tls_ctx {
  SSL_CTX *ssl_ctx;
  int server; /* 1: accepts, 0: connects */
  int http1;  /* server speaking HTTP/1.1: ALPN http/1.1 optional instead of h2 required */
};

struct net_tls {
  SSL *ssl;
  int server;
  int http1;       /* the context's http1 */
  int established; /* handshake complete (and ALPN agreed) */
  int shut;        /* close_notify queued: no more writes */
  int failed;      /* an SM_ETLS was returned: the reason is in err */
  char err[TLS_ERR_MAX];
};

/* Formats the first of OpenSSL's queued errors (the root cause; later ones are the callers'
 * summaries) into buf and clears the queue. */
static void tls_reason(char *buf, size_t cap, const char *fallback) {
  unsigned long first = ERR_get_error();
  ERR_clear_error();
  if (first != 0)
    ERR_error_string_n(first, buf, cap);
  else
    snprintf(buf, cap, "%s", fallback);
}

/* Logs a context set-up failure with the file involved. Returns SM_ETLS. */
static int ctx_fail(const char *what, const char *file) {
  char reason[TLS_ERR_MAX];
  tls_reason(reason, sizeof(reason), "unknown OpenSSL error");
  sm_log_error("tls", what, SM_LS("file", file), SM_LS("reason", reason));
  return SM_ETLS;
}

/* Records the session's failure reason and logs it, once per session. Returns SM_ETLS. */
static int tls_fail(net_tls *t, const char *fallback) {
  if (!t->failed) {
    t->failed = 1;
    tls_reason(t->err, sizeof(t->err), fallback);
    sm_log_warn("tls", "TLS failed", SM_LS("role", t->server ? "server" : "client"),
                SM_LS("reason", t->err));
  } else {
    ERR_clear_error();
  }
  return SM_ETLS;
}

/* ALPN of an http1 server context. (The context may be freed before its sessions, so the
 * callbacks take no pointer to it.) */
static int alpn_select_http1(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                             const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  unsigned char *sel = NULL;
  unsigned char sel_len = 0;
  /* HTTP/1.1 needs no ALPN: a client offering only others (h2) goes on without one. */
  if (SSL_select_next_proto(&sel, &sel_len, alpn_http1, sizeof(alpn_http1), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = sel;
  *outlen = sel_len;
  return SSL_TLSEXT_ERR_OK;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  unsigned char *sel = NULL;
  unsigned char sel_len = 0;
  if (SSL_select_next_proto(&sel, &sel_len, alpn_h2, sizeof(alpn_h2), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* no h2 offered: gRPC cannot run */
  *out = sel;
  *outlen = sel_len;
  return SSL_TLSEXT_ERR_OK;
}

static int ctx_new(int server, net_tls_ctx **out) {
  net_tls_ctx *c = sm_calloc(1, sizeof(*c));
  if (c == NULL)
    return SM_ENOMEM;
  c->server = server;
  c->ssl_ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (c->ssl_ctx == NULL) {
    free(c);
    return ctx_fail("cannot create TLS context", "");
  }
  SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_2_VERSION);
  /* Idle connections give their record buffers back; renegotiation and compression are
   * attack surface we do not need. */
  SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(c->ssl_ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  *out = c;
  return 0;
}

static int load_cert_key(net_tls_ctx *c, const char *cert_file, const char *key_file) {
  if (SSL_CTX_use_certificate_chain_file(c->ssl_ctx, cert_file) != 1)
    return ctx_fail("cannot load TLS certificate", cert_file);
  if (SSL_CTX_use_PrivateKey_file(c->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1)
    return ctx_fail("cannot load TLS private key", key_file);
  if (SSL_CTX_check_private_key(c->ssl_ctx) != 1)
    return ctx_fail("TLS private key does not match the certificate", key_file);
  return 0;
}

int net_tls_ctx_create_server(const net_tls_config *cfg, net_tls_ctx **out) {
  if (cfg == NULL || cfg->cert_file == NULL || cfg->key_file == NULL || !cfg->cert_file[0] ||
      !cfg->key_file[0])
    return SM_EINVAL;
  net_tls_ctx *c;
  int err = ctx_new(1, &c);
  if (err)
    return err;
  err = load_cert_key(c, cfg->cert_file, cfg->key_file);
  if (err)
    goto fail;
  c->http1 = cfg->http1 != 0;
  SSL_CTX_set_alpn_select_cb(c->ssl_ctx, c->http1 ? alpn_select_http1 : alpn_select, NULL);
  if (cfg->ca_file != NULL && cfg->ca_file[0]) {
    if (SSL_CTX_load_verify_locations(c->ssl_ctx, cfg->ca_file, NULL) != 1) {
      err = ctx_fail("cannot load TLS client CA", cfg->ca_file);
      goto fail;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->ca_file);
    if (names != NULL)
      SSL_CTX_set_client_CA_list(c->ssl_ctx, names); /* takes ownership */
    SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  *out = c;
  return 0;
fail:
  net_tls_ctx_destroy(c);
  return err;
}

int net_tls_ctx_create_client(const net_tls_config *cfg, net_tls_ctx **out) {
  if (cfg == NULL)
    return SM_EINVAL;
  int has_cert = cfg->cert_file != NULL && cfg->cert_file[0];
  int has_key = cfg->key_file != NULL && cfg->key_file[0];
  if (has_cert != has_key)
    return SM_EINVAL; /* a client certificate needs its key and the other way round */
  net_tls_ctx *c;
  int err = ctx_new(0, &c);
  if (err)
    return err;
  if (SSL_CTX_set_alpn_protos(c->ssl_ctx, alpn_h2, sizeof(alpn_h2)) != 0) {
    err = ctx_fail("cannot set ALPN", "");
    goto fail;
  }
  if (has_cert) {
    err = load_cert_key(c, cfg->cert_file, cfg->key_file);
    if (err)
      goto fail;
  }
  if (!cfg->insecure) {
    if (cfg->ca_file != NULL && cfg->ca_file[0]) {
      if (SSL_CTX_load_verify_locations(c->ssl_ctx, cfg->ca_file, NULL) != 1) {
        err = ctx_fail("cannot load TLS CA", cfg->ca_file);
        goto fail;
      }
    } else if (SSL_CTX_set_default_verify_paths(c->ssl_ctx) != 1) {
      err = ctx_fail("cannot load the system's CA certificates", "");
      goto fail;
    }
    SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_PEER, NULL);
  }
  *out = c;
  return 0;
fail:
  net_tls_ctx_destroy(c);
  return err;
}

void net_tls_ctx_destroy(net_tls_ctx *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ssl_ctx);
  free(ctx);
}

/* A memory BIO that reports "retry" rather than EOF when empty. */
static BIO *mem_bio(void) {
  BIO *b = BIO_new(BIO_s_mem());
  if (b != NULL)
    BIO_set_mem_eof_return(b, -1);
  return b;
}

int net_tls_create(net_tls_ctx *ctx, const char *server_name, net_tls **out) {
  net_tls *t = sm_calloc(1, sizeof(*t));
  if (t == NULL)
    return SM_ENOMEM;
  t->server = ctx->server;
  t->http1 = ctx->http1;
  t->ssl = SSL_new(ctx->ssl_ctx);
  BIO *rbio = mem_bio(), *wbio = mem_bio();
  if (t->ssl == NULL || rbio == NULL || wbio == NULL) {
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(t->ssl);
    free(t);
    ERR_clear_error();
    return SM_ENOMEM;
  }
  SSL_set_bio(t->ssl, rbio, wbio); /* the SSL owns both now */
  if (t->server) {
    SSL_set_accept_state(t->ssl);
  } else {
    SSL_set_connect_state(t->ssl);
    if (server_name != NULL && server_name[0]) {
      unsigned char ip[16];
      int is_ip =
          inet_pton(AF_INET, server_name, ip) == 1 || inet_pton(AF_INET6, server_name, ip) == 1;
      int verifying = SSL_get_verify_mode(t->ssl) & SSL_VERIFY_PEER;
      int ok = 1;
      /* SNI carries host names only (RFC 6066); an address is checked against the
       * certificate's IP SANs instead. */
      if (!is_ip)
        ok = SSL_set_tlsext_host_name(t->ssl, server_name) == 1;
      if (ok && verifying) {
        if (is_ip)
          ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), server_name) == 1;
        else
          ok = SSL_set1_host(t->ssl, server_name) == 1;
      }
      if (!ok) {
        int err = tls_fail(t, "cannot set the server name");
        net_tls_destroy(t);
        return err;
      }
    }
  }
  *out = t;
  return 0;
}

void net_tls_destroy(net_tls *t) {
  if (t == NULL)
    return;
  SSL_free(t->ssl);
  free(t);
}

int net_tls_feed(net_tls *t, const uint8_t *data, size_t len) {
  size_t done = 0;
  while (done < len) {
    size_t n = len - done;
    if (n > INT32_MAX)
      n = INT32_MAX;
    int w = BIO_write(SSL_get_rbio(t->ssl), data + done, (int)n);
    if (w <= 0) {
      ERR_clear_error();
      return SM_ENOMEM; /* a memory BIO fails only when it cannot grow */
    }
    done += (size_t)w;
  }
  return 0;
}

/* Replaces an empty memory BIO whose buffer grew large (see TLS_BIO_KEEP). */
static void trim_bio(net_tls *t, int read_side) {
  BIO *b = read_side ? SSL_get_rbio(t->ssl) : SSL_get_wbio(t->ssl);
  if (BIO_ctrl_pending(b) != 0)
    return;
  BUF_MEM *m = NULL;
  BIO_get_mem_ptr(b, &m);
  if (m == NULL || m->max <= TLS_BIO_KEEP)
    return;
  BIO *fresh = mem_bio();
  if (fresh == NULL) {
    ERR_clear_error();
    return;
  }
  if (read_side)
    SSL_set0_rbio(t->ssl, fresh); /* frees the old one */
  else
    SSL_set0_wbio(t->ssl, fresh);
}

int net_tls_handshake(net_tls *t) {
  if (t->established)
    return 1;
  if (t->failed)
    return SM_ETLS;
  int r = SSL_do_handshake(t->ssl);
  if (r != 1) {
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      return 0;
    return tls_fail(t, "handshake failed");
  }
  const unsigned char *proto = NULL;
  unsigned int plen = 0;
  SSL_get0_alpn_selected(t->ssl, &proto, &plen);
  if (!t->http1 && (plen != 2 || memcmp(proto, "h2", 2) != 0)) {
    ERR_clear_error();
    snprintf(t->err, sizeof(t->err), "%s", "peer did not agree on ALPN h2");
    t->failed = 1;
    sm_log_warn("tls", "TLS failed", SM_LS("role", t->server ? "server" : "client"),
                SM_LS("reason", t->err));
    return SM_ETLS;
  }
  t->established = 1;
  return 1;
}

int net_tls_established(const net_tls *t) {
  return t->established;
}

ssize_t net_tls_read(net_tls *t, uint8_t *buf, size_t cap) {
  if (!t->established) {
    int h = net_tls_handshake(t);
    if (h <= 0)
      return h;
  }
  if (t->failed)
    return SM_ETLS;
  size_t n = 0;
  int r = SSL_read_ex(t->ssl, buf, cap, &n);
  if (r == 1)
    return (ssize_t)n;
  int e = SSL_get_error(t->ssl, r);
  switch (e) {
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE:
    ERR_clear_error();
    trim_bio(t, 1);
    return 0;
  case SSL_ERROR_ZERO_RETURN:
    ERR_clear_error();
    return SM_ECLOSED;
  default:
    return tls_fail(t, "read failed");
  }
}

int net_tls_write(net_tls *t, const uint8_t *data, size_t len) {
  if (t->shut)
    return SM_ECLOSED;
  if (t->failed)
    return SM_ETLS;
  if (!t->established)
    return SM_EAGAIN;
  if (len == 0)
    return 0;
  size_t done = 0;
  while (done < len) {
    size_t n = 0;
    /* Without SSL_MODE_ENABLE_PARTIAL_WRITE a write into a memory BIO takes everything. */
    if (SSL_write_ex(t->ssl, data + done, len - done, &n) != 1)
      return tls_fail(t, "write failed");
    done += n;
  }
  return 0;
}

size_t net_tls_pending(const net_tls *t) {
  return BIO_ctrl_pending(SSL_get_wbio(t->ssl));
}

size_t net_tls_take(net_tls *t, uint8_t *buf, size_t cap) {
  BIO *b = SSL_get_wbio(t->ssl);
  size_t got = 0;
  while (got < cap && BIO_ctrl_pending(b) > 0) {
    size_t n = cap - got;
    if (n > INT32_MAX)
      n = INT32_MAX;
    int r = BIO_read(b, buf + got, (int)n);
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  trim_bio(t, 0);
  return got;
}

void net_tls_shutdown(net_tls *t) {
  if (t->shut)
    return;
  t->shut = 1;
  if (t->established && !t->failed)
    SSL_shutdown(t->ssl);
  ERR_clear_error();
}

const char *net_tls_alpn(const net_tls *t) {
  if (!t->established)
    return NULL;
  if (!t->http1)
    return "h2"; /* established implies ALPN h2 was agreed */
  const unsigned char *proto = NULL;
  unsigned int plen = 0;
  SSL_get0_alpn_selected(t->ssl, &proto, &plen);
  return plen ? "http/1.1" : NULL; /* the only protocol an http1 context selects */
}

const char *net_tls_version(const net_tls *t) {
  return t->established ? SSL_get_version(t->ssl) : NULL;
}

int net_tls_peer_verified(const net_tls *t) {
  if (!t->established)
    return 0;
  X509 *cert = SSL_get1_peer_certificate(t->ssl);
  int ok = cert != NULL && SSL_get_verify_result(t->ssl) == X509_V_OK;
  X509_free(cert);
  return ok;
}

int net_tls_peer_cn(const net_tls *t, char *buf, size_t cap) {
  if (!net_tls_peer_verified(t) || cap == 0 || cap > INT32_MAX)
    return SM_ENOENT;
  X509 *cert = SSL_get1_peer_certificate(t->ssl);
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, buf, (int)cap);
  X509_free(cert);
  if (n < 0) {
    ERR_clear_error();
    return SM_ENOENT;
  }
  return 0;
}

const char *net_tls_error(const net_tls *t) {
  return t->failed ? t->err : "";
}
