/* sm-e2e.c - the load generator and result checker of bench/e2e/run.sh.
 *
 *   sm-e2e raw  --amqp-port P --queue Q --n N [--size S] [--window W]
 *       the broker alone: one connection publishes N persistent messages of S bytes with
 *       publisher confirms (at most W unconfirmed), another consumes them with acks, at the same
 *       time; the rate is N over first publish .. last delivery.
 *   sm-e2e rest --admin-port P --amqp-port P --result-queue R --n N --prefix X
 *               [--conns C] [--batch B] [--rate R] [--sink]
 *     --rate R: the submitters keep to R commands/s (arrays of B start on schedule), so the
 *     latency at a given load can be measured
 *       C threads, each on one keep-alive connection, POST /api/commands arrays of B echo
 *       commands with client ids X-0 .. X-(N-1) (429/503 answers are retried after 20 ms with the
 *       same ids, so the repeat is idempotent); then waits until the result queue holds N
 *       messages and drains it (see below). With --sink the submitter runs against an in-process
 *       HTTP sink that answers 202 at once: the submitter's own ceiling.
 *   sm-e2e rest --poll --admin-port P --n N --prefix X [--conns C] [--batch B] [--poll-ms M]
 *               [--poll-from CURSOR]
 *       the same submission for a manager without RabbitMQ: the results are read over REST
 *       instead, while submitting, by sweeps of GET /api/commands?limit=1000 every M ms (200)
 *       until every id was seen final. The listing is in creation order, so a sweep starts at
 *       a watermark: the cursor of the first page that still held one of our unfinished
 *       commands in the previous sweep (everything before it is final and already counted). A
 *       command acknowledged (202) before a sweep began but not listed by it (stored with a
 *       creation key before the watermark) resets the watermark to the beginning (rescans=).
 *       A sweep stops at a page where none of our commands is final yet (the queued backlog).
 *       The e2e time ends at the page that showed the last command final, so it is late by up
 *       to one poll interval plus one sweep; last_completed_after_s (from completed_at) is the
 *       exact moment, and completed_per_s the rate over it. The line ends with poll_watermark=,
 *       the last watermark: a later run's --poll-from, so that its first sweep does not list
 *       this run's commands again. Each sweep is logged to stderr.
 *   sm-e2e amqp --amqp-port P --command-queue Q --result-queue R --n N --prefix X [--window W]
 *       the same N commands published (persistent, confirmed, at most W unconfirmed) to the
 *       command queue while the manager runs, then the same wait and drain.
 *
 * The drain consumes the result queue until every id X-i was seen and the queue stayed empty for
 * a second; it reports missing ids, duplicates, statuses other than completed, and p50/p99 of
 * completed_at - created_at (both RFC 3339 with milliseconds, from the manager's clock).
 * Every mode prints one line of key=value pairs on stdout; progress goes to stderr.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1000
#define WAIT_STALL_S 60.0 /* give up waiting for results after this long without progress */

static void die(const char *what) {
  fprintf(stderr, "sm-e2e: %s\n", what);
  exit(2);
}

/* Monotonic seconds, for rates. */
static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wall clock in milliseconds, comparable with the manager's timestamps. */
static double wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- options ---- */

typedef struct {
  const char *mode;
  int amqp_port, admin_port;
  const char *queue, *command_queue, *result_queue, *prefix, *poll_from;
  long n;
  int size, window, conns, batch, sink, poll, poll_ms;
  double rate; /* rest: commands/s the submitters keep to (0: as fast as accepted) */
} opts;

static void parse_opts(opts *o, int argc, char **argv) {
  memset(o, 0, sizeof(*o));
  o->size = 100;
  o->window = 1000;
  o->conns = 4;
  o->batch = MAX_BATCH;
  o->prefix = "c";
  o->poll_ms = 200;
  if (argc < 2)
    die("usage: sm-e2e raw|rest|amqp [options] (see the comment at the top of sm-e2e.c)");
  o->mode = argv[1];
  for (int i = 2; i < argc; i++) {
    const char *k = argv[i];
    if (strcmp(k, "--sink") == 0) {
      o->sink = 1;
      continue;
    }
    if (strcmp(k, "--poll") == 0) {
      o->poll = 1;
      continue;
    }
    if (i + 1 >= argc)
      die("option without a value");
    const char *v = argv[++i];
    if (strcmp(k, "--amqp-port") == 0)
      o->amqp_port = atoi(v);
    else if (strcmp(k, "--admin-port") == 0)
      o->admin_port = atoi(v);
    else if (strcmp(k, "--queue") == 0)
      o->queue = v;
    else if (strcmp(k, "--command-queue") == 0)
      o->command_queue = v;
    else if (strcmp(k, "--result-queue") == 0)
      o->result_queue = v;
    else if (strcmp(k, "--prefix") == 0)
      o->prefix = v;
    else if (strcmp(k, "--n") == 0)
      o->n = atol(v);
    else if (strcmp(k, "--size") == 0)
      o->size = atoi(v);
    else if (strcmp(k, "--window") == 0)
      o->window = atoi(v);
    else if (strcmp(k, "--conns") == 0)
      o->conns = atoi(v);
    else if (strcmp(k, "--batch") == 0)
      o->batch = atoi(v);
    else if (strcmp(k, "--poll-ms") == 0)
      o->poll_ms = atoi(v);
    else if (strcmp(k, "--rate") == 0)
      o->rate = atof(v);
    else if (strcmp(k, "--poll-from") == 0)
      o->poll_from = v;
    else
      die("unknown option");
  }
  if (o->n <= 0 || o->window <= 0 || o->conns <= 0 || o->batch <= 0 || o->batch > MAX_BATCH ||
      o->size < 16 || o->poll_ms <= 0)
    die("bad --n, --window, --conns, --batch, --size or --poll-ms");
  if (o->poll && o->sink)
    die("--poll and --sink exclude each other");
}

