/* run.c - the load-test driver. One 20 ms tick moves the run through its phases:
 *   CONNECT  agents connect (spread over --ramp-up); submission starts when all are connected or
 *            ramp-up + 10 s passed;
 *   SUBMIT   batches go out on --connections keep-alive HTTP connections (or AMQP publishes);
 *            refused elements (429/503) are retried after Retry-After, with the same client ids,
 *            which makes a retry idempotent;
 *   DRAIN    no more submissions; results are awaited up to --drain-timeout;
 *   FINISH   the manager's counters are read again, the report is computed, everything closes.
 *
 * Results, REST: GET /api/commands lists in creation order, so a sweep starts at a watermark
 * cursor: the start of the first page that still held one of our unfinished commands. A command
 * accepted before a sweep began but not seen by it (which a same-millisecond reordering could
 * cause) resets the watermark to the beginning. Results, AMQP: the result queue pushes each final
 * command once, which is cheaper (no re-reading), so the AMQP mode reads it.
 */
#include "loadtest/run.h"

#include "client/agent.h"
#include "client/opts.h"
#include "loadtest/chaos.h"
#include "loadtest/http_client.h"
#include "mq/amqp.h"
#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"
#include "util/timeutil.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TICK_MS 20
#define LT_CONNS_MAX 64
#define LT_FLEETS_MAX (2 * LT_SERVERS_MAX + 1) /* a scan and a hello fleet per server, crash */
#define LT_HTTP_MAX_BODY (64u << 20)           /* a listing page of 1000 commands stays far below */
#define LT_AMQP_WINDOW 2000                    /* AMQP publishes awaiting a confirm */
#define LT_EV_STEP_MS 100                      /* resolution of the error / retry event counts */
#define LT_CHAOS_SETTLE_S 3.0   /* submission goes on this long after the last fault */
#define LT_TIMELINE_MAX 600     /* points of the report's timeline */
#define LT_DETECT_GRACE_MS 1000 /* a fault is detected while active or this long after */

enum phase { P_INIT = 0, P_CONNECT, P_SUBMIT, P_DRAIN, P_FINISH, P_CLOSING, P_DONE };
enum cmd_state { S_NEW = 0, S_SENDING, S_ACCEPTED, S_FINAL, S_REFUSED };

/* One command of the run; its id is <run id>-<index>. */
typedef struct lt_cmd {
  int64_t submit_ms; /* wall clock at the accepted submission */
  int64_t done_ms;   /* completed_at of the final result */
  int64_t first_ms;  /* wall clock of the first attempt */
  uint8_t state;     /* enum cmd_state */
  uint8_t type;      /* index into the mix */
  uint8_t status;    /* final status index into status_names */
  uint8_t twice;     /* a second, different final status was seen */
  uint32_t seen;     /* last sweep that listed it */
} lt_cmd;

static const char *const status_names[] = {"completed", "failed", "timed_out", "cancelled",
                                           "expired"};
#define NSTATUS 5

/* A submitting HTTP connection and its batch in flight. */
typedef struct submit_conn {
  lt_run *run;
  lt_http *http;
  uint64_t *batch; /* command indices in the POST */
  size_t n;
  int64_t sent_ms;
  uint64_t not_before; /* loop ms: Retry-After */
} submit_conn;

/* A snapshot of GET /api/status counters. */
typedef struct mgr_counters {
  int ok;
  double v[16];
} mgr_counters;

static const char *const mgr_keys[] = {"commands.received",       "commands.dispatched",
                                       "commands.retries",        "commands.completed",
                                       "commands.failed",         "commands.timed_out",
                                       "commands.cancelled",      "commands.expired",
                                       "commands.refused_full",   "commands.refused_unavailable",
                                       "agents.registered_total", "agents.disconnected_total"};
#define NMGR (sizeof(mgr_keys) / sizeof(mgr_keys[0]))

struct lt_run {
  uv_loop_t *loop;
  const lt_scenario *s;
  FILE *progress;
  enum phase phase;
  lt_run_done_cb done;
  void *done_ud;
  uv_timer_t tick;
  int tick_open;
  char run_id[48]; /* command id prefix */
  /* agents */
  client_opts fopts[LT_FLEETS_MAX];
  client_fleet *fleets[LT_FLEETS_MAX];
  char prefixes[LT_FLEETS_MAX][96]; /* id prefix of each fleet */
  size_t nfleets;
  int crash_fleet; /* index of the crashing fleet, -1 none */
  uint32_t crash_agents;
  int crashed;
  size_t fleets_open;
  /* commands */
  lt_cmd *cmds;
  uint64_t ncmds, capcmds; /* created so far, allocated */
  uint64_t planned;        /* 0: unlimited */
  uint64_t *retry;         /* indices to submit again */
  size_t nretry, capretry;
  uint64_t accepted, finals, pending_low; /* pending_low: no unfinished command below it */
  uint64_t sending;
  int64_t wrr[LT_TYPES_MAX]; /* smooth weighted round-robin state (goes negative) */
  /* submission */
  struct sockaddr_storage api_addr;
  char api_host[256];
  submit_conn conns[LT_CONNS_MAX];
  size_t nconns;
  uint64_t submit_start, submit_end; /* loop ms */
  int64_t first_submit_ms, last_final_ms;
  uint64_t phase_start;
  /* polling */
  lt_http *poll_http;
  int polling;
  uint64_t next_poll;
  uint32_t sweep;
  char watermark[256];   /* cursor of the sweep start, "" the beginning */
  char page_cursor[256]; /* cursor of the page being fetched */
  char candidate[256];   /* first page of this sweep that held an unfinished command */
  int have_candidate;
  uint64_t sweep_start_accepted; /* commands accepted when the sweep began */
  /* status */
  lt_http *status_http;
  mgr_counters before, after;
  int status_busy;
  /* AMQP */
  mq_conn *mq;
  uint64_t amqp_inflight;
  /* report */
  lt_report rep;
  uint32_t connected_start;
  uint64_t last_progress;
  int aborted;
  /* chaos, deadline */
  lt_chaos *chaos;
  int chaos_open;
  char server_addrs[LT_SERVERS_MAX][128]; /* --server with proxy:NAME resolved */
  int64_t t0_ms;                          /* wall clock when submission started */
  uint32_t (*ev)[2];                      /* per LT_EV_STEP_MS: errors, retries */
  size_t nev;
  uint64_t deadline;        /* loop ms */
  uint64_t submit_for_ms;   /* submission lasts at least this long (0: until all submitted) */
  int api_reached;          /* the manager API answered something */
  uint64_t last_status_try; /* loop ms */
  uint64_t run_start;       /* loop ms at lt_run_start */
  lt_fault_report *frep;
  lt_tl_point *tl;
};

static void set_phase(lt_run *r, enum phase p) {
  r->phase = p;
  r->phase_start = uv_now(r->loop);
}

/* Counts an event (0: error, 1: retry) in its LT_EV_STEP_MS step after submission started. */
static void event(lt_run *r, int which) {
  if (r->t0_ms == 0)
    return;
  int64_t d = sm_now_ms() - r->t0_ms;
  size_t k = d > 0 ? (size_t)(d / LT_EV_STEP_MS) : 0;
  if (k >= r->nev) {
    size_t n = r->nev ? r->nev : 256;
    while (n <= k)
      n *= 2;
    uint32_t(*e)[2] = sm_realloc(r->ev, n * sizeof(*e));
    if (e == NULL)
      return; /* the figures lose one event; the run goes on */
    memset(e + r->nev, 0, (n - r->nev) * sizeof(*e));
    r->ev = e;
    r->nev = n;
  }
  r->ev[k][which]++;
}

