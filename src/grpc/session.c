/* session.c - gRPC over one nghttp2 server session (see session.h and call.h).
 *
 * Context tree: session -> calls (one per stream, attached with
 * nghttp2_session_set_stream_user_data, freed in on_stream_close). A call's response messages
 * wait in its own queue until nghttp2 pulls them through the data provider; the queue counts
 * against the connection's output limit, so a peer that stops reading (or stops granting
 * window) cannot grow memory past GRPC_MAX_OUTPUT_BYTES.
 */
#include "grpc/session.h"

#include "grpc/frame.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/log.h"

#include <assert.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define MSG_MAX 512 /* longest grpc-message we send (after percent-encoding) */
/* A request header list past GRPC_MAX_HEADER_LIST_BYTES is answered RESOURCE_EXHAUSTED; past this
 * many times that (an HPACK bomb: one byte naming a 4 KiB table entry, thousands of times) the
 * rest of the block is skipped undecoded and the stream reset, so that the bytes a peer sends
 * cannot make us validate 4000 times as many. */
#define HEADER_BOMB_FACTOR 4

typedef struct out_chunk {
  sm_list node; /* on the call's output queue */
  size_t len;   /* bytes in data */
  size_t off;   /* bytes already handed to nghttp2 */
  uint8_t data[];
} out_chunk;

struct grpc_call {
  grpc_session *s;
  sm_list node; /* on the session's calls */
  int32_t stream_id;
  const grpc_service *service;
  const grpc_method *method;
  void *data; /* the handler's */

  /* request headers, gathered until END_HEADERS */
  char *path;
  size_t header_bytes; /* name + value + 32 per field, as SETTINGS_MAX_HEADER_LIST_SIZE */
  char *encoding;      /* grpc-encoding when not identity */
  char *meta;          /* custom metadata: "name\0value\0" pairs */
  size_t meta_len;
  uint64_t timeout_ms; /* grpc-timeout (when has_timeout) */
  unsigned post : 1, ct_ok : 1, te_ok : 1, timeout_bad : 1, headers_too_big : 1, has_timeout : 1;

  /* request messages */
  grpc_frame_reader reader;
  uint32_t messages;
  /* A unary method's request message waits here until END_STREAM (a second message must be
   * refused before the method answers); held is NULL for an empty message. */
  uint8_t *held;
  size_t held_len, held_cap;
  unsigned held_msg : 1;
  size_t charged;            /* reader.buf_cap + held_cap as counted in the session and pool */
  uint64_t partial_since_ms; /* first byte of the request message not yet complete; 0: none */

  /* state */
  unsigned started : 1;         /* dispatched to the method (on_close is owed) */
  unsigned headers_sent : 1;    /* response headers submitted */
  unsigned finishing : 1;       /* status set: no more messages either way */
  unsigned trailers_sent : 1;   /* the END_STREAM HEADERS frame went out */
  unsigned accept_encoding : 1; /* add grpc-accept-encoding to the trailers */
  int status;
  char *message; /* percent-encoded; allocated when the call finishes with one */

  /* response messages waiting for nghttp2 */
  sm_list out; /* out_chunk.node, in order */
  size_t out_bytes;

  uint64_t deadline_ms;  /* from grpc-timeout (absolute); 0: none */
  uint64_t timer_due_ms; /* the handler's grpc_call_set_timeout (absolute); 0: none */
  int timer_status;
  const char *timer_message; /* the handler's, kept alive by it */
};

/* Allocations of at least this size bypass malloc (see the allocator below). */
#define SESSION_BIG_MIN 4096
/* Of those, buffers at least this large are nghttp2's outbound frame buffer, whose content is
 * dead between frames; only they are trimmed (the others, e.g. the stream map, hold state). */
#define SESSION_TRIM_MIN 16384
#define SESSION_BIG_MAX 4
/* A connection that has not written for this long gets its big buffers trimmed (once per quiet
 * spell); busy connections are never trimmed. */
#define SESSION_TRIM_QUIET_MS 1000

struct grpc_session {
  nghttp2_session *h2;
  const grpc_session_config *cfg;
  const grpc_session_io *io;
  void *io_ud;
  sm_list calls; /* grpc_call.node: open streams that have a call */
  size_t ncalls;
  size_t queued;             /* response bytes in the calls' queues */
  uint64_t last_recv_ms;     /* last bytes from the peer */
  uint64_t idle_since_ms;    /* when the last call ended (or the session began) */
  uint64_t ping_sent_ms;     /* keepalive PING outstanding since; 0: none */
  uint64_t stalled_since_ms; /* output over the maximum since; 0: not */
  uint64_t timer_due_ms;     /* what the transport's timer is set to; 0: not set */
  uint64_t started_ms;       /* when the session began (the preface deadline counts from it) */
  unsigned draining : 1, closing : 1, dead : 1, destroying : 1;
  unsigned greeted : 1; /* the client's preface and first frame (its SETTINGS) arrived */
  /* nghttp2's large buffers (its 16 KiB outbound frame buffer above all) live in their own
   * page-aligned mappings so that an idle connection can hand their pages back (see trim). */
  struct {
    void *p;       /* NULL: free slot */
    size_t len;    /* mapped bytes (whole pages) */
    int trimmable; /* the outbound frame buffer (see trim) */
  } big[SESSION_BIG_MAX];
  unsigned creating : 1;  /* inside nghttp2_session_server_new3 */
  uint64_t last_write_ms; /* when the session last produced output */
  unsigned big_dirty : 1; /* a big buffer was written since the last trim */
  unsigned calm : 1;      /* closing with ENHANCE_YOUR_CALM: request data is no longer read */
  size_t buffered;        /* request bytes the calls hold (their `charged`) */
};

#define NV(n, v, flags)                                                                            \
  { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), (flags) }
