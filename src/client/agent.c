/* agent.c - simulated agents on one loop: registration, heartbeats, commands, reconnects. */
#include "client/agent.h"

#include "agent.pb-c.h"
#include "hello.pb-c.h"
#include "client/backoff.h"
#include "client/exec.h"
#include "client/h2.h"
#include "client/hostinfo.h"
#include "net/tls.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_PATH "/scan.AgentService/Connect"
#define HELLO_CONNECT_PATH "/hello.HelloService/ConnectStream"
#define HELLO_OUTPUT_MAX 2048 /* output text of a simulated hello command (its data lines) */
#define EXEC_OUTPUT_MAX 65536 /* stdout bytes an exec result carries; the rest is dropped */
#define EXEC_SINK 4096        /* scratch space after them that drains excess output */
#define STABLE_MS 1000        /* a stream that lived this long resets the backoff */
#define RESULT_DATA_MAX 24    /* data entries in one result */

typedef struct client_agent client_agent;

enum agent_state { A_WAIT = 0, A_CONNECTING, A_READY, A_STOPPED };

/* A running command. Freed after its handles' close callbacks. */
typedef struct client_cmd {
  client_agent *a;
  struct client_cmd *prev, *next; /* the agent's running list */
  char *id;
  char *type;
  char *arg;           /* scan target / exec command */
  uint64_t started_ms; /* loop time it arrived: a hello result's execution_time */
  client_plan plan;
  uv_timer_t timer;  /* work duration and/or timeout */
  uv_process_t proc; /* exec */
  uv_pipe_t out;     /* exec stdout */
  char *obuf;        /* exec stdout, at most EXEC_OUTPUT_MAX */
  size_t olen;
  int truncated;
  int64_t exit_status;
  int term_signal;
  unsigned exited : 1, eof : 1, spawned : 1, finished : 1, closing : 1;
  int open_handles;
} client_cmd;

struct client_agent {
  client_fleet *f;
  uint32_t index;
  char *id;
  enum agent_state state;
  uv_timer_t timer; /* ramp / reconnect wait, then the heartbeat period */
  client_call *call;
  uint64_t ready_at; /* loop ms when the stream became usable */
  uint32_t attempt;  /* reconnect attempts since the last stable stream */
  client_rng rng;
  client_cmd *cmds; /* running (and hung) commands */
  int active;       /* running commands that count against max_concurrent */
  int up;           /* counted in st.connected */
};

struct client_fleet {
  uv_loop_t *loop;
  const client_opts *o;
  client_ctx *ctx;
  net_tls_ctx *tls;
  struct sockaddr_storage server;
  struct sockaddr_storage *binds; /* --source-addrs */
  size_t nbinds;
  char host[256];     /* host part of --server (SNI default) */
  char hostname[128]; /* this machine */
  char bearer[512];   /* "Bearer <token>" */
  char max_conc[16], weight[32];
  client_exec_cfg xcfg;
  client_hostinfo host_info;
  client_agent *agents;
  uint32_t nagents;
  client_stats st;
  uint64_t pending; /* open handles and calls; the stop completes at 0 */
  int stopping;
  int started;
  void (*done)(client_fleet *, void *);
  void *done_ud;
};

static void agent_connect(client_agent *a);
static void agent_schedule_reconnect(client_agent *a);
static void cmd_finish(client_cmd *c, const char *status, const char *error,
                       const Scan__CommandResult__DataEntry *const *data, size_t ndata);

static int64_t unix_now(void) {
  return (int64_t)time(NULL);
}

static void fleet_maybe_done(client_fleet *f) {
  if (f->stopping && f->pending == 0 && f->done) {
    void (*done)(client_fleet *, void *) = f->done;
    f->done = NULL;
    client_ctx_close(f->ctx);
    f->ctx = NULL;
    done(f, f->done_ud);
  }
}

static void fleet_release(client_fleet *f) {
  f->pending--;
  fleet_maybe_done(f);
}

/* ---- sending ---- */

static Scan__AgentStatus agent_status(const client_agent *a) {
  return a->active >= a->f->o->max_concurrent ? SCAN__AGENT_STATUS__BUSY : SCAN__AGENT_STATUS__IDLE;
}

static void agent_send(client_agent *a, Scan__AgentMessage *m) {
  int rc;
  if (a->call == NULL || !client_call_usable(a->call))
    return;
  m->agent_id = a->id;
  m->status = agent_status(a);
  rc = client_call_send(a->call, &m->base);
  if (rc == SM_ELIMIT) {
    /* The manager is not reading: drop the stream rather than grow without bound. */
    sm_log_warn("agent", "send queue full, dropping the stream", SM_LS("agent_id", a->id));
    client_call_abort(a->call);
  }
}

static int is_hello(const client_agent *a) {
  return a->f->o->protocol == CLIENT_PROTO_HELLO;
}

