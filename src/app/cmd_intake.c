/* cmd_intake.c - AMQP deliveries into the lifecycle. */
#include "app/cmd_intake.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"
#include "util/utf8.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* One delivery on its way into the store. It outlives the bridge when the bridge is destroyed
 * while a submission is in flight: then `ci` is NULL and the answer is ignored. */
typedef struct pending {
  sm_list node; /* the bridge's `held` list; on no list once the bridge is gone */
  cmd_intake *ci;
  mq_intake_handle handle;
  char *body; /* copy of the message body, kept to submit again */
  size_t len;
  char *reply_to; /* NULL: none */
  char *correlation_id;
  char *message_id;
  int in_flight;   /* a lifecycle_submit is waiting for its answer */
  const char *bad; /* why a property is refused (dead-lettered at the first try), or NULL */
} pending;

/* While paused by a refusal, how often to ask the lifecycle whether it accepts again: its own
 * accepting hook reports only its transitions, and a refusal can come without one (the queue
 * filled and drained between two of our submissions). */
#define RESUME_POLL_MS 100

static void try_submit(cmd_intake *ci, pending *p);
static void resume_poll(uv_timer_t *t);

struct cmd_intake {
  uv_timer_t resume_timer; /* polls lifecycle_accepting while paused */
  cmd_intake_source src;   /* the AMQP intake (mq/intake.h), or a test's fake */
  lifecycle *lc;
  int accepting;
  sm_list held; /* every delivery not yet settled (pending.node) */
  cmd_intake_stats stats;
};

static char *slice_dup(mq_slice s) {
  if (s.len == 0)
    return NULL;
  return sm_strndup(s.base, s.len);
}

/* Properties are kept as C strings and written back (correlation_id into the JSON of the command,
 * reply_to as a routing key): a NUL would cut them, invalid UTF-8 break every JSON answer. */
static int prop_ok(mq_slice s) {
  return s.len == 0 || (memchr(s.base, '\0', s.len) == NULL && sm_utf8_valid(s.base, s.len));
}

static void pending_free(pending *p) {
  free(p->body);
  free(p->reply_to);
  free(p->correlation_id);
  free(p->message_id);
  free(p);
}

static void unlink_pending(cmd_intake *ci, pending *p) {
  assert(sm_list_linked(&p->node) && ci->stats.held > 0);
  sm_list_remove(&p->node);
  ci->stats.held--;
}

/* Pauses the source and polls the lifecycle until it accepts again. */
static void pause_intake(cmd_intake *ci) {
  ci->accepting = 0;
  int err = ci->src.pause(ci->src.src);
  if (err) /* deliveries keep coming; each is kept (bounded by the prefetch) */
    sm_log_warn("intake", "pausing the AMQP intake failed", SM_LE(err));
  uv_timer_start(&ci->resume_timer, resume_poll, RESUME_POLL_MS, RESUME_POLL_MS);
}

static void dead_letter(cmd_intake *ci, pending *p, const char *reason) {
  int err = ci->src.reject_dlq(ci->src.src, p->handle, reason);
  if (err)
    sm_log_warn("intake", "dead-lettering failed: the broker will redeliver",
                SM_LS("reason", reason), SM_LE(err));
  else
    ci->stats.rejected++;
  sm_log_info("intake", "message rejected", SM_LS("reason", reason),
              SM_LS("message_id", p->message_id));
  unlink_pending(ci, p);
  pending_free(p);
}

static void submitted(void *ud, int err, const sm_command *cmd, int existed) {
  pending *p = ud;
  cmd_intake *ci = p->ci;
  p->in_flight = 0;
  if (ci == NULL) { /* the bridge is gone; the broker redelivers the message */
    pending_free(p);
    return;
  }
  if (err == 0) {
    int aerr = ci->src.ack(ci->src.src, p->handle);
    if (aerr)
      sm_log_warn("intake", "ack failed: the broker will redeliver (same id, idempotent)",
                  SM_LS("command_id", cmd ? cmd->id : NULL), SM_LE(aerr));
    ci->stats.accepted++;
    sm_log_debug("intake", "command accepted", SM_LS("command_id", cmd ? cmd->id : NULL),
                 SM_LB("existed", existed));
    unlink_pending(ci, p);
    pending_free(p);
    return;
  }
  if (err == SM_EUNAVAIL || err == SM_ELIMIT || err == SM_ETIMEDOUT || err == SM_EAGAIN) {
    ci->stats.deferred++;
    if (ci->accepting)
      try_submit(ci, p); /* the refusal was momentary */
    return;
  }
  dead_letter(ci, p, sm_strerror(err));
}

