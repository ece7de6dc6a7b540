/* scenario.c - sirius-loadtest settings: one table of options applied from the environment, then
 * the config file, then the flags, so that later sources override earlier ones. */
#include "loadtest/scenario.h"

#include "util/err.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum opt_kind {
  K_U32,
  K_U64,
  K_DBL,
  K_STR,
  K_TYPES,
  K_SUBMIT,
  K_FORMAT,
  K_SERVERS,
  K_URL,
  K_PROXY,
  K_FAULT
};

typedef struct opt_def {
  const char *name; /* flag without dashes, also the config key */
  enum opt_kind kind;
  size_t off;        /* offset of the field in lt_scenario */
  size_t size;       /* K_STR/K_URL: buffer size */
  double min, max;   /* numeric bounds, inclusive */
  const char *alias; /* documented environment name, or NULL */
} opt_def;

#define OFF(f) offsetof(lt_scenario, f)
#define SZ(f) sizeof(((lt_scenario *)0)->f)

static const opt_def opts[] = {
    {"agents", K_U32, OFF(agents), 0, 0, 1000000, NULL},
    {"protocol", K_STR, OFF(protocol), SZ(protocol), 0, 0, NULL},
    {"commands-per-agent", K_U32, OFF(commands_per_agent), 0, 0, 1000000, NULL},
    {"commands", K_U64, OFF(commands), 0, 0, LT_COMMANDS_MAX, NULL},
    {"types", K_TYPES, 0, 0, 0, 0, NULL},
    {"ramp-up", K_DBL, OFF(ramp_up), 0, 0, 3600, NULL},
    {"duration", K_DBL, OFF(duration), 0, 0, 86400, NULL},
    {"report-interval", K_DBL, OFF(report_interval), 0, 0, 3600, NULL},
    {"submit", K_SUBMIT, OFF(submit), 0, 0, 0, NULL},
    {"manager-api", K_URL, OFF(manager_api), SZ(manager_api), 0, 0, "MANAGER_API"},
    {"server", K_SERVERS, 0, 0, 0, 0, "SERVER_ADDR"},
    {"amqp-url", K_STR, OFF(amqp_url), SZ(amqp_url), 0, 0, "RABBITMQ_URL"},
    {"command-queue", K_STR, OFF(command_queue), SZ(command_queue), 0, 0, "AMQP_COMMAND_QUEUE"},
    {"result-queue", K_STR, OFF(result_queue), SZ(result_queue), 0, 0, "AMQP_RESULT_QUEUE"},
    {"rate", K_DBL, OFF(rate), 0, 0, 10000000, NULL},
    {"api-key", K_STR, OFF(api_key), SZ(api_key), 0, 0, "ADMIN_API_KEY"},
    {"source-addrs", K_STR, OFF(source_addrs), SZ(source_addrs), 0, 0, NULL},
    {"fail-rate", K_DBL, OFF(fail_rate), 0, 0, 1, NULL},
    {"hang-rate", K_DBL, OFF(hang_rate), 0, 0, 1, NULL},
    {"disconnect-rate", K_DBL, OFF(disconnect_rate), 0, 0, 1, NULL},
    {"crash-rate", K_DBL, OFF(crash_rate), 0, 0, 1, NULL},
    {"batch", K_U32, OFF(batch), 0, 1, 1000, NULL},
    {"connections", K_U32, OFF(connections), 0, 1, 64, NULL},
    {"poll-interval", K_DBL, OFF(poll_interval), 0, 0.01, 60, NULL},
    {"drain-timeout", K_DBL, OFF(drain_timeout), 0, 0, 86400, NULL},
    {"command-timeout", K_U32, OFF(command_timeout), 0, 1, 86400, NULL},
    {"sleep-seconds", K_DBL, OFF(sleep_seconds), 0, 0, 3600, NULL},
    {"scan-duration-ms", K_DBL, OFF(scan_duration_ms), 0, 0, 3600000, NULL},
    {"max-concurrent", K_U32, OFF(max_concurrent), 0, 1, 100000, NULL},
    {"heartbeat-interval", K_DBL, OFF(heartbeat_interval), 0, 0.01, 3600, NULL},
    {"id-prefix", K_STR, OFF(id_prefix), SZ(id_prefix), 0, 0, NULL},
    {"seed", K_U64, OFF(seed), 0, 0, 1e18, NULL},
    {"format", K_FORMAT, OFF(format), 0, 0, 0, NULL},
    {"output", K_STR, OFF(output), SZ(output), 0, 0, NULL},
    {"timeout", K_DBL, OFF(timeout), 0, 0, 864000, NULL},
    {"connect-timeout", K_DBL, OFF(connect_timeout), 0, 0.1, 3600, NULL},
    {"proxy", K_PROXY, 0, 0, 0, 0, NULL},
    {"fault", K_FAULT, 0, 0, 0, 0, NULL},
};

