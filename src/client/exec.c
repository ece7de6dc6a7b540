/* exec.c - command decisions of the test agent. */
#include "client/exec.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UPDATE_DURATION_MS 200 /* a simulated update takes this long */
#define SLEEP_MAX_SECONDS 86400.0

const char *client_cmd_param(const Scan__CommandMessage *cmd, const char *key) {
  for (size_t i = 0; i < cmd->n_params; i++)
    if (cmd->params[i]->key && !strcmp(cmd->params[i]->key, key))
      return cmd->params[i]->value ? cmd->params[i]->value : "";
  return NULL;
}

uint64_t client_scan_duration(const client_exec_cfg *cfg, client_rng *rng) {
  double mean = cfg->scan_mean_ms, d;
  switch (cfg->scan_dist) {
  case CLIENT_DIST_UNIFORM:
    d = client_rng_unit(rng) * 2.0 * mean;
    break;
  case CLIENT_DIST_EXP:
    d = -mean * log(1.0 - client_rng_unit(rng)); /* unit() < 1, so the log is finite */
    if (d > 100.0 * mean)
      d = 100.0 * mean;
    break;
  case CLIENT_DIST_FIXED:
  default:
    d = mean;
    break;
  }
  return d < 0 ? 0 : (uint64_t)(d + 0.5);
}

/* Rejects with a reason; the text is copied into the plan. */
static void reject(client_plan *p, const char *reason) {
  p->kind = CLIENT_PLAN_REJECT;
  snprintf(p->errbuf, sizeof(p->errbuf), "%s", reason);
  p->error = p->errbuf;
}

void client_exec_plan(const client_exec_cfg *cfg, client_rng *rng, const Scan__CommandMessage *cmd,
                      int active, client_plan *out) {
  const char *type = cmd->type ? cmd->type : "";
  memset(out, 0, sizeof(*out));
  out->timeout_ms = cmd->timeout_seconds > 0 ? (uint64_t)cmd->timeout_seconds * 1000 : 0;

  if (client_rng_chance(rng, cfg->disconnect_rate)) {
    out->kind = CLIENT_PLAN_DISCONNECT;
    return;
  }
  if (client_rng_chance(rng, cfg->hang_rate)) {
    out->kind = CLIENT_PLAN_HANG;
    return;
  }
  if (!strcmp(type, "cancel")) {
    out->arg = client_cmd_param(cmd, "command_id");
    if (out->arg == NULL || *out->arg == '\0')
      reject(out, "params.command_id is required");
    else
      out->kind = CLIENT_PLAN_CANCEL;
    return;
  }

  int known = !strcmp(type, "status") || !strcmp(type, "scan") || !strcmp(type, "update") ||
              !strcmp(type, "sleep") || !strcmp(type, "echo") || !strcmp(type, "exec");
  if (!known) {
    char why[96];
    snprintf(why, sizeof(why), "unknown command type \"%.60s\"", type);
    reject(out, why);
    return;
  }
  if (!strcmp(type, "exec")) {
    if (!cfg->allow_exec) {
      reject(out, "exec is not allowed (agent started without --allow-exec)");
      return;
    }
    out->arg = client_cmd_param(cmd, "command");
    if (out->arg == NULL || *out->arg == '\0') {
      reject(out, "params.command is required");
      return;
    }
  } else if (!strcmp(type, "scan")) {
    out->arg = client_cmd_param(cmd, "target");
    if (out->arg == NULL || *out->arg == '\0') {
      reject(out, "params.target is required");
      return;
    }
  } else if (!strcmp(type, "sleep")) {
    const char *s = client_cmd_param(cmd, "seconds");
    char *end;
    double secs;
    if (s == NULL || *s == '\0') {
      reject(out, "params.seconds is required");
      return;
    }
    errno = 0;
    secs = strtod(s, &end);
    if (errno || *end != '\0' || !isfinite(secs) || secs < 0 || secs > SLEEP_MAX_SECONDS) {
      char why[96];
      snprintf(why, sizeof(why), "params.seconds: not a number in [0, 86400]: \"%.30s\"", s);
      reject(out, why);
      return;
    }
    out->duration_ms = (uint64_t)(secs * 1000.0 + 0.5);
  }

  if (active >= cfg->max_concurrent) {
    reject(out, "busy");
    return;
  }
  out->fail = client_rng_chance(rng, cfg->fail_rate);
  if (!strcmp(type, "echo") || !strcmp(type, "status")) {
    out->kind = CLIENT_PLAN_NOW;
  } else if (!strcmp(type, "exec")) {
    out->kind = CLIENT_PLAN_EXEC;
  } else {
    out->kind = CLIENT_PLAN_TIMED;
    if (!strcmp(type, "scan"))
      out->duration_ms = client_scan_duration(cfg, rng);
    else if (!strcmp(type, "update"))
      out->duration_ms = UPDATE_DURATION_MS;
  }
}

/* ---- hello.HelloService ---- */

void client_hello_command(const char *line, int allow_exec, client_hello_cmd *out) {
  memset(out, 0, sizeof(*out));
  scan__command_message__init(&out->msg);
  scan__command_message__params_entry__init(&out->param);
  out->msg.id = (char *)line;
  out->params[0] = &out->param;
  out->param.value = (char *)line;
  if (strcmp(line, CLIENT_HELLO_STATUS_LINE) == 0) {
    out->msg.type = (char *)"status";
    return;
  }
  out->msg.type = (char *)(allow_exec ? "exec" : "scan");
  out->param.key = (char *)(allow_exec ? "command" : "target");
  out->msg.params = out->params;
  out->msg.n_params = 1;
}

static const char *data_value(const Scan__CommandResult__DataEntry *const *data, size_t ndata,
                              const char *key) {
  for (size_t i = 0; i < ndata; i++)
    if (data[i]->key && strcmp(data[i]->key, key) == 0)
      return data[i]->value ? data[i]->value : "";
  return NULL;
}

int32_t client_hello_exit_code(const char *status,
                               const Scan__CommandResult__DataEntry *const *data, size_t ndata) {
  int completed = strcmp(status, "completed") == 0;
  const char *v = data_value(data, ndata, "exit_code");
  if (v != NULL && *v != '\0') {
    char *end;
    errno = 0;
    long code = strtol(v, &end, 10);
    if (errno == 0 && *end == '\0' && code >= INT32_MIN && code <= INT32_MAX &&
        (code == 0) == completed)
      return (int32_t)code;
  }
  return completed ? 0 : 1;
}

const char *client_hello_output(const Scan__CommandResult__DataEntry *const *data, size_t ndata,
                                char *buf, size_t cap) {
  const char *out = data_value(data, ndata, "stdout");
  if (out != NULL)
    return out;
  size_t o = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < ndata && o < cap; i++) {
    int w = snprintf(buf + o, cap - o, "%s=%s\n", data[i]->key ? data[i]->key : "",
                     data[i]->value ? data[i]->value : "");
    if (w < 0)
      break;
    o += (size_t)w < cap - o ? (size_t)w : cap - o - 1;
  }
  return buf;
}
