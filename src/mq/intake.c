/* intake.c - the command intake consumer on top of the adapter (see intake.h). */
#include "mq/intake.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"
#include "util/map.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MQ_REASON_HEADER "x-rejection-reason"
#define MQ_MAX_KEPT_HEADERS 32 /* headers carried over to the DLQ copy */

/* One unsettled delivery: a copy of what dead-lettering needs. Keyed by its tag's bytes. */
typedef struct mq_rec {
  uint64_t tag;
  uint64_t gen;
  int dlq_busy; /* a dead-letter publish is in flight */
  char *mem;    /* one block: body, properties and header strings */
  mq_slice body;
  mq_props props; /* points into mem */
} mq_rec;

/* A dead-letter publish in flight, owned by the adapter until its completion frees it; detached
 * (in = NULL) when the intake is destroyed first (the original then returns to the queue with
 * the connection, or is redelivered). */
typedef struct mq_dlq_op {
  sm_list node; /* on in->ops while attached */
  mq_intake *in;
  uint64_t gen, tag;
} mq_dlq_op;

struct mq_intake {
  mq_conn *conn;
  uint16_t prefetch;
  int started; /* mq_intake_start called */
  int paused;  /* consumer cancelled on purpose */
  sm_map recs; /* tag bytes -> mq_rec, current generation only */
  sm_list ops; /* dead-letter publishes in flight (mq_dlq_op.node) */
  mq_intake_cb cb;
  void *ud;
  mq_intake_stats stats;
};

static void mq_rec_free(mq_rec *r) {
  if (r) {
    free(r->mem);
    free(r);
  }
}

/* Copies body and properties into one allocation. */
static mq_rec *mq_rec_new(const mq_message *m) {
  size_t nh = m->props.n_headers < MQ_MAX_KEPT_HEADERS ? m->props.n_headers : MQ_MAX_KEPT_HEADERS;
  size_t total = nh * sizeof(mq_header) + m->body.len + m->props.content_type.len +
                 m->props.reply_to.len + m->props.correlation_id.len + m->props.message_id.len;
  for (size_t i = 0; i < nh; i++)
    total += m->props.headers[i].key.len + m->props.headers[i].value.len;
  mq_rec *r = sm_calloc(1, sizeof *r);
  char *mem = sm_malloc(total ? total : 1);
  if (!r || !mem) {
    free(r);
    free(mem);
    return NULL;
  }
  r->mem = mem;
  mq_header *hs = (mq_header *)mem; /* malloc alignment suits the header array at the start */
  char *p = mem + nh * sizeof(mq_header);
#define MQ_COPY_(dst, src)                                                                         \
  do {                                                                                             \
    (dst).base = p;                                                                                \
    (dst).len = (src).len;                                                                         \
    if ((src).len)                                                                                 \
      memcpy(p, (src).base, (src).len);                                                            \
    p += (src).len;                                                                                \
  } while (0)
  MQ_COPY_(r->body, m->body);
  MQ_COPY_(r->props.content_type, m->props.content_type);
  MQ_COPY_(r->props.reply_to, m->props.reply_to);
  MQ_COPY_(r->props.correlation_id, m->props.correlation_id);
  MQ_COPY_(r->props.message_id, m->props.message_id);
  for (size_t i = 0; i < nh; i++) {
    MQ_COPY_(hs[i].key, m->props.headers[i].key);
    MQ_COPY_(hs[i].value, m->props.headers[i].value);
  }
#undef MQ_COPY_
  r->props.headers = nh ? hs : NULL;
  r->props.n_headers = nh;
  r->props.persistent = m->props.persistent;
  r->tag = m->delivery_tag;
  r->gen = m->generation;
  return r;
}

static mq_rec *mq_rec_find(mq_intake *in, mq_intake_handle h, int *err) {
  if (h.gen != mq_conn_generation(in->conn) || !mq_conn_is_up(in->conn)) {
    *err = SM_ECLOSED;
    return NULL;
  }
  mq_rec *r = sm_map_get(&in->recs, (const char *)&h.tag, sizeof h.tag);
  *err = r ? 0 : SM_ENOENT;
  return r;
}

static void mq_rec_remove(mq_intake *in, mq_rec *r) {
  sm_map_del(&in->recs, (const char *)&r->tag, sizeof r->tag);
  mq_rec_free(r);
}

