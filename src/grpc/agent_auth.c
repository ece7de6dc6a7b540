/* agent_auth.c - see agent_auth.h. */
#include "grpc/agent_auth.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/map.h"
#include "util/sha256.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DIGEST_LEN SM_SHA256_LEN
#define TOKENS_MAX 1000000  /* lines a file may hold */
#define LINE_MAX_BYTES 4096 /* longer lines are refused */
#define WILDCARDS_MAX 64    /* `*:token` entries */

typedef struct token_entry {
  char *agent_id; /* NULL for a wildcard entry */
  uint8_t digest[DIGEST_LEN];
} token_entry;

struct agent_tokens {
  sm_map by_id;     /* agent id -> token_entry */
  sm_map by_digest; /* digest bytes -> token_entry (to tell "another agent's token") */
  token_entry *wild[WILDCARDS_MAX];
  size_t nwild;
  size_t count;
};

static void entry_free(token_entry *e) {
  if (e) {
    free(e->agent_id);
    free(e);
  }
}

void agent_tokens_free(agent_tokens *t) {
  if (t == NULL)
    return;
  for (size_t i = 0; i < t->by_id.cap; i++)
    if (t->by_id.slots && t->by_id.slots[i].key)
      entry_free(t->by_id.slots[i].value);
  for (size_t i = 0; i < t->nwild; i++)
    entry_free(t->wild[i]);
  sm_map_finish(&t->by_id);
  sm_map_finish(&t->by_digest);
  free(t);
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

/* Parses one non-comment line into e. */
static int parse_line(char *line, token_entry *e, const char **problem) {
  char *colon = strchr(line, ':');
  if (colon == NULL) {
    *problem = "expected agent_id:token or *:token";
    return SM_EINVAL;
  }
  *colon = '\0';
  char *id = trim(line), *tok = trim(colon + 1);
  if (*id == '\0' || *tok == '\0') {
    *problem = "empty agent id or token";
    return SM_EINVAL;
  }
  if (strncasecmp(tok, "sha256:", 7) == 0) {
    const char *hex = tok + 7;
    if (strlen(hex) != 2 * DIGEST_LEN) {
      *problem = "sha256: needs 64 hex digits";
      return SM_EINVAL;
    }
    if (sm_hex_decode(hex, e->digest, DIGEST_LEN) != 0) {
      *problem = "sha256: needs 64 hex digits";
      return SM_EINVAL;
    }
  } else if (sm_sha256(tok, strlen(tok), e->digest) != 0) {
    *problem = "cannot hash the token";
    return SM_EINTERNAL;
  }
  if (strcmp(id, "*") != 0) {
    e->agent_id = sm_strdup(id);
    if (e->agent_id == NULL)
      return SM_ENOMEM;
  }
  return 0;
}

int agent_tokens_load(const char *path, agent_tokens **out, char *why, size_t whylen) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    int err = errno == ENOENT ? SM_ENOENT : SM_EIO;
    snprintf(why, whylen, "%s: %s", path, strerror(errno));
    return err;
  }
  agent_tokens *t = sm_calloc(1, sizeof(*t));
  if (t == NULL) {
    fclose(f);
    return SM_ENOMEM;
  }
  sm_map_init(&t->by_id, TOKENS_MAX);
  sm_map_init(&t->by_digest, TOKENS_MAX);
  char line[LINE_MAX_BYTES + 2];
  int lineno = 0, err = 0;
  const char *problem = NULL;
  while (fgets(line, sizeof(line), f)) {
    lineno++;
    if (strchr(line, '\n') == NULL && !feof(f)) {
      problem = "line too long";
      err = SM_EINVAL;
      break;
    }
    char *s = trim(line);
    if (*s == '\0' || *s == '#')
      continue;
    token_entry *e = sm_calloc(1, sizeof(*e));
    if (e == NULL) {
      err = SM_ENOMEM;
      break;
    }
    err = parse_line(s, e, &problem);
    if (err) {
      entry_free(e);
      break;
    }
    if (e->agent_id == NULL) {
      if (t->nwild == WILDCARDS_MAX) {
        entry_free(e);
        problem = "too many *:token lines";
        err = SM_EINVAL;
        break;
      }
      t->wild[t->nwild++] = e;
    } else {
      err = sm_map_put(&t->by_id, e->agent_id, strlen(e->agent_id), e);
      if (err) {
        entry_free(e);
        problem = err == SM_EEXIST ? "agent id listed twice" : "too many tokens";
        err = err == SM_ENOMEM ? SM_ENOMEM : SM_EINVAL;
        break;
      }
    }
    /* Digest index: the first owner of a digest wins (a shared token is unusual). */
    sm_map_put(&t->by_digest, (const char *)e->digest, DIGEST_LEN, e);
    t->count++;
  }
  fclose(f);
  if (err) {
    if (err == SM_EINVAL)
      snprintf(why, whylen, "%s: line %d: %s", path, lineno, problem ? problem : "invalid");
    else
      snprintf(why, whylen, "%s: %s", path, sm_strerror(err));
    agent_tokens_free(t);
    return err;
  }
  *out = t;
  return 0;
}

size_t agent_tokens_count(const agent_tokens *t) {
  return t ? t->count : 0;
}

int agent_tokens_check(const agent_tokens *t, const char *authorization, const char *agent_id) {
  if (authorization == NULL)
    return SM_EAUTH;
  const char *p = authorization;
  while (*p == ' ')
    p++;
  if (strncasecmp(p, "Bearer ", 7) != 0)
    return SM_EAUTH;
  p += 7;
  while (*p == ' ')
    p++;
  size_t len = strlen(p);
  while (len && p[len - 1] == ' ')
    len--;
  if (len == 0 || len > LINE_MAX_BYTES)
    return SM_EAUTH;
  uint8_t d[DIGEST_LEN];
  if (sm_sha256(p, len, d) != 0)
    return SM_EAUTH;

  /* Every candidate is compared whole (sm_sha256_equal), and the outcome is decided after all
   * comparisons, so timing does not tell which part matched. */
  int ok = 0;
  if (agent_id) {
    const token_entry *own = sm_map_get(&t->by_id, agent_id, strlen(agent_id));
    if (own)
      ok |= sm_sha256_equal(own->digest, d);
  }
  for (size_t i = 0; i < t->nwild; i++)
    ok |= sm_sha256_equal(t->wild[i]->digest, d);
  if (ok)
    return 0;
  const token_entry *owner = sm_map_get(&t->by_digest, (const char *)d, DIGEST_LEN);
  if (owner == NULL)
    return SM_EAUTH;
  /* A valid token: for Ping (no id) that is enough; for Connect it names another agent. */
  return agent_id == NULL ? 0 : SM_EPERM;
}
