/* auth.c - API keys (SHA-256 digests of util/sha256.h, compared in constant time), roles and
 * rate limits. */
#include "admin/auth.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/log.h"
#include "util/sha256.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

static const char *const role_names[] = {"public", "viewer", "operator", "admin"};

const char *admin_role_name(admin_role role) {
  return (unsigned)role < 4 ? role_names[role] : "unknown";
}

int admin_role_parse(const char *s, size_t n, admin_role *out) {
  for (int r = ADMIN_ROLE_VIEWER; r <= ADMIN_ROLE_ADMIN; r++) {
    if (strlen(role_names[r]) == n && memcmp(s, role_names[r], n) == 0) {
      *out = (admin_role)r;
      return 0;
    }
  }
  return SM_EINVAL;
}

static admin_key *keys_grow(admin_keys *k) {
  if (k->n >= ADMIN_KEYS_MAX + 1) /* the file's keys plus ADMIN_API_KEY */
    return NULL;
  admin_key *v = sm_realloc(k->v, (k->n + 1) * sizeof(*v));
  if (v == NULL)
    return NULL;
  k->v = v;
  admin_key *e = &v[k->n];
  memset(e, 0, sizeof(*e));
  return e;
}

int admin_keys_add(admin_keys *k, admin_role role, const char *key, size_t len,
                   const char *name_where) {
  if (len == 0)
    return SM_EINVAL;
  admin_key *e = keys_grow(k);
  if (e == NULL)
    return k->n > ADMIN_KEYS_MAX ? SM_ELIMIT : SM_ENOMEM;
  int err = sm_sha256(key, len, e->digest);
  if (err)
    return err;
  e->role = role;
  snprintf(e->name, sizeof(e->name), "%s@%s", admin_role_name(role), name_where);
  k->n++;
  return 0;
}

/* Trims spaces and tabs of [*s, *s + *n). */
static void trim(const char **s, size_t *n) {
  while (*n && (**s == ' ' || **s == '\t')) {
    (*s)++;
    (*n)--;
  }
  while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t' || (*s)[*n - 1] == '\r'))
    (*n)--;
}

static int parse_line(admin_keys *k, const char *s, size_t n, int line, char *why, size_t wsize) {
  const char *colon = memchr(s, ':', n);
  if (colon == NULL) {
    snprintf(why, wsize, "expected role:key");
    return SM_EINVAL;
  }
  const char *role = s, *key = colon + 1;
  size_t rlen = (size_t)(colon - s), klen = n - rlen - 1;
  trim(&role, &rlen);
  trim(&key, &klen);
  admin_role r;
  if (admin_role_parse(role, rlen, &r)) {
    snprintf(why, wsize, "role must be viewer, operator or admin");
    return SM_EINVAL;
  }
  if (klen == 0) {
    snprintf(why, wsize, "empty key");
    return SM_EINVAL;
  }
  char where[16];
  snprintf(where, sizeof(where), "line%d", line);
  if (klen >= 7 && memcmp(key, "sha256:", 7) == 0) {
    const char *hex = key + 7;
    size_t hlen = klen - 7;
    uint8_t d[32];
    if (hlen != 64) {
      snprintf(why, wsize, "sha256: needs 64 hex digits");
      return SM_EINVAL;
    }
    if (sm_hex_decode(hex, d, sizeof(d)) != 0) {
      snprintf(why, wsize, "sha256: needs 64 hex digits");
      return SM_EINVAL;
    }
    admin_key *e = keys_grow(k);
    if (e == NULL) {
      snprintf(why, wsize, "too many keys");
      return k->n > ADMIN_KEYS_MAX ? SM_ELIMIT : SM_ENOMEM;
    }
    memcpy(e->digest, d, sizeof(d));
    e->role = r;
    snprintf(e->name, sizeof(e->name), "%s@%s", admin_role_name(r), where);
    k->n++;
    return 0;
  }
  int err = admin_keys_add(k, r, key, klen, where);
  if (err)
    snprintf(why, wsize, "%s", err == SM_ELIMIT ? "too many keys" : "cannot store the key");
  return err;
}

