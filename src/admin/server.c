/* server.c - the admin listener: the route table (handlers.c's routes behind the security
 * guard of auth.c) on the one HTTP server (http/server.h), which owns the connections,
 * keep-alive and pipelining, limits and timeouts, deferred answers, TLS and the request log.
 */
#include "admin/server.h"

#include "admin/auth.h"
#include "admin/handlers.h"
#include "admin/router.h"
#include "http/http.h"
#include "http/server.h"
#include "net/tcp.h" /* net_addr_split only */
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct admin_server {
  admin_api api; /* the router's ud */
  admin_router router;
  admin_security sec; /* keys, roles, rate limits: the router's guard */
  http_server *http;
  void (*close_cb)(void *ud);
  void *close_ud;
};

static void handle(void *ud, http_request *req, http_response *res) {
  struct admin_server *srv = ud;
  admin_router_dispatch(&srv->router, req, res);
}

/* An upload is routed and authenticated on its headers: refused ones are never read. */
static int admit(void *ud, http_request *req, http_response *res) {
  struct admin_server *srv = ud;
  return admin_router_admit(&srv->router, req, res);
}

/* The http server's address: ADMIN_API_ADDR as given when it names host and port (so log lines
 * show it as before), else host and port joined. Returns 0 or SM_EINVAL. */
static int listen_addr(const admin_server_config *cfg, char *out, size_t size) {
  char host[256];
  int port;
  if (cfg->addr && net_addr_split(cfg->addr, host, &port) == 0 && port == cfg->port &&
      strcmp(host, cfg->host) == 0) {
    int n = snprintf(out, size, "%s", cfg->addr);
    return n < 0 || (size_t)n >= size ? SM_EINVAL : 0;
  }
  int v6 = strchr(cfg->host, ':') != NULL; /* a bare IPv6 literal needs brackets */
  int n = snprintf(out, size, v6 ? "[%s]:%d" : "%s:%d", cfg->host, cfg->port);
  return n < 0 || (size_t)n >= size ? SM_EINVAL : 0;
}

int admin_server_create(uv_loop_t *loop, const admin_server_config *cfg, const admin_api *api,
                        struct admin_server **out) {
  char addr[300];
  if (loop == NULL || cfg == NULL || api == NULL || out == NULL || cfg->host == NULL ||
      strlen(cfg->host) >= 256 || cfg->port < 0 || cfg->port > 65535 ||
      listen_addr(cfg, addr, sizeof(addr)) != 0)
    return SM_EINVAL;
  if (cfg->tls_enabled && (cfg->tls_cert_file == NULL || !cfg->tls_cert_file[0] ||
                           cfg->tls_key_file == NULL || !cfg->tls_key_file[0])) {
    sm_log_error("admin", "cannot set up TLS", SM_LE(SM_EINVAL));
    return SM_EINVAL;
  }
  struct admin_server *srv = sm_calloc(1, sizeof(*srv));
  if (srv == NULL)
    return SM_ENOMEM;
  srv->api = *api;
  admin_router_init(&srv->router, &srv->api);
  int err = admin_security_init(&srv->sec, &cfg->security);
  if (err) {
    free(srv);
    return err;
  }
  srv->router.guard = admin_security_guard;
  srv->router.guard_ud = &srv->sec;
  err = admin_handlers_register(&srv->router);
  if (!err) {
    http_server_config hc = {
        .addr = addr,
        .tls_cert_file = cfg->tls_enabled ? cfg->tls_cert_file : NULL,
        .tls_key_file = cfg->tls_enabled ? cfg->tls_key_file : NULL,
        .max_connections = cfg->max_connections,
        .max_connections_per_addr = cfg->max_connections_per_addr,
        .max_header_bytes = cfg->max_header_bytes,
        .max_body_bytes = cfg->max_body_bytes,
        .max_buffered_body_bytes = cfg->max_buffered_bytes,
        .header_timeout_s = cfg->header_timeout_s,
        .request_timeout_s = cfg->request_timeout_s,
        .idle_timeout_s = cfg->idle_timeout_s,
        /* A handler waiting on the store gets as long as a client has to send its request. */
        .defer_timeout_s = cfg->request_timeout_s,
        .log_name = "admin", /* also names the 503 beyond the limit: "too many admin connections" */
        .log_requests = 1,
        .who = admin_request_who,
        .handle = handle,
        .ud = srv,
        .admit = admit,
    };
    err = http_server_create(loop, &hc, &srv->http);
  }
  if (err) {
    admin_security_finish(&srv->sec);
    free(srv);
    return err;
  }
  *out = srv;
  return 0;
}

int admin_server_listen(struct admin_server *srv) {
  int err = http_server_listen(srv->http);
  /* admin's callers know one code for an address they cannot have */
  return err == SM_EEXIST || err == SM_EPERM ? SM_EADDR : err;
}

int admin_server_port(const struct admin_server *srv) {
  return http_server_port(srv->http);
}

admin_router *admin_server_router(struct admin_server *srv) {
  return &srv->router;
}

size_t admin_server_connections(const struct admin_server *srv) {
  return http_server_connections(srv->http);
}

void admin_server_stop_accepting(struct admin_server *srv) {
  if (srv != NULL)
    http_server_stop_accepting(srv->http);
}

static void http_closed(void *ud) {
  struct admin_server *srv = ud;
  void (*cb)(void *) = srv->close_cb;
  void *cb_ud = srv->close_ud;
  admin_security_finish(&srv->sec);
  free(srv);
  if (cb)
    cb(cb_ud);
}

void admin_server_close(struct admin_server *srv, void (*cb)(void *ud), void *ud) {
  if (srv == NULL || srv->http == NULL)
    return;
  srv->close_cb = cb;
  srv->close_ud = ud;
  http_server *http = srv->http;
  srv->http = NULL; /* a second close is ignored */
  http_server_close(http, http_closed, srv);
}
