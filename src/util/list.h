/* list.h - the one intrusive doubly linked list (circular, with a head node), in the manner of
 * libuv's queue.h and the Linux kernel's list.h. An element embeds an sm_list node and is
 * recovered with SM_LIST_ENTRY; nothing is allocated. All operations are O(1).
 *
 *   typedef struct job { sm_list node; int n; } job;
 *   sm_list jobs; sm_list_init(&jobs);
 *   sm_list_push_back(&jobs, &j->node);
 *   SM_LIST_FOREACH_SAFE(it, tmp, &jobs) { job *j = SM_LIST_ENTRY(it, job, node); ... }
 *
 * A node that is on no list should be initialized with sm_list_init (then sm_list_linked is 0).
 */
#ifndef SM_UTIL_LIST_H
#define SM_UTIL_LIST_H

#include <assert.h>
#include <stddef.h>

typedef struct sm_list {
  struct sm_list *prev;
  struct sm_list *next;
} sm_list;

/* The struct of type `type` whose member `field` is the node `ptr`. */
#define SM_LIST_ENTRY(ptr, type, field) ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

/* Every node of list h in order; the body must not remove `it` (use the _SAFE form). */
#define SM_LIST_FOREACH(it, h) for (sm_list *it = (h)->next; it != (h); it = it->next)

/* Every node of list h in order; the body may remove `it` (not the next one). */
#define SM_LIST_FOREACH_SAFE(it, tmp, h)                                                           \
  for (sm_list *it = (h)->next, *tmp = it->next; it != (h); it = tmp, tmp = it->next)

/* An empty list, or a node on no list. */
static inline void sm_list_init(sm_list *h) {
  h->prev = h;
  h->next = h;
}

static inline int sm_list_empty(const sm_list *h) {
  return h->next == h;
}

/* Whether node n (initialized with sm_list_init) is on a list now. */
static inline int sm_list_linked(const sm_list *n) {
  return n->next != n;
}

/* Inserts n after pos. */
static inline void sm_list_insert_after(sm_list *pos, sm_list *n) {
  n->prev = pos;
  n->next = pos->next;
  pos->next->prev = n;
  pos->next = n;
}

static inline void sm_list_push_back(sm_list *h, sm_list *n) {
  sm_list_insert_after(h->prev, n);
}

static inline void sm_list_push_front(sm_list *h, sm_list *n) {
  sm_list_insert_after(h, n);
}

/* Unlinks n from its list; n is then on no list (sm_list_linked(n) == 0). */
static inline void sm_list_remove(sm_list *n) {
  assert(n->prev != NULL && n->next != NULL);
  n->prev->next = n->next;
  n->next->prev = n->prev;
  sm_list_init(n);
}

/* The first / last node, or NULL when the list is empty. */
static inline sm_list *sm_list_first(const sm_list *h) {
  return h->next == h ? NULL : h->next;
}

static inline sm_list *sm_list_last(const sm_list *h) {
  return h->prev == h ? NULL : h->prev;
}

/* The node after / before n in list h, or NULL at the end. */
static inline sm_list *sm_list_next(const sm_list *h, const sm_list *n) {
  return n->next == h ? NULL : n->next;
}

static inline sm_list *sm_list_prev(const sm_list *h, const sm_list *n) {
  return n->prev == h ? NULL : n->prev;
}

/* Unlinks and returns the first node, or NULL when empty. */
static inline sm_list *sm_list_pop_front(sm_list *h) {
  sm_list *n = sm_list_first(h);
  if (n)
    sm_list_remove(n);
  return n;
}

/* Moves every node of src to the end of dst; src is empty afterwards. */
static inline void sm_list_splice_back(sm_list *dst, sm_list *src) {
  if (sm_list_empty(src))
    return;
  src->next->prev = dst->prev;
  dst->prev->next = src->next;
  src->prev->next = dst;
  dst->prev = src->prev;
  sm_list_init(src);
}

#endif
