/* intake.h - the AMQP command intake: consumes AMQP_COMMAND_QUEUE with a prefetch bound.
 *
 * Each delivery goes to one callback. The caller later settles it exactly once:
 *   mq_intake_ack         only after the command it carries is stored;
 *   mq_intake_reject_dlq  publishes the original body and properties to <queue>.dlq with header
 *                         x-rejection-reason (persistent, confirmed), and acks the original only
 *                         after the confirm; a nack or a lost connection leaves it to the broker
 *                         (requeued / redelivered), so a message is never dropped;
 *   or nothing            it stays unacked and counts against the prefetch.
 * Pausing cancels the consumer (basic.cancel): no new deliveries arrive, unacked ones stay with
 * us and may still be acked; resuming consumes again. The pause survives reconnects. The prefetch
 * bounds the unacked deliveries (and the bodies kept for dead-lettering) to prefetch messages.
 * When the connection drops, every outstanding handle becomes stale (the broker redelivers those
 * messages); settling a stale handle returns SM_ECLOSED and does nothing.
 * A delivery larger than the adapter's max_message_bytes is dead-lettered by the intake itself
 * (reason "message too large"; the body kept is truncated to that limit).
 */
#ifndef SM_MQ_INTAKE_H
#define SM_MQ_INTAKE_H

#include "util/err.h"
#include "mq/amqp.h"

#include <stddef.h>
#include <stdint.h>

typedef struct mq_intake mq_intake;

/* Names one delivery of one connection generation; a plain value, safe to copy and keep. */
typedef struct mq_intake_handle {
  uint64_t gen; /* connection generation */
  uint64_t tag; /* delivery tag */
} mq_intake_handle;

/* A delivered command message; the slices are valid only during the callback. */
typedef struct mq_intake_msg {
  mq_intake_handle handle;
  mq_slice body;   /* the JSON command */
  mq_props props;  /* reply_to, correlation_id, message_id, string headers */
  int redelivered; /* the broker delivered it before (maybe to a manager that crashed) */
} mq_intake_msg;

/* Called for each delivery (from a loop event). */
typedef void (*mq_intake_cb)(mq_intake *in, const mq_intake_msg *m, void *ud);

/* Creates the intake on c for its command queue with prefetch (0: 256). Deliveries start with
 * mq_intake_start. Returns 0, SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int mq_intake_create(mq_conn *c, uint16_t prefetch, mq_intake_cb cb, void *ud,
                                   mq_intake **out);

/* Destroys the intake; its unacked messages return to the queue when the connection closes.
 * Dead-letter publishes still in flight are detached: the adapter completes and frees them
 * later, and their originals (never acked) come back from the broker. NULL is fine. */
void mq_intake_destroy(mq_intake *in);

/* Starts consuming (now if connected, else on connect). Returns 0 or an SM_E* code. */
SM_MUST_CHECK int mq_intake_start(mq_intake *in);

/* Pauses / resumes deliveries (see above). Return 0 or an SM_E* code. */
SM_MUST_CHECK int mq_intake_pause(mq_intake *in);
SM_MUST_CHECK int mq_intake_resume(mq_intake *in);

/* Whether the intake is paused. */
int mq_intake_paused(const mq_intake *in);

/* Acks the delivery. Returns 0, SM_ECLOSED (stale handle), SM_ENOENT (unknown or already
 * settled), SM_ESTATE (a dead-letter publish is in flight for it) or SM_EIO. */
SM_MUST_CHECK int mq_intake_ack(mq_intake *in, mq_intake_handle h);

/* Dead-letters the delivery with reason (see above). Returns 0 (in progress), SM_ECLOSED,
 * SM_ENOENT, SM_ESTATE, SM_ELIMIT (adapter's confirm window full: try again later) or SM_EIO. */
SM_MUST_CHECK int mq_intake_reject_dlq(mq_intake *in, mq_intake_handle h, const char *reason);

/* Deliveries received and not yet settled on the current connection. */
size_t mq_intake_unacked(const mq_intake *in);

/* Counters since creation. */
typedef struct mq_intake_stats {
  uint64_t delivered;     /* messages handed to the callback */
  uint64_t acked;         /* acked by mq_intake_ack */
  uint64_t dead_lettered; /* confirmed in the DLQ and acked */
  uint64_t dlq_failed;    /* dead-letter publishes nacked or lost (message left to the broker) */
  uint64_t too_large;     /* dead-lettered by the intake for size */
} mq_intake_stats;
void mq_intake_get_stats(const mq_intake *in, mq_intake_stats *out);

#endif
