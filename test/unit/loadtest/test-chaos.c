/* Tests of loadtest/chaos: a schedule runs every fault once (proxy fault, shell commands, a hog
 * that stops), closing with faults active kills the hog and calls back once, and allocation
 * failure on creation fails cleanly. */
#include "loadtest/chaos.h"
#include "t.h"
#include "util/alloc.h"
#include "util/timeutil.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t *loop;
static int closed;

static void on_closed(void *ud) {
  (void)ud;
  closed++;
}

static void tick_cb(uv_timer_t *t) {
  lt_chaos_tick(t->data);
}

static void scenario(lt_scenario *s) {
  char err[LT_ERRBUF];
  lt_scenario_defaults(s);
  T_EQ_INT(lt_proxy_spec_parse("p=127.0.0.1:0->127.0.0.1:1", &s->proxies[0], err, sizeof(err)), 0);
  s->nproxies = 1;
  const char *f[] = {"at=0 duration=0.2 target=p action=blackhole",
                     "at=0 duration=0.4 target=manager action=cpu_pressure threads=2",
                     "at=0.1 duration=0.1 target=manager action=kill9 cmd=true restart_cmd=true",
                     "at=0.1 duration=0.3 target=manager action=memory_pressure mb=8"};
  for (size_t i = 0; i < 4; i++)
    T_EQ_INT(lt_fault_spec_parse(f[i], &s->faults[i], err, sizeof(err)), 0);
  s->nfaults = 4;
}

static void close_and_wait(lt_chaos *c) {
  closed = 0;
  lt_chaos_close(c, on_closed, NULL);
  T_EQ_INT(closed, 0); /* never inside the call */
  while (closed == 0)
    uv_run(loop, UV_RUN_ONCE);
  uv_run(loop, UV_RUN_NOWAIT);
  T_EQ_INT(closed, 1);
}

static void test_schedule(void) {
  lt_scenario s;
  scenario(&s);
  lt_chaos *c = NULL;
  char err[LT_ERRBUF] = "";
  T_EQ_INT(lt_chaos_create(loop, &s, &c, err, sizeof(err)), 0);
  T_ASSERT(lt_chaos_proxy_addr(c, "p") != NULL);
  T_ASSERT(lt_chaos_proxy_addr(c, "q") == NULL);
  T_EQ_INT(lt_chaos_pending(c), 0); /* nothing scheduled before the start */
  T_ASSERT(lt_chaos_last_end(c) == 0.4);
  uv_timer_t t;
  uv_timer_init(loop, &t);
  t.data = c;
  lt_chaos_start(c, sm_now_ms());
  T_EQ_INT(lt_chaos_pending(c), 4);
  uv_timer_start(&t, tick_cb, 10, 10);
  int64_t end = sm_now_ms() + 5000;
  while (lt_chaos_pending(c) > 0 && sm_now_ms() < end)
    uv_run(loop, UV_RUN_ONCE);
  T_EQ_INT(lt_chaos_pending(c), 0);
  for (size_t i = 0; i < 4; i++) {
    const lt_fault_state *st = lt_chaos_fault(c, i);
    T_ASSERT(st->start_ms > 0 && st->end_ms >= st->start_ms);
    T_EQ_STR(st->error, "");
  }
  int hog = lt_chaos_fault(c, 1)->pid;
  T_ASSERT(hog > 0);
  T_ASSERT(kill(hog, 0) != 0 && errno == ESRCH); /* killed and reaped at the fault's end */
  T_ASSERT(lt_chaos_fault(c, 2)->pid > 0 && lt_chaos_fault(c, 2)->restart_pid > 0);
  uv_close((uv_handle_t *)&t, NULL);
  close_and_wait(c);
}

static void test_close_with_faults_active(void) {
  lt_scenario s;
  scenario(&s);
  s.faults[1].duration = 60; /* a hog that would run a minute */
  lt_chaos *c = NULL;
  char err[LT_ERRBUF] = "";
  T_EQ_INT(lt_chaos_create(loop, &s, &c, err, sizeof(err)), 0);
  lt_chaos_start(c, sm_now_ms());
  lt_chaos_tick(c);
  int hog = lt_chaos_fault(c, 1)->pid;
  T_ASSERT(hog > 0 && kill(hog, 0) == 0);
  close_and_wait(c);
  T_ASSERT(kill(hog, 0) != 0 && errno == ESRCH);
}

static void test_bad_proxy(void) {
  lt_scenario s;
  scenario(&s);
  /* a port taken by the first proxy cannot be bound again by a second one */
  lt_chaos *c = NULL;
  char err[LT_ERRBUF] = "";
  T_EQ_INT(lt_chaos_create(loop, &s, &c, err, sizeof(err)), 0);
  lt_scenario s2;
  scenario(&s2);
  snprintf(s2.proxies[0].listen, sizeof(s2.proxies[0].listen), "%s", lt_chaos_proxy_addr(c, "p"));
  lt_chaos *c2 = NULL;
  T_EQ_INT(lt_chaos_create(loop, &s2, &c2, err, sizeof(err)), SM_EADDR);
  T_ASSERT(strstr(err, "--proxy p") != NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  close_and_wait(c);
}

static void test_alloc_failure(void) {
  lt_scenario s;
  scenario(&s);
  for (long nth = 0;; nth++) {
    lt_chaos *c = NULL;
    char err[LT_ERRBUF] = "";
    sm_alloc_fail_at(nth, 0);
    int rc = lt_chaos_create(loop, &s, &c, err, sizeof(err));
    sm_alloc_fail_at(-1, 0);
    if (rc == 0) {
      close_and_wait(c);
      break;
    }
    T_EQ_INT(rc, SM_ENOMEM);
    T_ASSERT(err[0] != '\0');
    uv_run(loop, UV_RUN_NOWAIT); /* the partial state closes from the loop, leaking nothing */
    T_ASSERT(nth < 10);
  }
}

int main(void) {
  loop = uv_default_loop();
  T_RUN(test_schedule);
  T_RUN(test_close_with_faults_active);
  T_RUN(test_bad_proxy);
  T_RUN(test_alloc_failure);
  uv_run(loop, UV_RUN_DEFAULT);
  T_EQ_INT(uv_loop_close(loop), 0);
  return t_done();
}
