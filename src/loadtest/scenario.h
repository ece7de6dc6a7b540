/* scenario.h - the settings of sirius-loadtest: flags, a key=value config file (--config, keys
 * are the flag names without dashes) and environment variables. Precedence: flag, then config
 * file, then environment, then the default.
 *
 * Environment: every flag --foo-bar is also LOADTEST_FOO_BAR; the settings the other programs
 * share keep their documented names too: SERVER_ADDR (--server), RABBITMQ_URL (--amqp-url),
 * AMQP_COMMAND_QUEUE, AMQP_RESULT_QUEUE, ADMIN_API_KEY (--api-key), MANAGER_API (--manager-api).
 */
#ifndef SM_LOADTEST_SCENARIO_H
#define SM_LOADTEST_SCENARIO_H

#include <stddef.h>
#include <stdint.h>

#define LT_TYPES_MAX 16          /* command types in one mix */
#define LT_TYPE_NAME_MAX 32      /* bytes of a command type name */
#define LT_SERVERS_MAX 16        /* gRPC addresses in --server */
#define LT_COMMANDS_MAX 50000000 /* commands in one run */
#define LT_ERRBUF 256
#define LT_PROXIES_MAX 8 /* --proxy entries */
#define LT_FAULTS_MAX 32 /* --fault entries */
#define LT_SHELL_MAX 512 /* bytes of a cmd / restart_cmd */
#define LT_HOG_THREADS_MAX 64
#define LT_HOG_MB_MAX 65536

enum lt_submit { LT_SUBMIT_REST = 0, LT_SUBMIT_AMQP };
enum lt_format { LT_FORMAT_TEXT = 0, LT_FORMAT_JSON, LT_FORMAT_CSV, LT_FORMAT_HTML };
enum lt_action { LT_RUN = 0, LT_HELP, LT_VERSION };

/* One entry of the --types mix. */
typedef struct lt_type_weight {
  char name[LT_TYPE_NAME_MAX]; /* command type */
  uint32_t weight;             /* relative share, > 0 */
} lt_type_weight;

/* --proxy NAME=LISTEN->UPSTREAM: a chaos proxy the harness runs. */
typedef struct lt_proxy_spec {
  char name[32];
  char listen[128];   /* host:port (port 0: any free port) */
  char upstream[128]; /* host:port */
} lt_proxy_spec;

/* What a fault does. The first five act on a proxy (target = its name); the process actions on
 * the pid / pid_file / cmd given; the pressures start a bounded hog child for `duration`. */
enum lt_chaos_action {
  LT_ACT_DELAY = 0,
  LT_ACT_DROP,
  LT_ACT_BLACKHOLE,
  LT_ACT_RESET,
  LT_ACT_BANDWIDTH,
  LT_ACT_KILL9,
  LT_ACT_SIGTERM,
  LT_ACT_RESTART,
  LT_ACT_CPU,
  LT_ACT_MEMORY,
};
#define LT_ACT_COUNT 10

/* --fault "at=S duration=S target=T action=A [params]": one scheduled fault. */
typedef struct lt_fault_spec {
  double at;       /* seconds after submission started */
  double duration; /* seconds the fault lasts (process actions: until restart_cmd runs) */
  char target[32]; /* a proxy name, or a label: manager, redis, rabbitmq, ... */
  enum lt_chaos_action action;
  uint64_t delay_ms;              /* delay */
  uint64_t bytes_per_s;           /* bandwidth */
  int pid;                        /* process actions: the process to signal (0: none) */
  char pid_file[256];             /* or a file holding its pid, read when the fault starts */
  char cmd[LT_SHELL_MAX];         /* or a shell command run instead of the signal */
  char restart_cmd[LT_SHELL_MAX]; /* run (sh -c, detached) when the fault ends */
  uint32_t threads;               /* cpu_pressure: busy threads (1) */
  uint32_t mb;                    /* memory_pressure: MiB allocated and touched (64) */
} lt_fault_spec;

