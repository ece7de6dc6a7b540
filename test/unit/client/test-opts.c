/* Unit tests of client/opts.c: flags, environment, precedence, bad values. */
#include "client/opts.h"
#include "t.h"
#include "util/err.h"

static const char *env_none(const char *name) {
  (void)name;
  return NULL;
}

static const char *env_some(const char *name) {
  if (!strcmp(name, "SERVER_ADDR"))
    return "mgr:6000";
  if (!strcmp(name, "AGENT_ID"))
    return "env-id";
  if (!strcmp(name, "CAPABILITIES"))
    return "os=linux";
  return NULL;
}

static const char *env_bad(const char *name) {
  return !strcmp(name, "CAPABILITIES") ? "broken" : NULL;
}

static int parse(client_opts *o, client_getenv_fn env, char *err, int argc, const char **argv) {
  client_opts_defaults(o);
  return client_opts_parse(o, argc, argv, env, err, CLIENT_ERRBUF);
}

#define ARGV(...) ((const char *[]){"sirius-agent", __VA_ARGS__})
#define ARGC(...) ((int)(sizeof((const char *[]){"sirius-agent", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(o, env, err, ...) parse(o, env, err, ARGC(__VA_ARGS__), ARGV(__VA_ARGS__))

static void test_defaults(void) {
  client_opts o;
  char err[CLIENT_ERRBUF];
  const char *argv[] = {"sirius-agent"};
  T_EQ_INT(parse(&o, env_none, err, 1, argv), 0);
  T_EQ_STR(o.server, "localhost:50051");
  T_ASSERT(o.id == NULL);
  T_EQ_INT(o.count, 0);
  T_EQ_STR(o.id_prefix, "agent-");
  T_EQ_INT(o.max_concurrent, 1);
  T_ASSERT(o.heartbeat_interval == 10.0);
  T_EQ_INT(o.reconnect_min_ms, 100);
  T_EQ_INT(o.reconnect_max_ms, 30000);
  T_EQ_INT(o.allow_exec, 0);
  T_EQ_INT(o.action, CLIENT_RUN);
}

static void test_flags(void) {
  client_opts o;
  char err[CLIENT_ERRBUF];
  T_EQ_INT(PARSE(&o, env_none, err, "--server", "h:1", "--count=5", "--id-prefix", "x-",
                 "--heartbeat-interval", "0.25", "--allow-exec", "--scan-duration-dist", "exp",
                 "--fail-rate", "0.5", "--seed", "7", "--source-addrs", "127.0.0.2,127.0.0.3",
                 "--max-concurrent", "4", "--weight", "1.5"),
           0);
  T_EQ_STR(o.server, "h:1");
  T_EQ_INT(o.count, 5);
  T_EQ_STR(o.id_prefix, "x-");
  T_ASSERT(o.heartbeat_interval == 0.25);
  T_EQ_INT(o.allow_exec, 1);
  T_EQ_INT(o.scan_dist, CLIENT_DIST_EXP);
  T_ASSERT(o.fail_rate == 0.5);
  T_EQ_INT(o.seed, 7);
  T_EQ_INT(o.seed_set, 1);
  T_EQ_INT(o.nsource_addrs, 2);
  T_EQ_STR(o.source_addrs[1], "127.0.0.3");
  T_EQ_INT(o.max_concurrent, 4);
  T_ASSERT(o.weight == 1.5);
}

static void test_env_and_precedence(void) {
  client_opts o;
  char err[CLIENT_ERRBUF];
  const char *argv[] = {"sirius-agent"};
  T_EQ_INT(parse(&o, env_some, err, 1, argv), 0);
  T_EQ_STR(o.server, "mgr:6000");
  T_EQ_STR(o.id, "env-id");
  T_EQ_STR(o.capabilities, "os=linux");
  T_EQ_INT(PARSE(&o, env_some, err, "--id", "flag-id", "--server", "[::1]:5"), 0);
  T_EQ_STR(o.id, "flag-id");
  T_EQ_STR(o.server, "[::1]:5");
  T_EQ_INT(parse(&o, env_bad, err, 1, argv), SM_EINVAL);
  T_ASSERT(!strncmp(err, "CAPABILITIES: ", 14));
}

