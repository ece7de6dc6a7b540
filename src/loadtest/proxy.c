/* proxy.c - the chaos proxy: one listener, connection pairs (client <-> upstream), each
 * direction a queue of chunks with a due time (delay) and a pacing clock (bandwidth).
 *
 * A chunk is one read: alloc_cb allocates it with its header, read_cb queues it, flush writes
 * the chunks that are due and arms the direction's timer for the next. Writes free their chunk.
 * A pair is freed when its four handles (two sockets, two timers) closed; chunks never written
 * are freed then (libuv cancels pending writes before the close callbacks run).
 */
#include "loadtest/proxy.h"

#include "util/alloc.h"
#include "util/list.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pair pair;

typedef struct chunk {
  sm_list link;
  uint64_t due; /* loop ms */
  size_t len;
  uv_write_t w;
  struct dir *d;
  char data[];
} chunk;

typedef struct dir {
  pair *pr;
  uv_stream_t *src, *dst;
  uv_timer_t timer;
  sm_list queue;      /* chunks not yet written */
  size_t queued;      /* bytes queued or being written */
  unsigned writing;   /* writes in flight */
  uint64_t next_free; /* bandwidth: loop ms when the next chunk may go */
  int reading;
  int eof;
  int up; /* client -> upstream */
} dir;

struct pair {
  sm_list link;
  lt_proxy *p;
  uv_tcp_t client, upstream;
  uv_connect_t creq;
  dir up, down;
  int connected;
  int closing;
  int handles; /* open handles */
};

struct lt_proxy {
  uv_loop_t *loop;
  char name[32];
  char addr[96];
  int port;
  struct sockaddr_storage upstream;
  uv_tcp_t listener;
  uv_tcp_t reject; /* accepts a connection we have no memory for, to close it */
  int reject_busy;
  int accept_pending;
  int handles; /* listener + reject */
  sm_list pairs;
  enum lt_fault_kind fault;
  uint64_t param;
  lt_proxy_stats st;
  int closing;
  lt_proxy_close_cb close_cb;
  void *close_ud;
};

static void maybe_done(lt_proxy *p) {
  if (!p->closing || p->handles > 0 || !sm_list_empty(&p->pairs))
    return;
  lt_proxy_close_cb cb = p->close_cb;
  void *ud = p->close_ud;
  free(p);
  if (cb)
    cb(ud);
}

/* ---- pairs ---------------------------------------------------------------------------------- */

static void free_queue(dir *d) {
  sm_list *n;
  while ((n = sm_list_first(&d->queue)) != NULL) {
    sm_list_remove(n);
    free(SM_LIST_ENTRY(n, chunk, link));
  }
}

static void on_pair_handle_closed(uv_handle_t *h) {
  pair *pr = h->data == NULL ? NULL : ((dir *)h->data)->pr;
  assert(pr != NULL);
  if (--pr->handles > 0)
    return;
  lt_proxy *p = pr->p;
  free_queue(&pr->up);
  free_queue(&pr->down);
  sm_list_remove(&pr->link);
  p->st.active--;
  free(pr);
  maybe_done(p);
}

static void pair_close(pair *pr, int reset) {
  if (pr->closing)
    return;
  pr->closing = 1;
  uv_handle_t *socks[2] = {(uv_handle_t *)&pr->client, (uv_handle_t *)&pr->upstream};
  for (int k = 0; k < 2; k++) {
    /* RST needs a socket; an upstream still connecting has one, but be safe: fall back to FIN. */
    if (!(reset && uv_tcp_close_reset((uv_tcp_t *)socks[k], on_pair_handle_closed) == 0))
      uv_close(socks[k], on_pair_handle_closed);
  }
  uv_close((uv_handle_t *)&pr->up.timer, on_pair_handle_closed);
  uv_close((uv_handle_t *)&pr->down.timer, on_pair_handle_closed);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  dir *d = h->data;
  lt_proxy *p = d->pr->p;
  size_t size = LT_PROXY_CHUNK;
  (void)suggested;
  /* Paced directions read small chunks, so one chunk takes about 50 ms at the cap. */
  if (p->fault == LT_FAULT_BANDWIDTH) {
    uint64_t s = p->param / 20;
    size = s < 256 ? 256 : s > LT_PROXY_CHUNK ? LT_PROXY_CHUNK : (size_t)s;
  }
  chunk *c = sm_malloc(sizeof(*c) + size);
  if (c == NULL) {
    *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
    return;
  }
  c->d = d;
  *buf = uv_buf_init(c->data, (unsigned)size);
}

