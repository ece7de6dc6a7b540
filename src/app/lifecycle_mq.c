/* lifecycle_mq.c - adapts mq_publisher to the lifecycle's publisher interface. */
#include "app/lifecycle_mq.h"

#include "util/alloc.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>

typedef struct lmq_op {
  lifecycle_publish_cb cb;
  void *ud;
} lmq_op;

static void lmq_done(int status, void *ud) {
  lmq_op *op = ud;
  op->cb(op->ud, status);
  free(op);
}

static int lmq_publish(void *self, const char *payload, size_t len, const char *queue,
                       const char *correlation_id, lifecycle_publish_cb cb, void *ud) {
  lmq_op *op = sm_malloc(sizeof(*op));
  if (op == NULL)
    return SM_ENOMEM;
  op->cb = cb;
  op->ud = ud;
  mq_slice body = {payload, len};
  mq_slice corr = {correlation_id ? correlation_id : "",
                   correlation_id ? strlen(correlation_id) : 0};
  int err = mq_publisher_publish(self, queue, body, corr, lmq_done, op);
  if (err)
    free(op);
  return err;
}

void lifecycle_mq_publisher(mq_publisher *p, lifecycle_publisher *out) {
  out->publish = lmq_publish;
  out->self = p;
}

static void lmq_ready(mq_publisher *p, void *ud) {
  (void)p;
  lifecycle_publisher_ready(ud);
}

void lifecycle_mq_attach(lifecycle *lc, mq_publisher *p) {
  mq_publisher_on_ready(p, lmq_ready, lc);
}