static void hello_send(client_agent *a, Hello__AgentMessage *m) {
  if (a->call == NULL || !client_call_usable(a->call))
    return;
  m->agent_id = a->id;
  if (client_call_send(a->call, &m->base) == SM_ELIMIT) {
    sm_log_warn("agent", "send queue full, dropping the stream", SM_LS("agent_id", a->id));
    client_call_abort(a->call);
  }
}

static void send_register(client_agent *a) {
  client_fleet *f = a->f;
  Scan__AgentMessage m = SCAN__AGENT_MESSAGE__INIT;
  Scan__AgentMessage__MetadataEntry e[6];
  Scan__AgentMessage__MetadataEntry *ep[6];
  const char *kv[6][2] = {
      {"hostname", f->hostname},
      {"version", f->o->version_tag},
      {"capabilities", f->o->capabilities},
      {"segment", f->o->segment},
      {"max_concurrent", f->max_conc},
      {"weight", f->weight},
  };
  size_t n = 0;
  for (size_t i = 0; i < 6; i++) {
    if (kv[i][1] == NULL || (*kv[i][1] == '\0' && i >= 2 && i <= 3))
      continue; /* empty capabilities / segment: not sent */
    scan__agent_message__metadata_entry__init(&e[n]);
    e[n].key = (char *)kv[i][0];
    e[n].value = (char *)kv[i][1];
    ep[n] = &e[n];
    n++;
  }
  m.n_metadata = n;
  m.metadata = ep;
  agent_send(a, &m);
}

static void send_heartbeat(client_agent *a) {
  client_fleet *f = a->f;
  Scan__AgentMessage m = SCAN__AGENT_MESSAGE__INIT;
  Scan__HeartbeatMessage hb = SCAN__HEARTBEAT_MESSAGE__INIT;
  client_hostinfo_sample(&f->host_info, uv_now(f->loop));
  if (is_hello(a)) {
    Hello__AgentMessage hm = HELLO__AGENT_MESSAGE__INIT;
    Hello__HeartbeatMessage hhb = HELLO__HEARTBEAT_MESSAGE__INIT;
    hhb.timestamp = unix_now();
    hhb.cpu_usage = f->o->cpu_source_host ? f->host_info.cpu_usage : f->host_info.process_cpu_usage;
    hhb.memory_usage = f->host_info.memory_usage;
    hm.type = HELLO__MESSAGE_TYPE__HEARTBEAT;
    hm.payload_case = HELLO__AGENT_MESSAGE__PAYLOAD_HEARTBEAT;
    hm.heartbeat = &hhb;
    hello_send(a, &hm);
    f->st.heartbeats++;
    return;
  }
  hb.timestamp = unix_now();
  hb.cpu_usage = f->o->cpu_source_host ? f->host_info.cpu_usage : f->host_info.process_cpu_usage;
  hb.memory_usage = f->host_info.memory_usage;
  hb.active_commands = a->active;
  m.payload_case = SCAN__AGENT_MESSAGE__PAYLOAD_HEARTBEAT;
  m.heartbeat = &hb;
  agent_send(a, &m);
  f->st.heartbeats++;
}

/* Room kept in the stream's send queue: a burst stops short of it, so that a load test measures
 * the manager's pace, not a queue growing in the agent. */
#define BURST_QUEUE_MAX (32 * 1024)

static void send_heartbeats(client_agent *a) {
  uint32_t n = a->f->o->heartbeat_burst;
  for (uint32_t i = 0; i < n && a->call; i++) {
    if (i > 0 && client_call_queued(a->call) >= BURST_QUEUE_MAX)
      break;
    send_heartbeat(a);
  }
}

static int is_final(const char *status) {
  return strcmp(status, "accepted") != 0 && strcmp(status, "running") != 0;
}

/* hello.HelloService has no accepted/running: only a final result goes out, as RESULT
 * {command: the line (cmd_id), output, error, exit_code, execution_time in ms}. */
static void hello_send_result(client_agent *a, const char *line, const char *status,
                              const char *error, const Scan__CommandResult__DataEntry *const *data,
                              size_t ndata, uint64_t took_ms) {
  Hello__AgentMessage m = HELLO__AGENT_MESSAGE__INIT;
  Hello__CommandResult r = HELLO__COMMAND_RESULT__INIT;
  char buf[HELLO_OUTPUT_MAX];
  r.command = (char *)line;
  r.output = (char *)client_hello_output(data, ndata, buf, sizeof(buf));
  r.error = (char *)(error ? error : "");
  r.exit_code = client_hello_exit_code(status, data, ndata);
  r.execution_time = (int64_t)took_ms;
  m.type = HELLO__MESSAGE_TYPE__RESULT;
  m.payload_case = HELLO__AGENT_MESSAGE__PAYLOAD_RESULT;
  m.result = &r;
  hello_send(a, &m);
}