static void update_reading(dir *d) {
  pair *pr = d->pr;
  int want = pr->connected && !pr->closing && !d->eof && pr->p->fault != LT_FAULT_BLACKHOLE &&
             d->queued < LT_PROXY_QUEUE_MAX;
  if (want == d->reading)
    return;
  if (want) {
    if (uv_read_start(d->src, on_alloc, on_read) != 0) {
      pair_close(pr, 0);
      return;
    }
  } else {
    uv_read_stop(d->src);
  }
  d->reading = want;
}

static void flush(dir *d);

static void on_written(uv_write_t *w, int status) {
  chunk *c = w->data;
  dir *d = c->d;
  pair *pr = d->pr;
  d->writing--;
  d->queued -= c->len;
  if (status == 0) {
    if (d->up)
      pr->p->st.bytes_up += c->len;
    else
      pr->p->st.bytes_down += c->len;
  }
  free(c);
  if (pr->closing)
    return;
  if (status < 0) {
    pair_close(pr, 0);
    return;
  }
  if (d->eof && d->writing == 0 && sm_list_empty(&d->queue)) {
    pair_close(pr, 0); /* the source ended and everything it sent is delivered */
    return;
  }
  update_reading(d);
}

static void on_timer(uv_timer_t *t) {
  flush(t->data);
}

static void flush(dir *d) {
  pair *pr = d->pr;
  lt_proxy *p = pr->p;
  if (pr->closing || !pr->connected || p->fault == LT_FAULT_BLACKHOLE)
    return;
  uint64_t now = uv_now(p->loop);
  sm_list *n;
  while ((n = sm_list_first(&d->queue)) != NULL) {
    chunk *c = SM_LIST_ENTRY(n, chunk, link);
    uint64_t at = c->due;
    if (p->fault == LT_FAULT_BANDWIDTH && d->next_free > at)
      at = d->next_free;
    if (at > now) {
      uv_timer_start(&d->timer, on_timer, at - now, 0);
      return;
    }
    if (p->fault == LT_FAULT_BANDWIDTH && p->param > 0)
      d->next_free = (d->next_free > now ? d->next_free : now) + c->len * 1000 / p->param;
    sm_list_remove(n);
    c->w.data = c;
    uv_buf_t b = uv_buf_init(c->data, (unsigned)c->len);
    if (uv_write(&c->w, d->dst, &b, 1, on_written) != 0) {
      d->queued -= c->len;
      free(c);
      pair_close(pr, 0);
      return;
    }
    d->writing++;
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  dir *d = s->data;
  pair *pr = d->pr;
  chunk *c = buf->base ? SM_LIST_ENTRY(buf->base, chunk, data) : NULL;
  if (nread <= 0) {
    free(c);
    if (nread == 0)
      return;
    if (nread == UV_EOF) {
      d->eof = 1;
      update_reading(d);
      if (d->writing == 0 && sm_list_empty(&d->queue))
        pair_close(pr, 0);
      return;
    }
    pair_close(pr, 0); /* an error, or UV_ENOBUFS: no memory for the chunk */
    return;
  }
  c->len = (size_t)nread;
  c->due = pr->p->fault == LT_FAULT_DELAY ? uv_now(pr->p->loop) + pr->p->param : 0;
  sm_list_push_back(&d->queue, &c->link);
  d->queued += c->len;
  update_reading(d);
  flush(d);
}

static void on_upstream(uv_connect_t *req, int status) {
  pair *pr = req->data;
  if (pr->closing)
    return;
  if (status < 0) {
    pr->p->st.upstream_failures++;
    pair_close(pr, 0);
    return;
  }
  pr->connected = 1;
  update_reading(&pr->up);
  update_reading(&pr->down);
}

static void dir_init(pair *pr, dir *d, uv_tcp_t *src, uv_tcp_t *dst, int up) {
  d->pr = pr;
  d->src = (uv_stream_t *)src;
  d->dst = (uv_stream_t *)dst;
  d->up = up;
  sm_list_init(&d->queue);
  src->data = d;
  d->timer.data = d;
}

/* ---- listener ------------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status);

static void on_reject_closed(uv_handle_t *h) {
  lt_proxy *p = h->data;
  p->reject_busy = 0;
  if (p->closing) {
    p->handles--;
    maybe_done(p);
    return;
  }
  uv_tcp_init(p->loop, &p->reject);
  p->reject.data = p;
  if (p->accept_pending) {
    p->accept_pending = 0;
    on_connection((uv_stream_t *)&p->listener, 0);
  }
}

static void refuse(lt_proxy *p) {
  if (p->reject_busy) {
    p->accept_pending = 1; /* libuv stops watching the listener until we accept */
    return;
  }
  p->st.refused++;
  if (uv_accept((uv_stream_t *)&p->listener, (uv_stream_t *)&p->reject) != 0)
    return;
  p->reject_busy = 1;
  uv_close((uv_handle_t *)&p->reject, on_reject_closed);
}

