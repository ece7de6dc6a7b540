/* Tests of core/registry: attach/replace/detach, descriptor parsing, pruning on a real loop,
 * filters, handles, limits. The transport is a fake link that records what it was asked. */
#include "t.h"
#include "core/registry.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <uv.h>

typedef struct fake_link {
  int sends;
  int ended;
  int end_reason;
  char last_cmd[64];
} fake_link;

static int fake_send(void *link, const agent_command *cmd) {
  fake_link *l = link;
  if (l->ended)
    return SM_ECLOSED;
  l->sends++;
  snprintf(l->last_cmd, sizeof(l->last_cmd), "%s", cmd->id);
  return 0;
}

static void fake_end(void *link, int reason, const char *message) {
  fake_link *l = link;
  (void)message;
  l->ended++;
  l->end_reason = reason;
}

static const char *fake_peer(void *link) {
  (void)link;
  return "127.0.0.1:1";
}

static const agent_link_ops fake_ops = {"fake", fake_send, fake_end, fake_peer};

typedef struct events {
  int registered, replaced, unregistered, updates;
  int last_reason;
} events;

static void on_register(void *ud, agent *a, int replaced) {
  events *e = ud;
  (void)a;
  e->registered++;
  e->replaced += replaced;
}
static void on_unregister(void *ud, agent *a, int reason) {
  events *e = ud;
  (void)a;
  e->unregistered++;
  e->last_reason = reason;
}
static void on_update(void *ud, agent *a) {
  events *e = ud;
  (void)a;
  e->updates++;
}

static agent_registry *make(uv_loop_t *loop, double timeout, size_t max, events *e) {
  agent_registry_config cfg = {.agent_timeout_s = timeout, .max_agents = max, .instance = "i1"};
  agent_registry *reg;
  T_EQ_INT(agent_registry_create(loop, &cfg, &reg), 0);
  agent_registry_events ev = {on_register, on_unregister, on_update, NULL, e};
  agent_registry_set_events(reg, &ev);
  return reg;
}

static void finish(uv_loop_t *loop, agent_registry *reg) {
  agent_registry_destroy(reg);
  uv_run(loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(loop), 0);
}

static void test_attach_descriptor(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  events e = {0};
  agent_registry *reg = make(&loop, 60, 10, &e);
  fake_link l = {0};
  sm_kv meta[] = {{"hostname", "h1"},
                  {"version", "1.4.2"},
                  {"capabilities", "scan_type=nmap, os=linux,gpu"},
                  {"segment", "10.0.0.0/24"},
                  {"max_concurrent", "4"},
                  {"weight", "2.5"},
                  {"unknown_key", "ignored"}};
  agent *a;
  T_EQ_INT(agent_registry_attach(reg, "a1", 2, AGENT_IDLE, meta, 7, &fake_ops, &l, &a), 0);
  T_EQ_STR(a->id, "a1");
  T_EQ_STR(a->hostname, "h1");
  T_EQ_STR(a->version, "1.4.2");
  T_EQ_STR(a->segment, "10.0.0.0/24");
  T_EQ_INT(a->max_concurrent, 4);
  T_ASSERT(a->weight == 2.5);
  T_EQ_INT(a->ncaps, 3);
  T_EQ_STR(a->caps[0].key, "gpu"); /* sorted */
  T_EQ_STR(agent_cap_value(a, "gpu"), "true");
  T_EQ_STR(agent_cap_value(a, "scan_type"), "nmap");
  T_EQ_STR(agent_cap_value(a, "os"), "linux");
  T_ASSERT(agent_cap_value(a, "nope") == NULL);
  T_ASSERT(agent_registry_find(reg, "a1", 2) == a);
  T_ASSERT(agent_registry_find(reg, "a2", 2) == NULL);
  T_EQ_INT(agent_registry_count(reg), 1);
  T_EQ_INT(e.registered, 1);

  /* A bad value changes nothing. */
  sm_kv bad[] = {{"hostname", "h2"}, {"max_concurrent", "0"}};
  T_EQ_INT(agent_registry_touch(reg, a, AGENT_BUSY, bad, 2), SM_EINVAL);
  T_EQ_STR(a->hostname, "h1");
  T_EQ_INT(a->max_concurrent, 4);
  T_EQ_INT(a->status, AGENT_BUSY);
  sm_kv bad_weight[] = {{"weight", "-1"}};
  T_EQ_INT(agent_registry_touch(reg, a, AGENT_BUSY, bad_weight, 1), SM_EINVAL);
  sm_kv good[] = {{"hostname", "h2"}};
  T_EQ_INT(agent_registry_touch(reg, a, AGENT_IDLE, good, 1), 0);
  T_EQ_STR(a->hostname, "h2");

  /* Bad ids. */
  agent *b;
  T_EQ_INT(agent_registry_attach(reg, "", 0, AGENT_IDLE, NULL, 0, &fake_ops, &l, &b), SM_EINVAL);
  char longid[AGENT_ID_MAX + 2];
  memset(longid, 'x', sizeof(longid));
  T_EQ_INT(
      agent_registry_attach(reg, longid, sizeof(longid), AGENT_IDLE, NULL, 0, &fake_ops, &l, &b),
      SM_EINVAL);
  T_EQ_INT(agent_registry_attach(reg, "a\nb", 3, AGENT_IDLE, NULL, 0, &fake_ops, &l, &b),
           SM_EINVAL);
  /* A descriptor value above the limit. */
  static char big[AGENT_META_VALUE_MAX + 2];
  memset(big, 'v', sizeof(big) - 1);
  sm_kv bigmeta[] = {{"hostname", big}};
  T_EQ_INT(agent_registry_attach(reg, "b", 1, AGENT_IDLE, bigmeta, 1, &fake_ops, &l, &b),
           SM_EINVAL);
  T_EQ_INT(agent_registry_count(reg), 1);
  finish(&loop, reg);
  T_EQ_INT(l.ended, 1); /* destroy ended the stream */
}