void lt_scenario_defaults(lt_scenario *s) {
  memset(s, 0, sizeof(*s));
  s->agents = 10;
  snprintf(s->protocol, sizeof(s->protocol), "scan");
  s->commands_per_agent = 10;
  snprintf(s->types[0].name, sizeof(s->types[0].name), "echo");
  s->types[0].weight = 1;
  s->ntypes = 1;
  s->report_interval = 1.0;
  snprintf(s->manager_api, sizeof(s->manager_api), "http://127.0.0.1:8080");
  snprintf(s->servers[0], sizeof(s->servers[0]), "localhost:50051");
  s->nservers = 1;
  snprintf(s->command_queue, sizeof(s->command_queue), "agent-commands");
  snprintf(s->result_queue, sizeof(s->result_queue), "agent-results");
  s->batch = 100;
  s->connections = 4;
  s->poll_interval = 0.2;
  s->drain_timeout = 60;
  s->command_timeout = 30;
  s->sleep_seconds = 0.05;
  s->scan_duration_ms = 50;
  s->max_concurrent = 4;
  s->heartbeat_interval = 5;
  snprintf(s->id_prefix, sizeof(s->id_prefix), "lt-agent-");
  s->connect_timeout = 10;
}

int lt_types_parse(const char *text, lt_type_weight *out, size_t *n, char *err, size_t errlen) {
  size_t cnt = 0;
  const char *p = text;
  while (*p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *colon = memchr(p, ':', len);
    size_t nlen = colon ? (size_t)(colon - p) : len;
    if (nlen == 0 || nlen >= LT_TYPE_NAME_MAX) {
      snprintf(err, errlen, "expected type[:weight],... with names of 1 to %d bytes",
               LT_TYPE_NAME_MAX - 1);
      return SM_EINVAL;
    }
    if (cnt == LT_TYPES_MAX) {
      snprintf(err, errlen, "at most %d types", LT_TYPES_MAX);
      return SM_EINVAL;
    }
    unsigned long w = 1;
    if (colon) {
      char num[16];
      size_t wl = len - nlen - 1;
      char *e;
      if (wl == 0 || wl >= sizeof(num)) {
        snprintf(err, errlen, "weight of \"%.*s\": expected an integer 1..1000000", (int)nlen, p);
        return SM_EINVAL;
      }
      memcpy(num, colon + 1, wl);
      num[wl] = '\0';
      errno = 0;
      w = strtoul(num, &e, 10);
      if (!isdigit((unsigned char)num[0]) || *e || errno || w < 1 || w > 1000000) {
        snprintf(err, errlen, "weight of \"%.*s\": expected an integer 1..1000000", (int)nlen, p);
        return SM_EINVAL;
      }
    }
    memcpy(out[cnt].name, p, nlen);
    out[cnt].name[nlen] = '\0';
    out[cnt].weight = (uint32_t)w;
    cnt++;
    p += len;
    if (*p == ',')
      p++;
  }
  if (cnt == 0) {
    snprintf(err, errlen, "expected at least one type");
    return SM_EINVAL;
  }
  *n = cnt;
  return 0;
}

