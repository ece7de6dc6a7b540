/* fuzz_amqp_intake - AMQP command messages into the manager: the bridge of app/cmd_intake.c
 * (parse with command_parse_text, dead-letter what is invalid, submit the rest to a lifecycle on
 * the in-memory store, ack once stored) fed by a fake message source, as the mq intake
 * (mq/intake.c) hands it the body and properties of each delivery.
 *
 * Input: byte 0 holds flags (bit 0: reply_to set, bit 1: correlation_id set, bit 2:
 * message_id set, bits 4-5: the message is delivered 1 to 4 times, as after redeliveries),
 * the rest is the message body. Oracles: ASan/UBSan and no leak; every delivery is settled
 * exactly once (acked or dead-lettered with a reason), none is left held. */
#include "fuzz.h"

#include "app/cmd_intake.h"
#include "core/lifecycle.h"
#include "util/err.h"

#include <stdio.h>
#include <string.h>

#define MAX_DELIVERIES 4

typedef struct fake_src {
  int settled[MAX_DELIVERIES + 1]; /* by delivery tag */
  int acks, rejects;
} fake_src;

static fake_src fs;
static fz_world w;
static cmd_intake *ci;

static int s_ok(void *s) {
  (void)s;
  return 0;
}

static void settle(mq_intake_handle h) {
  if (h.tag == 0 || h.tag > MAX_DELIVERIES)
    fz_fail("settled an unknown delivery tag %llu", (unsigned long long)h.tag);
  if (fs.settled[h.tag]++)
    fz_fail("delivery %llu settled twice", (unsigned long long)h.tag);
}

static int s_ack(void *s, mq_intake_handle h) {
  (void)s;
  settle(h);
  fs.acks++;
  return 0;
}

static int s_reject(void *s, mq_intake_handle h, const char *reason) {
  (void)s;
  settle(h);
  if (reason == NULL || reason[0] == '\0')
    fz_fail("dead-lettered without a reason");
  fz_check_utf8("dead-letter reason", reason, strlen(reason));
  fs.rejects++;
  return 0;
}

static void on_accepting(void *ud, int acc) {
  (void)ud;
  if (ci)
    cmd_intake_set_accepting(ci, acc);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_log_setup();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  uint8_t flags = fz_u8(&in);
  memset(&fs, 0, sizeof(fs));
  ci = NULL;
  w.on_accepting = on_accepting;
  fz_world_open(&w);
  cmd_intake_source src = {s_ok, s_ok, s_ok, s_ack, s_reject, NULL, &fs};
  if (cmd_intake_create_on(&w.loop, &src, w.lc, &ci) || cmd_intake_start(ci))
    fz_fail("harness: cmd_intake_create_on");

  char mid[16];
  snprintf(mid, sizeof(mid), "m-%u", flags);
  int n = 1 + ((flags >> 4) & 3);
  for (int i = 1; i <= n; i++) {
    mq_intake_msg m;
    memset(&m, 0, sizeof(m));
    m.handle.gen = 1;
    m.handle.tag = (uint64_t)i;
    m.body.base = (const char *)in.p;
    m.body.len = in.n;
    m.redelivered = i > 1;
    if (flags & 1)
      m.props.reply_to = (mq_slice){"fuzz-replies", 12};
    if (flags & 2)
      m.props.correlation_id = (mq_slice){"corr-1", 6};
    if (flags & 4)
      m.props.message_id = (mq_slice){mid, strlen(mid)};
    cmd_intake_deliver(ci, &m);
    fz_world_spin(&w, 2);
  }
  cmd_intake_stats st;
  for (int i = 0; i < 200; i++) {
    cmd_intake_get_stats(ci, &st);
    if (st.held == 0)
      break;
    uv_run(&w.loop, UV_RUN_NOWAIT);
  }
  cmd_intake_get_stats(ci, &st);
  if (st.held != 0 || fs.acks + fs.rejects != n)
    fz_fail("%d deliveries: %d acked, %d dead-lettered, %zu still held", n, fs.acks, fs.rejects,
            st.held);
  cmd_intake_destroy(ci);
  ci = NULL;
  fz_world_close(&w);
  return 0;
}
