/* Unit tests of src/app/agent_mirror.c: the registry mirrored into the in-process store's agent
 * records (written on the tick after a registration, deleted when the agent leaves), closing
 * with store operations in flight, and allocation failure in agent_mirror_create. */
#include "app/agent_mirror.h"
#include "core/registry.h"
#include "store/store.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "fake-link.h"

#include <string.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t loop;
static store *st;
static agent_registry *reg;
static agent_mirror *mir;
static int links[4];

static void ev_register(void *ud, agent *a, int replaced) {
  (void)replaced;
  agent_mirror_on_register(ud, a);
}
static void ev_update(void *ud, agent *a) {
  agent_mirror_on_update(ud, a);
}
static void ev_unregister(void *ud, agent *a, int reason) {
  (void)reason;
  agent_mirror_on_unregister(ud, a);
}

/* the store's agent records */
static int listed;
static size_t nrecs;
static char rec_id[64], rec_instance[64];
static void on_list(void *ud, int err, const store_agent_rec *recs, size_t n) {
  (void)ud;
  T_EQ_INT(err, 0);
  listed = 1;
  nrecs = n;
  rec_id[0] = rec_instance[0] = '\0';
  if (n) {
    snprintf(rec_id, sizeof(rec_id), "%s", recs[0].id);
    snprintf(rec_instance, sizeof(rec_instance), "%s", recs[0].instance);
    T_ASSERT(strstr(recs[0].data, "\"id\"") != NULL);
  }
}

static size_t records(void) {
  listed = 0;
  T_EQ_INT(store_agent_list(st, 100, on_list, NULL), 0);
  while (!listed)
    uv_run(&loop, UV_RUN_ONCE);
  return nrecs;
}

static void spin_until_puts(uint64_t want) {
  int64_t end = sm_now_ms() + 4000;
  uint64_t puts = 0, dels = 0;
  do {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(2000);
    agent_mirror_counts(mir, &puts, &dels);
  } while (puts < want && sm_now_ms() < end);
  T_EQ_INT(puts, want);
}

static agent *attach(const char *id) {
  sm_kv meta[] = {{"hostname", "h"}, {"version", "1.0.0"}};
  agent *a = NULL;
  static int k;
  T_EQ_INT(agent_registry_attach(reg, id, strlen(id), AGENT_IDLE, meta, 2, &fake_ops,
                                 &links[k++ % 4], &a),
           0);
  return a;
}

static void test_register_and_leave(void) {
  agent *a = attach("agent-1");
  T_EQ_INT(records(), 0); /* written on the next tick, not at once */
  spin_until_puts(1);
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  T_EQ_INT(records(), 1);
  T_EQ_STR(rec_id, "agent-1");
  T_EQ_STR(rec_instance, "mgr-a");
  agent_registry_detach(reg, a, &links[0], SM_ECLOSED);
  uint64_t puts, dels;
  agent_mirror_counts(mir, &puts, &dels);
  T_EQ_INT(dels, 1);
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  T_EQ_INT(records(), 0);
}

/* An agent that leaves before its first write: nothing to delete. */
static void test_leave_before_write(void) {
  agent *a = attach("agent-2");
  agent_registry_detach(reg, a, &links[1], SM_ECLOSED);
  uint64_t puts, dels;
  agent_mirror_counts(mir, &puts, &dels);
  T_EQ_INT(dels, 1); /* (from the first test) */
}

/* Closing with a write in flight: the mirror is freed after the store's answer (ASan checks
 * the leak and the late callback). */
static void test_close_with_pending(void) {
  attach("agent-3");
  uint64_t puts0, dels;
  agent_mirror_counts(mir, &puts0, &dels);
  /* wait for the tick that starts the write, then close before its answer is handled */
  int64_t end = sm_now_ms() + 4000;
  uint64_t puts = puts0;
  while (puts == puts0 && sm_now_ms() < end) {
    uv_run(&loop, UV_RUN_ONCE);
    agent_mirror_counts(mir, &puts, &dels);
  }
  T_EQ_INT(puts, puts0 + 1);
  agent_mirror_close(mir);
  agent_registry_set_events(reg, &(agent_registry_events){0});
  mir = NULL;
  for (int i = 0; i < 10; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_create_alloc_failure(void) {
  for (long nth = 0;; nth++) {
    T_ASSERT(nth < 100);
    agent_mirror *m = NULL;
    unsigned long f0 = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0);
    int err = agent_mirror_create(&loop, st, reg, "mgr-b", 30, &m);
    sm_alloc_fail_at(-1, 0);
    if (sm_alloc_failures() == f0) {
      T_EQ_INT(err, 0);
      agent_mirror_close(m);
      break;
    }
    T_EQ_INT(err, SM_ENOMEM);
  }
  agent_mirror *m = NULL;
  T_EQ_INT(agent_mirror_create(&loop, st, reg, "x", 1, &m), SM_EINVAL); /* ttl below 3 s */
  uv_run(&loop, UV_RUN_NOWAIT);
}

static void closed_cb(void *ud) {
  (*(int *)ud)++;
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_EQ_INT(uv_loop_init(&loop), 0);
  T_EQ_INT(store_mem_create(&loop, NULL, &st), 0);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 10, .instance = "mgr-a"};
  T_EQ_INT(agent_registry_create(&loop, &rc, &reg), 0);
  T_EQ_INT(agent_mirror_create(&loop, st, reg, "mgr-a", 30, &mir), 0);
  agent_registry_events ev = {.on_register = ev_register,
                              .on_update = ev_update,
                              .on_unregister = ev_unregister,
                              .ud = mir};
  agent_registry_set_events(reg, &ev);
  T_RUN(test_register_and_leave);
  T_RUN(test_leave_before_write);
  T_RUN(test_close_with_pending);
  T_RUN(test_create_alloc_failure);
  int closed = 0;
  agent_registry_destroy(reg);
  store_close(st, closed_cb, &closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 1);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
