/* chaos.c - the fault scheduler: proxies, signals, shell commands and hog children. */
#include "loadtest/chaos.h"

#include "loadtest/proxy.h"
#include "util/alloc.h"
#include "util/list.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum fstate { F_WAIT = 0, F_ACTIVE, F_DONE };

typedef struct spawned {
  sm_list link;
  struct lt_chaos *c;
  uv_process_t proc;
} spawned;

struct lt_chaos {
  uv_loop_t *loop;
  const lt_scenario *s;
  lt_proxy *proxies[LT_PROXIES_MAX];
  size_t nproxies;
  lt_fault_state st[LT_FAULTS_MAX];
  uint8_t phase[LT_FAULTS_MAX]; /* enum fstate */
  int hog[LT_FAULTS_MAX];       /* hog pid while running, 0 none */
  size_t nfaults;
  int64_t t0;
  int started;
  sm_list procs;
  uv_timer_t defer; /* closed last-but-not-inside lt_chaos_close, so cb runs from the loop */
  int open;         /* proxies + process handles still open while closing */
  int closing;
  lt_chaos_close_cb cb;
  void *ud;
};

static lt_proxy *find_proxy(const lt_chaos *c, const char *name) {
  for (size_t i = 0; i < c->nproxies; i++)
    if (strcmp(lt_proxy_name(c->proxies[i]), name) == 0)
      return c->proxies[i];
  return NULL;
}

int lt_chaos_create(uv_loop_t *loop, const lt_scenario *s, lt_chaos **out, char *err,
                    size_t errlen) {
  lt_chaos *c = sm_calloc(1, sizeof(*c));
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return SM_ENOMEM;
  }
  c->loop = loop;
  c->s = s;
  sm_list_init(&c->procs);
  uv_timer_init(loop, &c->defer);
  c->defer.data = c;
  c->nfaults = s->nfaults;
  for (size_t i = 0; i < s->nfaults; i++)
    c->st[i].spec = &s->faults[i];
  for (size_t i = 0; i < s->nproxies; i++) {
    const lt_proxy_spec *ps = &s->proxies[i];
    struct sockaddr_storage la, ua;
    if (lt_proxy_parse_addr(ps->listen, &la) || lt_proxy_parse_addr(ps->upstream, &ua)) {
      snprintf(err, errlen, "--proxy %s: expected numeric IP:port addresses (or localhost)",
               ps->name);
      lt_chaos_close(c, NULL, NULL);
      return SM_EINVAL;
    }
    int rc = lt_proxy_create(loop, ps->name, (struct sockaddr *)&la, (struct sockaddr *)&ua,
                             &c->proxies[c->nproxies]);
    if (rc) {
      snprintf(err, errlen, "--proxy %s: cannot listen on %s: %s", ps->name, ps->listen,
               sm_strerror(rc));
      lt_chaos_close(c, NULL, NULL);
      return rc;
    }
    c->nproxies++;
  }
  *out = c;
  return 0;
}

const char *lt_chaos_proxy_addr(const lt_chaos *c, const char *name) {
  lt_proxy *p = find_proxy(c, name);
  return p ? lt_proxy_addr(p) : NULL;
}

void lt_chaos_start(lt_chaos *c, int64_t t0_ms) {
  c->t0 = t0_ms;
  c->started = 1;
}

size_t lt_chaos_nfaults(const lt_chaos *c) {
  return c->nfaults;
}

const lt_fault_state *lt_chaos_fault(const lt_chaos *c, size_t i) {
  return &c->st[i];
}

size_t lt_chaos_pending(const lt_chaos *c) {
  size_t n = 0;
  for (size_t i = 0; c->started && i < c->nfaults; i++)
    n += c->phase[i] != F_DONE;
  return n;
}

double lt_chaos_last_end(const lt_chaos *c) {
  double last = 0;
  for (size_t i = 0; i < c->nfaults; i++)
    if (c->st[i].spec->at + c->st[i].spec->duration > last)
      last = c->st[i].spec->at + c->st[i].spec->duration;
  return last;
}

/* ---- processes ------------------------------------------------------------------------------ */

static void on_proxy_closed(void *ud);

static void on_proc_closed(uv_handle_t *h) {
  spawned *sp = h->data;
  lt_chaos *c = sp->c;
  sm_list_remove(&sp->link);
  free(sp);
  if (c->closing)
    on_proxy_closed(c);
}

static void on_proc_exit(uv_process_t *p, int64_t status, int sig) {
  spawned *sp = p->data;
  sm_log_info("loadtest", "chaos command exited", SM_LI("pid", p->pid), SM_LI("status", status),
              SM_LI("signal", sig));
  if (!uv_is_closing((uv_handle_t *)p)) {
    if (sp->c->closing)
      return; /* lt_chaos_close closes it */
    uv_close((uv_handle_t *)p, on_proc_closed);
  }
}