/* Parses and submits; keeps the delivery when the lifecycle refuses for now. */
static void try_submit(cmd_intake *ci, pending *p) {
  char why[256];
  sm_command *cmd = NULL;
  if (p->bad != NULL) {
    dead_letter(ci, p, p->bad);
    return;
  }
  int err = command_parse_text(p->body, p->len, &cmd, why, sizeof(why));
  if (err) {
    dead_letter(ci, p, why);
    return;
  }
  cmd->source = COMMAND_SRC_AMQP;
  if ((p->reply_to && command_set_str(&cmd->reply_to, p->reply_to)) ||
      (p->correlation_id && command_set_str(&cmd->correlation_id, p->correlation_id)) ||
      /* A message id makes a redelivery (after a crash before the ack) idempotent. */
      (p->message_id && cmd->idempotency_key == NULL &&
       command_set_str(&cmd->idempotency_key, p->message_id))) {
    command_free(cmd);
    ci->stats.deferred++;
    return; /* out of memory: keep it and try again later */
  }
  p->in_flight = 1;
  err = lifecycle_submit(ci->lc, cmd, submitted, p);
  if (err == 0)
    return;
  p->in_flight = 0;
  if (err == SM_EUNAVAIL || err == SM_ELIMIT || err == SM_EAGAIN) {
    ci->stats.deferred++;
    if (ci->accepting)
      pause_intake(ci);
    return;
  }
  dead_letter(ci, p, sm_strerror(err));
}

void cmd_intake_deliver(cmd_intake *ci, const mq_intake_msg *m) {
  pending *p = sm_calloc(1, sizeof(*p));
  if (p == NULL) {
    /* Leave it unacked: the broker keeps it and redelivers after a reconnect. */
    sm_log_error("intake", "out of memory: delivery left unacked");
    return;
  }
  sm_list_init(&p->node);
  p->ci = ci;
  p->handle = m->handle;
  p->len = m->body.len;
  p->body = sm_malloc(p->len + 1);
  p->reply_to = slice_dup(m->props.reply_to);
  p->correlation_id = slice_dup(m->props.correlation_id);
  p->message_id = slice_dup(m->props.message_id);
  if (p->body == NULL) {
    pending_free(p);
    sm_log_error("intake", "out of memory: delivery left unacked");
    return;
  }
  memcpy(p->body, m->body.base, p->len);
  p->body[p->len] = '\0';
  if (!prop_ok(m->props.reply_to))
    p->bad = "reply_to: must be valid UTF-8 without NUL";
  else if (!prop_ok(m->props.correlation_id))
    p->bad = "correlation_id: must be valid UTF-8 without NUL";
  else if (!prop_ok(m->props.message_id))
    p->bad = "message_id: must be valid UTF-8 without NUL";
  sm_list_push_back(&ci->held, &p->node);
  ci->stats.held++;
  if (ci->accepting)
    try_submit(ci, p);
  else
    ci->stats.deferred++;
}

static void on_delivery(mq_intake *in, const mq_intake_msg *m, void *ud) {
  (void)in;
  cmd_intake_deliver(ud, m);
}

static void free_cb(uv_handle_t *h) {
  free(h->data);
}

static void resume_poll(uv_timer_t *t) {
  cmd_intake *ci = t->data;
  if (lifecycle_accepting(ci->lc))
    cmd_intake_set_accepting(ci, 1);
}

/* ---- the AMQP source ---- */

static int src_start(void *src) {
  return mq_intake_start(src);
}
static int src_pause(void *src) {
  return mq_intake_pause(src);
}
static int src_resume(void *src) {
  return mq_intake_resume(src);
}
static int src_ack(void *src, mq_intake_handle h) {
  return mq_intake_ack(src, h);
}
static int src_reject_dlq(void *src, mq_intake_handle h, const char *reason) {
  return mq_intake_reject_dlq(src, h, reason);
}
static void src_destroy(void *src) {
  mq_intake_destroy(src);
}