static void err_kind(lt_run *r, const char *kind) {
  lt_count_add(r->rep.errors, &r->rep.nerrors, LT_KINDS_MAX, kind, 1);
  event(r, 0);
}

/* ---- commands ---------------------------------------------------------------------------- */

static int more_to_create(const lt_run *r) {
  if (r->phase != P_SUBMIT)
    return 0;
  return r->planned == 0 || r->ncmds < r->planned;
}

/* Creates the next command; returns its index or UINT64_MAX. */
static uint64_t new_cmd(lt_run *r) {
  if (r->ncmds == r->capcmds) {
    uint64_t cap = r->capcmds ? r->capcmds * 2 : 1024;
    if (cap > LT_COMMANDS_MAX)
      cap = LT_COMMANDS_MAX;
    if (cap <= r->ncmds)
      return UINT64_MAX;
    lt_cmd *n = sm_realloc(r->cmds, cap * sizeof(*n));
    if (n == NULL)
      return UINT64_MAX;
    memset(n + r->capcmds, 0, (cap - r->capcmds) * sizeof(*n));
    r->cmds = n;
    r->capcmds = cap;
  }
  /* Smooth weighted round-robin: the mix is exact over every window of sum(weights). */
  uint32_t total = 0;
  size_t best = 0;
  for (size_t i = 0; i < r->s->ntypes; i++) {
    r->wrr[i] += r->s->types[i].weight;
    total += r->s->types[i].weight;
    if (r->wrr[i] > r->wrr[best])
      best = i;
  }
  r->wrr[best] -= total;
  r->cmds[r->ncmds].type = (uint8_t)best;
  return r->ncmds++;
}

static int append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int append(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0)
      return SM_EINVAL;
    if ((size_t)n < *cap - *len) {
      *len += (size_t)n;
      return 0;
    }
    size_t nc = *cap * 2 + (size_t)n;
    char *b = sm_realloc(*buf, nc);
    if (b == NULL)
      return SM_ENOMEM;
    *buf = b;
    *cap = nc;
  }
}

/* Appends one command's JSON. */
static int cmd_json(lt_run *r, uint64_t i, char **buf, size_t *len, size_t *cap) {
  const char *type = r->s->types[r->cmds[i].type].name;
  int rc = append(buf, len, cap, "{\"id\":\"%s-%llu\",\"type\":\"%s\",\"timeout_seconds\":%u,",
                  r->run_id, (unsigned long long)i, type, r->s->command_timeout);
  if (rc)
    return rc;
  if (strcmp(type, "sleep") == 0)
    return append(buf, len, cap, "\"params\":{\"seconds\":\"%g\"}}", r->s->sleep_seconds);
  if (strcmp(type, "exec") == 0) /* a command line (hello agents run exec and status) */
    return append(buf, len, cap, "\"params\":{\"command\":\"echo lt-%llu\"}}",
                  (unsigned long long)i);
  if (strcmp(type, "scan") == 0)
    return append(buf, len, cap, "\"params\":{\"target\":\"10.%u.%u.%u\"}}",
                  (unsigned)(i >> 16 & 255), (unsigned)(i >> 8 & 255), (unsigned)(i & 255));
  return append(buf, len, cap, "\"params\":{\"seq\":\"%llu\"}}", (unsigned long long)i);
}

/* Index of one of our ids, or UINT64_MAX. */
static uint64_t id_index(const lt_run *r, const char *id) {
  size_t pl = strlen(r->run_id);
  if (id == NULL || strncmp(id, r->run_id, pl) != 0 || id[pl] != '-')
    return UINT64_MAX;
  char *end;
  unsigned long long v = strtoull(id + pl + 1, &end, 10);
  if (*end || end == id + pl + 1 || v >= r->ncmds)
    return UINT64_MAX;
  return v;
}

static void mark_accepted(lt_run *r, uint64_t i, int64_t sent_ms) {
  lt_cmd *c = &r->cmds[i];
  if (c->state == S_ACCEPTED || c->state == S_FINAL)
    return;
  c->state = S_ACCEPTED;
  c->submit_ms = sent_ms;
  r->accepted++;
  if (r->first_submit_ms == 0 || sent_ms < r->first_submit_ms)
    r->first_submit_ms = sent_ms;
}

static int status_index(const char *st) {
  for (int k = 0; st && k < NSTATUS; k++)
    if (strcmp(st, status_names[k]) == 0)
      return k;
  return -1;
}

static void mark_final(lt_run *r, uint64_t i, int st, int64_t done_ms) {
  lt_cmd *c = &r->cmds[i];
  if (c->state == S_FINAL && !c->twice && (c->status != st || c->done_ms != done_ms)) {
    c->twice = 1; /* final once already, now final differently: it ran to an end twice */
    err_kind(r, "final_twice");
  }
  if (c->state != S_ACCEPTED)
    return; /* not yet acknowledged to us, or already counted */
  c->state = S_FINAL;
  c->status = (uint8_t)st;
  c->done_ms = done_ms;
  r->finals++;
  if (done_ms > r->last_final_ms)
    r->last_final_ms = done_ms;
}

static void push_retry(lt_run *r, uint64_t i) {
  if (r->nretry == r->capretry) {
    size_t cap = r->capretry ? r->capretry * 2 : 256;
    uint64_t *n = sm_realloc(r->retry, cap * sizeof(*n));
    if (n == NULL) {
      r->cmds[i].state = S_REFUSED;
      err_kind(r, "out_of_memory");
      return;
    }
    r->retry = n;
    r->capretry = cap;
  }
  r->cmds[i].state = S_NEW;
  r->retry[r->nretry++] = i;
  event(r, 1);
}

/* ---- REST submission --------------------------------------------------------------------- */

static void on_submitted(void *ud, int err, const lt_http_resp *resp) {
  submit_conn *sc = ud;
  lt_run *r = sc->run;
  r->sending -= sc->n;
  if (err) {
    err_kind(r, err == SM_ETIMEDOUT ? "submit_timeout" : "submit_connection");
    for (size_t k = 0; k < sc->n; k++)
      push_retry(r, sc->batch[k]);
    sc->not_before = uv_now(r->loop) + 200;
    sc->n = 0;
    return;
  }
  cJSON *doc = cJSON_ParseWithLength(resp->body, resp->len);
  const cJSON *arr = NULL;
  if (resp->status == 202)
    arr = doc;
  else if (doc)
    arr = cJSON_GetObjectItemCaseSensitive(doc, "results");
  if (resp->status != 202) {
    char kind[32];
    snprintf(kind, sizeof(kind), "http_%d", resp->status);
    err_kind(r, kind);
  }
  int retryable =
      resp->status == 202 || resp->status == 429 || resp->status == 503 || resp->status >= 500;
  for (size_t k = 0; k < sc->n; k++) {
    uint64_t i = sc->batch[k];
    const cJSON *it = cJSON_IsArray(arr) ? cJSON_GetArrayItem(arr, (int)k) : NULL;
    const cJSON *id = it ? cJSON_GetObjectItemCaseSensitive(it, "id") : NULL;
    if (cJSON_IsString(id))
      mark_accepted(r, i, sc->sent_ms);
    else if (retryable)
      push_retry(r, i);
    else
      r->cmds[i].state = S_REFUSED;
  }
  if (resp->status != 202) {
    /* Retry-After is whole seconds; "as fast as the manager accepts" retries sooner. */
    double ra = resp->retry_after > 0 ? resp->retry_after : 0.1;
    if (ra > 0.2)
      ra = 0.2;
    sc->not_before = uv_now(r->loop) + (uint64_t)(ra * 1000);
  }
  cJSON_Delete(doc);
  sc->n = 0;
}

