/* exec.h - what an agent does with a CommandMessage: the pure decision (reject, run for a
 * while, run a process, cancel another command, or misbehave on purpose), separated from the
 * loop so unit tests can check every rule.
 */
#ifndef SM_CLIENT_EXEC_H
#define SM_CLIENT_EXEC_H

#include <stddef.h>
#include <stdint.h>

#include "agent.pb-c.h"
#include "client/backoff.h"
#include "client/opts.h"

enum client_plan_kind {
  CLIENT_PLAN_REJECT = 0, /* answer `rejected` with plan.error */
  CLIENT_PLAN_NOW,        /* echo, status: complete at once */
  CLIENT_PLAN_TIMED,      /* sleep, scan, update: complete after duration_ms */
  CLIENT_PLAN_EXEC,       /* run params.command with /bin/sh -c */
  CLIENT_PLAN_CANCEL,     /* stop the running command params.command_id */
  CLIENT_PLAN_HANG,       /* never answer (--hang-rate) */
  CLIENT_PLAN_DISCONNECT, /* drop the connection (--disconnect-rate) */
};

typedef struct client_exec_cfg {
  int allow_exec;
  int32_t max_concurrent;
  double scan_mean_ms;
  enum client_dist scan_dist;
  double fail_rate, hang_rate, disconnect_rate;
} client_exec_cfg;

typedef struct client_plan {
  enum client_plan_kind kind;
  const char *error;    /* REJECT: the reason (static text or plan.errbuf) */
  uint64_t duration_ms; /* TIMED: how long the work takes */
  uint64_t timeout_ms;  /* 0: none; else the command fails with "timeout" when it runs longer */
  int fail;             /* the command ends `failed` (--fail-rate) */
  const char *arg;      /* scan: target; exec: command; cancel: command_id (borrowed) */
  char errbuf[96];
} client_plan;

/* The value of params[key] in cmd, or NULL. */
const char *client_cmd_param(const Scan__CommandMessage *cmd, const char *key);

/* Draws a simulated scan duration (ms) around cfg->scan_mean_ms by cfg->scan_dist: fixed, uniform
 * over [0, 2*mean], or exponential with that mean (capped at 100 * mean). */
uint64_t client_scan_duration(const client_exec_cfg *cfg, client_rng *rng);

/* Decides what to do with cmd given `active` running commands. Rules, in order: failure modes
 * (disconnect, hang), cancel (never counts against max_concurrent), unknown type, exec without
 * allow_exec, missing or bad params, busy (active >= max_concurrent), then the work itself with
 * `fail` drawn from fail_rate. Always fills out; never fails. */
void client_exec_plan(const client_exec_cfg *cfg, client_rng *rng, const Scan__CommandMessage *cmd,
                      int active, client_plan *out);

/* ---- hello.HelloService: commands are bare command lines, results carry no id ---- */

/* The command line the manager sends for a `status` command. */
#define CLIENT_HELLO_STATUS_LINE "internal:status"

/* A hello command line as the CommandMessage client_exec_plan understands. Entries borrow
 * line. */
typedef struct client_hello_cmd {
  Scan__CommandMessage msg;
  Scan__CommandMessage__ParamsEntry param;
  Scan__CommandMessage__ParamsEntry *params[1];
} client_hello_cmd;

/* Maps line: CLIENT_HELLO_STATUS_LINE is a `status` command (answered at once with status
 * text); with allow_exec any other line is `exec` (params.command = line, run with /bin/sh -c);
 * without it a `scan` of target line (simulated: answered after a --scan-duration-ms draw).
 * The message's id is the line, the only name a hello command has. */
void client_hello_command(const char *line, int allow_exec, client_hello_cmd *out);

/* The exit_code of a hello RESULT for a final status and its data: data's exit_code when
 * present and consistent, else 0 for `completed` and 1 for anything else (a failed command never
 * reports 0, since the manager derives completed/failed from it). */
int32_t client_hello_exit_code(const char *status,
                               const Scan__CommandResult__DataEntry *const *data, size_t ndata);

/* The output text of a hello RESULT: data's stdout when present (exec), else the data as
 * "key=value" lines written into buf (simulated work, status). Returns a string valid while
 * data and buf are. */
const char *client_hello_output(const Scan__CommandResult__DataEntry *const *data, size_t ndata,
                                char *buf, size_t cap);

#endif
