/* hello_service.c - hello.HelloService (docs/agent-protocol.md "hello.HelloService (SiriusScan's
 * agents)"): Ping, ExecuteCommand (UNIMPLEMENTED) and ConnectStream, whose stream is a SiriusScan
 * agent's link in the same agent registry as scan.AgentService. The lifecycle sees these agents
 * like any other; this file translates:
 *
 * - commands: `exec` goes out as params.command, `status` as "internal:status"; any other type
 *   is refused: the link accepts it (send never calls back synchronously) and reports a
 *   `rejected` result on the next loop turn, so the command fails with an error naming the
 *   protocol instead of waiting in the queue. Hello agents declare the capability
 *   protocol=hello, so a command can be aimed at them (or, by capability, at others).
 * - results: the protocol's results carry no command id, only the command line, so a result is
 *   matched to the OLDEST outstanding command with the same command line on that stream. A
 *   command stops being outstanding when its result arrives, when the lifecycle cancels it
 *   (a timeout sends "cancel"; hello has no cancel message, so nothing goes out) or when the
 *   stream ends. A result matching nothing (never sent, or already timed out) is logged and
 *   counted (grpc_hello_stats.unmatched), never fatal. */
#include "grpc/services.h"

#include "grpc/agent_auth.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"
#include "util/utf8.h"

#include "hello.pb-c.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct grpc_hello_service {
  uv_loop_t *loop;
  agent_registry *reg;
  const agent_tokens *tokens; /* AGENT_AUTH_TOKENS_FILE; NULL: no token needed */
  uint64_t first_message_ms;
  char first_message_why[64];
  uv_timer_t reject_timer; /* delivers refused commands' `rejected` results a turn later */
  sm_list rejecting;       /* links with refused commands to report */
  grpc_hello_stats stats;
};

/* A command sent on the stream and not yet answered. */
typedef struct hello_out {
  sm_list node; /* in hello_link.outstanding, oldest first */
  char *id;
  char *line; /* the command line sent */
} hello_out;

/* A command refused at send, reported as `rejected` on the next turn. */
typedef struct hello_reject {
  sm_list node;
  char *id;
  char *why;
} hello_reject;

/* One ConnectStream: the registry's link to the agent. */
typedef struct hello_link {
  grpc_call *call;
  grpc_hello_service *svc;
  agent *agent;        /* registered; NULL before the first message or once the registry let go */
  sm_list outstanding; /* hello_out, oldest first */
  size_t noutstanding;
  sm_list rejects;    /* hello_reject */
  sm_list rejecting;  /* in svc->rejecting while rejects is not empty */
  unsigned ended : 1; /* the registry ended the link: it holds it no more */
} hello_link;

static void out_free(hello_out *o) {
  sm_list_remove(&o->node);
  free(o->id);
  free(o->line);
  free(o);
}

static void reject_free(hello_reject *r) {
  sm_list_remove(&r->node);
  free(r->id);
  free(r->why);
  free(r);
}

static void link_clear(hello_link *l) {
  sm_list *n;
  while ((n = sm_list_first(&l->outstanding)) != NULL)
    out_free(SM_LIST_ENTRY(n, hello_out, node));
  l->noutstanding = 0;
  while ((n = sm_list_first(&l->rejects)) != NULL)
    reject_free(SM_LIST_ENTRY(n, hello_reject, node));
  if (sm_list_linked(&l->rejecting))
    sm_list_remove(&l->rejecting);
}

/* ---- commands out ---- */

static const char *param(const agent_command *cmd, const char *key) {
  for (size_t i = 0; i < cmd->nparams; i++)
    if (cmd->params[i].key && strcmp(cmd->params[i].key, key) == 0)
      return cmd->params[i].value;
  return NULL;
}

/* The command line for cmd, or NULL with *why set when hello agents cannot run it. */
static const char *command_line(const agent_command *cmd, const char **why) {
  const char *type = cmd->type ? cmd->type : "";
  if (strcmp(type, "exec") == 0) {
    const char *line = param(cmd, "command");
    if (line == NULL || *line == '\0') {
      *why = "exec needs params.command (the command line a hello.HelloService agent runs)";
      return NULL;
    }
    return line;
  }
  if (strcmp(type, "status") == 0)
    return "internal:status";
  *why = NULL;
  return NULL;
}

static void on_reject_timer(uv_timer_t *t);

