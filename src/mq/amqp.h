/* amqp.h - the RabbitMQ adapter: one AMQP 0-9-1 connection driven by the libuv loop.
 *
 * The only module that includes rabbitmq-c. It owns the socket (non-blocking connect, uv_poll),
 * heartbeats (uv timer), reconnection with exponential backoff and jitter, and three channels:
 *   1  consuming (basic.qos / basic.consume / basic.ack), deliveries go to one consumer hook;
 *   2  publishing with publisher confirms: every publish gets exactly one completion callback;
 *   3  the periodic passive queue.declare that reads the command queue's depth.
 * On connect it declares the durable queues: the command queue, <command queue>.dlq and the
 * result queue; and, when configured, the non-durable queues of an auxiliary consumer (also on
 * channel 1, its own consumer tag: see mq_conn_opts.aux_queue). Nothing blocks the loop: the login
 * handshake (protocol header, connection.start
 * .. open-ok) is driven frame by frame from socket readiness like everything after it (channels,
 * confirm.select, declares, qos, consume: pipelined method frames whose -ok replies are handled
 * asynchronously). A broker that accepts TCP but never answers costs one deadline
 * (connect_timeout_s), after which the attempt fails with SM_ETIMEDOUT and is retried.
 *
 * Output is batched: the frames of one loop turn (publishes, acks, nacks, heartbeats) are encoded
 * into one buffer and leave in one send() at the start of the next turn; the acks of one turn are
 * coalesced into basic.ack with multiple=1 where that covers exactly the acked deliveries.
 *
 * Callbacks never run inside the call that caused them; they run from loop events.
 */
#ifndef SM_MQ_AMQP_H
#define SM_MQ_AMQP_H

#include "util/err.h"
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct mq_conn mq_conn;

/* A byte string that is not NUL-terminated; borrowed unless said otherwise. */
typedef struct mq_slice {
  const char *base;
  size_t len;
} mq_slice;

/* One string header of a message (other header value types are skipped on receive). */
typedef struct mq_header {
  mq_slice key;
  mq_slice value;
} mq_header;

/* The message properties the project uses; empty slices are "absent". */
typedef struct mq_props {
  mq_slice content_type;    /* e.g. application/json */
  mq_slice reply_to;        /* queue to answer to */
  mq_slice correlation_id;  /* echoed in the answer */
  mq_slice message_id;      /* publisher's id of the message */
  const mq_header *headers; /* string headers */
  size_t n_headers;
  int persistent; /* delivery_mode 2 */
} mq_props;

/* A received message; everything it points to is valid only during the callback. */
typedef struct mq_message {
  uint64_t delivery_tag; /* channel 1 tag, for mq_conn_ack / mq_conn_nack */
  uint64_t generation;   /* connection generation that delivered it */
  int redelivered;       /* broker's redelivered flag */
  mq_slice routing_key;
  mq_slice body;    /* at most max_message_bytes */
  size_t body_size; /* the message's full size; > body.len when truncated */
  mq_props props;
} mq_message;

typedef struct mq_conn_opts {
  const char *url;           /* amqp://user:pass@host:port/vhost (required) */
  const char *command_queue; /* declared durable with <name>.dlq; NULL: "agent-commands" */
  const char *result_queue;  /* declared durable; NULL: "agent-results" */
  unsigned heartbeat_s;      /* negotiated heartbeat; 0: 30 s */
  double connect_timeout_s;  /* TCP connect + handshake + setup bound; 0: 5 s */
  double backoff_min_s;      /* first reconnect delay; 0: 0.2 s */
  double backoff_max_s;      /* reconnect delay cap; 0: 30 s */
  double depth_interval_s;   /* command queue depth poll period; 0: 5 s, <0: off */
  size_t max_unconfirmed;    /* publishes awaiting a confirm; 0: 4096 */
  size_t max_message_bytes;  /* body bytes kept per delivery; 0: 16 MiB (the rest is counted in
                                body_size but discarded: the consumer dead-letters such messages) */
  /* An auxiliary consumer (SiriusScan's UI queue): aux_queue and aux_reply_queue are declared
   * NON-durable, not exclusive, not auto-delete (as their owner declares them: a different
   * declaration would be refused by the broker), and aux_queue is consumed on channel 1 with
   * its own consumer tag and prefetch, on every connect, for as long as the adapter lives.
   * NULL aux_queue: none. Its deliveries go to the hook of mq_conn_set_aux_consumer and are
   * settled with mq_conn_ack / mq_conn_nack like the others. */
  const char *aux_queue;
  const char *aux_reply_queue; /* NULL: not declared */
  uint16_t aux_prefetch;       /* 0: 64 */
} mq_conn_opts;

/* Called on every transition to connected (up=1, err=0) or away from it (up=0, err says why).
 * A connect attempt that fails before reaching "connected" reports up=0 too. */
typedef void (*mq_state_cb)(mq_conn *c, int up, int err, void *ud);

/* Called for each message delivered on channel 1. */
typedef void (*mq_deliver_cb)(mq_conn *c, const mq_message *m, void *ud);

/* Completion of one publish: 0 confirmed (basic.ack), SM_EIO nacked by the broker, SM_ECLOSED
 * connection lost before the confirm (the message may or may not have arrived), SM_ECANCELED
 * adapter destroyed. */