static void send_result_took(client_agent *a, const char *cmd_id, const char *status,
                             const char *error, const Scan__CommandResult__DataEntry *const *data,
                             size_t ndata, uint64_t took_ms) {
  client_fleet *f = a->f;
  Scan__AgentMessage m = SCAN__AGENT_MESSAGE__INIT;
  Scan__CommandResult r = SCAN__COMMAND_RESULT__INIT;
  r.command_id = (char *)cmd_id;
  r.status = (char *)status;
  r.error = (char *)(error ? error : "");
  r.data = (Scan__CommandResult__DataEntry **)data;
  r.n_data = ndata;
  if (is_final(status)) {
    r.completed_at = unix_now();
    f->st.results++;
    if (!strcmp(status, "completed"))
      f->st.completed++;
    else if (!strcmp(status, "failed"))
      f->st.failed++;
    else if (!strcmp(status, "cancelled"))
      f->st.cancelled++;
    else if (!strcmp(status, "rejected"))
      f->st.rejected++;
  }
  m.payload_case = SCAN__AGENT_MESSAGE__PAYLOAD_COMMAND_RESULT;
  m.command_result = &r;
  if ((a->call == NULL || !client_call_usable(a->call)) && (!is_hello(a) || is_final(status)))
    sm_log_warn("agent", "result dropped: not connected", SM_LS("agent_id", a->id),
                SM_LS("command_id", cmd_id), SM_LS("status", status));
  if (is_hello(a)) {
    if (is_final(status))
      hello_send_result(a, cmd_id, status, error, data, ndata, took_ms);
    return;
  }
  agent_send(a, &m);
}

static void send_result(client_agent *a, const char *cmd_id, const char *status, const char *error,
                        const Scan__CommandResult__DataEntry *const *data, size_t ndata) {
  send_result_took(a, cmd_id, status, error, data, ndata, 0);
}

/* A result's data under construction: entries point at caller-owned strings. */
typedef struct result_data {
  Scan__CommandResult__DataEntry e[RESULT_DATA_MAX];
  Scan__CommandResult__DataEntry *p[RESULT_DATA_MAX];
  size_t n;
} result_data;

static void rd_add(result_data *d, const char *k, const char *v) {
  if (d->n == RESULT_DATA_MAX)
    return;
  scan__command_result__data_entry__init(&d->e[d->n]);
  d->e[d->n].key = (char *)k;
  d->e[d->n].value = (char *)v;
  d->p[d->n] = &d->e[d->n];
  d->n++;
}

/* ---- commands ---- */

static void cmd_handle_closed(uv_handle_t *h) {
  client_cmd *c = h->data;
  if (--c->open_handles > 0)
    return;
  client_fleet *f = c->a->f;
  free(c->id);
  free(c->type);
  free(c->arg);
  free(c->obuf);
  free(c);
  fleet_release(f);
}

static void cmd_unlink(client_cmd *c) {
  client_agent *a = c->a;
  if (c->prev)
    c->prev->next = c->next;
  else if (a->cmds == c)
    a->cmds = c->next;
  if (c->next)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* Closes the command's handles once nothing more will arrive on them. */
static void cmd_maybe_close(client_cmd *c) {
  if (c->closing || !c->finished)
    return;
  if (c->spawned && !c->exited)
    return; /* wait for the process: closing earlier would leave a zombie */
  c->closing = 1;
  cmd_unlink(c);
  uv_close((uv_handle_t *)&c->timer, cmd_handle_closed);
  if (c->spawned) {
    uv_close((uv_handle_t *)&c->proc, cmd_handle_closed);
    uv_close((uv_handle_t *)&c->out, cmd_handle_closed);
  }
}

static void cmd_finish(client_cmd *c, const char *status, const char *error,
                       const Scan__CommandResult__DataEntry *const *data, size_t ndata) {
  client_agent *a = c->a;
  if (c->finished)
    return;
  c->finished = 1;
  uv_timer_stop(&c->timer);
  if (c->plan.kind != CLIENT_PLAN_HANG)
    a->active--;
  if (c->spawned && !c->exited)
    uv_kill(-c->proc.pid, SIGKILL); /* the whole group: the shell and what it started */
  if (status)
    send_result_took(a, c->id, status, error, data, ndata, uv_now(a->f->loop) - c->started_ms);
  cmd_maybe_close(c);
}

static void scan_data(client_cmd *c, result_data *d, char *ports, size_t cap, char *count) {
  static const int common[] = {21, 22, 25, 53, 80, 110, 143, 443, 445, 3306, 3389, 5432, 8080};
  size_t o = 0;
  int found = 0;
  ports[0] = '\0';
  for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++) {
    if (client_rng_chance(&c->a->rng, 0.3)) {
      int w = snprintf(ports + o, cap - o, "%s%d", o ? "," : "", common[i]);
      if (w > 0 && (size_t)w < cap - o)
        o += (size_t)w;
      found++;
    }
  }
  snprintf(count, 16, "%d", found ? (int)(client_rng_next(&c->a->rng) % (unsigned)(found * 3)) : 0);
  rd_add(d, "target", c->arg);
  rd_add(d, "open_ports", ports);
  rd_add(d, "findings", count);
  rd_add(d, "scanner", "simulated");
}

