/* manager.c - builds the context tree from the settings and runs the shutdown sequence:
 *
 *   signal -> draining (health NOT_SERVING, /ready 503, no new connections, GOAWAY)
 *          -> wait for in-flight work, at most DRAIN_TIMEOUT
 *          -> end agent streams, close listeners and timers through their close callbacks
 *          -> uv_run returns, main exits 0.
 * A second signal exits at once.
 */
#include "core/manager.h"

#include "admin/server.h"
#include "grpc/server.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DRAIN_POLL_MS 50 /* how often the drain checks whether in-flight work is done */

static void close_all(sm_manager *m);

/* Work that a graceful shutdown waits for: open agent connections that still have calls other
 * than their long-lived Connect stream are not tracked here; the command lifecycle adds its
 * in-flight commands when it exists. Agent streams themselves are ended, not waited for. */
static size_t inflight(const sm_manager *m) {
  (void)m;
  return 0;
}

static void drain_tick(uv_timer_t *t) {
  sm_manager *m = t->data;
  double waited = (double)(sm_now_ms() - m->drain_started_ms) / 1000.0;
  size_t n = inflight(m);
  if (n > 0 && waited < m->settings->drain_timeout_s)
    return;
  if (n > 0)
    sm_log_warn("manager", "drain timeout: closing with work in flight", SM_LI("inflight", n));
  uv_timer_stop(t);
  close_all(m);
}

static void on_signal(uv_signal_t *h, int signum) {
  sm_manager *m = h->data;
  if (++m->signals > 1) {
    sm_log_warn("manager", "second signal: exiting at once", SM_LI("signal", signum));
    _exit(1);
  }
  sm_manager_shutdown(m, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void handle_closed(uv_handle_t *h) {
  sm_manager *m = h->data;
  m->open_handles--;
}

static void grpc_closed(void *ud) {
  sm_manager *m = ud;
  m->grpc = NULL;
}

static void admin_closed(void *ud) {
  sm_manager *m = ud;
  m->admin = NULL;
}

static void close_all(sm_manager *m) {
  if (m->stopping)
    return;
  m->stopping = 1;
  sm_log_info("manager", "closing");
  /* Agents are told first, while their connections still exist to carry the trailers. */
  if (m->registry)
    agent_registry_end_all(m->registry, SM_ECANCELED, "manager shutting down");
  if (m->grpc)
    grpc_server_close(m->grpc, grpc_closed, m);
  if (m->admin)
    admin_server_close(m->admin, admin_closed, m);
  if (m->registry) {
    agent_registry_destroy(m->registry);
    m->registry = NULL;
  }
  uv_close((uv_handle_t *)&m->sigterm, handle_closed);
  uv_close((uv_handle_t *)&m->sigint, handle_closed);
  uv_close((uv_handle_t *)&m->drain_timer, handle_closed);
}

void sm_manager_shutdown(sm_manager *m, const char *why) {
  if (m->draining)
    return;
  m->draining = 1;
  m->drain_started_ms = sm_now_ms();
  sm_log_info("manager", "shutting down: draining", SM_LS("reason", why),
              SM_LD("drain_timeout_s", m->settings->drain_timeout_s));
  if (m->grpc)
    grpc_server_drain(m->grpc);
  if (m->admin)
    admin_server_stop_accepting(m->admin);
  uv_timer_start(&m->drain_timer, drain_tick, 0, DRAIN_POLL_MS);
}

int sm_manager_ready(const sm_manager *m, const char **reason) {
  if (m->draining) {
    *reason = "draining";
    return 0;
  }
  if (m->grpc == NULL) {
    *reason = "agent listener not running";
    return 0;
  }
  *reason = NULL;
  return 1;
}

int sm_manager_start(sm_manager *m, uv_loop_t *loop, const sm_settings *s) {
  int err;
  memset(m, 0, sizeof(*m));
  m->loop = loop;
  m->settings = s;
  m->started_at_ms = sm_now_ms();
  m->maintenance = s->maintenance_mode;

  uv_signal_init(loop, &m->sigterm);
  uv_signal_init(loop, &m->sigint);
  uv_timer_init(loop, &m->drain_timer);
  m->sigterm.data = m->sigint.data = m->drain_timer.data = m;
  m->open_handles = 3;
  uv_signal_start(&m->sigterm, on_signal, SIGTERM);
  uv_signal_start(&m->sigint, on_signal, SIGINT);
  /* A peer closing its socket must not kill the process. */
  signal(SIGPIPE, SIG_IGN);

  agent_registry_config rc = {
      .agent_timeout_s = s->agent_timeout_s,
      .max_agents = s->max_agents,
      .instance = s->instance_id,
  };
  err = agent_registry_create(loop, &rc, &m->registry);
  if (err)
    goto fail;
  err = agent_registry_start(m->registry);
  if (err)
    goto fail;

  err = grpc_server_create(loop, s, m->registry, &m->grpc);
  if (err) {
    sm_log_error("manager", "agent listener setup failed", SM_LE(err));
    goto fail;
  }
  err = grpc_server_listen(m->grpc);
  if (err) {
    sm_log_error("manager", "agent listener failed", SM_LS("addr", s->grpc_addr), SM_LE(err));
    goto fail;
  }
  err = admin_server_create(loop, m, &m->admin);
  if (err) {
    sm_log_error("manager", "admin listener setup failed", SM_LE(err));
    goto fail;
  }
  err = admin_server_listen(m->admin);
  if (err) {
    sm_log_error("manager", "admin listener failed", SM_LS("addr", s->admin_addr), SM_LE(err));
    goto fail;
  }

  if (s->valkey_host == NULL)
    sm_log_warn("manager", "VALKEY_HOST is unset: in-process store, nothing survives a restart");
  if (m->maintenance)
    sm_log_warn("manager", "starting in maintenance mode: new commands are refused");
  sm_log_info("manager", "started", SM_LS("version", SM_VERSION), SM_LS("instance", s->instance_id),
              SM_LS("grpc_addr", s->grpc_addr), SM_LS("admin_addr", s->admin_addr),
              SM_LB("tls", s->tls_enabled), SM_LS("env", s->app_env),
              SM_LD("agent_timeout_s", s->agent_timeout_s));
  return 0;

fail:
  close_all(m);
  return err;
}
