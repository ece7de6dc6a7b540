/* manager.c - the composition root: builds the context tree from the settings, hands each
 * module its own config struct and the narrow interfaces it needs (admin_api, metrics_source),
 * and runs the shutdown sequence. The only file that knows every module.
 *
 * Start order (each step needs the ones before it):
 *   1. signals, drain timer            (the manager's own handles)
 *   2. agent registry                  (used by everything below)
 *   3. metrics                         (hooks fed by the lifecycle and the gRPC sessions)
 *   4. store, agent mirror, RabbitMQ connection and publisher, scheduler strategies,
 *      lifecycle, AMQP intake          (start_pipeline)
 *   5. gRPC agent listener             (reads and writes the registry)
 *   6. admin listener                  (admin_api over the registry and the lifecycle)
 *   7. metrics listener
 *
 * Stop order:
 *   signal -> draining (health NOT_SERVING, /ready 503, no new connections, GOAWAY)
 *          -> wait for in-flight work, at most DRAIN_TIMEOUT
 *          -> close_all: metrics; AMQP intake, publisher (no new work, no result callbacks);
 *             mirror; lifecycle (then the store, from its close callback); agents told
 *             (end_all); gRPC and admin listeners; RabbitMQ; the manager's handles
 *          -> the registry is destroyed last, once every module holding it has called back
 *             from its close (gRPC sessions detach their agents from it while closing)
 *          -> uv_run returns, main exits 0.
 * A second signal exits at once.
 */
#include "app/manager.h"
#include "net/tcp.h"

#include "admin/server.h"
#include "app/agent_mirror.h"
#include "app/cmd_intake.h"
#include "app/ui_queue.h"
#include "app/lifecycle_mq.h"
#include "core/lifecycle.h"
#include "grpc/server.h"
#include "grpc/services.h"
#include "metrics/metrics.h"
#include "mq/amqp.h"
#include "mq/publisher.h"
#include "sched/strategy.h"
#include "store/store.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <assert.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define DRAIN_POLL_MS 50 /* how often the drain checks whether in-flight work is done */

static void close_all(sm_manager *m);

#define AGENT_RECORD_TTL_S 30 /* agent records in the store outlive a dead manager this long */

/* Work that a graceful shutdown waits for: commands running on agents and store writes not yet
 * acknowledged. Agent streams themselves are ended, not waited for. */
