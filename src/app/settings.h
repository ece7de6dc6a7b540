/* settings.h - sirius-manager's settings: defaults, environment variables, flags.
 *
 * Every setting of docs/settings.md plus the project's own limits. A flag wins over the
 * environment, which wins over the default. A bad value fails with one line naming the setting.
 */
#ifndef SM_APP_SETTINGS_H
#define SM_APP_SETTINGS_H

#include "util/err.h"
#include "util/log.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sm_settings {
  /* listeners */
  char *grpc_addr;    /* GRPC_SERVER_ADDR, ":50051" */
  char *admin_addr;   /* ADMIN_API_ADDR, ":8080" */
  char *metrics_addr; /* METRICS_ADDR, ":2112" */
  /* admin security (wired by the admin issue) */
  char *admin_api_key;       /* ADMIN_API_KEY */
  char *admin_api_keys_file; /* ADMIN_API_KEYS_FILE */
  int admin_tls_enabled;     /* ADMIN_TLS_ENABLED */
  char *admin_tls_cert_file;
  char *admin_tls_key_file;
  /* agent TLS */
  int tls_enabled;              /* TLS_ENABLED */
  char *tls_cert_file;          /* TLS_CERT_FILE */
  char *tls_key_file;           /* TLS_KEY_FILE */
  char *tls_client_ca_file;     /* TLS_CLIENT_CA_FILE: mutual TLS when set */
  char *agent_auth_tokens_file; /* AGENT_AUTH_TOKENS_FILE */
  /* store and broker */
  char *valkey_host;         /* VALKEY_HOST; NULL: in-process store */
  int valkey_port;           /* VALKEY_PORT, 6379 */
  char *valkey_password;     /* VALKEY_PASSWORD */
  int valkey_db;             /* VALKEY_DB, 0 */
  size_t valkey_batch_max;   /* VALKEY_BATCH_MAX: records per group-commit call, 256 */
  int valkey_batch_delay_ms; /* VALKEY_BATCH_DELAY_MS: batch window, 0 (end of loop turn) */
  char *rabbitmq_url;        /* RABBITMQ_URL; NULL: no AMQP */
  char *amqp_command_queue;  /* AMQP_COMMAND_QUEUE, "agent-commands" */
  char *amqp_result_queue;   /* AMQP_RESULT_QUEUE, "agent-results" */
  size_t amqp_prefetch;      /* AMQP_PREFETCH, 256 */
  size_t amqp_pub_window;    /* AMQP_PUBLISH_WINDOW, 4096 */
  char *ui_command_queue;    /* SIRIUS_UI_COMMAND_QUEUE; NULL: the UI queue is not served */
  char *ui_response_queue;   /* SIRIUS_UI_RESPONSE_QUEUE, "agent_response" */
  /* logging and identity */
  enum sm_log_level log_level;   /* SIRIUS_LOG_LEVEL */
  enum sm_log_format log_format; /* SIRIUS_LOG_FORMAT */
  char *app_version;             /* APP_VERSION, the build version */
  char *app_env;                 /* APP_ENV, "production" */
  char *instance_id;             /* INSTANCE_ID, the hostname */
  /* scheduling */
  double max_agent_load;            /* MAX_AGENT_LOAD, 0.8 */
  char *lb_strategy;                /* LOAD_BALANCING_STRATEGY, "least_loaded" */
  size_t command_queue_size;        /* COMMAND_QUEUE_SIZE, 1000 */
  double agent_timeout_s;           /* AGENT_TIMEOUT, 300 */
  double command_timeout_s;         /* COMMAND_TIMEOUT, 300 */
  double command_timeout_grace_s;   /* COMMAND_TIMEOUT_GRACE: after timeout_seconds, 10 */
  int max_retries;                  /* MAX_RETRIES, 3 */
  int maintenance_mode;             /* MAINTENANCE_MODE */
  int detailed_metrics;             /* ENABLE_DETAILED_METRICS, true */
  int metrics_retention_days;       /* METRICS_RETENTION_DAYS, 30 */
  double metrics_scrape_interval_s; /* METRICS_SCRAPE_INTERVAL, 15s */
  /* the project's own limits (docs/operations.md) */
  size_t grpc_max_message_bytes;  /* GRPC_MAX_MESSAGE_BYTES, 4 MiB */
  uint32_t grpc_max_streams;      /* GRPC_MAX_CONCURRENT_STREAMS per connection, 16 */
  uint32_t grpc_max_header_bytes; /* GRPC_MAX_HEADER_LIST_BYTES, 16 KiB */
  double grpc_keepalive_s;        /* GRPC_KEEPALIVE_INTERVAL: PING after this much silence, 60 */
  double grpc_idle_timeout_s;     /* GRPC_IDLE_TIMEOUT: close a connection with no stream, 300 */
  size_t
      grpc_max_output_bytes; /* GRPC_MAX_OUTPUT_BYTES per connection before backpressure, 256 KiB */
  double grpc_stall_timeout_s;   /* GRPC_STALL_TIMEOUT: drop a peer not reading this long, 30 */
  size_t max_connections;        /* MAX_CONNECTIONS on the agent listener, 20000 */
  size_t max_agents;             /* MAX_AGENTS in the registry, 100000 */
  double drain_timeout_s;        /* DRAIN_TIMEOUT on shutdown, 10 */
  size_t admin_max_connections;  /* ADMIN_MAX_CONNECTIONS, 1024 */
  size_t admin_max_body_bytes;   /* ADMIN_MAX_BODY_BYTES, 4 MiB */
  size_t admin_max_header_bytes; /* ADMIN_MAX_HEADER_BYTES, 16 KiB */
  double
      admin_request_timeout_s; /* ADMIN_REQUEST_TIMEOUT: a request must arrive whole in this, 30 */
  double admin_idle_timeout_s; /* ADMIN_IDLE_TIMEOUT: keep-alive connection idle limit, 60 */
  int grpc_reflection;         /* GRPC_REFLECTION, true */
  double grpc_first_message_timeout_s; /* GRPC_FIRST_MESSAGE_TIMEOUT: Connect must register in this,
                                          10 */
  double admin_rate_limit_rps;         /* ADMIN_RATE_LIMIT_RPS: requests/s per API key, 0: off */
  size_t admin_rate_limit_burst;       /* ADMIN_RATE_LIMIT_BURST: bucket size per key, 2000 */
  double admin_rate_limit_ip_rps;      /* ADMIN_RATE_LIMIT_IP_RPS: /api requests/s per client
                                          address, 0: off */
  size_t admin_rate_limit_ip_burst;    /* ADMIN_RATE_LIMIT_IP_BURST: bucket size per address */
  size_t admin_rate_limit_max_clients; /* ADMIN_RATE_LIMIT_MAX_CLIENTS: buckets kept (LRU), 10000 */

  /* gRPC request buffering (docs/settings.md) */
  size_t grpc_max_buffered_per_conn; /* GRPC_MAX_BUFFERED_BYTES_PER_CONN: partial requests, 8 MiB */
  size_t grpc_max_buffered_bytes;    /* GRPC_MAX_BUFFERED_BYTES: all connections together, 64 MiB */
  double grpc_message_timeout_s;     /* GRPC_MESSAGE_TIMEOUT: a message completes in this, 30 */

  /* admin connection and body bounds (issue 12) */
  size_t admin_max_buffered_bytes;     /* ADMIN_MAX_BUFFERED_BYTES: all bodies held, 64 MiB */
  size_t admin_max_connections_per_ip; /* ADMIN_MAX_CONNECTIONS_PER_IP, 0: no limit */
  double admin_header_timeout_s;       /* ADMIN_HEADER_TIMEOUT: request head in this, 5 */
} sm_settings;

/* Fills s with defaults, then the environment, then argv. Returns 0, 1 when --help or --version
 * was printed (exit 0), or SM_EINVAL after printing one line "sirius-manager: <SETTING>: ..." to
 * stderr (exit non-zero). */
SM_MUST_CHECK int sm_settings_load(sm_settings *s, int argc, char **argv);

/* Frees the strings of s. */
void sm_settings_finish(sm_settings *s);

#endif