static void reject_later(hello_link *l, const char *id, const char *type, const char *why) {
  grpc_hello_service *hs = l->svc;
  char msg[256];
  if (why == NULL) {
    snprintf(msg, sizeof(msg),
             "agent speaks hello.HelloService, which runs only exec and status commands, not "
             "type %.64s",
             type);
    why = msg;
  }
  hello_reject *r = sm_calloc(1, sizeof(*r));
  if (r != NULL) {
    r->id = sm_strdup(id);
    r->why = sm_strdup(why);
  }
  if (r == NULL || r->id == NULL || r->why == NULL) {
    /* the command then stays dispatched until its timeout: it still reaches a final status */
    sm_log_error("grpc", "hello: cannot record a refused command", SM_LS("command_id", id));
    if (r) {
      free(r->id);
      free(r->why);
      free(r);
    }
    return;
  }
  hs->stats.rejected++;
  sm_list_push_back(&l->rejects, &r->node);
  if (!sm_list_linked(&l->rejecting))
    sm_list_push_back(&hs->rejecting, &l->rejecting);
  if (uv_timer_start(&hs->reject_timer, on_reject_timer, 0, 0) != 0)
    sm_log_error("grpc", "hello: cannot schedule a refusal", SM_LS("command_id", id));
}

static int link_send(void *lp, const agent_command *cmd) {
  hello_link *l = lp;
  if (l->call == NULL || grpc_call_finished(l->call))
    return SM_ECLOSED;
  const char *id = cmd->id ? cmd->id : "";
  const char *type = cmd->type ? cmd->type : "";
  if (strcmp(type, "cancel") == 0) {
    /* hello has no cancel: the command just stops being outstanding, so a late result for it
     * is not taken for a newer command with the same line */
    const char *target = param(cmd, "command_id");
    SM_LIST_FOREACH(it, &l->outstanding) {
      hello_out *o = SM_LIST_ENTRY(it, hello_out, node);
      if (target && strcmp(o->id, target) == 0) {
        out_free(o);
        l->noutstanding--;
        break;
      }
    }
    return 0;
  }
  const char *why = NULL;
  const char *line = command_line(cmd, &why);
  if (line == NULL) {
    reject_later(l, id, type, why);
    return 0;
  }
  if (l->noutstanding >= GRPC_HELLO_MAX_OUTSTANDING)
    return SM_EAGAIN;
  hello_out *o = sm_calloc(1, sizeof(*o));
  if (o == NULL)
    return SM_ENOMEM;
  o->id = sm_strdup(id);
  o->line = sm_strdup(line);
  if (o->id == NULL || o->line == NULL) {
    free(o->id);
    free(o->line);
    free(o);
    return SM_ENOMEM;
  }
  Hello__CommandRequest req = HELLO__COMMAND_REQUEST__INIT;
  req.command = o->line;
  Hello__ServerMessage m = HELLO__SERVER_MESSAGE__INIT;
  m.id = o->id;
  m.type = HELLO__MESSAGE_TYPE__COMMAND;
  m.payload_case = HELLO__SERVER_MESSAGE__PAYLOAD_COMMAND;
  m.command = &req;
  int err = grpc_call_send(l->call, &m.base);
  if (err) {
    free(o->id);
    free(o->line);
    free(o);
    return err;
  }
  sm_list_push_back(&l->outstanding, &o->node);
  l->noutstanding++;
  return 0;
}

static void link_end(void *lp, int reason, const char *message) {
  hello_link *l = lp;
  l->agent = NULL; /* the registry has let go of this link: never detach it later */
  l->ended = 1;
  link_clear(l);
  if (l->call)
    grpc_call_finish(l->call, grpc_status_from_err(reason), message);
}

static const char *link_peer(void *lp) {
  hello_link *l = lp;
  return l->call ? grpc_call_peer(l->call) : "";
}

static const agent_link_ops hello_link_ops = {
    .protocol = "hello.HelloService",
    .send = link_send,
    .end = link_end,
    .peer = link_peer,
};

/* Reports the refused commands as `rejected` results: the lifecycle fails them with the
 * reason. A result may make the lifecycle send more (and refuse more): those wait for the next
 * timer run, which the refusal starts. */
