/* publisher.h - the result publisher: persistent, confirmed publishes with a bounded window.
 *
 * The caller (the command lifecycle) keeps each result in its durable outbox until its callback
 * reports 0 (the broker confirmed it). Any other outcome means "still in the outbox, try again":
 * the window being full (SM_ELIMIT) or the broker being away (SM_ECLOSED) are normal, and the
 * ready callback says when to flush the outbox again.
 */
#ifndef SM_MQ_PUBLISHER_H
#define SM_MQ_PUBLISHER_H

#include "mq/amqp.h"
#include "util/err.h"

#include <stddef.h>

typedef struct mq_publisher mq_publisher;

/* Outcome of one publish: 0 confirmed; SM_EIO nacked; SM_ECLOSED connection lost before the
 * confirm (may or may not have arrived: publish again, duplicates carry the same id);
 * SM_ECANCELED publisher or adapter destroyed. Runs exactly once for every publish that
 * mq_publisher_publish accepted: from a loop event, or from inside mq_publisher_destroy /
 * mq_conn_destroy; never inside mq_publisher_publish. */
typedef void (*mq_publish_done_cb)(int status, void *ud);

/* Called when publishing becomes possible again: on (re)connect and when a full window gets
 * room. The caller flushes its outbox from here. */
typedef void (*mq_publisher_ready_cb)(mq_publisher *p, void *ud);

/* Creates a publisher on c with at most `window` unconfirmed publishes (0: 1024). Returns 0,
 * SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int mq_publisher_create(mq_conn *c, size_t window, mq_publisher **out);

/* Destroys p: the callback of every publish still awaiting its confirm runs now, inside this
 * call, with SM_ECANCELED (the broker may still store the message). The adapter keeps the small
 * operation records until it completes them (confirm, lost connection or mq_conn_destroy) and
 * frees them then. Safe from inside a callback of p. NULL is fine. */
void mq_publisher_destroy(mq_publisher *p);

/* Sets the ready callback. */
void mq_publisher_on_ready(mq_publisher *p, mq_publisher_ready_cb cb, void *ud);

/* Publishes body (JSON) persistently to queue (NULL: the result queue) through the default
 * exchange, with correlation_id when non-empty. Returns 0 (cb will run exactly once),
 * SM_ECLOSED (not connected), SM_ELIMIT (window full), SM_EINVAL, SM_ENOMEM or SM_EIO. */
SM_MUST_CHECK int mq_publisher_publish(mq_publisher *p, const char *queue, mq_slice body,
                                       mq_slice correlation_id, mq_publish_done_cb cb, void *ud);

/* Whether a publish would be accepted now (connected and the window has room). */
int mq_publisher_can_publish(const mq_publisher *p);

/* Unconfirmed publishes of this publisher. */
size_t mq_publisher_inflight(const mq_publisher *p);

/* Counters since creation. */
typedef struct mq_publisher_stats {
  uint64_t published; /* accepted by mq_publisher_publish */
  uint64_t confirmed; /* acked by the broker */
  uint64_t failed;    /* nacked, or lost with the connection */
  uint64_t refused;   /* SM_ELIMIT / SM_ECLOSED answers */
} mq_publisher_stats;
void mq_publisher_get_stats(const mq_publisher *p, mq_publisher_stats *out);

#endif