/* ---- AMQP helpers (blocking rabbitmq-c, one channel per connection) ---- */

static void check_rpc(amqp_connection_state_t c, const char *what) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "sm-e2e: AMQP %s failed (reply type %d, library error %s)\n", what,
            (int)r.reply_type, amqp_error_string2(r.library_error));
    exit(2);
  }
}

static amqp_connection_state_t amqp_open(int port) {
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s = amqp_tcp_socket_new(c);
  if (!s || amqp_socket_open(s, "127.0.0.1", port) != AMQP_STATUS_OK)
    die("cannot connect to the broker");
  amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    die("AMQP login failed");
  amqp_channel_open(c, 1);
  check_rpc(c, "channel.open");
  return c;
}

static void amqp_close_all(amqp_connection_state_t c) {
  amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
}

/* Declares a durable queue (or checks it with passive) and returns its message count. */
static long queue_declare(amqp_connection_state_t c, const char *q, int passive) {
  amqp_queue_declare_ok_t *ok =
      amqp_queue_declare(c, 1, amqp_cstring_bytes(q), passive, 1, 0, 0, amqp_empty_table);
  check_rpc(c, "queue.declare");
  return ok ? (long)ok->message_count : -1;
}

static void queue_purge(amqp_connection_state_t c, const char *q) {
  amqp_queue_purge(c, 1, amqp_cstring_bytes(q));
  check_rpc(c, "queue.purge");
}

/* Fills buf with message i (at most cap bytes) and returns its length. */
typedef size_t (*body_fn)(long i, char *buf, size_t cap, const void *ud);

/* Publishes n persistent messages to q with publisher confirms, keeping at most window
 * unconfirmed. Returns the number of nacks. */
static long publish_confirmed(amqp_connection_state_t c, const char *q, long n, int window,
                              body_fn body, const void *ud) {
  amqp_confirm_select(c, 1);
  check_rpc(c, "confirm.select");
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof(props));
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.content_type = amqp_cstring_bytes("application/json");
  props.delivery_mode = 2;
  char buf[4096];
  long sent = 0, acked = 0, nacks = 0;
  while (acked < n) {
    while (sent < n && sent - acked < window) {
      size_t len = body(sent, buf, sizeof(buf), ud);
      amqp_bytes_t b = {len, buf};
      if (amqp_basic_publish(c, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0, &props, b) !=
          AMQP_STATUS_OK)
        die("basic.publish failed");
      sent++;
      if (sent % 64 == 0 && !amqp_frames_enqueued(c) && !amqp_data_in_buffer(c))
        break; /* look at the confirms now and then even when the window has room */
    }
    /* Block only when nothing more may be sent. */
    struct timeval zero = {0, 0};
    int blocking = sent >= n || sent - acked >= window;
    for (;;) {
      amqp_frame_t f;
      int st =
          blocking ? amqp_simple_wait_frame(c, &f) : amqp_simple_wait_frame_noblock(c, &f, &zero);
      if (st == AMQP_STATUS_TIMEOUT)
        break;
      if (st != AMQP_STATUS_OK)
        die("waiting for publisher confirms failed");
      blocking = 0;
      if (f.frame_type != AMQP_FRAME_METHOD)
        continue;
      if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
        amqp_basic_ack_t *a = f.payload.method.decoded;
        long tag = (long)a->delivery_tag;
        acked = a->multiple ? tag : (tag > acked ? tag : acked);
      } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        amqp_basic_nack_t *a = f.payload.method.decoded;
        long tag = (long)a->delivery_tag;
        long to = a->multiple ? tag : (tag > acked ? tag : acked);
        nacks += to - acked;
        acked = to;
      } else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        die("the broker closed the channel while publishing");
      }
      if (!amqp_frames_enqueued(c) && !amqp_data_in_buffer(c))
        blocking = 0;
    }
  }
  return nacks;
}

/* ---- raw broker baseline ---- */

typedef struct {
  int port;
  const char *queue;
  long n;
  double t_last;
  long got;
} raw_consumer;