static void on_reject_timer(uv_timer_t *t) {
  grpc_hello_service *hs = t->data;
  sm_list links, *n;
  sm_list_init(&links);
  sm_list_splice_back(&links, &hs->rejecting);
  while ((n = sm_list_pop_front(&links)) != NULL) {
    hello_link *l = SM_LIST_ENTRY(n, hello_link, rejecting);
    sm_list batch, *rn;
    sm_list_init(&batch);
    sm_list_splice_back(&batch, &l->rejects);
    while ((rn = sm_list_pop_front(&batch)) != NULL) {
      hello_reject *r = SM_LIST_ENTRY(rn, hello_reject, node);
      sm_list_init(&r->node);
      if (l->agent != NULL) {
        agent_result res = {.command_id = r->id,
                            .status = "rejected",
                            .error = r->why,
                            .completed_at = (int64_t)time(NULL)};
        sm_log_info("grpc", "hello: command refused", SM_LS("command_id", r->id),
                    SM_LS("agent_id", l->agent->id), SM_LS("reason", r->why));
        agent_registry_result(hs->reg, l->agent, &res);
      }
      reject_free(r);
    }
  }
}

/* ---- ConnectStream ---- */

/* protobuf-c allocates through util/alloc.h like everything else (failure injection reaches it). */
static void *pb_alloc(void *ud, size_t size) {
  (void)ud;
  return sm_malloc(size);
}
static void pb_free(void *ud, void *p) {
  (void)ud;
  free(p);
}
static ProtobufCAllocator pb_allocator = {.alloc = pb_alloc, .free = pb_free};

