/* semver.c - just enough of semver.org for "at least version X" filters. Prerelease labels are
 * compared only as "has one" (sorts before the release), not label by label. */
#include "util/semver.h"

#include "util/err.h"

#include <ctype.h>
#include <stdlib.h>

static int parse_num(const char **p, long *out) {
  if (!isdigit((unsigned char)**p))
    return SM_EINVAL;
  char *end;
  long v = strtol(*p, &end, 10);
  if (v < 0 || end - *p > 9)
    return SM_EINVAL;
  *out = v;
  *p = end;
  return 0;
}

int sm_semver_parse(const char *s, sm_semver *out) {
  sm_semver v = {0, 0, 0, 0};
  const char *p = s;
  if (*p == 'v' || *p == 'V')
    p++;
  if (parse_num(&p, &v.major))
    return SM_EINVAL;
  if (*p == '.') {
    p++;
    if (parse_num(&p, &v.minor))
      return SM_EINVAL;
    if (*p == '.') {
      p++;
      if (parse_num(&p, &v.patch))
        return SM_EINVAL;
    }
  }
  if (*p == '-') {
    v.prerelease = 1;
    p++;
    if (*p == '\0')
      return SM_EINVAL;
    while (*p && *p != '+') {
      if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-')
        return SM_EINVAL;
      p++;
    }
  }
  if (*p == '+') {
    p++;
    if (*p == '\0')
      return SM_EINVAL;
    while (*p) {
      if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-')
        return SM_EINVAL;
      p++;
    }
  }
  if (*p != '\0')
    return SM_EINVAL;
  *out = v;
  return 0;
}

static int cmp_long(long a, long b) {
  return (a > b) - (a < b);
}

int sm_semver_cmp(const sm_semver *a, const sm_semver *b) {
  int c = cmp_long(a->major, b->major);
  if (c)
    return c;
  c = cmp_long(a->minor, b->minor);
  if (c)
    return c;
  c = cmp_long(a->patch, b->patch);
  if (c)
    return c;
  return cmp_long(!a->prerelease, !b->prerelease);
}
