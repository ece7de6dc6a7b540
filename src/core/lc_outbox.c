/* lc_outbox.c - results leave through the publisher: a final status is written together with
 * its result JSON in the outbox; once written it is published (results queue and reply_to), and
 * once the broker confirmed, the outbox entry is removed. Replays (at start, on reconnect, and
 * a periodic sweep) publish again what is still in the outbox. */
#include "core/lifecycle-int.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/log.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define LC_REPLAY_PAGE 1000 /* outbox entries per replay pass */
/* A replay pass at least this often: a result whose publish failed without a reconnect
 * following (window full, nack) must not wait for one. */
#define LC_OUTBOX_SWEEP_MS 5000
#define LC_RM_QUEUE_MAX 100000 /* refused removals kept for retry; beyond, a duplicate later */
/* Results kept in memory while the publisher's window is full, sent as confirms make room;
 * beyond this many they are left to the outbox replay (which reads them back from the store). */
#define LC_PARK_MAX 100000

/* A confirmed result whose outbox entry is being removed. It stays in lc->ob.removing (so that
 * a replay does not publish it again) until the store took the removal; a removal the store
 * refused (busy, away) waits in lc->ob.rm_queue and is issued again by the sweep. */
typedef struct lc_removal {
  lifecycle *lc;
  char *id;
  sm_list node; /* in rm_queue while queued */
} lc_removal;

static void sweep_cb(uv_timer_t *t);

void lc_outbox_init(lifecycle *lc) {
  sm_map_init(&lc->ob.pubs, 0);
  sm_map_init(&lc->ob.removing, 0);
  sm_list_init(&lc->ob.rm_queue);
  sm_list_init(&lc->ob.parked);
  uv_timer_init(lc->loop, &lc->ob.sweep);
  lc->ob.sweep.data = lc;
}

void lc_outbox_start(lifecycle *lc) {
  lifecycle_outbox_replay(lc);
  if (lc->ob.has_pub)
    uv_timer_start(&lc->ob.sweep, sweep_cb, LC_OUTBOX_SWEEP_MS, LC_OUTBOX_SWEEP_MS);
}

static void pub_free(lc_pub *p) {
  free(p->id);
  free(p->payload);
  free(p->reply_to);
  free(p->corr);
  free(p);
}

/* ---- removal ------------------------------------------------------------------------------ */

static void removal_forget(lifecycle *lc, lc_removal *r) {
  if (sm_map_get(&lc->ob.removing, r->id, strlen(r->id)) == r)
    sm_map_del(&lc->ob.removing, r->id, strlen(r->id));
  free(r->id);
  free(r);
}

static void outbox_removed(void *ud, int err);

/* Issues r's removal; on an immediate refusal queues r for the sweep, or forgets (frees) it when
 * the queue is full. */
static void removal_issue(lifecycle *lc, lc_removal *r) {
  if (store_outbox_remove(lc->st, r->id, outbox_removed, r) == 0) {
    lc->cl.ops_pending++;
    return;
  }
  if (lc->ob.rm_queued >= LC_RM_QUEUE_MAX) {
    removal_forget(lc, r); /* the entry stays and is published again later: a duplicate */
    return;
  }
  sm_list_push_front(&lc->ob.rm_queue, &r->node);
  lc->ob.rm_queued++;
}

static void outbox_removed(void *ud, int err) {
  lc_removal *r = ud;
  lifecycle *lc = r->lc;
  assert(lc->cl.ops_pending > 0);
  lc->cl.ops_pending--;
  if (err && !lc->cl.closing) {
    sm_log_debug("lifecycle", "outbox removal failed, queued again", SM_LE(err));
    removal_issue(lc, r); /* r may be freed here */
    return;
  }
  removal_forget(lc, r);
  lc_maybe_free_lc(lc);
}

/* Re-issues queued removals (from the sweep); stops at the first refusal. */
static void removals_retry(lifecycle *lc) {
  sm_list *n;
  while ((n = sm_list_first(&lc->ob.rm_queue)) != NULL) {
    lc_removal *r = SM_LIST_ENTRY(n, lc_removal, node);
    if (store_outbox_remove(lc->st, r->id, outbox_removed, r) != 0)
      return;
    sm_list_remove(n);
    lc->ob.rm_queued--;
    lc->cl.ops_pending++;
  }
}

/* Removes a confirmed result from the outbox, remembering the id until the store took it. */
static void outbox_remove(lifecycle *lc, const char *id) {
  lc_removal *r = sm_calloc(1, sizeof(*r));
  char *copy = r ? sm_strdup(id) : NULL;
  if (copy == NULL) {
    free(r);
    return; /* the entry stays and is published again later: a duplicate, not a loss */
  }
  r->lc = lc;
  r->id = copy;
  sm_list_init(&r->node);
  lc_removal *old = sm_map_get(&lc->ob.removing, copy, strlen(copy));
  if (old != NULL) /* an earlier removal of the same id is pending: track the newest */
    sm_map_replace(&lc->ob.removing, copy, strlen(copy), r);
  else if (sm_map_put(&lc->ob.removing, copy, strlen(copy), r) != 0) {
    free(copy);
    free(r);
    return;
  }
  removal_issue(lc, r);
}