static void cmd_complete_timed(client_cmd *c) {
  result_data d = {0};
  char ports[128], count[16], ms[24];
  if (c->plan.fail) {
    cmd_finish(c, "failed", "simulated failure (--fail-rate)", NULL, 0);
    return;
  }
  snprintf(ms, sizeof(ms), "%llu", (unsigned long long)c->plan.duration_ms);
  rd_add(&d, "duration_ms", ms);
  if (!strcmp(c->type, "scan")) {
    scan_data(c, &d, ports, sizeof(ports), count);
  } else if (!strcmp(c->type, "update")) {
    rd_add(&d, "updated", "true");
    rd_add(&d, "version", c->a->f->o->version_tag);
  } else {
    rd_add(&d, "slept_ms", ms);
  }
  cmd_finish(c, "completed", NULL, (const Scan__CommandResult__DataEntry *const *)d.p, d.n);
}

static void cmd_timer_cb(uv_timer_t *t) {
  client_cmd *c = t->data;
  if (c->plan.timeout_ms &&
      (c->plan.kind == CLIENT_PLAN_EXEC || c->plan.duration_ms > c->plan.timeout_ms)) {
    cmd_finish(c, "failed", "timeout", NULL, 0);
    return;
  }
  cmd_complete_timed(c);
}

static void exec_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  client_cmd *c = h->data;
  (void)hint;
  if (c->obuf == NULL)
    c->obuf = sm_malloc(EXEC_OUTPUT_MAX + EXEC_SINK);
  if (c->obuf == NULL) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  if (c->olen >= EXEC_OUTPUT_MAX) {
    /* Full: keep draining the pipe into the sink past the kept bytes so the child never blocks
     * on a full pipe; what lands there is dropped. */
    *buf = uv_buf_init(c->obuf + EXEC_OUTPUT_MAX, EXEC_SINK);
    return;
  }
  *buf = uv_buf_init(c->obuf + c->olen, (unsigned)(EXEC_OUTPUT_MAX - c->olen));
}

static void exec_complete(client_cmd *c) {
  result_data d = {0};
  char code[24], sig[16];
  if (c->finished || !c->exited || !c->eof)
    return;
  snprintf(code, sizeof(code), "%lld", (long long)c->exit_status);
  /* stdout as text: the sink after the kept bytes leaves room for the NUL. */
  char *out = c->obuf ? c->obuf : (char *)"";
  if (c->obuf)
    c->obuf[c->olen] = '\0';
  rd_add(&d, "exit_code", code);
  rd_add(&d, "stdout", out);
  if (c->truncated)
    rd_add(&d, "stdout_truncated", "true");
  if (c->term_signal) {
    snprintf(sig, sizeof(sig), "%d", c->term_signal);
    rd_add(&d, "signal", sig);
  }
  const Scan__CommandResult__DataEntry *const *dp =
      (const Scan__CommandResult__DataEntry *const *)d.p;
  if (c->plan.fail)
    cmd_finish(c, "failed", "simulated failure (--fail-rate)", dp, d.n);
  else if (c->exit_status != 0 || c->term_signal)
    cmd_finish(c, "failed", "command exited with a non-zero status", dp, d.n);
  else
    cmd_finish(c, "completed", NULL, dp, d.n);
}

static void exec_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  client_cmd *c = s->data;
  if (nread > 0 && c->olen < EXEC_OUTPUT_MAX && buf->base == c->obuf + c->olen) {
    c->olen += (size_t)nread;
  } else if (nread > 0) {
    c->truncated = 1;
  } else if (nread < 0) {
    c->eof = 1;
    uv_read_stop(s);
    exec_complete(c);
    cmd_maybe_close(c);
  }
}

static void exec_exit(uv_process_t *p, int64_t status, int sig) {
  client_cmd *c = p->data;
  c->exited = 1;
  c->exit_status = status;
  c->term_signal = sig;
  exec_complete(c);
  cmd_maybe_close(c);
}