static void test_replace_and_detach(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  events e = {0};
  agent_registry *reg = make(&loop, 60, 10, &e);
  fake_link l1 = {0}, l2 = {0};
  agent *a, *a2;
  T_EQ_INT(agent_registry_attach(reg, "dup", 3, AGENT_IDLE, NULL, 0, &fake_ops, &l1, &a), 0);
  agent_handle h;
  agent_handle_set(&h, a);
  T_ASSERT(agent_handle_get(reg, &h) == a);
  T_EQ_INT(agent_registry_attach(reg, "dup", 3, AGENT_IDLE, NULL, 0, &fake_ops, &l2, &a2), 0);
  T_ASSERT(a2 == a);
  T_EQ_INT(l1.ended, 1);
  T_EQ_INT(l1.end_reason, SM_EEXIST);
  T_EQ_INT(e.replaced, 1);
  T_EQ_INT(agent_registry_count(reg), 1);
  T_ASSERT(agent_handle_get(reg, &h) == NULL); /* the old stream's handle went stale */

  agent_command cmd = {.id = "c1", .type = "echo"};
  T_EQ_INT(agent_send(a2, &cmd), 0);
  T_EQ_INT(l2.sends, 1);
  T_EQ_INT(l1.sends, 0);

  /* A detach for the handed-back link is ignored; for the live one it removes the agent. */
  agent_registry_detach(reg, a2, &l1, SM_ECLOSED);
  T_EQ_INT(agent_registry_count(reg), 1);
  agent_registry_detach(reg, a2, &l2, SM_ECLOSED);
  T_EQ_INT(agent_registry_count(reg), 0);
  T_EQ_INT(e.unregistered, 1);
  T_EQ_INT(e.last_reason, SM_ECLOSED);
  T_EQ_INT(l2.ended, 0);
  agent_registry_stats rs;
  agent_registry_get_stats(reg, &rs);
  T_EQ_INT(rs.registered, 2);
  T_EQ_INT(rs.messages, 2);
  T_EQ_INT(rs.disconnected, 1);
  finish(&loop, reg);
}

static void test_limit(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  events e = {0};
  agent_registry *reg = make(&loop, 60, 2, &e);
  fake_link l = {0};
  agent *a;
  T_EQ_INT(agent_registry_attach(reg, "a", 1, AGENT_IDLE, NULL, 0, &fake_ops, &l, &a), 0);
  T_EQ_INT(agent_registry_attach(reg, "b", 1, AGENT_IDLE, NULL, 0, &fake_ops, &l, &a), 0);
  T_EQ_INT(agent_registry_attach(reg, "c", 1, AGENT_IDLE, NULL, 0, &fake_ops, &l, &a), SM_ELIMIT);
  /* Replacing an existing id is still allowed at the limit. */
  T_EQ_INT(agent_registry_attach(reg, "b", 1, AGENT_IDLE, NULL, 0, &fake_ops, &l, &a), 0);
  finish(&loop, reg);
}

