/* opts.c - sirius-agent flags and environment. */
#include "client/opts.h"

#include "util/err.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void client_opts_defaults(client_opts *o) {
  memset(o, 0, sizeof(*o));
  o->action = CLIENT_RUN;
  o->server = "localhost:50051";
  o->id_prefix = "agent-";
  o->capabilities = "";
  o->version_tag = SM_VERSION;
  o->segment = "";
  o->max_concurrent = 1;
  o->weight = 1.0;
  o->heartbeat_interval = 10.0;
  o->heartbeat_burst = 1;
  o->scan_duration_ms = 1000.0;
  o->scan_dist = CLIENT_DIST_FIXED;
  o->reconnect_min_ms = 100;
  o->reconnect_max_ms = 30000;
  o->ramp_ms = 0;
}

static int fail(char *err, size_t errlen, const char *flag, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, const char *flag, const char *fmt, ...) {
  char reason[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof(reason), fmt, ap);
  va_end(ap);
  snprintf(err, errlen, "%s: %s", flag, reason);
  return SM_EINVAL;
}

static int parse_double(const char *s, double lo, double hi, double *out) {
  char *end;
  if (*s == '\0')
    return SM_EINVAL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end != '\0' || !isfinite(v) || v < lo || v > hi)
    return SM_EINVAL;
  *out = v;
  return 0;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
  char *end;
  if (*s < '0' || *s > '9')
    return SM_EINVAL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end != '\0' || v < lo || v > hi)
    return SM_EINVAL;
  *out = v;
  return 0;
}

int client_caps_validate(const char *caps, char *err, size_t errlen) {
  int n = 0;
  const char *p = caps;
  if (*p == '\0')
    return 0;
  for (;;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', len);
    if (len == 0) {
      snprintf(err, errlen, "empty entry");
      return SM_EINVAL;
    }
    if (eq == NULL) {
      snprintf(err, errlen, "entry \"%.*s\" is not key=value", (int)len, p);
      return SM_EINVAL;
    }
    if (eq == p) {
      snprintf(err, errlen, "entry \"%.*s\" has an empty key", (int)len, p);
      return SM_EINVAL;
    }
    n++;
    if (n > 64) {
      snprintf(err, errlen, "more than 64 entries");
      return SM_EINVAL;
    }
    if (!end)
      break;
    p = end + 1;
  }
  return n;
}