static void start_consume(amqp_connection_state_t c, const char *q, uint16_t prefetch) {
  amqp_basic_qos(c, 1, 0, prefetch, 0);
  check_rpc(c, "basic.qos");
  amqp_basic_consume(c, 1, amqp_cstring_bytes(q), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  check_rpc(c, "basic.consume");
}

static void *raw_consume(void *arg) {
  raw_consumer *rc = arg;
  amqp_connection_state_t c = amqp_open(rc->port);
  start_consume(c, rc->queue, 1000);
  while (rc->got < rc->n) {
    amqp_envelope_t env;
    struct timeval tv = {30, 0};
    amqp_maybe_release_buffers(c);
    amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
      die("raw consumer: no delivery within 30 s");
    rc->got++;
    if (rc->got % 100 == 0 || rc->got == rc->n)
      amqp_basic_ack(c, 1, env.delivery_tag, 1);
    amqp_destroy_envelope(&env);
  }
  rc->t_last = mono_s();
  amqp_close_all(c);
  return NULL;
}

static size_t raw_body(long i, char *buf, size_t cap, const void *ud) {
  int size = *(const int *)ud;
  size_t len = (size_t)size < cap ? (size_t)size : cap;
  int k = snprintf(buf, len, "{\"i\":%ld,\"pad\":\"", i);
  memset(buf + k, 'x', len - (size_t)k - 2);
  memcpy(buf + len - 2, "\"}", 2);
  return len;
}

static int mode_raw(const opts *o) {
  if (!o->queue)
    die("raw needs --queue");
  amqp_connection_state_t c = amqp_open(o->amqp_port);
  queue_declare(c, o->queue, 0);
  queue_purge(c, o->queue);
  raw_consumer rc = {.port = o->amqp_port, .queue = o->queue, .n = o->n};
  pthread_t th;
  pthread_create(&th, NULL, raw_consume, &rc);
  usleep(200000); /* the consumer is subscribed before the first publish */
  double t0 = mono_s();
  long nacks = publish_confirmed(c, o->queue, o->n, o->window, raw_body, &o->size);
  double t_pub = mono_s();
  pthread_join(th, NULL);
  amqp_close_all(c);
  printf("mode=raw n=%ld size=%d window=%d nacks=%ld publish_confirmed_per_s=%.0f "
         "publish_consume_per_s=%.0f seconds=%.2f\n",
         o->n, o->size, o->window, nacks, (double)o->n / (t_pub - t0),
         (double)o->n / (rc.t_last - t0), rc.t_last - t0);
  return 0;
}

/* ---- commands ---- */

static size_t command_json(const char *prefix, long i, char *buf, size_t cap) {
  return (size_t)snprintf(buf, cap,
                          "{\"id\":\"%s-%ld\",\"type\":\"echo\",\"params\":{\"n\":\"%ld\"},"
                          "\"timeout_seconds\":60}",
                          prefix, i, i);
}

static size_t command_body(long i, char *buf, size_t cap, const void *ud) {
  return command_json((const char *)ud, i, buf, cap);
}

/* ---- waiting for and draining results ---- */

/* Polls the result queue's message count until it reaches n (or stops growing for
 * WAIT_STALL_S); returns the monotonic time it was first seen at n. */
static double wait_results(int port, const char *q, long n, long *seen) {
  amqp_connection_state_t c = amqp_open(port);
  long last = -1;
  double t_change = mono_s(), t_log = 0;
  for (;;) {
    long cnt = queue_declare(c, q, 1);
    double now = mono_s();
    if (cnt >= n) {
      *seen = cnt;
      amqp_close_all(c);
      return now;
    }
    if (cnt != last) {
      last = cnt;
      t_change = now;
    }
    if (now - t_change > WAIT_STALL_S) {
      fprintf(stderr, "sm-e2e: result queue stuck at %ld of %ld\n", cnt, n);
      *seen = cnt;
      amqp_close_all(c);
      return now;
    }
    if (now - t_log > 5) {
      fprintf(stderr, "sm-e2e: %ld of %ld results published\n", cnt, n);
      t_log = now;
    }
    usleep(20000);
  }
}

/* "2026-11-28T07:57:08.123Z" -> unix milliseconds; -1 if malformed. */
static double parse_ts(const cJSON *v) {
  if (!cJSON_IsString(v))
    return -1;
  struct tm tm;
  memset(&tm, 0, sizeof(tm));
  int ms = 0;
  if (sscanf(v->valuestring, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
             &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) < 6)
    return -1;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (double)timegm(&tm) * 1e3 + ms;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct {
  long unique, dups, foreign, not_completed, bad;
  double p50, p99, max_lat, max_completed_ms, min_created_ms;
} drain_stats;

static void drain(int port, const char *q, const char *prefix, long n, drain_stats *ds) {
  memset(ds, 0, sizeof(*ds));
  ds->min_created_ms = 1e18;
  unsigned char *seen = calloc((size_t)n, 1);
  double *lat = malloc(sizeof(double) * (size_t)n);
  if (!seen || !lat)
    die("out of memory");
  size_t plen = strlen(prefix);
  amqp_connection_state_t c = amqp_open(port);
  start_consume(c, q, 2000);
  long got = 0, nlat = 0;
  for (;;) {
    amqp_envelope_t env;
    struct timeval tv = {ds->unique < n ? 30 : 1, 0};
    amqp_maybe_release_buffers(c);
    amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
      break; /* idle: 1 s once all were seen, 30 s otherwise */
    if (++got % 500 == 0)
      amqp_basic_ack(c, 1, env.delivery_tag, 1);
    else if (ds->unique >= n - 1)
      amqp_basic_ack(c, 1, env.delivery_tag, 1);
    cJSON *doc = cJSON_ParseWithLength(env.message.body.bytes, env.message.body.len);
    const cJSON *id = doc ? cJSON_GetObjectItemCaseSensitive(doc, "id") : NULL;
    if (!cJSON_IsString(id)) {
      ds->bad++;
    } else if (strncmp(id->valuestring, prefix, plen) != 0 || id->valuestring[plen] != '-') {
      ds->foreign++;
    } else {
      char *end;
      long i = strtol(id->valuestring + plen + 1, &end, 10);
      if (*end || i < 0 || i >= n) {
        ds->foreign++;
      } else if (seen[i]) {
        if (ds->dups++ < 3) /* for diagnosis: what a repeated result looks like */
          fprintf(stderr, "sm-e2e: duplicate result: %.*s\n", (int)env.message.body.len,
                  (const char *)env.message.body.bytes);
      } else {
        seen[i] = 1;
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(doc, "status");
        if (!cJSON_IsString(st) || strcmp(st->valuestring, "completed") != 0)
          ds->not_completed++;
        double cr = parse_ts(cJSON_GetObjectItemCaseSensitive(doc, "created_at"));
        double co = parse_ts(cJSON_GetObjectItemCaseSensitive(doc, "completed_at"));
        if (cr < 0 || co < 0) {
          ds->bad++;
        } else {
          lat[nlat++] = co - cr;
          if (co > ds->max_completed_ms)
            ds->max_completed_ms = co;
          if (cr < ds->min_created_ms)
            ds->min_created_ms = cr;
        }
        ds->unique++;
      }
    }
    cJSON_Delete(doc);
    amqp_destroy_envelope(&env);
  }
  amqp_close_all(c);
  long nl = nlat;
  if (nl > 0) {
    qsort(lat, (size_t)nl, sizeof(double), cmp_double);
    ds->p50 = lat[nl / 2];
    ds->p99 = lat[(long)((double)nl * 0.99) < nl ? (long)((double)nl * 0.99) : nl - 1];
    ds->max_lat = lat[nl - 1];
  }
  long missing = 0;
  for (long i = 0; i < n; i++)
    if (!seen[i]) {
      if (missing < 5)
        fprintf(stderr, "sm-e2e: missing result %s-%ld\n", prefix, i);
      missing++;
    }
  free(seen);
  free(lat);
}

/* Seconds from the first submit to the last result: the time the result queue first held as
 * many messages as commands, unless duplicates made it reach that count early, seen by a
 * completed_at later than that (then the last completed_at, which precedes its publication). */
static double e2e_seconds(double queue_full_s, const drain_stats *ds, double t0_wall) {
  double last = (ds->max_completed_ms - t0_wall) / 1e3;
  return last > queue_full_s ? last : queue_full_s;
}

static void print_drain(const drain_stats *ds, long n) {
  printf(" results=%ld missing=%ld duplicates=%ld not_completed=%ld unparsable=%ld foreign=%ld "
         "p50_ms=%.0f p99_ms=%.0f max_ms=%.0f",
         ds->unique, n - ds->unique, ds->dups, ds->not_completed, ds->bad, ds->foreign, ds->p50,
         ds->p99, ds->max_lat);
}

/* ---- REST submitter ---- */

typedef struct {
  int port;
  const char *prefix;
  long n;
  int batch;
  double rate, t0; /* --rate: array b starts at t0 + b * batch / rate (monotonic s) */
  atomic_long next_batch;
  atomic_long retries, retries_429, retries_503, errors, accepted;
  double t_last_ok; /* monotonic, written under mu */
  pthread_mutex_t mu;
  /* --poll: the sweep counter when command i was acknowledged (-1: not yet); a sweep k must list
   * every command marked below k (see the poller). */
  atomic_int *acc_sweep;
  atomic_int sweep;
} submitter;

static int tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
    die("cannot connect to the admin API");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

static int send_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Reads one HTTP/1.1 response (Content-Length framed) into buf; returns its status, or -1 when
 * the connection broke. Sets *close_after when the server says Connection: close. */
static int read_response(int fd, char *buf, size_t cap, int *close_after) {
  size_t have = 0;
  char *hend = NULL;
  while (!hend) {
    if (have + 1 >= cap)
      return -1;
    ssize_t r = recv(fd, buf + have, cap - 1 - have, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    have += (size_t)r;
    buf[have] = 0;
    hend = strstr(buf, "\r\n\r\n");
  }
  int status = 0;
  if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
    return -1;
  long clen = 0;
  *close_after = 0;
  for (char *l = strstr(buf, "\r\n"); l && l < hend; l = strstr(l + 2, "\r\n")) {
    if (strncasecmp(l + 2, "content-length:", 15) == 0)
      clen = atol(l + 17);
    else if (strncasecmp(l + 2, "connection: close", 17) == 0)
      *close_after = 1;
  }
  size_t total = (size_t)(hend + 4 - buf) + (size_t)clen;
  while (have < total) {
    char sink[65536];
    ssize_t r = recv(fd, sink, sizeof(sink), 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    if (have < cap - 1) {
      size_t keep = (size_t)r < cap - 1 - have ? (size_t)r : cap - 1 - have;
      memcpy(buf + have, sink, keep);
      buf[have + keep] = 0;
    }
    have += (size_t)r;
  }
  return status;
}

static void *submit_thread(void *arg) {
  submitter *s = arg;
  size_t cap = (size_t)s->batch * 160 + 256;
  char *req = malloc(cap);
  char resp[8192];
  if (!req)
    die("out of memory");
  int fd = tcp_connect(s->port);
  for (;;) {
    long b = atomic_fetch_add(&s->next_batch, 1);
    long lo = b * s->batch;
    if (lo >= s->n)
      break;
    long hi = lo + s->batch < s->n ? lo + s->batch : s->n;
    if (s->rate > 0) { /* paced: wait for this array's turn */
      double wait = s->t0 + (double)lo / s->rate - mono_s();
      if (wait > 0)
        usleep((useconds_t)(wait * 1e6));
    }
    /* The header is written last, in front of the body, once the body length is known. */
    size_t hdr_room = 160, len = hdr_room;
    req[len++] = '[';
    for (long i = lo; i < hi; i++) {
      if (i > lo)
        req[len++] = ',';
      len += command_json(s->prefix, i, req + len, cap - len);
    }
    req[len++] = ']';
    char hdr[160];
    int hl = snprintf(hdr, sizeof(hdr),
                      "POST /api/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      len - hdr_room);
    char *start = req + hdr_room - hl;
    memcpy(start, hdr, (size_t)hl);
    size_t reqlen = len - (hdr_room - (size_t)hl);
    for (;;) {
      int close_after = 0;
      int st = -1;
      if (send_all(fd, start, reqlen) == 0)
        st = read_response(fd, resp, sizeof(resp), &close_after);
      if (st < 0 || close_after) {
        close(fd);
        fd = tcp_connect(s->port);
      }
      if (st == 202 || st == 200) {
        if (s->acc_sweep) {
          /* Read after the answer arrived: a sweep numbered above k began after it. */
          int k = atomic_load(&s->sweep);
          for (long i = lo; i < hi; i++)
            atomic_store(&s->acc_sweep[i], k);
        }
        atomic_fetch_add(&s->accepted, hi - lo);
        pthread_mutex_lock(&s->mu);
        s->t_last_ok = mono_s();
        pthread_mutex_unlock(&s->mu);
        break;
      }
      if (st == 429 || st == 503 || st < 0) {
        atomic_fetch_add(&s->retries, 1);
        if (st == 429)
          atomic_fetch_add(&s->retries_429, 1);
        else if (st == 503)
          atomic_fetch_add(&s->retries_503, 1);
        usleep(20000);
        continue;
      }
      atomic_fetch_add(&s->errors, 1);
      fprintf(stderr, "sm-e2e: POST answered %d: %.300s\n", st, resp);
      break;
    }
  }
  close(fd);
  free(req);
  return NULL;
}

/* The --sink server: answers every request with 202 at once, one thread per connection. */
static void *sink_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  char *buf = malloc(1 << 20);
  if (buf == NULL) {
    close(fd);
    return NULL;
  }
  size_t have = 0;
  static const char ok[] = "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                           "Content-Length: 2\r\n\r\n[]";
  for (;;) {
    char *hend = have ? memmem(buf, have, "\r\n\r\n", 4) : NULL;
    if (hend) {
      long clen = 0;
      char *cl = memmem(buf, (size_t)(hend - buf), "Content-Length:", 15);
      if (cl)
        clen = atol(cl + 15);
      size_t total = (size_t)(hend + 4 - buf) + (size_t)clen;
      if (have >= total) {
        if (send_all(fd, ok, sizeof(ok) - 1) != 0)
          break;
        memmove(buf, buf + total, have - total);
        have -= total;
        continue;
      }
    }
    if (have == (1 << 20))
      break;
    ssize_t r = recv(fd, buf + have, (1 << 20) - have, 0);
    if (r <= 0)
      break;
    have += (size_t)r;
  }
  free(buf);
  close(fd);
  return NULL;
}

static void *sink_accept(void *arg) {
  int lfd = (int)(intptr_t)arg;
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
      return NULL;
    pthread_t th;
    pthread_create(&th, NULL, sink_conn, (void *)(intptr_t)fd);
    pthread_detach(th);
  }
}

static int start_sink(void) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 64) != 0 ||
      getsockname(lfd, (struct sockaddr *)&a, &al) != 0)
    die("cannot start the sink");
  pthread_t th;
  pthread_create(&th, NULL, sink_accept, (void *)(intptr_t)lfd);
  pthread_detach(th);
  return ntohs(a.sin_port);
}