static size_t inflight(const sm_manager *m) {
  if (m->lifecycle == NULL)
    return 0;
  lifecycle_stats st;
  lifecycle_get_stats(m->lifecycle, &st);
  return st.inflight + st.pending_writes;
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

/* The registry goes last: the gRPC sessions detach their agents from it in their close, the
 * lifecycle and the admin routes hold it until their close called back. */
static void maybe_destroy_registry(sm_manager *m) {
  if (!m->stopping || m->registry == NULL || m->grpc || m->admin || m->lifecycle)
    return;
  agent_registry_destroy(m->registry);
  m->registry = NULL;
}

static void grpc_closed(void *ud) {
  sm_manager *m = ud;
  m->grpc = NULL;
  maybe_destroy_registry(m);
}

static void admin_closed(void *ud) {
  sm_manager *m = ud;
  m->admin = NULL;
  maybe_destroy_registry(m);
}

static void store_closed(void *ud) {
  sm_manager *m = ud;
  m->store = NULL;
}

/* The store closes after the lifecycle: its last writes must complete first. */
static void lifecycle_closed(void *ud) {
  sm_manager *m = ud;
  m->lifecycle = NULL;
  if (m->store)
    store_close(m->store, store_closed, m);
  maybe_destroy_registry(m);
}

static void close_all(sm_manager *m) {
  if (m->stopping)
    return;
  m->stopping = 1;
  /* metrics first: hooks that still fire while the others close see NULL and do nothing */
  metrics_close(m->metrics, NULL, NULL);
  m->metrics = NULL;
  sm_log_info("manager", "closing");
  /* Intake first (no new work), then the publisher (its callbacks must not outlive the
   * lifecycle); results not yet confirmed stay in the outbox for the next start. */
  cmd_intake_destroy(m->intake);
  m->intake = NULL;
  ui_queue_destroy(m->ui);
  m->ui = NULL;
  mq_publisher_destroy(m->publisher);
  m->publisher = NULL;
  /* The lifecycle lets go of the registry before the agents are told, so commands they still
   * hold stay dispatched/running in the store (the next start recovers them) instead of being
   * counted as lost to a failed agent. */
  agent_mirror_close(m->mirror);
  m->mirror = NULL;
  if (m->lifecycle)
    lifecycle_close(m->lifecycle, lifecycle_closed, m);
  else if (m->store)
    store_close(m->store, store_closed, m);
  /* Agents are told while their connections still exist to carry the trailers. */
  if (m->registry)
    agent_registry_end_all(m->registry, SM_ECANCELED, "manager shutting down");
  if (m->grpc)
    grpc_server_close(m->grpc, grpc_closed, m);
  if (m->admin)
    admin_server_close(m->admin, admin_closed, m);
  mq_conn_destroy(m->mq);
  m->mq = NULL;
  /* Now only when nothing holds it any more (a start that failed early), else from the last
   * close callback above. */
  maybe_destroy_registry(m);
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
  /* The first check waits one period so that GOAWAY and health updates reach the peers. */
  uv_timer_start(&m->drain_timer, drain_tick, DRAIN_POLL_MS, DRAIN_POLL_MS);
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
  if (m->store == NULL || !store_is_up(m->store)) {
    *reason = "store not connected";
    return 0;
  }
  if (m->mq && !mq_conn_is_up(m->mq)) {
    *reason = "rabbitmq not connected";
    return 0;
  }
  *reason = NULL;
  return 1;
}

/* Metrics hooks: m->metrics is NULL once closing. */
static void on_cmd_received(void *ud, const sm_command *c) {
  sm_manager *m = ud;
  metrics_command_received(m->metrics, c);
  ui_queue_cmd_received(m->ui, c);
}

static void on_cmd_finished(void *ud, const sm_command *c, double exec_s) {
  sm_manager *m = ud;
  metrics_command_finished(m->metrics, c, exec_s);
  ui_queue_cmd_finished(m->ui, c);
}

static void on_grpc_start(void *ud, const char *path) {
  sm_manager *m = ud;
  metrics_grpc_call_start(m->metrics, path);
}

static void on_grpc_end(void *ud, const char *path, int known, int started, int status) {
  sm_manager *m = ud;
  metrics_grpc_call_end(m->metrics, path, known, started, status);
}

static void on_accepting(void *ud, int accepting) {
  sm_manager *m = ud;
  cmd_intake_set_accepting(m->intake, accepting);
}

static void mirror_register(void *ud, agent *a, int replaced) {
  sm_manager *m = ud;
  (void)replaced;
  agent_mirror_on_register(m->mirror, a);
  ui_queue_agents_changed(m->ui);
}

static void mirror_update(void *ud, agent *a) {
  sm_manager *m = ud;
  agent_mirror_on_update(m->mirror, a);
}

static void mirror_unregister(void *ud, agent *a, int reason) {
  sm_manager *m = ud;
  (void)reason;
  agent_mirror_on_unregister(m->mirror, a);
  ui_queue_agents_changed(m->ui);
}

static void on_agent_result(void *ud, agent *a, const agent_result *r) {
  sm_manager *m = ud;
  ui_queue_result(m->ui, a, r);
}

static void on_store_state(void *ud, int up) {
  sm_manager *m = ud;
  (void)m;
  if (up)
    sm_log_info("manager", "store connected");
  else
    sm_log_warn("manager", "store unreachable: new commands refused until it is back");
}

static void on_mq_state(mq_conn *c, int up, int err, void *ud) {
  (void)c;
  (void)ud;
  if (up)
    sm_log_info("manager", "rabbitmq connected");
  else
    sm_log_warn("manager", "rabbitmq unreachable: intake paused, results wait in the outbox",
                SM_LE(err));
}

/* ---- the narrow interfaces of admin/ and metrics/ ---- */

static int api_ready(void *ud, const char **reason) {
  return sm_manager_ready(ud, reason);
}

static int api_draining(void *ud) {
  const sm_manager *m = ud;
  return m->draining;
}

static int api_maintenance(void *ud) {
  const sm_manager *m = ud;
  return m->maintenance;
}

static void api_set_maintenance(void *ud, int on) {
  sm_manager *m = ud;
  m->maintenance = on;
  if (m->lifecycle)
    lifecycle_set_maintenance(m->lifecycle, on);
}

static void api_shutdown(void *ud, const char *why) {
  sm_manager_shutdown(ud, why);
}

static void api_deps(void *ud, admin_deps *out) {
  const sm_manager *m = ud;
  const sm_settings *s = m->settings;
  out->store_backend = m->store ? store_name(m->store) : "none";
  out->store_up = m->store != NULL && store_is_up(m->store);
  out->mq_configured = (s->rabbitmq_url && s->rabbitmq_url[0]) || m->mq != NULL;
  out->mq_up = m->mq != NULL && mq_conn_is_up(m->mq);
}

static metrics_registry *api_metrics(void *ud) {
  sm_manager *m = ud;
  return m->metrics ? metrics_get_registry(m->metrics) : NULL;
}

/* Scrape-time figures of the registry, the lifecycle, the broker and the store. Each is NULL
 * once closed (or never started). */
static void metrics_snapshot_of(void *ud, metrics_snapshot *out) {
  sm_manager *m = ud;
  if (m->registry) {
    agent_registry_stats rs;
    agent_registry_get_stats(m->registry, &rs);
    out->have_agents = 1;
    out->agents = agent_registry_count(m->registry);
    out->heartbeats = rs.heartbeats;
    out->registered = rs.registered;
  }
  if (m->lifecycle) {
    lifecycle_stats ls;
    lifecycle_get_stats(m->lifecycle, &ls);
    out->have_commands = 1;
    out->waiting = ls.waiting;
    out->dispatched = ls.dispatched;
  }
  if (m->mq && mq_conn_queue_depth(m->mq, &out->mq_depth) == 0) {
    out->have_mq_depth = 1;
    out->mq_queue = mq_conn_command_queue(m->mq);
  }
  if (m->store && strcmp(store_name(m->store), "valkey") == 0) {
    static_assert(STORE_OP_COUNT <= METRICS_MAX_STORE_OPS, "room for every store op label");
    for (int op = 0; op < STORE_OP_COUNT; op++) {
      out->store_ops[op].name = store_op_name((store_op)op);
      out->store_ops[op].count = store_op_count(m->store, (store_op)op);
    }
    out->nstore_ops = STORE_OP_COUNT;
  }
}

/* hello.HelloService's counters, pulled at scrape time (m->grpc is NULL once closed). */
static void hello_metrics_collect(void *ud, metrics_registry *r) {
  sm_manager *m = ud;
  if (m->grpc == NULL)
    return;
  grpc_hello_stats hs;
  grpc_server_hello_stats(m->grpc, &hs);
  metrics_family *f = metrics_find(r, "sirius_hello_unmatched_results_total");
  if (f)
    metrics_counter_set(f, NULL, (double)hs.unmatched);
  f = metrics_find(r, "sirius_hello_rejected_commands_total");
  if (f)
    metrics_counter_set(f, NULL, (double)hs.rejected);
}

static int hello_metrics_register(sm_manager *m) {
  metrics_registry *r = metrics_get_registry(m->metrics);
  const metrics_desc d[] = {
      {.type = METRICS_COUNTER,
       .name = "sirius_hello_unmatched_results_total",
       .help = "hello.HelloService results that matched no outstanding command"},
      {.type = METRICS_COUNTER,
       .name = "sirius_hello_rejected_commands_total",
       .help = "Commands refused by hello.HelloService agents (types other than exec and status)"},
  };
  for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
    metrics_family *f;
    int err = metrics_register(r, &d[i], &f);
    if (err)
      return err;
  }
  return metrics_on_collect(r, hello_metrics_collect, m);
}

