/* publisher.c - bounded, confirmed result publishing on top of the adapter. */
#include "mq/publisher.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include <assert.h>
#include <stdlib.h>

/* One publish in flight. The adapter owns it from mq_conn_publish until its completion, which
 * frees it; a publisher destroyed first completes the caller's callback itself and detaches the
 * op (p = NULL, cb = NULL), so the adapter's later completion only frees it. */
typedef struct mq_pub_op {
  sm_list node; /* on p->ops while attached */
  mq_publisher *p;
  mq_publish_done_cb cb;
  void *ud;
} mq_pub_op;

struct mq_publisher {
  mq_conn *conn;
  size_t window;   /* maximum unconfirmed publishes */
  size_t inflight; /* unconfirmed publishes now */
  int was_full;    /* a publish was refused for the window: announce room */
  int closing;     /* mq_publisher_destroy is running: publishes are refused */
  sm_list ops;     /* in-flight operations (mq_pub_op.node), oldest first */
  mq_publisher_ready_cb ready_cb;
  void *ready_ud;
  mq_publisher_stats stats;
  int busy; /* inside a user callback: destroy defers the free */
  int dead; /* destroyed while busy */
};

static void mq_pub_on_done(int status, void *ud) {
  mq_pub_op *op = ud;
  mq_publisher *p = op->p;
  if (!p) {
    free(op); /* detached by mq_publisher_destroy, which already ran its callback */
    return;
  }
  assert(sm_list_linked(&op->node) && p->inflight > 0);
  sm_list_remove(&op->node);
  p->inflight--;
  if (status == 0)
    p->stats.confirmed++;
  else
    p->stats.failed++;
  mq_publish_done_cb cb = op->cb;
  void *cud = op->ud;
  free(op);
  p->busy++;
  if (cb)
    cb(status, cud);
  /* Room again after a refusal: let the caller flush its outbox. */
  if (!p->dead && !p->closing && p->was_full && p->inflight < p->window && mq_conn_is_up(p->conn)) {
    p->was_full = 0;
    if (p->ready_cb)
      p->ready_cb(p, p->ready_ud);
  }
  if (--p->busy == 0 && p->dead)
    free(p);
}

static void mq_pub_on_state(mq_conn *c, int up, int err, void *ud) {
  mq_publisher *p = ud;
  (void)c;
  (void)err;
  if (up && p->ready_cb) {
    p->busy++;
    p->ready_cb(p, p->ready_ud);
    if (--p->busy == 0 && p->dead)
      free(p);
  }
}

int mq_publisher_create(mq_conn *c, size_t window, mq_publisher **out) {
  if (!c || !out)
    return SM_EINVAL;
  mq_publisher *p = sm_calloc(1, sizeof *p);
  if (!p)
    return SM_ENOMEM;
  p->conn = c;
  p->window = window ? window : 1024;
  sm_list_init(&p->ops);
  int err = mq_conn_on_state(c, mq_pub_on_state, p);
  if (err) {
    free(p);
    return err;
  }
  *out = p;
  return 0;
}

void mq_publisher_destroy(mq_publisher *p) {
  if (!p || p->closing)
    return;
  p->closing = 1;
  mq_conn_off_state(p->conn, mq_pub_on_state, p);
  /* The adapter still holds each op and completes it later (confirm, lost connection or its own
   * destruction), which frees it. The caller hears now: each callback runs once, here, with
   * SM_ECANCELED. */
  p->busy++;
  sm_list *it;
  while ((it = sm_list_pop_front(&p->ops)) != NULL) {
    mq_pub_op *op = SM_LIST_ENTRY(it, mq_pub_op, node);
    mq_publish_done_cb cb = op->cb;
    void *cud = op->ud;
    op->p = NULL;
    op->cb = NULL;
    p->inflight--;
    p->stats.failed++;
    if (cb)
      cb(SM_ECANCELED, cud);
  }
  assert(p->inflight == 0);
  p->busy--;
  if (p->busy)
    p->dead = 1; /* freed when the running callback returns */
  else
    free(p);
}

void mq_publisher_on_ready(mq_publisher *p, mq_publisher_ready_cb cb, void *ud) {
  p->ready_cb = cb;
  p->ready_ud = ud;
}

int mq_publisher_publish(mq_publisher *p, const char *queue, mq_slice body, mq_slice correlation_id,
                         mq_publish_done_cb cb, void *ud) {
  if (!p)
    return SM_EINVAL;
  if (p->closing)
    return SM_ECLOSED;
  if (!mq_conn_is_up(p->conn)) {
    p->stats.refused++;
    return SM_ECLOSED;
  }
  if (p->inflight >= p->window) {
    p->was_full = 1;
    p->stats.refused++;
    return SM_ELIMIT;
  }
  mq_pub_op *op = sm_calloc(1, sizeof *op);
  if (!op)
    return SM_ENOMEM;
  sm_list_init(&op->node);
  op->p = p;
  op->cb = cb;
  op->ud = ud;
  mq_props props = {
      .content_type = {"application/json", 16},
      .correlation_id = correlation_id,
      .persistent = 1,
  };
  int err = mq_conn_publish(p->conn, queue ? queue : mq_conn_result_queue(p->conn), body, &props,
                            mq_pub_on_done, op);
  if (err) {
    free(op);
    if (err == SM_ELIMIT)
      p->was_full = 1;
    if (err == SM_ELIMIT || err == SM_ECLOSED)
      p->stats.refused++;
    return err;
  }
  sm_list_push_back(&p->ops, &op->node);
  p->inflight++;
  p->stats.published++;
  return 0;
}

int mq_publisher_can_publish(const mq_publisher *p) {
  return mq_conn_is_up(p->conn) && p->inflight < p->window;
}

size_t mq_publisher_inflight(const mq_publisher *p) {
  return p->inflight;
}

void mq_publisher_get_stats(const mq_publisher *p, mq_publisher_stats *out) {
  *out = p->stats;
}