/* How many commands the rate allows now. */
static uint64_t rate_allowance(lt_run *r) {
  if (r->s->rate <= 0)
    return UINT64_MAX;
  double secs = (double)(uv_now(r->loop) - r->submit_start) / 1000.0;
  double allowed = r->s->rate * secs + 1;
  uint64_t done = r->ncmds - r->nretry; /* first attempts so far */
  return allowed > (double)done ? (uint64_t)(allowed - (double)done) : 0;
}

static void submit_rest(lt_run *r) {
  uint64_t now = uv_now(r->loop);
  for (size_t c = 0; c < r->nconns; c++) {
    submit_conn *sc = &r->conns[c];
    if (lt_http_busy(sc->http) || sc->n || now < sc->not_before)
      continue;
    uint64_t allow = rate_allowance(r);
    size_t n = 0;
    while (n < r->s->batch && r->nretry > 0)
      sc->batch[n++] = r->retry[--r->nretry];
    while (n < r->s->batch && allow > 0 && more_to_create(r)) {
      uint64_t i = new_cmd(r);
      if (i == UINT64_MAX)
        break;
      sc->batch[n++] = i;
      allow--;
    }
    if (n == 0)
      return;
    size_t cap = 256 * n + 64, len = 0;
    char *body = sm_malloc(cap);
    int rc = body ? append(&body, &len, &cap, "[") : SM_ENOMEM;
    for (size_t k = 0; rc == 0 && k < n; k++) {
      rc = cmd_json(r, sc->batch[k], &body, &len, &cap);
      if (rc == 0 && k + 1 < n)
        rc = append(&body, &len, &cap, ",");
    }
    if (rc == 0)
      rc = append(&body, &len, &cap, "]");
    sc->sent_ms = sm_now_ms();
    if (rc == 0)
      rc = lt_http_request(sc->http, "POST", "/api/commands", body, len, on_submitted, sc);
    free(body);
    if (rc) {
      err_kind(r, "submit_request");
      for (size_t k = 0; k < n; k++)
        push_retry(r, sc->batch[k]);
      sc->not_before = now + 200;
      continue;
    }
    for (size_t k = 0; k < n; k++) {
      r->cmds[sc->batch[k]].state = S_SENDING;
      if (r->cmds[sc->batch[k]].first_ms == 0)
        r->cmds[sc->batch[k]].first_ms = sc->sent_ms;
    }
    sc->n = n;
    r->sending += n;
  }
}

/* ---- AMQP submission and results --------------------------------------------------------- */

typedef struct amqp_pub {
  lt_run *r;
  uint64_t i;
  int64_t sent_ms;
} amqp_pub;

static void on_published(int status, void *ud) {
  amqp_pub *p = ud;
  lt_run *r = p->r;
  r->amqp_inflight--;
  r->sending--;
  if (status == 0)
    mark_accepted(r, p->i, p->sent_ms);
  else if (status != SM_ECANCELED) {
    err_kind(r, status == SM_EIO ? "amqp_nack" : "amqp_unconfirmed");
    push_retry(r, p->i); /* same id: the manager takes a repeat as a duplicate */
  }
  free(p);
}

static void submit_amqp(lt_run *r) {
  if (!mq_conn_is_up(r->mq))
    return;
  uint64_t allow = rate_allowance(r);
  char *buf = sm_malloc(512);
  size_t cap = 512;
  while (buf && r->amqp_inflight < LT_AMQP_WINDOW) {
    uint64_t i;
    if (r->nretry > 0)
      i = r->retry[--r->nretry];
    else if (allow > 0 && more_to_create(r) && (i = new_cmd(r)) != UINT64_MAX)
      allow--;
    else
      break;
    size_t len = 0;
    amqp_pub *p = sm_malloc(sizeof(*p));
    if (p == NULL || cmd_json(r, i, &buf, &len, &cap)) {
      free(p);
      push_retry(r, i);
      break;
    }
    *p = (amqp_pub){.r = r, .i = i, .sent_ms = sm_now_ms()};
    mq_props props = {.content_type = {"application/json", 16}, .persistent = 1};
    int rc =
        mq_conn_publish(r->mq, r->s->command_queue, (mq_slice){buf, len}, &props, on_published, p);
    if (rc) {
      free(p);
      push_retry(r, i);
      if (rc != SM_ELIMIT && rc != SM_ECLOSED)
        err_kind(r, "amqp_publish");
      break;
    }
    r->cmds[i].state = S_SENDING;
    if (r->cmds[i].first_ms == 0)
      r->cmds[i].first_ms = p->sent_ms;
    r->amqp_inflight++;
    r->sending++;
  }
  free(buf);
}

static void on_result_msg(mq_conn *c, const mq_message *m, void *ud) {
  lt_run *r = ud;
  cJSON *doc = cJSON_ParseWithLength(m->body.base, m->body.len);
  const cJSON *id = doc ? cJSON_GetObjectItemCaseSensitive(doc, "id") : NULL;
  const cJSON *st = doc ? cJSON_GetObjectItemCaseSensitive(doc, "status") : NULL;
  const cJSON *ca = doc ? cJSON_GetObjectItemCaseSensitive(doc, "completed_at") : NULL;
  uint64_t i = cJSON_IsString(id) ? id_index(r, id->valuestring) : UINT64_MAX;
  int k = cJSON_IsString(st) ? status_index(st->valuestring) : -1;
  int64_t done = 0;
  if (i != UINT64_MAX && k >= 0) {
    if (!cJSON_IsString(ca) || sm_rfc3339_parse(ca->valuestring, &done))
      done = sm_now_ms();
    mark_final(r, i, k, done);
  } else {
    err_kind(r, "foreign_results"); /* not ours: acked anyway, or it would come back forever */
  }
  cJSON_Delete(doc);
  if (mq_conn_ack(c, m->generation, m->delivery_tag) != 0)
    sm_log_debug("loadtest", "result not acked (the broker redelivers it)");
}

static void on_mq_state(mq_conn *c, int up, int err, void *ud) {
  lt_run *r = ud;
  (void)c;
  if (!up) {
    err_kind(r, "amqp_disconnect");
    sm_log_warn("loadtest", "AMQP connection down", SM_LE(err));
  }
}

/* ---- REST result polling ----------------------------------------------------------------- */

static void poll_page(lt_run *r);

static void url_escape(const char *in, char *out, size_t outlen) {
  static const char hex[] = "0123456789ABCDEF";
  size_t k = 0;
  for (; *in && k + 4 < outlen; in++) {
    unsigned char ch = (unsigned char)*in;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
        ch == '-' || ch == '_' || ch == '.' || ch == '~') {
      out[k++] = (char)ch;
    } else {
      out[k++] = '%';
      out[k++] = hex[ch >> 4];
      out[k++] = hex[ch & 15];
    }
  }
  out[k] = '\0';
}