static void on_connection(uv_stream_t *server, int status) {
  lt_proxy *p = server->data;
  if (status < 0 || p->closing)
    return;
  if (p->reject_busy) {
    p->accept_pending = 1;
    return;
  }
  pair *pr = sm_calloc(1, sizeof(*pr));
  if (pr == NULL) {
    refuse(p);
    return;
  }
  pr->p = p;
  uv_tcp_init(p->loop, &pr->client);
  uv_tcp_init(p->loop, &pr->upstream);
  uv_timer_init(p->loop, &pr->up.timer);
  uv_timer_init(p->loop, &pr->down.timer);
  pr->handles = 4;
  dir_init(pr, &pr->up, &pr->client, &pr->upstream, 1);
  dir_init(pr, &pr->down, &pr->upstream, &pr->client, 0);
  sm_list_push_back(&p->pairs, &pr->link);
  p->st.active++;
  if (uv_accept(server, (uv_stream_t *)&pr->client) != 0) {
    pair_close(pr, 0);
    return;
  }
  p->st.accepted++;
  if (p->fault == LT_FAULT_DROP || p->fault == LT_FAULT_RESET) {
    p->st.refused++;
    pair_close(pr, p->fault == LT_FAULT_RESET);
    return;
  }
  uv_tcp_nodelay(&pr->client, 1);
  uv_tcp_nodelay(&pr->upstream, 1);
  pr->creq.data = pr;
  if (uv_tcp_connect(&pr->creq, &pr->upstream, (const struct sockaddr *)&p->upstream,
                     on_upstream) != 0) {
    p->st.upstream_failures++;
    pair_close(pr, 0);
  }
}

int lt_proxy_parse_addr(const char *text, struct sockaddr_storage *addr) {
  char host[128];
  const char *colon = strrchr(text, ':');
  if (colon == NULL || colon == text || colon[1] == '\0')
    return SM_EINVAL;
  size_t hl = (size_t)(colon - text);
  const char *h = text;
  if (text[0] == '[' && colon[-1] == ']') {
    h = text + 1;
    hl -= 2;
  }
  if (hl == 0 || hl >= sizeof(host))
    return SM_EINVAL;
  memcpy(host, h, hl);
  host[hl] = '\0';
  if (strcmp(host, "localhost") == 0)
    snprintf(host, sizeof(host), "127.0.0.1");
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535)
    return SM_EINVAL;
  memset(addr, 0, sizeof(*addr));
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)addr) == 0)
    return 0;
  if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)addr) == 0)
    return 0;
  return SM_EINVAL;
}