#define NV_STATIC(n, v)                                                                            \
  {                                                                                                \
    (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1,                                  \
        NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE                               \
  }

static uint64_t now_ms(grpc_session *s) {
  return s->io->now(s->io_ud);
}

static void want_flush(grpc_session *s) {
  if (!s->destroying)
    s->io->want_flush(s->io_ud);
}

/* Asks the transport for a timer at due unless an earlier one is set. */
static void arm(grpc_session *s, uint64_t due) {
  if (s->destroying)
    return;
  if (s->timer_due_ms == 0 || due < s->timer_due_ms) {
    s->timer_due_ms = due;
    s->io->set_timer(s->io_ud, due);
  }
}

/* ---- request buffers ----
 *
 * What a call holds of its request (the reader's buffer, a unary method's message) is counted
 * in the session and in the server's pool, so that peers which send all but the end of large
 * messages cannot make the manager hold more than the bounds. */

/* Brings the session's and the pool's counts in line with what the call holds now. */
static void account(grpc_call *c) {
  grpc_session *s = c->s;
  grpc_buffer_pool *pool = s->cfg->pool;
  size_t now = c->reader.buf_cap + c->held_cap;
  if (now >= c->charged) {
    size_t d = now - c->charged;
    s->buffered += d;
    if (pool)
      pool->used += d;
  } else {
    size_t d = c->charged - now;
    assert(s->buffered >= d && (pool == NULL || pool->used >= d));
    s->buffered -= d;
    if (pool)
      pool->used -= d;
  }
  c->charged = now;
}

/* Frees whatever the call holds of its request; it reads no more request messages. */
static void release_request(grpc_call *c) {
  grpc_frame_reader_finish(&c->reader);
  free(c->held);
  c->held = NULL;
  c->held_cap = c->held_len = 0;
  c->held_msg = 0;
  c->partial_since_ms = 0;
  account(c);
}

/* Bytes the session may add to its request buffers now; *conn_bound says whether the
 * connection's bound (rather than the pool's) is the nearer one. */
static size_t buffer_room(const grpc_session *s, int *conn_bound) {
  size_t room = SIZE_MAX;
  size_t mc = s->cfg->max_buffered_per_conn;
  const grpc_buffer_pool *pool = s->cfg->pool;
  *conn_bound = 0;
  if (mc) {
    room = mc > s->buffered ? mc - s->buffered : 0;
    *conn_bound = 1;
  }
  if (pool && pool->max) {
    size_t g = pool->max > pool->used ? pool->max - pool->used : 0;
    if (g < room) {
      room = g;
      *conn_bound = 0;
    }
  }
  return room;
}

/* Starts or stops the clock of an incomplete request message (GRPC_MESSAGE_TIMEOUT). */
static void track_partial(grpc_call *c) {
  grpc_session *s = c->s;
  if (!grpc_frame_reader_partial(&c->reader) && !c->held_msg) {
    c->partial_since_ms = 0;
    return;
  }
  if (c->partial_since_ms == 0) {
    c->partial_since_ms = now_ms(s);
    if (s->cfg->message_timeout_ms)
      arm(s, c->partial_since_ms + s->cfg->message_timeout_ms);
  }
}

/* ---- calls ---- */

void *grpc_call_service_data(const grpc_call *call) {
  return call->service ? call->service->ud : NULL;
}

void *grpc_call_data(const grpc_call *call) {
  return call->data;
}

void grpc_call_set_data(grpc_call *call, void *data) {
  call->data = data;
}

const char *grpc_call_path(const grpc_call *call) {
  return call->path ? call->path : "";
}

const char *grpc_call_peer(const grpc_call *call) {
  return call->s->io->peer(call->s->io_ud);
}

const char *grpc_call_header(const grpc_call *call, const char *name) {
  size_t off = 0;
  while (off < call->meta_len) {
    const char *n = call->meta + off;
    const char *v = n + strlen(n) + 1;
    if (strcmp(n, name) == 0)
      return v;
    off = (size_t)(v - call->meta) + strlen(v) + 1;
  }
  return NULL;
}

int grpc_call_finished(const grpc_call *call) {
  return call->finishing;
}

/* Copies queued response bytes into nghttp2's frame buffer; sends trailers after the last. */
static ssize_t data_read_cb(nghttp2_session *h2, int32_t stream_id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *user_data);

/* Returns 0, or the nghttp2 error when the trailers could not be queued (out of memory). */
static int submit_trailers(grpc_call *c) {
  char status[12];
  snprintf(status, sizeof(status), "%d", c->status);
  nghttp2_nv nva[3] = {NV("grpc-status", status, NGHTTP2_NV_FLAG_NONE)};
  size_t n = 1;
  if (c->message)
    nva[n++] = (nghttp2_nv)NV("grpc-message", c->message, NGHTTP2_NV_FLAG_NONE);
  if (c->accept_encoding)
    nva[n++] = (nghttp2_nv)NV_STATIC("grpc-accept-encoding", "identity");
  int rv = nghttp2_submit_trailer(c->s->h2, c->stream_id, nva, n);
  if (rv != 0)
    sm_log_debug("grpc", "cannot submit trailers", SM_LS("error", nghttp2_strerror(rv)));
  return rv;
}

/* Response headers with a data provider that serves the call's queue. */
static int submit_headers(grpc_call *c) {
  nghttp2_nv nva[] = {NV_STATIC(":status", "200"), NV_STATIC("content-type", "application/grpc"),
                      NV_STATIC("grpc-accept-encoding", "identity")};
  nghttp2_data_provider prd = {.source.ptr = c, .read_callback = data_read_cb};
  int rv = nghttp2_submit_response(c->s->h2, c->stream_id, nva, sizeof(nva) / sizeof(nva[0]), &prd);
  if (rv != 0)
    return rv == NGHTTP2_ERR_NOMEM ? SM_ENOMEM : SM_ECLOSED;
  c->headers_sent = 1;
  want_flush(c->s);
  return 0;
}

/* Trailers-Only: one HEADERS frame with END_STREAM carrying the status. */
static void submit_trailers_only(grpc_call *c, const char *http_status) {
  char status[12];
  snprintf(status, sizeof(status), "%d", c->status);
  nghttp2_nv nva[5] = {NV(":status", http_status, NGHTTP2_NV_FLAG_NONE),
                       NV_STATIC("content-type", "application/grpc"),
                       NV("grpc-status", status, NGHTTP2_NV_FLAG_NONE)};
  size_t n = 3;
  if (c->message)
    nva[n++] = (nghttp2_nv)NV("grpc-message", c->message, NGHTTP2_NV_FLAG_NONE);
  if (c->accept_encoding)
    nva[n++] = (nghttp2_nv)NV_STATIC("grpc-accept-encoding", "identity");
  int rv = nghttp2_submit_response(c->s->h2, c->stream_id, nva, n, NULL);
  if (rv != 0) {
    /* Out of memory: end the stream with a reset rather than leave it open for good. */
    sm_log_debug("grpc", "cannot submit response", SM_LS("error", nghttp2_strerror(rv)));
    (void)nghttp2_submit_rst_stream(c->s->h2, NGHTTP2_FLAG_NONE, c->stream_id,
                                    NGHTTP2_INTERNAL_ERROR);
  }
  c->headers_sent = 1;
}

static void free_queue(grpc_call *c) {
  sm_list *it;
  while ((it = sm_list_pop_front(&c->out)) != NULL)
    free(SM_LIST_ENTRY(it, out_chunk, node));
  assert(c->s->queued >= c->out_bytes);
  c->s->queued -= c->out_bytes;
  c->out_bytes = 0;
}

/* Ends the call with an HTTP status other than 200 allowed (for requests that are not gRPC). */
static void call_end(grpc_call *c, const char *http_status, int status, const char *message) {
  if (c->finishing || c->s->destroying)
    return;
  c->finishing = 1;
  c->status = status;
  if (message && message[0]) {
    char enc[MSG_MAX];
    grpc_percent_encode(message, enc, sizeof(enc));
    c->message = sm_strdup(enc); /* without it the status still goes out */
  }
  release_request(c); /* no more request messages are read */
  if (c->s->cfg->on_call_end)
    c->s->cfg->on_call_end(c->s->cfg->observer_ud, grpc_call_path(c), c->method != NULL, c->started,
                           status);
  sm_log_debug("grpc", "call finished", SM_LS("path", grpc_call_path(c)),
               SM_LS("peer", grpc_call_peer(c)), SM_LS("status", grpc_status_name(status)),
               SM_LS("message", message ? message : ""));
  if (!c->headers_sent)
    submit_trailers_only(c, http_status);
  else
    nghttp2_session_resume_data(c->s->h2, c->stream_id); /* fails harmlessly if not deferred */
  want_flush(c->s);
}

void grpc_call_finish(grpc_call *call, int status, const char *message) {
  call_end(call, "200", status, message);
}

int grpc_call_send_headers(grpc_call *call) {
  if (call->finishing || call->s->destroying)
    return SM_ECLOSED;
  if (call->headers_sent)
    return 0;
  return submit_headers(call);
}

/* Appends a chunk with room for a message of len bytes and writes its prefix. */
static int call_queue(grpc_call *c, size_t len, out_chunk **out) {
  grpc_session *s = c->s;
  if (c->finishing || s->destroying)
    return SM_ECLOSED;
  if (len > s->cfg->max_message_bytes || len > UINT32_MAX)
    return SM_ETOOBIG;
  if (s->io->output(s->io_ud) + s->queued >= s->cfg->max_output_bytes)
    return SM_EAGAIN;
  if (!c->headers_sent) {
    int err = submit_headers(c);
    if (err)
      return err;
  }
  out_chunk *ch = sm_malloc(sizeof(*ch) + GRPC_FRAME_HEADER_LEN + len);
  if (ch == NULL)
    return SM_ENOMEM;
  ch->len = GRPC_FRAME_HEADER_LEN + len;
  ch->off = 0;
  grpc_frame_header(ch->data, 0, (uint32_t)len);
  sm_list_push_back(&c->out, &ch->node);
  c->out_bytes += ch->len;
  s->queued += ch->len;
  nghttp2_session_resume_data(s->h2, c->stream_id);
  want_flush(s);
  *out = ch;
  return 0;
}

int grpc_call_send_bytes(grpc_call *call, const uint8_t *data, size_t len) {
  out_chunk *ch;
  int err = call_queue(call, len, &ch);
  if (err)
    return err;
  if (len)
    memcpy(ch->data + GRPC_FRAME_HEADER_LEN, data, len);
  return 0;
}

int grpc_call_send(grpc_call *call, const ProtobufCMessage *msg) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  out_chunk *ch;
  int err = call_queue(call, len, &ch);
  if (err)
    return err;
  protobuf_c_message_pack(msg, ch->data + GRPC_FRAME_HEADER_LEN);
  return 0;
}

