/* agent_service.c - scan.AgentService (docs/agent-protocol.md): Ping, and Connect, whose
 * stream is an agent's link in the registry. This file translates protobuf messages into
 * registry calls and back; it knows nothing of HTTP/2. */
#include "grpc/services.h"

#include "grpc/agent_auth.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/utf8.h"

#include "agent.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Decoding goes through a bump arena: a heartbeat unpacks into a handful of small objects
 * that all die together, so malloc/free per object is wasted work on the hottest path. */
#define ARENA_SIZE (16 * 1024)

struct grpc_agent_service {
  agent_registry *reg;
  const agent_tokens *tokens; /* AGENT_AUTH_TOKENS_FILE; NULL: no token needed */
  uint64_t first_message_ms;
  char first_message_why[64]; /* the status message of the first-message timeout */
  ProtobufCAllocator alloc;
  size_t arena_used;
  int arena_busy;
  _Alignas(16) uint8_t arena[ARENA_SIZE];
};

/* One Connect stream: the registry's link to the agent. */
typedef struct agent_link {
  grpc_call *call;
  grpc_agent_service *svc;
  agent *agent;       /* registered; NULL before the first message or once the registry let go */
  unsigned ended : 1; /* the registry ended the link: it holds it no more */
} agent_link;

static void *arena_alloc(void *ud, size_t size) {
  grpc_agent_service *as = ud;
  size_t need = (size + 15) & ~(size_t)15;
  if (as->arena_busy && need <= ARENA_SIZE - as->arena_used) {
    void *p = as->arena + as->arena_used;
    as->arena_used += need;
    return p;
  }
  return sm_malloc(size);
}

static void arena_free(void *ud, void *p) {
  grpc_agent_service *as = ud;
  uint8_t *b = p;
  if (b >= as->arena && b < as->arena + ARENA_SIZE)
    return; /* released all at once by unpack_done */
  free(p);
}

/* Unpacks with the arena when it is free (calls do not nest, but be safe if they ever do). */
static ProtobufCMessage *unpack(grpc_agent_service *as, const ProtobufCMessageDescriptor *d,
                                const uint8_t *data, size_t len, int *used_arena) {
  *used_arena = !as->arena_busy;
  if (*used_arena) {
    as->arena_busy = 1;
    as->arena_used = 0;
  }
  ProtobufCMessage *m = protobuf_c_message_unpack(d, &as->alloc, len, data);
  if (m == NULL && *used_arena)
    as->arena_busy = 0;
  return m;
}

static void unpack_done(grpc_agent_service *as, ProtobufCMessage *m, int used_arena) {
  protobuf_c_message_free_unpacked(m, &as->alloc);
  if (used_arena)
    as->arena_busy = 0;
}

/* ---- proto3 strings ----
 *
 * proto3 says a `string` field holds valid UTF-8, and a conforming parser refuses one that does
 * not; protobuf-c does not check. protobuf-c also hands strings out as C strings, so a U+0000
 * would cut them. Everything an agent sends ends up in JSON answers (results, metadata), so a
 * message is refused whole when a string field, at any depth (map entries included), is not
 * valid UTF-8 or holds a NUL. The check walks the wire form (which unpack already accepted)
 * with the message's descriptor, so it names the field. */

#define STRINGS_MAX_DEPTH 8 /* our messages nest 3 deep; deeper data belongs to no string field */

static size_t read_varint(const uint8_t *p, const uint8_t *end, uint64_t *v) {
  *v = 0;
  for (size_t i = 0; i < 10 && p + i < end; i++) {
    *v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if ((p[i] & 0x80) == 0)
      return i + 1;
  }
  return 0;
}

/* 0 when every string field of the message d in data[0..len) is valid; else -1 with the field's
 * dotted name in path and the problem in *why. */
static int strings_ok(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                      int depth, char *path, size_t cap, const char **why) {
  const uint8_t *p = data, *end = data + len;
  while (p < end) {
    uint64_t key, n = 0;
    size_t k = read_varint(p, end, &key);
    if (k == 0)
      goto malformed;
    p += k;
    switch (key & 7) {
    case 0:
      k = read_varint(p, end, &n);
      if (k == 0)
        goto malformed;
      p += k;
      continue;
    case 1:
      n = 8;
      break;
    case 5:
      n = 4;
      break;
    case 2:
      k = read_varint(p, end, &n);
      if (k == 0)
        goto malformed;
      p += k;
      break;
    default:
      goto malformed; /* groups: not in proto3 */
    }
    if (n > (uint64_t)(end - p))
      goto malformed;
    const ProtobufCFieldDescriptor *f =
        (key & 7) == 2 && key >> 3 <= UINT32_MAX
            ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3))
            : NULL;
    if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING) {
      const char *bad = memchr(p, '\0', n)                   ? "NUL"
                        : !sm_utf8_valid((const char *)p, n) ? "invalid UTF-8"
                                                             : NULL;
      if (bad != NULL) {
        snprintf(path, cap, "%s", f->name);
        *why = bad;
        return -1;
      }
    } else if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE && depth < STRINGS_MAX_DEPTH) {
      char sub[96];
      if (strings_ok(f->descriptor, p, n, depth + 1, sub, sizeof(sub), why) != 0) {
        snprintf(path, cap, "%s.%s", f->name, sub);
        return -1;
      }
    }
    p += n;
  }
  return 0;