typedef struct lt_scenario {
  enum lt_action action;
  uint32_t agents;  /* simulated agents in this process */
  char protocol[8]; /* the agents' protocol: "scan", "hello" (hello.HelloService) or "mixed" */
  uint32_t commands_per_agent;        /* commands = agents * this, unless --commands */
  uint64_t commands;                  /* total commands; 0 with --duration: unlimited until then */
  lt_type_weight types[LT_TYPES_MAX]; /* the mix */
  size_t ntypes;
  double ramp_up;         /* seconds over which the agents connect */
  double duration;        /* seconds of submission; 0: until every command is submitted */
  double report_interval; /* seconds between progress lines; 0: none */
  enum lt_submit submit;  /* REST (POST /api/commands arrays) or AMQP intake */
  char manager_api[256];  /* REST base URL, http://host:port */
  char servers[LT_SERVERS_MAX][128]; /* gRPC host:port of the in-process agents */
  size_t nservers;
  char amqp_url[256];        /* AMQP broker for --submit amqp */
  char command_queue[128];   /* intake queue */
  char result_queue[128];    /* result queue (read in AMQP mode) */
  double rate;               /* commands per second; 0: as fast as accepted */
  char api_key[256];         /* admin API key ("" none) */
  char source_addrs[1024];   /* local addresses for the agents' connections ("" none) */
  double fail_rate;          /* per command: the agent answers failed */
  double hang_rate;          /* per command: the agent never answers */
  double disconnect_rate;    /* per command: the agent drops its connection */
  double crash_rate;         /* share of agents that crash (stop answering, then vanish) */
  uint32_t batch;            /* commands per POST (1..1000) */
  uint32_t connections;      /* HTTP connections submitting in parallel */
  double poll_interval;      /* seconds between result polls (REST) */
  double drain_timeout;      /* seconds to wait for results after the last submission */
  uint32_t command_timeout;  /* timeout_seconds of each command */
  double sleep_seconds;      /* params.seconds of `sleep` commands */
  double scan_duration_ms;   /* simulated scan duration of the agents */
  uint32_t max_concurrent;   /* commands each agent runs at once */
  double heartbeat_interval; /* agents' heartbeat period, seconds */
  char id_prefix[64];        /* agent ids: <prefix><n> */
  uint64_t seed;             /* random seed of the agents' failure draws; 0: time */
  enum lt_format format;     /* report format */
  char output[512];          /* report file ("" stdout) */
  double timeout;            /* overall deadline in seconds; 0: automatic */
  double connect_timeout;    /* seconds to reach the manager (agents or API) before giving up */
  lt_proxy_spec proxies[LT_PROXIES_MAX];
  size_t nproxies;
  lt_fault_spec faults[LT_FAULTS_MAX];
  size_t nfaults;
} lt_scenario;

/* Returns an environment value or NULL (getenv in the program, a table in tests). */
typedef const char *(*lt_getenv_fn)(const char *name);

/* Fills s with the defaults. */
void lt_scenario_defaults(lt_scenario *s);

/* Parses argv (argv[0] skipped), the --config file and the environment over the defaults.
 * Returns 0, or SM_EINVAL with err holding "--flag: reason" (one line). */
int lt_scenario_parse(lt_scenario *s, int argc, const char *const *argv, lt_getenv_fn env,
                      char *err, size_t errlen);

/* Parses a mix "echo:70,sleep:20,scan:10" (weight defaults to 1). Returns 0 or SM_EINVAL. */
int lt_types_parse(const char *text, lt_type_weight *out, size_t *n, char *err, size_t errlen);

/* Total commands the scenario submits; 0 means unlimited (bounded by --duration). */
uint64_t lt_scenario_total(const lt_scenario *s);

/* Parses one --proxy value / one --fault value. Return 0 or SM_EINVAL with the reason. */
int lt_proxy_spec_parse(const char *text, lt_proxy_spec *out, char *err, size_t errlen);
int lt_fault_spec_parse(const char *text, lt_fault_spec *out, char *err, size_t errlen);

/* The name of an action ("delay", "kill9", ...). */
const char *lt_action_name(enum lt_chaos_action a);

/* Whether the action acts on a proxy. */
int lt_action_is_proxy(enum lt_chaos_action a);

/* The overall deadline of a run in seconds: --timeout, or when 0 a bound computed from the
 * scenario (ramp-up, connect timeout, duration or a generous submission time, faults, drain). */
double lt_scenario_deadline(const lt_scenario *s);

/* The usage text. */
const char *lt_scenario_usage(void);

#endif