/* ---- results read over REST (--poll) ---- */

#define POLL_BODY_CAP (16u << 20) /* a page of 1000 commands stays far below */
#define POLL_CURSOR_CAP 1024

static const char *const final_statuses[] = {"completed", "failed", "timed_out", "cancelled",
                                             "expired"};

static int is_final(const char *st) {
  for (size_t k = 0; k < sizeof(final_statuses) / sizeof(final_statuses[0]); k++)
    if (strcmp(st, final_statuses[k]) == 0)
      return 1;
  return 0;
}

typedef struct {
  submitter *s;
  int port, poll_ms, fd;
  long n;
  const char *prefix;
  atomic_int submit_done; /* set once every submitter thread returned */
  char *buf;              /* one HTTP response */
  unsigned char *final;   /* command i seen final */
  int *seen;              /* the last sweep that listed command i */
  double *lat;            /* completed_at - created_at of the final ones, ms */
  long nlat, low;         /* low: every command below it is final */
  drain_stats ds;         /* ds.unique: commands seen final */
  long sweeps, partial, pages, records, rescans, errors;
  double t0;           /* monotonic: the first submit */
  double t_last_final; /* monotonic: the page that showed the last new final command */
  char watermark[POLL_CURSOR_CAP];
} poller;

static void url_escape(const char *in, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t k = 0;
  for (const unsigned char *c = (const unsigned char *)in; *c && k + 4 < cap; c++) {
    if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
        *c == '-' || *c == '_' || *c == '.' || *c == '~') {
      out[k++] = (char)*c;
    } else {
      out[k++] = '%';
      out[k++] = hex[*c >> 4];
      out[k++] = hex[*c & 15];
    }
  }
  out[k] = '\0';
}