int admin_keys_parse(admin_keys *k, const char *text, size_t len, int *bad_line, char *why,
                     size_t wsize) {
  int line = 0;
  for (size_t i = 0; i < len;) {
    const char *s = text + i;
    const char *nl = memchr(s, '\n', len - i);
    size_t n = nl ? (size_t)(nl - s) : len - i;
    i += n + (nl != NULL);
    line++;
    const char *t = s;
    size_t tn = n;
    trim(&t, &tn);
    if (tn == 0 || t[0] == '#')
      continue;
    int err = parse_line(k, t, tn, line, why, wsize);
    if (err) {
      *bad_line = line;
      return err;
    }
  }
  return 0;
}

const admin_key *admin_keys_find(const admin_keys *k, const char *presented, size_t len) {
  uint8_t d[32];
  if (len == 0 || sm_sha256(presented, len, d) != 0)
    return NULL;
  const admin_key *found = NULL;
  /* No early exit: the time taken does not depend on which key matched. */
  for (size_t i = 0; i < k->n; i++) {
    if (sm_sha256_equal(d, k->v[i].digest) && found == NULL)
      found = &k->v[i];
  }
  return found;
}

void admin_keys_finish(admin_keys *k) {
  free(k->v);
  k->v = NULL;
  k->n = 0;
}

/* Reads the whole keys file (at most ADMIN_KEYS_FILE_MAX bytes) and parses it. */
static int load_file(admin_keys *k, const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "sirius-manager: ADMIN_API_KEYS_FILE: cannot open %s: %s\n", path,
            strerror(errno));
    return SM_EIO;
  }
  char *buf = sm_malloc(ADMIN_KEYS_FILE_MAX + 1);
  if (buf == NULL) {
    fclose(f);
    return SM_ENOMEM;
  }
  size_t n = fread(buf, 1, ADMIN_KEYS_FILE_MAX + 1, f);
  int rd_err = ferror(f);
  fclose(f);
  int err = 0;
  if (rd_err) {
    fprintf(stderr, "sirius-manager: ADMIN_API_KEYS_FILE: cannot read %s\n", path);
    err = SM_EIO;
  } else if (n > ADMIN_KEYS_FILE_MAX) {
    fprintf(stderr, "sirius-manager: ADMIN_API_KEYS_FILE: larger than %d bytes\n",
            ADMIN_KEYS_FILE_MAX);
    err = SM_EINVAL;
  } else {
    int line = 0;
    char why[96] = "";
    err = admin_keys_parse(k, buf, n, &line, why, sizeof(why));
    if (err)
      fprintf(stderr, "sirius-manager: ADMIN_API_KEYS_FILE: line %d: %s\n", line, why);
  }
  /* The buffer held keys in the clear. */
  OPENSSL_cleanse(buf, n < ADMIN_KEYS_FILE_MAX + 1 ? n : ADMIN_KEYS_FILE_MAX + 1);
  free(buf);
  return err;
}

int admin_security_init(admin_security *sec, const admin_security_config *s) {
  memset(sec, 0, sizeof(*sec));
  int err = 0;
  if (s->api_key && s->api_key[0])
    err = admin_keys_add(&sec->keys, ADMIN_ROLE_ADMIN, s->api_key, strlen(s->api_key), "env");
  if (!err && s->api_keys_file && s->api_keys_file[0])
    err = load_file(&sec->keys, s->api_keys_file);
  if (!err && s->key_rps > 0)
    err = admin_ratelimit_create(s->key_rps, (double)s->key_burst, s->max_clients, &sec->per_key);
  if (!err && s->ip_rps > 0)
    err = admin_ratelimit_create(s->ip_rps, (double)s->ip_burst, s->max_clients, &sec->per_ip);
  if (err) {
    admin_security_finish(sec);
    return err;
  }
  int dev = s->development;
  if (sec->keys.n == 0 && dev) {
    sec->open = 1;
    sm_log_warn("admin", "no API key configured: /api is open to anyone (APP_ENV=development)");
  } else if (sec->keys.n == 0) {
    sm_log_warn("admin", "no API key configured: /api refuses every request; set ADMIN_API_KEY "
                         "or ADMIN_API_KEYS_FILE");
  } else {
    sm_log_info("admin", "API keys loaded", SM_LI("keys", sec->keys.n));
  }
  return 0;
}

