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

typedef struct cmd_intake cmd_intake;

typedef struct cmd_intake_stats {
  uint64_t accepted; /* stored (new or idempotent repeat) and acked */
  uint64_t rejected; /* sent to the dead-letter queue */
  uint64_t deferred; /* refusals that kept a delivery for later */
  size_t held;       /* deliveries kept now */
} cmd_intake_stats;

/* Creates the bridge and the mq intake on conn (prefetch 0: 256); deliveries start with
 * cmd_intake_start. Returns 0, SM_EINVAL or SM_ENOMEM. */
int cmd_intake_create(uv_loop_t *loop, mq_conn *conn, lifecycle *lc, uint16_t prefetch,
                      cmd_intake **out);

/* Starts consuming. Returns 0 or an SM_E* code. */
int cmd_intake_start(cmd_intake *ci);

/* The lifecycle's accepting state changed (lifecycle_config.on_accepting): pause or resume,
 * and on resume submit the kept deliveries again. */
void cmd_intake_set_accepting(cmd_intake *ci, int accepting);

void cmd_intake_get_stats(const cmd_intake *ci, cmd_intake_stats *out);

/* Stops consuming and frees the bridge (after its timer's close callback); kept deliveries stay
 * unacked and return to the queue when the connection closes. Submissions still in flight
 * complete into nothing. NULL is fine. */
void cmd_intake_destroy(cmd_intake *ci);

#endif
