/* ratelimit.c - buckets in a hash map (lookup) and a util/list.h list (recency, most recent
 * first); the list's last node is the eviction victim. Tokens are refilled lazily from the time of
 * the last take. */
#include "admin/ratelimit.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/list.h"
#include "util/map.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
  sm_list node;  /* the recency list, most recent first */
  double tokens; /* tokens left at `at` */
  uint64_t at;   /* ms of the last refill */
  size_t klen;
  char key[ADMIN_RATELIMIT_KEY_MAX]; /* the map's key points here */
} bucket;

struct admin_ratelimit {
  double rps;   /* tokens per second */
  double burst; /* bucket size */
  size_t max;   /* buckets kept */
  sm_map map;   /* key -> bucket */
  sm_list lru;  /* every bucket (bucket.node), most recently used first */
};

int admin_ratelimit_create(double rps, double burst, size_t max_entries, admin_ratelimit **out) {
  if (!(rps > 0) || !(burst >= 1) || max_entries == 0)
    return SM_EINVAL;
  admin_ratelimit *rl = sm_calloc(1, sizeof(*rl));
  if (rl == NULL)
    return SM_ENOMEM;
  rl->rps = rps;
  rl->burst = burst;
  rl->max = max_entries;
  sm_map_init(&rl->map, 0);
  sm_list_init(&rl->lru);
  *out = rl;
  return 0;
}

void admin_ratelimit_destroy(admin_ratelimit *rl) {
  if (rl == NULL)
    return;
  SM_LIST_FOREACH_SAFE(it, tmp, &rl->lru) {
    free(SM_LIST_ENTRY(it, bucket, node));
  }
  sm_map_finish(&rl->map);
  free(rl);
}

int admin_ratelimit_take(admin_ratelimit *rl, const char *key, size_t len, uint64_t now_ms) {
  if (len > ADMIN_RATELIMIT_KEY_MAX)
    len = ADMIN_RATELIMIT_KEY_MAX;
  bucket *b = sm_map_get(&rl->map, key, len);
  if (b == NULL) {
    if (rl->map.len >= rl->max) {
      /* Full: reuse the least recently used bucket for the newcomer. */
      sm_list *last = sm_list_last(&rl->lru);
      assert(last != NULL);
      b = SM_LIST_ENTRY(last, bucket, node);
      sm_list_remove(&b->node);
      sm_map_del(&rl->map, b->key, b->klen);
    } else if ((b = sm_malloc(sizeof(*b))) == NULL) {
      return 0;
    }
    memcpy(b->key, key, len);
    b->klen = len;
    b->tokens = rl->burst;
    b->at = now_ms;
    if (sm_map_put(&rl->map, b->key, b->klen, b) != 0) {
      free(b);
      return 0;
    }
    sm_list_push_front(&rl->lru, &b->node);
  } else if (sm_list_first(&rl->lru) != &b->node) {
    sm_list_remove(&b->node);
    sm_list_push_front(&rl->lru, &b->node);
  }
  if (now_ms > b->at) {
    b->tokens += (double)(now_ms - b->at) * rl->rps / 1000.0;
    if (b->tokens > rl->burst)
      b->tokens = rl->burst;
    b->at = now_ms;
  }
  if (b->tokens >= 1.0) {
    b->tokens -= 1.0;
    return 0;
  }
  double wait = ceil((1.0 - b->tokens) / rl->rps);
  return wait < 1 ? 1 : wait > 86400 ? 86400 : (int)wait;
}

size_t admin_ratelimit_size(const admin_ratelimit *rl) {
  return rl->map.len;
}