static void test_bad_values(void) {
  client_opts o;
  char err[CLIENT_ERRBUF];
  T_EQ_INT(PARSE(&o, env_none, err, "--max-concurrent", "0"), SM_EINVAL);
  T_ASSERT(!strncmp(err, "--max-concurrent: ", 18));
  T_EQ_INT(PARSE(&o, env_none, err, "--heartbeat-interval", "0"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--heartbeat-interval", "abc"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--fail-rate", "1.5"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--server", "nohost"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--server", "h:99999"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--count", "0"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--count"), SM_EINVAL);
  T_ASSERT(strstr(err, "missing value") != NULL);
  T_EQ_INT(PARSE(&o, env_none, err, "--nope"), SM_EINVAL);
  T_ASSERT(!strncmp(err, "--nope: ", 8));
  T_EQ_INT(PARSE(&o, env_none, err, "--reconnect-min-ms", "500", "--reconnect-max-ms", "100"),
           SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--tls-cert", "c.pem"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--id", "a", "--count", "2"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "--allow-exec=maybe"), SM_EINVAL);
  T_EQ_INT(PARSE(&o, env_none, err, "positional"), SM_EINVAL);
}

static void test_help_version_tls_implied(void) {
  client_opts o;
  char err[CLIENT_ERRBUF];
  T_EQ_INT(PARSE(&o, env_none, err, "--help"), 0);
  T_EQ_INT(o.action, CLIENT_HELP);
  T_EQ_INT(PARSE(&o, env_none, err, "--version"), 0);
  T_EQ_INT(o.action, CLIENT_VERSION);
  T_EQ_INT(PARSE(&o, env_none, err, "--tls-ca", "ca.pem"), 0);
  T_EQ_INT(o.tls, 1);
  T_ASSERT(strstr(client_opts_usage(), "--count") != NULL);
}

static void test_caps(void) {
  char err[128];
  T_EQ_INT(client_caps_validate("", err, sizeof(err)), 0);
  T_EQ_INT(client_caps_validate("a=b", err, sizeof(err)), 1);
  T_EQ_INT(client_caps_validate("scan_type=nmap,os=linux,x=", err, sizeof(err)), 3);
  T_EQ_INT(client_caps_validate("a=b,,c=d", err, sizeof(err)), SM_EINVAL);
  T_EQ_INT(client_caps_validate("=b", err, sizeof(err)), SM_EINVAL);
  T_EQ_INT(client_caps_validate("a", err, sizeof(err)), SM_EINVAL);
  T_ASSERT(strstr(err, "key=value") != NULL);
  T_EQ_INT(client_caps_validate("a=b,", err, sizeof(err)), SM_EINVAL);
}

static void test_protocol(void) {
  client_opts o;
  char err[CLIENT_ERRBUF];
  T_EQ_INT(PARSE(&o, env_none, err, "--count", "2"), 0);
  T_EQ_INT(o.protocol, CLIENT_PROTO_SCAN); /* the default stays scan */
  T_EQ_INT(o.max_concurrent, 1);
  T_EQ_INT(PARSE(&o, env_none, err, "--protocol", "hello", "--count", "3"), 0);
  T_EQ_INT(o.protocol, CLIENT_PROTO_HELLO);
  T_EQ_INT(o.max_concurrent, CLIENT_HELLO_MAX_CONCURRENT); /* what the manager assumes */
  T_EQ_INT(PARSE(&o, env_none, err, "--protocol=hello", "--max-concurrent", "2"), 0);
  T_EQ_INT(o.max_concurrent, 2); /* the flag wins */
  T_EQ_INT(PARSE(&o, env_none, err, "--protocol", "scan"), 0);
  T_EQ_INT(o.protocol, CLIENT_PROTO_SCAN);
  T_EQ_INT(PARSE(&o, env_none, err, "--protocol", "grpc"), SM_EINVAL);
  T_EQ_STR(err, "--protocol: expected scan or hello, got \"grpc\"");
  T_EQ_INT(PARSE(&o, env_none, err, "--protocol"), SM_EINVAL);
  T_EQ_STR(err, "--protocol: missing value");
  T_ASSERT(strstr(client_opts_usage(), "--protocol") != NULL);
}

int main(void) {
  T_RUN(test_defaults);
  T_RUN(test_protocol);
  T_RUN(test_flags);
  T_RUN(test_env_and_precedence);
  T_RUN(test_bad_values);
  T_RUN(test_help_version_tls_implied);
  T_RUN(test_caps);
  return t_done();
}
