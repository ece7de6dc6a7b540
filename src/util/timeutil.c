/* timeutil.c */
#include "util/timeutil.h"

#include "util/err.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t sm_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *sm_rfc3339(int64_t unix_ms, char *buf, size_t size) {
  time_t secs = (time_t)(unix_ms / 1000);
  int ms = (int)(unix_ms % 1000);
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  struct tm tm;
  gmtime_r(&secs, &tm);
  snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

static int digits(const char **p, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (!isdigit((unsigned char)(*p)[i]))
      return SM_EINVAL;
    v = v * 10 + ((*p)[i] - '0');
  }
  *p += n;
  *out = v;
  return 0;
}

int sm_rfc3339_parse(const char *s, int64_t *unix_ms) {
  int Y, M, D, h, m, sec, ms = 0;
  const char *p = s;
  if (digits(&p, 4, &Y) || *p++ != '-' || digits(&p, 2, &M) || *p++ != '-' || digits(&p, 2, &D) ||
      (*p != 'T' && *p != 't' && *p != ' '))
    return SM_EINVAL;
  p++;
  if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &m) || *p++ != ':' || digits(&p, 2, &sec))
    return SM_EINVAL;
  if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
    return SM_EINVAL;
  if (*p == '.') {
    p++;
    int n = 0;
    while (isdigit((unsigned char)*p)) {
      if (n < 3)
        ms = ms * 10 + (*p - '0');
      n++;
      p++;
    }
    if (n == 0)
      return SM_EINVAL;
    for (; n < 3; n++)
      ms *= 10;
  }
  int offset_min = 0;
  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int sign = *p == '-' ? -1 : 1;
    int oh, om;
    p++;
    if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
      return SM_EINVAL;
    offset_min = sign * (oh * 60 + om);
  } else {
    return SM_EINVAL;
  }
  if (*p != '\0')
    return SM_EINVAL;
  struct tm tm = {0};
  tm.tm_year = Y - 1900;
  tm.tm_mon = M - 1;
  tm.tm_mday = D;
  tm.tm_hour = h;
  tm.tm_min = m;
  tm.tm_sec = sec;
  time_t t = timegm(&tm);
  if (tm.tm_mday != D) /* e.g. February 30th, which timegm normalizes into March */
    return SM_EINVAL;
  *unix_ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + ms;
  return 0;
}

int sm_duration_parse(const char *s, double *seconds) {
  char *end;
  if (*s == '\0' || isspace((unsigned char)*s))
    return SM_EINVAL;
  double v = strtod(s, &end);
  if (end == s || !isfinite(v) || v < 0)
    return SM_EINVAL;
  double mult;
  if (*end == '\0' || strcmp(end, "s") == 0)
    mult = 1;
  else if (strcmp(end, "ms") == 0)
    mult = 0.001;
  else if (strcmp(end, "m") == 0)
    mult = 60;
  else if (strcmp(end, "h") == 0)
    mult = 3600;
  else
    return SM_EINVAL;
  *seconds = v * mult;
  return 0;
}