static grpc_server_config grpc_config_of(const sm_settings *s) {
  return (grpc_server_config){
      .addr = s->grpc_addr,
      .tls_enabled = s->tls_enabled,
      .tls_cert_file = s->tls_cert_file,
      .tls_key_file = s->tls_key_file,
      .tls_client_ca_file = s->tls_client_ca_file,
      .agent_tokens_file = s->agent_auth_tokens_file,
      .max_message_bytes = s->grpc_max_message_bytes,
      .max_streams = s->grpc_max_streams,
      .max_header_bytes = s->grpc_max_header_bytes,
      .keepalive_s = s->grpc_keepalive_s,
      .idle_timeout_s = s->grpc_idle_timeout_s,
      .max_output_bytes = s->grpc_max_output_bytes,
      .stall_timeout_s = s->grpc_stall_timeout_s,
      .first_message_timeout_s = s->grpc_first_message_timeout_s,
      .reflection = s->grpc_reflection,
      .max_buffered_per_conn = s->grpc_max_buffered_per_conn,
      .max_buffered_bytes = s->grpc_max_buffered_bytes,
      .message_timeout_s = s->grpc_message_timeout_s,
      .max_connections = s->max_connections,
  };
}

/* host: 256 bytes for the split address. */
static int admin_config_of(const sm_settings *s, char *host, admin_server_config *out) {
  int port = 0;
  const char *addr = s->admin_addr ? s->admin_addr : ":8080";
  int err = net_addr_split(addr, host, &port);
  if (err)
    return err;
  *out = (admin_server_config){
      .addr = addr,
      .host = host,
      .port = port,
      .max_connections = s->admin_max_connections,
      .max_connections_per_addr = s->admin_max_connections_per_ip,
      .max_body_bytes = s->admin_max_body_bytes,
      .max_buffered_bytes = s->admin_max_buffered_bytes,
      .header_timeout_s = s->admin_header_timeout_s,
      .max_header_bytes = s->admin_max_header_bytes,
      .request_timeout_s = s->admin_request_timeout_s,
      .idle_timeout_s = s->admin_idle_timeout_s,
      .tls_enabled = s->admin_tls_enabled,
      .tls_cert_file = s->admin_tls_cert_file,
      .tls_key_file = s->admin_tls_key_file,
      .security =
          {
              .api_key = s->admin_api_key,
              .api_keys_file = s->admin_api_keys_file,
              .development = s->app_env && strcasecmp(s->app_env, "development") == 0,
              .key_rps = s->admin_rate_limit_rps,
              .key_burst = s->admin_rate_limit_burst,
              .ip_rps = s->admin_rate_limit_ip_rps,
              .ip_burst = s->admin_rate_limit_ip_burst,
              .max_clients = s->admin_rate_limit_max_clients,
          },
  };
  return 0;
}