/* GETs one page of the listing from cursor ("" the beginning) into p->buf; returns the parsed
 * body, or NULL (counted in errors) when the request failed. */
static cJSON *poll_get(poller *p, const char *cursor, int *status) {
  char req[3 * POLL_CURSOR_CAP + 256], esc[3 * POLL_CURSOR_CAP + 1];
  url_escape(cursor, esc, sizeof(esc));
  int len = snprintf(req, sizeof(req),
                     "GET /api/commands?limit=1000%s%s HTTP/1.1\r\n"
                     "Host: 127.0.0.1\r\n\r\n",
                     cursor[0] ? "&cursor=" : "", esc);
  int close_after = 0;
  *status = -1;
  if (send_all(p->fd, req, (size_t)len) == 0)
    *status = read_response(p->fd, p->buf, POLL_BODY_CAP, &close_after);
  if (*status < 0 || close_after) {
    close(p->fd);
    p->fd = tcp_connect(p->port);
  }
  char *body = *status == 200 ? strstr(p->buf, "\r\n\r\n") : NULL;
  cJSON *doc = body ? cJSON_Parse(body + 4) : NULL;
  if (doc == NULL) {
    p->errors++;
    if (p->errors <= 5)
      fprintf(stderr, "sm-e2e: listing answered %d: %.300s\n", *status, p->buf);
  }
  return doc;
}

