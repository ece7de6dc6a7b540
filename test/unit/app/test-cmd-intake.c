/* Unit tests of src/app/cmd_intake.c: AMQP deliveries into a real lifecycle (in-process store)
 * through a fake message source (cmd_intake_source): a valid command is acked once it is stored,
 * an invalid one dead-lettered, a refusal pauses the source and keeps the delivery until the
 * lifecycle accepts again, a failing pause/resume is retried, destroy with a submission in
 * flight, and allocation failure in a delivery. */
#include "app/cmd_intake.h"
#include "core/lifecycle.h"
#include "core/registry.h"
#include "store/store.h"
#include "t.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <string.h>
#include <unistd.h>
#include <uv.h>

/* ---- the fake source ---- */

typedef struct fake_src {
  int starts, pauses, resumes, destroys;
  int acks, rejects;
  int fail_resume; /* the next resumes that fail */
  int fail_pause;  /* the next pauses that fail */
  int paused;
  uint64_t last_tag;
  char reason[256];
} fake_src;

static int s_start(void *s) {
  ((fake_src *)s)->starts++;
  return 0;
}
static int s_pause(void *s) {
  fake_src *f = s;
  f->pauses++;
  if (f->fail_pause) {
    f->fail_pause--;
    return SM_EIO;
  }
  f->paused = 1;
  return 0;
}
static int s_resume(void *s) {
  fake_src *f = s;
  f->resumes++;
  if (f->fail_resume) {
    f->fail_resume--;
    return SM_EIO;
  }
  f->paused = 0;
  return 0;
}
static int s_ack(void *s, mq_intake_handle h) {
  fake_src *f = s;
  f->acks++;
  f->last_tag = h.tag;
  return 0;
}
static int s_reject(void *s, mq_intake_handle h, const char *reason) {
  fake_src *f = s;
  f->rejects++;
  f->last_tag = h.tag;
  snprintf(f->reason, sizeof(f->reason), "%s", reason);
  return 0;
}
static void s_destroy(void *s) {
  ((fake_src *)s)->destroys++;
}

static uv_loop_t loop;
static store *st;
static agent_registry *reg;
static lifecycle *lc;
static fake_src fs;
static cmd_intake *ci;
static uint64_t tag;

static void on_accepting(void *ud, int acc) {
  (void)ud;
  cmd_intake_set_accepting(ci, acc);
}

static void deliver(const char *body, const char *message_id) {
  mq_intake_msg m;
  memset(&m, 0, sizeof(m));
  m.handle.gen = 1;
  m.handle.tag = ++tag;
  m.body.base = body;
  m.body.len = strlen(body);
  if (message_id) {
    m.props.message_id.base = message_id;
    m.props.message_id.len = strlen(message_id);
  }
  cmd_intake_deliver(ci, &m);
}

