/* amqp.c - rabbitmq-c on the libuv loop. See amqp.h for the model.
 *
 * Phases: IDLE -> RESOLVING (uv_getaddrinfo) -> CONNECTING (non-blocking connect polled for
 * writability) -> HANDSHAKE (protocol header, connection.start / start-ok, tune / tune-ok, open /
 * open-ok, each reply read from the loop like any other frame) -> SETUP (pipelined channel.open
 * x3, confirm.select, queue.declare x3 whose -ok replies are counted) -> UP. Nothing waits on
 * the socket: a broker that accepts TCP and never answers only runs into the deadline.
 * Any failure goes to WAIT_RETRY with an exponential, jittered delay. One deadline timer bounds
 * RESOLVING..SETUP. A heartbeat timer sends heartbeats and declares the broker dead after two
 * heartbeat periods without any byte from it.
 *
 * Frames are read with amqp_simple_wait_frame_noblock and a zero timeout until the library has
 * nothing decoded, buffered or readable, so the loop never waits on the socket.
 *
 * Writes never go through rabbitmq-c (whose sends are one syscall per frame and wait on a full
 * socket): every frame is encoded (amqp_encode_method / amqp_encode_properties) into one output
 * buffer, and a uv_idle handle armed by the first frame of a loop turn writes the buffer with
 * one send() at the start of the next turn (an armed idle handle keeps the loop from blocking,
 * so nothing waits). A full socket keeps the rest buffered and waits for writability. rabbitmq-c
 * is told heartbeat 0 so that it never writes on its own; the heartbeat timer here does both
 * directions.
 *
 * Acks of channel-1 deliveries are queued, not written: the flush turns the acks of one turn
 * into one basic.ack with multiple=1 for the longest run of settled deliveries from the lowest
 * unsettled one, and individual acks for the rest (a multiple ack never covers a delivery that
 * was not acked or nacked by the caller). Nacks are written at once. Publish confirms are kept
 * in a ring indexed by delivery tag, so a confirm (multiple or not) costs O(tags it covers).
 */
#include "mq/amqp.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MQ_CH_CONSUME 1
#define MQ_CH_PUBLISH 2
#define MQ_CH_DEPTH 3
#define MQ_MAX_LISTENERS 4
#define MQ_MAX_RX_HEADERS 64 /* string headers kept per received message */
#define MQ_FRAME_MAX 131072

enum mq_phase {
  MQ_IDLE = 0,   /* created, not started */
  MQ_RESOLVING,  /* uv_getaddrinfo running */
  MQ_CONNECTING, /* TCP connect in flight */
  MQ_HANDSHAKE,  /* connection.start .. open-ok exchange in progress */
  MQ_SETUP,      /* logged in; channel/queue setup replies outstanding */
  MQ_UP,         /* ready */
  MQ_WAIT_RETRY, /* backoff timer running */
  MQ_CLOSED      /* destroyed */
};

/* The reply the handshake waits for next (channel 0). */
enum mq_hs_step { MQ_HS_START = 0, MQ_HS_TUNE, MQ_HS_OPEN_OK };

enum mq_content_kind { MQ_CONTENT_NONE = 0, MQ_CONTENT_DELIVER, MQ_CONTENT_RETURN };

/* A publish awaiting its confirm, in the ring slot of its delivery tag; completed (callback)
 * exactly once. */
typedef struct mq_pending {
  mq_publish_cb cb; /* may be NULL */
  void *ud;
  int live; /* awaiting its confirm */
} mq_pending;

/* State of a channel-1 delivery in the ack ring. */
enum { MQ_D_SETTLED = 0, MQ_D_UNSETTLED, MQ_D_ACK_QUEUED };

/* One TCP attempt's poll handle; freed in its own close callback so it never outlives nothing. */
typedef struct mq_sock {
  uv_poll_t poll;
  int fd;
} mq_sock;

struct mq_conn {
  uv_loop_t *loop;
  enum mq_phase phase;
  int destroyed;    /* mq_conn_destroy called; memory goes after the last close callback */
  int open_handles; /* uv handles of this struct not yet closed */
  int gai_busy;     /* getaddrinfo request in flight (holds a pointer to us) */

  /* settings */
  char *url_buf;                    /* amqp_parse_url writes into it; info points into it */
  struct amqp_connection_info info; /* user, password, host, port, vhost */
  char *cmd_q, *dlq, *res_q;        /* queue names */
  unsigned heartbeat_req;           /* requested heartbeat, seconds */
  uint64_t connect_timeout_ms;
  double backoff_min_s, backoff_max_s;
  uint64_t depth_interval_ms; /* 0: off */
  size_t max_unconfirmed;
  size_t max_message_bytes;

  /* connection */
  amqp_connection_state_t st; /* NULL unless HANDSHAKE, SETUP or UP */
  enum mq_hs_step hs;         /* HANDSHAKE: the reply awaited */
  mq_sock *sock;              /* current socket's poll handle, NULL when none */
  uv_getaddrinfo_t gai;
  struct addrinfo *ai_list, *ai_cur; /* addresses being tried */
  int connect_err;                   /* why the last address failed */
  uv_timer_t retry_timer;            /* backoff, and deferred drops */
  uv_timer_t deadline_timer;         /* bounds resolve + connect + setup */
  uv_timer_t hb_timer;               /* heartbeats and dead-peer detection */
  uv_timer_t depth_timer;            /* queue depth polls */
  uv_idle_t flush;                   /* armed by the first frame of a turn: acks, then write */
  int flush_armed;                   /* flush handle started */
  int want_write;                    /* socket full: waiting for UV_WRITABLE */
  char *ob;                          /* output: encoded frames; [ob_off, ob_len) unsent */
  size_t ob_off, ob_len, ob_cap;
  uint32_t frame_max; /* negotiated frame size (MQ_FRAME_MAX until tuned) */
  int lib_owns_fd;    /* the socket's fd now belongs to rabbitmq-c (closed by it) */
  int drop_err;       /* reason for a deferred drop; 0 none */
  unsigned attempt;   /* consecutive failed attempts, for the backoff */
  uint64_t rng;       /* xorshift state for jitter */
  uint64_t gen;       /* generation: +1 on every UP */
  unsigned hb;        /* negotiated heartbeat, seconds; 0: none */
  uint64_t last_recv_ms, last_send_ms;
  int setup_pending; /* -ok replies the setup still waits for */

  /* publishing (channel 2, confirms): a ring over the tags [p_low, next_tag] */
  uint64_t next_tag; /* last tag used */
  uint64_t p_low;    /* lowest tag that may still await its confirm */
  mq_pending *pring; /* slot of tag t: pring[t & (pcap - 1)] */
  size_t pcap;       /* power of two; 0 until the first publish */
  size_t n_pending;

  /* deliveries of channel 1, for coalesced acks: a ring over the tags [d_low, d_next) */
  uint8_t *dring; /* MQ_D_* of tag t: dring[t & (dcap - 1)] */
  size_t dcap;
  uint64_t d_low, d_next;
  size_t acks_queued; /* MQ_D_ACK_QUEUED entries */
  uint64_t ack_max;   /* highest queued ack */
  int d_untracked;    /* tracking failed this connection (tag gap, no memory): acks go singly */

  mq_conn_stats stats;

  /* consuming (channel 1) */
  char *consume_queue;
  uint16_t prefetch;
  int consume_wanted;   /* re-consume after reconnect */
  int consuming;        /* basic.consume sent on this connection */
  int consume_inflight; /* basic.consume sent, basic.consume-ok not yet received */
  int cancel_deferred;  /* a stop came while consume_inflight: cancel on consume-ok (RabbitMQ
                           closes the channel with 541 on a cancel racing its consume) */
  unsigned consumer_seq;
  char ctag[48];
  mq_deliver_cb deliver_cb;
  void *deliver_ud;

  /* the auxiliary consumer (channel 1 as well, its own tag) */
  char *aux_q, *aux_reply_q; /* NULL: none */
  uint16_t aux_prefetch;
  char aux_ctag[48]; /* "" until consumed on this connection */
  mq_deliver_cb aux_cb;
  void *aux_ud;

  /* depth (channel 3) */
  mq_depth_cb depth_cb;
  void *depth_ud;
  int depth_known;
  uint64_t depth;
  int depth_inflight;
  int depth_ch_open;

  struct {
    mq_state_cb cb;
    void *ud;
  } ls[MQ_MAX_LISTENERS];
  int n_ls;

  /* the message being assembled from method + header + body frames */
  struct {
    enum mq_content_kind kind;
    int aux; /* a delivery of the auxiliary consumer */
    uint16_t channel;
    uint64_t tag;
    int redelivered;
    amqp_pool_t pool; /* copies of routing key and properties */
    mq_slice routing_key;
    mq_props props;
    int have_header;
    char *body;       /* malloc'ed, min(size, max_message_bytes) */
    size_t size, got; /* announced size, bytes received */
  } in;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static double mq_rand01(mq_conn *c) {
  uint64_t x = c->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  c->rng = x;
  return (double)(x >> 11) / (double)(1ULL << 53);
}

static int mq_err_from_amqp(int status) {
  switch (status) {
  case AMQP_STATUS_OK:
    return 0;
  case AMQP_STATUS_NO_MEMORY:
    return SM_ENOMEM;
  case AMQP_STATUS_CONNECTION_CLOSED:
  case AMQP_STATUS_SOCKET_CLOSED:
    return SM_ECLOSED;
  case AMQP_STATUS_TIMEOUT:
  case AMQP_STATUS_HEARTBEAT_TIMEOUT:
    return SM_ETIMEDOUT;
  case AMQP_STATUS_SOCKET_ERROR:
  case AMQP_STATUS_TCP_ERROR:
    return SM_EIO;
  case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED:
    return SM_EADDR;
  default:
    return SM_EPROTO;
  }
}

static amqp_bytes_t mq_bytes_of(mq_slice s) {
  return (amqp_bytes_t){.len = s.len, .bytes = (void *)s.base};
}

static mq_slice mq_pool_dup(amqp_pool_t *pool, amqp_bytes_t b) {
  if (b.len == 0)
    return (mq_slice){NULL, 0};
  char *p = amqp_pool_alloc(pool, b.len);
  if (!p)
    return (mq_slice){NULL, 0};
  memcpy(p, b.bytes, b.len);
  return (mq_slice){p, b.len};
}

static void mq_maybe_free(mq_conn *c);
static void mq_drop(mq_conn *c, int err);
static void mq_drain(mq_conn *c);
static void mq_schedule_retry(mq_conn *c);
static void mq_start_attempt(mq_conn *c);
static void mq_on_flush(uv_idle_t *h);
static void mq_on_retry_timer(uv_timer_t *t);
static void mq_on_io(uv_poll_t *h, int status, int events);

/* ---- sending: frames are encoded into c->ob and written once per loop turn ----------------- */

static void mq_put16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)(v >> 8);
  p[1] = (unsigned char)v;
}

