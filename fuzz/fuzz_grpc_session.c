/* fuzz_grpc_session - a whole server-side HTTP/2 connection (grpc/session.c over nghttp2) with
 * the real services (scan.AgentService over an agent registry, grpc.health.v1.Health), fed
 * arbitrary client bytes in memory, as test/unit/grpc/h2peer.h drives it without a socket.
 *
 * Input: byte 0 holds flags (bit 0: agent tokens required; bit 1: the client never reads, so
 * output stays queued and the backpressure limits apply), bytes 1-2 seed the chunking, the rest
 * follows the client preface (the harness sends the preface itself so that every input
 * reaches the frame layer). Between chunks the session flushes, its clock moves on by 0-2.5 s
 * and due timers run. Oracles: ASan/UBSan, no leak, output only within the configured bound
 * plus one write, and when the connection is gone no call is left and every agent it
 * registered has left the registry. */
#include "fuzz.h"

#include "core/registry.h"
#include "grpc/agent_auth.h"
#include "grpc/services.h"
#include "grpc/session.h"
#include "util/err.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uv_loop_t loop;
static agent_registry *reg;
static grpc_agent_service *agents;
static grpc_health *health;
static agent_tokens *tokens;
static grpc_service svc[2];
static const grpc_service *table[2];
static grpc_session_config cfg;

typedef struct transport {
  size_t queued; /* bytes written and not yet "read" by the client */
  int stalled;   /* the client does not read */
  uint64_t now;
  uint64_t timer_due;
  size_t max_write;
} transport;

static size_t t_output(void *io) {
  return ((transport *)io)->queued;
}

static int t_write(void *io, const uint8_t *data, size_t len) {
  transport *t = io;
  (void)data;
  t->queued += len;
  if (len > t->max_write)
    t->max_write = len;
  return 0;
}

static void t_want_flush(void *io) {
  (void)io;
}

static void t_set_timer(void *io, uint64_t due) {
  ((transport *)io)->timer_due = due;
}

static uint64_t t_now(void *io) {
  return ((transport *)io)->now;
}

static const char *t_peer(void *io) {
  (void)io;
  return "192.0.2.7:4242";
}

static const grpc_session_io io_ops = {t_output, t_write, t_want_flush, t_set_timer, t_now, t_peer};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_log_setup();
  if (uv_loop_init(&loop))
    fz_fail("harness: loop");
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 8, .instance = "mgr-fuzz"};
  if (agent_registry_create(&loop, &rc, &reg) ||
      grpc_agent_service_create(reg, 10000, &svc[0], &agents))
    fz_fail("harness: registry / agent service");
  static const char *const names[] = {"scan.AgentService", NULL};
  if (grpc_health_create(names, &svc[1], &health))
    fz_fail("harness: health");
  table[0] = &svc[0];
  table[1] = &svc[1];
  char path[] = "/tmp/sm-fuzz-tokens-XXXXXX";
  int fd = mkstemp(path);
  static const char text[] = "# fuzz tokens\n*:fuzz-token\nagent-1:agent-one-token\n";
  if (fd < 0 || write(fd, text, sizeof(text) - 1) != (ssize_t)(sizeof(text) - 1))
    fz_fail("harness: tokens file");
  close(fd);
  char why[256];
  if (agent_tokens_load(path, &tokens, why, sizeof(why)))
    fz_fail("harness: tokens: %s", why);
  unlink(path);
  /* The manager's defaults (docs/settings.md), smaller where a limit should be reachable. */
  cfg = (grpc_session_config){.services = table,
                              .nservices = 2,
                              .max_message_bytes = 64 * 1024,
                              .max_streams = 16,
                              .max_header_bytes = 16 * 1024,
                              .stream_window = 65535,
                              .connection_window = 1u << 20,
                              .keepalive_ms = 60000,
                              .keepalive_timeout_ms = 20000,
                              .idle_ms = 300000,
                              .max_output_bytes = 256 * 1024,
                              .stall_ms = 30000};
  return 0;
}

static uint32_t next_rand(uint32_t *s) {
  *s = *s * 1103515245u + 12345u;
  return *s >> 16;
}

static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  uint8_t flags = fz_u8(&in);
  uint32_t seed = fz_u16(&in) | 1u;
  grpc_agent_service_set_tokens(agents, (flags & 1) ? tokens : NULL);

  transport t = {.stalled = (flags & 2) != 0, .now = 1000000};
  grpc_session *s = NULL;
  if (grpc_session_create(&cfg, &io_ops, &t, &s))
    fz_fail("harness: grpc_session_create");
  int err = grpc_session_recv(s, preface, sizeof(preface) - 1);
  int closed = 0;
  while (!err && !closed) {
    size_t want = 1 + next_rand(&seed) % 512, got;
    const uint8_t *p = fz_take(&in, want, &got);
    if (got > 0)
      err = grpc_session_recv(s, p, got);
    if (err)
      break;
    int f = grpc_session_flush(s);
    if (f == SM_ECLOSED)
      closed = 1;
    else if (f)
      err = f;
    if (t.queued > cfg.max_output_bytes + t.max_write)
      fz_fail("session queued %zu bytes, above the bound %zu + one write of %zu", t.queued,
              cfg.max_output_bytes, t.max_write);
    if (!t.stalled)
      t.queued = 0;
    t.now += next_rand(&seed) % 2500;
    if (t.timer_due && t.now >= t.timer_due) {
      t.timer_due = 0;
      err = grpc_session_timer(s);
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    if (got == 0)
      break;
  }
  if (err)
    (void)grpc_session_flush(s); /* the last words (GOAWAY) before the close */
  grpc_session_destroy(s, err ? err : SM_ECLOSED);
  for (int i = 0; i < 4; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  if (agent_registry_count(reg) != 0)
    fz_fail("%zu agents left in the registry after their connection closed",
            agent_registry_count(reg));
  return 0;
}