static void on_listener_closed(uv_handle_t *h) {
  lt_proxy *p = h->data;
  p->handles--;
  maybe_done(p);
}

int lt_proxy_create(uv_loop_t *loop, const char *name, const struct sockaddr *listen,
                    const struct sockaddr *upstream, lt_proxy **out) {
  lt_proxy *p = sm_calloc(1, sizeof(*p));
  if (p == NULL)
    return SM_ENOMEM;
  p->loop = loop;
  snprintf(p->name, sizeof(p->name), "%s", name);
  memcpy(&p->upstream, upstream,
         upstream->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                         : sizeof(struct sockaddr_in));
  sm_list_init(&p->pairs);
  uv_tcp_init(loop, &p->listener);
  uv_tcp_init(loop, &p->reject);
  p->listener.data = p->reject.data = p;
  p->handles = 2;
  int rc = uv_tcp_bind(&p->listener, listen, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&p->listener, 512, on_connection);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  if (rc == 0)
    rc = uv_tcp_getsockname(&p->listener, (struct sockaddr *)&ss, &len);
  if (rc != 0) {
    /* Nothing ran: close the two handles and free the proxy from their callbacks. */
    p->closing = 1;
    uv_close((uv_handle_t *)&p->listener, on_listener_closed);
    uv_close((uv_handle_t *)&p->reject, on_listener_closed);
    return SM_EADDR;
  }
  char ip[64] = "";
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
    p->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    snprintf(p->addr, sizeof(p->addr), "[%s]:%d", ip, p->port);
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
    p->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    snprintf(p->addr, sizeof(p->addr), "%s:%d", ip, p->port);
  }
  *out = p;
  return 0;
}

const char *lt_proxy_addr(const lt_proxy *p) {
  return p->addr;
}

int lt_proxy_port(const lt_proxy *p) {
  return p->port;
}

const char *lt_proxy_name(const lt_proxy *p) {
  return p->name;
}

void lt_proxy_set_fault(lt_proxy *p, enum lt_fault_kind kind, uint64_t param) {
  if (p->closing)
    return;
  if (kind == LT_FAULT_BANDWIDTH && param == 0)
    param = 1;
  p->fault = kind;
  p->param = param;
  SM_LIST_FOREACH_SAFE(it, tmp, &p->pairs) {
    pair *pr = SM_LIST_ENTRY(it, pair, link);
    if (pr->closing)
      continue;
    if (kind == LT_FAULT_DROP || kind == LT_FAULT_RESET) {
      pair_close(pr, kind == LT_FAULT_RESET);
      continue;
    }
    pr->up.next_free = pr->down.next_free = 0;
    update_reading(&pr->up);
    if (!pr->closing)
      update_reading(&pr->down);
    if (!pr->closing)
      flush(&pr->up);
    if (!pr->closing)
      flush(&pr->down);
  }
}

void lt_proxy_stats_get(const lt_proxy *p, lt_proxy_stats *out) {
  *out = p->st;
}

void lt_proxy_close(lt_proxy *p, lt_proxy_close_cb cb, void *ud) {
  assert(!p->closing);
  p->closing = 1;
  p->close_cb = cb;
  p->close_ud = ud;
  uv_close((uv_handle_t *)&p->listener, on_listener_closed);
  if (!p->reject_busy)
    uv_close((uv_handle_t *)&p->reject, on_listener_closed);
  /* else on_reject_closed counts it */
  SM_LIST_FOREACH_SAFE(it, tmp, &p->pairs) {
    pair_close(SM_LIST_ENTRY(it, pair, link), 0);
  }
}