static int parse_servers(lt_scenario *s, const char *v, char *err, size_t errlen) {
  size_t cnt = 0;
  const char *p = v;
  while (*p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *colon = len ? memchr(p, ':', len) : NULL;
    if (len == 0 || len >= sizeof(s->servers[0]) || colon == NULL || colon == p + len - 1) {
      snprintf(err, errlen, "expected host:port[,host:port...]");
      return SM_EINVAL;
    }
    if (cnt == LT_SERVERS_MAX) {
      snprintf(err, errlen, "at most %d addresses", LT_SERVERS_MAX);
      return SM_EINVAL;
    }
    memcpy(s->servers[cnt], p, len);
    s->servers[cnt][len] = '\0';
    cnt++;
    p += len;
    if (*p == ',')
      p++;
  }
  if (cnt == 0) {
    snprintf(err, errlen, "expected host:port[,host:port...]");
    return SM_EINVAL;
  }
  s->nservers = cnt;
  return 0;
}

/* Applies one value; err gets the reason without the flag name. */
static int apply(lt_scenario *s, const opt_def *d, const char *v, char *err, size_t errlen) {
  char *base = (char *)s;
  char *end;
  switch (d->kind) {
  case K_U32:
  case K_U64: {
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (!isdigit((unsigned char)v[0]) || *end || errno || (double)n < d->min ||
        (double)n > d->max) {
      snprintf(err, errlen, "expected an integer between %.0f and %.0f", d->min, d->max);
      return SM_EINVAL;
    }
    if (d->kind == K_U32)
      *(uint32_t *)(base + d->off) = (uint32_t)n;
    else
      *(uint64_t *)(base + d->off) = (uint64_t)n;
    return 0;
  }
  case K_DBL: {
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(x) || x < d->min || x > d->max) {
      snprintf(err, errlen, "expected a number between %g and %g", d->min, d->max);
      return SM_EINVAL;
    }
    *(double *)(base + d->off) = x;
    return 0;
  }
  case K_STR:
    if (strlen(v) >= d->size) {
      snprintf(err, errlen, "longer than %zu bytes", d->size - 1);
      return SM_EINVAL;
    }
    snprintf(base + d->off, d->size, "%s", v);
    return 0;
  case K_URL:
    if (strncmp(v, "http://", 7) != 0 || v[7] == '\0' || strlen(v) >= d->size) {
      snprintf(err, errlen, "expected http://host:port");
      return SM_EINVAL;
    }
    snprintf(base + d->off, d->size, "%s", v);
    return 0;
  case K_TYPES: {
    lt_type_weight t[LT_TYPES_MAX];
    size_t n = 0;
    if (lt_types_parse(v, t, &n, err, errlen))
      return SM_EINVAL;
    memcpy(s->types, t, sizeof(t));
    s->ntypes = n;
    return 0;
  }
  case K_SUBMIT:
    if (strcmp(v, "rest") == 0)
      s->submit = LT_SUBMIT_REST;
    else if (strcmp(v, "amqp") == 0)
      s->submit = LT_SUBMIT_AMQP;
    else {
      snprintf(err, errlen, "expected rest or amqp");
      return SM_EINVAL;
    }
    return 0;
  case K_FORMAT:
    if (strcmp(v, "text") == 0)
      s->format = LT_FORMAT_TEXT;
    else if (strcmp(v, "json") == 0)
      s->format = LT_FORMAT_JSON;
    else if (strcmp(v, "csv") == 0)
      s->format = LT_FORMAT_CSV;
    else if (strcmp(v, "html") == 0)
      s->format = LT_FORMAT_HTML;
    else {
      snprintf(err, errlen, "expected text, json, csv or html");
      return SM_EINVAL;
    }
    return 0;
  case K_SERVERS:
    return parse_servers(s, v, err, errlen);
  case K_PROXY: {
    if (s->nproxies == LT_PROXIES_MAX) {
      snprintf(err, errlen, "at most %d proxies", LT_PROXIES_MAX);
      return SM_EINVAL;
    }
    lt_proxy_spec ps;
    if (lt_proxy_spec_parse(v, &ps, err, errlen))
      return SM_EINVAL;
    for (size_t i = 0; i < s->nproxies; i++)
      if (strcmp(s->proxies[i].name, ps.name) == 0) {
        snprintf(err, errlen, "proxy \"%s\" given twice", ps.name);
        return SM_EINVAL;
      }
    s->proxies[s->nproxies++] = ps;
    return 0;
  }
  case K_FAULT: {
    if (s->nfaults == LT_FAULTS_MAX) {
      snprintf(err, errlen, "at most %d faults", LT_FAULTS_MAX);
      return SM_EINVAL;
    }
    if (lt_fault_spec_parse(v, &s->faults[s->nfaults], err, errlen))
      return SM_EINVAL;
    s->nfaults++;
    return 0;
  }
  }
  return SM_EINVAL;
}