/* Notes one listed command; returns 0 when it is not ours, 1 when it is ours and not final, 2
 * when it is ours and final. */
static int poll_note(poller *p, const cJSON *it, int k) {
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
  size_t plen = strlen(p->prefix);
  if (!cJSON_IsString(id) || strncmp(id->valuestring, p->prefix, plen) != 0 ||
      id->valuestring[plen] != '-')
    return 0; /* another run's (the warmup's) */
  char *end;
  long i = strtol(id->valuestring + plen + 1, &end, 10);
  if (*end || i < 0 || i >= p->n) {
    p->ds.foreign++;
    return 0;
  }
  if (p->seen[i] == k && p->ds.dups++ < 3) /* listed twice in one sweep */
    fprintf(stderr, "sm-e2e: %s listed twice in one sweep\n", id->valuestring);
  p->seen[i] = k;
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
  if (!cJSON_IsString(st) || !is_final(st->valuestring))
    return 1;
  if (p->final[i])
    return 2;
  p->final[i] = 1;
  p->ds.unique++;
  p->t_last_final = mono_s();
  if (strcmp(st->valuestring, "completed") != 0)
    p->ds.not_completed++;
  double cr = parse_ts(cJSON_GetObjectItemCaseSensitive(it, "created_at"));
  double co = parse_ts(cJSON_GetObjectItemCaseSensitive(it, "completed_at"));
  if (cr < 0 || co < 0) {
    p->ds.bad++;
    return 2;
  }
  p->lat[p->nlat++] = co - cr;
  if (co > p->ds.max_completed_ms)
    p->ds.max_completed_ms = co;
  if (cr < p->ds.min_created_ms)
    p->ds.min_created_ms = cr;
  return 2;
}

/* One sweep: the listing from the watermark to its end, then the new watermark. The sweep stops
 * early at a page where none of our commands is final yet: dispatch is first come first served,
 * so what follows is the queued backlog, and re-reading it every poll would cost the manager and
 * Valkey as much as the work measured. Final commands beyond it are read by a later sweep (the
 * watermark never passes an unfinished command); the last sweeps, with everything final, read to
 * the end. */
