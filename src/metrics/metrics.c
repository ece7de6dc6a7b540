/* metrics.c - the manager's metric families, the hooks that feed them, and the scrape-time hook
 * that copies figures from the snapshot source (registry, lifecycle, store, RabbitMQ: filled by
 * app/) and /proc. */
#include "metrics/metrics.h"

#include "metrics/exporter.h"
#include "util/alloc.h"
#include "util/err.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TYPE_ALL "all" /* the type label value when ENABLE_DETAILED_METRICS is false */

struct metrics {
  metrics_source src;
  metrics_registry *reg;
  metrics_exporter *exporter;
  int detailed;                /* ENABLE_DETAILED_METRICS */
  metrics_family *received;    /* agent_commands_received_total{type} */
  metrics_family *executed;    /* agent_commands_executed_total{type,status} */
  metrics_family *exec_time;   /* command_execution_time_seconds{type} */
  metrics_family *queue_wait;  /* command_queue_wait_seconds (summary) */
  metrics_family *by_agent;    /* agent_commands_executed_by_agent_total{agent,status} */
  metrics_family *connections; /* agent_connections */
  metrics_family *queue_depth; /* message_queue_depth{queue} */
  metrics_family *valkey_ops;  /* valkey_operations_total{op} */
  metrics_family *grpc_req;    /* grpc_requests_total{method} */
  metrics_family *grpc_err;    /* grpc_errors_total{method,code} */
  metrics_family *mem;         /* system_memory_usage_bytes */
  metrics_family *cpu;         /* system_cpu_usage */
  metrics_family *cpu_seconds; /* process_cpu_seconds_total */
  metrics_family *heartbeats;  /* agent_heartbeats_total */
  metrics_family *registered;  /* agent_registrations_total */
  metrics_family *dispatched;  /* agent_commands_dispatched_total */
  double last_cpu_s;           /* process CPU seconds at the previous scrape */
  double last_wall_s;          /* monotonic seconds at the previous scrape */
  void (*close_cb)(void *ud);
  void *close_ud;
};

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Resident set size in bytes from /proc/self/status (VmRSS), or -1. */
static double read_rss(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL)
    return -1;
  char line[256];
  double v = -1;
  while (fgets(line, sizeof(line), f)) {
    unsigned long kb;
    if (sscanf(line, "VmRSS: %lu kB", &kb) == 1) {
      v = (double)kb * 1024.0;
      break;
    }
  }
  fclose(f);
  return v;
}

