/* cmd_intake.h - the bridge from the AMQP intake (mq/intake.h) to the command lifecycle.
 *
 * Each delivery is parsed and validated; an invalid one is dead-lettered with the reason (never
 * dropped); a valid one is submitted and acked only once the lifecycle reports it stored. When
 * the lifecycle refuses for now (queue full, store down, maintenance) the intake is paused and
 * the delivery is kept, unacked, to be submitted again when the lifecycle accepts work. Kept
 * deliveries are bounded by the intake's prefetch, which bounds unacked deliveries.
 */
#ifndef SM_APP_CMD_INTAKE_H
#define SM_APP_CMD_INTAKE_H

#include "core/lifecycle.h"
#include "mq/intake.h"
#include "util/err.h"

#include <uv.h>

typedef struct cmd_intake cmd_intake;

typedef struct cmd_intake_stats {
  uint64_t accepted; /* stored (new or idempotent repeat) and acked */
  uint64_t rejected; /* sent to the dead-letter queue */
  uint64_t deferred; /* refusals that kept a delivery for later */
  size_t held;       /* deliveries kept now */
} cmd_intake_stats;

/* Creates the bridge and the mq intake on conn (prefetch 0: 256); deliveries start with
 * cmd_intake_start. Returns 0, SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int cmd_intake_create(uv_loop_t *loop, mq_conn *conn, lifecycle *lc,
                                    uint16_t prefetch, cmd_intake **out);

/* The message source of a bridge: the operations of mq/intake.h on one mq_intake (what
 * cmd_intake_create uses), or a test's fakes. Each returns 0 or an SM_E* code as its
 * mq_intake_* counterpart; destroy (may be NULL) runs in cmd_intake_destroy. */
typedef struct cmd_intake_source {
  int (*start)(void *src);
  int (*pause)(void *src);
  int (*resume)(void *src);
  int (*ack)(void *src, mq_intake_handle h);
  int (*reject_dlq)(void *src, mq_intake_handle h, const char *reason);
  void (*destroy)(void *src);
  void *src;
} cmd_intake_source;

/* Creates the bridge over src (copied); its deliveries come in through cmd_intake_deliver.
 * Returns 0, SM_EINVAL (a missing operation) or SM_ENOMEM. */
SM_MUST_CHECK int cmd_intake_create_on(uv_loop_t *loop, const cmd_intake_source *src, lifecycle *lc,
                                       cmd_intake **out);

/* One delivery of the source (the slices are copied). Out of memory leaves it unsettled: the
 * broker redelivers it after a reconnect. */
void cmd_intake_deliver(cmd_intake *ci, const mq_intake_msg *m);

/* Starts consuming. Returns 0 or an SM_E* code. */
SM_MUST_CHECK int cmd_intake_start(cmd_intake *ci);

/* The lifecycle's accepting state changed (lifecycle_config.on_accepting): pause or resume,
 * and on resume submit the kept deliveries again. */
void cmd_intake_set_accepting(cmd_intake *ci, int accepting);

void cmd_intake_get_stats(const cmd_intake *ci, cmd_intake_stats *out);

/* Stops consuming and frees the bridge (after its timer's close callback); kept deliveries stay
 * unacked and return to the queue when the connection closes. Submissions still in flight
 * complete into nothing. NULL is fine. */
void cmd_intake_destroy(cmd_intake *ci);

#endif