/* Runs cmd with /bin/sh -c in its own session; returns its pid or 0 with why in err. */
static int run_shell(lt_chaos *c, const char *cmd, char *err, size_t errlen) {
  spawned *sp = sm_calloc(1, sizeof(*sp));
  if (sp == NULL) {
    snprintf(err, errlen, "out of memory");
    return 0;
  }
  char sh[] = "/bin/sh", dash_c[] = "-c", line[LT_SHELL_MAX];
  snprintf(line, sizeof(line), "%s", cmd);
  char *args[] = {sh, dash_c, line, NULL};
  /* /dev/null for all three: a restarted server must not hold our output pipes open (a
   * caller reading them to the end would wait for that server) */
  uv_stdio_container_t io[3] = {{.flags = UV_IGNORE}, {.flags = UV_IGNORE}, {.flags = UV_IGNORE}};
  uv_process_options_t o = {.exit_cb = on_proc_exit,
                            .file = "/bin/sh",
                            .args = args,
                            .flags = UV_PROCESS_DETACHED,
                            .stdio_count = 3,
                            .stdio = io};
  sp->c = c;
  sp->proc.data = sp;
  int rc = uv_spawn(c->loop, &sp->proc, &o);
  if (rc) {
    snprintf(err, errlen, "cannot run \"%.80s\": %s", cmd, uv_strerror(rc));
    /* a failed uv_spawn still initialised the handle: close it */
    sm_list_init(&sp->link);
    sm_list_push_back(&c->procs, &sp->link);
    uv_close((uv_handle_t *)&sp->proc, on_proc_closed);
    return 0;
  }
  uv_unref((uv_handle_t *)&sp->proc); /* a long-running restarted server does not hold the run */
  sm_list_push_back(&c->procs, &sp->link);
  return sp->proc.pid;
}

static int read_pid(const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  long pid = 0;
  if (f == NULL || fscanf(f, "%ld", &pid) != 1 || pid < 2) {
    snprintf(err, errlen, "pid_file \"%.100s\": %s", path, f ? "no pid in it" : strerror(errno));
    pid = 0;
  }
  if (f)
    fclose(f);
  return (int)pid;
}

/* ---- hogs ----------------------------------------------------------------------------------- */

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double hog_deadline;

static void *spin(void *arg) {
  volatile uint64_t x = 0;
  (void)arg;
  while (mono_s() < hog_deadline)
    for (int i = 0; i < 100000; i++)
      x += (uint64_t)i;
  return NULL;
}

/* The hog child: never returns. Uses no libuv and no allocation hook. */
static void hog_main(enum lt_chaos_action a, double seconds, uint32_t threads, uint32_t mb) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  alarm((unsigned)seconds + 2);
  hog_deadline = mono_s() + seconds;
  if (a == LT_ACT_CPU) {
    for (uint32_t i = 1; i < threads; i++) {
      pthread_t t;
      if (pthread_create(&t, NULL, spin, NULL) != 0)
        break;
    }
    spin(NULL);
    _exit(0);
  }
  size_t len = (size_t)mb << 20;
  char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    _exit(1);
  long pg = sysconf(_SC_PAGESIZE);
  while (mono_s() < hog_deadline) {
    for (size_t off = 0; off < len; off += (size_t)pg)
      m[off]++; /* touched again each round, so the pages stay resident */
    usleep(200000);
  }
  _exit(0);
}

static int start_hog(const lt_fault_spec *f, char *err, size_t errlen) {
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(err, errlen, "fork: %s", strerror(errno));
    return 0;
  }
  if (pid == 0)
    hog_main(f->action, f->duration, f->threads, f->mb);
  return (int)pid;
}

static void reap_hog(lt_chaos *c, size_t i, int kill_it) {
  if (c->hog[i] <= 0)
    return;
  if (kill_it)
    kill(c->hog[i], SIGKILL);
  pid_t w = waitpid(c->hog[i], NULL, kill_it ? 0 : WNOHANG);
  if (w == c->hog[i] || (w < 0 && errno == ECHILD))
    c->hog[i] = 0; /* 0: still running */
}

/* ---- faults --------------------------------------------------------------------------------- */

static enum lt_fault_kind proxy_kind(enum lt_chaos_action a) {
  switch (a) {
  case LT_ACT_DELAY:
    return LT_FAULT_DELAY;
  case LT_ACT_DROP:
    return LT_FAULT_DROP;
  case LT_ACT_BLACKHOLE:
    return LT_FAULT_BLACKHOLE;
  case LT_ACT_RESET:
    return LT_FAULT_RESET;
  case LT_ACT_BANDWIDTH:
    return LT_FAULT_BANDWIDTH;
  default:
    return LT_FAULT_NONE;
  }
}

