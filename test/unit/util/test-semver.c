/* Tests of util/semver and util/timeutil parsing. */
#include "t.h"
#include "util/err.h"
#include "util/semver.h"
#include "util/timeutil.h"

static int cmp(const char *a, const char *b) {
  sm_semver x, y;
  T_EQ_INT(sm_semver_parse(a, &x), 0);
  T_EQ_INT(sm_semver_parse(b, &y), 0);
  return sm_semver_cmp(&x, &y);
}

static void test_semver(void) {
  T_ASSERT(cmp("1.2.3", "1.2.3") == 0);
  T_ASSERT(cmp("v1.2", "1.2.0") == 0);
  T_ASSERT(cmp("1.10.0", "1.9.9") > 0);
  T_ASSERT(cmp("2", "1.99.99") > 0);
  T_ASSERT(cmp("1.0.0-rc.1", "1.0.0") < 0);
  T_ASSERT(cmp("1.0.0+build.5", "1.0.0") == 0);
  sm_semver v;
  T_EQ_INT(sm_semver_parse("", &v), SM_EINVAL);
  T_EQ_INT(sm_semver_parse("x1", &v), SM_EINVAL);
  T_EQ_INT(sm_semver_parse("1..2", &v), SM_EINVAL);
  T_EQ_INT(sm_semver_parse("1.2.3-", &v), SM_EINVAL);
  T_EQ_INT(sm_semver_parse("1.2.3 ", &v), SM_EINVAL);
  T_EQ_INT(sm_semver_parse("1234567890.1", &v), SM_EINVAL);
}

static void test_rfc3339(void) {
  int64_t ms;
  T_EQ_INT(sm_rfc3339_parse("1970-01-01T00:00:00Z", &ms), 0);
  T_EQ_INT(ms, 0);
  T_EQ_INT(sm_rfc3339_parse("2026-11-28T12:00:00.5Z", &ms), 0);
  T_EQ_INT(ms, 1795867200500LL);
  T_EQ_INT(sm_rfc3339_parse("2026-11-28T13:00:00+01:00", &ms), 0);
  T_EQ_INT(ms, 1795867200000LL);
  char buf[40];
  T_EQ_STR(sm_rfc3339(1795867200500LL, buf, sizeof(buf)), "2026-11-28T12:00:00.500Z");
  T_EQ_INT(sm_rfc3339_parse("2026-13-01T00:00:00Z", &ms), SM_EINVAL);
  T_EQ_INT(sm_rfc3339_parse("2026-11-28 12:00", &ms), SM_EINVAL);
  T_EQ_INT(sm_rfc3339_parse("2026-11-28T12:00:00", &ms), SM_EINVAL);
  T_EQ_INT(sm_rfc3339_parse("2026-02-30T12:00:00Z", &ms), SM_EINVAL);
}

static void test_duration(void) {
  double s;
  T_EQ_INT(sm_duration_parse("15", &s), 0);
  T_ASSERT(s == 15);
  T_EQ_INT(sm_duration_parse("15s", &s), 0);
  T_ASSERT(s == 15);
  T_EQ_INT(sm_duration_parse("250ms", &s), 0);
  T_ASSERT(s == 0.25);
  T_EQ_INT(sm_duration_parse("2m", &s), 0);
  T_ASSERT(s == 120);
  T_EQ_INT(sm_duration_parse("-1", &s), SM_EINVAL);
  T_EQ_INT(sm_duration_parse("1d", &s), SM_EINVAL);
  T_EQ_INT(sm_duration_parse("", &s), SM_EINVAL);
  T_EQ_INT(sm_duration_parse("nan", &s), SM_EINVAL);
}

int main(void) {
  T_RUN(test_semver);
  T_RUN(test_rfc3339);
  T_RUN(test_duration);
  return t_done();
}