static const opt_def *find(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
    if (strlen(opts[i].name) == len && memcmp(opts[i].name, name, len) == 0)
      return &opts[i];
  return NULL;
}

static int apply_named(lt_scenario *s, const opt_def *d, const char *v, const char *where,
                       char *err, size_t errlen) {
  char why[LT_ERRBUF];
  if (apply(s, d, v, why, sizeof(why)) == 0)
    return 0;
  snprintf(err, errlen, "--%s%s: %s", d->name, where, why);
  return SM_EINVAL;
}

static int apply_env(lt_scenario *s, lt_getenv_fn env, char *err, size_t errlen) {
  for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
    const opt_def *d = &opts[i];
    char name[64] = "LOADTEST_";
    size_t k = strlen(name);
    for (const char *p = d->name; *p && k + 1 < sizeof(name); p++)
      name[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    name[k] = '\0';
    const char *v = env(name);
    const char *used = name;
    if ((v == NULL || *v == '\0') && d->alias) {
      v = env(d->alias);
      used = d->alias;
    }
    if (v == NULL || *v == '\0')
      continue;
    char why[LT_ERRBUF];
    if (apply(s, d, v, why, sizeof(why))) {
      snprintf(err, errlen, "%s (--%s): %s", used, d->name, why);
      return SM_EINVAL;
    }
  }
  return 0;
}

static int apply_file(lt_scenario *s, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    snprintf(err, errlen, "--config: cannot open \"%s\": %s", path, strerror(errno));
    return SM_EINVAL;
  }
  char line[2048];
  int lineno = 0, rc = 0;
  while (rc == 0 && fgets(line, sizeof(line), f)) {
    lineno++;
    size_t len = strlen(line);
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ' ||
                   line[len - 1] == '\t'))
      line[--len] = '\0';
    char *p = line;
    while (*p == ' ' || *p == '\t')
      p++;
    if (*p == '\0' || *p == '#')
      continue;
    char *eq = strchr(p, '=');
    char *k = p;
    while (*k == '-')
      k++;
    char *kend = eq ? eq : p + strlen(p);
    while (kend > k && (kend[-1] == ' ' || kend[-1] == '\t'))
      kend--;
    const opt_def *d = eq ? find(k, (size_t)(kend - k)) : NULL;
    if (d == NULL || strcmp(d->name, "config") == 0) {
      snprintf(err, errlen, "--config: %s:%d: expected name=value with a flag name", path, lineno);
      rc = SM_EINVAL;
      break;
    }
    char *v = eq + 1;
    while (*v == ' ' || *v == '\t')
      v++;
    char where[64];
    snprintf(where, sizeof(where), " (%s line %d)", "config", lineno);
    rc = apply_named(s, d, v, where, err, errlen);
  }
  fclose(f);
  return rc;
}

