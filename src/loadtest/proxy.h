/* proxy.h - a fault-injecting TCP proxy for chaos scenarios, on the run's libuv loop.
 *
 * It listens on one address and forwards every accepted connection to one upstream, byte for
 * byte, until a fault is set:
 *   LT_FAULT_DELAY      each chunk is forwarded `param` ms after it arrived (order kept);
 *   LT_FAULT_BANDWIDTH  each direction of each connection is paced to `param` bytes/s;
 *   LT_FAULT_BLACKHOLE  nothing is forwarded and nothing read; sockets stay open (a partition:
 *                       new connections are accepted and connected upstream, then stall too);
 *   LT_FAULT_DROP       open connections are closed (FIN both sides) and new ones are closed
 *                       as soon as accepted, while the fault lasts;
 *   LT_FAULT_RESET      as DROP with RST instead of FIN (SO_LINGER 0) on both sides.
 * LT_FAULT_NONE clears the fault: delayed chunks are sent at their time, a blackhole resumes.
 *
 * Each direction buffers at most LT_PROXY_QUEUE_MAX bytes; beyond that it stops reading from
 * its source until the queue drains, so a delayed or paced peer cannot make the proxy grow.
 *
 * Ownership: the proxy owns its handles and buffers. lt_proxy_close's callback runs exactly
 * once, after every handle closed (also with connections open and chunks queued), then the
 * proxy is freed. Allocation failure on accept refuses that connection (it is accepted and
 * closed at once); on read it closes that connection pair; the proxy keeps serving.
 */
#ifndef SM_LOADTEST_PROXY_H
#define SM_LOADTEST_PROXY_H

#include "util/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define LT_PROXY_QUEUE_MAX (1u << 20) /* bytes queued per direction before reading pauses */
#define LT_PROXY_CHUNK 65536          /* bytes read at once */

enum lt_fault_kind {
  LT_FAULT_NONE = 0,
  LT_FAULT_DELAY,
  LT_FAULT_DROP,
  LT_FAULT_BLACKHOLE,
  LT_FAULT_RESET,
  LT_FAULT_BANDWIDTH,
};

typedef struct lt_proxy lt_proxy;

/* Counters of a proxy. */
typedef struct lt_proxy_stats {
  uint64_t accepted;          /* connections accepted */
  uint64_t refused;           /* closed at once: DROP/RESET in force, upstream down, no memory */
  uint64_t active;            /* connection pairs open now */
  uint64_t bytes_up;          /* client -> upstream, forwarded */
  uint64_t bytes_down;        /* upstream -> client, forwarded */
  uint64_t upstream_failures; /* upstream connects that failed */
} lt_proxy_stats;

typedef void (*lt_proxy_close_cb)(void *ud);

/* Binds and listens on `listen` (port 0: any; see lt_proxy_addr) and forwards to `upstream`.
 * name is copied (at most 31 bytes kept). Returns 0, SM_ENOMEM, or SM_EADDR when the bind or
 * listen fails. */
SM_MUST_CHECK int lt_proxy_create(uv_loop_t *loop, const char *name, const struct sockaddr *listen,
                                  const struct sockaddr *upstream, lt_proxy **out);

/* The bound address ("127.0.0.1:port") and port. */
const char *lt_proxy_addr(const lt_proxy *p);
int lt_proxy_port(const lt_proxy *p);
const char *lt_proxy_name(const lt_proxy *p);

/* Sets the fault in force (replacing any other); param is ms for DELAY, bytes/s for BANDWIDTH
 * (> 0), unused otherwise. DROP and RESET act on the open connections at once. */
void lt_proxy_set_fault(lt_proxy *p, enum lt_fault_kind kind, uint64_t param);

void lt_proxy_stats_get(const lt_proxy *p, lt_proxy_stats *out);

/* Closes the listener and every connection; cb(ud) runs once when all handles closed (never
 * inside this call), then the proxy is freed. */
void lt_proxy_close(lt_proxy *p, lt_proxy_close_cb cb, void *ud);

/* Parses "host:port" (IPv4 or [IPv6]) into addr. Returns 0 or SM_EINVAL. */
int lt_proxy_parse_addr(const char *text, struct sockaddr_storage *addr);

#endif