/* ---- publishing --------------------------------------------------------------------------- */

static void pub_settle(lc_pub *p) {
  lifecycle *lc = p->lc;
  sm_map_del(&lc->ob.pubs, p->id, strlen(p->id));
  assert(lc->ob.inflight > 0);
  lc->ob.inflight--;
  if (!p->failed) {
    lc->stats.published++;
    outbox_remove(lc, p->id);
  } else {
    lc->stats.publish_failures++;
  }
  pub_free(p);
  if (lc->ob.inflight == 0 && lc->ob.more && !lc->ob.replaying) {
    lc->ob.more = 0;
    lifecycle_outbox_replay(lc);
  }
}

static void pub_done(void *ud, int status) {
  lc_pub *p = ud;
  assert(p->outstanding > 0);
  if (p->lc == NULL) { /* the lifecycle closed (and may be gone): the last answer frees p */
    if (--p->outstanding == 0)
      pub_free(p);
    return;
  }
  if (status != 0)
    p->failed = 1;
  if (--p->outstanding == 0)
    pub_settle(p);
}

/* Publishes to the result queue and reply_to; takes payload. Returns 1 when p was parked: the
 * publisher's window was full before anything of p was sent, and p waits in memory for room
 * (lc_pub_unpark) instead of a replay reading it back from the store. */
static int pub_send(lc_pub *p) {
  lifecycle *lc = p->lc;
  p->outstanding = 1; /* held while issuing so no answer settles p early */
  int err =
      lc->ob.pub.publish(lc->ob.pub.self, p->payload, p->len, lc->result_queue, NULL, pub_done, p);
  if (err == SM_ELIMIT && lc->ob.nparked < LC_PARK_MAX) {
    p->outstanding = 0;
    sm_list_push_back(&lc->ob.parked, &p->park);
    lc->ob.nparked++;
    return 1;
  }
  if (err == SM_ELIMIT)
    lc->ob.overflow = 1;
  if (err == 0)
    p->outstanding++;
  else
    p->failed = 1;
  if (p->reply_to && *p->reply_to) {
    err =
        lc->ob.pub.publish(lc->ob.pub.self, p->payload, p->len, p->reply_to, p->corr, pub_done, p);
    if (err == 0)
      p->outstanding++;
    else
      p->failed = 1;
  }
  if (--p->outstanding == 0)
    pub_settle(p);
  return 0;
}

/* Sends parked results, oldest first, until the window is full again. Returns 1 when none is
 * left parked. */
static int pub_unpark(lifecycle *lc) {
  sm_list *n;
  while ((n = sm_list_pop_front(&lc->ob.parked)) != NULL) {
    lc->ob.nparked--;
    lc_pub *p = SM_LIST_ENTRY(n, lc_pub, park);
    if (pub_send(p)) {
      /* still full: back to the front, in order */
      sm_list_remove(&p->park);
      sm_list_push_front(&lc->ob.parked, &p->park);
      return 0;
    }
  }
  return 1;
}

static lc_pub *pub_new(lifecycle *lc, const char *id, const char *reply_to, const char *corr) {
  if (sm_map_get(&lc->ob.pubs, id, strlen(id)) != NULL)
    return NULL; /* a publish of this id is already in flight */
  lc_pub *p = sm_calloc(1, sizeof(*p));
  if (p == NULL)
    return NULL;
  p->lc = lc;
  sm_list_init(&p->park);
  p->id = sm_strdup(id);
  p->reply_to = reply_to ? sm_strdup(reply_to) : NULL;
  p->corr = corr ? sm_strdup(corr) : NULL;
  if (p->id == NULL || (reply_to && p->reply_to == NULL) || (corr && p->corr == NULL) ||
      sm_map_put(&lc->ob.pubs, p->id, strlen(p->id), p) != 0) {
    pub_free(p); /* the entry stays in the outbox: the next replay publishes it */
    return NULL;
  }
  lc->ob.inflight++;
  return p;
}

/* Publishes a result just written with its outbox entry; takes payload. */
void lc_pub_start(lifecycle *lc, const char *id, char *payload, size_t len, const char *reply_to,
                  const char *corr) {
  lc_pub *p = lc->ob.has_pub ? pub_new(lc, id, reply_to, corr) : NULL;
  if (p == NULL) {
    free(payload);
    return;
  }
  p->payload = payload;
  p->len = len;
  pub_send(p);
}

/* ---- replay ------------------------------------------------------------------------------- */

static void replay_got(void *ud, int err, const sm_command *cmd, int existed) {
  (void)existed;
  lc_pub *p = ud;
  lifecycle *lc = p->lc;
  assert(lc->cl.ops_pending > 0 && p->lookup);
  lc->cl.ops_pending--;
  p->lookup = 0;
  if (lc->cl.closing) {
    pub_free(p);
    lc_maybe_free_lc(lc);
    return;
  }
  if (err == 0 && cmd != NULL) {
    free(p->reply_to);
    free(p->corr);
    p->reply_to = cmd->reply_to ? sm_strdup(cmd->reply_to) : NULL;
    p->corr = cmd->correlation_id ? sm_strdup(cmd->correlation_id) : NULL;
    if ((cmd->reply_to && p->reply_to == NULL) || (cmd->correlation_id && p->corr == NULL)) {
      p->failed = 1; /* out of memory: published again on a later replay, whole */
      pub_settle(p);
      return;
    }
  }
  pub_send(p);
}

