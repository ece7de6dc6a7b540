/* settings.c - one table describes every setting: its environment variable, its flag (derived
 * from the variable: GRPC_SERVER_ADDR -> --grpc-server-addr), its type, range and default. */
#include "app/settings.h"

#include "net/tcp.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/timeutil.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum kind {
  K_STR,
  K_BOOL,
  K_INT,
  K_SIZE,
  K_SECONDS,
  K_DOUBLE,
  K_LEVEL,
  K_FORMAT,
  K_ADDR,
  K_CHOICE
};

typedef struct setting {
  const char *env; /* environment variable; the flag is derived from it */
  enum kind kind;
  size_t off;      /* offset in sm_settings */
  const char *def; /* default as text; NULL: unset */
  double min, max; /* range for numbers */
  const char *help;
  const char *const *choices; /* K_CHOICE */
} setting;

static const char *const strategies[] = {
    "round_robin", "least_loaded", "capability_match", "weighted", "adaptive", "locality", NULL};

#define OFF(f) offsetof(sm_settings, f)
#define KIB 1024.0
#define MIB (1024.0 * 1024.0)

static const setting table[] = {
    {"GRPC_SERVER_ADDR", K_ADDR, OFF(grpc_addr), ":50051", 0, 0, "agent gRPC listener", NULL},
    {"ADMIN_API_ADDR", K_ADDR, OFF(admin_addr), ":8080", 0, 0, "admin REST API, /health, /ready",
     NULL},
    {"METRICS_ADDR", K_ADDR, OFF(metrics_addr), ":2112", 0, 0, "Prometheus /metrics", NULL},
    {"ADMIN_API_KEY", K_STR, OFF(admin_api_key), NULL, 0, 0, "key with the admin role", NULL},
    {"ADMIN_API_KEYS_FILE", K_STR, OFF(admin_api_keys_file), NULL, 0, 0, "file of role:key lines",
     NULL},
    {"ADMIN_TLS_ENABLED", K_BOOL, OFF(admin_tls_enabled), "false", 0, 0,
     "TLS on the admin listener", NULL},
    {"ADMIN_TLS_CERT_FILE", K_STR, OFF(admin_tls_cert_file), NULL, 0, 0,
     "admin TLS certificate (PEM)", NULL},
    {"ADMIN_TLS_KEY_FILE", K_STR, OFF(admin_tls_key_file), NULL, 0, 0, "admin TLS key (PEM)", NULL},
    {"TLS_ENABLED", K_BOOL, OFF(tls_enabled), "false", 0, 0, "TLS (ALPN h2) for agents", NULL},
    {"TLS_CERT_FILE", K_STR, OFF(tls_cert_file), NULL, 0, 0, "agent listener certificate (PEM)",
     NULL},
    {"TLS_KEY_FILE", K_STR, OFF(tls_key_file), NULL, 0, 0, "agent listener key (PEM)", NULL},
    {"TLS_CLIENT_CA_FILE", K_STR, OFF(tls_client_ca_file), NULL, 0, 0,
     "CA for agent certificates: turns on mutual TLS", NULL},
    {"AGENT_AUTH_TOKENS_FILE", K_STR, OFF(agent_auth_tokens_file), NULL, 0, 0,
     "agent_id:token lines; agents must send a bearer token", NULL},
    {"VALKEY_HOST", K_STR, OFF(valkey_host), NULL, 0, 0,
     "Valkey/Redis host; unset: in-process store", NULL},
    {"VALKEY_PORT", K_INT, OFF(valkey_port), "6379", 1, 65535, "Valkey port", NULL},
    {"VALKEY_PASSWORD", K_STR, OFF(valkey_password), NULL, 0, 0, "Valkey AUTH password", NULL},
    {"VALKEY_DB", K_INT, OFF(valkey_db), "0", 0, 65535, "Valkey database number", NULL},
    {"VALKEY_BATCH_MAX", K_SIZE, OFF(valkey_batch_max), "256", 1, 100000,
     "group commit: most records in one Valkey script call", NULL},
    {"VALKEY_BATCH_DELAY_MS", K_INT, OFF(valkey_batch_delay_ms), "0", 0, 1000,
     "group commit: wait this long after a batch's first record; 0: send at the loop turn's end",
     NULL},
    {"RABBITMQ_URL", K_STR, OFF(rabbitmq_url), NULL, 0, 0,
     "amqp://user:pass@host:port/vhost; unset: no AMQP", NULL},
    {"AMQP_COMMAND_QUEUE", K_STR, OFF(amqp_command_queue), "agent-commands", 0, 0,
     "durable intake queue", NULL},
    {"AMQP_RESULT_QUEUE", K_STR, OFF(amqp_result_queue), "agent-results", 0, 0,
     "durable result queue", NULL},
    {"AMQP_PREFETCH", K_SIZE, OFF(amqp_prefetch), "256", 1, 65535,
     "intake deliveries held unacked (basic.qos)", NULL},
    {"AMQP_PUBLISH_WINDOW", K_SIZE, OFF(amqp_pub_window), "4096", 1, 1000000,
     "result publishes awaiting a confirm", NULL},
    {"SIRIUS_UI_COMMAND_QUEUE", K_STR, OFF(ui_command_queue), NULL, 0, 0,
     "SiriusScan UI's non-durable command queue (its UI uses agent_commands); unset: off", NULL},
    {"SIRIUS_UI_RESPONSE_QUEUE", K_STR, OFF(ui_response_queue), "agent_response", 0, 0,
     "where replies to the UI's queue messages go", NULL},
    {"SIRIUS_LOG_LEVEL", K_LEVEL, OFF(log_level), "info", 0, 0, "debug, info, warn, error", NULL},
    {"SIRIUS_LOG_FORMAT", K_FORMAT, OFF(log_format), "json", 0, 0, "json or console", NULL},
    {"APP_VERSION", K_STR, OFF(app_version), SM_VERSION, 0, 0, "version reported by /api/status",
     NULL},
    {"APP_ENV", K_STR, OFF(app_env), "production", 0, 0,
     "environment name (development opens "
     "the API without keys)",
     NULL},
    {"INSTANCE_ID", K_STR, OFF(instance_id), NULL, 0, 0, "this manager's name (default: hostname)",
     NULL},
    {"MAX_AGENT_LOAD", K_DOUBLE, OFF(max_agent_load), "0.8", 0, 1,
     "no new command to an agent at or above this load", NULL},
    {"LOAD_BALANCING_STRATEGY", K_CHOICE, OFF(lb_strategy), "least_loaded", 0, 0,
     "round_robin, least_loaded, capability_match, weighted, adaptive, locality", strategies},
    {"COMMAND_QUEUE_SIZE", K_SIZE, OFF(command_queue_size), "1000", 1, 10000000,
     "commands waiting for an agent", NULL},
    {"AGENT_TIMEOUT", K_SECONDS, OFF(agent_timeout_s), "300", 0.05, 86400 * 7,
     "prune agents silent this long", NULL},
    {"COMMAND_TIMEOUT", K_SECONDS, OFF(command_timeout_s), "300", 0.001, 86400 * 30,
     "default execution timeout", NULL},
    {"COMMAND_TIMEOUT_GRACE", K_SECONDS, OFF(command_timeout_grace_s), "10", 0.001, 3600,
     "extra time after a command's timeout before it is timed_out", NULL},
    {"MAX_RETRIES", K_INT, OFF(max_retries), "3", 0, 100, "re-dispatches after agent loss", NULL},
    {"MAINTENANCE_MODE", K_BOOL, OFF(maintenance_mode), "false", 0, 0, "start in maintenance mode",
     NULL},
    {"ENABLE_DETAILED_METRICS", K_BOOL, OFF(detailed_metrics), "true", 0, 0,
     "per-agent and per-type labels", NULL},
    {"METRICS_RETENTION_DAYS", K_INT, OFF(metrics_retention_days), "30", 1, 36500,
     "used by sirius-metrics", NULL},
    {"METRICS_SCRAPE_INTERVAL", K_SECONDS, OFF(metrics_scrape_interval_s), "15s", 0.1, 86400,
     "used by sirius-metrics", NULL},
    {"GRPC_MAX_MESSAGE_BYTES", K_SIZE, OFF(grpc_max_message_bytes), "4194304", 64, 256 * MIB,
     "largest gRPC message accepted", NULL},
    {"GRPC_MAX_CONCURRENT_STREAMS", K_SIZE, OFF(grpc_max_streams), "16", 1, 1000,
     "HTTP/2 streams per agent connection", NULL},
    {"GRPC_MAX_HEADER_LIST_BYTES", K_SIZE, OFF(grpc_max_header_bytes), "16384", 1024, MIB,
     "HTTP/2 header list size", NULL},
    {"GRPC_KEEPALIVE_INTERVAL", K_SECONDS, OFF(grpc_keepalive_s), "60", 0.05, 86400,
     "PING an agent connection silent this long", NULL},
    {"GRPC_IDLE_TIMEOUT", K_SECONDS, OFF(grpc_idle_timeout_s), "300", 0.05, 86400,
     "close a connection without streams after this", NULL},
    {"GRPC_MAX_OUTPUT_BYTES", K_SIZE, OFF(grpc_max_output_bytes), "262144", 4 * KIB, 64 * MIB,
     "queued output per connection before backpressure", NULL},
    {"GRPC_STALL_TIMEOUT", K_SECONDS, OFF(grpc_stall_timeout_s), "30", 0.05, 86400,
     "drop a connection that does not read its output this long", NULL},
    {"GRPC_REFLECTION", K_BOOL, OFF(grpc_reflection), "true", 0, 0,
     "serve gRPC server reflection (grpcurl list/describe) on the agent listener", NULL},
    {"GRPC_FIRST_MESSAGE_TIMEOUT", K_SECONDS, OFF(grpc_first_message_timeout_s), "10", 0.05, 3600,
     "a Connect stream must register within this", NULL},
    {"GRPC_MAX_BUFFERED_BYTES_PER_CONN", K_SIZE, OFF(grpc_max_buffered_per_conn), "8388608",
     64 * KIB, 4096 * MIB, "partial request data one connection may hold (at least one message)",
     NULL},
    {"GRPC_MAX_BUFFERED_BYTES", K_SIZE, OFF(grpc_max_buffered_bytes), "67108864", 64 * KIB,
     65536 * MIB, "partial request data all agent connections may hold together", NULL},
    {"GRPC_MESSAGE_TIMEOUT", K_SECONDS, OFF(grpc_message_timeout_s), "30", 0.05, 3600,
     "a request message must arrive whole within this of its first byte", NULL},
    {"MAX_CONNECTIONS", K_SIZE, OFF(max_connections), "20000", 1, 10000000,
     "agent connections accepted at once", NULL},
    {"MAX_AGENTS", K_SIZE, OFF(max_agents), "100000", 1, 10000000, "agents in the registry", NULL},
    {"DRAIN_TIMEOUT", K_SECONDS, OFF(drain_timeout_s), "10", 0, 3600,
     "graceful shutdown: time for in-flight work", NULL},
    {"ADMIN_MAX_CONNECTIONS", K_SIZE, OFF(admin_max_connections), "1024", 1, 1000000,
     "admin connections at once", NULL},
    {"ADMIN_MAX_CONNECTIONS_PER_IP", K_SIZE, OFF(admin_max_connections_per_ip), "0", 0, 1000000,
     "admin connections per client address (0: no limit)", NULL},
    {"ADMIN_MAX_BODY_BYTES", K_SIZE, OFF(admin_max_body_bytes), "4194304", 1, 256 * MIB,
     "largest admin request body", NULL},
    {"ADMIN_MAX_BUFFERED_BYTES", K_SIZE, OFF(admin_max_buffered_bytes), "67108864", 0, 1e12,
     "admin request bodies held at once, all connections (0: no bound)", NULL},
    {"ADMIN_MAX_HEADER_BYTES", K_SIZE, OFF(admin_max_header_bytes), "16384", 256, MIB,
     "largest admin request head", NULL},
    {"ADMIN_HEADER_TIMEOUT", K_SECONDS, OFF(admin_header_timeout_s), "5", 0.05, 3600,
     "an admin request head (and TLS handshake) must arrive within this", NULL},
    {"ADMIN_REQUEST_TIMEOUT", K_SECONDS, OFF(admin_request_timeout_s), "30", 0.05, 3600,
     "an admin request must arrive whole within this", NULL},
    {"ADMIN_IDLE_TIMEOUT", K_SECONDS, OFF(admin_idle_timeout_s), "60", 0.05, 86400,
     "close idle keep-alive admin connections after this", NULL},
    {"ADMIN_RATE_LIMIT_RPS", K_DOUBLE, OFF(admin_rate_limit_rps), "1000", 0, 1e9,
     "admin requests per second per API key (0: no limit)", NULL},
    {"ADMIN_RATE_LIMIT_BURST", K_SIZE, OFF(admin_rate_limit_burst), "2000", 1, 1e9,
     "admin requests a key may send at once", NULL},
    {"ADMIN_RATE_LIMIT_IP_RPS", K_DOUBLE, OFF(admin_rate_limit_ip_rps), "1000", 0, 1e9,
     "/api requests per second per client address (0: no limit)", NULL},
    {"ADMIN_RATE_LIMIT_IP_BURST", K_SIZE, OFF(admin_rate_limit_ip_burst), "2000", 1, 1e9,
     "/api requests an address may send at once", NULL},
    {"ADMIN_RATE_LIMIT_MAX_CLIENTS", K_SIZE, OFF(admin_rate_limit_max_clients), "10000", 1, 1e7,
     "rate-limit buckets kept per table (least recently used dropped)", NULL},
};

