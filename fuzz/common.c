/* common.c - the helpers of fuzz.h. */
#include "fuzz.h"

#include "core/lifecycle.h"
#include "core/registry.h"
#include "store/store.h"
#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The run script closes the targets' stderr (-close_fd_mask=3) so that log lines cost nothing;
 * an oracle's message goes to a copy of stderr taken before libFuzzer's main runs. */
static int report_fd = 2;

__attribute__((constructor)) static void fz_keep_stderr(void) {
  int fd = dup(2);
  if (fd >= 0)
    report_fd = fd;
}

void fz_fail(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  if ((size_t)n > sizeof(msg) - 2)
    n = (int)sizeof(msg) - 2;
  msg[n++] = '\n';
  (void)!write(report_fd, "fuzz oracle: ", 13);
  (void)!write(report_fd, msg, (size_t)n);
  abort();
}

void fz_log_setup(void) {
  sm_log_configure(SM_LOG_DEBUG, SM_LOG_JSON);
}

static void must(int rc, const char *what) {
  if (rc != 0)
    fz_fail("harness: %s failed (%d)", what, rc);
}

void fz_world_open(fz_world *w) {
  must(uv_loop_init(&w->loop), "uv_loop_init");
  must(store_mem_create(&w->loop, NULL, &w->store), "store_mem_create");
  agent_registry_config rc = {.agent_timeout_s = 300, .max_agents = 100, .instance = "mgr-fuzz"};
  must(agent_registry_create(&w->loop, &rc, &w->reg), "agent_registry_create");
  /* A small queue: a batch of inputs that all submit reaches the 429 path too. */
  lifecycle_config cfg = {.queue_size = 64,
                          .max_agent_load = 0.8,
                          .command_timeout_s = 300,
                          .timeout_grace_s = 1,
                          .max_retries = 3,
                          .reconnect_grace_s = 1,
                          .instance = "mgr-fuzz",
                          .on_accepting = w->on_accepting,
                          .hook_ud = w->ud};
  must(lifecycle_create(&w->loop, &cfg, w->reg, w->store, NULL, NULL, &w->lc), "lifecycle_create");
  must(lifecycle_start(w->lc), "lifecycle_start");
  fz_world_spin(w, 4);
}

void fz_world_spin(fz_world *w, int n) {
  for (int i = 0; i < n; i++)
    uv_run(&w->loop, UV_RUN_NOWAIT);
}

static void count_closed(void *ud) {
  (*(int *)ud)++;
}

void fz_world_close(fz_world *w) {
  int closed = 0;
  lifecycle_close(w->lc, count_closed, &closed);
  store_close(w->store, count_closed, &closed);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  agent_registry_destroy(w->reg);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  if (closed != 2)
    fz_fail("harness: %d of 2 close callbacks ran", closed);
  if (uv_loop_close(&w->loop) != 0)
    fz_fail("harness: handles left open on the loop");
}

/* Length of the UTF-8 sequence at s[0..n), or 0 when it is not valid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80)
    return 1;
  size_t len;
  unsigned min;
  if (c >= 0xc2 && c <= 0xdf)
    len = 2, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef)
    len = 3, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4)
    len = 4, min = 0x10000;
  else
    return 0;
  if (n < len)
    return 0;
  unsigned cp = c & (0x7fu >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = cp << 6 | (s[i] & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}

void fz_check_utf8(const char *what, const char *text, size_t len) {
  static int strict = -1;
  if (strict < 0) {
    const char *e = getenv("FUZZ_STRICT_UTF8");
    strict = e != NULL && strcmp(e, "1") == 0;
  }
  if (!strict || text == NULL)
    return;
  const unsigned char *s = (const unsigned char *)text;
  for (size_t i = 0; i < len;) {
    size_t k = utf8_seq(s + i, len - i);
    if (k == 0)
      fz_fail("%s: invalid UTF-8 at byte %zu of %zu", what, i, len);
    i += k;
  }
}
