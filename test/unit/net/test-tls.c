/* test-tls.c - net/tls: client and server sessions handshaking and talking in memory. */
#include "net/tls.h"

#include "certs.h"
#include "t.h"
#include "util/err.h"
#include "util/log.h"

#include <openssl/ssl.h>

static t_certs certs;

/* Moves waiting ciphertext from one session to the other; returns the bytes moved. */
static size_t move(net_tls *from, net_tls *to) {
  uint8_t buf[4096];
  size_t total = 0, n;
  while ((n = net_tls_take(from, buf, sizeof(buf))) > 0) {
    T_EQ_INT(net_tls_feed(to, buf, n), 0);
    total += n;
  }
  return total;
}

/* Runs both handshakes until neither has anything to say. Returns 1 when both completed, or the
 * first error either side reported. */
static int handshake(net_tls *cli, net_tls *srv) {
  int rc = 0, rs = 0;
  for (int round = 0; round < 20; round++) {
    rc = net_tls_handshake(cli);
    size_t moved = move(cli, srv);
    rs = net_tls_handshake(srv);
    moved += move(srv, cli);
    if (rc < 0)
      return rc;
    if (rs < 0) {
      /* let the client see the alert */
      net_tls_handshake(cli);
      return rs;
    }
    if (rc == 1 && rs == 1 && moved == 0)
      return 1;
  }
  return rc == 1 && rs == 1 ? 1 : SM_ETIMEDOUT;
}

