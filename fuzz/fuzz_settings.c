/* fuzz_settings - sirius-manager's settings (app/settings.c) from an environment and a command
 * line built from the input.
 *
 * Input: lines. A line starting with '-' is a command-line argument; a line "NAME=value" sets
 * the environment variable NAME (the environment is cleared first). fuzz/settings.dict lists
 * every variable and flag. Oracles: ASan/UBSan and no leak; the load answers 0, 1 (help or
 * version) or SM_EINVAL, and a successful load gives values within their documented ranges. */
#include "fuzz.h"

#include "app/settings.h"
#include "util/err.h"

#include <stdlib.h>
#include <string.h>

#define MAX_ARGS 64

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';
  char *argv[MAX_ARGS + 2];
  int argc = 0;
  argv[argc++] = "sirius-manager";
  clearenv();
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (line[0] == '-') {
      if (argc <= MAX_ARGS)
        argv[argc++] = line;
      continue;
    }
    char *eq = strchr(line, '=');
    if (eq == NULL || eq == line)
      continue;
    *eq = '\0';
    setenv(line, eq + 1, 1);
  }
  argv[argc] = NULL;
  sm_settings s;
  int rc = sm_settings_load(&s, argc, argv);
  if (rc != 0 && rc != 1 && rc != SM_EINVAL)
    fz_fail("sm_settings_load returned %d", rc);
  if (rc == 0) {
    if (s.grpc_addr == NULL || s.admin_addr == NULL || s.metrics_addr == NULL)
      fz_fail("a listener address is NULL after a successful load");
    if (s.max_agent_load < 0 || s.agent_timeout_s < 0 || s.command_timeout_s < 0 ||
        s.max_retries < 0)
      fz_fail("a negative limit was accepted");
  }
  sm_settings_finish(&s);
  clearenv();
  free(text);
  return 0;
}