int lt_scenario_parse(lt_scenario *s, int argc, const char *const *argv, lt_getenv_fn env,
                      char *err, size_t errlen) {
  const char *config = env ? env("LOADTEST_CONFIG") : NULL;
  s->action = LT_RUN;
  /* First pass: --help, --version, --config and unknown flags. */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      s->action = LT_HELP;
      return 0;
    }
    if (strcmp(a, "--version") == 0) {
      s->action = LT_VERSION;
      return 0;
    }
    if (strncmp(a, "--", 2) != 0) {
      snprintf(err, errlen, "%s: unexpected argument", a);
      return SM_EINVAL;
    }
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    int is_config = nlen == 6 && memcmp(a + 2, "config", 6) == 0;
    if (!is_config && find(a + 2, nlen) == NULL) {
      snprintf(err, errlen, "%.*s: unknown flag (see --help)", (int)(nlen + 2), a);
      return SM_EINVAL;
    }
    const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
    if (v == NULL) {
      snprintf(err, errlen, "%s: expected a value", a);
      return SM_EINVAL;
    }
    if (!eq)
      i++;
    if (is_config)
      config = v;
  }
  if (env && apply_env(s, env, err, errlen))
    return SM_EINVAL;
  if (config && *config && apply_file(s, config, err, errlen))
    return SM_EINVAL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    const char *v = eq ? eq + 1 : argv[i + 1];
    if (!eq)
      i++;
    const opt_def *d = find(a + 2, nlen);
    if (d && apply_named(s, d, v, "", err, errlen))
      return SM_EINVAL;
  }
  if (s->agents == 0) {
    snprintf(err, errlen, "--agents: expected at least 1 agent");
    return SM_EINVAL;
  }
  if (strcmp(s->protocol, "scan") != 0 && strcmp(s->protocol, "hello") != 0 &&
      strcmp(s->protocol, "mixed") != 0) {
    snprintf(err, errlen, "--protocol: expected scan, hello or mixed, got \"%s\"", s->protocol);
    return SM_EINVAL;
  }
  if (s->fail_rate + s->hang_rate + s->disconnect_rate > 1.0) {
    snprintf(err, errlen, "--fail-rate: fail, hang and disconnect rates add up to more than 1");
    return SM_EINVAL;
  }
  if (lt_scenario_total(s) == 0 && s->duration <= 0) {
    snprintf(err, errlen, "--commands: 0 commands need a --duration");
    return SM_EINVAL;
  }
  if (s->submit == LT_SUBMIT_AMQP && s->amqp_url[0] == '\0') {
    snprintf(err, errlen, "--amqp-url: required with --submit amqp");
    return SM_EINVAL;
  }
  for (size_t i = 0; i < s->nfaults; i++) {
    const lt_fault_spec *f = &s->faults[i];
    if (!lt_action_is_proxy(f->action))
      continue;
    size_t k = 0;
    while (k < s->nproxies && strcmp(s->proxies[k].name, f->target) != 0)
      k++;
    if (k == s->nproxies) {
      snprintf(err, errlen, "--fault: %s on \"%s\": the target must name a --proxy",
               lt_action_name(f->action), f->target);
      return SM_EINVAL;
    }
  }
  return 0;
}

uint64_t lt_scenario_total(const lt_scenario *s) {
  if (s->commands > 0)
    return s->commands;
  uint64_t t = (uint64_t)s->agents * s->commands_per_agent;
  return t > LT_COMMANDS_MAX ? LT_COMMANDS_MAX : t;
}

/* ---- chaos: --proxy and --fault -------------------------------------------------------------- */

static const char *const action_names[LT_ACT_COUNT] = {
    "delay", "drop",    "blackhole", "reset",        "bandwidth",
    "kill9", "sigterm", "restart",   "cpu_pressure", "memory_pressure"};

const char *lt_action_name(enum lt_chaos_action a) {
  return (unsigned)a < LT_ACT_COUNT ? action_names[a] : "?";
}

int lt_action_is_proxy(enum lt_chaos_action a) {
  return a <= LT_ACT_BANDWIDTH;
}

static int valid_hostport(const char *v, size_t max) {
  const char *colon = strrchr(v, ':');
  if (colon == NULL || colon == v || strlen(v) >= max)
    return 0;
  char *end;
  long port = strtol(colon + 1, &end, 10);
  return colon[1] != '\0' && *end == '\0' && port >= 0 && port <= 65535;
}

int lt_proxy_spec_parse(const char *text, lt_proxy_spec *out, char *err, size_t errlen) {
  memset(out, 0, sizeof(*out));
  const char *eq = strchr(text, '=');
  const char *arrow = eq ? strstr(eq, "->") : NULL;
  size_t nl = eq ? (size_t)(eq - text) : 0;
  if (eq == NULL || arrow == NULL || nl == 0 || nl >= sizeof(out->name)) {
    snprintf(err, errlen,
             "expected NAME=LISTEN->UPSTREAM, e.g. agents=127.0.0.1:7000->127.0.0.1:50051");
    return SM_EINVAL;
  }
  for (size_t i = 0; i < nl; i++)
    if (!isalnum((unsigned char)text[i]) && text[i] != '-' && text[i] != '_') {
      snprintf(err, errlen, "proxy name: letters, digits, - and _ only");
      return SM_EINVAL;
    }
  memcpy(out->name, text, nl);
  size_t ll = (size_t)(arrow - eq - 1);
  if (ll >= sizeof(out->listen)) {
    snprintf(err, errlen, "listen address too long");
    return SM_EINVAL;
  }
  memcpy(out->listen, eq + 1, ll);
  snprintf(out->upstream, sizeof(out->upstream), "%s", arrow + 2);
  if (!valid_hostport(out->listen, sizeof(out->listen)) ||
      !valid_hostport(arrow + 2, sizeof(out->upstream))) {
    snprintf(err, errlen, "proxy \"%s\": expected host:port on both sides of ->", out->name);
    return SM_EINVAL;
  }
  return 0;
}

