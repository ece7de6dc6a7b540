/* semver.h - semantic versions ("1.2.3", "v1.2", "1.2.3-rc.1+build") for agent filters. */
#ifndef SM_UTIL_SEMVER_H
#define SM_UTIL_SEMVER_H

typedef struct sm_semver {
  long major, minor, patch;
  int prerelease; /* a "-..." suffix sorts before the release */
} sm_semver;

/* Parses a version; a leading "v" and missing minor/patch are accepted. Returns 0 or
 * SM_EINVAL. */
int sm_semver_parse(const char *s, sm_semver *out);

/* <0, 0, >0 as a is older, equal or newer than b. */
int sm_semver_cmp(const sm_semver *a, const sm_semver *b);

#endif