/* Splits "a,b,c" into o->source_addrs, copying into o->source_addrs_buf. */
static int parse_source_addrs(client_opts *o, const char *v, char *err, size_t errlen) {
  const char *flag = "--source-addrs";
  size_t len = strlen(v);
  if (len >= sizeof(o->source_addrs_buf))
    return fail(err, errlen, flag, "too long");
  memcpy(o->source_addrs_buf, v, len + 1);
  o->nsource_addrs = 0;
  char *save = NULL;
  for (char *t = strtok_r(o->source_addrs_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (o->nsource_addrs == CLIENT_SOURCE_ADDRS_MAX)
      return fail(err, errlen, flag, "more than %d addresses", CLIENT_SOURCE_ADDRS_MAX);
    o->source_addrs[o->nsource_addrs++] = t;
  }
  if (o->nsource_addrs == 0)
    return fail(err, errlen, flag, "no address given");
  return 0;
}

/* Checks host:port shape; resolution happens at start. */
static int check_server(const char *v) {
  const char *colon = strrchr(v, ':');
  uint64_t port;
  if (colon == NULL || colon == v)
    return SM_EINVAL;
  if (parse_u64(colon + 1, 1, 65535, &port))
    return SM_EINVAL;
  return 0;
}

enum opt_kind { O_FLAG, O_STR, O_DBL, O_U32, O_U64, O_SPECIAL };

typedef struct opt_def {
  const char *name; /* without "--" */
  const char *env;  /* documented environment variable, or NULL */
  enum opt_kind kind;
  size_t off;    /* offset in client_opts */
  double lo, hi; /* bounds of numbers */
} opt_def;

#define OFF(f) offsetof(client_opts, f)

static const opt_def opt_table[] = {
    {"server", "SERVER_ADDR", O_SPECIAL, OFF(server), 0, 0},
    {"id", "AGENT_ID", O_SPECIAL, OFF(id), 0, 0},
    {"protocol", NULL, O_SPECIAL, OFF(protocol), 0, 0},
    {"count", NULL, O_U32, OFF(count), 1, CLIENT_COUNT_MAX},
    {"id-prefix", NULL, O_STR, OFF(id_prefix), 0, 0},
    {"capabilities", "CAPABILITIES", O_SPECIAL, OFF(capabilities), 0, 0},
    {"version-tag", NULL, O_SPECIAL, OFF(version_tag), 0, 0},
    {"segment", NULL, O_STR, OFF(segment), 0, 0},
    {"max-concurrent", NULL, O_SPECIAL, OFF(max_concurrent), 1, 100000},
    {"weight", NULL, O_SPECIAL, OFF(weight), 0, 1e6},
    {"heartbeat-interval", NULL, O_SPECIAL, OFF(heartbeat_interval), 0.001, 86400},
    {"heartbeat-burst", NULL, O_U32, OFF(heartbeat_burst), 1, 10000},
    {"cpu-source", NULL, O_SPECIAL, OFF(cpu_source_host), 0, 0},
    {"allow-exec", NULL, O_FLAG, OFF(allow_exec), 0, 0},
    {"token", NULL, O_STR, OFF(token), 0, 0},
    {"tls", NULL, O_FLAG, OFF(tls), 0, 0},
    {"tls-ca", NULL, O_STR, OFF(tls_ca), 0, 0},
    {"tls-cert", NULL, O_STR, OFF(tls_cert), 0, 0},
    {"tls-key", NULL, O_STR, OFF(tls_key), 0, 0},
    {"tls-server-name", NULL, O_STR, OFF(tls_server_name), 0, 0},
    {"tls-insecure", NULL, O_FLAG, OFF(tls_insecure), 0, 0},
    {"scan-duration-ms", NULL, O_DBL, OFF(scan_duration_ms), 0, 86400000},
    {"scan-duration-dist", NULL, O_SPECIAL, OFF(scan_dist), 0, 0},
    {"fail-rate", NULL, O_DBL, OFF(fail_rate), 0, 1},
    {"hang-rate", NULL, O_DBL, OFF(hang_rate), 0, 1},
    {"disconnect-rate", NULL, O_DBL, OFF(disconnect_rate), 0, 1},
    {"crash-after", NULL, O_U64, OFF(crash_after), 0, 1e15},
    {"seed", NULL, O_SPECIAL, OFF(seed), 0, 0},
    {"reconnect-min-ms", NULL, O_U32, OFF(reconnect_min_ms), 1, 3600000},
    {"reconnect-max-ms", NULL, O_U32, OFF(reconnect_max_ms), 1, 3600000},
    {"ramp-ms", NULL, O_U32, OFF(ramp_ms), 0, 3600000},
    {"stats-interval", NULL, O_DBL, OFF(stats_interval), 0, 86400},
    {"source-addrs", NULL, O_SPECIAL, OFF(source_addrs), 0, 0},
};

static int apply(client_opts *o, const opt_def *d, const char *flag, const char *v, char *err,
                 size_t errlen) {
  char *base = (char *)o;
  double dv;
  uint64_t uv;
  switch (d->kind) {
  case O_FLAG:
    if (v && strcmp(v, "true") && strcmp(v, "1") && strcmp(v, "false") && strcmp(v, "0"))
      return fail(err, errlen, flag, "expected true or false, got \"%s\"", v);
    *(int *)(base + d->off) = v == NULL || !strcmp(v, "true") || !strcmp(v, "1");
    return 0;
  case O_STR:
    *(const char **)(base + d->off) = v;
    return 0;
  case O_DBL:
    if (parse_double(v, d->lo, d->hi, &dv))
      return fail(err, errlen, flag, "expected a number in [%g, %g], got \"%s\"", d->lo, d->hi, v);
    *(double *)(base + d->off) = dv;
    return 0;
  case O_U32:
  case O_U64:
    if (parse_u64(v, (uint64_t)d->lo, (uint64_t)d->hi, &uv))
      return fail(err, errlen, flag, "expected an integer in [%.0f, %.0f], got \"%s\"", d->lo,
                  d->hi, v);
    if (d->kind == O_U32)
      *(uint32_t *)(base + d->off) = (uint32_t)uv;
    else
      *(uint64_t *)(base + d->off) = uv;
    return 0;
  case O_SPECIAL:
    break;
  }
  const char *n = d->name;
  if (!strcmp(n, "server")) {
    if (check_server(v))
      return fail(err, errlen, flag, "expected host:port, got \"%s\"", v);
    o->server = v;
  } else if (!strcmp(n, "id") || !strcmp(n, "version-tag")) {
    if (*v == '\0' || strlen(v) > 128)
      return fail(err, errlen, flag, "must be 1 to 128 bytes");
    *(const char **)(base + d->off) = v;
  } else if (!strcmp(n, "capabilities")) {
    char reason[128];
    if (client_caps_validate(v, reason, sizeof(reason)) < 0)
      return fail(err, errlen, flag, "%s", reason);
    o->capabilities = v;
  } else if (!strcmp(n, "max-concurrent")) {
    if (parse_u64(v, 1, 100000, &uv))
      return fail(err, errlen, flag, "expected an integer in [1, 100000], got \"%s\"", v);
    o->max_concurrent = (int32_t)uv;
  } else if (!strcmp(n, "protocol")) {
    if (!strcmp(v, "scan"))
      o->protocol = CLIENT_PROTO_SCAN;
    else if (!strcmp(v, "hello"))
      o->protocol = CLIENT_PROTO_HELLO;
    else
      return fail(err, errlen, flag, "expected scan or hello, got \"%s\"", v);
  } else if (!strcmp(n, "cpu-source")) {
    if (!strcmp(v, "host"))
      o->cpu_source_host = 1;
    else if (!strcmp(v, "process"))
      o->cpu_source_host = 0;
    else
      return fail(err, errlen, flag, "expected host or process, got \"%s\"", v);
  } else if (!strcmp(n, "weight") || !strcmp(n, "heartbeat-interval")) {
    if (parse_double(v, d->lo, d->hi, &dv) || dv <= 0)
      return fail(err, errlen, flag, "expected a positive number, got \"%s\"", v);
    *(double *)(base + d->off) = dv;
  } else if (!strcmp(n, "scan-duration-dist")) {
    if (!strcmp(v, "fixed"))
      o->scan_dist = CLIENT_DIST_FIXED;
    else if (!strcmp(v, "uniform"))
      o->scan_dist = CLIENT_DIST_UNIFORM;
    else if (!strcmp(v, "exp"))
      o->scan_dist = CLIENT_DIST_EXP;
    else
      return fail(err, errlen, flag, "expected fixed, uniform or exp, got \"%s\"", v);
  } else if (!strcmp(n, "seed")) {
    if (parse_u64(v, 0, UINT64_MAX, &uv))
      return fail(err, errlen, flag, "expected an unsigned integer, got \"%s\"", v);
    o->seed = uv;
    o->seed_set = 1;
  } else if (!strcmp(n, "source-addrs")) {
    return parse_source_addrs(o, v, err, errlen);
  }
  return 0;
}

static const opt_def *find_opt(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof(opt_table) / sizeof(opt_table[0]); i++)
    if (strlen(opt_table[i].name) == len && !memcmp(opt_table[i].name, name, len))
      return &opt_table[i];
  return NULL;
}

