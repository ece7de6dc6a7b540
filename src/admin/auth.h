/* auth.h - the admin API's security layer: API keys and roles, rate limits, and the router
 * guard that applies them before every handler (docs/api.md).
 *
 * Keys come from ADMIN_API_KEY (role admin) and ADMIN_API_KEYS_FILE (`role:key` lines; the key
 * may be `sha256:<64 hex>`, the digest of the real key). Only SHA-256 digests are kept; a
 * presented key is hashed and compared with every known digest in constant time. Keys never
 * appear in logs or error messages: a key is named "<role>@<where>" ("admin@env",
 * "viewer@line3").
 */
#ifndef SM_ADMIN_AUTH_H
#define SM_ADMIN_AUTH_H

#include "admin/ratelimit.h"
#include "admin/router.h"
#include "util/err.h"

#include <stddef.h>
#include <stdint.h>

#define ADMIN_KEYS_FILE_MAX (1024 * 1024) /* bytes of ADMIN_API_KEYS_FILE read at most */
#define ADMIN_KEYS_MAX 4096               /* keys in one file */

typedef struct admin_key {
  uint8_t digest[32]; /* SHA-256 of the key */
  admin_role role;
  char name[32]; /* "<role>@<where>", for the request log */
} admin_key;

typedef struct admin_keys {
  admin_key *v; /* heap array */
  size_t n;
} admin_keys;

/* "viewer", "operator", "admin" (or "public"). */
const char *admin_role_name(admin_role role);

/* Parses "viewer", "operator" or "admin" (case-sensitive). Returns 0 or SM_EINVAL. */
SM_MUST_CHECK int admin_role_parse(const char *s, size_t n, admin_role *out);

/* Adds the keys of a keys file's text (len bytes): `role:key` per line, '#' comments and blank
 * lines ignored, spaces around role and key trimmed. Returns 0, or SM_EINVAL with *bad_line set
 * to the 1-based line and why[] saying what is wrong (never quoting the key), or SM_ENOMEM /
 * SM_ELIMIT (more than ADMIN_KEYS_MAX keys). */
SM_MUST_CHECK int admin_keys_parse(admin_keys *k, const char *text, size_t len, int *bad_line,
                                   char *why, size_t wsize);

/* Adds a key with role; name_where is the "<where>" of its name. Returns 0 or SM_ENOMEM,
 * SM_EINVAL for an empty key. */
SM_MUST_CHECK int admin_keys_add(admin_keys *k, admin_role role, const char *key, size_t len,
                                 const char *name_where);

/* The key matching the presented bytes, or NULL. Every known key is compared (constant time in
 * the key's content). */
const admin_key *admin_keys_find(const admin_keys *k, const char *presented, size_t len);

/* Frees the keys. */
void admin_keys_finish(admin_keys *k);

/* Everything the guard needs; owned by the admin server. */
typedef struct admin_security {
  admin_keys keys;
  int open;                 /* no key configured and APP_ENV=development: /api needs no key */
  admin_ratelimit *per_key; /* NULL: no per-key limit */
  admin_ratelimit *per_ip;  /* NULL: no per-address limit */
} admin_security;

/* The security settings, filled by app/ from ADMIN_API_KEY, ADMIN_API_KEYS_FILE, APP_ENV and
 * ADMIN_RATE_LIMIT_*. The strings are read during admin_security_init only. */
typedef struct admin_security_config {
  const char *api_key;       /* ADMIN_API_KEY (role admin); NULL or "": none */
  const char *api_keys_file; /* ADMIN_API_KEYS_FILE; NULL or "": none */
  int development;           /* APP_ENV=development: with no key at all, /api is open */
  double key_rps;            /* ADMIN_RATE_LIMIT_RPS: requests/s per key, 0: off */
  size_t key_burst;          /* ADMIN_RATE_LIMIT_BURST */
  double ip_rps;             /* ADMIN_RATE_LIMIT_IP_RPS: /api requests/s per address, 0: off */
  size_t ip_burst;           /* ADMIN_RATE_LIMIT_IP_BURST */
  size_t max_clients;        /* ADMIN_RATE_LIMIT_MAX_CLIENTS: buckets kept per table */
} admin_security_config;

/* Reads the keys (api_key, api_keys_file) and sets up the rate limits of cfg. On a bad keys file
 * prints one line "sirius-manager: ADMIN_API_KEYS_FILE: line N: ..." to stderr. Logs a warning
 * when no key is configured. Returns 0, SM_EINVAL, SM_EIO (unreadable file) or SM_ENOMEM. */
SM_MUST_CHECK int admin_security_init(admin_security *sec, const admin_security_config *cfg);

/* Frees what init allocated. */
void admin_security_finish(admin_security *sec);

/* The router guard (admin_guard_fn; guard_ud is the admin_security): per-address limit, then
 * the key and its role, then the per-key limit. Answers 401 (+ WWW-Authenticate), 403 or 429
 * (+ Retry-After); sets req->user to the admin_key on success with a key. Public routes pass
 * untouched. */
int admin_security_guard(void *guard_ud, http_request *req, const admin_route *route,
                         http_response *res);

/* Name for the request log of the caller of req: the key's name, "anonymous" without one. */
const char *admin_request_who(const http_request *req);

/* The address part of "ip:port" / "[v6]:port" (length in *n). */
const char *admin_peer_addr(const char *peer, size_t *n);

#endif