void admin_security_finish(admin_security *sec) {
  admin_keys_finish(&sec->keys);
  admin_ratelimit_destroy(sec->per_key);
  admin_ratelimit_destroy(sec->per_ip);
  sec->per_key = sec->per_ip = NULL;
}

const char *admin_peer_addr(const char *peer, size_t *n) {
  if (peer == NULL) {
    *n = 0;
    return "";
  }
  const char *colon = strrchr(peer, ':');
  if (peer[0] == '[') {
    const char *end = strchr(peer, ']');
    *n = end ? (size_t)(end - peer) - 1 : strlen(peer + 1);
    return peer + 1;
  }
  *n = colon ? (size_t)(colon - peer) : strlen(peer);
  return peer;
}

/* The key the request presents, or NULL (length in *n). */
static const char *presented_key(const http_request *req, size_t *n) {
  const char *v = http_request_header(req, "Authorization");
  if (v != NULL) {
    while (*v == ' ')
      v++;
    if (strncasecmp(v, "Bearer ", 7) != 0)
      return NULL;
    v += 7;
  } else if ((v = http_request_header(req, "X-API-Key")) == NULL) {
    return NULL;
  }
  while (*v == ' ' || *v == '\t')
    v++;
  size_t len = strlen(v);
  while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
    len--;
  *n = len;
  return len ? v : NULL;
}

static uint64_t now_ms(void) {
  return uv_hrtime() / 1000000u;
}

static void too_many(http_response *res, int secs, const char *what) {
  char msg[96], ra[16];
  snprintf(msg, sizeof(msg), "rate limit of this %s exceeded; retry in %d s", what, secs);
  http_response_error(res, 429, "rate_limited", msg);
  snprintf(ra, sizeof(ra), "%d", secs);
  http_response_header(res, "Retry-After", ra);
}

int admin_security_guard(void *guard_ud, http_request *req, const admin_route *route,
                         http_response *res) {
  admin_security *sec = guard_ud;
  if (route->min_role == ADMIN_ROLE_PUBLIC)
    return 0;
  if (sec->per_ip) {
    size_t an;
    const char *addr = admin_peer_addr(req->peer, &an);
    int wait = admin_ratelimit_take(sec->per_ip, addr, an, now_ms());
    if (wait) {
      too_many(res, wait, "client address");
      return 1;
    }
  }
  if (sec->open)
    return 0;
  if (sec->keys.n == 0) {
    http_response_error(res, 403, "forbidden",
                        "no API key is configured on this manager: set ADMIN_API_KEY or "
                        "ADMIN_API_KEYS_FILE");
    return 1;
  }
  size_t kn = 0;
  const char *presented = presented_key(req, &kn);
  const admin_key *key = presented ? admin_keys_find(&sec->keys, presented, kn) : NULL;
  if (key == NULL) {
    http_response_error(res, 401, "unauthorized",
                        presented ? "unknown API key"
                                  : "an API key is required (Authorization: Bearer or X-API-Key)");
    http_response_header(res, "WWW-Authenticate", "Bearer realm=\"sirius-manager\"");
    return 1;
  }
  req->user = key;
  if (key->role < route->min_role) {
    char msg[128];
    snprintf(msg, sizeof(msg), "this key has the %s role; %s %s needs %s",
             admin_role_name(key->role), req->method, route->pattern,
             admin_role_name(route->min_role));
    http_response_error(res, 403, "forbidden", msg);
    return 1;
  }
  if (sec->per_key) {
    int wait = admin_ratelimit_take(sec->per_key, key->name, strlen(key->name), now_ms());
    if (wait) {
      too_many(res, wait, "API key");
      return 1;
    }
  }
  return 0;
}

const char *admin_request_who(const http_request *req) {
  const admin_key *k = req->user;
  return k ? k->name : "anonymous";
}