typedef struct prune_ctx {
  agent_registry *reg;
  agent *keep;
  int ticks;
  uv_timer_t t;
} prune_ctx;

static void keepalive_cb(uv_timer_t *t) {
  prune_ctx *c = t->data;
  agent_heartbeat hb = {.cpu_usage = 50, .memory_usage = 10, .active_commands = 0};
  agent_registry_heartbeat(c->reg, c->keep, &hb);
  if (++c->ticks == 12)
    uv_close((uv_handle_t *)t, NULL);
}

static void test_prune(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  events e = {0};
  agent_registry *reg = make(&loop, 0.2, 10, &e);
  fake_link quiet = {0}, chatty = {0};
  agent *a, *b;
  T_EQ_INT(agent_registry_attach(reg, "quiet", 5, AGENT_IDLE, NULL, 0, &fake_ops, &quiet, &a), 0);
  T_EQ_INT(agent_registry_attach(reg, "chatty", 6, AGENT_IDLE, NULL, 0, &fake_ops, &chatty, &b), 0);
  T_EQ_INT(agent_registry_start(reg), 0);
  prune_ctx c = {.reg = reg, .keep = b};
  uv_timer_init(&loop, &c.t);
  c.t.data = &c;
  uv_timer_start(&c.t, keepalive_cb, 50, 50); /* 12 x 50 ms = 600 ms, three timeouts */
  while (c.ticks < 12)
    uv_run(&loop, UV_RUN_ONCE);
  T_EQ_INT(quiet.ended, 1);
  T_EQ_INT(quiet.end_reason, SM_ETIMEDOUT);
  T_EQ_INT(chatty.ended, 0);
  T_EQ_INT(agent_registry_count(reg), 1);
  T_ASSERT(agent_registry_find(reg, "chatty", 6) == b);
  T_ASSERT(b->load == 0.5); /* cpu 50% dominates 0/1 commands */
  agent_registry_stats rs;
  agent_registry_get_stats(reg, &rs);
  T_EQ_INT(rs.pruned, 1);
  T_EQ_INT(rs.heartbeats, 12);
  finish(&loop, reg);
}

static void test_filter(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  events e = {0};
  agent_registry *reg = make(&loop, 60, 100, &e);
  fake_link l = {0};
  agent *a1, *a2, *a3;
  sm_kv m1[] = {{"version", "1.2.0"}, {"capabilities", "scan_type=nmap,os=linux"}};
  sm_kv m2[] = {{"version", "2.0.0"}, {"capabilities", "scan_type=nuclei"}};
  sm_kv m3[] = {{"version", "garbage"}, {"capabilities", "scan_type=nmap"}};
  T_EQ_INT(agent_registry_attach(reg, "a1", 2, AGENT_IDLE, m1, 2, &fake_ops, &l, &a1), 0);
  T_EQ_INT(agent_registry_attach(reg, "a2", 2, AGENT_BUSY, m2, 2, &fake_ops, &l, &a2), 0);
  T_EQ_INT(agent_registry_attach(reg, "a3", 2, AGENT_IDLE, m3, 2, &fake_ops, &l, &a3), 0);
  agent_heartbeat hb = {.cpu_usage = 0.9};
  agent_registry_heartbeat(reg, a2, &hb);
  T_ASSERT(a2->cpu_usage == 90.0); /* a fraction is taken as such */

  agent_filter all = {.max_load = -1};
  T_EQ_INT(agent_registry_foreach(reg, &all, NULL, NULL), 3);
  agent_filter idle = {.status_mask = 1u << AGENT_IDLE, .max_load = -1};
  T_EQ_INT(agent_registry_foreach(reg, &idle, NULL, NULL), 2);
  sm_kv nmap[] = {{"scan_type", "nmap"}};
  agent_filter caps = {.caps = nmap, .ncaps = 1, .max_load = -1};
  T_EQ_INT(agent_registry_foreach(reg, &caps, NULL, NULL), 2);
  sm_kv any_os[] = {{"os", "*"}, {"scan_type", "nmap"}};
  agent_filter caps2 = {.caps = any_os, .ncaps = 2, .max_load = -1};
  T_EQ_INT(agent_registry_foreach(reg, &caps2, NULL, NULL), 1);
  agent_filter ver = {.min_version = "1.5", .max_load = -1};
  T_EQ_INT(agent_registry_foreach(reg, &ver, NULL, NULL), 1); /* garbage never matches */
  agent_filter load = {.max_load = 0.5};
  T_EQ_INT(agent_registry_foreach(reg, &load, NULL, NULL), 2);

  agent_command cmd = {.id = "b1", .type = "status"};
  T_EQ_INT(agent_registry_broadcast(reg, &caps, &cmd), 2);
  T_EQ_INT(l.sends, 2);

  enum agent_status st;
  T_EQ_INT(agent_status_parse("maintenance", &st), 0);
  T_EQ_INT(st, AGENT_MAINTENANCE);
  T_EQ_INT(agent_status_parse("asleep", &st), SM_EINVAL);
  T_EQ_STR(agent_status_name(AGENT_BUSY), "busy");
  finish(&loop, reg);
}