static int start_admin(sm_manager *m, const sm_settings *s) {
  char host[256];
  admin_server_config cfg;
  int err = admin_config_of(s, host, &cfg);
  if (err)
    return err;
  admin_api api = {
      .loop = m->loop,
      .registry = m->registry,
      .lifecycle = m->lifecycle,
      .instance = s->instance_id,
      .version = s->app_version,
      .env = s->app_env,
      .command_queue_size = s->command_queue_size,
      .started_at_ms = m->started_at_ms,
      .ud = m,
      .ready = api_ready,
      .draining = api_draining,
      .maintenance = api_maintenance,
      .set_maintenance = api_set_maintenance,
      .shutdown = api_shutdown,
      .deps = api_deps,
      .metrics = api_metrics,
  };
  return admin_server_create(m->loop, &cfg, &api, &m->admin);
}

/* The store (Valkey, or in-process without VALKEY_HOST), RabbitMQ (with RABBITMQ_URL) and the
 * lifecycle on top of them. */
static int start_pipeline(sm_manager *m, const sm_settings *s) {
  int err;
  if (s->valkey_host) {
    store_valkey_config vc = {
        .host = s->valkey_host,
        .port = s->valkey_port,
        .password = s->valkey_password,
        .db = s->valkey_db,
        .batch_max = s->valkey_batch_max,
        .batch_delay_ms = (unsigned)s->valkey_batch_delay_ms,
    };
    err = store_valkey_create(m->loop, &vc, &m->store);
  } else {
    store_mem_config mc = {0};
    err = store_mem_create(m->loop, &mc, &m->store);
  }
  if (err) {
    sm_log_error("manager", "store setup failed", SM_LE(err));
    return err;
  }
  err = agent_mirror_create(m->loop, m->store, m->registry, s->instance_id, AGENT_RECORD_TTL_S,
                            &m->mirror);
  if (err)
    return err;

  lifecycle_publisher lp;
  if (!s->rabbitmq_url && s->ui_command_queue && *s->ui_command_queue)
    sm_log_warn("manager", "SIRIUS_UI_COMMAND_QUEUE is set but RABBITMQ_URL is not: UI queue off");
  if (s->rabbitmq_url) {
    mq_conn_opts mo = {
        .url = s->rabbitmq_url,
        .command_queue = s->amqp_command_queue,
        .result_queue = s->amqp_result_queue,
        /* the result window plus dead-letter copies (at most one per held delivery) */
        .max_unconfirmed = s->amqp_pub_window + s->amqp_prefetch,
        /* SiriusScan's UI queue, declared non-durable as the UI declares it */
        .aux_queue = s->ui_command_queue,
        .aux_reply_queue =
            s->ui_command_queue && *s->ui_command_queue ? s->ui_response_queue : NULL,
        .aux_prefetch = UI_QUEUE_PREFETCH,
    };
    err = mq_conn_create(m->loop, &mo, &m->mq);
    if (err) {
      sm_log_error("manager", "RABBITMQ_URL: cannot use it", SM_LE(err));
      return err;
    }
    err = mq_conn_on_state(m->mq, on_mq_state, m);
    if (err)
      return err;
    err = mq_publisher_create(m->mq, s->amqp_pub_window, &m->publisher);
    if (err)
      return err;
    lifecycle_mq_publisher(m->publisher, &lp);
  }

  double grace = s->agent_timeout_s < 60 ? s->agent_timeout_s : 60;
  lifecycle_config lc = {
      .queue_size = s->command_queue_size,
      .max_agent_load = s->max_agent_load,
      .command_timeout_s = s->command_timeout_s,
      .timeout_grace_s = s->command_timeout_grace_s,
      .max_retries = s->max_retries,
      .reconnect_grace_s = grace,
      .instance = s->instance_id,
      .result_queue = s->amqp_result_queue,
      .on_accepting = on_accepting,
      .on_received = on_cmd_received,
      .on_finished = on_cmd_finished,
      .on_store_state = on_store_state,
      .hook_ud = m,
      .agent_events = {.on_register = mirror_register,
                       .on_update = mirror_update,
                       .on_unregister = mirror_unregister,
                       .on_result = on_agent_result,
                       .ud = m},
  };
  /* LOAD_BALANCING_STRATEGY is the default of the strategy set; a command's `strategy`
   * overrides it. The lifecycle owns the set from here on (it destroys it on close). */
  sched_strategy *strategy = NULL;
  sched_set_config sc = {.default_strategy = s->lb_strategy, .max_agent_load = s->max_agent_load};
  err = sched_set_create(m->loop, &sc, &strategy);
  if (err) {
    sm_log_error("manager", "LOAD_BALANCING_STRATEGY: cannot use it", SM_LE(err));
    return err;
  }
  err = lifecycle_create(m->loop, &lc, m->registry, m->store, m->publisher ? &lp : NULL, strategy,
                         &m->lifecycle);
  if (err)
    sched_strategy_destroy(strategy);
  if (err) {
    sm_log_error("manager", "lifecycle setup failed", SM_LE(err));
    return err;
  }
  lifecycle_set_maintenance(m->lifecycle, m->maintenance);
  if (m->publisher)
    lifecycle_mq_attach(m->lifecycle, m->publisher);
  err = lifecycle_start(m->lifecycle);
  if (err)
    return err;

  if (m->mq) {
    err = cmd_intake_create(m->loop, m->mq, m->lifecycle, (uint16_t)s->amqp_prefetch, &m->intake);
    if (err == 0)
      err = cmd_intake_start(m->intake);
    if (err == 0 && s->ui_command_queue && *s->ui_command_queue) {
      err = ui_queue_create(m->loop, m->mq, m->lifecycle, m->registry, m->store,
                            s->ui_response_queue, s->instance_id, &m->ui);
      if (err == 0)
        err = ui_queue_start(m->ui);
      if (err == 0)
        sm_log_info("manager", "serving the SiriusScan UI queue",
                    SM_LS("queue", s->ui_command_queue),
                    SM_LS("response_queue", s->ui_response_queue));
    }
    if (err == 0)
      err = mq_conn_start(m->mq);
    if (err) {
      sm_log_error("manager", "rabbitmq setup failed", SM_LE(err));
      return err;
    }
  }
  return 0;
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

  metrics_config mc = {.addr = s->metrics_addr,
                       .detailed = s->detailed_metrics,
                       .source = {.snapshot = metrics_snapshot_of, .ud = m}};
  err = metrics_create(loop, &mc, &m->metrics);
  if (err) {
    sm_log_error("manager", "METRICS_ADDR: cannot use it", SM_LE(err));
    goto fail;
  }

  err = start_pipeline(m, s);
  if (err)
    goto fail;

  grpc_server_config gc = grpc_config_of(s);
  err = grpc_server_create(loop, &gc, m->registry, &m->grpc);
  if (err) {
    sm_log_error("manager", "agent listener setup failed", SM_LE(err));
    goto fail;
  }
  grpc_server_set_observer(m->grpc, on_grpc_start, on_grpc_end, m);
  err = hello_metrics_register(m);
  if (err) {
    sm_log_error("manager", "hello metrics setup failed", SM_LE(err));
    goto fail;
  }
  err = grpc_server_listen(m->grpc);
  if (err) {
    sm_log_error("manager", "agent listener failed", SM_LS("addr", s->grpc_addr), SM_LE(err));
    goto fail;
  }
  err = start_admin(m, s);
  if (err) {
    sm_log_error("manager", "admin listener setup failed", SM_LE(err));
    goto fail;
  }
  err = admin_server_listen(m->admin);
  if (err) {
    sm_log_error("manager", "admin listener failed", SM_LS("addr", s->admin_addr), SM_LE(err));
    goto fail;
  }
  err = metrics_listen(m->metrics);
  if (err) {
    sm_log_error("manager", "metrics listener failed", SM_LS("addr", s->metrics_addr), SM_LE(err));
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