/* User + system CPU seconds of the process from /proc/self/stat (fields 14 and 15), or -1. */
static double read_cpu_s(void) {
  FILE *f = fopen("/proc/self/stat", "r");
  if (f == NULL)
    return -1;
  char buf[1024];
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* the command name (field 2) may hold spaces and parentheses: fields start after the last ')' */
  char *p = strrchr(buf, ')');
  unsigned long long ut, st;
  if (p == NULL ||
      sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return -1;
  long hz = sysconf(_SC_CLK_TCK);
  return (double)(ut + st) / (double)(hz > 0 ? hz : 100);
}

/* Scrape-time figures. */
static void on_collect(void *ud, metrics_registry *r) {
  (void)r;
  metrics *mt = ud;
  metrics_snapshot sn;
  memset(&sn, 0, sizeof(sn));
  if (mt->src.snapshot)
    mt->src.snapshot(mt->src.ud, &sn);
  if (sn.have_agents) {
    metrics_gauge_set(mt->connections, NULL, (double)sn.agents);
    metrics_counter_set(mt->heartbeats, NULL, (double)sn.heartbeats);
    metrics_counter_set(mt->registered, NULL, (double)sn.registered);
  }
  if (sn.have_commands) {
    const char *q[] = {"scheduler"};
    metrics_gauge_set(mt->queue_depth, q, (double)sn.waiting);
    metrics_counter_set(mt->dispatched, NULL, (double)sn.dispatched);
  }
  if (sn.have_mq_depth && sn.mq_queue) {
    const char *q[] = {sn.mq_queue};
    metrics_gauge_set(mt->queue_depth, q, (double)sn.mq_depth);
  }
  assert(sn.nstore_ops <= METRICS_MAX_STORE_OPS);
  for (size_t i = 0; i < sn.nstore_ops && i < METRICS_MAX_STORE_OPS; i++) {
    const char *v[] = {sn.store_ops[i].name};
    metrics_counter_set(mt->valkey_ops, v, (double)sn.store_ops[i].count);
  }
  double rss = read_rss();
  if (rss >= 0)
    metrics_gauge_set(mt->mem, NULL, rss);
  double cpu = read_cpu_s(), now = mono_s();
  if (cpu >= 0) {
    metrics_counter_set(mt->cpu_seconds, NULL, cpu);
    double dt = now - mt->last_wall_s;
    if (dt > 0.001) {
      metrics_gauge_set(mt->cpu, NULL, 100.0 * (cpu - mt->last_cpu_s) / dt);
      mt->last_cpu_s = cpu;
      mt->last_wall_s = now;
    }
  }
}

static int reg(metrics *mt, metrics_type type, const char *name, const char *help,
               const char *const *labels, size_t nlabels, size_t max_series, metrics_family **out) {
  metrics_desc d = {.type = type,
                    .name = name,
                    .help = help,
                    .labels = labels,
                    .nlabels = nlabels,
                    .max_series = max_series};
  return metrics_register(mt->reg, &d, out);
}

static int register_all(metrics *mt) {
  static const char *const type[] = {"type"};
  static const char *const type_status[] = {"type", "status"};
  static const char *const agent_status[] = {"agent", "status"};
  static const char *const queue[] = {"queue"};
  static const char *const op[] = {"op"};
  static const char *const method[] = {"method"};
  static const char *const method_code[] = {"method", "code"};
  const size_t types = METRICS_MAX_TYPES;
  int err = 0;
  err = err ? err
            : reg(mt, METRICS_COUNTER, "agent_commands_received_total",
                  "Commands accepted (REST or AMQP) and stored as new, by type.", type, 1, types,
                  &mt->received);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "agent_commands_executed_total",
                  "Commands that reached a final status, by type and final status.", type_status, 2,
                  types * COMMAND_STATUS_COUNT, &mt->executed);
  err = err ? err
            : reg(mt, METRICS_HISTOGRAM, "command_execution_time_seconds",
                  "Time from a command's start (or dispatch) to its final status, by type.", type,
                  1, types, &mt->exec_time);
  err = err ? err
            : reg(mt, METRICS_SUMMARY, "command_queue_wait_seconds",
                  "Time commands waited between creation and dispatch to an agent.", NULL, 0, 1,
                  &mt->queue_wait);
  if (mt->detailed)
    err = err ? err
              : reg(mt, METRICS_COUNTER, "agent_commands_executed_by_agent_total",
                    "Finished commands by agent and final status (ENABLE_DETAILED_METRICS).",
                    agent_status, 2, METRICS_MAX_AGENT_SERIES, &mt->by_agent);
  err = err ? err
            : reg(mt, METRICS_GAUGE, "agent_connections", "Agents registered (connected) now.",
                  NULL, 0, 1, &mt->connections);
  err = err ? err
            : reg(mt, METRICS_GAUGE, "message_queue_depth",
                  "Messages waiting: \"scheduler\" holds commands waiting for an agent, the AMQP "
                  "command queue's name its depth at the broker.",
                  queue, 1, 8, &mt->queue_depth);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "valkey_operations_total",
                  "Store operations issued to Valkey, by operation.", op, 1, METRICS_MAX_STORE_OPS,
                  &mt->valkey_ops);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "grpc_requests_total",
                  "gRPC calls received, by method (\"unknown\" for methods not served).", method, 1,
                  16, &mt->grpc_req);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "grpc_errors_total",
                  "gRPC calls that ended with a non-OK status, by method and numeric status code.",
                  method_code, 2, 16 * 17, &mt->grpc_err);
  err = err ? err
            : reg(mt, METRICS_GAUGE, "system_memory_usage_bytes",
                  "Resident memory of the manager process (VmRSS).", NULL, 0, 1, &mt->mem);
  err = err ? err
            : reg(mt, METRICS_GAUGE, "system_cpu_usage",
                  "CPU used by the manager process since the previous scrape, in percent of one "
                  "core.",
                  NULL, 0, 1, &mt->cpu);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "process_cpu_seconds_total",
                  "User and system CPU time of the manager process.", NULL, 0, 1, &mt->cpu_seconds);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "agent_heartbeats_total", "Heartbeats received from agents.",
                  NULL, 0, 1, &mt->heartbeats);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "agent_registrations_total",
                  "Agent registrations (reconnections included).", NULL, 0, 1, &mt->registered);
  err = err ? err
            : reg(mt, METRICS_COUNTER, "agent_commands_dispatched_total",
                  "Commands sent to agents (re-dispatches included).", NULL, 0, 1, &mt->dispatched);
  return err;
}

