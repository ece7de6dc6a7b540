/* opts.h - the settings of sirius-agent (and of other programs that run simulated agents):
 * command-line flags and the environment variables docs/settings.md names (flag wins).
 *
 * Pure: no I/O besides reading the given environment getter, so unit tests drive it directly.
 */
#ifndef SM_CLIENT_OPTS_H
#define SM_CLIENT_OPTS_H

#include <stddef.h>
#include <stdint.h>

#define CLIENT_SOURCE_ADDRS_MAX 64 /* local addresses for --source-addrs */
#define CLIENT_COUNT_MAX 1000000   /* agents in one process */
#define CLIENT_ERRBUF 256
/* --max-concurrent of a hello agent when not given: what the manager assumes of every hello
 * agent (GRPC_HELLO_MAX_CONCURRENT in grpc/services.h) */
#define CLIENT_HELLO_MAX_CONCURRENT 8

/* How a simulated scan's duration is drawn around --scan-duration-ms. */
enum client_dist { CLIENT_DIST_FIXED = 0, CLIENT_DIST_UNIFORM, CLIENT_DIST_EXP };

/* The agent protocol the simulated agents speak (docs/agent-protocol.md). */
enum client_protocol {
  CLIENT_PROTO_SCAN = 0, /* scan.AgentService/Connect (the default) */
  CLIENT_PROTO_HELLO,    /* hello.HelloService/ConnectStream: SiriusScan's agents */
};

/* What main should do after parsing. */
enum client_action { CLIENT_RUN = 0, CLIENT_HELP, CLIENT_VERSION };

typedef struct client_opts {
  enum client_action action;
  const char *server;            /* host:port of the manager's gRPC listener */
  enum client_protocol protocol; /* --protocol scan|hello */
  const char *id;                /* single agent's id; NULL: hostname */
  uint32_t count;                /* 0: single agent named `id`; N: agents id_prefix1..N */
  const char *id_prefix;         /* prefix of the ids with --count */
  const char *capabilities;      /* "k=v,..." (validated) */
  const char *version_tag;       /* reported version */
  const char *segment;           /* reported network segment (CIDR text), "" when not set */
  int32_t max_concurrent;        /* commands run at once, >= 1 */
  double weight;                 /* relative capacity, > 0 */
  double heartbeat_interval;     /* seconds between heartbeats, > 0 */
  int cpu_source_host;           /* heartbeats report host-wide cpu (else this process's share) */
  uint32_t heartbeat_burst;      /* heartbeats per tick (1; more for load tests), while the
                                    stream's send queue has room */
  int allow_exec;                /* exec commands permitted */
  const char *token;             /* bearer token, NULL: none */
  int tls;                       /* connect with TLS */
  const char *tls_ca;            /* CA file to verify the server, NULL: no verification */
  const char *tls_cert;          /* client certificate file (mutual TLS) */
  const char *tls_key;           /* client key file */
  const char *tls_server_name;   /* SNI and verified name; NULL: host of --server */
  int tls_insecure;              /* skip verifying the server (development only) */
  double scan_duration_ms;       /* mean simulated scan duration */
  enum client_dist scan_dist;    /* distribution of scan durations */
  double fail_rate;              /* probability 0..1 that a command fails */
  double hang_rate;              /* probability 0..1 that a command is never answered */
  double disconnect_rate;        /* probability 0..1 that a command drops the connection */
  uint64_t crash_after;          /* exit(3) when the N-th command arrives; 0: never */
  uint64_t seed;                 /* random seed; 0: from time and pid */
  int seed_set;                  /* --seed given */
  uint32_t reconnect_min_ms;     /* backoff base */
  uint32_t reconnect_max_ms;     /* backoff cap */
  uint32_t ramp_ms;              /* initial connects spread over this many ms */
  double stats_interval;         /* seconds between stats lines; 0: none */
  const char *source_addrs[CLIENT_SOURCE_ADDRS_MAX]; /* local bind addresses, round-robin */
  size_t nsource_addrs;
  char source_addrs_buf[1024]; /* storage of source_addrs' strings */
} client_opts;

/* Fills o with the defaults. */
void client_opts_defaults(client_opts *o);

/* Returns an environment value or NULL (getenv in programs, a table in tests). */
typedef const char *(*client_getenv_fn)(const char *name);

/* Parses argv (argv[0] skipped) over the defaults and the environment. Returns 0, or SM_EINVAL
 * with err holding "--flag: reason" (no program name, no newline). */
int client_opts_parse(client_opts *o, int argc, const char *const *argv, client_getenv_fn env,
                      char *err, size_t errlen);

/* Checks a capabilities text: comma-separated key=value pairs, keys non-empty; empty text is
 * valid. Returns the number of pairs, or SM_EINVAL with err holding the reason. */
int client_caps_validate(const char *caps, char *err, size_t errlen);

/* The usage text of sirius-agent. */
const char *client_opts_usage(void);

#endif