/* Ends a sweep: advances the watermark, or resets it when a command was missed. */
static void sweep_done(lt_run *r, const char *last_cursor) {
  r->polling = 0;
  r->next_poll = uv_now(r->loop) + (uint64_t)(r->s->poll_interval * 1000);
  int missed = 0;
  while (r->pending_low < r->ncmds && r->cmds[r->pending_low].state != S_ACCEPTED &&
         r->cmds[r->pending_low].state != S_SENDING && r->cmds[r->pending_low].state != S_NEW)
    r->pending_low++;
  for (uint64_t i = r->pending_low; i < r->ncmds && i < r->sweep_start_accepted; i++)
    if (r->cmds[i].state == S_ACCEPTED && r->cmds[i].seen != r->sweep) {
      missed = 1;
      break;
    }
  if (missed) {
    r->watermark[0] = '\0';
    err_kind(r, "poll_rescans");
  } else if (r->have_candidate) {
    snprintf(r->watermark, sizeof(r->watermark), "%s", r->candidate);
  } else {
    snprintf(r->watermark, sizeof(r->watermark), "%s", last_cursor);
  }
}

static void on_page(void *ud, int err, const lt_http_resp *resp) {
  lt_run *r = ud;
  if (err || resp->status != 200) {
    char kind[32];
    snprintf(kind, sizeof(kind), err ? "poll_connection" : "poll_http_%d", err ? 0 : resp->status);
    err_kind(r, kind);
    if (!err && resp->status == 400)
      r->watermark[0] = '\0'; /* a cursor the store no longer knows */
    r->polling = 0;
    r->next_poll = uv_now(r->loop) + (uint64_t)(r->s->poll_interval * 1000);
    return;
  }
  cJSON *doc = cJSON_ParseWithLength(resp->body, resp->len);
  const cJSON *arr = doc ? cJSON_GetObjectItemCaseSensitive(doc, "commands") : NULL;
  const cJSON *next = doc ? cJSON_GetObjectItemCaseSensitive(doc, "next_cursor") : NULL;
  const cJSON *it;
  int unfinished = 0;
  cJSON_ArrayForEach(it, arr) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
    uint64_t i = cJSON_IsString(id) ? id_index(r, id->valuestring) : UINT64_MAX;
    if (i == UINT64_MAX)
      continue;
    r->cmds[i].seen = r->sweep;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "status");
    int k = cJSON_IsString(st) ? status_index(st->valuestring) : -1;
    if (k < 0) {
      unfinished = 1;
      continue;
    }
    if (r->cmds[i].state == S_SENDING)
      unfinished = 1; /* final, but its 202 is still on the way: count it next sweep */
    const cJSON *ca = cJSON_GetObjectItemCaseSensitive(it, "completed_at");
    int64_t done = 0;
    if (!cJSON_IsString(ca) || sm_rfc3339_parse(ca->valuestring, &done))
      done = sm_now_ms();
    mark_final(r, i, k, done);
  }
  if (unfinished && !r->have_candidate) {
    snprintf(r->candidate, sizeof(r->candidate), "%s", r->page_cursor);
    r->have_candidate = 1;
  }
  if (cJSON_IsString(next) && next->valuestring[0] && r->phase < P_FINISH) {
    snprintf(r->page_cursor, sizeof(r->page_cursor), "%s", next->valuestring);
    cJSON_Delete(doc);
    poll_page(r);
    return;
  }
  char last[256];
  snprintf(last, sizeof(last), "%s", r->page_cursor);
  cJSON_Delete(doc);
  sweep_done(r, last);
}

static void poll_page(lt_run *r) {
  char path[1024], esc[800];
  if (r->page_cursor[0]) {
    url_escape(r->page_cursor, esc, sizeof(esc));
    snprintf(path, sizeof(path), "/api/commands?limit=1000&cursor=%s", esc);
  } else {
    snprintf(path, sizeof(path), "/api/commands?limit=1000");
  }
  if (lt_http_request(r->poll_http, "GET", path, NULL, 0, on_page, r)) {
    err_kind(r, "poll_request");
    r->polling = 0;
    r->next_poll = uv_now(r->loop) + (uint64_t)(r->s->poll_interval * 1000);
  }
}

static void poll_start(lt_run *r) {
  r->polling = 1;
  r->sweep++;
  r->have_candidate = 0;
  r->sweep_start_accepted = r->ncmds;
  /* Only commands acknowledged before the sweep began must be seen by it. */
  for (uint64_t i = r->pending_low; i < r->ncmds; i++)
    if (r->cmds[i].state == S_SENDING || r->cmds[i].state == S_NEW) {
      r->sweep_start_accepted = i;
      break;
    }
  snprintf(r->page_cursor, sizeof(r->page_cursor), "%s", r->watermark);
  poll_page(r);
}

/* ---- manager counters -------------------------------------------------------------------- */

static double json_path(const cJSON *doc, const char *path, int *ok) {
  char a[64];
  const char *dot = strchr(path, '.');
  snprintf(a, sizeof(a), "%.*s", (int)(dot - path), path);
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(doc, a);
  const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, dot + 1) : NULL;
  if (!cJSON_IsNumber(v)) {
    *ok = 0;
    return 0;
  }
  return v->valuedouble;
}

static void finish(lt_run *r);

static void on_status(void *ud, int err, const lt_http_resp *resp) {
  lt_run *r = ud;
  mgr_counters *mc = r->phase == P_FINISH ? &r->after : &r->before;
  r->status_busy = 0;
  if (!err)
    r->api_reached = 1;
  if (err || resp->status != 200) {
    err_kind(r, err ? "status_connection" : "status_http");
  } else {
    cJSON *doc = cJSON_ParseWithLength(resp->body, resp->len);
    int ok = doc != NULL;
    for (size_t k = 0; ok && k < NMGR; k++)
      mc->v[k] = json_path(doc, mgr_keys[k], &ok);
    mc->ok = ok;
    cJSON_Delete(doc);
  }
  if (r->phase == P_FINISH)
    finish(r);
}

static void read_status(lt_run *r) {
  r->status_busy = 1;
  if (lt_http_request(r->status_http, "GET", "/api/status", NULL, 0, on_status, r)) {
    r->status_busy = 0;
    err_kind(r, "status_request");
    if (r->phase == P_FINISH)
      finish(r);
  }
}

/* ---- the run ----------------------------------------------------------------------------- */

static uint32_t connected_now(lt_run *r) {
  uint32_t n = 0;
  for (size_t k = 0; k < r->nfleets; k++) {
    if (r->fleets[k] == NULL || ((int)k == r->crash_fleet && r->crashed))
      continue;
    client_stats st;
    client_fleet_stats(r->fleets[k], &st);
    n += st.connected;
  }
  return n;
}

static void print_progress(lt_run *r) {
  if (r->progress == NULL)
    return;
  double t = (double)(uv_now(r->loop) - r->submit_start) / 1000.0;
  if (r->phase < P_SUBMIT)
    t = (double)(uv_now(r->loop) - r->run_start) / 1000.0; /* the connect phase counts too */
  fprintf(r->progress,
          "progress t=%.1fs phase=%s submitted=%llu accepted=%llu final=%llu pending=%llu "
          "agents=%u rate=%.1f/s\n",
          t,
          r->phase == P_CONNECT  ? "connect"
          : r->phase == P_SUBMIT ? "submit"
                                 : "drain",
          (unsigned long long)r->ncmds, (unsigned long long)r->accepted,
          (unsigned long long)r->finals, (unsigned long long)(r->accepted - r->finals),
          connected_now(r), t > 0 && r->phase >= P_SUBMIT ? (double)r->finals / t : 0.0);
  fflush(r->progress);
}