void grpc_call_set_timeout(grpc_call *call, uint64_t ms, int status, const char *message) {
  if (ms == 0) {
    call->timer_due_ms = 0;
    return;
  }
  call->timer_due_ms = now_ms(call->s) + ms;
  call->timer_status = status;
  call->timer_message = message;
  arm(call->s, call->timer_due_ms);
}

static ssize_t data_read_cb(nghttp2_session *h2, int32_t stream_id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
  (void)h2;
  (void)stream_id;
  (void)user_data;
  grpc_call *c = source->ptr;
  size_t n = 0;
  sm_list *first;
  while (n < length && (first = sm_list_first(&c->out)) != NULL) {
    out_chunk *ch = SM_LIST_ENTRY(first, out_chunk, node);
    size_t take = ch->len - ch->off;
    if (take > length - n)
      take = length - n;
    memcpy(buf + n, ch->data + ch->off, take);
    n += take;
    ch->off += take;
    if (ch->off == ch->len) {
      sm_list_remove(&ch->node);
      free(ch);
    }
  }
  assert(c->out_bytes >= n && c->s->queued >= n);
  c->out_bytes -= n;
  c->s->queued -= n;
  if (sm_list_empty(&c->out)) {
    if (c->finishing) {
      /* Without trailers (out of memory) the DATA frame ends the stream itself: the client sees
       * a call without status, not a stream that never ends. */
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      if (submit_trailers(c) == 0)
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    } else if (n == 0) {
      return NGHTTP2_ERR_DEFERRED; /* resumed by the next message or the finish */
    }
  }
  return (ssize_t)n;
}