/* Reads every plaintext byte the session has into out; returns how many. */
static size_t drain(net_tls *t, uint8_t *out, size_t cap) {
  size_t got = 0;
  for (;;) {
    ssize_t n = net_tls_read(t, out + got, cap - got);
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  return got;
}

static net_tls_ctx *server_ctx(const char *client_ca) {
  net_tls_config cfg = {
      .cert_file = certs.server_cert, .key_file = certs.server_key, .ca_file = client_ca};
  net_tls_ctx *ctx = NULL;
  T_EQ_INT(net_tls_ctx_create_server(&cfg, &ctx), 0);
  return ctx;
}

static net_tls_ctx *client_ctx(const char *ca, int with_cert) {
  net_tls_config cfg = {.ca_file = ca};
  if (with_cert) {
    cfg.cert_file = certs.client_cert;
    cfg.key_file = certs.client_key;
  }
  net_tls_ctx *ctx = NULL;
  T_EQ_INT(net_tls_ctx_create_client(&cfg, &ctx), 0);
  return ctx;
}

static void test_handshake_and_data(void) {
  net_tls_ctx *sctx = server_ctx(NULL), *cctx = client_ctx(certs.ca, 0);
  net_tls *srv, *cli;
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(net_tls_create(cctx, "localhost", &cli), 0);
  /* the contexts may go before their sessions */
  net_tls_ctx_destroy(sctx);
  net_tls_ctx_destroy(cctx);

  T_EQ_INT(net_tls_write(cli, (const uint8_t *)"x", 1), SM_EAGAIN);
  T_ASSERT(net_tls_alpn(cli) == NULL);
  T_EQ_INT(handshake(cli, srv), 1);
  T_ASSERT(net_tls_established(cli) && net_tls_established(srv));
  T_EQ_STR(net_tls_alpn(srv), "h2");
  T_EQ_STR(net_tls_alpn(cli), "h2");
  T_ASSERT(strcmp(net_tls_version(srv), "TLSv1.2") == 0 ||
           strcmp(net_tls_version(srv), "TLSv1.3") == 0);
  T_ASSERT(!net_tls_peer_verified(srv)); /* no client CA: no client certificate asked */
  T_EQ_STR(net_tls_error(srv), "");

  /* client -> server, 100 KB: several records, fed in odd-sized pieces */
  static uint8_t big[100000], got[120000];
  for (size_t i = 0; i < sizeof(big); i++)
    big[i] = (uint8_t)(i * 7 + 3);
  T_EQ_INT(net_tls_write(cli, big, sizeof(big)), 0);
  T_ASSERT(net_tls_pending(cli) > sizeof(big));
  size_t total = 0;
  uint8_t chunk[777];
  size_t n;
  while ((n = net_tls_take(cli, chunk, sizeof(chunk))) > 0) {
    T_EQ_INT(net_tls_feed(srv, chunk, n), 0);
    total += drain(srv, got + total, sizeof(got) - total);
  }
  T_EQ_INT(total, sizeof(big));
  T_ASSERT(memcmp(big, got, sizeof(big)) == 0);
  T_EQ_INT(net_tls_pending(cli), 0);

  /* server -> client */
  T_EQ_INT(net_tls_write(srv, (const uint8_t *)"pong", 4), 0);
  move(srv, cli);
  T_EQ_INT(drain(cli, got, sizeof(got)), 4);
  T_ASSERT(memcmp(got, "pong", 4) == 0);
  T_EQ_INT(net_tls_read(cli, got, sizeof(got)), 0); /* nothing more */

  /* close_notify */
  net_tls_shutdown(cli);
  T_EQ_INT(net_tls_write(cli, (const uint8_t *)"x", 1), SM_ECLOSED);
  move(cli, srv);
  T_EQ_INT(net_tls_read(srv, got, sizeof(got)), SM_ECLOSED);

  net_tls_destroy(cli);
  net_tls_destroy(srv);
}

static void test_verify_ip_address(void) {
  net_tls_ctx *sctx = server_ctx(NULL), *cctx = client_ctx(certs.ca, 0);
  net_tls *srv, *cli;
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(net_tls_create(cctx, "127.0.0.1", &cli), 0);
  T_EQ_INT(handshake(cli, srv), 1);
  net_tls_destroy(cli);
  net_tls_destroy(srv);
  net_tls_ctx_destroy(sctx);
  net_tls_ctx_destroy(cctx);
}

static void test_wrong_name_and_wrong_ca(void) {
  net_tls_ctx *sctx = server_ctx(NULL), *cctx = client_ctx(certs.ca, 0);
  net_tls *srv, *cli;
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(net_tls_create(cctx, "example.org", &cli), 0);
  T_EQ_INT(handshake(cli, srv), SM_ETLS);
  T_ASSERT(strlen(net_tls_error(cli)) > 0);
  T_EQ_INT(net_tls_read(cli, (uint8_t[8]){0}, 8), SM_ETLS);
  net_tls_destroy(cli);
  net_tls_destroy(srv);
  net_tls_ctx_destroy(cctx);

  /* a CA that did not sign the server's certificate */
  cctx = client_ctx(certs.other_ca, 0);
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(net_tls_create(cctx, "localhost", &cli), 0);
  T_EQ_INT(handshake(cli, srv), SM_ETLS);
  net_tls_destroy(cli);
  net_tls_destroy(srv);
  net_tls_ctx_destroy(cctx);

  /* insecure skips verification */
  net_tls_config cfg = {.insecure = 1};
  T_EQ_INT(net_tls_ctx_create_client(&cfg, &cctx), 0);
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(net_tls_create(cctx, "example.org", &cli), 0);
  T_EQ_INT(handshake(cli, srv), 1);
  net_tls_destroy(cli);
  net_tls_destroy(srv);
  net_tls_ctx_destroy(cctx);
  net_tls_ctx_destroy(sctx);
}

static void test_mutual_tls(void) {
  net_tls_ctx *sctx = server_ctx(certs.ca);
  net_tls_ctx *anon = client_ctx(certs.ca, 0), *named = client_ctx(certs.ca, 1);
  net_tls *srv, *cli;

  /* without a client certificate: refused (TLS 1.3 reports it after the client finished) */
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(net_tls_create(anon, "localhost", &cli), 0);
  T_EQ_INT(handshake(cli, srv), SM_ETLS);
  T_ASSERT(!net_tls_established(srv));
  net_tls_destroy(cli);
  net_tls_destroy(srv);

  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(net_tls_create(named, "localhost", &cli), 0);
  T_EQ_INT(handshake(cli, srv), 1);
  T_ASSERT(net_tls_peer_verified(srv));
  char cn[64];
  T_EQ_INT(net_tls_peer_cn(srv, cn, sizeof(cn)), 0);
  T_EQ_STR(cn, "agent-1");
  net_tls_destroy(cli);
  net_tls_destroy(srv);

  net_tls_ctx_destroy(anon);
  net_tls_ctx_destroy(named);
  net_tls_ctx_destroy(sctx);
}

/* A raw OpenSSL client (no ALPN, or an old protocol) against our server. */
static int raw_client_handshake(net_tls *srv, SSL_CTX *raw_ctx) {
  SSL *ssl = SSL_new(raw_ctx);
  BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);
  BIO_set_mem_eof_return(out, -1);
  SSL_set_bio(ssl, in, out);
  SSL_set_connect_state(ssl);
  int result = 0;
  for (int round = 0; round < 10 && result == 0; round++) {
    int r = SSL_do_handshake(ssl);
    if (r != 1 && SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ)
      result = -1;
    uint8_t buf[8192];
    int n;
    while ((n = BIO_read(out, buf, sizeof(buf))) > 0)
      T_EQ_INT(net_tls_feed(srv, buf, (size_t)n), 0);
    int s = net_tls_handshake(srv);
    size_t m;
    while ((m = net_tls_take(srv, buf, sizeof(buf))) > 0)
      BIO_write(in, buf, (int)m);
    if (s < 0)
      result = s;
    else if (s == 1 && r == 1)
      result = 1;
  }
  SSL_free(ssl);
  return result;
}

