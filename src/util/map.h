/* map.h - an open-addressing hash map from byte-string keys to pointers.
 *
 * Keys are not copied: the caller keeps each key alive while its entry is in the map (records
 * usually point at their own id). Lookups, inserts and removals are O(1) on average; the table
 * doubles at 3/4 load and never shrinks below its initial size.
 */
#ifndef SM_UTIL_MAP_H
#define SM_UTIL_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct sm_map_entry {
  const char *key; /* NULL: empty slot */
  size_t klen;
  uint64_t hash;
  void *value;
} sm_map_entry;

typedef struct sm_map {
  sm_map_entry *slots; /* capacity is a power of two */
  size_t cap;
  size_t len;
  size_t limit; /* maximum entries; 0 is unlimited */
} sm_map;

/* Initializes an empty map that holds at most `limit` entries (0: no limit). */
void sm_map_init(sm_map *m, size_t limit);

/* Frees the table (not the keys or values). */
void sm_map_finish(sm_map *m);

/* The value stored under key, or NULL. */
void *sm_map_get(const sm_map *m, const char *key, size_t klen);

/* Stores value under key. Returns 0, SM_EEXIST if the key is present (nothing changes),
 * SM_ELIMIT past the limit, or SM_ENOMEM. */
int sm_map_put(sm_map *m, const char *key, size_t klen, void *value);

/* Replaces the key pointer and value of an existing entry (same key bytes). Returns 0 or
 * SM_ENOENT. */
int sm_map_replace(sm_map *m, const char *key, size_t klen, void *value);

/* Removes key; returns its value or NULL if absent. */
void *sm_map_del(sm_map *m, const char *key, size_t klen);

/* 64-bit hash of bytes (FNV-1a folded with a multiply-shift); stable across runs. */
uint64_t sm_hash(const void *data, size_t len);

#endif