static void on_fleet_stopped(client_fleet *f, void *ud) {
  lt_run *r = ud;
  (void)f;
  r->fleets_open--;
}

static void maybe_crash(lt_run *r) {
  if (r->crash_fleet < 0 || r->crashed)
    return;
  client_stats st;
  client_fleet_stats(r->fleets[r->crash_fleet], &st);
  /* Crash once the crashing agents hold unanswered commands (they hang on every command), so the
   * manager has something to re-dispatch; or when submission is over. */
  if (st.commands >= r->crash_agents || r->phase >= P_DRAIN) {
    r->crashed = 1;
    sm_log_info("loadtest", "crashing agents", SM_LI("agents", r->crash_agents),
                SM_LI("commands_held", st.commands));
    client_fleet_stop(r->fleets[r->crash_fleet], on_fleet_stopped, r);
  }
}

/* Latency of command c as seen at `now` (wall ms): final, or still in flight. */
static double cmd_latency(const lt_cmd *c, int64_t now) {
  if (c->state == S_FINAL)
    return c->done_ms > c->submit_ms ? (double)(c->done_ms - c->submit_ms) : 0.0;
  if (c->state == S_ACCEPTED)
    return now > c->submit_ms ? (double)(now - c->submit_ms) : 0.0;
  return -1;
}

/* Errors and retries counted in [from, to) (wall ms). */
static void events_between(const lt_run *r, int64_t from, int64_t to, uint64_t *errors,
                           uint64_t *retries) {
  *errors = *retries = 0;
  for (size_t k = 0; k < r->nev; k++) {
    int64_t t = r->t0_ms + (int64_t)k * LT_EV_STEP_MS;
    if (t + LT_EV_STEP_MS <= from || t >= to)
      continue;
    *errors += r->ev[k][0];
    *retries += r->ev[k][1];
  }
}

/* Per fault figures, the spike threshold and the timeline. */
static void compute_chaos(lt_run *r, lt_report *rep) {
  int64_t now = sm_now_ms();
  int64_t t0 = r->t0_ms;
  size_t nf = r->chaos ? lt_chaos_nfaults(r->chaos) : 0;
  /* Baseline: commands finished before the first fault started. */
  int64_t first = INT64_MAX;
  for (size_t f = 0; f < nf; f++) {
    const lt_fault_state *st = lt_chaos_fault(r->chaos, f);
    if (st->start_ms && st->start_ms < first)
      first = st->start_ms;
  }
  uint64_t nb = 0;
  for (uint64_t i = 0; i < r->ncmds; i++)
    nb += r->cmds[i].state == S_FINAL && r->cmds[i].done_ms < first;
  double *b = nb ? sm_malloc(nb * sizeof(double)) : NULL;
  uint64_t k = 0;
  for (uint64_t i = 0; b && i < r->ncmds; i++)
    if (r->cmds[i].state == S_FINAL && r->cmds[i].done_ms < first)
      b[k++] = cmd_latency(&r->cmds[i], now);
  lt_latency bl;
  lt_latency_compute(b, k, &bl);
  free(b);
  rep->baseline_p99_ms = bl.p99;
  /* A spike: three times the baseline p99, at least 250 ms above it; 1 s without a baseline. */
  rep->spike_threshold_ms = k >= 5 ? (bl.p99 * 3 > bl.p99 + 250 ? bl.p99 * 3 : bl.p99 + 250) : 1000;
  double thr = rep->spike_threshold_ms;
  if (nf) {
    r->frep = sm_calloc(nf, sizeof(*r->frep));
    if (r->frep)
      rep->nfaults = nf;
    rep->faults = r->frep;
  }
  for (size_t f = 0; f < rep->nfaults; f++) {
    const lt_fault_state *st = lt_chaos_fault(r->chaos, f);
    lt_fault_report *fr = &r->frep[f];
    snprintf(fr->target, sizeof(fr->target), "%s", st->spec->target);
    fr->action = lt_action_name(st->spec->action);
    fr->at = st->spec->at;
    fr->duration = st->spec->duration;
    fr->pid = st->pid;
    fr->restart_pid = st->restart_pid;
    snprintf(fr->error, sizeof(fr->error), "%s", st->error);
    fr->start_s = fr->end_s = fr->detect_s = fr->recover_s = -1;
    if (st->start_ms == 0 || t0 == 0)
      continue;
    int64_t s0 = st->start_ms, e0 = st->end_ms ? st->end_ms : now;
    fr->start_s = (double)(s0 - t0) / 1000.0;
    fr->end_s = (double)(e0 - t0) / 1000.0;
    events_between(r, s0, e0, &fr->errors, &fr->retried);
    int64_t detect = INT64_MAX, recover = INT64_MAX;
    /* the first error or retry at or after the start, within the window plus LT_DETECT_GRACE_MS:
     * what shows only later is not counted as this fault's detection */
    int64_t horizon = e0 + LT_DETECT_GRACE_MS;
    for (size_t j = 0; j < r->nev; j++) {
      int64_t t = t0 + (int64_t)j * LT_EV_STEP_MS;
      if (t + LT_EV_STEP_MS > s0 && t < horizon && (r->ev[j][0] || r->ev[j][1])) {
        detect = t > s0 ? t : s0;
        break;
      }
    }
    for (uint64_t i = 0; i < r->ncmds; i++) {
      const lt_cmd *c = &r->cmds[i];
      if (c->first_ms >= s0 && c->first_ms < e0)
        fr->submitted++;
      if (c->state == S_FINAL && c->done_ms >= s0 && c->done_ms < e0) {
        if (c->status == 0)
          fr->completed++;
        else
          fr->failed++;
      }
      double lat = cmd_latency(c, now);
      if (lat < 0)
        continue;
      /* the window's max latency runs from the first attempt: retries during the fault count */
      int64_t end = c->state == S_FINAL ? c->done_ms : now;
      int64_t from = c->first_ms ? c->first_ms : c->submit_ms;
      if (from < e0 && end >= s0 && end - from > fr->max_latency_ms)
        fr->max_latency_ms = (double)(end - from);
      /* a spike is visible once a command has waited longer than the threshold */
      int64_t visible = c->submit_ms + (int64_t)thr;
      if (lat > thr && visible >= s0 && visible < horizon && visible < detect)
        detect = visible;
      if (c->state == S_FINAL && c->status == 0 && c->first_ms >= e0 && lat <= thr &&
          c->done_ms < recover)
        recover = c->done_ms;
    }
    if (detect != INT64_MAX)
      fr->detect_s = (double)(detect - s0) / 1000.0;
    if (recover != INT64_MAX)
      fr->recover_s = (double)(recover - e0) / 1000.0;
  }
  /* Timeline: steps of 0.1 s or more, at most LT_TIMELINE_MAX of them. */
  if (t0 == 0)
    return;
  int64_t tend = r->last_final_ms > now ? r->last_final_ms : now;
  double span = (double)(tend - t0) / 1000.0;
  double step = 0.1;
  while (span / step > LT_TIMELINE_MAX)
    step *= 2;
  size_t np = (size_t)(span / step) + 1;
  r->tl = sm_calloc(np, sizeof(*r->tl));
  if (r->tl == NULL)
    return;
  uint64_t *nlat = sm_calloc(np, sizeof(uint64_t));
  if (nlat == NULL) {
    free(r->tl);
    r->tl = NULL;
    return;
  }
  rep->timeline = r->tl;
  rep->ntimeline = np;
  rep->timeline_step_s = step;
  for (size_t j = 0; j < np; j++)
    r->tl[j].t = (double)j * step;
  int64_t step_ms = (int64_t)(step * 1000);
  for (uint64_t i = 0; i < r->ncmds; i++) {
    const lt_cmd *c = &r->cmds[i];
    if (c->first_ms >= t0 && (size_t)((c->first_ms - t0) / step_ms) < np)
      r->tl[(c->first_ms - t0) / step_ms].submitted_per_s += 1;
    if (c->state != S_FINAL || c->done_ms < t0 || (size_t)((c->done_ms - t0) / step_ms) >= np)
      continue;
    lt_tl_point *p = &r->tl[(c->done_ms - t0) / step_ms];
    double lat = cmd_latency(c, now);
    if (c->status == 0)
      p->ok_per_s += 1;
    else
      p->failed_per_s += 1;
    p->lat_avg_ms += lat;
    nlat[p - r->tl]++;
    if (lat > p->lat_max_ms)
      p->lat_max_ms = lat;
  }
  for (size_t j = 0; j < r->nev; j++) {
    size_t q = (size_t)((int64_t)j * LT_EV_STEP_MS / step_ms);
    if (q < np)
      r->tl[q].errors += r->ev[j][0] + r->ev[j][1];
  }
  for (size_t j = 0; j < np; j++) {
    r->tl[j].submitted_per_s /= step;
    r->tl[j].ok_per_s /= step;
    r->tl[j].failed_per_s /= step;
    if (nlat[j])
      r->tl[j].lat_avg_ms /= (double)nlat[j];
  }
  free(nlat);
}