malformed:
  snprintf(path, cap, "%s", "message");
  *why = "malformed data";
  return -1;
}

/* Ends the call with INTERNAL when a string field of m (data[0..len)) is refused. */
static int check_strings(grpc_call *call, const ProtobufCMessageDescriptor *d, const uint8_t *data,
                         size_t len) {
  char path[128], msg[192];
  const char *why = NULL;
  if (strings_ok(d, data, len, 0, path, sizeof(path), &why) == 0)
    return 0;
  snprintf(msg, sizeof(msg), "%s in field %s of %s", why, path, d->name);
  sm_log_info("grpc", "agent message refused", SM_LS("peer", grpc_call_peer(call)),
              SM_LS("reason", msg));
  grpc_call_finish(call, GRPC_INTERNAL, msg);
  return -1;
}

/* ---- the registry's view of the stream ---- */

static int link_send(void *lp, const agent_command *cmd) {
  agent_link *l = lp;
  if (l->call == NULL || grpc_call_finished(l->call))
    return SM_ECLOSED;
  Scan__CommandMessage m = SCAN__COMMAND_MESSAGE__INIT;
  Scan__CommandMessage__ParamsEntry small[16], **ptrs = NULL, *small_ptrs[16];
  Scan__CommandMessage__ParamsEntry *entries = small;
  m.id = (char *)(cmd->id ? cmd->id : "");
  m.type = (char *)(cmd->type ? cmd->type : "");
  m.timeout_seconds = cmd->timeout_seconds;
  if (cmd->nparams > 16) {
    entries = sm_malloc(cmd->nparams * sizeof(*entries));
    ptrs = sm_malloc(cmd->nparams * sizeof(*ptrs));
    if (entries == NULL || ptrs == NULL) {
      free(entries);
      free(ptrs);
      return SM_ENOMEM;
    }
  } else {
    ptrs = small_ptrs;
  }
  for (size_t i = 0; i < cmd->nparams; i++) {
    Scan__CommandMessage__ParamsEntry e = SCAN__COMMAND_MESSAGE__PARAMS_ENTRY__INIT;
    e.key = (char *)(cmd->params[i].key ? cmd->params[i].key : "");
    e.value = (char *)(cmd->params[i].value ? cmd->params[i].value : "");
    entries[i] = e;
    ptrs[i] = &entries[i];
  }
  m.n_params = cmd->nparams;
  m.params = cmd->nparams ? ptrs : NULL;
  int err = grpc_call_send(l->call, &m.base);
  if (entries != small) {
    free(entries);
    free(ptrs);
  }
  return err;
}

static void link_end(void *lp, int reason, const char *message) {
  agent_link *l = lp;
  /* The registry has let go of this link: never detach it later. */
  l->agent = NULL;
  l->ended = 1;
  if (l->call)
    grpc_call_finish(l->call, grpc_status_from_err(reason), message);
}

static const char *link_peer(void *lp) {
  agent_link *l = lp;
  return l->call ? grpc_call_peer(l->call) : "";
}

static const agent_link_ops link_ops = {
    .protocol = "scan.AgentService",
    .send = link_send,
    .end = link_end,
    .peer = link_peer,
};

/* ---- Connect ---- */

