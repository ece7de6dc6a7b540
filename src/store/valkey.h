/* valkey.h - the Valkey (Redis) adapter: the one module that includes hiredis.
 *
 * Async hiredis on the libuv loop. It connects (with a timeout), sends AUTH and SELECT, and
 * keeps reconnecting with exponential backoff and jitter. Requests are pipelined (hiredis
 * writes everything queued in a loop turn at once), bounded in number, and each has a timeout.
 * Requests made while disconnected fail at once with SM_EUNAVAIL; callers retry.
 */
#ifndef SM_STORE_VALKEY_H
#define SM_STORE_VALKEY_H

#include "util/err.h"
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sm_valkey sm_valkey;

/* A reply, borrowed for the duration of the callback; read it with the accessors below. */
typedef struct sm_valkey_reply sm_valkey_reply;

enum sm_valkey_type {
  SM_VK_NIL = 0, /* nil bulk or nil array */
  SM_VK_STRING,  /* bulk string */
  SM_VK_STATUS,  /* +OK style */
  SM_VK_INTEGER,
  SM_VK_ARRAY,
  SM_VK_ERROR, /* -ERR style; the text is in sm_valkey_reply_str */
};

typedef struct sm_valkey_config {
  const char *host;         /* host name or address */
  int port;                 /* TCP port */
  const char *password;     /* AUTH when not NULL/empty */
  int db;                   /* SELECT when not 0 */
  double connect_timeout_s; /* connect + handshake; 0: 5 s */
  double request_timeout_s; /* reply wait per request; 0: 5 s */
  size_t max_pending;       /* requests awaiting replies; 0: 10000 */
  double backoff_min_s;     /* first reconnect delay; 0: 0.1 s */
  double backoff_max_s;     /* largest reconnect delay; 0: 5 s */
} sm_valkey_config;

/* A request's outcome: err 0 with the reply (which may be SM_VK_ERROR: err is then the reply's
 * translation, e.g. SM_EAUTH for NOAUTH, SM_ENOENT for NOSCRIPT, SM_EUNAVAIL for LOADING/BUSY,
 * SM_EIO otherwise), SM_ETIMEDOUT (no reply in time; the command may still run), SM_EUNAVAIL
 * (the connection was lost; the command may have run) or SM_ECANCELED (adapter closing); r is
 * NULL for those. */
typedef void (*sm_valkey_cb)(void *ud, int err, const sm_valkey_reply *r);

/* Connection state changes: up 1 once the handshake succeeded, 0 when that connection is lost. */
typedef void (*sm_valkey_state_cb)(void *ud, int up);

typedef struct sm_valkey_stats {
  uint64_t requests;   /* requests sent */
  uint64_t errors;     /* error replies */
  uint64_t timeouts;   /* requests timed out */
  uint64_t reconnects; /* connections established after the first */
  size_t pending;      /* requests awaiting replies now */
} sm_valkey_stats;

/* Creates the adapter and starts connecting. Returns 0, SM_EINVAL or SM_ENOMEM. */
SM_MUST_CHECK int sm_valkey_create(uv_loop_t *loop, const sm_valkey_config *cfg,
                                   sm_valkey_state_cb state_cb, void *ud, sm_valkey **out);

/* Sends one command (argv with lengths; binary safe). Returns 0 (cb runs later, exactly once),
 * SM_EUNAVAIL (not connected), SM_ELIMIT (max_pending requests awaiting replies), SM_EINVAL or
 * SM_ENOMEM; cb does not run then. */
SM_MUST_CHECK int sm_valkey_command(sm_valkey *v, int argc, const char *const *argv,
                                    const size_t *argvlen, sm_valkey_cb cb, void *ud);

/* Whether the connection is up (handshake done). */
int sm_valkey_is_up(const sm_valkey *v);

/* Counters. */
void sm_valkey_get_stats(const sm_valkey *v, sm_valkey_stats *out);

/* Closes: pending requests complete with SM_ECANCELED (inside this call), then closed(ud) runs
 * on the loop once the adapter's handles are closed, and v is freed. NULL is fine. */
void sm_valkey_close(sm_valkey *v, void (*closed)(void *ud), void *ud);

/* Reply accessors. */
enum sm_valkey_type sm_valkey_reply_type(const sm_valkey_reply *r);
long long sm_valkey_reply_int(const sm_valkey_reply *r);
/* Text of a string, status or error reply (len set when not NULL); NULL for other types. */
const char *sm_valkey_reply_str(const sm_valkey_reply *r, size_t *len);
/* Elements of an array reply (0 for other types) and the i-th one. */
size_t sm_valkey_reply_count(const sm_valkey_reply *r);
const sm_valkey_reply *sm_valkey_reply_elem(const sm_valkey_reply *r, size_t i);

#endif