#define WAIT(cond)                                                                                 \
  do {                                                                                             \
    int64_t t_end_ = sm_now_ms() + 3000;                                                           \
    while (!(cond)) {                                                                              \
      if (sm_now_ms() > t_end_)                                                                    \
        T_FAIL_("timed out waiting for %s", #cond);                                                \
      uv_run(&loop, UV_RUN_NOWAIT);                                                                \
      usleep(500);                                                                                 \
    }                                                                                              \
  } while (0)

static void spin(int n) {
  for (int i = 0; i < n; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void new_intake(void) {
  memset(&fs, 0, sizeof(fs));
  cmd_intake_source src = {s_start, s_pause, s_resume, s_ack, s_reject, s_destroy, &fs};
  T_EQ_INT(cmd_intake_create_on(&loop, &src, lc, &ci), 0);
  T_EQ_INT(cmd_intake_start(ci), 0);
  T_EQ_INT(fs.starts, 1);
}

static void end_intake(void) {
  cmd_intake_destroy(ci);
  ci = NULL;
  T_EQ_INT(fs.destroys, 1);
  spin(5);
}

static void test_valid_and_invalid(void) {
  new_intake();
  deliver("{\"type\":\"echo\",\"params\":{\"x\":\"1\"}}", "m-1");
  WAIT(fs.acks == 1);
  T_EQ_INT(fs.last_tag, tag);
  deliver("{\"type\":", NULL);
  T_EQ_INT(fs.rejects, 1); /* invalid: dead-lettered at once */
  T_ASSERT(fs.reason[0] != '\0');
  deliver("{\"type\":\"\"}", NULL);
  T_EQ_INT(fs.rejects, 2);
  /* the same message id again: idempotent, acked again */
  deliver("{\"type\":\"echo\",\"params\":{\"x\":\"1\"}}", "m-1");
  WAIT(fs.acks == 2);
  cmd_intake_stats s;
  cmd_intake_get_stats(ci, &s);
  T_EQ_INT(s.accepted, 2);
  T_EQ_INT(s.rejected, 2);
  T_EQ_INT(s.held, 0);
  end_intake();
}

/* Maintenance: refused, paused, kept; accepted again after it ends. A failing resume is
 * retried by the poll. */
static void test_refusal_pause_resume(void) {
  new_intake();
  lifecycle_set_maintenance(lc, 1);
  spin(3);
  deliver("{\"type\":\"echo\"}", "m-2");
  spin(3);
  T_ASSERT(fs.pauses >= 1);
  T_EQ_INT(fs.paused, 1);
  cmd_intake_stats s;
  cmd_intake_get_stats(ci, &s);
  T_EQ_INT(s.held, 1);
  T_EQ_INT(fs.acks, 0);
  T_EQ_INT(fs.rejects, 0);
  deliver("{\"type\":\"echo\"}", "m-3"); /* arrives while paused: kept */
  cmd_intake_get_stats(ci, &s);
  T_EQ_INT(s.held, 2);
  fs.fail_resume = 1;
  lifecycle_set_maintenance(lc, 0);
  WAIT(fs.acks == 2);
  T_ASSERT(fs.resumes >= 2); /* one failed, the poll tried again */
  T_EQ_INT(fs.paused, 0);
  cmd_intake_get_stats(ci, &s);
  T_EQ_INT(s.held, 0);
  end_intake();
}

/* A failing pause is logged; deliveries are still kept until accepted. */
static void test_pause_failure(void) {
  new_intake();
  fs.fail_pause = 1;
  lifecycle_set_maintenance(lc, 1);
  spin(3);
  deliver("{\"type\":\"echo\"}", "m-4");
  spin(3);
  cmd_intake_stats s;
  cmd_intake_get_stats(ci, &s);
  T_EQ_INT(s.held, 1);
  lifecycle_set_maintenance(lc, 0);
  WAIT(fs.acks == 1);
  end_intake();
}

/* Destroyed with a submission in flight: its answer lands on the kept delivery only, which
 * frees it (ASan checks the leak and the late callback). */
static void test_destroy_in_flight(void) {
  new_intake();
  deliver("{\"type\":\"echo\"}", "m-5");
  deliver("{\"type\":\"echo\"}", "m-6");
  end_intake();
  spin(20);
  T_EQ_INT(fs.acks, 0);
}

/* Allocation nth of a delivery fails, nth = 0, 1, ...: the delivery is left unsettled (the
 * broker redelivers), or kept and submitted later, or accepted; never settled twice. */
static void test_delivery_alloc_failure(void) {
  for (long nth = 0;; nth++) {
    T_ASSERT(nth < 500);
    new_intake();
    unsigned long f0 = sm_alloc_failures();
    sm_alloc_fail_at(nth, 0);
    deliver("{\"type\":\"echo\",\"params\":{\"k\":\"v\"}}", NULL);
    sm_alloc_fail_at(-1, 0);
    int injected = sm_alloc_failures() != f0;
    spin(20);
    cmd_intake_stats s;
    cmd_intake_get_stats(ci, &s);
    T_ASSERT(fs.acks + fs.rejects <= 1);
    if (!injected) {
      WAIT(fs.acks == 1);
      end_intake();
      break;
    }
    if (fs.acks == 0 && s.held) {
      /* kept after a refusal for memory: submitted again when the lifecycle accepts */
      cmd_intake_set_accepting(ci, 0);
      cmd_intake_set_accepting(ci, 1);
      WAIT(fs.acks == 1);
    }
    end_intake();
  }
}

static void test_bad_args(void) {
  cmd_intake_source src = {s_start, s_pause, s_resume, NULL, s_reject, s_destroy, &fs};
  cmd_intake *x = NULL;
  T_EQ_INT(cmd_intake_create_on(&loop, &src, lc, &x), SM_EINVAL);
  T_EQ_INT(cmd_intake_create(&loop, NULL, lc, 0, &x), SM_EINVAL);
  cmd_intake_destroy(NULL);
  cmd_intake_set_accepting(NULL, 1);
}

static void closed_cb(void *ud) {
  (*(int *)ud)++;
}

/* Issue 12 #4, #5: a NUL cut the type ("echo\u0000evil" ran as "echo"); invalid UTF-8 was stored
 * and written back. Both are dead-lettered, never stored, never requeued. */
static void deliver_raw(const char *body, size_t len, const char *corr, size_t corr_len) {
  mq_intake_msg m;
  memset(&m, 0, sizeof(m));
  m.handle.gen = 1;
  m.handle.tag = ++tag;
  m.body.base = body;
  m.body.len = len;
  m.props.correlation_id.base = corr;
  m.props.correlation_id.len = corr_len;
  cmd_intake_deliver(ci, &m);
}

static void test_nul_and_utf8(void) {
  new_intake();
  static const char nul_esc[] = "{\"type\":\"echo\\u0000evil\"}";
  deliver_raw(nul_esc, sizeof(nul_esc) - 1, NULL, 0);
  T_EQ_INT(fs.rejects, 1);
  T_EQ_STR(fs.reason, "type: must not contain NUL (\\u0000)");
  static const char nul_raw[] = "{\"type\":\"echo\0evil\"}";
  deliver_raw(nul_raw, sizeof(nul_raw) - 1, NULL, 0);
  T_EQ_INT(fs.rejects, 2);
  T_EQ_STR(fs.reason, "type: must not contain NUL");
  static const char bad[] = "{\"type\":\"echo\",\"params\":{\"p\":\"\xff\xfe\"}}";
  deliver_raw(bad, sizeof(bad) - 1, NULL, 0);
  T_EQ_INT(fs.rejects, 3);
  T_EQ_STR(fs.reason, "params.p: must be valid UTF-8");
  static const char ok[] = "{\"type\":\"echo\"}";
  deliver_raw(ok, sizeof(ok) - 1, "c\xff", 2);
  T_EQ_INT(fs.rejects, 4);
  T_EQ_STR(fs.reason, "correlation_id: must be valid UTF-8 without NUL");
  deliver_raw(ok, sizeof(ok) - 1, "c\0d", 3);
  T_EQ_INT(fs.rejects, 5);
  deliver_raw(ok, sizeof(ok) - 1, "c-\xc3\xa9", 4); /* valid: accepted */
  WAIT(fs.acks == 1);
  cmd_intake_stats st_;
  cmd_intake_get_stats(ci, &st_);
  T_EQ_INT(st_.accepted, 1);
  T_EQ_INT(st_.rejected, 5);
  T_EQ_INT(st_.held, 0);
  end_intake();
}

int main(void) {
  sm_log_configure(SM_LOG_ERROR, SM_LOG_CONSOLE);
  T_EQ_INT(uv_loop_init(&loop), 0);
  T_EQ_INT(store_mem_create(&loop, NULL, &st), 0);
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 10, .instance = "mgr-i"};
  T_EQ_INT(agent_registry_create(&loop, &rc, &reg), 0);
  lifecycle_config cfg = {.queue_size = 100,
                          .max_agent_load = 0.8,
                          .command_timeout_s = 300,
                          .timeout_grace_s = 1,
                          .max_retries = 3,
                          .reconnect_grace_s = 1,
                          .instance = "mgr-i",
                          .on_accepting = on_accepting};
  T_EQ_INT(lifecycle_create(&loop, &cfg, reg, st, NULL, NULL, &lc), 0);
  T_EQ_INT(lifecycle_start(lc), 0);
  spin(20);
  T_RUN(test_valid_and_invalid);
  T_RUN(test_nul_and_utf8);
  T_RUN(test_refusal_pause_resume);
  T_RUN(test_pause_failure);
  T_RUN(test_destroy_in_flight);
  T_RUN(test_delivery_alloc_failure);
  T_RUN(test_bad_args);
  int closed = 0;
  lifecycle_close(lc, closed_cb, &closed);
  store_close(st, closed_cb, &closed);
  uv_run(&loop, UV_RUN_DEFAULT);
  agent_registry_destroy(reg);
  uv_run(&loop, UV_RUN_DEFAULT);
  T_EQ_INT(closed, 2);
  T_EQ_INT(uv_loop_close(&loop), 0);
  return t_done();
}