static void mq_recs_clear(mq_intake *in) {
  for (size_t i = 0; i < in->recs.cap; i++) {
    if (in->recs.slots[i].key)
      mq_rec_free(in->recs.slots[i].value);
  }
  sm_map_finish(&in->recs);
  sm_map_init(&in->recs, (size_t)in->prefetch + 16);
}

static int mq_dlq_publish(mq_intake *in, mq_rec *r, const char *reason);

static void mq_intake_on_deliver(mq_conn *c, const mq_message *m, void *ud) {
  mq_intake *in = ud;
  mq_rec *r = mq_rec_new(m);
  int err = r ? sm_map_put(&in->recs, (const char *)&r->tag, sizeof r->tag, r) : SM_ENOMEM;
  if (err) {
    /* Beyond the prefetch bound or out of memory: give it back to the queue. */
    sm_log_warn("amqp-intake", "delivery not kept, requeued", SM_LE(err),
                SM_LI("tag", m->delivery_tag));
    mq_rec_free(r);
    if (mq_conn_nack(c, m->generation, m->delivery_tag, 1) != 0)
      sm_log_debug("amqp-intake", "nack not sent (the broker redelivers it with the connection)",
                   SM_LI("tag", m->delivery_tag));
    return;
  }
  if (m->body_size > m->body.len) {
    char reason[128];
    snprintf(reason, sizeof reason, "message too large: %zu bytes, limit %zu (body truncated)",
             m->body_size, m->body.len);
    in->stats.too_large++;
    err = mq_dlq_publish(in, r, reason);
    if (err)
      sm_log_warn("amqp-intake", "oversized message left unacked", SM_LE(err),
                  SM_LI("bytes", (long long)m->body_size));
    return;
  }
  in->stats.delivered++;
  mq_intake_msg im = {
      .handle = {.gen = m->generation, .tag = m->delivery_tag},
      .body = m->body,
      .props = m->props,
      .redelivered = m->redelivered,
  };
  in->cb(in, &im, in->ud);
}

static void mq_intake_on_state(mq_conn *c, int up, int err, void *ud) {
  mq_intake *in = ud;
  (void)c;
  (void)err;
  if (!up)
    mq_recs_clear(in); /* the broker requeues every unacked delivery of that connection */
}

static void mq_dlq_done(int status, void *ud) {
  mq_dlq_op *op = ud;
  mq_intake *in = op->in;
  if (!in) {
    free(op);
    return;
  }
  assert(sm_list_linked(&op->node));
  sm_list_remove(&op->node);
  mq_intake_handle h = {.gen = op->gen, .tag = op->tag};
  free(op);
  int err;
  mq_rec *r = mq_rec_find(in, h, &err);
  if (status == 0) {
    /* Safely in the DLQ: now the original may go. If the connection dropped meanwhile the
     * original comes back and is dead-lettered again: a duplicate in the DLQ, never a loss. */
    if (r) {
      err = mq_conn_ack(in->conn, h.gen, h.tag);
      mq_rec_remove(in, r);
    }
    if (!err)
      in->stats.dead_lettered++;
    return;
  }
  in->stats.dlq_failed++;
  sm_log_warn("amqp-intake", "dead-letter publish failed, message left to the broker",
              SM_LE(status), SM_LI("tag", h.tag));
  if (r) {
    /* Nacked by the broker: requeue the original so it is seen (and rejected) again. */
    if (mq_conn_nack(in->conn, h.gen, h.tag, 1) != 0)
      sm_log_debug("amqp-intake", "nack not sent (the broker redelivers it with the connection)",
                   SM_LI("tag", h.tag));
    mq_rec_remove(in, r);
  }
}

static int mq_dlq_publish(mq_intake *in, mq_rec *r, const char *reason) {
  char dlq[512];
  int n = snprintf(dlq, sizeof dlq, "%s.dlq", mq_conn_command_queue(in->conn));
  if (n < 0 || (size_t)n >= sizeof dlq)
    return SM_EINVAL;
  mq_header hs[MQ_MAX_KEPT_HEADERS + 1];
  size_t nh = 0;
  for (size_t i = 0; i < r->props.n_headers; i++) {
    const mq_slice *k = &r->props.headers[i].key;
    if (k->len == sizeof MQ_REASON_HEADER - 1 && !memcmp(k->base, MQ_REASON_HEADER, k->len))
      continue; /* a message dead-lettered before carries only the latest reason */
    hs[nh++] = r->props.headers[i];
  }
  hs[nh].key = (mq_slice){MQ_REASON_HEADER, sizeof MQ_REASON_HEADER - 1};
  hs[nh].value = (mq_slice){reason, strlen(reason)};
  nh++;
  mq_props props = r->props;
  props.headers = hs;
  props.n_headers = nh;
  props.persistent = 1;
  mq_dlq_op *op = sm_calloc(1, sizeof *op);
  if (!op)
    return SM_ENOMEM;
  sm_list_init(&op->node);
  op->in = in;
  op->gen = r->gen;
  op->tag = r->tag;
  int err = mq_conn_publish(in->conn, dlq, r->body, &props, mq_dlq_done, op);
  if (err) {
    free(op);
    return err;
  }
  sm_list_push_back(&in->ops, &op->node);
  r->dlq_busy = 1;
  return 0;
}