static void compute_report(lt_run *r) {
  lt_report *rep = &r->rep;
  rep->submit = r->s->submit == LT_SUBMIT_AMQP ? "amqp" : "rest";
  rep->planned = r->planned;
  rep->agents = r->s->agents;
  rep->agents_connected = r->connected_start;
  rep->agents_connected_end = connected_now(r);
  rep->crashed_agents = r->crashed ? r->crash_agents : 0;
  double *lat = sm_malloc((r->finals + 1) * sizeof(double));
  uint64_t nl = 0;
  uint64_t by[NSTATUS] = {0};
  for (uint64_t i = 0; i < r->ncmds; i++) {
    lt_cmd *c = &r->cmds[i];
    if (c->state == S_FINAL) {
      rep->total++;
      by[c->status]++;
      if (c->status == 0)
        rep->successful++;
      else
        rep->failed++;
      if (lat)
        lat[nl++] = c->done_ms > c->submit_ms ? (double)(c->done_ms - c->submit_ms) : 0.0;
    } else if (c->state == S_ACCEPTED) {
      rep->total++;
      rep->not_final++;
      if (rep->nnot_final_ids < LT_NOT_FINAL_LIST)
        snprintf(rep->not_final_ids[rep->nnot_final_ids++], sizeof(rep->not_final_ids[0]),
                 "%s-%llu", r->run_id, (unsigned long long)i);
    } else {
      rep->unsubmitted++;
    }
  }
  for (int k = 0; k < NSTATUS; k++)
    if (by[k])
      lt_count_add(rep->by_status, &rep->nby_status, 8, status_names[k], by[k]);
  lt_latency_compute(lat, nl, &rep->latency);
  free(lat);
  if (r->first_submit_ms && r->last_final_ms > r->first_submit_ms) {
    rep->elapsed_s = (double)(r->last_final_ms - r->first_submit_ms) / 1000.0;
    rep->throughput = (double)(rep->successful + rep->failed) / rep->elapsed_s;
  }
  if (rep->not_final)
    lt_count_add(rep->errors, &rep->nerrors, LT_KINDS_MAX, "not_final", rep->not_final);
  for (uint64_t i = 0; i < r->ncmds; i++)
    rep->final_twice += r->cmds[i].twice;
  rep->no_loss = rep->not_final == 0 && rep->final_twice == 0;
  compute_chaos(r, rep);
  for (size_t k = 0; k < r->nfleets; k++) {
    client_stats st;
    client_fleet_stats(r->fleets[k], &st);
    if (st.disconnects)
      lt_count_add(rep->errors, &rep->nerrors, LT_KINDS_MAX, "agent_disconnects", st.disconnects);
  }
  rep->manager_ok = r->before.ok && r->after.ok;
  for (size_t k = 0; rep->manager_ok && k < NMGR; k++) {
    double d = r->after.v[k] - r->before.v[k];
    char name[48];
    snprintf(name, sizeof(name), "%s", mgr_keys[k]);
    for (char *p = name; *p; p++)
      if (*p == '.')
        *p = '_';
    lt_count_add(rep->manager, &rep->nmanager, LT_KINDS_MAX, name, d > 0 ? (uint64_t)d : 0);
  }
}

static void on_chaos_closed(void *ud) {
  lt_run *r = ud;
  r->chaos_open = 0;
}

static void on_tick_closed(uv_handle_t *h) {
  lt_run *r = h->data;
  r->tick_open = 0;
}

/* Second half of finish: everything closes, done runs from the tick once all closed. */
static void finish(lt_run *r) {
  if (r->phase != P_FINISH)
    return;
  compute_report(r);
  set_phase(r, P_CLOSING);
  for (size_t k = 0; k < r->nfleets; k++)
    if (!((int)k == r->crash_fleet && r->crashed))
      client_fleet_stop(r->fleets[k], on_fleet_stopped, r);
  for (size_t c = 0; c < r->nconns; c++) {
    lt_http_destroy(r->conns[c].http);
    r->conns[c].http = NULL;
  }
  lt_http_destroy(r->poll_http);
  lt_http_destroy(r->status_http);
  r->poll_http = r->status_http = NULL;
  mq_conn_destroy(r->mq);
  r->mq = NULL;
  if (r->chaos) {
    r->chaos_open = 1;
    lt_chaos_close(r->chaos, on_chaos_closed, r);
    r->chaos = NULL;
  }
}

static void fatal(lt_run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fatal(lt_run *r, const char *fmt, ...) {
  if (r->rep.fatal[0])
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->rep.fatal, sizeof(r->rep.fatal), fmt, ap);
  va_end(ap);
  r->aborted = 1;
  if (r->chaos)
    lt_chaos_stop(r->chaos);
}