static void replay_listed(void *ud, int err, const store_outbox_item *items, size_t n) {
  lifecycle *lc = ud;
  assert(lc->cl.ops_pending > 0 && lc->ob.replaying);
  lc->cl.ops_pending--;
  lc->ob.replaying = 0;
  if (lc->cl.closing) {
    lc_maybe_free_lc(lc);
    return;
  }
  if (err) {
    lc->ob.retry = 1;
    lc_retry_arm(lc);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (sm_map_get(&lc->ob.removing, items[i].id, strlen(items[i].id)) != NULL)
      continue; /* already confirmed; its removal is on its way */
    lc_pub *p = pub_new(lc, items[i].id, NULL, NULL);
    if (p == NULL)
      continue;
    p->payload = sm_malloc(items[i].len + 1);
    if (p->payload == NULL) {
      p->failed = 1;
      p->outstanding = 0;
      pub_settle(p);
      continue;
    }
    memcpy(p->payload, items[i].payload, items[i].len);
    p->payload[items[i].len] = '\0';
    p->len = items[i].len;
    /* reply_to lives in the command record */
    if (store_cmd_get(lc->st, p->id, replay_got, p) == 0) {
      lc->cl.ops_pending++;
      p->lookup = 1;
    } else
      pub_send(p);
  }
  if (n > 0)
    sm_log_info("lifecycle", "outbox replayed", SM_LI("entries", n));
  lc->ob.more = n == LC_REPLAY_PAGE;
  if (lc->ob.again) {
    lc->ob.again = 0;
    lc->ob.more = 1;
  }
  if (lc->ob.more && lc->ob.inflight == 0) {
    lc->ob.more = 0;
    lifecycle_outbox_replay(lc);
  }
}

void lifecycle_outbox_replay(lifecycle *lc) {
  if (lc == NULL || lc->cl.closing || !lc->ob.has_pub)
    return;
  /* The publisher has room (or came back): the parked results first, from memory; the store's
   * outbox is read only once none waits here (what it holds beyond them: failed publishes, a
   * restart, results over LC_PARK_MAX). */
  if (!pub_unpark(lc))
    return;
  if (lc->ob.replaying) {
    lc->ob.again = 1;
    return;
  }
  int err = store_outbox_list(lc->st, LC_REPLAY_PAGE, replay_listed, lc);
  if (err) {
    lc->ob.retry = 1;
    lc_retry_arm(lc);
    return;
  }
  lc->ob.replaying = 1;
  lc->cl.ops_pending++;
}

void lifecycle_publisher_ready(lifecycle *lc) {
  if (lc == NULL || lc->cl.closing || !lc->ob.has_pub)
    return;
  if (pub_unpark(lc) && lc->ob.overflow) {
    lc->ob.overflow = 0;
    lifecycle_outbox_replay(lc);
  }
}

static void sweep_cb(uv_timer_t *t) {
  lifecycle *lc = t->data;
  removals_retry(lc);
  if (lc->stats.publish_failures != lc->ob.failures_seen || lc->ob.inflight == 0) {
    lc->ob.failures_seen = lc->stats.publish_failures;
    lifecycle_outbox_replay(lc);
  }
}

/* ---- closing ------------------------------------------------------------------------------ */

/* At close: publishes awaiting their confirm are let go (pub_done frees each at its last
 * answer, without touching the lifecycle); those waiting for a store lookup are freed by it. */
void lc_outbox_close(lifecycle *lc) {
  for (size_t i = 0; i < lc->ob.pubs.cap; i++) {
    if (lc->ob.pubs.slots[i].key == NULL)
      continue;
    lc_pub *p = lc->ob.pubs.slots[i].value;
    if (p->lookup)
      continue;
    if (sm_list_linked(&p->park)) { /* parked: nothing at the publisher, its entry stays */
      sm_list_remove(&p->park);
      lc->ob.nparked--;
      pub_free(p);
      continue;
    }
    assert(p->outstanding > 0);
    p->lc = NULL;
  }
  sm_map_finish(&lc->ob.pubs);
  sm_map_init(&lc->ob.pubs, 0);
}

/* Frees what is left once no store operation is pending. */
void lc_outbox_finish(lifecycle *lc) {
  sm_map_finish(&lc->ob.pubs);
  sm_list *n;
  while ((n = sm_list_pop_front(&lc->ob.rm_queue)) != NULL) { /* no store operation pending */
    lc_removal *r = SM_LIST_ENTRY(n, lc_removal, node);
    free(r->id);
    free(r);
  }
  sm_map_finish(&lc->ob.removing); /* the others were freed by their store callbacks */
}