int mq_intake_create(mq_conn *c, uint16_t prefetch, mq_intake_cb cb, void *ud, mq_intake **out) {
  if (!c || !cb || !out)
    return SM_EINVAL;
  mq_intake *in = sm_calloc(1, sizeof *in);
  if (!in)
    return SM_ENOMEM;
  in->conn = c;
  in->prefetch = prefetch ? prefetch : 256;
  in->cb = cb;
  in->ud = ud;
  sm_list_init(&in->ops);
  sm_map_init(&in->recs, (size_t)in->prefetch + 16);
  int err = mq_conn_on_state(c, mq_intake_on_state, in);
  if (err) {
    sm_map_finish(&in->recs);
    free(in);
    return err;
  }
  mq_conn_set_consumer(c, mq_intake_on_deliver, in);
  *out = in;
  return 0;
}

void mq_intake_destroy(mq_intake *in) {
  if (!in)
    return;
  mq_conn_off_state(in->conn, mq_intake_on_state, in);
  mq_conn_set_consumer(in->conn, NULL, NULL);
  if (in->started && !in->paused)
    if (mq_conn_consume_stop(in->conn) != 0)
      sm_log_debug("amqp-intake", "basic.cancel not sent (the connection is going down)");
  sm_list *it;
  while ((it = sm_list_pop_front(&in->ops)) != NULL)
    SM_LIST_ENTRY(it, mq_dlq_op, node)->in = NULL; /* the adapter's completion frees it */
  for (size_t i = 0; i < in->recs.cap; i++) {
    if (in->recs.slots[i].key)
      mq_rec_free(in->recs.slots[i].value);
  }
  sm_map_finish(&in->recs);
  free(in);
}

int mq_intake_start(mq_intake *in) {
  if (!in)
    return SM_EINVAL;
  in->started = 1;
  if (in->paused)
    return 0;
  return mq_conn_consume(in->conn, mq_conn_command_queue(in->conn), in->prefetch);
}

int mq_intake_pause(mq_intake *in) {
  if (!in)
    return SM_EINVAL;
  if (in->paused)
    return 0;
  in->paused = 1;
  if (!in->started)
    return 0;
  sm_log_info("amqp-intake", "paused", SM_LI("unacked", (long long)in->recs.len));
  return mq_conn_consume_stop(in->conn);
}

int mq_intake_resume(mq_intake *in) {
  if (!in)
    return SM_EINVAL;
  if (!in->paused)
    return 0;
  in->paused = 0;
  if (!in->started)
    return 0;
  sm_log_info("amqp-intake", "resumed", SM_LI("unacked", (long long)in->recs.len));
  return mq_conn_consume(in->conn, mq_conn_command_queue(in->conn), in->prefetch);
}

int mq_intake_paused(const mq_intake *in) {
  return in->paused;
}

int mq_intake_ack(mq_intake *in, mq_intake_handle h) {
  if (!in)
    return SM_EINVAL;
  int err;
  mq_rec *r = mq_rec_find(in, h, &err);
  if (!r)
    return err;
  if (r->dlq_busy)
    return SM_ESTATE;
  err = mq_conn_ack(in->conn, h.gen, h.tag);
  if (err)
    return err;
  mq_rec_remove(in, r);
  in->stats.acked++;
  return 0;
}

int mq_intake_reject_dlq(mq_intake *in, mq_intake_handle h, const char *reason) {
  if (!in || !reason)
    return SM_EINVAL;
  int err;
  mq_rec *r = mq_rec_find(in, h, &err);
  if (!r)
    return err;
  if (r->dlq_busy)
    return SM_ESTATE;
  return mq_dlq_publish(in, r, reason);
}

size_t mq_intake_unacked(const mq_intake *in) {
  return in->recs.len;
}

void mq_intake_get_stats(const mq_intake *in, mq_intake_stats *out) {
  *out = in->stats;
}