/* Next key=value token of a fault spec; values may be quoted with ' or " to hold spaces. */
static int next_token(const char **pp, char *key, size_t kl, char *val, size_t vl) {
  const char *p = *pp;
  while (*p == ' ' || *p == '\t' || *p == ',')
    p++;
  if (*p == '\0')
    return 0;
  size_t k = 0;
  while (*p && *p != '=' && *p != ' ' && *p != '\t' && *p != ',') {
    if (k + 1 >= kl)
      return -1;
    key[k++] = *p++;
  }
  key[k] = '\0';
  if (*p != '=')
    return -1;
  p++;
  size_t n = 0;
  char quote = 0;
  if (*p == '\'' || *p == '"')
    quote = *p++;
  while (*p && (quote ? *p != quote : (*p != ' ' && *p != '\t' && *p != ','))) {
    if (n + 1 >= vl)
      return -2;
    val[n++] = *p++;
  }
  if (quote) {
    if (*p != quote)
      return -1;
    p++;
  }
  val[n] = '\0';
  *pp = p;
  return 1;
}

static int fault_num(const char *key, const char *v, double min, double max, double *out, char *err,
                     size_t errlen) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (end == v || *end || errno || !isfinite(x) || x < min || x > max) {
    snprintf(err, errlen, "%s: expected a number between %g and %g", key, min, max);
    return SM_EINVAL;
  }
  *out = x;
  return 0;
}