static void fault_begin(lt_chaos *c, size_t i) {
  lt_fault_state *st = &c->st[i];
  const lt_fault_spec *f = st->spec;
  c->phase[i] = F_ACTIVE;
  st->start_ms = sm_now_ms();
  char *err = st->error;
  size_t el = sizeof(st->error);
  if (lt_action_is_proxy(f->action)) {
    lt_proxy *p = find_proxy(c, f->target);
    if (p)
      lt_proxy_set_fault(p, proxy_kind(f->action),
                         f->action == LT_ACT_DELAY ? f->delay_ms : f->bytes_per_s);
  } else if (f->action == LT_ACT_CPU || f->action == LT_ACT_MEMORY) {
    st->pid = c->hog[i] = start_hog(f, err, el);
  } else if (f->cmd[0]) {
    st->pid = run_shell(c, f->cmd, err, el);
  } else {
    int pid = f->pid ? f->pid : read_pid(f->pid_file, err, el);
    if (pid > 0) {
      st->pid = pid;
      if (kill(pid, f->action == LT_ACT_KILL9 ? SIGKILL : SIGTERM) != 0)
        snprintf(err, el, "kill %d: %s", pid, strerror(errno));
    }
  }
  sm_log_info("loadtest", "fault started", SM_LS("action", lt_action_name(f->action)),
              SM_LS("target", f->target), SM_LI("pid", st->pid), SM_LS("error", st->error));
}

static void fault_end(lt_chaos *c, size_t i) {
  lt_fault_state *st = &c->st[i];
  const lt_fault_spec *f = st->spec;
  c->phase[i] = F_DONE;
  st->end_ms = sm_now_ms();
  if (lt_action_is_proxy(f->action)) {
    lt_proxy *p = find_proxy(c, f->target);
    if (p)
      lt_proxy_set_fault(p, LT_FAULT_NONE, 0);
  } else if (f->action == LT_ACT_CPU || f->action == LT_ACT_MEMORY) {
    reap_hog(c, i, 1);
  }
  if (f->restart_cmd[0] && !c->closing) {
    char why[160] = "";
    st->restart_pid = run_shell(c, f->restart_cmd, why, sizeof(why));
    if (why[0] && st->error[0] == '\0')
      snprintf(st->error, sizeof(st->error), "%s", why);
  }
  sm_log_info("loadtest", "fault ended", SM_LS("action", lt_action_name(f->action)),
              SM_LS("target", f->target), SM_LI("restart_pid", st->restart_pid));
}

void lt_chaos_tick(lt_chaos *c) {
  if (!c->started || c->closing)
    return;
  double t = (double)(sm_now_ms() - c->t0) / 1000.0;
  for (size_t i = 0; i < c->nfaults; i++) {
    const lt_fault_spec *f = c->st[i].spec;
    if (c->phase[i] == F_WAIT && t >= f->at)
      fault_begin(c, i);
    if (c->phase[i] == F_ACTIVE && t >= f->at + f->duration)
      fault_end(c, i);
    if (c->hog[i])
      reap_hog(c, i, 0);
  }
}

void lt_chaos_stop(lt_chaos *c) {
  for (size_t i = 0; i < c->nfaults; i++) {
    if (c->phase[i] == F_ACTIVE)
      fault_end(c, i);
    c->phase[i] = F_DONE;
  }
}

static void on_proxy_closed(void *ud) {
  lt_chaos *c = ud;
  if (--c->open > 0)
    return;
  lt_chaos_close_cb cb = c->cb;
  void *cud = c->ud;
  free(c);
  if (cb)
    cb(cud);
}

static void on_defer_closed(uv_handle_t *h) {
  on_proxy_closed(h->data);
}

void lt_chaos_close(lt_chaos *c, lt_chaos_close_cb cb, void *ud) {
  lt_chaos_stop(c);
  for (size_t i = 0; i < c->nfaults; i++)
    reap_hog(c, i, 1);
  c->closing = 1;
  c->cb = cb;
  c->ud = ud;
  c->open = 1; /* held until every close below is issued */
  for (size_t i = 0; i < c->nproxies; i++) {
    c->open++;
    lt_proxy_close(c->proxies[i], on_proxy_closed, c);
  }
  SM_LIST_FOREACH(it, &c->procs) {
    spawned *sp = SM_LIST_ENTRY(it, spawned, link);
    if (!uv_is_closing((uv_handle_t *)&sp->proc)) {
      c->open++;
      uv_close((uv_handle_t *)&sp->proc, on_proc_closed);
    } else {
      c->open++; /* its close callback is on the way and counts down too */
    }
  }
  /* The hold (open = 1) is the defer timer: its close callback runs from the loop. */
  uv_close((uv_handle_t *)&c->defer, on_defer_closed);
}
