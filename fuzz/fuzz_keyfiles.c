/* fuzz_keyfiles - the key files: admin API keys (admin/auth.c admin_keys_parse, the text of
 * ADMIN_API_KEYS_FILE) and agent tokens (grpc/agent_auth.c agent_tokens_load, from a file
 * holding the input, as AGENT_AUTH_TOKENS_FILE).
 *
 * Input: the file's text. After a successful parse, the key of the first line is presented
 * back (admin_keys_find; agent_tokens_check with "Bearer <token>" for its agent id) and must
 * be found unless it is a sha256: digest. Oracles: ASan/UBSan and no leak; the error codes and
 * line numbers are the documented ones. */
#include "fuzz.h"

#include "admin/auth.h"
#include "grpc/agent_auth.h"
#include "util/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fz_log_setup();
  snprintf(path, sizeof(path), "/tmp/sm-fuzz-keyfile-%ld", (long)getpid());
  return 0;
}

/* The first line of text without its '\r', trimmed of spaces, split at the first ':'. */
static int first_line(const char *text, size_t len, char *a, size_t asz, char *b, size_t bsz) {
  const char *nl = memchr(text, '\n', len);
  size_t n = nl ? (size_t)(nl - text) : len;
  const char *colon = memchr(text, ':', n);
  if (colon == NULL || memchr(text, '\0', n) != NULL)
    return -1;
  size_t an = (size_t)(colon - text), bn = n - an - 1;
  if (an >= asz || bn >= bsz)
    return -1;
  memcpy(a, text, an);
  a[an] = '\0';
  memcpy(b, colon + 1, bn);
  b[bn] = '\0';
  return 0;
}

static void fuzz_admin_keys(const uint8_t *data, size_t size) {
  admin_keys k = {0};
  int bad_line = 0;
  char why[256] = "";
  int rc = admin_keys_parse(&k, (const char *)data, size, &bad_line, why, sizeof(why));
  if (rc != 0 && rc != SM_EINVAL && rc != SM_ENOMEM && rc != SM_ELIMIT)
    fz_fail("admin_keys_parse returned %d", rc);
  if (rc == SM_EINVAL && (bad_line < 1 || why[0] == '\0'))
    fz_fail("admin_keys_parse: SM_EINVAL without a line (%d) or a reason", bad_line);
  if (rc == 0 && k.n > ADMIN_KEYS_MAX)
    fz_fail("admin_keys_parse kept %zu keys, above ADMIN_KEYS_MAX", k.n);
  char role[64], key[512];
  if (rc == 0 && first_line((const char *)data, size, role, sizeof(role), key, sizeof(key)) == 0 &&
      strcmp(role, "admin") == 0 && strncmp(key, "sha256:", 7) != 0 && key[0] != ' ' &&
      key[0] != '\t' && key[0] != '\0' && key[strlen(key) - 1] != ' ' &&
      key[strlen(key) - 1] != '\r' && key[strlen(key) - 1] != '\t' && strchr(key, '#') == NULL) {
    if (admin_keys_find(&k, key, strlen(key)) == NULL)
      fz_fail("admin key of line 1 not found after a successful parse");
  }
  admin_keys_finish(&k);
}

static void fuzz_agent_tokens(const uint8_t *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
    fz_fail("harness: writing %s", path);
  agent_tokens *t = NULL;
  char why[256] = "";
  int rc = agent_tokens_load(path, &t, why, sizeof(why));
  unlink(path);
  if (rc != 0 && rc != SM_EINVAL && rc != SM_ENOMEM && rc != SM_EIO && rc != SM_ELIMIT)
    fz_fail("agent_tokens_load returned %d", rc);
  if (rc != 0) {
    if (t != NULL)
      fz_fail("agent_tokens_load failed and returned tokens");
    if (why[0] == '\0')
      fz_fail("agent_tokens_load failed (%d) without a reason", rc);
    return;
  }
  char id[256], tok[512], hdr[600];
  if (first_line((const char *)data, size, id, sizeof(id), tok, sizeof(tok)) == 0 && id[0] != '#') {
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    (void)agent_tokens_check(t, hdr, strcmp(id, "*") == 0 ? NULL : id);
    (void)agent_tokens_check(t, hdr, "some-other-agent");
  }
  (void)agent_tokens_check(t, NULL, "agent-1");
  (void)agent_tokens_check(t, "Bearer ", NULL);
  agent_tokens_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_admin_keys(data, size);
  fuzz_agent_tokens(data, size);
  return 0;
}