static void mq_put32(unsigned char *p, uint32_t v) {
  mq_put16(p, (uint16_t)(v >> 16));
  mq_put16(p + 2, (uint16_t)v);
}

static void mq_put64(unsigned char *p, uint64_t v) {
  mq_put32(p, (uint32_t)(v >> 32));
  mq_put32(p + 4, (uint32_t)v);
}

/* Makes room for n more bytes at ob + ob_len (moving the unsent bytes to the front first). */
static int mq_out_reserve(mq_conn *c, size_t n) {
  if (c->ob_cap - c->ob_len >= n)
    return 0;
  if (c->ob_off) {
    memmove(c->ob, c->ob + c->ob_off, c->ob_len - c->ob_off);
    c->ob_len -= c->ob_off;
    c->ob_off = 0;
    if (c->ob_cap - c->ob_len >= n)
      return 0;
  }
  size_t cap = c->ob_cap ? c->ob_cap : 16384;
  while (cap - c->ob_len < n)
    cap *= 2;
  char *b = sm_realloc(c->ob, cap);
  if (!b)
    return SM_ENOMEM;
  c->ob = b;
  c->ob_cap = cap;
  return 0;
}

/* Arms the end-of-turn write (unless a full socket already waits for writability). */
static void mq_out_kick(mq_conn *c) {
  if (c->flush_armed || c->want_write)
    return;
  c->flush_armed = 1;
  uv_idle_start(&c->flush, mq_on_flush);
}

static void mq_out_put_head(unsigned char *f, uint8_t type, uint16_t ch, uint32_t size) {
  f[0] = type;
  mq_put16(f + 1, ch);
  mq_put32(f + 3, size);
}

/* Appends one method frame. */
static int mq_out_method(mq_conn *c, uint16_t ch, amqp_method_number_t id, void *decoded) {
  size_t room = 1024;
  for (;;) {
    int err = mq_out_reserve(c, room + 12);
    if (err)
      return err;
    unsigned char *f = (unsigned char *)c->ob + c->ob_len;
    amqp_bytes_t enc = {.len = room, .bytes = f + 11};
    int n = amqp_encode_method(id, decoded, enc);
    if (n >= 0) {
      if ((size_t)n + 4 > c->frame_max - 8)
        return SM_EPROTO;
      mq_out_put_head(f, AMQP_FRAME_METHOD, ch, (uint32_t)n + 4);
      mq_put32(f + 7, id);
      f[11 + n] = AMQP_FRAME_END;
      c->ob_len += 12 + (size_t)n;
      mq_out_kick(c);
      return 0;
    }
    if (room >= c->frame_max)
      return SM_EPROTO; /* does not fit in a frame */
    room = c->frame_max;
  }
}

static int mq_send_method(mq_conn *c, uint16_t ch, amqp_method_number_t id, void *decoded) {
  return mq_out_method(c, ch, id, decoded);
}

/* Appends basic.publish, its content header and body frames, all or nothing. */
static int mq_out_publish(mq_conn *c, const char *queue, const amqp_basic_properties_t *bp,
                          mq_slice body) {
  size_t mark = c->ob_len - c->ob_off; /* unsent bytes before this message (survives moves) */
  amqp_basic_publish_t m = {.ticket = 0,
                            .exchange = amqp_empty_bytes,
                            .routing_key = amqp_cstring_bytes(queue),
                            .mandatory = 0,
                            .immediate = 0};
  int err = mq_out_method(c, MQ_CH_PUBLISH, AMQP_BASIC_PUBLISH_METHOD, &m);
  size_t room = 1024;
  while (!err) {
    err = mq_out_reserve(c, room + 20);
    if (err)
      break;
    unsigned char *f = (unsigned char *)c->ob + c->ob_len;
    amqp_bytes_t enc = {.len = room, .bytes = f + 19};
    int n = amqp_encode_properties(AMQP_BASIC_CLASS, (void *)bp, enc);
    if (n >= 0) {
      if ((size_t)n + 12 > c->frame_max - 8) {
        err = SM_EPROTO;
        break;
      }
      mq_out_put_head(f, AMQP_FRAME_HEADER, MQ_CH_PUBLISH, (uint32_t)n + 12);
      mq_put16(f + 7, AMQP_BASIC_CLASS);
      mq_put16(f + 9, 0); /* weight */
      mq_put64(f + 11, body.len);
      f[19 + n] = AMQP_FRAME_END;
      c->ob_len += 20 + (size_t)n;
      break;
    }
    if (room >= c->frame_max)
      err = SM_EPROTO;
    room = c->frame_max;
  }
  if (!err && body.len) {
    size_t chunk = c->frame_max - 8;
    size_t frames = (body.len + chunk - 1) / chunk;
    err = mq_out_reserve(c, body.len + 8 * frames);
    for (size_t off = 0; !err && off < body.len; off += chunk) {
      size_t k = body.len - off < chunk ? body.len - off : chunk;
      unsigned char *f = (unsigned char *)c->ob + c->ob_len;
      mq_out_put_head(f, AMQP_FRAME_BODY, MQ_CH_PUBLISH, (uint32_t)k);
      memcpy(f + 7, body.base + off, k);
      f[7 + k] = AMQP_FRAME_END;
      c->ob_len += 8 + k;
    }
  }
  if (err)
    c->ob_len = c->ob_off + mark; /* never a partial message on the wire */
  return err;
}

/* Writes what is buffered; a full socket waits for UV_WRITABLE. */
static void mq_out_write(mq_conn *c) {
  if (!c->sock || !c->st || c->ob_off == c->ob_len)
    return;
  while (c->ob_off < c->ob_len) {
    ssize_t n = send(c->sock->fd, c->ob + c->ob_off, c->ob_len - c->ob_off, MSG_NOSIGNAL);
    if (n > 0) {
      c->ob_off += (size_t)n;
      c->stats.writes++;
      c->last_send_ms = uv_now(c->loop);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c->want_write) {
        c->want_write = 1;
        uv_poll_start(&c->sock->poll, UV_READABLE | UV_WRITABLE, mq_on_io);
      }
      return;
    }
    mq_drop(c, n < 0 ? sm_err_from_errno(errno) : SM_EIO);
    return;
  }
  c->ob_off = c->ob_len = 0;
  if (c->ob_cap > (1u << 20)) { /* a large message passed: do not keep its buffer */
    free(c->ob);
    c->ob = NULL;
    c->ob_cap = 0;
  }
  if (c->want_write) {
    c->want_write = 0;
    uv_poll_start(&c->sock->poll, UV_READABLE, mq_on_io);
  }
}

static void mq_out_reset(mq_conn *c) {
  c->ob_off = c->ob_len = 0;
  c->want_write = 0;
  c->flush_armed = 0;
  uv_idle_stop(&c->flush);
}

/* Drops the connection from the next loop turn: API calls must not run callbacks themselves. */
static void mq_defer_drop(mq_conn *c, int err) {
  if (c->drop_err)
    return;
  c->drop_err = err ? err : SM_EIO;
  uv_timer_start(&c->retry_timer, mq_on_retry_timer, 0, 0);
}

/* ---- pending publishes: a ring of slots indexed by delivery tag ---------------------------- */

/* Makes the ring hold the tags [p_low, p_low + span). */
static int mq_pring_fit(mq_conn *c, uint64_t span) {
  if (span <= c->pcap)
    return 0;
  size_t cap = c->pcap ? c->pcap : 64;
  while (cap < span)
    cap *= 2;
  mq_pending *r = sm_calloc(cap, sizeof *r);
  if (!r)
    return SM_ENOMEM;
  for (uint64_t t = c->p_low; t <= c->next_tag; t++)
    r[t & (cap - 1)] = c->pring[t & (c->pcap - 1)];
  free(c->pring);
  c->pring = r;
  c->pcap = cap;
  return 0;
}

static void mq_plow_advance(mq_conn *c) {
  while (c->p_low <= c->next_tag && !c->pring[c->p_low & (c->pcap - 1)].live)
    c->p_low++;
}

/* Completes every pending publish with status. A callback may publish again only on a new
 * connection (this one is gone), and may destroy the adapter (whose own pass completes the
 * rest: each slot is cleared before its callback runs). */
static void mq_fail_pending(mq_conn *c, int status) {
  for (uint64_t t = c->p_low; c->n_pending && t <= c->next_tag; t++) {
    mq_pending *s = &c->pring[t & (c->pcap - 1)];
    if (!s->live)
      continue;
    mq_publish_cb cb = s->cb;
    void *ud = s->ud;
    s->live = 0;
    c->n_pending--;
    if (cb)
      cb(status, ud);
  }
  assert(c->n_pending == 0);
  c->p_low = c->next_tag + 1;
}