static void poll_sweep(poller *p) {
  int k = atomic_fetch_add(&p->s->sweep, 1) + 1;
  char cursor[POLL_CURSOR_CAP], candidate[POLL_CURSOR_CAP];
  int have_candidate = 0;
  snprintf(cursor, sizeof(cursor), "%s", p->watermark);
  p->sweeps++;
  for (;;) {
    int status;
    cJSON *doc = poll_get(p, cursor, &status);
    if (doc == NULL) {
      if (status == 400)
        p->watermark[0] = '\0'; /* a cursor the store no longer knows */
      return;
    }
    p->pages++;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(doc, "commands");
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(doc, "next_cursor");
    const cJSON *it;
    int finals = 0, unfinished = 0;
    cJSON_ArrayForEach(it, arr) {
      p->records++;
      int r = poll_note(p, it, k);
      finals += r == 2;
      unfinished += r == 1;
    }
    if (unfinished && !have_candidate) {
      snprintf(candidate, sizeof(candidate), "%s", cursor);
      have_candidate = 1;
    }
    int more =
        cJSON_IsString(next) && next->valuestring[0] && strlen(next->valuestring) < sizeof(cursor);
    if (more)
      snprintf(cursor, sizeof(cursor), "%s", next->valuestring);
    cJSON_Delete(doc);
    if (more && unfinished && !finals) {
      p->partial++;
      snprintf(p->watermark, sizeof(p->watermark), "%s", candidate);
      return; /* the backlog: not listed whole, so no check for missed commands either */
    }
    if (!more)
      break;
  }
  /* Every command acknowledged before this sweep began and not final yet must have been listed;
   * one that was not lies before the watermark: start again from the beginning. */
  while (p->low < p->n && p->final[p->low])
    p->low++;
  int missed = 0;
  for (long i = p->low; i < p->n && !missed; i++) {
    int a = atomic_load(&p->s->acc_sweep[i]);
    missed = a >= 0 && a < k && !p->final[i] && p->seen[i] != k;
  }
  if (missed) {
    p->rescans++;
    p->watermark[0] = '\0';
  } else {
    /* The first page with an unfinished command of ours, else the last page (re-read next time:
     * commands created after it land there or after it). */
    snprintf(p->watermark, sizeof(p->watermark), "%s", have_candidate ? candidate : cursor);
  }
}

static void *poll_thread(void *arg) {
  poller *p = arg;
  double t_progress = mono_s();
  long last = -1;
  for (;;) {
    int done = atomic_load(&p->submit_done);
    double ts = mono_s();
    long pages = p->pages, finals = p->ds.unique;
    poll_sweep(p);
    double now = mono_s();
    fprintf(stderr, "sm-e2e: sweep %ld at %.3f s: %.3f s, %ld pages, %ld new final (%ld of %ld)\n",
            p->sweeps, ts - p->t0, now - ts, p->pages - pages, p->ds.unique - finals, p->ds.unique,
            (long)atomic_load(&p->s->accepted));
    if (p->ds.unique != last) {
      last = p->ds.unique;
      t_progress = now;
    }
    /* done was read before the sweep, so the sweep saw every acknowledged command's state */
    if (done && p->ds.unique >= (long)atomic_load(&p->s->accepted))
      break;
    if (now - t_progress > WAIT_STALL_S) {
      fprintf(stderr, "sm-e2e: final states stuck at %ld of %ld\n", p->ds.unique,
              (long)atomic_load(&p->s->accepted));
      break;
    }
    usleep((useconds_t)p->poll_ms * 1000);
  }
  return NULL;
}

static void poll_stats(poller *p) {
  long nl = p->nlat;
  if (nl > 0) {
    qsort(p->lat, (size_t)nl, sizeof(double), cmp_double);
    p->ds.p50 = p->lat[nl / 2];
    p->ds.p99 = p->lat[(long)((double)nl * 0.99) < nl ? (long)((double)nl * 0.99) : nl - 1];
    p->ds.max_lat = p->lat[nl - 1];
  }
  long missing = 0;
  for (long i = 0; i < p->n; i++)
    if (!p->final[i] && missing++ < 5)
      fprintf(stderr, "sm-e2e: no final state seen for %s-%ld\n", p->prefix, i);
}