static void on_tick(uv_timer_t *t) {
  lt_run *r = t->data;
  uint64_t now = uv_now(r->loop);
  if (r->phase < P_FINISH && now >= r->deadline)
    fatal(r, "deadline of %.0f s reached (--timeout)", lt_scenario_deadline(r->s));
  if (r->chaos && r->phase >= P_SUBMIT)
    lt_chaos_tick(r->chaos);
  switch (r->phase) {
  case P_CONNECT: {
    uint32_t conn = connected_now(r);
    int api_needed = r->s->submit == LT_SUBMIT_REST;
    if (!r->api_reached && !r->status_busy && now - r->last_status_try >= 1000) {
      r->last_status_try = now;
      read_status(r); /* the first read failed: ask again each second until the timeout */
    }
    if ((conn >= r->s->agents && (r->api_reached || !api_needed)) ||
        now - r->phase_start > (uint64_t)((r->s->ramp_up + r->s->connect_timeout) * 1000) ||
        r->aborted) {
      if (!r->aborted && conn == 0)
        fatal(r, "cannot reach the manager: no agent connected to %s within %g s",
              r->server_addrs[0], r->s->ramp_up + r->s->connect_timeout);
      else if (!r->aborted && api_needed && !r->api_reached)
        fatal(r, "cannot reach the manager API at %s within %g s", r->s->manager_api,
              r->s->ramp_up + r->s->connect_timeout);
      if (r->rep.fatal[0]) {
        set_phase(r, P_FINISH);
        finish(r);
        break;
      }
      r->connected_start = conn;
      if (conn < r->s->agents)
        err_kind(r, "agents_not_connected");
      set_phase(r, P_SUBMIT);
      r->submit_start = now;
      r->t0_ms = sm_now_ms();
      if (r->chaos)
        lt_chaos_start(r->chaos, r->t0_ms);
      r->last_progress = now;
      if (r->s->submit == LT_SUBMIT_AMQP)
        if (mq_conn_consume(r->mq, r->s->result_queue, 1000) != 0)
          err_kind(r, "amqp_consume");
    }
    break;
  }
  case P_SUBMIT:
    if (r->s->submit == LT_SUBMIT_REST)
      submit_rest(r);
    else
      submit_amqp(r);
    if (r->aborted || (r->submit_for_ms > 0 && now - r->submit_start >= r->submit_for_ms) ||
        (r->planned && r->ncmds >= r->planned && r->nretry == 0 && r->sending == 0)) {
      set_phase(r, P_DRAIN);
      r->submit_end = now;
    }
    break;
  case P_DRAIN:
    /* Refused commands still go out while draining, as long as the drain lasts. */
    if (r->nretry && r->s->submit == LT_SUBMIT_REST)
      submit_rest(r);
    else if (r->nretry)
      submit_amqp(r);
    if (((r->finals == r->accepted && r->nretry == 0 && r->sending == 0) ||
         now - r->phase_start > (uint64_t)(r->s->drain_timeout * 1000)) &&
        (r->chaos == NULL || lt_chaos_pending(r->chaos) == 0))
      set_phase(r, P_FINISH);
    else if (r->aborted && now - r->phase_start > 2000)
      set_phase(r, P_FINISH);
    if (r->phase == P_FINISH) {
      if (!r->status_busy)
        read_status(r);
    }
    break;
  case P_CLOSING:
    if (r->fleets_open == 0 && r->chaos_open == 0 && r->tick_open) {
      uv_timer_stop(&r->tick);
      uv_close((uv_handle_t *)&r->tick, on_tick_closed);
      set_phase(r, P_DONE);
      if (r->done)
        r->done(r, r->done_ud);
    }
    return;
  default:
    break;
  }
  if (r->phase == P_SUBMIT || r->phase == P_DRAIN) {
    maybe_crash(r);
    if (r->s->submit == LT_SUBMIT_REST && !r->polling && now >= r->next_poll &&
        r->accepted > r->finals)
      poll_start(r);
  }
  if (r->s->report_interval > 0 && r->phase >= P_CONNECT && r->phase <= P_DRAIN &&
      now - r->last_progress >= (uint64_t)(r->s->report_interval * 1000)) {
    r->last_progress = now;
    print_progress(r);
  }
}