#define NSETTINGS (sizeof(table) / sizeof(table[0]))

static void flag_name(const char *env, char *out, size_t size) {
  size_t i = 0;
  out[i++] = '-';
  out[i++] = '-';
  for (const char *p = env; *p && i + 1 < size; p++)
    out[i++] = *p == '_' ? '-' : (char)tolower((unsigned char)*p);
  out[i] = '\0';
}

static int parse_bool(const char *v, int *out) {
  if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
    *out = 1;
  else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no") ||
           !strcasecmp(v, "off"))
    *out = 0;
  else
    return SM_EINVAL;
  return 0;
}

static int parse_number(const char *v, double *out) {
  char *end;
  if (*v == '\0' || isspace((unsigned char)*v))
    return SM_EINVAL;
  errno = 0;
  double d = strtod(v, &end);
  if (errno || *end != '\0' || !isfinite(d))
    return SM_EINVAL;
  *out = d;
  return 0;
}

/* Stores value into the setting; on error writes a reason into why. */
static int apply(sm_settings *s, const setting *t, const char *v, char *why, size_t wsize) {
  char *base = (char *)s;
  double d = 0;
  switch (t->kind) {
  case K_STR:
  case K_ADDR:
  case K_CHOICE: {
    if (t->kind == K_ADDR) {
      char host[256];
      int port;
      if (net_addr_split(v, host, &port)) {
        snprintf(why, wsize, "'%s' is not host:port", v);
        return SM_EINVAL;
      }
    }
    if (t->kind == K_CHOICE) {
      int ok = 0;
      for (const char *const *c = t->choices; *c; c++)
        ok |= strcmp(*c, v) == 0;
      if (!ok) {
        snprintf(why, wsize, "'%s' is not one of: %s", v, t->help);
        return SM_EINVAL;
      }
    }
    char **slot = (char **)(base + t->off);
    char *copy = sm_strdup(v);
    if (copy == NULL)
      return SM_ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
  }
  case K_BOOL:
    if (parse_bool(v, (int *)(base + t->off))) {
      snprintf(why, wsize, "'%s' is not a boolean (true or false)", v);
      return SM_EINVAL;
    }
    return 0;
  case K_LEVEL:
    if (sm_log_level_parse(v, (enum sm_log_level *)(base + t->off))) {
      snprintf(why, wsize, "'%s' is not one of debug, info, warn, error", v);
      return SM_EINVAL;
    }
    return 0;
  case K_FORMAT:
    if (sm_log_format_parse(v, (enum sm_log_format *)(base + t->off))) {
      snprintf(why, wsize, "'%s' is not json or console", v);
      return SM_EINVAL;
    }
    return 0;
  case K_SECONDS:
    if (sm_duration_parse(v, &d)) {
      snprintf(why, wsize, "'%s' is not a duration (seconds, or with ms/s/m/h)", v);
      return SM_EINVAL;
    }
    break;
  case K_INT:
  case K_SIZE:
    if (parse_number(v, &d) || d != floor(d)) {
      snprintf(why, wsize, "'%s' is not an integer", v);
      return SM_EINVAL;
    }
    break;
  case K_DOUBLE:
    if (parse_number(v, &d)) {
      snprintf(why, wsize, "'%s' is not a number", v);
      return SM_EINVAL;
    }
    break;
  }
  if (d < t->min || d > t->max) {
    snprintf(why, wsize, "%s is out of range %g..%g", v, t->min, t->max);
    return SM_EINVAL;
  }
  switch (t->kind) {
  case K_INT:
    *(int *)(base + t->off) = (int)d;
    break;
  case K_SIZE:
    if (t->off == OFF(grpc_max_streams) || t->off == OFF(grpc_max_header_bytes))
      *(uint32_t *)(base + t->off) = (uint32_t)d;
    else
      *(size_t *)(base + t->off) = (size_t)d;
    break;
  default:
    *(double *)(base + t->off) = d;
  }
  return 0;
}