int client_opts_parse(client_opts *o, int argc, const char *const *argv, client_getenv_fn env,
                      char *err, size_t errlen) {
  int given[sizeof(opt_table) / sizeof(opt_table[0])] = {0};
  int rc;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      o->action = CLIENT_HELP;
      return 0;
    }
    if (!strcmp(a, "--version")) {
      o->action = CLIENT_VERSION;
      return 0;
    }
    if (strncmp(a, "--", 2) != 0) {
      snprintf(err, errlen, "%s: unexpected argument", a);
      return SM_EINVAL;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    const opt_def *d = find_opt(name, nlen);
    if (d == NULL) {
      snprintf(err, errlen, "--%.*s: unknown flag (see --help)", (int)nlen, name);
      return SM_EINVAL;
    }
    char flag[64];
    snprintf(flag, sizeof(flag), "--%s", d->name);
    const char *v = eq ? eq + 1 : NULL;
    if (v == NULL && d->kind != O_FLAG) {
      if (i + 1 >= argc)
        return fail(err, errlen, flag, "missing value");
      v = argv[++i];
    }
    rc = apply(o, d, flag, v, err, errlen);
    if (rc)
      return rc;
    given[d - opt_table] = 1;
  }

  /* The environment fills what no flag gave. */
  for (size_t i = 0; i < sizeof(opt_table) / sizeof(opt_table[0]); i++) {
    const opt_def *d = &opt_table[i];
    if (given[i] || d->env == NULL || env == NULL)
      continue;
    const char *v = env(d->env);
    if (v == NULL || *v == '\0')
      continue;
    rc = apply(o, d, d->env, v, err, errlen);
    if (rc)
      return rc;
  }

  /* The manager gives a hello agent CLIENT_HELLO_MAX_CONCURRENT commands at once (the protocol
   * cannot declare a limit), so a hello agent takes as many unless told otherwise. */
  const opt_def *mc = find_opt("max-concurrent", strlen("max-concurrent"));
  if (o->protocol == CLIENT_PROTO_HELLO && !given[mc - opt_table])
    o->max_concurrent = CLIENT_HELLO_MAX_CONCURRENT;
  if (o->reconnect_min_ms > o->reconnect_max_ms)
    return fail(err, errlen, "--reconnect-min-ms", "must not exceed --reconnect-max-ms (%u)",
                o->reconnect_max_ms);
  if ((o->tls_cert == NULL) != (o->tls_key == NULL))
    return fail(err, errlen, o->tls_cert ? "--tls-key" : "--tls-cert",
                "--tls-cert and --tls-key go together");
  if ((o->tls_ca || o->tls_cert || o->tls_server_name || o->tls_insecure) && !o->tls)
    o->tls = 1; /* any TLS flag implies --tls */
  if (o->id && o->count)
    return fail(err, errlen, "--count", "cannot be combined with --id (use --id-prefix)");
  if (o->id_prefix && strlen(o->id_prefix) > 100)
    return fail(err, errlen, "--id-prefix", "longer than 100 bytes");
  return 0;
}

