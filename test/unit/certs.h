/* certs.h - test certificates made with the openssl command line in a temporary directory:
 * a CA, a server certificate for "localhost" and 127.0.0.1, a client certificate "agent-1" signed
 * by the same CA, and a second, unrelated CA. */
#ifndef SM_TEST_CERTS_H
#define SM_TEST_CERTS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct t_certs {
  char dir[64];
  char ca[128], server_cert[128], server_key[128], client_cert[128], client_key[128];
  char other_ca[128];
} t_certs;

static inline int t_certs_make(t_certs *c) {
  snprintf(c->dir, sizeof(c->dir), "/tmp/sm-certs-XXXXXX");
  if (mkdtemp(c->dir) == NULL)
    return -1;
  snprintf(c->ca, sizeof(c->ca), "%s/ca.pem", c->dir);
  snprintf(c->server_cert, sizeof(c->server_cert), "%s/server.pem", c->dir);
  snprintf(c->server_key, sizeof(c->server_key), "%s/server.key", c->dir);
  snprintf(c->client_cert, sizeof(c->client_cert), "%s/client.pem", c->dir);
  snprintf(c->client_key, sizeof(c->client_key), "%s/client.key", c->dir);
  snprintf(c->other_ca, sizeof(c->other_ca), "%s/other.pem", c->dir);
  char cmd[2048];
  snprintf(cmd, sizeof(cmd),
           "set -e; cd %s; K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';"
           "openssl req -x509 $K -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca;"
           "openssl req -x509 $K -keyout other.key -out other.pem -days 2 -subj /CN=other-ca;"
           "openssl req $K -keyout server.key -out server.csr -subj /CN=localhost;"
           "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext;"
           "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
           " -out server.pem -days 2 -extfile server.ext;"
           "openssl req $K -keyout client.key -out client.csr -subj /CN=agent-1;"
           "printf 'extendedKeyUsage=clientAuth\\n' > client.ext;"
           "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
           " -out client.pem -days 2 -extfile client.ext",
           c->dir);
  char full[2200];
  snprintf(full, sizeof(full), "(%s) >/dev/null 2>&1", cmd);
  return system(full) == 0 ? 0 : -1;
}

static inline void t_certs_remove(t_certs *c) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", c->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", c->dir);
}

#endif