/* basic.ack / basic.nack from the broker: completes the tag, or with multiple every pending tag
 * up to it, visiting only the tags between the oldest pending one and `tag`. */
static void mq_confirm(mq_conn *c, uint64_t tag, int multiple, int status) {
  c->stats.confirms++;
  uint64_t gen = c->gen;
  int any = 0;
  uint64_t t = multiple ? c->p_low : tag;
  if (tag > c->next_tag || c->pcap == 0)
    t = tag + 1; /* not ours */
  for (; t <= tag; t++) {
    mq_pending *s = &c->pring[t & (c->pcap - 1)]; /* re-read: a callback may grow the ring */
    if (t < c->p_low || !s->live)
      continue;
    mq_publish_cb cb = s->cb;
    void *ud = s->ud;
    s->live = 0;
    c->n_pending--;
    any = 1;
    if (cb)
      cb(status, ud);
    if (c->destroyed || c->gen != gen || c->phase != MQ_UP)
      return; /* the rest was completed by the drop or destroy */
  }
  if (!any && !multiple)
    sm_log_warn("amqp", "confirm for unknown delivery tag", SM_LI("tag", tag));
  if (c->pcap)
    mq_plow_advance(c);
}

/* ---- deliveries of channel 1: settled states for coalesced acks -------------------------- */

static void mq_dtrack_reset(mq_conn *c) {
  c->d_low = c->d_next = 1;
  c->acks_queued = 0;
  c->ack_max = 0;
  c->d_untracked = 0;
  if (c->dring)
    memset(c->dring, 0, c->dcap);
}

/* Records a new delivery as unsettled. On a tag gap or no memory the connection falls back to
 * single acks, which are always right. */
static void mq_dtrack_add(mq_conn *c, uint64_t tag) {
  if (c->d_untracked)
    return;
  if (tag != c->d_next) {
    sm_log_warn("amqp", "delivery tags not contiguous: acks go one by one", SM_LI("tag", tag),
                SM_LI("expected", c->d_next));
    c->d_untracked = 1;
    return;
  }
  uint64_t span = c->d_next + 1 - c->d_low;
  if (span > c->dcap) {
    size_t cap = c->dcap ? c->dcap : 256;
    while (cap < span)
      cap *= 2;
    uint8_t *r = sm_calloc(cap, 1);
    if (!r) {
      c->d_untracked = 1;
      return;
    }
    for (uint64_t t = c->d_low; t < c->d_next; t++)
      r[t & (cap - 1)] = c->dring[t & (c->dcap - 1)];
    free(c->dring);
    c->dring = r;
    c->dcap = cap;
  }
  c->dring[tag & (c->dcap - 1)] = MQ_D_UNSETTLED;
  c->d_next++;
}

/* State of a tag: below the window it was settled, beyond it never delivered (both refused);
 * -1 when tracking is off. */
static int mq_dtrack_state(const mq_conn *c, uint64_t tag) {
  if (c->d_untracked)
    return -1;
  if (tag < c->d_low || tag >= c->d_next)
    return MQ_D_SETTLED;
  return c->dring[tag & (c->dcap - 1)];
}

static void mq_dlow_advance(mq_conn *c) {
  while (c->d_low < c->d_next && c->dring[c->d_low & (c->dcap - 1)] == MQ_D_SETTLED)
    c->d_low++;
}

static int mq_out_ack(mq_conn *c, uint64_t tag, int multiple) {
  amqp_basic_ack_t a = {.delivery_tag = tag, .multiple = multiple ? 1 : 0};
  int err = mq_out_method(c, MQ_CH_CONSUME, AMQP_BASIC_ACK_METHOD, &a);
  if (!err) {
    c->stats.acks_sent++;
    c->stats.acks_multiple += multiple ? 1 : 0;
  }
  return err;
}

/* Writes the queued acks: one multiple ack for the run of settled tags from the lowest
 * unsettled one, single acks after the first tag still unsettled. */
static int mq_emit_acks(mq_conn *c) {
  if (!c->acks_queued)
    return 0;
  uint64_t t = c->d_low, top = 0;
  size_t n = 0;
  for (; t < c->d_next && c->dring[t & (c->dcap - 1)] != MQ_D_UNSETTLED; t++) {
    if (c->dring[t & (c->dcap - 1)] == MQ_D_ACK_QUEUED) {
      c->dring[t & (c->dcap - 1)] = MQ_D_SETTLED;
      top = t;
      n++;
    }
  }
  int err = n ? mq_out_ack(c, top, n > 1) : 0;
  c->stats.deliveries_acked += n;
  c->acks_queued -= n;
  for (; !err && c->acks_queued && t <= c->ack_max; t++) {
    if (c->dring[t & (c->dcap - 1)] == MQ_D_ACK_QUEUED) {
      c->dring[t & (c->dcap - 1)] = MQ_D_SETTLED;
      c->acks_queued--;
      c->stats.deliveries_acked++;
      err = mq_out_ack(c, t, 0);
    }
  }
  mq_dlow_advance(c);
  return err;
}

/* ---- incoming content --------------------------------------------------------------------- */

static void mq_content_reset(mq_conn *c) {
  free(c->in.body);
  c->in.body = NULL;
  recycle_amqp_pool(&c->in.pool);
  c->in.kind = MQ_CONTENT_NONE;
  c->in.aux = 0;
  c->in.have_header = 0;
  c->in.size = c->in.got = 0;
  memset(&c->in.props, 0, sizeof c->in.props);
  c->in.routing_key = (mq_slice){NULL, 0};
}

static void mq_content_complete(mq_conn *c) {
  size_t kept = c->in.size < c->max_message_bytes ? c->in.size : c->max_message_bytes;
  mq_message m = {
      .delivery_tag = c->in.tag,
      .generation = c->gen,
      .redelivered = c->in.redelivered,
      .routing_key = c->in.routing_key,
      .body = {c->in.body, kept},
      .body_size = c->in.size,
      .props = c->in.props,
  };
  enum mq_content_kind kind = c->in.kind;
  mq_deliver_cb dcb = c->in.aux ? c->aux_cb : c->deliver_cb;
  void *dud = c->in.aux ? c->aux_ud : c->deliver_ud;
  if (kind == MQ_CONTENT_DELIVER) {
    if (dcb) {
      dcb(c, &m, dud);
    } else {
      /* No consumer hook: hand it back to the broker for another consumer. */
      sm_log_warn("amqp", "delivery without consumer, requeued", SM_LI("tag", m.delivery_tag));
      if (mq_conn_nack(c, m.generation, m.delivery_tag, 1) != 0)
        sm_log_debug("amqp", "nack not sent", SM_LI("tag", m.delivery_tag));
    }
  } else if (kind == MQ_CONTENT_RETURN) {
    sm_log_warn("amqp", "message returned by broker", SM_LI("bytes", (long long)c->in.size));
  }
  if (!c->destroyed)
    mq_content_reset(c);
}

static void mq_content_header(mq_conn *c, amqp_frame_t *f) {
  if (c->in.kind == MQ_CONTENT_NONE || c->in.have_header) {
    sm_log_warn("amqp", "unexpected content header", SM_LI("channel", f->channel));
    return;
  }
  c->in.have_header = 1;
  c->in.size = (size_t)f->payload.properties.body_size;
  amqp_basic_properties_t *p = f->payload.properties.decoded;
  amqp_pool_t *pool = &c->in.pool;
  mq_props *o = &c->in.props;
  if (p) {
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
      o->content_type = mq_pool_dup(pool, p->content_type);
    if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
      o->reply_to = mq_pool_dup(pool, p->reply_to);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
      o->correlation_id = mq_pool_dup(pool, p->correlation_id);
    if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
      o->message_id = mq_pool_dup(pool, p->message_id);
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
      o->persistent = p->delivery_mode == 2;
    if ((p->_flags & AMQP_BASIC_HEADERS_FLAG) && p->headers.num_entries > 0) {
      int n =
          p->headers.num_entries < MQ_MAX_RX_HEADERS ? p->headers.num_entries : MQ_MAX_RX_HEADERS;
      mq_header *h = amqp_pool_alloc(pool, sizeof(mq_header) * (size_t)n);
      size_t k = 0;
      for (int i = 0; h && i < n; i++) {
        amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->value.kind != AMQP_FIELD_KIND_UTF8 && e->value.kind != AMQP_FIELD_KIND_BYTES)
          continue;
        h[k].key = mq_pool_dup(pool, e->key);
        h[k].value = mq_pool_dup(pool, e->value.value.bytes);
        k++;
      }
      o->headers = h;
      o->n_headers = h ? k : 0;
    }
  }
  size_t keep = c->in.size < c->max_message_bytes ? c->in.size : c->max_message_bytes;
  c->in.body = sm_malloc(keep ? keep : 1);
  if (!c->in.body) {
    mq_drop(c, SM_ENOMEM);
    return;
  }
  if (c->in.size == 0)
    mq_content_complete(c);
}

static void mq_content_body(mq_conn *c, amqp_frame_t *f) {
  if (c->in.kind == MQ_CONTENT_NONE || !c->in.have_header) {
    sm_log_warn("amqp", "unexpected content body", SM_LI("channel", f->channel));
    return;
  }
  amqp_bytes_t b = f->payload.body_fragment;
  size_t keep = c->in.size < c->max_message_bytes ? c->in.size : c->max_message_bytes;
  if (c->in.got < keep) {
    size_t n = keep - c->in.got < b.len ? keep - c->in.got : b.len;
    memcpy(c->in.body + c->in.got, b.bytes, n);
  }
  c->in.got += b.len;
  if (c->in.got >= c->in.size)
    mq_content_complete(c);
}