typedef void (*mq_publish_cb)(int status, void *ud);

/* Called with the command queue's message count after each depth poll. */
typedef void (*mq_depth_cb)(mq_conn *c, uint64_t messages, uint32_t consumers, void *ud);

/* Creates an adapter on loop; nothing connects until mq_conn_start. Returns 0, SM_EINVAL
 * (missing or unparsable url: nothing allocated) or SM_ENOMEM. */
SM_MUST_CHECK int mq_conn_create(uv_loop_t *loop, const mq_conn_opts *opts, mq_conn **out);

/* Starts connecting (and reconnecting forever until destroyed). Returns 0 or SM_ESTATE. */
SM_MUST_CHECK int mq_conn_start(mq_conn *c);

/* Closes the connection and all handles; pending publish callbacks run with SM_ECANCELED from
 * inside this call. Memory is released after the loop ran the close callbacks. NULL is fine. */
void mq_conn_destroy(mq_conn *c);

/* Adds a state listener (at most 4). Returns 0 or SM_ELIMIT. */
SM_MUST_CHECK int mq_conn_on_state(mq_conn *c, mq_state_cb cb, void *ud);

/* Removes the listener added with exactly this cb and ud (no-op when absent). */
void mq_conn_off_state(mq_conn *c, mq_state_cb cb, void *ud);

/* Sets the one consumer hook for channel 1 deliveries. */
void mq_conn_set_consumer(mq_conn *c, mq_deliver_cb cb, void *ud);

/* Sets the hook for deliveries of the auxiliary consumer (opts.aux_queue); NULL: they are
 * nacked with requeue. */
void mq_conn_set_aux_consumer(mq_conn *c, mq_deliver_cb cb, void *ud);

/* Sets the depth callback (optional; the getter works without it). */
void mq_conn_on_depth(mq_conn *c, mq_depth_cb cb, void *ud);

/* Whether the connection is up and set up (channels open, queues declared). */
int mq_conn_is_up(const mq_conn *c);

/* Generation of the current connection: increases on every successful connect. Delivery tags
 * are only meaningful within their generation. */
uint64_t mq_conn_generation(const mq_conn *c);

/* Last known depth of the command queue; returns 0, or SM_EAGAIN when never read yet. */
SM_MUST_CHECK int mq_conn_queue_depth(const mq_conn *c, uint64_t *messages);

/* Names of the declared queues (as configured). */
const char *mq_conn_command_queue(const mq_conn *c);
const char *mq_conn_result_queue(const mq_conn *c);

/* Publishes body to the default exchange with routing key `queue`, on the confirm channel: the
 * frames are queued and written with the rest of the loop turn's output. cb (may be NULL) runs
 * exactly once, later, with the outcome (a write failure drops the connection: SM_ECLOSED).
 * Returns 0 (cb will run), SM_ECLOSED when not connected, SM_ELIMIT when max_unconfirmed
 * publishes are pending, SM_EINVAL (also: properties too large for a frame) or SM_ENOMEM; on
 * an error nothing was queued and cb will not run. */
SM_MUST_CHECK int mq_conn_publish(mq_conn *c, const char *queue, mq_slice body,
                                  const mq_props *props, mq_publish_cb cb, void *ud);

/* Number of publishes awaiting a confirm. */
size_t mq_conn_unconfirmed(const mq_conn *c);

/* Starts consuming `queue` on channel 1 with prefetch; re-issued after every reconnect until
 * mq_conn_consume_stop. Returns 0, SM_EINVAL or SM_EIO (connection dropped). When not connected
 * it only records the wish. */
SM_MUST_CHECK int mq_conn_consume(mq_conn *c, const char *queue, uint16_t prefetch);

/* Cancels the consumer (basic.cancel): no new deliveries; unacked ones stay unacked. */
SM_MUST_CHECK int mq_conn_consume_stop(mq_conn *c);

/* Acks / nacks a delivery of generation gen. An ack is queued and written at the end of the
 * loop turn: the turn's acks that form a run from the lowest unsettled delivery go as one
 * basic.ack with multiple=1, the others singly (a multiple ack never covers a delivery that was
 * not acked or nacked). A nack is written at once, singly. Returns 0, SM_ECLOSED when gen is not
 * the current connection (the broker redelivers it anyway), SM_ENOENT when the delivery is
 * already settled, or SM_EIO (the connection is dropped). */
SM_MUST_CHECK int mq_conn_ack(mq_conn *c, uint64_t gen, uint64_t tag);
SM_MUST_CHECK int mq_conn_nack(mq_conn *c, uint64_t gen, uint64_t tag, int requeue);

/* Counters since creation (all connections). */
typedef struct mq_conn_stats {
  uint64_t writes;           /* send() calls that wrote bytes */
  uint64_t publishes;        /* basic.publish queued */
  uint64_t confirms;         /* basic.ack / basic.nack frames received on the publish channel */
  uint64_t acks_sent;        /* basic.ack frames written on the consume channel */
  uint64_t acks_multiple;    /* of which with multiple=1 */
  uint64_t deliveries_acked; /* deliveries those acks settled */
  uint64_t nacks_sent;       /* basic.nack frames written */
} mq_conn_stats;
void mq_conn_get_stats(const mq_conn *c, mq_conn_stats *out);

#endif