static int cmd_spawn(client_cmd *c) {
  client_fleet *f = c->a->f;
  char *args[] = {(char *)"/bin/sh", (char *)"-c", c->arg, NULL};
  uv_stdio_container_t stdio[3];
  uv_process_options_t po;
  int rc;
  uv_pipe_init(f->loop, &c->out, 0);
  c->out.data = c;
  c->open_handles = 3;
  memset(&po, 0, sizeof(po));
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&c->out;
  stdio[2].flags = UV_IGNORE;
  po.file = "/bin/sh";
  po.args = args;
  po.stdio = stdio;
  po.stdio_count = 3;
  po.exit_cb = exec_exit;
  /* Its own process group (setsid), so a timeout or cancel kills the shell's children too. */
  po.flags = UV_PROCESS_DETACHED;
  c->proc.data = c;
  rc = uv_spawn(f->loop, &c->proc, &po);
  if (rc) {
    /* The process handle and the pipe are initialised even on failure: close both now; the
     * timer closes when the command finishes (open_handles still counts all three). */
    uv_close((uv_handle_t *)&c->proc, cmd_handle_closed);
    uv_close((uv_handle_t *)&c->out, cmd_handle_closed);
    return sm_err_from_uv(rc);
  }
  c->spawned = 1;
  uv_read_start((uv_stream_t *)&c->out, exec_alloc, exec_read);
  return 0;
}

static client_cmd *find_cmd(client_agent *a, const char *id) {
  for (client_cmd *c = a->cmds; c; c = c->next)
    if (!c->finished && !strcmp(c->id, id))
      return c;
  return NULL;
}

static char *dup_or_empty(const char *s) {
  return sm_strdup(s ? s : "");
}

static void agent_on_command(client_agent *a, const Scan__CommandMessage *m) {
  client_fleet *f = a->f;
  client_plan plan;
  const char *id = m->id ? m->id : "";
  f->st.commands++;
  if (f->o->crash_after && f->st.commands >= f->o->crash_after) {
    sm_log_error("agent", "crashing on purpose (--crash-after)", SM_LS("agent_id", a->id),
                 SM_LI("commands", f->st.commands));
    _exit(3);
  }
  /* The manager may send a command again (after a reconnect) while it still runs here: run it
   * once, and tell the manager it is running. */
  if (!is_hello(a) && *id && strcmp(m->type, "cancel") != 0 && find_cmd(a, id) != NULL) {
    send_result(a, id, "running", NULL, NULL, 0);
    return;
  }
  client_exec_plan(&f->xcfg, &a->rng, m, a->active, &plan);
  sm_log_debug("agent", "command", SM_LS("agent_id", a->id), SM_LS("command_id", id),
               SM_LS("type", m->type), SM_LI("plan", plan.kind));

  switch (plan.kind) {
  case CLIENT_PLAN_DISCONNECT:
    sm_log_info("agent", "dropping the connection on purpose (--disconnect-rate)",
                SM_LS("agent_id", a->id), SM_LS("command_id", id));
    client_call_abort(a->call);
    return;
  case CLIENT_PLAN_HANG:
    sm_log_info("agent", "ignoring a command on purpose (--hang-rate)", SM_LS("agent_id", a->id),
                SM_LS("command_id", id));
    return;
  case CLIENT_PLAN_REJECT:
    send_result(a, id, "rejected", plan.error, NULL, 0);
    return;
  case CLIENT_PLAN_CANCEL: {
    client_cmd *t = find_cmd(a, plan.arg);
    int same = !strcmp(id, plan.arg) || *id == '\0';
    if (t == NULL) {
      if (!same)
        send_result(a, id, "failed", "no running command with that id", NULL, 0);
      return;
    }
    cmd_finish(t, "cancelled", "cancelled by the manager", NULL, 0);
    if (!same) {
      result_data d = {0};
      rd_add(&d, "cancelled", plan.arg);
      send_result(a, id, "completed", NULL, (const Scan__CommandResult__DataEntry *const *)d.p,
                  d.n);
    }
    return;
  }
  case CLIENT_PLAN_NOW: {
    result_data d = {0};
    client_fact facts[CLIENT_FACTS_MAX];
    send_result(a, id, "accepted", NULL, NULL, 0);
    if (plan.fail) {
      send_result(a, id, "failed", "simulated failure (--fail-rate)", NULL, 0);
      return;
    }
    if (!strcmp(m->type, "echo")) {
      for (size_t i = 0; i < m->n_params; i++)
        rd_add(&d, m->params[i]->key, m->params[i]->value);
    } else {
      size_t n = client_hostinfo_facts(facts);
      for (size_t i = 0; i < n; i++)
        rd_add(&d, facts[i].key, facts[i].value);
      rd_add(&d, "agent_id", a->id);
    }
    send_result(a, id, "completed", NULL, (const Scan__CommandResult__DataEntry *const *)d.p, d.n);
    return;
  }
  case CLIENT_PLAN_TIMED:
  case CLIENT_PLAN_EXEC:
    break;
  }

  client_cmd *c = sm_calloc(1, sizeof(*c));
  if (c == NULL || (c->id = dup_or_empty(id)) == NULL ||
      (c->type = dup_or_empty(m->type)) == NULL || (c->arg = dup_or_empty(plan.arg)) == NULL) {
    if (c) {
      free(c->id);
      free(c->type);
      free(c);
    }
    send_result(a, id, "failed", "out of memory", NULL, 0);
    return;
  }
  c->a = a;
  c->started_ms = uv_now(f->loop);
  c->plan = plan;
  c->plan.arg = c->arg;
  uv_timer_init(f->loop, &c->timer);
  c->timer.data = c;
  c->open_handles = 1;
  f->pending++;
  c->next = a->cmds;
  if (a->cmds)
    a->cmds->prev = c;
  a->cmds = c;
  a->active++;
  send_result(a, id, "accepted", NULL, NULL, 0);

  if (plan.kind == CLIENT_PLAN_EXEC) {
    int rc = cmd_spawn(c);
    if (rc) {
      cmd_finish(c, "failed", "could not start /bin/sh", NULL, 0);
      return;
    }
    send_result(a, id, "running", NULL, NULL, 0);
    if (plan.timeout_ms)
      uv_timer_start(&c->timer, cmd_timer_cb, plan.timeout_ms, 0);
    return;
  }
  send_result(a, id, "running", NULL, NULL, 0);
  uint64_t wait = plan.duration_ms;
  if (plan.timeout_ms && plan.timeout_ms < wait)
    wait = plan.timeout_ms;
  uv_timer_start(&c->timer, cmd_timer_cb, wait, 0);
}