int lt_fault_spec_parse(const char *text, lt_fault_spec *f, char *err, size_t errlen) {
  memset(f, 0, sizeof(*f));
  f->action = (enum lt_chaos_action) - 1;
  f->at = -1;
  f->duration = -1;
  f->threads = 1;
  f->mb = 64;
  const char *p = text;
  char key[32], val[LT_SHELL_MAX];
  int t;
  while ((t = next_token(&p, key, sizeof(key), val, sizeof(val))) > 0) {
    double x = 0;
    int rc = 0;
    if (strcmp(key, "at") == 0)
      rc = fault_num(key, val, 0, 86400, &f->at, err, errlen);
    else if (strcmp(key, "duration") == 0)
      rc = fault_num(key, val, 0, 86400, &f->duration, err, errlen);
    else if (strcmp(key, "target") == 0) {
      if (val[0] == '\0' || strlen(val) >= sizeof(f->target)) {
        snprintf(err, errlen, "target: 1 to %zu bytes", sizeof(f->target) - 1);
        return SM_EINVAL;
      }
      memcpy(f->target, val, strlen(val) + 1);
    } else if (strcmp(key, "action") == 0) {
      int a = -1;
      for (int k = 0; k < LT_ACT_COUNT; k++)
        if (strcmp(val, action_names[k]) == 0)
          a = k;
      if (a < 0) {
        snprintf(err, errlen,
                 "action: expected delay, drop, blackhole, reset, bandwidth, kill9, sigterm, "
                 "restart, cpu_pressure or memory_pressure");
        return SM_EINVAL;
      }
      f->action = (enum lt_chaos_action)a;
    } else if (strcmp(key, "delay_ms") == 0) {
      rc = fault_num(key, val, 1, 600000, &x, err, errlen);
      f->delay_ms = (uint64_t)x;
    } else if (strcmp(key, "bytes_per_s") == 0) {
      rc = fault_num(key, val, 1, 1e12, &x, err, errlen);
      f->bytes_per_s = (uint64_t)x;
    } else if (strcmp(key, "pid") == 0) {
      rc = fault_num(key, val, 2, 4194304, &x, err, errlen);
      f->pid = (int)x;
    } else if (strcmp(key, "pid_file") == 0) {
      if (val[0] == '\0' || strlen(val) >= sizeof(f->pid_file)) {
        snprintf(err, errlen, "pid_file: 1 to %zu bytes", sizeof(f->pid_file) - 1);
        return SM_EINVAL;
      }
      memcpy(f->pid_file, val, strlen(val) + 1);
    } else if (strcmp(key, "cmd") == 0) {
      snprintf(f->cmd, sizeof(f->cmd), "%s", val);
    } else if (strcmp(key, "restart_cmd") == 0) {
      snprintf(f->restart_cmd, sizeof(f->restart_cmd), "%s", val);
    } else if (strcmp(key, "threads") == 0) {
      rc = fault_num(key, val, 1, LT_HOG_THREADS_MAX, &x, err, errlen);
      f->threads = (uint32_t)x;
    } else if (strcmp(key, "mb") == 0) {
      rc = fault_num(key, val, 1, LT_HOG_MB_MAX, &x, err, errlen);
      f->mb = (uint32_t)x;
    } else {
      snprintf(err, errlen,
               "unknown key \"%s\" (at, duration, target, action, delay_ms, "
               "bytes_per_s, pid, pid_file, cmd, restart_cmd, threads, mb)",
               key);
      return SM_EINVAL;
    }
    if (rc)
      return rc;
  }
  if (t < 0) {
    snprintf(err, errlen,
             t == -2 ? "a value is longer than %d bytes"
                     : "expected key=value pairs (quote values with spaces), "
                       "at most %d bytes each",
             LT_SHELL_MAX - 1);
    return SM_EINVAL;
  }
  if (f->at < 0 || f->target[0] == '\0' || (int)f->action < 0) {
    snprintf(err, errlen, "at, target and action are required");
    return SM_EINVAL;
  }
  int needs_duration =
      lt_action_is_proxy(f->action) || f->action == LT_ACT_CPU || f->action == LT_ACT_MEMORY;
  if (f->duration < 0)
    f->duration = needs_duration ? -1 : 0;
  if (needs_duration && f->duration <= 0) {
    snprintf(err, errlen, "%s: duration > 0 is required", action_names[f->action]);
    return SM_EINVAL;
  }
  if (f->action == LT_ACT_DELAY && f->delay_ms == 0) {
    snprintf(err, errlen, "delay: delay_ms is required");
    return SM_EINVAL;
  }
  if (f->action == LT_ACT_BANDWIDTH && f->bytes_per_s == 0) {
    snprintf(err, errlen, "bandwidth: bytes_per_s is required");
    return SM_EINVAL;
  }
  if ((f->action == LT_ACT_KILL9 || f->action == LT_ACT_SIGTERM) && f->pid == 0 &&
      f->pid_file[0] == '\0' && f->cmd[0] == '\0') {
    snprintf(err, errlen, "%s: pid, pid_file or cmd is required", action_names[f->action]);
    return SM_EINVAL;
  }
  if (f->action == LT_ACT_RESTART &&
      (f->restart_cmd[0] == '\0' || (f->pid == 0 && f->pid_file[0] == '\0' && f->cmd[0] == '\0'))) {
    snprintf(err, errlen, "restart: restart_cmd and one of pid, pid_file, cmd are required");
    return SM_EINVAL;
  }
  return 0;
}

double lt_scenario_deadline(const lt_scenario *s) {
  if (s->timeout > 0)
    return s->timeout;
  double last = 0;
  for (size_t i = 0; i < s->nfaults; i++)
    if (s->faults[i].at + s->faults[i].duration > last)
      last = s->faults[i].at + s->faults[i].duration;
  /* Without --duration a run submits a bounded number of commands: allow it ten minutes. */
  double submit = s->duration > 0 ? s->duration : 600;
  if (submit < last + 5)
    submit = last + 5;
  return s->ramp_up + s->connect_timeout + submit + s->drain_timeout + 30;
}

