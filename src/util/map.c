/* map.c - linear probing with backward-shift deletion (no tombstones). */
#include "util/alloc.h"
#include "util/map.h"

#include "util/err.h"

#include <stdlib.h>
#include <string.h>

#define MAP_MIN_CAP 16

uint64_t sm_hash(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

void sm_map_init(sm_map *m, size_t limit) {
  m->slots = NULL;
  m->cap = 0;
  m->len = 0;
  m->limit = limit;
}

void sm_map_finish(sm_map *m) {
  free(m->slots);
  m->slots = NULL;
  m->cap = m->len = 0;
}

static size_t find(const sm_map *m, const char *key, size_t klen, uint64_t h, int *found) {
  size_t mask = m->cap - 1;
  size_t i = (size_t)h & mask;
  for (;;) {
    const sm_map_entry *e = &m->slots[i];
    if (e->key == NULL) {
      *found = 0;
      return i;
    }
    if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0) {
      *found = 1;
      return i;
    }
    i = (i + 1) & mask;
  }
}

static int grow(sm_map *m) {
  size_t ncap = m->cap ? m->cap * 2 : MAP_MIN_CAP;
  sm_map_entry *ns = sm_calloc(ncap, sizeof(*ns));
  if (ns == NULL)
    return SM_ENOMEM;
  for (size_t i = 0; i < m->cap; i++) {
    sm_map_entry *e = &m->slots[i];
    if (e->key == NULL)
      continue;
    size_t j = (size_t)e->hash & (ncap - 1);
    while (ns[j].key != NULL)
      j = (j + 1) & (ncap - 1);
    ns[j] = *e;
  }
  free(m->slots);
  m->slots = ns;
  m->cap = ncap;
  return 0;
}

void *sm_map_get(const sm_map *m, const char *key, size_t klen) {
  if (m->len == 0)
    return NULL;
  int found;
  size_t i = find(m, key, klen, sm_hash(key, klen), &found);
  return found ? m->slots[i].value : NULL;
}

int sm_map_put(sm_map *m, const char *key, size_t klen, void *value) {
  if (m->limit && m->len >= m->limit)
    return SM_ELIMIT;
  if ((m->len + 1) * 4 > m->cap * 3) {
    int err = grow(m);
    if (err)
      return err;
  }
  uint64_t h = sm_hash(key, klen);
  int found;
  size_t i = find(m, key, klen, h, &found);
  if (found)
    return SM_EEXIST;
  m->slots[i] = (sm_map_entry){.key = key, .klen = klen, .hash = h, .value = value};
  m->len++;
  return 0;
}

int sm_map_replace(sm_map *m, const char *key, size_t klen, void *value) {
  if (m->len == 0)
    return SM_ENOENT;
  int found;
  size_t i = find(m, key, klen, sm_hash(key, klen), &found);
  if (!found)
    return SM_ENOENT;
  m->slots[i].key = key;
  m->slots[i].value = value;
  return 0;
}

void *sm_map_del(sm_map *m, const char *key, size_t klen) {
  if (m->len == 0)
    return NULL;
  int found;
  size_t i = find(m, key, klen, sm_hash(key, klen), &found);
  if (!found)
    return NULL;
  void *value = m->slots[i].value;
  size_t mask = m->cap - 1;
  /* Backward-shift: pull later members of the probe run into the hole. */
  size_t hole = i;
  size_t j = (i + 1) & mask;
  while (m->slots[j].key != NULL) {
    size_t home = (size_t)m->slots[j].hash & mask;
    /* Move j into hole if its home is not cyclically within (hole, j]. */
    int between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!between) {
      m->slots[hole] = m->slots[j];
      hole = j;
    }
    j = (j + 1) & mask;
  }
  m->slots[hole].key = NULL;
  m->len--;
  return value;
}