int metrics_create(uv_loop_t *loop, const metrics_config *cfg, metrics **out) {
  if (loop == NULL || cfg == NULL || out == NULL)
    return SM_EINVAL;
  metrics *mt = sm_calloc(1, sizeof(*mt));
  if (mt == NULL)
    return SM_ENOMEM;
  mt->src = cfg->source;
  mt->detailed = cfg->detailed;
  mt->last_wall_s = mono_s();
  mt->last_cpu_s = read_cpu_s();
  if (mt->last_cpu_s < 0)
    mt->last_cpu_s = 0;
  int err = metrics_registry_create(&mt->reg);
  err = err ? err : register_all(mt);
  err = err ? err : metrics_on_collect(mt->reg, on_collect, mt);
  /* series that exist from the start, so a scrape shows every CONTRACT family with a value */
  if (err == 0) {
    metrics_gauge_set(mt->connections, NULL, 0);
    const char *q[] = {"scheduler"};
    metrics_gauge_set(mt->queue_depth, q, 0);
  }
  err = err ? err : metrics_exporter_create(loop, cfg->addr, mt->reg, &mt->exporter);
  if (err) {
    metrics_registry_destroy(mt->reg);
    free(mt);
    return err;
  }
  *out = mt;
  return 0;
}

int metrics_listen(metrics *mt) {
  return metrics_exporter_listen(mt->exporter);
}

int metrics_port(const metrics *mt) {
  return metrics_exporter_port(mt->exporter);
}

metrics_registry *metrics_get_registry(metrics *mt) {
  return mt->reg;
}

static void exporter_closed(void *ud) {
  metrics *mt = ud;
  if (mt->close_cb)
    mt->close_cb(mt->close_ud);
  metrics_registry_destroy(mt->reg);
  free(mt);
}

void metrics_close(metrics *mt, void (*cb)(void *ud), void *ud) {
  if (mt == NULL)
    return;
  mt->close_cb = cb;
  mt->close_ud = ud;
  metrics_exporter_close(mt->exporter, exporter_closed, mt);
}

/* ---- hooks ---- */

static const char *type_of(const metrics *mt, const sm_command *c) {
  return mt->detailed && c->type ? c->type : TYPE_ALL;
}

void metrics_command_received(metrics *mt, const sm_command *c) {
  if (mt == NULL || c == NULL)
    return;
  const char *v[] = {type_of(mt, c)};
  metrics_counter_add(mt->received, v, 1);
}

void metrics_command_finished(metrics *mt, const sm_command *c, double exec_s) {
  if (mt == NULL || c == NULL)
    return;
  const char *status = command_status_name(c->status);
  const char *v[] = {type_of(mt, c), status};
  metrics_counter_add(mt->executed, v, 1);
  /* only commands that reached an agent have an execution time */
  if (c->dispatched_at || c->started_at)
    metrics_observe(mt->exec_time, v, exec_s < 0 ? 0 : exec_s);
  if (c->dispatched_at && c->created_at && c->dispatched_at >= c->created_at)
    metrics_observe(mt->queue_wait, NULL, (double)(c->dispatched_at - c->created_at) / 1000.0);
  if (mt->by_agent && c->agent_id) {
    const char *a[] = {c->agent_id, status};
    metrics_counter_add(mt->by_agent, a, 1);
  }
}

void metrics_grpc_call_start(metrics *mt, const char *path) {
  if (mt == NULL)
    return;
  const char *v[] = {path ? path : METRICS_GRPC_UNKNOWN};
  metrics_counter_add(mt->grpc_req, v, 1);
}

void metrics_grpc_call_end(metrics *mt, const char *path, int known, int started, int status) {
  if (mt == NULL)
    return;
  const char *method = known && path ? path : METRICS_GRPC_UNKNOWN;
  const char *v[] = {method};
  if (!started)
    metrics_counter_add(mt->grpc_req, v, 1);
  if (status != 0) {
    char code[16];
    snprintf(code, sizeof(code), "%d", status);
    const char *e[] = {method, code};
    metrics_counter_add(mt->grpc_err, e, 1);
  }
}