const char *lt_scenario_usage(void) {
  return "usage: sirius-loadtest [flags]\n"
         "Runs simulated agents in this process against a sirius-manager, submits commands\n"
         "and reports submit-to-result latency, throughput and how failures were handled.\n"
         "\n"
         "Scenario (also LOADTEST_<FLAG> in the environment, or name=value lines in --config):\n"
         "  --config FILE             key=value lines with the flag names (flags win)\n"
         "  --agents N                simulated agents (10)\n"
         "  --protocol P              scan, hello (hello.HelloService: give --types exec,status)\n"
         "                            or mixed (half of the agents speak hello) (scan)\n"
         "  --commands-per-agent K    commands = agents * K (10)\n"
         "  --commands N              total commands (overrides --commands-per-agent;\n"
         "                            0 with --duration: submit until the duration ends)\n"
         "  --types MIX               command types and weights, e.g. echo:70,sleep:20,scan:10\n"
         "  --ramp-up S               seconds over which the agents connect (0)\n"
         "  --duration S              seconds of submission; 0: until all are submitted (0)\n"
         "  --report-interval S       seconds between progress lines, 0: none (1)\n"
         "  --rate R                  commands per second, 0: as fast as accepted (0)\n"
         "  --batch N                 commands per POST /api/commands (100, max 1000)\n"
         "  --connections N           HTTP connections submitting in parallel (4)\n"
         "  --poll-interval S         seconds between result polls (0.2)\n"
         "  --drain-timeout S         seconds to wait for results after submitting (60)\n"
         "  --command-timeout S       timeout_seconds of each command (30)\n"
         "  --sleep-seconds S         params.seconds of sleep commands (0.05)\n"
         "Targets:\n"
         "  --submit rest|amqp        submission path (rest)\n"
         "  --manager-api URL         REST base, e.g. http://127.0.0.1:8080 (MANAGER_API)\n"
         "  --api-key KEY             admin API key (ADMIN_API_KEY)\n"
         "  --server H:P[,H:P...]     gRPC listener(s) for the agents (SERVER_ADDR)\n"
         "  --amqp-url URL            broker for --submit amqp (RABBITMQ_URL)\n"
         "  --command-queue Q         intake queue (AMQP_COMMAND_QUEUE, agent-commands)\n"
         "  --result-queue Q          result queue (AMQP_RESULT_QUEUE, agent-results)\n"
         "  --source-addrs A,B        local addresses the agents connect from\n"
         "Agents:\n"
         "  --max-concurrent N        commands each agent runs at once (4)\n"
         "  --heartbeat-interval S    seconds between heartbeats (5)\n"
         "  --scan-duration-ms MS     simulated scan duration (50)\n"
         "  --id-prefix P             agent ids P1..PN (lt-agent-)\n"
         "  --seed N                  random seed of the failure draws\n"
         "Failures:\n"
         "  --fail-rate P             share of commands answered failed\n"
         "  --hang-rate P             share of commands never answered (-> timed_out)\n"
         "  --disconnect-rate P       share of commands that drop the agent's connection\n"
         "  --crash-rate P            share of agents that crash: stop answering, then vanish\n"
         "Report:\n"
         "  --format text|json|csv|html  report format (text); html: one self-contained page\n"
         "                            with a timeline chart, fault windows shaded\n"
         "  --output FILE             write the report there (stdout)\n"
         "Limits:\n"
         "  --timeout S               overall deadline; the run stops and reports (exit 3)\n"
         "                            (0: ramp-up + connect timeout + duration or 600 s +\n"
         "                            faults + drain timeout + 30 s)\n"
         "  --connect-timeout S       give up (exit 3) when no agent connected and the\n"
         "                            manager API did not answer within S seconds (10)\n"
         "Chaos (repeatable; see docs/loadtest.md):\n"
         "  --proxy NAME=LISTEN->UPSTREAM   run a fault-injecting TCP proxy; agents use it\n"
         "                            with --server proxy:NAME\n"
         "  --fault 'at=S duration=S target=T action=A [key=value...]'\n"
         "                            actions on a proxy: delay (delay_ms), drop, blackhole,\n"
         "                            reset, bandwidth (bytes_per_s); on a process: kill9,\n"
         "                            sigterm, restart (pid, pid_file or cmd; restart_cmd);\n"
         "                            cpu_pressure (threads), memory_pressure (mb)\n"
         "  --help, --version\n";
}