static int mode_rest(const opts *o) {
  if (!o->sink && (!o->admin_port || (!o->poll && !o->result_queue)))
    die("rest needs --admin-port and --result-queue (or --poll, or --sink)");
  submitter s = {.port = o->sink ? start_sink() : o->admin_port,
                 .prefix = o->prefix,
                 .n = o->n,
                 .batch = o->batch,
                 .rate = o->rate,
                 .t0 = mono_s()};
  pthread_mutex_init(&s.mu, NULL);
  poller p = {
      .s = &s, .port = o->admin_port, .poll_ms = o->poll_ms, .n = o->n, .prefix = o->prefix};
  pthread_t pth;
  if (o->poll) {
    s.acc_sweep = malloc(sizeof(atomic_int) * (size_t)o->n);
    p.final = calloc((size_t)o->n, 1);
    p.seen = calloc((size_t)o->n, sizeof(int));
    p.lat = malloc(sizeof(double) * (size_t)o->n);
    p.buf = malloc(POLL_BODY_CAP);
    if (!s.acc_sweep || !p.final || !p.seen || !p.lat || !p.buf)
      die("out of memory");
    for (long i = 0; i < o->n; i++)
      atomic_init(&s.acc_sweep[i], -1);
    p.ds.min_created_ms = 1e18;
    if (o->poll_from && strlen(o->poll_from) >= sizeof(p.watermark))
      die("--poll-from too long");
    snprintf(p.watermark, sizeof(p.watermark), "%s", o->poll_from ? o->poll_from : "");
    p.fd = tcp_connect(o->admin_port);
  }
  pthread_t *th = calloc((size_t)o->conns, sizeof(pthread_t));
  double t0_wall = wall_ms(), t0 = mono_s();
  p.t0 = t0;
  for (int i = 0; i < o->conns; i++)
    pthread_create(&th[i], NULL, submit_thread, &s);
  if (o->poll)
    pthread_create(&pth, NULL, poll_thread, &p);
  for (int i = 0; i < o->conns; i++)
    pthread_join(th[i], NULL);
  free(th);
  double t_sub = s.t_last_ok - t0;
  printf("mode=rest%s n=%ld conns=%d batch=%d accepted=%ld retries=%ld (429: %ld, 503: %ld) "
         "errors=%ld submit_seconds=%.2f accepted_per_s=%.0f",
         o->sink   ? "-sink"
         : o->poll ? "-poll"
                   : "",
         o->n, o->conns, o->batch, (long)s.accepted, (long)s.retries, (long)s.retries_429,
         (long)s.retries_503, (long)s.errors, t_sub, (double)s.accepted / t_sub);
  if (o->poll) {
    atomic_store(&p.submit_done, 1);
    pthread_join(pth, NULL);
    poll_stats(&p);
    double e2e = (p.ds.unique > 0 ? p.t_last_final : mono_s()) - t0;
    double last = (p.ds.max_completed_ms - t0_wall) / 1e3;
    /* completed_per_s: the same count over the last completed_at, free of the polling delay */
    printf(" e2e_seconds=%.2f e2e_per_s=%.0f last_completed_after_s=%.2f completed_per_s=%.0f "
           "poll_ms=%d sweeps=%ld partial_sweeps=%ld poll_pages=%ld poll_records=%ld rescans=%ld "
           "poll_errors=%ld",
           e2e, (double)p.ds.unique / e2e, last, last > 0 ? (double)p.ds.unique / last : 0.0,
           p.poll_ms, p.sweeps, p.partial, p.pages, p.records, p.rescans, p.errors);
    print_drain(&p.ds, o->n);
    printf(" poll_watermark=%s", p.watermark[0] ? p.watermark : "-");
    close(p.fd);
    free(s.acc_sweep);
    free(p.final);
    free(p.seen);
    free(p.lat);
    free(p.buf);
  } else if (!o->sink) {
    long qn = 0;
    double t_end = wait_results(o->amqp_port, o->result_queue, s.accepted, &qn);
    drain_stats ds;
    drain(o->amqp_port, o->result_queue, o->prefix, o->n, &ds);
    double e2e = e2e_seconds(t_end - t0, &ds, t0_wall);
    printf(" e2e_seconds=%.2f e2e_per_s=%.0f last_completed_after_s=%.2f", e2e,
           (double)ds.unique / e2e, (ds.max_completed_ms - t0_wall) / 1e3);
    print_drain(&ds, o->n);
  }
  printf("\n");
  return 0;
}

/* ---- AMQP path ---- */

static int mode_amqp(const opts *o) {
  if (!o->command_queue || !o->result_queue)
    die("amqp needs --command-queue and --result-queue");
  amqp_connection_state_t c = amqp_open(o->amqp_port);
  queue_declare(c, o->command_queue, 0);
  double t0_wall = wall_ms(), t0 = mono_s();
  long nacks = publish_confirmed(c, o->command_queue, o->n, o->window, command_body, o->prefix);
  double t_pub = mono_s() - t0;
  amqp_close_all(c);
  long qn = 0;
  double t_end = wait_results(o->amqp_port, o->result_queue, o->n, &qn);
  drain_stats ds;
  drain(o->amqp_port, o->result_queue, o->prefix, o->n, &ds);
  double e2e = e2e_seconds(t_end - t0, &ds, t0_wall);
  printf("mode=amqp n=%ld window=%d nacks=%ld publish_seconds=%.2f published_per_s=%.0f "
         "e2e_seconds=%.2f e2e_per_s=%.0f last_completed_after_s=%.2f",
         o->n, o->window, nacks, t_pub, (double)o->n / t_pub, e2e, (double)ds.unique / e2e,
         (ds.max_completed_ms - t0_wall) / 1e3);
  print_drain(&ds, o->n);
  printf("\n");
  return 0;
}

int main(int argc, char **argv) {
  opts o;
  parse_opts(&o, argc, argv);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (strcmp(o.mode, "raw") == 0)
    return mode_raw(&o);
  if (strcmp(o.mode, "rest") == 0)
    return mode_rest(&o);
  if (strcmp(o.mode, "amqp") == 0)
    return mode_amqp(&o);
  die("mode must be raw, rest or amqp");
  return 2;
}
