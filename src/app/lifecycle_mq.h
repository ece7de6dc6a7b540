/* lifecycle_mq.h - the lifecycle's result publisher on RabbitMQ (mq/publisher.h). */
#ifndef SM_APP_LIFECYCLE_MQ_H
#define SM_APP_LIFECYCLE_MQ_H

#include "core/lifecycle.h"
#include "mq/publisher.h"

/* Fills out with a lifecycle_publisher that publishes through p (persistent, confirmed). */
void lifecycle_mq_publisher(mq_publisher *p, lifecycle_publisher *out);

/* Makes p's ready callback (connect, reconnect, window room) replay lc's outbox. Call once both
 * exist; destroy p before lifecycle_close(lc). */
void lifecycle_mq_attach(lifecycle *lc, mq_publisher *p);

#endif
