/* cmd_intake.c - AMQP deliveries into the lifecycle. */
#include "app/cmd_intake.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

/* One delivery on its way into the store. It outlives the bridge when the bridge is destroyed
 * while a submission is in flight: then `ci` is NULL and the answer is ignored. */
typedef struct pending {
  struct pending *next, *prev;
  cmd_intake *ci;
  mq_intake_handle handle;
  char *body; /* copy of the message body, kept to submit again */
  size_t len;
  char *reply_to; /* NULL: none */
  char *correlation_id;
  char *message_id;
  int in_flight; /* a lifecycle_submit is waiting for its answer */
} pending;

/* While paused by a refusal, how often to ask the lifecycle whether it accepts again: its own
 * accepting hook reports only its transitions, and a refusal can come without one (the queue
 * filled and drained between two of our submissions). */
#define RESUME_POLL_MS 100

struct cmd_intake {
  uv_timer_t resume_timer; /* polls lifecycle_accepting while paused */
  mq_intake *in;
  lifecycle *lc;
  uint16_t prefetch;
  int accepting;
  pending *head; /* every delivery not yet settled */
  cmd_intake_stats stats;
};

static char *slice_dup(mq_slice s) {
  if (s.len == 0)
    return NULL;
  return sm_strndup(s.base, s.len);
}

static void pending_free(pending *p) {
  free(p->body);
  free(p->reply_to);
  free(p->correlation_id);
  free(p->message_id);
  free(p);
}

static void unlink_pending(cmd_intake *ci, pending *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    ci->head = p->next;
  if (p->next)
    p->next->prev = p->prev;
  p->next = p->prev = NULL;
  ci->stats.held -= ci->stats.held ? 1 : 0;
}

static void dead_letter(cmd_intake *ci, pending *p, const char *reason) {
  int err = mq_intake_reject_dlq(ci->in, p->handle, reason);
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

static void try_submit(cmd_intake *ci, pending *p);
static void resume_poll(uv_timer_t *t);

static void submitted(void *ud, int err, const sm_command *cmd, int existed) {
  pending *p = ud;
  cmd_intake *ci = p->ci;
  p->in_flight = 0;
  if (ci == NULL) { /* the bridge is gone; the broker redelivers the message */
    pending_free(p);
    return;
  }
  if (err == 0) {
    int aerr = mq_intake_ack(ci->in, p->handle);
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
    if (ci->accepting) {
      ci->accepting = 0;
      if (mq_intake_pause(ci->in) != 0)
        sm_log_warn("intake", "cannot pause the AMQP intake now");
      uv_timer_start(&ci->resume_timer, resume_poll, RESUME_POLL_MS, RESUME_POLL_MS);
    }
    return;
  }
  dead_letter(ci, p, sm_strerror(err));
}

static void on_delivery(mq_intake *in, const mq_intake_msg *m, void *ud) {
  cmd_intake *ci = ud;
  (void)in;
  pending *p = sm_calloc(1, sizeof(*p));
  if (p == NULL) {
    /* Leave it unacked: the broker keeps it and redelivers after a reconnect. */
    sm_log_error("intake", "out of memory: delivery left unacked");
    return;
  }
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
  p->next = ci->head;
  if (ci->head)
    ci->head->prev = p;
  ci->head = p;
  ci->stats.held++;
  if (ci->accepting)
    try_submit(ci, p);
  else
    ci->stats.deferred++;
}

static void free_cb(uv_handle_t *h) {
  free(h->data);
}

static void resume_poll(uv_timer_t *t) {
  cmd_intake *ci = t->data;
  if (lifecycle_accepting(ci->lc))
    cmd_intake_set_accepting(ci, 1);
}

int cmd_intake_create(uv_loop_t *loop, mq_conn *conn, lifecycle *lc, uint16_t prefetch,
                      cmd_intake **out) {
  cmd_intake *ci = sm_calloc(1, sizeof(*ci));
  if (ci == NULL)
    return SM_ENOMEM;
  uv_timer_init(loop, &ci->resume_timer);
  ci->resume_timer.data = ci;
  ci->lc = lc;
  ci->prefetch = prefetch;
  ci->accepting = lifecycle_accepting(lc);
  int err = mq_intake_create(conn, prefetch, on_delivery, ci, &ci->in);
  if (err) {
    uv_close((uv_handle_t *)&ci->resume_timer, free_cb);
    return err;
  }
  *out = ci;
  return 0;
}

int cmd_intake_start(cmd_intake *ci) {
  int err = mq_intake_start(ci->in);
  if (err == 0 && !ci->accepting)
    err = mq_intake_pause(ci->in);
  return err;
}

void cmd_intake_set_accepting(cmd_intake *ci, int accepting) {
  if (ci == NULL || ci->accepting == accepting)
    return;
  ci->accepting = accepting;
  sm_log_info("intake", accepting ? "resuming AMQP intake" : "pausing AMQP intake",
              SM_LI("held", ci->stats.held));
  if (!accepting) {
    if (mq_intake_pause(ci->in) != 0)
      sm_log_warn("intake", "cannot pause the AMQP intake now");
    uv_timer_start(&ci->resume_timer, resume_poll, RESUME_POLL_MS, RESUME_POLL_MS);
    return;
  }
  uv_timer_stop(&ci->resume_timer);
  if (mq_intake_resume(ci->in) != 0)
    sm_log_warn("intake", "cannot resume the AMQP intake now");
  /* Submit what was kept, oldest first is not needed: each is independent. A refusal inside the
   * walk flips accepting back to 0 and ends it. */
  pending *p = ci->head;
  while (p && ci->accepting) {
    pending *next = p->next;
    if (!p->in_flight)
      try_submit(ci, p);
    p = next;
  }
}

void cmd_intake_get_stats(const cmd_intake *ci, cmd_intake_stats *out) {
  *out = ci->stats;
}

void cmd_intake_destroy(cmd_intake *ci) {
  if (ci == NULL)
    return;
  pending *p = ci->head;
  while (p) {
    pending *next = p->next;
    if (p->in_flight)
      p->ci = NULL; /* freed by its answer */
    else
      pending_free(p);
    p = next;
  }
  mq_intake_destroy(ci->in);
  ci->in = NULL;
  uv_close((uv_handle_t *)&ci->resume_timer, free_cb);
}