static cmd_intake *bridge_new(uv_loop_t *loop, lifecycle *lc) {
  cmd_intake *ci = sm_calloc(1, sizeof(*ci));
  if (ci == NULL)
    return NULL;
  uv_timer_init(loop, &ci->resume_timer);
  ci->resume_timer.data = ci;
  ci->lc = lc;
  ci->accepting = lifecycle_accepting(lc);
  sm_list_init(&ci->held);
  return ci;
}

int cmd_intake_create_on(uv_loop_t *loop, const cmd_intake_source *src, lifecycle *lc,
                         cmd_intake **out) {
  if (loop == NULL || src == NULL || lc == NULL || out == NULL || !src->start || !src->pause ||
      !src->resume || !src->ack || !src->reject_dlq)
    return SM_EINVAL;
  cmd_intake *ci = bridge_new(loop, lc);
  if (ci == NULL)
    return SM_ENOMEM;
  ci->src = *src;
  *out = ci;
  return 0;
}

int cmd_intake_create(uv_loop_t *loop, mq_conn *conn, lifecycle *lc, uint16_t prefetch,
                      cmd_intake **out) {
  if (loop == NULL || conn == NULL || lc == NULL || out == NULL)
    return SM_EINVAL;
  cmd_intake *ci = bridge_new(loop, lc);
  if (ci == NULL)
    return SM_ENOMEM;
  mq_intake *in = NULL;
  int err = mq_intake_create(conn, prefetch, on_delivery, ci, &in);
  if (err) {
    uv_close((uv_handle_t *)&ci->resume_timer, free_cb);
    return err;
  }
  ci->src = (cmd_intake_source){.start = src_start,
                                .pause = src_pause,
                                .resume = src_resume,
                                .ack = src_ack,
                                .reject_dlq = src_reject_dlq,
                                .destroy = src_destroy,
                                .src = in};
  *out = ci;
  return 0;
}

int cmd_intake_start(cmd_intake *ci) {
  int err = ci->src.start(ci->src.src);
  if (err == 0 && !ci->accepting)
    err = ci->src.pause(ci->src.src);
  return err;
}

void cmd_intake_set_accepting(cmd_intake *ci, int accepting) {
  if (ci == NULL || ci->accepting == accepting)
    return;
  sm_log_info("intake", accepting ? "resuming AMQP intake" : "pausing AMQP intake",
              SM_LI("held", ci->stats.held));
  if (!accepting) {
    pause_intake(ci);
    return;
  }
  int err = ci->src.resume(ci->src.src);
  if (err) {
    /* Still paused: the poll tries again. */
    sm_log_warn("intake", "resuming the AMQP intake failed", SM_LE(err));
    uv_timer_start(&ci->resume_timer, resume_poll, RESUME_POLL_MS, RESUME_POLL_MS);
    return;
  }
  ci->accepting = 1;
  uv_timer_stop(&ci->resume_timer);
  /* Submit what was kept, oldest first. A refusal inside the walk flips accepting back to 0
   * and ends it; a submission only unlinks its own delivery (answers come later). */
  SM_LIST_FOREACH_SAFE(it, tmp, &ci->held) {
    if (!ci->accepting)
      break;
    pending *p = SM_LIST_ENTRY(it, pending, node);
    if (!p->in_flight)
      try_submit(ci, p);
  }
}

void cmd_intake_get_stats(const cmd_intake *ci, cmd_intake_stats *out) {
  *out = ci->stats;
}

void cmd_intake_destroy(cmd_intake *ci) {
  if (ci == NULL)
    return;
  SM_LIST_FOREACH_SAFE(it, tmp, &ci->held) {
    pending *p = SM_LIST_ENTRY(it, pending, node);
    sm_list_remove(&p->node);
    if (p->in_flight)
      p->ci = NULL; /* freed by its answer */
    else
      pending_free(p);
  }
  ci->stats.held = 0;
  if (ci->src.destroy)
    ci->src.destroy(ci->src.src);
  ci->src.src = NULL;
  uv_timer_stop(&ci->resume_timer);
  uv_close((uv_handle_t *)&ci->resume_timer, free_cb);
}