/* ---- stream ---- */

static void agent_timer_cb(uv_timer_t *t);

static void on_ready(client_call *call, void *ud) {
  client_agent *a = ud;
  client_fleet *f = a->f;
  (void)call;
  a->state = A_READY;
  a->ready_at = uv_now(f->loop);
  f->st.connects++;
  f->st.connected++;
  a->up = 1;
  sm_log_debug("agent", "connected", SM_LS("agent_id", a->id));
  if (is_hello(a))
    send_heartbeat(a); /* hello has no registration message: the first message registers */
  else
    send_register(a);
  uint64_t hb = (uint64_t)(f->o->heartbeat_interval * 1000.0 + 0.5);
  if (hb == 0)
    hb = 1;
  uv_timer_stop(&a->timer);
  uv_timer_start(&a->timer, agent_timer_cb, hb, hb);
}

/* A ServerMessage of hello.HelloService: COMMAND runs its line, ACKNOWLEDGMENT is noted. */
static void hello_on_message(client_agent *a, const uint8_t *msg, size_t len) {
  Hello__ServerMessage *m = hello__server_message__unpack(NULL, len, msg);
  if (m == NULL) {
    sm_log_warn("agent", "undecodable ServerMessage, dropping the stream", SM_LS("agent_id", a->id),
                SM_LI("len", len));
    client_call_abort(a->call);
    return;
  }
  if (m->type == HELLO__MESSAGE_TYPE__COMMAND &&
      m->payload_case == HELLO__SERVER_MESSAGE__PAYLOAD_COMMAND) {
    client_hello_cmd hc;
    client_hello_command(m->command->command ? m->command->command : "", a->f->o->allow_exec, &hc);
    agent_on_command(a, &hc.msg);
  } else if (m->type == HELLO__MESSAGE_TYPE__ACKNOWLEDGMENT &&
             m->payload_case == HELLO__SERVER_MESSAGE__PAYLOAD_ACKNOWLEDGMENT) {
    a->f->st.acks++;
    sm_log_debug("agent", "acknowledged", SM_LS("agent_id", a->id),
                 SM_LS("command_id", m->acknowledgment->command_id),
                 SM_LS("status", m->acknowledgment->status));
  } else {
    sm_log_debug("agent", "ServerMessage ignored", SM_LS("agent_id", a->id),
                 SM_LI("type", m->type));
  }
  hello__server_message__free_unpacked(m, NULL);
}

static void on_message(client_call *call, void *ud, const uint8_t *msg, size_t len) {
  client_agent *a = ud;
  (void)call;
  if (is_hello(a)) {
    hello_on_message(a, msg, len);
    return;
  }
  Scan__CommandMessage *m = scan__command_message__unpack(NULL, len, msg);
  if (m == NULL) {
    sm_log_warn("agent", "undecodable CommandMessage, dropping the stream",
                SM_LS("agent_id", a->id), SM_LI("len", len));
    client_call_abort(a->call);
    return;
  }
  agent_on_command(a, m);
  scan__command_message__free_unpacked(m, NULL);
}