/* Options of one fleet. */
static int fleet_opts(lt_run *r, client_opts *o, const char *server, uint32_t count,
                      const char *prefix, int crash, int hello, char *err, size_t errlen) {
  const lt_scenario *s = r->s;
  client_opts_defaults(o);
  o->protocol = hello ? CLIENT_PROTO_HELLO : CLIENT_PROTO_SCAN;
  o->server = server;
  o->count = count;
  o->id_prefix = prefix;
  o->max_concurrent = (int32_t)s->max_concurrent;
  /* a hello agent sends no descriptor: the manager gives it GRPC_HELLO_MAX_CONCURRENT (8) */
  if (hello && o->max_concurrent < CLIENT_HELLO_MAX_CONCURRENT)
    o->max_concurrent = CLIENT_HELLO_MAX_CONCURRENT;
  o->heartbeat_interval = s->heartbeat_interval;
  o->scan_duration_ms = s->scan_duration_ms;
  o->fail_rate = crash ? 0 : s->fail_rate;
  o->hang_rate = crash ? 1 : s->hang_rate;
  o->disconnect_rate = crash ? 0 : s->disconnect_rate;
  o->ramp_ms = (uint32_t)(s->ramp_up * 1000);
  o->reconnect_min_ms = 100;
  o->reconnect_max_ms = 5000;
  if (s->seed) {
    o->seed = s->seed + (uint64_t)r->nfleets;
    o->seed_set = 1;
  }
  if (s->source_addrs[0]) {
    snprintf(o->source_addrs_buf, sizeof(o->source_addrs_buf), "%s", s->source_addrs);
    char *save = NULL;
    for (char *t = strtok_r(o->source_addrs_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
      if (o->nsource_addrs == CLIENT_SOURCE_ADDRS_MAX) {
        snprintf(err, errlen, "--source-addrs: at most %d addresses", CLIENT_SOURCE_ADDRS_MAX);
        return SM_EINVAL;
      }
      o->source_addrs[o->nsource_addrs++] = t;
    }
  }
  return 0;
}

static int add_fleet(lt_run *r, const char *server, uint32_t count, int crash, int hello, char *err,
                     size_t errlen) {
  size_t k = r->nfleets;
  const char *h = hello && strcmp(r->s->protocol, "mixed") == 0 ? "hello-" : "";
  if (crash)
    snprintf(r->prefixes[k], sizeof(r->prefixes[k]), "%scrash-", r->s->id_prefix);
  else if (r->s->nservers > 1)
    snprintf(r->prefixes[k], sizeof(r->prefixes[k]), "%s%ss%zu-", r->s->id_prefix, h, k + 1);
  else
    snprintf(r->prefixes[k], sizeof(r->prefixes[k]), "%s%s", r->s->id_prefix, h);
  int rc = fleet_opts(r, &r->fopts[k], server, count, r->prefixes[k], crash, hello, err, errlen);
  if (rc)
    return rc;
  rc = client_fleet_create(r->loop, &r->fopts[k], &r->fleets[k], err, errlen);
  if (rc)
    return rc;
  if (crash)
    r->crash_fleet = (int)k;
  r->nfleets++;
  return 0;
}

static int resolve_api(lt_run *r, char *err, size_t errlen) {
  int port;
  if (lt_http_parse_url(r->s->manager_api, r->api_host, sizeof(r->api_host), &port)) {
    snprintf(err, errlen, "--manager-api: expected http://host:port, got \"%s\"",
             r->s->manager_api);
    return SM_EINVAL;
  }
  char ports[16];
  snprintf(ports, sizeof(ports), "%d", port);
  uv_getaddrinfo_t gai;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  int rc = uv_getaddrinfo(r->loop, &gai, NULL, r->api_host, ports, &hints);
  if (rc) {
    snprintf(err, errlen, "--manager-api: cannot resolve \"%s\": %s", r->api_host, uv_strerror(rc));
    return SM_EADDR;
  }
  memcpy(&r->api_addr, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
  uv_freeaddrinfo(gai.addrinfo);
  size_t hl = strlen(r->api_host);
  snprintf(r->api_host + hl, sizeof(r->api_host) - hl, ":%d", port);
  return 0;
}

int lt_run_create(uv_loop_t *loop, const lt_scenario *s, FILE *progress, lt_run **out, char *err,
                  size_t errlen) {
  lt_run *r = sm_calloc(1, sizeof(*r));
  if (r == NULL) {
    snprintf(err, errlen, "out of memory");
    return SM_ENOMEM;
  }
  r->loop = loop;
  r->s = s;
  r->progress = progress;
  r->crash_fleet = -1;
  r->planned = lt_scenario_total(s);
  snprintf(r->run_id, sizeof(r->run_id), "lt-%llx-%d", (unsigned long long)sm_now_ms(),
           (int)getpid());
  int rc = resolve_api(r, err, errlen);
  const struct sockaddr *sa = (const struct sockaddr *)&r->api_addr;
  /* A listing page of 1000 commands takes a while under load; status reads are small. */
  if (rc == 0)
    rc = lt_http_create(loop, sa, r->api_host, s->api_key, LT_HTTP_MAX_BODY, 60, &r->poll_http);
  if (rc == 0)
    rc = lt_http_create(loop, sa, r->api_host, s->api_key, 1u << 20, 10, &r->status_http);
  if (rc == 0 && s->submit == LT_SUBMIT_REST) {
    r->nconns = s->connections < LT_CONNS_MAX ? s->connections : LT_CONNS_MAX;
    for (size_t c = 0; rc == 0 && c < r->nconns; c++) {
      r->conns[c].run = r;
      r->conns[c].batch = sm_calloc(s->batch, sizeof(uint64_t));
      rc = r->conns[c].batch
               ? lt_http_create(loop, sa, r->api_host, s->api_key, 16u << 20, 30, &r->conns[c].http)
               : SM_ENOMEM;
    }
  }
  if (rc == 0 && s->submit == LT_SUBMIT_AMQP) {
    mq_conn_opts mo = {.url = s->amqp_url,
                       .command_queue = s->command_queue,
                       .result_queue = s->result_queue,
                       .depth_interval_s = -1,
                       .max_unconfirmed = LT_AMQP_WINDOW + 16};
    rc = mq_conn_create(loop, &mo, &r->mq);
    if (rc)
      snprintf(err, errlen, "--amqp-url: %s", sm_strerror(rc));
    else {
      mq_conn_set_consumer(r->mq, on_result_msg, r);
      rc = mq_conn_on_state(r->mq, on_mq_state, r);
      if (rc)
        snprintf(err, errlen, "--amqp-url: %s", sm_strerror(rc));
    }
  }
  if (rc == 0 && (s->nproxies > 0 || s->nfaults > 0))
    rc = lt_chaos_create(loop, s, &r->chaos, err, errlen);
  for (size_t k = 0; rc == 0 && k < s->nservers; k++) {
    /* proxy:NAME is the bound address of that --proxy */
    const char *a = s->servers[k];
    if (strncmp(a, "proxy:", 6) == 0) {
      a = r->chaos ? lt_chaos_proxy_addr(r->chaos, a + 6) : NULL;
      if (a == NULL) {
        snprintf(err, errlen, "--server: %s names no --proxy", s->servers[k]);
        rc = SM_EINVAL;
        break;
      }
    }
    snprintf(r->server_addrs[k], sizeof(r->server_addrs[k]), "%s", a);
  }
  if (rc == 0) {
    uint32_t crash = (uint32_t)(s->crash_rate * s->agents + 0.5);
    if (s->crash_rate > 0 && crash == 0)
      crash = 1;
    if (crash > s->agents)
      crash = s->agents;
    r->crash_agents = crash;
    uint32_t normal = s->agents - crash;
    int hello = strcmp(s->protocol, "hello") == 0, mixed = strcmp(s->protocol, "mixed") == 0;
    for (size_t k = 0; rc == 0 && k < s->nservers && normal > 0; k++) {
      uint32_t n = normal / (uint32_t)s->nservers + (k < normal % s->nservers ? 1 : 0);
      uint32_t nh = mixed ? n / 2 : 0; /* mixed: half of each server's agents speak hello */
      if (n - nh)
        rc = add_fleet(r, r->server_addrs[k], n - nh, 0, hello, err, errlen);
      if (rc == 0 && nh)
        rc = add_fleet(r, r->server_addrs[k], nh, 0, 1, err, errlen);
    }
    if (rc == 0 && crash)
      rc = add_fleet(r, r->server_addrs[0], crash, 1, hello, err, errlen);
  }
  if (rc && err[0] == '\0')
    snprintf(err, errlen, "%s", sm_strerror(rc));
  if (rc) {
    /* Nothing ran yet: the handles are closed by a short loop run. */
    for (size_t k = 0; k < r->nfleets; k++)
      client_fleet_destroy(r->fleets[k]);
    for (size_t c = 0; c < r->nconns; c++) {
      lt_http_destroy(r->conns[c].http);
      free(r->conns[c].batch);
    }
    lt_http_destroy(r->poll_http);
    lt_http_destroy(r->status_http);
    mq_conn_destroy(r->mq);
    if (r->chaos)
      lt_chaos_close(r->chaos, NULL, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    free(r);
    return rc;
  }
  uv_timer_init(loop, &r->tick);
  r->tick.data = r;
  r->tick_open = 1;
  if (s->duration > 0) {
    double d = s->duration;
    if (s->nfaults) {
      double last = 0;
      for (size_t i = 0; i < s->nfaults; i++)
        if (s->faults[i].at + s->faults[i].duration > last)
          last = s->faults[i].at + s->faults[i].duration;
      if (d < last + LT_CHAOS_SETTLE_S)
        d = last + LT_CHAOS_SETTLE_S;
    }
    r->submit_for_ms = (uint64_t)(d * 1000);
  }
  *out = r;
  return 0;
}

void lt_run_start(lt_run *r, lt_run_done_cb done, void *ud) {
  r->done = done;
  r->done_ud = ud;
  set_phase(r, P_CONNECT);
  r->last_progress = r->run_start = r->last_status_try = uv_now(r->loop);
  read_status(r);
  if (r->mq && mq_conn_start(r->mq) != 0)
    err_kind(r, "amqp_start");
  for (size_t k = 0; k < r->nfleets; k++)
    client_fleet_start(r->fleets[k]);
  r->fleets_open = r->nfleets;
  r->deadline = uv_now(r->loop) + (uint64_t)(lt_scenario_deadline(r->s) * 1000);
  uv_timer_start(&r->tick, on_tick, TICK_MS, TICK_MS);
}

void lt_run_abort(lt_run *r) {
  r->aborted = 1;
}

const lt_report *lt_run_report(const lt_run *r) {
  return &r->rep;
}

void lt_run_destroy(lt_run *r) {
  if (r == NULL)
    return;
  for (size_t k = 0; k < r->nfleets; k++)
    client_fleet_destroy(r->fleets[k]);
  for (size_t c = 0; c < r->nconns; c++)
    free(r->conns[c].batch);
  free(r->cmds);
  free(r->retry);
  free(r->ev);
  free(r->frep);
  free(r->tl);
  free(r);
}