const char *client_opts_usage(void) {
  return "Usage: sirius-agent [flags]\n"
         "A test agent for the SiriusScan Agent Manager: one or many simulated agents.\n"
         "\n"
         "  --server HOST:PORT         manager gRPC address (SERVER_ADDR; localhost:50051)\n"
         "  --id ID                    agent id (AGENT_ID; default: hostname)\n"
         "  --protocol P               scan (scan.AgentService, default) or hello\n"
         "                             (hello.HelloService, SiriusScan's agents: command\n"
         "                             lines run with --allow-exec, else simulated)\n"
         "  --count N                  run N agents named PREFIX1..PREFIXN\n"
         "  --id-prefix P              prefix of ids with --count (agent-)\n"
         "  --capabilities K=V,...     declared capabilities (CAPABILITIES)\n"
         "  --version-tag V            reported version (build version)\n"
         "  --segment CIDR             reported network segment\n"
         "  --max-concurrent N         commands run at once (1; hello: 8); more are rejected\n"
         "                             \"busy\"\n"
         "  --weight W                 relative capacity (1)\n"
         "  --heartbeat-interval S     seconds between heartbeats, fractional allowed (10)\n"
         "  --cpu-source S             cpu in heartbeats: process (this process's share of\n"
         "                             the machine, default) or host (whole machine)\n"
         "  --heartbeat-burst N        heartbeats per interval while the stream has room (1);\n"
         "                             with a 0.001 s interval: as fast as the manager takes them\n"
         "  --allow-exec               permit exec commands (/bin/sh -c)\n"
         "  --token TOKEN              send authorization: Bearer TOKEN\n"
         "  --tls                      connect with TLS (ALPN h2)\n"
         "  --tls-ca FILE              verify the server against this CA\n"
         "  --tls-cert FILE --tls-key FILE   client certificate (mutual TLS)\n"
         "  --tls-server-name NAME     SNI / expected server name\n"
         "  --tls-insecure             do not verify the server (development only)\n"
         "  --scan-duration-ms MS      mean simulated scan duration (1000)\n"
         "  --scan-duration-dist D     fixed, uniform (0..2*mean) or exp (fixed)\n"
         "  --fail-rate P              probability a command fails (0)\n"
         "  --hang-rate P              probability a command is never answered (0)\n"
         "  --disconnect-rate P        probability a command drops the connection (0)\n"
         "  --crash-after N            exit abruptly (code 3) when the N-th command arrives\n"
         "  --seed N                   random seed (reproducible runs)\n"
         "  --reconnect-min-ms MS      backoff base (100)\n"
         "  --reconnect-max-ms MS      backoff cap (30000)\n"
         "  --ramp-ms MS               spread initial connects over MS (0)\n"
         "  --source-addrs A,B,...     bind sockets round-robin to these local addresses\n"
         "  --stats-interval S         print a counters line to stdout every S seconds\n"
         "  --help, --version\n"
         "\n"
         "Heartbeats report host-wide cpu and memory usage (percent, from /proc).\n"
         "Logs: SIRIUS_LOG_LEVEL (info), SIRIUS_LOG_FORMAT (console).\n";
}