static void mq_content_begin(mq_conn *c, enum mq_content_kind kind, uint16_t ch, uint64_t tag,
                             int redelivered, amqp_bytes_t routing_key) {
  mq_content_reset(c);
  c->in.kind = kind;
  c->in.channel = ch;
  c->in.tag = tag;
  c->in.redelivered = redelivered;
  c->in.routing_key = mq_pool_dup(&c->in.pool, routing_key);
}

/* ---- consuming, depth --------------------------------------------------------------------- */

static int mq_send_consume(mq_conn *c) {
  amqp_basic_qos_t qos = {.prefetch_size = 0, .prefetch_count = c->prefetch, .global = 0};
  int err = mq_send_method(c, MQ_CH_CONSUME, AMQP_BASIC_QOS_METHOD, &qos);
  if (err)
    return err;
  snprintf(c->ctag, sizeof c->ctag, "sm-%llu-%u", (unsigned long long)c->gen, ++c->consumer_seq);
  amqp_basic_consume_t bc = {
      .ticket = 0,
      .queue = amqp_cstring_bytes(c->consume_queue),
      .consumer_tag = amqp_cstring_bytes(c->ctag),
      .no_local = 0,
      .no_ack = 0,
      .exclusive = 0,
      .nowait = 0,
      .arguments = amqp_empty_table,
  };
  err = mq_send_method(c, MQ_CH_CONSUME, AMQP_BASIC_CONSUME_METHOD, &bc);
  if (err)
    return err;
  c->consuming = 1;
  c->consume_inflight = 1;
  c->cancel_deferred = 0;
  return 0;
}

/* The auxiliary consumer: its own qos (a per-consumer prefetch applies to the consumers created
 * after it on the channel; the main consumer sends its own before each consume). */
static int mq_send_aux_consume(mq_conn *c) {
  amqp_basic_qos_t qos = {.prefetch_size = 0, .prefetch_count = c->aux_prefetch, .global = 0};
  int err = mq_send_method(c, MQ_CH_CONSUME, AMQP_BASIC_QOS_METHOD, &qos);
  if (err)
    return err;
  snprintf(c->aux_ctag, sizeof c->aux_ctag, "sm-aux-%llu", (unsigned long long)c->gen);
  amqp_basic_consume_t bc = {
      .ticket = 0,
      .queue = amqp_cstring_bytes(c->aux_q),
      .consumer_tag = amqp_cstring_bytes(c->aux_ctag),
      .no_local = 0,
      .no_ack = 0,
      .exclusive = 0,
      .nowait = 0,
      .arguments = amqp_empty_table,
  };
  return mq_send_method(c, MQ_CH_CONSUME, AMQP_BASIC_CONSUME_METHOD, &bc);
}

static int mq_is_aux_tag(const mq_conn *c, amqp_bytes_t tag) {
  size_t n = strlen(c->aux_ctag);
  return n > 0 && tag.len == n && memcmp(tag.bytes, c->aux_ctag, n) == 0;
}

static int mq_send_cancel(mq_conn *c) {
  amqp_basic_cancel_t bc = {.consumer_tag = amqp_cstring_bytes(c->ctag), .nowait = 0};
  return mq_send_method(c, MQ_CH_CONSUME, AMQP_BASIC_CANCEL_METHOD, &bc);
}

static void mq_depth_poll(mq_conn *c) {
  if (c->phase != MQ_UP || !c->depth_ch_open || c->depth_inflight)
    return;
  amqp_queue_declare_t qd = {
      .ticket = 0,
      .queue = amqp_cstring_bytes(c->cmd_q),
      .passive = 1,
      .durable = 0,
      .exclusive = 0,
      .auto_delete = 0,
      .nowait = 0,
      .arguments = amqp_empty_table,
  };
  int err = mq_send_method(c, MQ_CH_DEPTH, AMQP_QUEUE_DECLARE_METHOD, &qd);
  if (err) {
    mq_drop(c, err);
    return;
  }
  c->depth_inflight = 1;
}

static void mq_on_depth_timer(uv_timer_t *t) {
  mq_depth_poll(t->data);
}

/* ---- state changes ------------------------------------------------------------------------ */

static void mq_notify(mq_conn *c, int up, int err) {
  /* A copy: a listener may remove itself (or another) while being called. */
  int n = c->n_ls;
  struct {
    mq_state_cb cb;
    void *ud;
  } ls[MQ_MAX_LISTENERS];
  memcpy(ls, c->ls, sizeof ls[0] * (size_t)n);
  for (int i = 0; i < n && !c->destroyed; i++) {
    int still = 0;
    for (int j = 0; j < c->n_ls; j++)
      still |= c->ls[j].cb == ls[i].cb && c->ls[j].ud == ls[i].ud;
    if (still)
      ls[i].cb(c, up, err, ls[i].ud);
  }
}

static void mq_on_sock_closed(uv_handle_t *h) {
  free(h->data);
}

/* Closes the socket and the library state; fd ownership moves to rabbitmq-c once logged in. */
static void mq_teardown_socket(mq_conn *c) {
  mq_out_reset(c);
  mq_dtrack_reset(c); /* queued acks die with the connection: the broker redelivers */
  if (c->sock) {
    uv_poll_stop(&c->sock->poll);
    c->sock->poll.data = c->sock;
    uv_close((uv_handle_t *)&c->sock->poll, mq_on_sock_closed);
    if (!c->lib_owns_fd)
      close(c->sock->fd);
    c->sock = NULL;
  }
  if (c->st) {
    amqp_destroy_connection(c->st); /* closes the fd once set_sockfd gave it away */
    c->st = NULL;
  }
  c->lib_owns_fd = 0;
  if (c->ai_list) {
    uv_freeaddrinfo(c->ai_list);
    c->ai_list = c->ai_cur = NULL;
  }
}

static const char *mq_phase_name(enum mq_phase ph) {
  switch (ph) {
  case MQ_RESOLVING:
    return "resolve";
  case MQ_CONNECTING:
    return "connect";
  case MQ_HANDSHAKE:
    return "handshake";
  case MQ_SETUP:
    return "setup";
  default:
    return "up";
  }
}

static void mq_drop(mq_conn *c, int err) {
  if (c->phase != MQ_RESOLVING && c->phase != MQ_CONNECTING && c->phase != MQ_HANDSHAKE &&
      c->phase != MQ_SETUP && c->phase != MQ_UP)
    return;
  int was_up = c->phase == MQ_UP;
  if (was_up)
    sm_log_warn("amqp", "connection lost", SM_LE(err), SM_LS("host", c->info.host),
                SM_LI("port", c->info.port));
  else if (c->attempt % 20 == 0) /* an outage logs its first failure and then every 20th */
    sm_log_warn("amqp", "connect failed", SM_LE(err), SM_LS("host", c->info.host),
                SM_LI("port", c->info.port), SM_LI("attempt", c->attempt + 1),
                SM_LS("during", mq_phase_name(c->phase)));
  else
    sm_log_debug("amqp", "connect failed", SM_LE(err), SM_LI("attempt", c->attempt + 1),
                 SM_LS("during", mq_phase_name(c->phase)));
  if (c->phase == MQ_RESOLVING && c->gai_busy)
    uv_cancel((uv_req_t *)&c->gai); /* on_resolved sees the new phase and stops */
  mq_teardown_socket(c);
  uv_timer_stop(&c->deadline_timer);
  uv_timer_stop(&c->hb_timer);
  uv_timer_stop(&c->depth_timer);
  c->consuming = 0;
  c->consume_inflight = 0;
  c->cancel_deferred = 0;
  c->depth_inflight = 0;
  c->depth_ch_open = 0;
  c->setup_pending = 0;
  c->drop_err = 0;
  mq_content_reset(c);
  c->phase = MQ_WAIT_RETRY;
  c->attempt++;
  mq_schedule_retry(c);
  mq_fail_pending(c, SM_ECLOSED);
  mq_notify(c, 0, err);
}

static void mq_on_hb_timer(uv_timer_t *t) {
  mq_conn *c = t->data;
  if (c->phase != MQ_UP || c->hb == 0)
    return;
  uint64_t now = uv_now(c->loop);
  uint64_t hb_ms = (uint64_t)c->hb * 1000;
  if (now - c->last_recv_ms > 2 * hb_ms) {
    mq_drop(c, SM_ETIMEDOUT);
    return;
  }
  if (now - c->last_send_ms >= hb_ms / 2) {
    amqp_frame_t f;
    memset(&f, 0, sizeof f);
    f.frame_type = AMQP_FRAME_HEARTBEAT;
    f.channel = 0;
    if (mq_out_reserve(c, 8) != 0) {
      mq_drop(c, SM_ENOMEM);
      return;
    }
    unsigned char *h = (unsigned char *)c->ob + c->ob_len;
    mq_out_put_head(h, AMQP_FRAME_HEARTBEAT, 0, 0);
    h[7] = AMQP_FRAME_END;
    c->ob_len += 8;
    mq_out_kick(c);
    c->last_send_ms = now;
  }
  mq_drain(c);
}

static void mq_become_up(mq_conn *c) {
  uv_timer_stop(&c->deadline_timer);
  c->phase = MQ_UP;
  c->gen++;
  c->attempt = 0;
  c->depth_ch_open = 1;
  mq_dtrack_reset(c);
  c->last_recv_ms = c->last_send_ms = uv_now(c->loop);
  sm_log_info("amqp", "connected", SM_LS("host", c->info.host), SM_LI("port", c->info.port),
              SM_LI("heartbeat_s", c->hb), SM_LI("generation", c->gen));
  if (c->hb) {
    uint64_t period = (uint64_t)c->hb * 1000 / 4;
    uv_timer_start(&c->hb_timer, mq_on_hb_timer, period ? period : 1, period ? period : 1);
  }
  if (c->depth_interval_ms)
    uv_timer_start(&c->depth_timer, mq_on_depth_timer, 0, c->depth_interval_ms);
  if (c->consume_wanted) {
    int err = mq_send_consume(c);
    if (err) {
      mq_drop(c, err);
      return;
    }
  }
  c->aux_ctag[0] = '\0';
  if (c->aux_q) {
    int err = mq_send_aux_consume(c);
    if (err) {
      mq_drop(c, err);
      return;
    }
  }
  mq_notify(c, 1, 0);
}

