/* log.c - one event, one line, written with a single write(2) so lines never interleave. */
#include "util/log.h"

#include "util/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096 /* longer events are cut, never split */

static enum sm_log_level log_level = SM_LOG_INFO;
static enum sm_log_format log_format = SM_LOG_JSON;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sm_log_configure(enum sm_log_level level, enum sm_log_format format) {
  log_level = level;
  log_format = format;
}

int sm_log_level_parse(const char *s, enum sm_log_level *out) {
  static const struct {
    const char *name;
    enum sm_log_level level;
  } names[] = {{"debug", SM_LOG_DEBUG},
               {"info", SM_LOG_INFO},
               {"warn", SM_LOG_WARN},
               {"warning", SM_LOG_WARN},
               {"error", SM_LOG_ERROR}};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    if (strcasecmp(s, names[i].name) == 0) {
      *out = names[i].level;
      return 0;
    }
  }
  return SM_EINVAL;
}

int sm_log_format_parse(const char *s, enum sm_log_format *out) {
  if (strcasecmp(s, "json") == 0)
    *out = SM_LOG_JSON;
  else if (strcasecmp(s, "console") == 0 || strcasecmp(s, "text") == 0)
    *out = SM_LOG_CONSOLE;
  else
    return SM_EINVAL;
  return 0;
}

int sm_log_enabled(enum sm_log_level level) {
  return level >= log_level;
}

typedef struct line {
  char buf[LOG_LINE_MAX];
  size_t len;
} line;

static void put(line *l, const char *s, size_t n) {
  size_t room = sizeof(l->buf) - 1 - l->len; /* keep one byte for the newline */
  if (n > room)
    n = room;
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

static void puts_(line *l, const char *s) {
  put(l, s, strlen(s));
}

static void putf(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(line *l, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n > 0)
    put(l, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* JSON string body: quotes, backslashes and control bytes escaped; other bytes as they are. */
static void put_json_str(line *l, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"':
      puts_(l, "\\\"");
      break;
    case '\\':
      puts_(l, "\\\\");
      break;
    case '\n':
      puts_(l, "\\n");
      break;
    case '\r':
      puts_(l, "\\r");
      break;
    case '\t':
      puts_(l, "\\t");
      break;
    default:
      if (*p < 0x20 || *p == 0x7f)
        putf(l, "\\u%04x", *p);
      else
        put(l, (const char *)p, 1);
    }
  }
}

/* Console values: printable as they are, control bytes escaped so one event stays one line. */
static void put_console_str(line *l, const char *s) {
  int quote = strpbrk(s, " \"=") != NULL || *s == '\0';
  if (quote)
    puts_(l, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p < 0x20 || *p == 0x7f)
      putf(l, "\\x%02x", *p);
    else if (*p == '"' && quote)
      puts_(l, "\\\"");
    else
      put(l, (const char *)p, 1);
  }
  if (quote)
    puts_(l, "\"");
}

static void put_value(line *l, const sm_log_field *f, int json) {
  switch (f->type) {
  case SM_LF_STR:
    if (f->v.s == NULL) {
      puts_(l, "null");
    } else if (json) {
      puts_(l, "\"");
      put_json_str(l, f->v.s);
      puts_(l, "\"");
    } else {
      put_console_str(l, f->v.s);
    }
    break;
  case SM_LF_INT:
    putf(l, "%lld", f->v.i);
    break;
  case SM_LF_DBL:
    if (f->v.d != f->v.d || f->v.d > 1e300 || f->v.d < -1e300)
      puts_(l, json ? "null" : "nan");
    else
      putf(l, "%.6g", f->v.d);
    break;
  case SM_LF_BOOL:
    puts_(l, f->v.b ? "true" : "false");
    break;
  case SM_LF_NONE:
    puts_(l, "null");
    break;
  }
}

void sm_log_emit(enum sm_log_level level, const char *component, const char *msg,
                 const sm_log_field *fields, size_t n) {
  line l;
  l.len = 0;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[64]; /* room for any int the compiler imagines, so no truncation warning */
  snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
  const char *lvl = level_names[level <= SM_LOG_ERROR ? level : SM_LOG_ERROR];

  if (log_format == SM_LOG_JSON) {
    putf(&l, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"", ts, lvl);
    put_json_str(&l, component);
    puts_(&l, "\",\"msg\":\"");
    put_json_str(&l, msg);
    puts_(&l, "\"");
    for (size_t i = 0; i < n; i++) {
      if (fields[i].key == NULL)
        continue;
      puts_(&l, ",\"");
      put_json_str(&l, fields[i].key);
      puts_(&l, "\":");
      put_value(&l, &fields[i], 1);
    }
    /* A cut line still closes its object so that every line parses. */
    if (l.len > sizeof(l.buf) - 3)
      l.len = sizeof(l.buf) - 3;
    puts_(&l, "}");
  } else {
    putf(&l, "%s %-5s %s: %s", ts, lvl, component, msg);
    for (size_t i = 0; i < n; i++) {
      if (fields[i].key == NULL)
        continue;
      puts_(&l, " ");
      puts_(&l, fields[i].key);
      puts_(&l, "=");
      put_value(&l, &fields[i], 0);
    }
  }
  l.buf[l.len++] = '\n';
  ssize_t w = write(STDERR_FILENO, l.buf, l.len);
  (void)w; /* nowhere to report a failed log write */
}
