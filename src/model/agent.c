/* agent.c - what can be said of one agent record without the registry (see agent.h). */
#include "model/agent.h"

#include "util/err.h"
#include "util/semver.h"

#include <string.h>

static const char *const status_names[AGENT_STATUS_COUNT] = {"unknown", "idle", "busy", "error",
                                                             "maintenance"};

const char *agent_status_name(enum agent_status s) {
  return (unsigned)s < AGENT_STATUS_COUNT ? status_names[s] : "unknown";
}

int agent_status_parse(const char *s, enum agent_status *out) {
  for (int i = 0; i < AGENT_STATUS_COUNT; i++) {
    if (strcmp(s, status_names[i]) == 0) {
      *out = (enum agent_status)i;
      return 0;
    }
  }
  return SM_EINVAL;
}

double agent_load_compute(const agent *a) {
  double cpu = a->cpu_usage > 1.0 ? a->cpu_usage / 100.0 : a->cpu_usage;
  int32_t busy = a->active_commands > a->assigned ? a->active_commands : a->assigned;
  double conc = a->max_concurrent > 0 ? (double)busy / a->max_concurrent : 0;
  double load = cpu > conc ? cpu : conc;
  if (!(load >= 0))
    load = 0;
  return load > 1 ? 1 : load;
}

const char *agent_cap_value(const agent *a, const char *key) {
  size_t lo = 0, hi = a->ncaps;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(a->caps[mid].key, key);
    if (c == 0)
      return a->caps[mid].value;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

int agent_filter_match(const agent_filter *f, const agent *a) {
  if (f == NULL)
    return 1;
  if (f->status_mask && !(f->status_mask & (1u << a->status)))
    return 0;
  if (f->max_load >= 0 && a->load > f->max_load)
    return 0;
  for (size_t i = 0; i < f->ncaps; i++) {
    const char *have = agent_cap_value(a, f->caps[i].key);
    const char *want = f->caps[i].value;
    if (have == NULL)
      return 0;
    if (want && *want && strcmp(want, "*") != 0 && strcmp(want, have) != 0)
      return 0;
  }
  if (f->min_version && *f->min_version) {
    sm_semver want, have;
    if (sm_semver_parse(f->min_version, &want) || sm_semver_parse(a->version, &have))
      return 0;
    if (sm_semver_cmp(&have, &want) < 0)
      return 0;
  }
  return 1;
}

void agent_handle_set(agent_handle *h, const agent *a) {
  memcpy(h->id, a->id, a->id_len);
  h->id[a->id_len] = '\0';
  h->generation = a->generation;
}