static void mq_setup_done(mq_conn *c) {
  if (c->phase != MQ_SETUP)
    return;
  if (--c->setup_pending == 0)
    mq_become_up(c);
}

/* ---- frames ------------------------------------------------------------------------------- */

static void mq_on_method(mq_conn *c, uint16_t ch, amqp_method_t *m) {
  switch (m->id) {
  case AMQP_CONNECTION_CLOSE_METHOD: {
    amqp_connection_close_t *cl = m->decoded;
    sm_log_warn("amqp", "broker closed the connection", SM_LI("code", cl->reply_code),
                SM_LS("reason", cl->reply_text.len ? "see reply_text" : ""));
    amqp_connection_close_ok_t ok;
    memset(&ok, 0, sizeof ok);
    (void)mq_send_method(c, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    mq_drop(c, cl->reply_code == 403 ? SM_EAUTH : SM_ECLOSED);
    return;
  }
  case AMQP_CONNECTION_BLOCKED_METHOD:
    sm_log_warn("amqp", "broker blocked publishing (resource alarm)", SM_LI("channel", ch));
    return;
  case AMQP_CONNECTION_UNBLOCKED_METHOD:
    sm_log_info("amqp", "broker unblocked publishing", SM_LI("channel", ch));
    return;
  case AMQP_CHANNEL_CLOSE_METHOD: {
    amqp_channel_close_t *cl = m->decoded;
    char text[256];
    int n = (int)(cl->reply_text.len < sizeof text - 1 ? cl->reply_text.len : sizeof text - 1);
    memcpy(text, cl->reply_text.bytes, (size_t)n);
    text[n] = 0;
    amqp_channel_close_ok_t ok;
    memset(&ok, 0, sizeof ok);
    int err = mq_send_method(c, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    if (!err && ch == MQ_CH_DEPTH && c->phase == MQ_UP) {
      /* A failed depth poll (e.g. queue deleted) costs only this channel: reopen it. */
      sm_log_warn("amqp", "depth channel closed", SM_LI("code", cl->reply_code),
                  SM_LS("reason", text));
      c->depth_inflight = 0;
      c->depth_ch_open = 0;
      amqp_channel_open_t co;
      memset(&co, 0, sizeof co);
      err = mq_send_method(c, MQ_CH_DEPTH, AMQP_CHANNEL_OPEN_METHOD, &co);
      if (!err)
        return;
    }
    sm_log_error("amqp", "broker closed a channel", SM_LI("channel", ch),
                 SM_LI("code", cl->reply_code), SM_LS("reason", text));
    mq_drop(c, err ? err : SM_EPROTO);
    return;
  }
  case AMQP_CHANNEL_OPEN_OK_METHOD:
    if (c->phase == MQ_UP && ch == MQ_CH_DEPTH)
      c->depth_ch_open = 1;
    else
      mq_setup_done(c);
    return;
  case AMQP_CONFIRM_SELECT_OK_METHOD:
    mq_setup_done(c);
    return;
  case AMQP_QUEUE_DECLARE_OK_METHOD:
    if (ch == MQ_CH_DEPTH) {
      amqp_queue_declare_ok_t *ok = m->decoded;
      c->depth_inflight = 0;
      c->depth_known = 1;
      c->depth = ok->message_count;
      if (c->depth_cb)
        c->depth_cb(c, ok->message_count, ok->consumer_count, c->depth_ud);
    } else {
      mq_setup_done(c);
    }
    return;
  case AMQP_BASIC_CONSUME_OK_METHOD:
    if (mq_is_aux_tag(c, ((amqp_basic_consume_ok_t *)m->decoded)->consumer_tag))
      return;
    c->consume_inflight = 0;
    if (c->cancel_deferred) {
      c->cancel_deferred = 0;
      int err = mq_send_cancel(c);
      if (err)
        mq_drop(c, err);
    }
    return;
  case AMQP_BASIC_QOS_OK_METHOD:
  case AMQP_BASIC_CANCEL_OK_METHOD:
    return;
  case AMQP_BASIC_CANCEL_METHOD:
    /* The broker cancelled our consumer (queue deleted, failover): start over. */
    sm_log_warn("amqp", "broker cancelled the consumer", SM_LI("channel", ch));
    c->consuming = 0;
    mq_drop(c, SM_ECANCELED);
    return;
  case AMQP_BASIC_DELIVER_METHOD: {
    amqp_basic_deliver_t *d = m->decoded;
    if (ch == MQ_CH_CONSUME)
      mq_dtrack_add(c, d->delivery_tag);
    mq_content_begin(c, MQ_CONTENT_DELIVER, ch, d->delivery_tag, d->redelivered, d->routing_key);
    c->in.aux = ch == MQ_CH_CONSUME && mq_is_aux_tag(c, d->consumer_tag);
    return;
  }
  case AMQP_BASIC_RETURN_METHOD: {
    amqp_basic_return_t *r = m->decoded;
    mq_content_begin(c, MQ_CONTENT_RETURN, ch, 0, 0, r->routing_key);
    return;
  }
  case AMQP_BASIC_ACK_METHOD: {
    amqp_basic_ack_t *a = m->decoded;
    if (ch == MQ_CH_PUBLISH)
      mq_confirm(c, a->delivery_tag, a->multiple, 0);
    return;
  }
  case AMQP_BASIC_NACK_METHOD: {
    amqp_basic_nack_t *a = m->decoded;
    if (ch == MQ_CH_PUBLISH)
      mq_confirm(c, a->delivery_tag, a->multiple, SM_EIO);
    return;
  }
  case AMQP_CHANNEL_FLOW_METHOD: {
    amqp_channel_flow_t *fl = m->decoded;
    amqp_channel_flow_ok_t ok = {.active = fl->active};
    int err = mq_send_method(c, ch, AMQP_CHANNEL_FLOW_OK_METHOD, &ok);
    if (err)
      mq_drop(c, err);
    return;
  }
  default:
    sm_log_debug("amqp", "unhandled method", SM_LI("channel", ch), SM_LI("method", m->id));
    return;
  }
}

static void mq_on_handshake_frame(mq_conn *c, amqp_frame_t *f);

static void mq_on_frame(mq_conn *c, amqp_frame_t *f) {
  if (c->phase == MQ_HANDSHAKE) {
    mq_on_handshake_frame(c, f);
    return;
  }
  switch (f->frame_type) {
  case AMQP_FRAME_METHOD:
    mq_on_method(c, f->channel, &f->payload.method);
    break;
  case AMQP_FRAME_HEADER:
    mq_content_header(c, f);
    break;
  case AMQP_FRAME_BODY:
    mq_content_body(c, f);
    break;
  default:
    break;
  }
}

/* Reads every frame the library can produce without waiting. Deliveries are bounded by the
 * prefetch and confirms by max_unconfirmed, so one call does a bounded amount of work. */
static void mq_drain(mq_conn *c) {
  /* Heartbeat frames are swallowed by rabbitmq-c, so "the broker sent something" is read off the
   * socket: this drain may consume bytes that no readable event will report. */
  char peek;
  if (c->sock && recv(c->sock->fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT) > 0)
    c->last_recv_ms = uv_now(c->loop);
  while (!c->destroyed && (c->phase == MQ_HANDSHAKE || c->phase == MQ_SETUP || c->phase == MQ_UP)) {
    amqp_frame_t f;
    struct timeval tv = {0, 0};
    int r = amqp_simple_wait_frame_noblock(c->st, &f, &tv);
    if (r == AMQP_STATUS_TIMEOUT)
      break;
    if (r != AMQP_STATUS_OK) {
      mq_drop(c, mq_err_from_amqp(r));
      return;
    }
    mq_on_frame(c, &f);
  }
  if (!c->destroyed && c->st &&
      (c->phase == MQ_HANDSHAKE || c->phase == MQ_SETUP || c->phase == MQ_UP))
    amqp_maybe_release_buffers(c->st);
}

static int mq_input_pending(mq_conn *c) {
  return c->st && (amqp_frames_enqueued(c->st) || amqp_data_in_buffer(c->st));
}

/* Start of the turn after frames were queued: what the library holds is read, the queued acks
 * become frames, and the turn's frames leave in one send(). */
static void mq_flush_now(mq_conn *c) {
  for (int i = 0; i < 4 && mq_input_pending(c); i++)
    mq_drain(c);
  if (c->phase != MQ_HANDSHAKE && c->phase != MQ_SETUP && c->phase != MQ_UP)
    return;
  int err = mq_emit_acks(c);
  if (err) {
    mq_drop(c, err); /* acks not written: the broker redelivers, never an early ack */
    return;
  }
  mq_out_write(c);
}

static void mq_on_flush(uv_idle_t *h) {
  mq_conn *c = h->data;
  c->flush_armed = 0;
  uv_idle_stop(&c->flush);
  mq_flush_now(c);
}

static void mq_on_io(uv_poll_t *h, int status, int events) {
  mq_conn *c = h->data;
  if (status < 0) {
    mq_drop(c, sm_err_from_uv(status));
    return;
  }
  if (events & UV_READABLE) {
    c->last_recv_ms = uv_now(c->loop);
    mq_drain(c);
  }
  /* Room again: what queued meanwhile (acks included) leaves now; no idle flush is armed while
   * the socket is full. */
  if ((events & UV_WRITABLE) && c->sock && c->want_write)
    mq_flush_now(c);
}

/* ---- connecting --------------------------------------------------------------------------- */

static int mq_send_setup(mq_conn *c) {
  amqp_channel_open_t co;
  memset(&co, 0, sizeof co);
  for (uint16_t ch = MQ_CH_CONSUME; ch <= MQ_CH_DEPTH; ch++) {
    int err = mq_send_method(c, ch, AMQP_CHANNEL_OPEN_METHOD, &co);
    if (err)
      return err;
  }
  amqp_confirm_select_t cs = {.nowait = 0};
  int err = mq_send_method(c, MQ_CH_PUBLISH, AMQP_CONFIRM_SELECT_METHOD, &cs);
  if (err)
    return err;
  const char *queues[3] = {c->cmd_q, c->dlq, c->res_q};
  for (int i = 0; i < 3; i++) {
    amqp_queue_declare_t qd = {
        .ticket = 0,
        .queue = amqp_cstring_bytes(queues[i]),
        .passive = 0,
        .durable = 1,
        .exclusive = 0,
        .auto_delete = 0,
        .nowait = 0,
        .arguments = amqp_empty_table,
    };
    err = mq_send_method(c, MQ_CH_PUBLISH, AMQP_QUEUE_DECLARE_METHOD, &qd);
    if (err)
      return err;
  }
  int n_aux = 0;
  const char *aux[2] = {c->aux_q, c->aux_reply_q};
  for (int i = 0; i < 2; i++) {
    if (aux[i] == NULL)
      continue;
    amqp_queue_declare_t qd = {
        .ticket = 0,
        .queue = amqp_cstring_bytes(aux[i]),
        .passive = 0,
        .durable = 0, /* as SiriusScan's UI declares its queues */
        .exclusive = 0,
        .auto_delete = 0,
        .nowait = 0,
        .arguments = amqp_empty_table,
    };
    err = mq_send_method(c, MQ_CH_PUBLISH, AMQP_QUEUE_DECLARE_METHOD, &qd);
    if (err)
      return err;
    n_aux++;
  }
  c->setup_pending = 3 + 1 + 3 + n_aux;
  assert(c->n_pending == 0);
  c->next_tag = 0;
  c->p_low = 1;
  return 0;
}

/* ---- the handshake, driven by frames like everything else --------------------------------
 *
 * What amqp_login does, without its blocking reads: the protocol header goes out once the TCP
 * connection is up; each reply (start, tune, open-ok) arrives through mq_drain and sends the next
 * request. The deadline timer bounds the whole exchange. */

/* Whether the space-separated list of SASL mechanisms names `want`. */
static int mq_mechanism_offered(amqp_bytes_t list, const char *want) {
  size_t wl = strlen(want), i = 0;
  const char *b = list.bytes;
  while (i < list.len) {
    size_t j = i;
    while (j < list.len && b[j] != ' ')
      j++;
    if (j - i == wl && memcmp(b + i, want, wl) == 0)
      return 1;
    i = j + 1;
  }
  return 0;
}

static amqp_table_entry_t mq_utf8_entry(const char *key, const char *value) {
  amqp_table_entry_t e;
  memset(&e, 0, sizeof e);
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_cstring_bytes(value);
  return e;
}

static amqp_table_entry_t mq_bool_entry(const char *key, int value) {
  amqp_table_entry_t e;
  memset(&e, 0, sizeof e);
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
  e.value.value.boolean = value ? 1 : 0;
  return e;
}

/* connection.start -> start-ok with SASL PLAIN ("\0user\0password") and the client properties
 * rabbitmq-c's amqp_login sends (authentication_failure_close makes a bad login a 403 close). */
static int mq_on_conn_start(mq_conn *c, const amqp_connection_start_t *st) {
  if (st->version_major != AMQP_PROTOCOL_VERSION_MAJOR ||
      st->version_minor != AMQP_PROTOCOL_VERSION_MINOR)
    return SM_EPROTO;
  if (!mq_mechanism_offered(st->mechanisms, "PLAIN")) {
    sm_log_error("amqp", "broker does not offer SASL PLAIN");
    return SM_EAUTH;
  }
  size_t ul = strlen(c->info.user), pl = strlen(c->info.password);
  char *resp = sm_malloc(ul + pl + 2);
  if (!resp)
    return SM_ENOMEM;
  resp[0] = '\0';
  memcpy(resp + 1, c->info.user, ul);
  resp[1 + ul] = '\0';
  memcpy(resp + 2 + ul, c->info.password, pl);

  amqp_table_entry_t caps[2] = {mq_bool_entry("authentication_failure_close", 1),
                                mq_bool_entry("exchange_exchange_bindings", 1)};
  amqp_table_entry_t props[3] = {mq_utf8_entry("product", "rabbitmq-c"),
                                 mq_utf8_entry("version", AMQP_VERSION_STRING)};
  memset(&props[2], 0, sizeof props[2]);
  props[2].key = amqp_cstring_bytes("capabilities");
  props[2].value.kind = AMQP_FIELD_KIND_TABLE;
  props[2].value.value.table = (amqp_table_t){.num_entries = 2, .entries = caps};
  amqp_connection_start_ok_t ok = {
      .client_properties = {.num_entries = 3, .entries = props},
      .mechanism = amqp_cstring_bytes("PLAIN"),
      .response = {.len = ul + pl + 2, .bytes = resp},
      .locale = amqp_cstring_bytes("en_US"),
  };
  int err = mq_send_method(c, 0, AMQP_CONNECTION_START_OK_METHOD, &ok);
  free(resp);
  return err;
}

/* connection.tune -> tune-ok with the smaller of each limit (as amqp_login negotiates), then
 * connection.open of the vhost. */
static int mq_on_conn_tune(mq_conn *c, const amqp_connection_tune_t *t) {
  uint16_t channel_max = t->channel_max ? t->channel_max : UINT16_MAX;
  uint32_t frame_max = MQ_FRAME_MAX;
  if (t->frame_max != 0 && t->frame_max < frame_max)
    frame_max = t->frame_max;
  uint16_t hb = c->heartbeat_req > UINT16_MAX ? UINT16_MAX : (uint16_t)c->heartbeat_req;
  if (t->heartbeat != 0 && t->heartbeat < hb)
    hb = t->heartbeat;
  /* Heartbeat 0 for the library: it must never write on its own (see the top of this file). */
  int r = amqp_tune_connection(c->st, channel_max, (int)frame_max, 0);
  if (r != AMQP_STATUS_OK)
    return mq_err_from_amqp(r);
  amqp_connection_tune_ok_t ok = {
      .channel_max = channel_max, .frame_max = frame_max, .heartbeat = hb};
  int err = mq_send_method(c, 0, AMQP_CONNECTION_TUNE_OK_METHOD, &ok);
  if (err)
    return err;
  c->hb = hb;
  c->frame_max = frame_max;
  amqp_connection_open_t op = {
      .virtual_host = amqp_cstring_bytes(c->info.vhost),
      .capabilities = amqp_empty_bytes,
      .insist = 1,
  };
  return mq_send_method(c, 0, AMQP_CONNECTION_OPEN_METHOD, &op);
}

static void mq_on_handshake_frame(mq_conn *c, amqp_frame_t *f) {
  assert(c->phase == MQ_HANDSHAKE);
  if (f->frame_type == AMQP_FRAME_HEARTBEAT)
    return;
  if (f->frame_type != AMQP_FRAME_METHOD || f->channel != 0) {
    mq_drop(c, SM_EPROTO);
    return;
  }
  amqp_method_t *m = &f->payload.method;
  if (m->id == AMQP_CONNECTION_CLOSE_METHOD) {
    /* Refused: bad credentials (403), vhost not allowed (530), ... */
    amqp_connection_close_t *cl = m->decoded;
    char text[256];
    size_t n = cl->reply_text.len < sizeof text - 1 ? cl->reply_text.len : sizeof text - 1;
    memcpy(text, cl->reply_text.bytes, n);
    text[n] = 0;
    sm_log_warn("amqp", "broker refused the connection", SM_LI("code", cl->reply_code),
                SM_LS("reason", text));
    int err = cl->reply_code == 403 || cl->reply_code == 530 ? SM_EAUTH : SM_EPROTO;
    amqp_connection_close_ok_t ok;
    memset(&ok, 0, sizeof ok);
    if (mq_send_method(c, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok) != 0)
      sm_log_debug("amqp", "close-ok not sent");
    mq_drop(c, err);
    return;
  }
  int err = SM_EPROTO;
  switch (c->hs) {
  case MQ_HS_START:
    if (m->id == AMQP_CONNECTION_START_METHOD)
      err = mq_on_conn_start(c, m->decoded);
    if (!err)
      c->hs = MQ_HS_TUNE;
    break;
  case MQ_HS_TUNE:
    if (m->id == AMQP_CONNECTION_TUNE_METHOD)
      err = mq_on_conn_tune(c, m->decoded);
    if (!err)
      c->hs = MQ_HS_OPEN_OK;
    break;
  case MQ_HS_OPEN_OK:
    if (m->id == AMQP_CONNECTION_OPEN_OK_METHOD) {
      c->phase = MQ_SETUP;
      err = mq_send_setup(c);
    }
    break;
  }
  if (err)
    mq_drop(c, err);
}

/* The TCP connection is up: hand the socket to rabbitmq-c and send the protocol header. */
static int mq_handshake_begin(mq_conn *c) {
  c->st = amqp_new_connection();
  if (!c->st)
    return SM_ENOMEM;
  amqp_socket_t *s = amqp_tcp_socket_new(c->st);
  if (!s)
    return SM_ENOMEM;
  amqp_tcp_socket_set_sockfd(s, c->sock->fd);
  c->lib_owns_fd = 1;
  c->hs = MQ_HS_START;
  c->hb = 0;
  c->frame_max = MQ_FRAME_MAX;
  static const char header[8] = {'A',
                                 'M',
                                 'Q',
                                 'P',
                                 0,
                                 AMQP_PROTOCOL_VERSION_MAJOR,
                                 AMQP_PROTOCOL_VERSION_MINOR,
                                 AMQP_PROTOCOL_VERSION_REVISION};
  int err = mq_out_reserve(c, sizeof header);
  if (err)
    return err;
  memcpy(c->ob + c->ob_len, header, sizeof header);
  c->ob_len += sizeof header;
  mq_out_kick(c);
  return 0;
}

static void mq_try_next_address(mq_conn *c);

static void mq_on_connect_poll(uv_poll_t *h, int status, int events) {
  mq_conn *c = h->data;
  (void)events;
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (status < 0)
    soerr = ECONNREFUSED;
  else if (getsockopt(c->sock->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
    soerr = errno;
  if (soerr) {
    /* This address failed: close its socket and try the next one. */
    uv_poll_stop(&c->sock->poll);
    c->sock->poll.data = c->sock;
    uv_close((uv_handle_t *)&c->sock->poll, mq_on_sock_closed);
    close(c->sock->fd);
    c->sock = NULL;
    c->connect_err = sm_err_from_errno(soerr);
    c->ai_cur = c->ai_cur ? c->ai_cur->ai_next : NULL;
    mq_try_next_address(c);
    return;
  }
  uv_poll_stop(&c->sock->poll);
  uv_freeaddrinfo(c->ai_list);
  c->ai_list = c->ai_cur = NULL;
  c->phase = MQ_HANDSHAKE;
  int err = mq_handshake_begin(c);
  if (err) {
    mq_drop(c, err);
    return;
  }
  c->sock->poll.data = c;
  uv_poll_start(&c->sock->poll, UV_READABLE, mq_on_io);
  c->last_recv_ms = uv_now(c->loop);
}

static void mq_try_next_address(mq_conn *c) {
  for (; c->ai_cur; c->ai_cur = c->ai_cur->ai_next) {
    struct addrinfo *ai = c->ai_cur;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      continue;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      c->connect_err = sm_err_from_errno(errno);
      close(fd);
      continue;
    }
    mq_sock *s = sm_calloc(1, sizeof *s);
    if (!s || uv_poll_init(c->loop, &s->poll, fd) != 0) {
      free(s);
      close(fd);
      mq_drop(c, SM_ENOMEM);
      return;
    }
    s->fd = fd;
    s->poll.data = c;
    c->sock = s;
    uv_poll_start(&s->poll, UV_WRITABLE, mq_on_connect_poll);
    return;
  }
  mq_drop(c, c->connect_err ? c->connect_err : SM_EIO);
}

static void mq_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  mq_conn *c = req->data;
  c->gai_busy = 0;
  if (c->destroyed || c->phase != MQ_RESOLVING) {
    uv_freeaddrinfo(res);
    mq_maybe_free(c);
    return;
  }
  if (status < 0) {
    mq_drop(c, SM_EADDR);
    return;
  }
  c->ai_list = c->ai_cur = res;
  c->connect_err = 0;
  c->phase = MQ_CONNECTING;
  mq_try_next_address(c);
}

static void mq_on_deadline(uv_timer_t *t) {
  mq_drop(t->data, SM_ETIMEDOUT);
}

static void mq_start_attempt(mq_conn *c) {
  char port[16];
  snprintf(port, sizeof port, "%d", c->info.port);
  if (c->gai_busy) {
    /* A cancelled lookup has not returned yet: the request struct is still in use. */
    c->phase = MQ_WAIT_RETRY;
    uv_timer_start(&c->retry_timer, mq_on_retry_timer, 50, 0);
    return;
  }
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  c->phase = MQ_RESOLVING;
  c->gai.data = c;
  uv_timer_start(&c->deadline_timer, mq_on_deadline, c->connect_timeout_ms, 0);
  int r = uv_getaddrinfo(c->loop, &c->gai, mq_on_resolved, c->info.host, port, &hints);
  if (r != 0) {
    mq_drop(c, SM_EADDR);
    return;
  }
  c->gai_busy = 1;
}

static void mq_on_retry_timer(uv_timer_t *t) {
  mq_conn *c = t->data;
  if (c->drop_err) {
    int err = c->drop_err;
    c->drop_err = 0;
    mq_drop(c, err);
    return;
  }
  if (c->phase == MQ_WAIT_RETRY)
    mq_start_attempt(c);
}

static void mq_schedule_retry(mq_conn *c) {
  double d = c->backoff_min_s;
  for (unsigned i = 1; i < c->attempt && d < c->backoff_max_s; i++)
    d *= 2;
  if (d > c->backoff_max_s)
    d = c->backoff_max_s;
  d *= 0.5 + 0.5 * mq_rand01(c); /* jitter: many managers must not reconnect in step */
  uv_timer_start(&c->retry_timer, mq_on_retry_timer, (uint64_t)(d * 1000.0), 0);
}

/* ---- public API --------------------------------------------------------------------------- */

static void mq_on_handle_closed(uv_handle_t *h) {
  mq_conn *c = h->data;
  c->open_handles--;
  mq_maybe_free(c);
}

static void mq_maybe_free(mq_conn *c) {
  if (!c->destroyed || c->open_handles > 0 || c->gai_busy)
    return;
  empty_amqp_pool(&c->in.pool);
  free(c->ob);
  free(c->pring);
  free(c->dring);
  free(c->url_buf);
  free(c->cmd_q);
  free(c->dlq);
  free(c->res_q);
  free(c->consume_queue);
  free(c->aux_q);
  free(c->aux_reply_q);
  free(c);
}

int mq_conn_create(uv_loop_t *loop, const mq_conn_opts *opts, mq_conn **out) {
  if (!loop || !opts || !opts->url || !out)
    return SM_EINVAL;
  mq_conn *c = sm_calloc(1, sizeof *c);
  if (!c)
    return SM_ENOMEM;
  c->loop = loop;
  const char *cq = opts->command_queue ? opts->command_queue : "agent-commands";
  const char *rq = opts->result_queue ? opts->result_queue : "agent-results";
  c->url_buf = sm_strdup(opts->url);
  c->cmd_q = sm_strdup(cq);
  c->res_q = sm_strdup(rq);
  c->dlq = sm_malloc(strlen(cq) + 5);
  if (!c->url_buf || !c->cmd_q || !c->res_q || !c->dlq) {
    free(c->url_buf), free(c->cmd_q), free(c->res_q), free(c->dlq), free(c);
    return SM_ENOMEM;
  }
  sprintf(c->dlq, "%s.dlq", cq);
  if (opts->aux_queue && *opts->aux_queue) {
    c->aux_q = sm_strdup(opts->aux_queue);
    c->aux_reply_q =
        opts->aux_reply_queue && *opts->aux_reply_queue ? sm_strdup(opts->aux_reply_queue) : NULL;
    if (!c->aux_q || (opts->aux_reply_queue && *opts->aux_reply_queue && !c->aux_reply_q)) {
      free(c->aux_q), free(c->aux_reply_q);
      free(c->url_buf), free(c->cmd_q), free(c->res_q), free(c->dlq), free(c);
      return SM_ENOMEM;
    }
    c->aux_prefetch = opts->aux_prefetch ? opts->aux_prefetch : 64;
  }
  amqp_default_connection_info(&c->info);
  if (amqp_parse_url(c->url_buf, &c->info) != AMQP_STATUS_OK || c->info.ssl || !*c->cmd_q ||
      !*c->res_q) {
    free(c->aux_q), free(c->aux_reply_q);
    free(c->url_buf), free(c->cmd_q), free(c->res_q), free(c->dlq), free(c);
    return SM_EINVAL;
  }
  /* "amqp://host/" names the default vhost "/" as every common client reads it. */
  if (!c->info.vhost || !*c->info.vhost)
    c->info.vhost = (char *)"/";
  c->heartbeat_req = opts->heartbeat_s ? opts->heartbeat_s : 30;
  c->connect_timeout_ms =
      (uint64_t)((opts->connect_timeout_s > 0 ? opts->connect_timeout_s : 5.0) * 1000.0);
  c->backoff_min_s = opts->backoff_min_s > 0 ? opts->backoff_min_s : 0.2;
  c->backoff_max_s = opts->backoff_max_s > 0 ? opts->backoff_max_s : 30.0;
  if (c->backoff_max_s < c->backoff_min_s)
    c->backoff_max_s = c->backoff_min_s;
  c->depth_interval_ms =
      opts->depth_interval_s < 0
          ? 0
          : (uint64_t)((opts->depth_interval_s > 0 ? opts->depth_interval_s : 5.0) * 1000.0);
  c->max_unconfirmed = opts->max_unconfirmed ? opts->max_unconfirmed : 4096;
  c->max_message_bytes = opts->max_message_bytes ? opts->max_message_bytes : (16u << 20);
  c->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ULL;
  if (!c->rng)
    c->rng = 1;
  init_amqp_pool(&c->in.pool, 4096);
  c->frame_max = MQ_FRAME_MAX;
  c->p_low = 1;
  c->d_low = c->d_next = 1;

  uv_timer_t *timers[4] = {&c->retry_timer, &c->deadline_timer, &c->hb_timer, &c->depth_timer};
  for (int i = 0; i < 4; i++) {
    uv_timer_init(loop, timers[i]);
    timers[i]->data = c;
  }
  uv_idle_init(loop, &c->flush);
  c->flush.data = c;
  c->open_handles = 5;
  c->phase = MQ_IDLE;
  *out = c;
  return 0;
}

int mq_conn_start(mq_conn *c) {
  if (!c || c->phase != MQ_IDLE)
    return SM_ESTATE;
  mq_start_attempt(c);
  return 0;
}

void mq_conn_destroy(mq_conn *c) {
  if (!c || c->destroyed)
    return;
  if (c->phase == MQ_UP || c->phase == MQ_SETUP) {
    /* Best effort polite close: no wait for close-ok; unacked deliveries return to the queue. */
    amqp_connection_close_t cl;
    memset(&cl, 0, sizeof cl);
    cl.reply_code = AMQP_REPLY_SUCCESS;
    cl.reply_text = amqp_cstring_bytes("shutdown");
    /* The queued acks are of durable work: write them before the close, in one send. */
    if ((c->phase != MQ_UP || mq_emit_acks(c) == 0) &&
        mq_out_method(c, 0, AMQP_CONNECTION_CLOSE_METHOD, &cl) == 0 && c->sock)
      (void)send(c->sock->fd, c->ob + c->ob_off, c->ob_len - c->ob_off, MSG_NOSIGNAL);
  }
  c->destroyed = 1;
  if (c->phase == MQ_RESOLVING && c->gai_busy)
    uv_cancel((uv_req_t *)&c->gai);
  c->phase = MQ_CLOSED;
  mq_teardown_socket(c);
  mq_content_reset(c);
  mq_fail_pending(c, SM_ECANCELED);
  uv_handle_t *hs[5] = {(uv_handle_t *)&c->retry_timer, (uv_handle_t *)&c->deadline_timer,
                        (uv_handle_t *)&c->hb_timer, (uv_handle_t *)&c->depth_timer,
                        (uv_handle_t *)&c->flush};
  for (int i = 0; i < 5; i++)
    uv_close(hs[i], mq_on_handle_closed);
}

int mq_conn_on_state(mq_conn *c, mq_state_cb cb, void *ud) {
  if (!c || !cb)
    return SM_EINVAL;
  if (c->n_ls >= MQ_MAX_LISTENERS)
    return SM_ELIMIT;
  c->ls[c->n_ls].cb = cb;
  c->ls[c->n_ls].ud = ud;
  c->n_ls++;
  return 0;
}

void mq_conn_off_state(mq_conn *c, mq_state_cb cb, void *ud) {
  for (int i = 0; i < c->n_ls; i++) {
    if (c->ls[i].cb == cb && c->ls[i].ud == ud) {
      memmove(&c->ls[i], &c->ls[i + 1], sizeof c->ls[0] * (size_t)(c->n_ls - i - 1));
      c->n_ls--;
      return;
    }
  }
}

void mq_conn_set_consumer(mq_conn *c, mq_deliver_cb cb, void *ud) {
  c->deliver_cb = cb;
  c->deliver_ud = ud;
}

void mq_conn_set_aux_consumer(mq_conn *c, mq_deliver_cb cb, void *ud) {
  c->aux_cb = cb;
  c->aux_ud = ud;
}

void mq_conn_on_depth(mq_conn *c, mq_depth_cb cb, void *ud) {
  c->depth_cb = cb;
  c->depth_ud = ud;
}

int mq_conn_is_up(const mq_conn *c) {
  return c && c->phase == MQ_UP;
}

uint64_t mq_conn_generation(const mq_conn *c) {
  return c->gen;
}

int mq_conn_queue_depth(const mq_conn *c, uint64_t *messages) {
  if (!c->depth_known)
    return SM_EAGAIN;
  *messages = c->depth;
  return 0;
}

const char *mq_conn_command_queue(const mq_conn *c) {
  return c->cmd_q;
}

const char *mq_conn_result_queue(const mq_conn *c) {
  return c->res_q;
}

size_t mq_conn_unconfirmed(const mq_conn *c) {
  return c->n_pending;
}

int mq_conn_publish(mq_conn *c, const char *queue, mq_slice body, const mq_props *props,
                    mq_publish_cb cb, void *ud) {
  if (!c || !queue || (body.len && !body.base))
    return SM_EINVAL;
  if (c->phase != MQ_UP || c->drop_err)
    return SM_ECLOSED;
  if (c->n_pending >= c->max_unconfirmed)
    return SM_ELIMIT;
  if (mq_pring_fit(c, c->next_tag + 2 - c->p_low) != 0)
    return SM_ENOMEM;
  amqp_basic_properties_t bp;
  memset(&bp, 0, sizeof bp);
  amqp_table_entry_t stack_entries[16];
  amqp_table_entry_t *entries = stack_entries;
  if (props) {
    if (props->content_type.len) {
      bp._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
      bp.content_type = mq_bytes_of(props->content_type);
    }
    if (props->reply_to.len) {
      bp._flags |= AMQP_BASIC_REPLY_TO_FLAG;
      bp.reply_to = mq_bytes_of(props->reply_to);
    }
    if (props->correlation_id.len) {
      bp._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
      bp.correlation_id = mq_bytes_of(props->correlation_id);
    }
    if (props->message_id.len) {
      bp._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
      bp.message_id = mq_bytes_of(props->message_id);
    }
    if (props->persistent) {
      bp._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
      bp.delivery_mode = 2;
    }
    if (props->n_headers) {
      if (props->n_headers > 16) {
        entries = sm_calloc(props->n_headers, sizeof *entries);
        if (!entries)
          return SM_ENOMEM;
      }
      for (size_t i = 0; i < props->n_headers; i++) {
        entries[i].key = mq_bytes_of(props->headers[i].key);
        entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[i].value.value.bytes = mq_bytes_of(props->headers[i].value);
      }
      bp._flags |= AMQP_BASIC_HEADERS_FLAG;
      bp.headers.num_entries = (int)props->n_headers;
      bp.headers.entries = entries;
    }
  }
  int err = mq_out_publish(c, queue, &bp, body);
  if (entries != stack_entries)
    free(entries);
  if (err)
    return err == SM_ENOMEM ? SM_ENOMEM : SM_EINVAL; /* nothing was queued */
  uint64_t tag = ++c->next_tag;
  mq_pending *p = &c->pring[tag & (c->pcap - 1)];
  assert(!p->live);
  p->cb = cb;
  p->ud = ud;
  p->live = 1;
  c->stats.publishes++;
  c->n_pending++;
  return 0;
}

int mq_conn_consume(mq_conn *c, const char *queue, uint16_t prefetch) {
  if (!c || !queue || !*queue)
    return SM_EINVAL;
  char *q = sm_strdup(queue);
  if (!q)
    return SM_ENOMEM;
  free(c->consume_queue);
  c->consume_queue = q;
  c->prefetch = prefetch;
  c->consume_wanted = 1;
  if (c->phase != MQ_UP || c->drop_err)
    return 0;
  if (c->cancel_deferred) { /* stopped and wanted again before consume-ok: keep that consumer */
    c->cancel_deferred = 0;
    c->consuming = 1;
    return 0;
  }
  if (c->consuming)
    return 0;
  int err = mq_send_consume(c);
  if (err) {
    mq_defer_drop(c, err);
    return SM_EIO;
  }
  return 0;
}

int mq_conn_consume_stop(mq_conn *c) {
  if (!c)
    return SM_EINVAL;
  c->consume_wanted = 0;
  if (c->phase != MQ_UP || !c->consuming || c->drop_err)
    return 0;
  if (c->consume_inflight) {
    c->cancel_deferred = 1;
    c->consuming = 0;
    return 0;
  }
  int err = mq_send_cancel(c);
  if (err) {
    mq_defer_drop(c, err);
    return SM_EIO;
  }
  c->consuming = 0;
  return 0;
}

static int mq_ack_common(mq_conn *c, uint64_t gen, uint64_t tag, int ack, int requeue) {
  if (!c)
    return SM_EINVAL;
  if (c->phase != MQ_UP || gen != c->gen || c->drop_err)
    return SM_ECLOSED;
  int st = mq_dtrack_state(c, tag);
  if (st == MQ_D_SETTLED || st == MQ_D_ACK_QUEUED)
    return SM_ENOENT; /* settled twice: the broker would close the channel */
  if (st == MQ_D_UNSETTLED && ack) {
    /* Queued: the flush at the end of the turn coalesces the turn's acks. */
    c->dring[tag & (c->dcap - 1)] = MQ_D_ACK_QUEUED;
    c->acks_queued++;
    if (tag > c->ack_max)
      c->ack_max = tag;
    mq_out_kick(c);
    return 0;
  }
  int err;
  if (ack) {
    err = mq_out_ack(c, tag, 0); /* not tracked (tracking off): a single ack is always right */
    if (!err)
      c->stats.deliveries_acked++;
  } else {
    amqp_basic_nack_t n = {.delivery_tag = tag, .multiple = 0, .requeue = requeue ? 1 : 0};
    err = mq_out_method(c, MQ_CH_CONSUME, AMQP_BASIC_NACK_METHOD, &n);
    if (!err)
      c->stats.nacks_sent++;
  }
  if (err) {
    mq_defer_drop(c, err);
    return SM_EIO;
  }
  if (st == MQ_D_UNSETTLED) {
    c->dring[tag & (c->dcap - 1)] = MQ_D_SETTLED;
    mq_dlow_advance(c);
  }
  return 0;
}

int mq_conn_ack(mq_conn *c, uint64_t gen, uint64_t tag) {
  return mq_ack_common(c, gen, tag, 1, 0);
}

int mq_conn_nack(mq_conn *c, uint64_t gen, uint64_t tag, int requeue) {
  return mq_ack_common(c, gen, tag, 0, requeue);
}

void mq_conn_get_stats(const mq_conn *c, mq_conn_stats *out) {
  *out = c->stats;
}