/* Allocation failure in a registration and in a replacement: the call fails cleanly
 * (SM_ENOMEM) and changes nothing, nothing leaks, and the registry keeps working. */
static void test_alloc_fail_attach(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  events e = {0};
  agent_registry *reg = make(&loop, 60, 10, &e);
  sm_kv meta[] = {{"hostname", "h1"},
                  {"version", "1.4.2"},
                  {"capabilities", "scan_type=nmap,os=linux"},
                  {"segment", "10.0.0.0/24"},
                  {"max_concurrent", "4"}};
  sm_kv meta2[] = {{"hostname", "h2"}, {"capabilities", "gpu"}, {"max_concurrent", "8"}};
  fake_link l1 = {0}, l2 = {0};
  agent *a = NULL;
  long nth;
  for (nth = 0; nth < 200; nth++) { /* a new agent */
    unsigned long before = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0);
    int rc = agent_registry_attach(reg, "x", 1, AGENT_IDLE, meta, 5, &fake_ops, &l1, &a);
    sm_alloc_fail_at(-1, 0);
    if (sm_alloc_failures() == before) {
      T_EQ_INT(rc, 0);
      break;
    }
    T_EQ_INT(rc, SM_ENOMEM);
    T_EQ_INT(agent_registry_count(reg), 0);
    T_EQ_INT(e.registered, 0);
  }
  T_ASSERT(nth > 0 && nth < 200);
  T_EQ_INT(e.registered, 1);
  for (nth = 0; nth < 200; nth++) { /* the same id on a new stream */
    unsigned long before = sm_alloc_failures();
    agent *b = NULL;
    sm_alloc_fail_at(nth, 0);
    int rc = agent_registry_attach(reg, "x", 1, AGENT_BUSY, meta2, 3, &fake_ops, &l2, &b);
    sm_alloc_fail_at(-1, 0);
    if (sm_alloc_failures() == before) {
      T_EQ_INT(rc, 0);
      T_ASSERT(b == a);
      break;
    }
    T_EQ_INT(rc, SM_ENOMEM);
    /* the old stream and its descriptor are untouched */
    T_EQ_INT(l1.ended, 0);
    T_ASSERT(a->link == &l1);
    T_EQ_STR(a->hostname, "h1");
    T_EQ_INT(a->ncaps, 2);
    T_EQ_INT(a->max_concurrent, 4);
  }
  T_ASSERT(nth > 0 && nth < 200);
  T_EQ_INT(l1.ended, 1);
  T_EQ_STR(a->hostname, "h2");
  T_EQ_STR(a->version, "1.4.2");
  T_EQ_INT(a->ncaps, 1);
  T_EQ_INT(a->max_concurrent, 8);
  agent_command cmd = {.id = "c1", .type = "echo"};
  T_EQ_INT(agent_send(a, &cmd), 0);
  T_EQ_INT(l2.sends, 1);
  finish(&loop, reg);
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_RUN(test_attach_descriptor);
  T_RUN(test_replace_and_detach);
  T_RUN(test_limit);
  T_RUN(test_prune);
  T_RUN(test_filter);
  T_RUN(test_alloc_fail_attach);
  return t_done();
}