static void on_closed(void *ud, int err, int grpc_status, const char *grpc_message) {
  client_agent *a = ud;
  client_fleet *f = a->f;
  int was_ready = a->up;
  a->call = NULL;
  f->pending--;
  if (was_ready) {
    a->up = 0;
    f->st.connected--;
    f->st.disconnects++;
    if (uv_now(f->loop) - a->ready_at >= STABLE_MS)
      a->attempt = 0;
  }
  if (a->state != A_STOPPED) {
    uv_timer_stop(&a->timer);
    /* A fleet of thousands logs each agent's failed connects at debug level only. */
    enum sm_log_level lvl = f->nagents > 1 && !was_ready ? SM_LOG_DEBUG : SM_LOG_INFO;
    SM_LOG_(lvl, "agent", was_ready ? "stream ended" : "connect failed", SM_LS("agent_id", a->id),
            SM_LE(err), SM_LI("grpc_status", grpc_status), SM_LS("grpc_message", grpc_message));
    a->state = A_WAIT;
    agent_schedule_reconnect(a);
  }
  fleet_maybe_done(f);
}

static const client_call_cbs agent_call_cbs = {on_ready, on_message, on_closed};

static void agent_timer_cb(uv_timer_t *t) {
  client_agent *a = t->data;
  if (a->state == A_WAIT)
    agent_connect(a);
  else if (a->state == A_READY)
    send_heartbeats(a);
}

static void agent_connect(client_agent *a) {
  client_fleet *f = a->f;
  /* SiriusScan's agents send agent_id; the manager reads both spellings. */
  client_header hdrs[2] = {{is_hello(a) ? "agent_id" : "agent-id", a->id},
                           {"authorization", f->bearer}};
  client_call_req req = {
      .addr = (const struct sockaddr *)&f->server,
      .bind_addr = f->nbinds ? (const struct sockaddr *)&f->binds[a->index % f->nbinds] : NULL,
      .authority = f->o->server,
      .path = is_hello(a) ? HELLO_CONNECT_PATH : CONNECT_PATH,
      .headers = hdrs,
      .nheaders = f->bearer[0] ? 2 : 1,
      .tls = f->tls,
      .server_name = f->o->tls_server_name ? f->o->tls_server_name : f->host,
  };
  int rc = client_call_start(f->ctx, &req, &agent_call_cbs, a, &a->call);
  if (rc) {
    sm_log_warn("agent", "cannot start a connection", SM_LS("agent_id", a->id), SM_LE(rc));
    a->call = NULL;
    agent_schedule_reconnect(a);
    return;
  }
  f->pending++;
  a->state = A_CONNECTING;
}

static void agent_schedule_reconnect(client_agent *a) {
  client_fleet *f = a->f;
  uint64_t d =
      client_backoff_delay(&a->rng, f->o->reconnect_min_ms, f->o->reconnect_max_ms, a->attempt);
  if (a->attempt < 64)
    a->attempt++;
  a->state = A_WAIT;
  uv_timer_start(&a->timer, agent_timer_cb, d, 0);
}

/* ---- fleet ---- */

static int split_host_port(const char *s, char *host, size_t cap, const char **port) {
  const char *colon = strrchr(s, ':');
  size_t hl;
  if (colon == NULL)
    return SM_EADDR;
  hl = (size_t)(colon - s);
  if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
    s++;
    hl -= 2;
  }
  if (hl >= cap)
    return SM_EADDR;
  memcpy(host, s, hl);
  host[hl] = '\0';
  *port = colon + 1;
  return 0;
}