static void test_alpn_required_and_old_protocols(void) {
  net_tls_ctx *sctx = server_ctx(NULL);
  net_tls *srv;

  SSL_CTX *raw = SSL_CTX_new(TLS_client_method());
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_EQ_INT(raw_client_handshake(srv, raw), SM_ETLS); /* no ALPN at all */
  T_ASSERT(strstr(net_tls_error(srv), "h2") != NULL);
  net_tls_destroy(srv);

  static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(raw, http11, sizeof(http11));
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_ASSERT(raw_client_handshake(srv, raw) < 0); /* ALPN without h2 */
  T_ASSERT(!net_tls_established(srv));
  net_tls_destroy(srv);
  SSL_CTX_free(raw);

  raw = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_alpn_protos(raw, (const unsigned char *)"\x02h2", 3);
  SSL_CTX_set_security_level(raw, 0);
  SSL_CTX_set_min_proto_version(raw, TLS1_VERSION);
  SSL_CTX_set_max_proto_version(raw, TLS1_1_VERSION);
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  T_ASSERT(raw_client_handshake(srv, raw) < 0); /* TLS 1.1 is below the minimum */
  T_ASSERT(!net_tls_established(srv));
  net_tls_destroy(srv);
  SSL_CTX_free(raw);

  net_tls_ctx_destroy(sctx);
}

static void test_garbage(void) {
  net_tls_ctx *sctx = server_ctx(NULL);
  net_tls *srv;
  T_EQ_INT(net_tls_create(sctx, NULL, &srv), 0);
  static const char junk[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  T_EQ_INT(net_tls_feed(srv, (const uint8_t *)junk, sizeof(junk) - 1), 0);
  uint8_t buf[64];
  T_EQ_INT(net_tls_read(srv, buf, sizeof(buf)), SM_ETLS);
  T_EQ_INT(net_tls_handshake(srv), SM_ETLS);
  T_EQ_INT(net_tls_write(srv, buf, 1), SM_ETLS);
  T_ASSERT(strlen(net_tls_error(srv)) > 0);
  net_tls_destroy(srv);
  net_tls_ctx_destroy(sctx);
}

static void test_bad_config(void) {
  net_tls_ctx *ctx = NULL;
  net_tls_config cfg = {0};
  T_EQ_INT(net_tls_ctx_create_server(&cfg, &ctx), SM_EINVAL);
  cfg.cert_file = "/nonexistent/cert.pem";
  cfg.key_file = certs.server_key;
  T_EQ_INT(net_tls_ctx_create_server(&cfg, &ctx), SM_ETLS);
  cfg.cert_file = certs.server_cert;
  cfg.key_file = certs.client_key; /* does not match */
  T_EQ_INT(net_tls_ctx_create_server(&cfg, &ctx), SM_ETLS);
  cfg.key_file = certs.server_key;
  cfg.ca_file = "/nonexistent/ca.pem";
  T_EQ_INT(net_tls_ctx_create_server(&cfg, &ctx), SM_ETLS);

  net_tls_config cc = {.cert_file = certs.client_cert};
  T_EQ_INT(net_tls_ctx_create_client(&cc, &ctx), SM_EINVAL); /* cert without key */
  cc.key_file = certs.client_key;
  cc.ca_file = "/nonexistent/ca.pem";
  T_EQ_INT(net_tls_ctx_create_client(&cc, &ctx), SM_ETLS);
  T_ASSERT(ctx == NULL);
  net_tls_ctx_destroy(NULL);
  net_tls_destroy(NULL);
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  if (t_certs_make(&certs) != 0) {
    fprintf(stderr, "cannot make test certificates with the openssl command\n");
    return 1;
  }
  T_RUN(test_handshake_and_data);
  T_RUN(test_verify_ip_address);
  T_RUN(test_wrong_name_and_wrong_ca);
  T_RUN(test_mutual_tls);
  T_RUN(test_alpn_required_and_old_protocols);
  T_RUN(test_garbage);
  T_RUN(test_bad_config);
  t_certs_remove(&certs);
  return t_done();
}