static grpc_call *call_new(grpc_session *s, int32_t stream_id) {
  grpc_call *c = sm_calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  c->s = s;
  c->stream_id = stream_id;
  sm_list_init(&c->out);
  grpc_frame_reader_init(&c->reader, s->cfg->max_message_bytes);
  sm_list_push_front(&s->calls, &c->node);
  s->ncalls++;
  return c;
}

/* Unlinks and frees the call; the handler hears of it first when it was started. */
static void call_free(grpc_call *c, int reason) {
  grpc_session *s = c->s;
  if (c->started && c->method->on_close)
    c->method->on_close(c, reason);
  assert(sm_list_linked(&c->node) && s->ncalls > 0);
  sm_list_remove(&c->node);
  s->ncalls--;
  free_queue(c);
  release_request(c);
  free(c->path);
  free(c->message);
  free(c->encoding);
  free(c->meta);
  free(c);
  if (s->ncalls == 0 && !s->destroying) {
    s->idle_since_ms = now_ms(s);
    if (s->cfg->idle_ms)
      arm(s, s->idle_since_ms + s->cfg->idle_ms);
  }
}

/* ---- request headers ---- */

static int name_is(const uint8_t *name, size_t len, const char *lit) {
  return strlen(lit) == len && memcmp(name, lit, len) == 0;
}