static void stream_start(grpc_call *call) {
  grpc_hello_service *hs = grpc_call_service_data(call);
  hello_link *l = sm_calloc(1, sizeof(*l));
  if (l == NULL) {
    grpc_call_finish(call, GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  l->call = call;
  l->svc = hs;
  sm_list_init(&l->outstanding);
  sm_list_init(&l->rejects);
  sm_list_init(&l->rejecting);
  grpc_call_set_data(call, l);
  if (hs->first_message_ms)
    grpc_call_set_timeout(call, hs->first_message_ms, GRPC_DEADLINE_EXCEEDED,
                          hs->first_message_why);
}

/* With agent tokens configured, as for scan.AgentService (grpc/agent_auth.h). Ends the call and
 * returns 0 when refused. The token is never logged. */
static int authorized(grpc_hello_service *hs, grpc_call *call, const char *agent_id) {
  if (hs->tokens == NULL)
    return 1;
  int err = agent_tokens_check(hs->tokens, grpc_call_header(call, "authorization"), agent_id);
  if (err == 0)
    return 1;
  sm_log_info(
      "grpc", "hello agent refused: token", SM_LS("agent_id", agent_id ? agent_id : ""),
      SM_LS("peer", grpc_call_peer(call)),
      SM_LS("reason", err == SM_EPERM ? "bound to another agent id" : "missing or unknown"));
  if (err == SM_EPERM)
    grpc_call_finish(call, GRPC_PERMISSION_DENIED, "this token is bound to another agent id");
  else
    grpc_call_finish(call, GRPC_UNAUTHENTICATED, "missing or unknown agent token");
  return 0;
}

static void stream_register(hello_link *l, grpc_call *call, const Hello__AgentMessage *m) {
  const char *id = grpc_call_header(call, "agent_id");
  if (id == NULL || id[0] == '\0')
    id = grpc_call_header(call, "agent-id");
  if (id == NULL || id[0] == '\0')
    id = m->agent_id;
  if (id == NULL || id[0] == '\0') {
    grpc_call_finish(call, GRPC_UNAUTHENTICATED,
                     "agent id missing: send the agent_id metadata or agent_id in the first "
                     "message");
    return;
  }
  if (!sm_utf8_valid(id, strlen(id))) {
    grpc_call_finish(call, GRPC_INVALID_ARGUMENT, "agent_id: must be valid UTF-8");
    return;
  }
  if (!authorized(l->svc, call, id))
    return;
  char maxc[16];
  snprintf(maxc, sizeof(maxc), "%d", GRPC_HELLO_MAX_CONCURRENT);
  const sm_kv meta[] = {{"capabilities", "protocol=hello"}, {"max_concurrent", maxc}};
  agent *a = NULL;
  int err = agent_registry_attach(l->svc->reg, id, strlen(id), AGENT_IDLE, meta, 2, &hello_link_ops,
                                  l, &a);
  if (err) {
    sm_log_info("grpc", "hello agent registration refused", SM_LS("agent_id", id),
                SM_LS("peer", grpc_call_peer(call)), SM_LE(err));
    grpc_call_finish(call, grpc_status_from_err(err),
                     err == SM_ELIMIT   ? "agent registry is full"
                     : err == SM_EINVAL ? "invalid agent id"
                                        : "registration failed");
    return;
  }
  grpc_call_set_timeout(call, 0, 0, NULL);
  if (!l->ended)
    l->agent = a;
  if (grpc_call_send_headers(call) != 0)
    sm_log_debug("grpc", "hello agent registered, but the stream is ending", SM_LS("agent_id", id));
}

/* A proto3 string from the agent as valid UTF-8 (command output is whatever bytes the command
 * wrote: sanitized, not refused). Returns s itself or an allocation in *tmp. */
static const char *clean(const char *s, char **tmp) {
  *tmp = NULL;
  if (s == NULL)
    return "";
  size_t n = strlen(s);
  if (sm_utf8_valid(s, n))
    return s;
  *tmp = sm_utf8_sanitize_dup(s, n, NULL);
  return *tmp ? *tmp : "";
}

static void send_ack(hello_link *l, const char *command_id, const char *status) {
  Hello__Acknowledgment ack = HELLO__ACKNOWLEDGMENT__INIT;
  ack.command_id = (char *)command_id;
  ack.status = (char *)status;
  Hello__ServerMessage m = HELLO__SERVER_MESSAGE__INIT;
  m.id = (char *)command_id;
  m.type = HELLO__MESSAGE_TYPE__ACKNOWLEDGMENT;
  m.payload_case = HELLO__SERVER_MESSAGE__PAYLOAD_ACKNOWLEDGMENT;
  m.acknowledgment = &ack;
  int err = grpc_call_send(l->call, &m.base);
  if (err)
    sm_log_debug("grpc", "hello: acknowledgment not sent", SM_LS("command_id", command_id),
                 SM_LE(err));
}

static void stream_result(hello_link *l, const Hello__CommandResult *cr) {
  grpc_hello_service *hs = l->svc;
  hs->stats.results++;
  const char *line = cr->command ? cr->command : "";
  hello_out *match = NULL;
  SM_LIST_FOREACH(it, &l->outstanding) {
    hello_out *o = SM_LIST_ENTRY(it, hello_out, node);
    if (strcmp(o->line, line) == 0) {
      match = o; /* the list is in send order: the first is the oldest */
      break;
    }
  }
  if (match == NULL) {
    hs->stats.unmatched++;
    char *tl;
    const char *shown = clean(line, &tl);
    sm_log_warn("grpc",
                "hello: result matches no outstanding command (never sent, or already "
                "timed out or cancelled)",
                SM_LS("agent_id", l->agent->id), SM_LS("command", shown));
    free(tl);
    send_ack(l, "", "unmatched");
    return;
  }
  sm_list_remove(&match->node);
  l->noutstanding--;
  char code[24], took[24], *t_out, *t_err;
  snprintf(code, sizeof(code), "%" PRId32, cr->exit_code);
  snprintf(took, sizeof(took), "%" PRId64, cr->execution_time);
  const char *output = clean(cr->output, &t_out);
  const char *error = clean(cr->error, &t_err);
  const sm_kv data[] = {{"command", match->line},
                        {"output", output},
                        {"error", error},
                        {"exit_code", code},
                        {"execution_time", took}};
  const char *status = cr->exit_code == 0 ? "completed" : "failed";
  agent_result r = {.command_id = match->id,
                    .status = status,
                    .data = data,
                    .ndata = sizeof(data) / sizeof(data[0]),
                    .error = error,
                    .completed_at = (int64_t)time(NULL)};
  /* out of the list first: the registry's listeners may send on this link */
  agent_registry_result(hs->reg, l->agent, &r);
  if (l->call && !grpc_call_finished(l->call))
    send_ack(l, match->id, status);
  free(t_out);
  free(t_err);
  free(match->id);
  free(match->line);
  free(match);
}

static void stream_message(grpc_call *call, const uint8_t *data, size_t len) {
  hello_link *l = grpc_call_data(call);
  grpc_hello_service *hs = l->svc;
  Hello__AgentMessage *m = hello__agent_message__unpack(&pb_allocator, len, data);
  if (m == NULL) {
    grpc_call_finish(call, GRPC_INTERNAL, "cannot decode hello.AgentMessage");
    return;
  }
  if (l->agent == NULL) {
    if (!l->ended)
      stream_register(l, call, m);
  } else if (agent_registry_touch(hs->reg, l->agent, AGENT_IDLE, NULL, 0) != 0) {
    sm_log_debug("grpc", "hello agent update refused", SM_LS("agent_id", l->agent->id));
  }
  if (l->agent == NULL)
    goto done;
  /* every message is a sign of life (touch above); the payload says the rest */
  if (m->payload_case == HELLO__AGENT_MESSAGE__PAYLOAD_HEARTBEAT && m->heartbeat) {
    agent_heartbeat hb = {.timestamp = m->heartbeat->timestamp,
                          .cpu_usage = m->heartbeat->cpu_usage,
                          .memory_usage = m->heartbeat->memory_usage,
                          .active_commands = (int32_t)l->noutstanding};
    agent_registry_heartbeat(hs->reg, l->agent, &hb);
  } else if (m->payload_case == HELLO__AGENT_MESSAGE__PAYLOAD_RESULT && m->result) {
    stream_result(l, m->result);
  }
done:
  hello__agent_message__free_unpacked(m, &pb_allocator);
}

static void stream_half_close(grpc_call *call) {
  grpc_call_finish(call, GRPC_OK, NULL); /* the agent is leaving; on_close detaches it */
}

static void stream_close(grpc_call *call, int reason) {
  hello_link *l = grpc_call_data(call);
  if (l == NULL)
    return;
  if (l->agent) /* still the registry's link: tell it, exactly once */
    agent_registry_detach(l->svc->reg, l->agent, l, reason == 0 ? SM_ECLOSED : reason);
  link_clear(l);
  free(l);
}

/* ---- Ping and ExecuteCommand ---- */

static void ping_message(grpc_call *call, const uint8_t *data, size_t len) {
  grpc_hello_service *hs = grpc_call_service_data(call);
  if (!authorized(hs, call, NULL))
    return;
  Hello__PingRequest *req = hello__ping_request__unpack(&pb_allocator, len, data);
  if (req == NULL) {
    grpc_call_finish(call, GRPC_INTERNAL, "cannot decode hello.PingRequest");
    return;
  }
  hello__ping_request__free_unpacked(req, &pb_allocator);
  Hello__PingResponse resp = HELLO__PING_RESPONSE__INIT;
  resp.message = (char *)"pong";
  resp.timestamp = (int64_t)time(NULL);
  int err = grpc_call_send(call, &resp.base);
  if (err)
    grpc_call_finish(call, grpc_status_from_err(err), "cannot send the response");
  else
    grpc_call_finish(call, GRPC_OK, NULL);
}

/* The manager runs commands on agents, never on its own host: a unary ExecuteCommand has no
 * agent to run on, and running it locally would hand a shell to every agent-port client. */
static void execute_message(grpc_call *call, const uint8_t *data, size_t len) {
  (void)data;
  (void)len;
  grpc_call_finish(call, GRPC_UNIMPLEMENTED,
                   "ExecuteCommand is not served: submit an exec command over the admin API "
                   "(POST /api/commands) to run it on a connected agent");
}

static const grpc_method hello_methods[] = {
    {.name = "Ping", .on_message = ping_message},
    {.name = "ExecuteCommand", .on_message = execute_message},
    {.name = "ConnectStream",
     .client_streaming = 1,
     .on_start = stream_start,
     .on_message = stream_message,
     .on_half_close = stream_half_close,
     .on_close = stream_close},
};

int grpc_hello_service_create(uv_loop_t *loop, agent_registry *reg, uint64_t first_message_ms,
                              grpc_service *svc, grpc_hello_service **out) {
  grpc_hello_service *hs = sm_calloc(1, sizeof(*hs));
  if (hs == NULL)
    return SM_ENOMEM;
  int err = uv_timer_init(loop, &hs->reject_timer);
  if (err) {
    free(hs);
    return SM_ENOMEM;
  }
  hs->reject_timer.data = hs;
  hs->loop = loop;
  hs->reg = reg;
  hs->first_message_ms = first_message_ms;
  snprintf(hs->first_message_why, sizeof(hs->first_message_why), "no first message within %.3g s",
           (double)first_message_ms / 1000.0);
  sm_list_init(&hs->rejecting);
  svc->name = "hello.HelloService";
  svc->methods = hello_methods;
  svc->nmethods = sizeof(hello_methods) / sizeof(hello_methods[0]);
  svc->ud = hs;
  *out = hs;
  return 0;
}

void grpc_hello_service_set_tokens(grpc_hello_service *hs, const agent_tokens *tokens) {
  hs->tokens = tokens;
}

void grpc_hello_service_get_stats(const grpc_hello_service *hs, grpc_hello_stats *out) {
  *out = hs->stats;
}

static void timer_closed(uv_handle_t *h) {
  free(h->data);
}

void grpc_hello_service_destroy(grpc_hello_service *hs) {
  if (hs == NULL)
    return;
  assert(sm_list_empty(&hs->rejecting)); /* its calls are closed: their links are gone */
  uv_close((uv_handle_t *)&hs->reject_timer, timer_closed);
}