static void usage(FILE *f) {
  fprintf(f,
          "Usage: sirius-manager [--SETTING VALUE | --SETTING=VALUE]...\n"
          "\n"
          "The SiriusScan agent manager: agents connect over gRPC, operators use the admin API.\n"
          "Each setting is a flag and an environment variable; the flag wins.\n"
          "\n"
          "  -h, --help       print this help and exit\n"
          "  -V, --version    print the version and exit\n"
          "\n");
  for (size_t i = 0; i < NSETTINGS; i++) {
    char flag[64];
    flag_name(table[i].env, flag, sizeof(flag));
    fprintf(f, "  %-32s %s\n      %s (default: %s)\n", flag, table[i].env, table[i].help,
            table[i].def ? table[i].def : "unset");
  }
}

static const setting *by_flag(const char *arg, size_t len) {
  for (size_t i = 0; i < NSETTINGS; i++) {
    char flag[64];
    flag_name(table[i].env, flag, sizeof(flag));
    if (strlen(flag) == len && strncmp(flag, arg, len) == 0)
      return &table[i];
  }
  return NULL;
}

int sm_settings_load(sm_settings *s, int argc, char **argv) {
  char why[256];
  memset(s, 0, sizeof(*s));
  for (size_t i = 0; i < NSETTINGS; i++) {
    if (table[i].def && apply(s, &table[i], table[i].def, why, sizeof(why))) {
      fprintf(stderr, "sirius-manager: %s: bad default: %s\n", table[i].env, why);
      return SM_EINVAL;
    }
  }
  for (size_t i = 0; i < NSETTINGS; i++) {
    const char *v = getenv(table[i].env);
    if (v == NULL)
      continue;
    int err = apply(s, &table[i], v, why, sizeof(why));
    if (err) {
      fprintf(stderr, "sirius-manager: %s: %s\n", table[i].env, why);
      return err;
    }
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 1;
    }
    if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
      printf("sirius-manager %s\n", SM_VERSION);
      return 1;
    }
    const char *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    const setting *t = strncmp(a, "--", 2) == 0 ? by_flag(a, len) : NULL;
    if (t == NULL) {
      fprintf(stderr, "sirius-manager: %.*s: unknown option (see --help)\n", (int)len, a);
      return SM_EINVAL;
    }
    const char *v;
    if (eq) {
      v = eq + 1;
    } else if (t->kind == K_BOOL) {
      int b;
      v = "true";
      if (i + 1 < argc && parse_bool(argv[i + 1], &b) == 0)
        v = argv[++i];
    } else if (i + 1 < argc) {
      v = argv[++i];
    } else {
      fprintf(stderr, "sirius-manager: %s: missing value\n", a);
      return SM_EINVAL;
    }
    int err = apply(s, t, v, why, sizeof(why));
    if (err) {
      char flag[64];
      flag_name(t->env, flag, sizeof(flag));
      fprintf(stderr, "sirius-manager: %s: %s\n", flag, why);
      return err;
    }
  }
  if (s->instance_id == NULL) {
    char host[256];
    if (gethostname(host, sizeof(host)) != 0)
      strcpy(host, "sirius-manager");
    host[sizeof(host) - 1] = '\0';
    s->instance_id = sm_strdup(host);
    if (s->instance_id == NULL)
      return SM_ENOMEM;
  }
  if (s->tls_enabled && (s->tls_cert_file == NULL || s->tls_key_file == NULL)) {
    fprintf(stderr, "sirius-manager: TLS_ENABLED: needs TLS_CERT_FILE and TLS_KEY_FILE\n");
    return SM_EINVAL;
  }
  if (s->admin_max_buffered_bytes && s->admin_max_buffered_bytes < s->admin_max_body_bytes) {
    fprintf(stderr, "sirius-manager: ADMIN_MAX_BUFFERED_BYTES: must be 0 or at least "
                    "ADMIN_MAX_BODY_BYTES\n");
    return SM_EINVAL;
  }
  if (s->admin_tls_enabled && (s->admin_tls_cert_file == NULL || s->admin_tls_key_file == NULL)) {
    fprintf(
        stderr,
        "sirius-manager: ADMIN_TLS_ENABLED: needs ADMIN_TLS_CERT_FILE and ADMIN_TLS_KEY_FILE\n");
    return SM_EINVAL;
  }
  return 0;
}

void sm_settings_finish(sm_settings *s) {
  char *base = (char *)s;
  for (size_t i = 0; i < NSETTINGS; i++) {
    enum kind k = table[i].kind;
    if (k == K_STR || k == K_ADDR || k == K_CHOICE) {
      char **slot = (char **)(base + table[i].off);
      free(*slot);
      *slot = NULL;
    }
  }
  free(s->instance_id);
  s->instance_id = NULL;
}