static int parse_bind(const char *s, struct sockaddr_storage *ss) {
  if (uv_ip4_addr(s, 0, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (uv_ip6_addr(s, 0, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  return SM_EADDR;
}

int client_fleet_create(uv_loop_t *loop, const client_opts *o, client_fleet **out, char *err,
                        size_t errlen) {
  client_fleet *f = sm_calloc(1, sizeof(*f));
  const char *port;
  int rc;
  if (f == NULL)
    return SM_ENOMEM;
  f->loop = loop;
  f->o = o;
  client_hostname(f->hostname, sizeof(f->hostname));
  if (split_host_port(o->server, f->host, sizeof(f->host), &port)) {
    snprintf(err, errlen, "--server: expected host:port, got \"%s\"", o->server);
    rc = SM_EADDR;
    goto fail;
  }
  {
    uv_getaddrinfo_t gai;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    /* Synchronous (no callback): done once at start, before any agent runs. */
    rc = uv_getaddrinfo(loop, &gai, NULL, f->host[0] ? f->host : "localhost", port, &hints);
    if (rc) {
      snprintf(err, errlen, "--server: cannot resolve \"%s\": %s", o->server, uv_strerror(rc));
      rc = SM_EADDR;
      goto fail;
    }
    memcpy(&f->server, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
    uv_freeaddrinfo(gai.addrinfo);
  }
  if (o->nsource_addrs) {
    f->binds = sm_calloc(o->nsource_addrs, sizeof(*f->binds));
    if (f->binds == NULL) {
      rc = SM_ENOMEM;
      goto fail;
    }
    for (size_t i = 0; i < o->nsource_addrs; i++) {
      if (parse_bind(o->source_addrs[i], &f->binds[i])) {
        snprintf(err, errlen, "--source-addrs: \"%s\" is not an IP address", o->source_addrs[i]);
        rc = SM_EADDR;
        goto fail;
      }
    }
    f->nbinds = o->nsource_addrs;
  }
  if (o->tls) {
    net_tls_config tc = {.cert_file = o->tls_cert,
                         .key_file = o->tls_key,
                         .ca_file = o->tls_ca,
                         .insecure = o->tls_insecure};
    rc = net_tls_ctx_create_client(&tc, &f->tls);
    if (rc) {
      snprintf(err, errlen, "--tls: cannot set up TLS (%s)", sm_strerror(rc));
      goto fail;
    }
  }
  if (o->token)
    snprintf(f->bearer, sizeof(f->bearer), "Bearer %s", o->token);
  snprintf(f->max_conc, sizeof(f->max_conc), "%d", (int)o->max_concurrent);
  snprintf(f->weight, sizeof(f->weight), "%g", o->weight);
  f->xcfg = (client_exec_cfg){
      .allow_exec = o->allow_exec,
      .max_concurrent = o->max_concurrent,
      .scan_mean_ms = o->scan_duration_ms,
      .scan_dist = o->scan_dist,
      .fail_rate = o->fail_rate,
      .hang_rate = o->hang_rate,
      .disconnect_rate = o->disconnect_rate,
  };

  f->nagents = o->count ? o->count : 1;
  f->agents = sm_calloc(f->nagents, sizeof(*f->agents));
  if (f->agents == NULL) {
    rc = SM_ENOMEM;
    goto fail;
  }
  uint64_t seed = o->seed_set ? o->seed : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
  for (uint32_t i = 0; i < f->nagents; i++) {
    client_agent *a = &f->agents[i];
    char buf[160];
    a->f = f;
    a->index = i;
    if (o->count)
      snprintf(buf, sizeof(buf), "%s%u", o->id_prefix, i + 1);
    else
      snprintf(buf, sizeof(buf), "%s", o->id ? o->id : f->hostname);
    a->id = sm_strdup(buf);
    if (a->id == NULL) {
      rc = SM_ENOMEM;
      goto fail;
    }
    client_rng_seed(&a->rng, seed * 1000003ULL + i);
  }
  f->st.agents = f->nagents;
  *out = f;
  return 0;
fail:
  client_fleet_destroy(f);
  return rc;
}

void client_fleet_start(client_fleet *f) {
  if (client_ctx_create(f->loop, &f->ctx) != 0) {
    sm_log_error("agent", "out of memory", SM_LI("agents", f->nagents));
    return;
  }
  f->started = 1;
  for (uint32_t i = 0; i < f->nagents; i++) {
    client_agent *a = &f->agents[i];
    uv_timer_init(f->loop, &a->timer);
    a->timer.data = a;
    f->pending++;
    a->state = A_WAIT;
    /* Spread the first connects evenly over the ramp. */
    uint64_t at = f->o->ramp_ms ? (uint64_t)f->o->ramp_ms * i / f->nagents : 0;
    uv_timer_start(&a->timer, agent_timer_cb, at, 0);
  }
  sm_log_info("agent", "started", SM_LI("agents", f->nagents), SM_LS("server", f->o->server),
              SM_LS("protocol", f->o->protocol == CLIENT_PROTO_HELLO ? "hello" : "scan"),
              SM_LB("tls", f->tls != NULL), SM_LS("first_id", f->agents[0].id));
}

static void agent_timer_closed(uv_handle_t *h) {
  client_agent *a = h->data;
  fleet_release(a->f);
}

void client_fleet_stop(client_fleet *f, void (*done)(client_fleet *, void *), void *ud) {
  f->done = done;
  f->done_ud = ud;
  if (f->stopping)
    return;
  f->stopping = 1;
  if (!f->started) {
    f->pending = 0;
    fleet_maybe_done(f);
    return;
  }
  for (uint32_t i = 0; i < f->nagents; i++) {
    client_agent *a = &f->agents[i];
    a->state = A_STOPPED;
    uv_close((uv_handle_t *)&a->timer, agent_timer_closed);
    /* Running commands end without a result: the manager re-dispatches them. */
    while (a->cmds) {
      client_cmd *c = a->cmds;
      /* Unlinked first: an exec waiting for its killed child closes when the child reports. */
      cmd_unlink(c);
      if (!c->finished)
        cmd_finish(c, NULL, NULL, NULL, 0);
    }
    if (a->call)
      client_call_finish(a->call);
  }
  fleet_maybe_done(f);
}

void client_fleet_destroy(client_fleet *f) {
  if (f == NULL)
    return;
  if (f->agents)
    for (uint32_t i = 0; i < f->nagents; i++)
      free(f->agents[i].id);
  free(f->agents);
  free(f->binds);
  net_tls_ctx_destroy(f->tls);
  free(f);
}

void client_fleet_stats(const client_fleet *f, client_stats *out) {
  *out = f->st;
}