static void connect_start(grpc_call *call) {
  grpc_agent_service *as = grpc_call_service_data(call);
  agent_link *l = sm_calloc(1, sizeof(*l));
  if (l == NULL) {
    grpc_call_finish(call, GRPC_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  l->call = call;
  l->svc = as;
  grpc_call_set_data(call, l);
  if (as->first_message_ms)
    grpc_call_set_timeout(call, as->first_message_ms, GRPC_DEADLINE_EXCEEDED,
                          as->first_message_why);
}

/* Borrowed views of a protobuf map as sm_kv; up to `cap` in buf, else allocated. */
#define MAP_VIEW(field_entries, n, buf, cap, out)                                                  \
  do {                                                                                             \
    (out) = (buf);                                                                                 \
    if ((n) > (cap))                                                                               \
      (out) = sm_malloc((n) * sizeof(sm_kv));                                                      \
    if ((out) != NULL)                                                                             \
      for (size_t i_ = 0; i_ < (n); i_++) {                                                        \
        (out)[i_].key = (field_entries)[i_]->key;                                                  \
        (out)[i_].value = (field_entries)[i_]->value;                                              \
      }                                                                                            \
  } while (0)

static int agent_status_of(Scan__AgentStatus s) {
  return (unsigned)s < AGENT_STATUS_COUNT ? (int)s : AGENT_UNKNOWN;
}

/* With agent tokens configured: the stream's bearer token must belong to this agent id (or be
 * a `*:` token). Ends the call and returns 0 when it does not. The token is never logged. */
static int authorized(grpc_agent_service *as, grpc_call *call, const char *agent_id) {
  if (as->tokens == NULL)
    return 1;
  int err = agent_tokens_check(as->tokens, grpc_call_header(call, "authorization"), agent_id);
  if (err == 0)
    return 1;
  sm_log_info(
      "grpc", "agent refused: token", SM_LS("agent_id", agent_id),
      SM_LS("peer", grpc_call_peer(call)),
      SM_LS("reason", err == SM_EPERM ? "bound to another agent id" : "missing or unknown"));
  if (err == SM_EPERM)
    grpc_call_finish(call, GRPC_PERMISSION_DENIED, "this token is bound to another agent id");
  else
    grpc_call_finish(call, GRPC_UNAUTHENTICATED, "missing or unknown agent token");
  return 0;
}

static void connect_register(agent_link *l, grpc_call *call, const Scan__AgentMessage *m,
                             const sm_kv *meta, size_t nmeta) {
  const char *id = grpc_call_header(call, "agent-id");
  if (id == NULL || id[0] == '\0')
    id = m->agent_id;
  if (id == NULL || id[0] == '\0') {
    grpc_call_finish(call, GRPC_UNAUTHENTICATED,
                     "agent id missing: send the agent-id header or agent_id in the first "
                     "message");
    return;
  }
  if (!sm_utf8_valid(id, strlen(id))) { /* the header is no proto3 string, but ends up in JSON */
    grpc_call_finish(call, GRPC_INVALID_ARGUMENT, "agent-id header: must be valid UTF-8");
    return;
  }
  if (!authorized(l->svc, call, id))
    return;
  agent *a = NULL;
  int err = agent_registry_attach(l->svc->reg, id, strlen(id),
                                  (enum agent_status)agent_status_of(m->status), meta, nmeta,
                                  &link_ops, l, &a);
  if (err) {
    sm_log_info("grpc", "agent registration refused", SM_LS("agent_id", id),
                SM_LS("peer", grpc_call_peer(call)), SM_LE(err));
    grpc_call_finish(call, grpc_status_from_err(err),
                     err == SM_ELIMIT   ? "agent registry is full"
                     : err == SM_EINVAL ? "invalid agent id or metadata"
                                        : "registration failed");
    return;
  }
  grpc_call_set_timeout(call, 0, 0, NULL);
  if (!l->ended) /* an event listener may have ended it already */
    l->agent = a;
  /* The response headers tell the agent it is registered; a call already finishing (an event
   * listener ended it) has its status on the way instead. */
  if (grpc_call_send_headers(call) != 0)
    sm_log_debug("grpc", "registered, but the stream is ending", SM_LS("agent_id", id));
}

static void connect_message(grpc_call *call, const uint8_t *data, size_t len) {
  agent_link *l = grpc_call_data(call);
  grpc_agent_service *as = l->svc;
  int arena;
  Scan__AgentMessage *m =
      (Scan__AgentMessage *)unpack(as, &scan__agent_message__descriptor, data, len, &arena);
  if (m == NULL) {
    grpc_call_finish(call, GRPC_INTERNAL, "cannot decode scan.AgentMessage");
    return;
  }
  if (check_strings(call, &scan__agent_message__descriptor, data, len) != 0) {
    unpack_done(as, &m->base, arena);
    return;
  }
  sm_kv buf[16], *meta = NULL;
  MAP_VIEW(m->metadata, m->n_metadata, buf, 16u, meta);
  if (meta == NULL) {
    grpc_call_finish(call, GRPC_RESOURCE_EXHAUSTED, "out of memory");
    goto done;
  }
  if (l->agent == NULL) {
    if (l->ended)
      goto done;
    connect_register(l, call, m, meta, m->n_metadata);
  } else if (agent_registry_touch(as->reg, l->agent, (enum agent_status)agent_status_of(m->status),
                                  meta, m->n_metadata) != 0) {
    sm_log_debug("grpc", "agent metadata update refused", SM_LS("agent_id", l->agent->id));
  }
  if (l->agent == NULL)
    goto done;

  if (m->payload_case == SCAN__AGENT_MESSAGE__PAYLOAD_HEARTBEAT && m->heartbeat) {
    agent_heartbeat hb = {.timestamp = m->heartbeat->timestamp,
                          .cpu_usage = m->heartbeat->cpu_usage,
                          .memory_usage = m->heartbeat->memory_usage,
                          .active_commands = m->heartbeat->active_commands};
    agent_registry_heartbeat(as->reg, l->agent, &hb);
  } else if (m->payload_case == SCAN__AGENT_MESSAGE__PAYLOAD_COMMAND_RESULT && m->command_result) {
    const Scan__CommandResult *cr = m->command_result;
    sm_kv dbuf[16], *dv = NULL;
    MAP_VIEW(cr->data, cr->n_data, dbuf, 16u, dv);
    if (dv == NULL) {
      grpc_call_finish(call, GRPC_RESOURCE_EXHAUSTED, "out of memory");
      goto done;
    }
    agent_result r = {.command_id = cr->command_id,
                      .status = cr->status,
                      .data = dv,
                      .ndata = cr->n_data,
                      .error = cr->error,
                      .completed_at = cr->completed_at};
    agent_registry_result(as->reg, l->agent, &r);
    if (dv != dbuf)
      free(dv);
  }
done:
  if (meta != buf)
    free(meta);
  unpack_done(as, &m->base, arena);
}

static void connect_half_close(grpc_call *call) {
  /* The agent is leaving: end the stream cleanly; on_close detaches it. */
  grpc_call_finish(call, GRPC_OK, NULL);
}

static void connect_close(grpc_call *call, int reason) {
  agent_link *l = grpc_call_data(call);
  if (l == NULL)
    return;
  if (l->agent) /* still the registry's link: tell it, exactly once */
    agent_registry_detach(l->svc->reg, l->agent, l, reason == 0 ? SM_ECLOSED : reason);
  free(l);
}

/* ---- Ping ---- */

static void ping_message(grpc_call *call, const uint8_t *data, size_t len) {
  grpc_agent_service *as = grpc_call_service_data(call);
  if (!authorized(as, call, NULL))
    return;
  int arena;
  ProtobufCMessage *req = unpack(as, &scan__ping_request__descriptor, data, len, &arena);
  if (req == NULL) {
    grpc_call_finish(call, GRPC_INTERNAL, "cannot decode scan.PingRequest");
    return;
  }
  unpack_done(as, req, arena);
  if (check_strings(call, &scan__ping_request__descriptor, data, len) != 0)
    return;
  Scan__PingResponse resp = SCAN__PING_RESPONSE__INIT;
  resp.message = (char *)"pong";
  resp.timestamp = (int64_t)time(NULL);
  int err = grpc_call_send(call, &resp.base);
  if (err)
    grpc_call_finish(call, grpc_status_from_err(err), "cannot send the response");
  else
    grpc_call_finish(call, GRPC_OK, NULL);
}

static const grpc_method agent_methods[] = {
    {.name = "Ping", .on_message = ping_message},
    {.name = "Connect",
     .client_streaming = 1,
     .on_start = connect_start,
     .on_message = connect_message,
     .on_half_close = connect_half_close,
     .on_close = connect_close},
};

int grpc_agent_service_create(agent_registry *reg, uint64_t first_message_ms, grpc_service *svc,
                              grpc_agent_service **out) {
  grpc_agent_service *as = sm_calloc(1, sizeof(*as));
  if (as == NULL)
    return SM_ENOMEM;
  as->reg = reg;
  as->first_message_ms = first_message_ms;
  snprintf(as->first_message_why, sizeof(as->first_message_why), "no first message within %.3g s",
           (double)first_message_ms / 1000.0);
  as->alloc.alloc = arena_alloc;
  as->alloc.free = arena_free;
  as->alloc.allocator_data = as;
  svc->name = "scan.AgentService";
  svc->methods = agent_methods;
  svc->nmethods = sizeof(agent_methods) / sizeof(agent_methods[0]);
  svc->ud = as;
  *out = as;
  return 0;
}

void grpc_agent_service_set_tokens(grpc_agent_service *as, const agent_tokens *tokens) {
  as->tokens = tokens;
}

void grpc_agent_service_destroy(grpc_agent_service *as) {
  free(as);
}