/* Keeps a custom metadata field for grpc_call_header. */
static int meta_add(grpc_call *c, const uint8_t *name, size_t nlen, const uint8_t *value,
                    size_t vlen) {
  if (memchr(name, 0, nlen) || memchr(value, 0, vlen))
    return 0; /* nghttp2 already refuses these; keep the format safe regardless */
  char *nm = sm_realloc(c->meta, c->meta_len + nlen + vlen + 2);
  if (nm == NULL)
    return SM_ENOMEM;
  c->meta = nm;
  memcpy(nm + c->meta_len, name, nlen);
  nm[c->meta_len + nlen] = '\0';
  memcpy(nm + c->meta_len + nlen + 1, value, vlen);
  nm[c->meta_len + nlen + 1 + vlen] = '\0';
  c->meta_len += nlen + vlen + 2;
  return 0;
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user_data) {
  grpc_session *s = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  grpc_call *c = call_new(s, frame->hd.stream_id);
  if (c == NULL)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream only */
  nghttp2_session_set_stream_user_data(h2, frame->hd.stream_id, c);
  return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags,
                     void *user_data) {
  (void)flags;
  grpc_session *s = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0; /* trailers from the client carry nothing we use */
  grpc_call *c = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (c == NULL)
    return 0;
  c->header_bytes += nlen + vlen + 32;
  if (c->header_bytes > s->cfg->max_header_bytes) {
    c->headers_too_big = 1;
    /* nghttp2 resets the stream (INTERNAL_ERROR) and skips the rest of the block */
    if (c->header_bytes > (size_t)HEADER_BOMB_FACTOR * s->cfg->max_header_bytes)
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
  }
  if (c->headers_too_big)
    return 0;
  if (nlen > 0 && name[0] == ':') {
    if (name_is(name, nlen, ":method"))
      c->post = vlen == 4 && memcmp(value, "POST", 4) == 0;
    else if (name_is(name, nlen, ":path") && c->path == NULL) {
      c->path = sm_strndup((const char *)value, vlen);
      if (c->path == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
  }
  if (name_is(name, nlen, "content-type")) {
    static const char ct[] = "application/grpc";
    size_t l = sizeof(ct) - 1;
    c->ct_ok =
        vlen >= l && memcmp(value, ct, l) == 0 && (vlen == l || value[l] == '+' || value[l] == ';');
  } else if (name_is(name, nlen, "te")) {
    c->te_ok = vlen == 8 && memcmp(value, "trailers", 8) == 0;
  } else if (name_is(name, nlen, "grpc-timeout")) {
    c->timeout_bad = grpc_timeout_parse((const char *)value, vlen, &c->timeout_ms) != 0;
    c->has_timeout = !c->timeout_bad;
  } else if (name_is(name, nlen, "grpc-encoding")) {
    if (!(vlen == 8 && memcmp(value, "identity", 8) == 0)) {
      free(c->encoding);
      c->encoding = sm_strndup((const char *)value, vlen);
      if (c->encoding == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
  } else if (nlen >= 5 && memcmp(name, "grpc-", 5) == 0) {
    /* reserved for gRPC: grpc-accept-encoding and friends need nothing from us */
  } else if (meta_add(c, name, nlen, value, vlen) != 0) {
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  return 0;
}

/* Finds the method of "/<service>/<method>". */
static int route(grpc_session *s, const char *path, const grpc_service **svc, const grpc_method **m,
                 char *why, size_t cap) {
  const char *slash = path[0] == '/' ? strchr(path + 1, '/') : NULL;
  if (slash == NULL || slash[1] == '\0' || strchr(slash + 1, '/') != NULL) {
    snprintf(why, cap, "malformed method path \"%.200s\"", path);
    return SM_ENOENT;
  }
  size_t slen = (size_t)(slash - path - 1);
  for (size_t i = 0; i < s->cfg->nservices; i++) {
    const grpc_service *sv = s->cfg->services[i];
    if (strlen(sv->name) != slen || memcmp(sv->name, path + 1, slen) != 0)
      continue;
    for (size_t j = 0; j < sv->nmethods; j++) {
      if (strcmp(sv->methods[j].name, slash + 1) == 0) {
        *svc = sv;
        *m = &sv->methods[j];
        return 0;
      }
    }
    snprintf(why, cap, "unknown method %.100s for service %.100s", slash + 1, sv->name);
    return SM_ENOENT;
  }
  snprintf(why, cap, "unknown service %.*s", (int)(slen > 200 ? 200 : slen), path + 1);
  return SM_ENOENT;
}

/* The request headers are complete: check them and start the method, or refuse. */
static void call_dispatch(grpc_call *c) {
  grpc_session *s = c->s;
  char why[320];
  if (c->headers_too_big) {
    call_end(c, "200", GRPC_RESOURCE_EXHAUSTED, "request headers too large");
    return;
  }
  if (!c->post) {
    call_end(c, "405", GRPC_INTERNAL, "gRPC requires method POST");
    return;
  }
  if (!c->ct_ok) {
    /* 415 keeps HTTP clients from reading a gRPC error as success (PROTOCOL-HTTP2) */
    call_end(c, "415", GRPC_INTERNAL, "invalid gRPC request content-type");
    return;
  }
  if (!c->te_ok) {
    call_end(c, "200", GRPC_INTERNAL, "te: trailers is required");
    return;
  }
  if (c->timeout_bad) {
    call_end(c, "200", GRPC_INTERNAL, "malformed grpc-timeout");
    return;
  }
  if (route(s, c->path ? c->path : "", &c->service, &c->method, why, sizeof(why)) != 0) {
    call_end(c, "200", GRPC_UNIMPLEMENTED, why);
    return;
  }
  if (c->has_timeout && c->timeout_ms == 0) {
    /* "0n" and friends: the deadline has passed already, the method does not run */
    call_end(c, "200", GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
    return;
  }
  c->started = 1;
  if (s->cfg->on_call_start)
    s->cfg->on_call_start(s->cfg->observer_ud, c->path);
  if (c->has_timeout) {
    c->deadline_ms = now_ms(s) + c->timeout_ms;
    arm(s, c->deadline_ms);
  }
  sm_log_debug("grpc", "call started", SM_LS("path", c->path), SM_LS("peer", grpc_call_peer(c)),
               SM_LI("stream", c->stream_id));
  if (c->method->on_start)
    c->method->on_start(c);
}

/* END_STREAM from the client. */
static void call_half_close(grpc_call *c) {
  if (!c->started || c->finishing)
    return;
  if (grpc_frame_reader_partial(&c->reader)) {
    grpc_call_finish(c, GRPC_INTERNAL, "request stream ended inside a message");
    return;
  }
  if (!c->method->client_streaming) {
    if (!c->held_msg) {
      grpc_call_finish(c, GRPC_INTERNAL, "missing request message");
      return;
    }
    /* The request is complete: the method gets its message now. The buffer leaves the call
     * first (the method may finish the call, which releases what the call holds). */
    uint8_t *b = c->held;
    size_t n = c->held_len;
    c->held = NULL;
    c->held_msg = 0;
    c->partial_since_ms = 0;
    if (c->method->on_message)
      c->method->on_message(c, b ? b : (const uint8_t *)"", n);
    free(b);
    c->held_cap = 0;
    account(c);
    if (c->finishing)
      return;
  }
  if (c->method->on_half_close)
    c->method->on_half_close(c);
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user_data) {
  grpc_session *s = user_data;
  s->greeted = 1;
  grpc_call *c =
      frame->hd.stream_id ? nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id) : NULL;
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    if (c == NULL)
      break;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
      call_dispatch(c);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
      call_half_close(c);
    break;
  case NGHTTP2_DATA:
    if (c != NULL && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
      call_half_close(c);
    break;
  case NGHTTP2_PING:
    if (frame->hd.flags & NGHTTP2_FLAG_ACK)
      s->ping_sent_ms = 0;
    break;
  default:
    break;
  }
  return 0;
}

/* The peer holds more request data on this connection than GRPC_MAX_BUFFERED_BYTES_PER_CONN:
 * nothing it is sending is read any more, what its calls hold is freed, and the connection
 * ends with GOAWAY ENHANCE_YOUR_CALM (the calls end when it closes). */
static void calm_down(grpc_session *s) {
  if (s->calm)
    return;
  sm_log_warn("grpc", "peer buffers too much request data, closing with ENHANCE_YOUR_CALM",
              SM_LS("peer", s->io->peer(s->io_ud)), SM_LI("buffered_bytes", s->buffered),
              SM_LI("limit", s->cfg->max_buffered_per_conn));
  s->calm = 1;
  s->closing = 1;
  SM_LIST_FOREACH(it, &s->calls) {
    release_request(SM_LIST_ENTRY(it, grpc_call, node));
  }
  (void)nghttp2_session_terminate_session(s->h2, NGHTTP2_ENHANCE_YOUR_CALM);
  want_flush(s);
}

/* A bound on request buffers was reached while call c was receiving. */
static void refuse_buffering(grpc_call *c, int conn_bound) {
  grpc_session *s = c->s;
  if (conn_bound) {
    calm_down(s);
    return;
  }
  grpc_buffer_pool *pool = s->cfg->pool;
  pool->refused++;
  uint64_t now = now_ms(s);
  if (pool->warned_ms == 0 || now - pool->warned_ms >= 10000) { /* one line per 10 s at most */
    sm_log_warn("grpc", "GRPC_MAX_BUFFERED_BYTES reached, refusing calls with RESOURCE_EXHAUSTED",
                SM_LI("buffered_bytes", pool->used), SM_LI("limit", pool->max),
                SM_LI("refused", pool->refused - pool->warned_refused));
    pool->warned_ms = now;
    pool->warned_refused = pool->refused;
  }
  grpc_call_finish(c, GRPC_RESOURCE_EXHAUSTED,
                   "server holds too much partial request data; try again later");
}

/* Keeps a unary method's request message until END_STREAM; 0, or an SM_E* code when a bound or
 * the memory refuses it (handled here). */
static int hold_message(grpc_call *c, const grpc_frame_msg *msg) {
  size_t cap;
  uint8_t *b = grpc_frame_reader_detach(&c->reader, msg, &cap);
  if (b == NULL && msg->len > 0) { /* it lay whole in the input: copy it */
    int conn_bound;
    if (msg->len > buffer_room(c->s, &conn_bound)) {
      refuse_buffering(c, conn_bound);
      return SM_ELIMIT;
    }
    b = sm_malloc(msg->len);
    if (b == NULL) {
      grpc_call_finish(c, GRPC_RESOURCE_EXHAUSTED, "out of memory for the message");
      return SM_ENOMEM;
    }
    memcpy(b, msg->data, msg->len);
    cap = msg->len;
  }
  c->held = b;
  c->held_len = msg->len;
  c->held_cap = cap;
  c->held_msg = 1;
  account(c);
  return 0;
}

static int on_data_chunk_recv(nghttp2_session *h2, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *user_data) {
  (void)flags;
  grpc_session *s = user_data;
  grpc_call *c = nghttp2_session_get_stream_user_data(h2, stream_id);
  size_t off = 0;
  /* nghttp2 counts the bytes as consumed when we return (automatic WINDOW_UPDATE), also for a
   * call that no longer reads. */
  while (c != NULL && c->started && !c->finishing && !s->calm && off < len) {
    if (!c->method->client_streaming && c->messages > 0) {
      /* any byte after a unary method's message starts a second one */
      grpc_call_finish(c, GRPC_INTERNAL, "more than one request message for a unary method");
      break;
    }
    grpc_frame_msg msg;
    size_t used = 0;
    int conn_bound;
    size_t room = buffer_room(s, &conn_bound);
    c->reader.buf_limit = room > SIZE_MAX - c->reader.buf_cap ? SIZE_MAX : c->reader.buf_cap + room;
    int r = grpc_frame_read(&c->reader, data + off, len - off, &used, &msg);
    off += used;
    account(c);
    if (r >= 0)
      track_partial(c);
    if (r == 0)
      break;
    if (r < 0) {
      char why[128];
      if (r == SM_ELIMIT) {
        refuse_buffering(c, conn_bound);
      } else if (r == SM_ETOOBIG) {
        snprintf(why, sizeof(why), "received message larger than max (%u vs. %zu)",
                 c->reader.msg_len, c->s->cfg->max_message_bytes);
        grpc_call_finish(c, GRPC_RESOURCE_EXHAUSTED, why);
      } else if (r == SM_EPROTO) {
        grpc_call_finish(c, GRPC_INTERNAL, "invalid Compressed-Flag in message prefix");
      } else {
        grpc_call_finish(c, GRPC_RESOURCE_EXHAUSTED, "out of memory for the message");
      }
      break;
    }
    if (msg.compressed) {
      if (c->encoding) {
        c->accept_encoding = 1;
        char why[160];
        snprintf(why, sizeof(why), "message compressed with %.64s; only identity is supported",
                 c->encoding);
        grpc_call_finish(c, GRPC_UNIMPLEMENTED, why);
      } else {
        grpc_call_finish(c, GRPC_INTERNAL, "compressed message without grpc-encoding");
      }
      break;
    }
    c->messages++;
    if (!c->method->client_streaming) {
      /* the method answers once the request is complete (END_STREAM): see call_half_close */
      if (hold_message(c, &msg) != 0)
        break;
      track_partial(c);
      continue;
    }
    if (c->method->on_message)
      c->method->on_message(c, msg.data, msg.len);
    grpc_frame_reader_trim(&c->reader); /* an idle stream keeps no large buffer */
    account(c);
  }
  return 0;
}

static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
    return 0;
  grpc_call *c = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (c != NULL)
    c->trailers_sent = 1;
  /* Early server closure (PROTOCOL-HTTP2): the client is still sending, so reset the stream
   * with NO_ERROR to let both sides free it. */
  if (!nghttp2_session_get_stream_remote_close(h2, frame->hd.stream_id))
    nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)user_data;
  grpc_call *c = nghttp2_session_get_stream_user_data(h2, stream_id);
  if (c == NULL)
    return 0;
  int reason;
  if (c->trailers_sent)
    reason = 0;
  else if (error_code == NGHTTP2_CANCEL || error_code == NGHTTP2_NO_ERROR)
    reason = SM_ECANCELED;
  else
    reason = SM_EPROTO;
  nghttp2_session_set_stream_user_data(h2, stream_id, NULL);
  call_free(c, reason);
  return 0;
}

static int on_error(nghttp2_session *h2, int lib_error_code, const char *msg, size_t len,
                    void *user_data) {
  (void)h2;
  (void)lib_error_code;
  grpc_session *s = user_data;
  sm_log_debug("grpc", "HTTP/2 error", SM_LS("peer", s->io->peer(s->io_ud)),
               SM_LS("reason", len ? msg : ""));
  return 0;
}

/* ---- session ---- */

/* ---- nghttp2 allocator ----
 *
 * nghttp2 allocates a 16 KiB outbound frame buffer per session up front, and malloc places such
 * chunks so that two of their pages become resident once the first frame is written. An idle
 * agent connection thus costs ~8 KiB for a buffer that holds nothing between frames. Here
 * allocations of SESSION_BIG_MIN bytes or more get their own page-aligned anonymous mapping, and
 * once a connection has been quiet for SESSION_TRIM_QUIET_MS with nothing left to send (nghttp2
 * resets the buffer after each frame, so it holds no data then) the pages are handed back with
 * MADV_DONTNEED; the next frame faults in one zeroed page. */

static size_t page_round(size_t n) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  return (n + pg - 1) / pg * pg;
}

static int big_find(grpc_session *s, const void *p) {
  for (int i = 0; i < SESSION_BIG_MAX; i++)
    if (s->big[i].p == p)
      return i;
  return -1;
}

static void *big_alloc(grpc_session *s, size_t size) {
  int slot = big_find(s, NULL);
  if (slot < 0)
    return NULL; /* the caller falls back to malloc */
  size_t len = page_round(size);
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  s->big[slot].p = p;
  s->big[slot].len = len;
  /* The frame buffer is allocated while the session is created; a large inbound buffer
   * allocated later (big header blocks) holds data across reads and must never be trimmed. */
  s->big[slot].trimmable = s->creating && size >= SESSION_TRIM_MIN;
  return p;
}

static void *mem_malloc(size_t size, void *ud) {
  grpc_session *s = ud;
  void *p = size >= SESSION_BIG_MIN ? big_alloc(s, size) : NULL;
  return p ? p : sm_malloc(size);
}

static void mem_free(void *ptr, void *ud) {
  grpc_session *s = ud;
  if (ptr == NULL)
    return;
  int i = big_find(s, ptr);
  if (i < 0) {
    free(ptr);
    return;
  }
  munmap(s->big[i].p, s->big[i].len);
  s->big[i].p = NULL;
}

static void *mem_calloc(size_t nmemb, size_t size, void *ud) {
  grpc_session *s = ud;
  if (size && nmemb > SIZE_MAX / size)
    return NULL;
  size_t n = nmemb * size;
  void *p = n >= SESSION_BIG_MIN ? big_alloc(s, n) : NULL; /* fresh mappings are zeroed */
  return p ? p : sm_calloc(nmemb, size);
}

static void *mem_realloc(void *ptr, size_t size, void *ud) {
  grpc_session *s = ud;
  int i = ptr ? big_find(s, ptr) : -1;
  if (i < 0 && size < SESSION_BIG_MIN)
    return sm_realloc(ptr, size);
  if (i >= 0 && size <= s->big[i].len)
    return ptr;
  void *np = mem_malloc(size, ud);
  if (np == NULL)
    return NULL;
  if (ptr) {
    size_t old = i >= 0 ? s->big[i].len : malloc_usable_size(ptr);
    memcpy(np, ptr, old < size ? old : size);
    mem_free(ptr, ud);
  }
  return np;
}

/* Hands back the pages of the big buffers; see above for why their content is dead here. */
static void trim(grpc_session *s) {
  for (int i = 0; i < SESSION_BIG_MAX; i++)
    if (s->big[i].p && s->big[i].trimmable)
      madvise(s->big[i].p, s->big[i].len, MADV_DONTNEED);
  s->big_dirty = 0;
}

int grpc_session_create(const grpc_session_config *cfg, const grpc_session_io *io, void *io_ud,
                        grpc_session **out) {
  grpc_session *s = sm_calloc(1, sizeof(*s));
  if (s == NULL)
    return SM_ENOMEM;
  s->cfg = cfg;
  s->io = io;
  s->io_ud = io_ud;
  sm_list_init(&s->calls);

  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  if (nghttp2_session_callbacks_new(&cbs) != 0) {
    free(s);
    return SM_ENOMEM;
  }
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    free(s);
    return SM_ENOMEM;
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
  /* Closed streams are kept only for priority bookkeeping we do not use: save the memory. */
  nghttp2_option_set_no_closed_streams(opt, 1);
  /* Our responses repeat a handful of short header fields: a 256-byte HPACK table compresses
   * them as well as the default 4 KiB one, and its ring buffer is 64 bytes instead of 1 KiB per
   * connection. */
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 256);
  nghttp2_mem mem = {s, mem_malloc, mem_free, mem_calloc, mem_realloc};
  s->creating = 1;
  int rv = nghttp2_session_server_new3(&s->h2, cbs, s, opt, &mem);
  s->creating = 0;
  nghttp2_session_callbacks_del(cbs);
  nghttp2_option_del(opt);
  if (rv != 0) {
    free(s);
    return SM_ENOMEM;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->max_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->max_header_bytes},
  };
  rv = nghttp2_submit_settings(s->h2, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
  if (rv == 0 && cfg->connection_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
    rv = nghttp2_session_set_local_window_size(s->h2, NGHTTP2_FLAG_NONE, 0,
                                               (int32_t)cfg->connection_window);
  if (rv != 0) {
    nghttp2_session_del(s->h2);
    free(s);
    return rv == NGHTTP2_ERR_NOMEM ? SM_ENOMEM : SM_EINVAL;
  }
  uint64_t now = now_ms(s);
  s->last_recv_ms = s->idle_since_ms = s->started_ms = now;
  if (cfg->preface_ms)
    arm(s, now + cfg->preface_ms);
  if (cfg->keepalive_ms)
    arm(s, now + cfg->keepalive_ms);
  if (cfg->idle_ms)
    arm(s, now + cfg->idle_ms);
  want_flush(s);
  *out = s;
  return 0;
}

int grpc_session_recv(grpc_session *s, const uint8_t *data, size_t len) {
  if (s->dead)
    return SM_EPROTO;
  s->last_recv_ms = now_ms(s);
  s->ping_sent_ms = 0; /* any bytes prove the peer alive */
  ssize_t n = nghttp2_session_mem_recv(s->h2, data, len);
  want_flush(s);
  if (n < 0) {
    sm_log_debug("grpc", "HTTP/2 connection error", SM_LS("peer", s->io->peer(s->io_ud)),
                 SM_LS("reason", nghttp2_strerror((int)n)));
    /* Fatal errors (a bad preface, a flood) leave the session unusable: close without a word.
     * Protocol errors are not returned here: nghttp2 queues a GOAWAY and winds down. */
    if (nghttp2_is_fatal((int)n))
      s->dead = 1;
    return n == NGHTTP2_ERR_NOMEM ? SM_ENOMEM : SM_EPROTO;
  }
  return 0;
}

int grpc_session_flush(grpc_session *s) {
  if (s->dead)
    return SM_ECLOSED;
  size_t max = s->cfg->max_output_bytes;
  int wrote = 0, drained = 0;
  while (s->io->output(s->io_ud) < max) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(s->h2, &data);
    if (n < 0) {
      s->dead = 1;
      return n == NGHTTP2_ERR_NOMEM ? SM_ENOMEM : SM_EPROTO;
    }
    if (n == 0) {
      drained = 1;
      break;
    }
    wrote = 1;
    int err = s->io->write(s->io_ud, data, (size_t)n);
    if (err) {
      s->dead = 1;
      return err;
    }
  }
  if (wrote) {
    /* Trimmed by the timer once the connection has been quiet for a while. */
    s->last_write_ms = now_ms(s);
    s->big_dirty = 1;
    arm(s, s->last_write_ms + SESSION_TRIM_QUIET_MS);
  }
  (void)drained;
  if (s->io->output(s->io_ud) + s->queued >= max) {
    if (s->stalled_since_ms == 0) {
      s->stalled_since_ms = now_ms(s);
      if (s->cfg->stall_ms)
        arm(s, s->stalled_since_ms + s->cfg->stall_ms);
    }
  } else {
    s->stalled_since_ms = 0;
  }
  if (!nghttp2_session_want_read(s->h2) && !nghttp2_session_want_write(s->h2))
    return SM_ECLOSED;
  return 0;
}

static void next_due(uint64_t *next, uint64_t due) {
  if (*next == 0 || due < *next)
    *next = due;
}

int grpc_session_timer(grpc_session *s) {
  const grpc_session_config *cfg = s->cfg;
  uint64_t now = now_ms(s), next = 0;
  s->timer_due_ms = 0;

  /* A peer that opens connections and never says a word (or drips the 24-byte preface) would
   * otherwise hold each one until the idle timeout, minutes. */
  if (!s->greeted && cfg->preface_ms) {
    if (now - s->started_ms >= cfg->preface_ms) {
      sm_log_info("grpc", "no HTTP/2 preface in time, closing",
                  SM_LS("peer", s->io->peer(s->io_ud)), SM_LI("timeout_ms", cfg->preface_ms));
      return SM_ETIMEDOUT;
    }
    next_due(&next, s->started_ms + cfg->preface_ms);
  }

  SM_LIST_FOREACH(it, &s->calls) {
    grpc_call *c = SM_LIST_ENTRY(it, grpc_call, node);
    if (c->finishing)
      continue;
    if (c->deadline_ms) {
      if (now >= c->deadline_ms) {
        grpc_call_finish(c, GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
        continue;
      }
      next_due(&next, c->deadline_ms);
    }
    if (c->partial_since_ms && cfg->message_timeout_ms) {
      uint64_t due = c->partial_since_ms + cfg->message_timeout_ms;
      if (now >= due) {
        grpc_call_finish(c, GRPC_DEADLINE_EXCEEDED,
                         "request message not complete within GRPC_MESSAGE_TIMEOUT");
        continue;
      }
      next_due(&next, due);
    }
    if (c->timer_due_ms) {
      if (now >= c->timer_due_ms) {
        c->timer_due_ms = 0;
        grpc_call_finish(c, c->timer_status, c->timer_message);
        continue;
      }
      next_due(&next, c->timer_due_ms);
    }
  }

  if (s->big_dirty) {
    if (now - s->last_write_ms < SESSION_TRIM_QUIET_MS)
      next_due(&next, s->last_write_ms + SESSION_TRIM_QUIET_MS);
    else if (!nghttp2_session_want_write(s->h2))
      trim(s);
    /* else output is coming: the flush that writes it re-arms the trim (re-arming for "now"
     * here would spin this timer without ever letting the flush run) */
  }
  if (cfg->keepalive_ms) {
    if (s->ping_sent_ms) {
      if (now - s->ping_sent_ms >= cfg->keepalive_timeout_ms) {
        sm_log_info("grpc", "keepalive PING unanswered, closing",
                    SM_LS("peer", s->io->peer(s->io_ud)));
        return SM_ETIMEDOUT;
      }
      next_due(&next, s->ping_sent_ms + cfg->keepalive_timeout_ms);
    } else if (now - s->last_recv_ms >= cfg->keepalive_ms) {
      uint8_t opaque[8] = {'k', 'e', 'e', 'p', 'a', 'l', 'v', 0};
      if (nghttp2_submit_ping(s->h2, NGHTTP2_FLAG_NONE, opaque) == 0) {
        s->ping_sent_ms = now;
        want_flush(s);
      }
      next_due(&next, now + cfg->keepalive_timeout_ms);
    } else {
      next_due(&next, s->last_recv_ms + cfg->keepalive_ms);
    }
  }

  if (cfg->idle_ms && s->ncalls == 0 && !s->closing) {
    if (now - s->idle_since_ms >= cfg->idle_ms) {
      sm_log_debug("grpc", "idle connection closed", SM_LS("peer", s->io->peer(s->io_ud)));
      s->closing = 1;
      nghttp2_session_terminate_session(s->h2, NGHTTP2_NO_ERROR);
      want_flush(s);
    } else {
      next_due(&next, s->idle_since_ms + cfg->idle_ms);
    }
  }

  if (s->stalled_since_ms && cfg->stall_ms) {
    if (now - s->stalled_since_ms >= cfg->stall_ms) {
      sm_log_info("grpc", "peer stopped reading, closing", SM_LS("peer", s->io->peer(s->io_ud)),
                  SM_LI("queued_bytes", s->queued + s->io->output(s->io_ud)));
      return SM_ETIMEDOUT;
    }
    next_due(&next, s->stalled_since_ms + cfg->stall_ms);
  }

  if (next)
    arm(s, next);
  return 0;
}

void grpc_session_drain(grpc_session *s) {
  if (s->draining || s->dead)
    return;
  s->draining = 1;
  static const char why[] = "server shutting down";
  nghttp2_submit_goaway(s->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->h2),
                        NGHTTP2_NO_ERROR, (const uint8_t *)why, sizeof(why) - 1);
  want_flush(s);
}

size_t grpc_session_calls(const grpc_session *s) {
  return s->ncalls;
}

size_t grpc_session_buffered(const grpc_session *s) {
  return s->buffered;
}

void grpc_session_destroy(grpc_session *s, int reason) {
  if (s == NULL)
    return;
  s->destroying = 1;
  while (!sm_list_empty(&s->calls))
    call_free(SM_LIST_ENTRY(sm_list_first(&s->calls), grpc_call, node), reason);
  nghttp2_session_del(s->h2);
  free(s);
}
