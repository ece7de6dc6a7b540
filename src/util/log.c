/* log.c - one event, one line, written with a single write(2) so lines never interleave. */
#include "util/log.h"

#include "util/err.h"
#include "util/utf8.h"

#include <assert.h>
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
  size_t limit; /* content stops here; the bytes after it close the line */
  int full;     /* something did not fit: nothing more is added */
} line;

/* Adds s whole or not at all, so that a cut never splits an escape or a UTF-8 sequence; after
 * the first piece that does not fit, adds nothing more (a shorter later piece would leave a gap
 * in the structure). */
static void put(line *l, const char *s, size_t n) {
  if (l->full)
    return;
  if (l->len >= l->limit || n > l->limit - l->len) {
    l->full = 1;
    return;
  }
  memcpy(l->buf + l->len, s, n);
  l->len += n;
}

/* Adds a closing byte in the room kept after limit. */
static void put_closing(line *l, char c) {
  assert(l->len < sizeof(l->buf) - 1);
  l->buf[l->len++] = c;
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

/* JSON string body: quotes, backslashes and control bytes escaped, valid UTF-8 as it is, each
 * ill-formed subpart replaced by U+FFFD (a path or header from a peer can hold any bytes, and
 * log shippers refuse lines that are not UTF-8). */
static void put_json_str(line *l, const char *s) {
  size_t len = strlen(s);
  for (size_t i = 0; i < len && !l->full;) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x80) {
      size_t skip = 1, n = sm_utf8_char(s + i, len - i, &skip);
      if (n) {
        put(l, s + i, n);
        i += n;
      } else {
        put(l, SM_UTF8_REPLACEMENT, SM_UTF8_REPLACEMENT_LEN);
        i += skip;
      }
      continue;
    }
    switch (ch) {
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
      if (ch < 0x20 || ch == 0x7f)
        putf(l, "\\u%04x", ch);
      else
        put(l, s + i, 1);
    }
    i++;
  }
}

/* Console values: printable as they are, control bytes and ill-formed UTF-8 escaped as \xNN so
 * one event stays one line of text. */
static void put_console_str(line *l, const char *s) {
  int quote = strpbrk(s, " \"=") != NULL || *s == '\0';
  size_t len = strlen(s);
  if (quote)
    puts_(l, "\"");
  for (size_t i = 0; i < len;) {
    unsigned char ch = (unsigned char)s[i];
    size_t skip = 1, n = ch >= 0x80 ? sm_utf8_char(s + i, len - i, &skip) : 1;
    if (n > 1) {
      put(l, s + i, n);
      i += n;
    } else if (n == 0) {
      for (size_t k = 0; k < skip; k++)
        putf(l, "\\x%02x", (unsigned char)s[i + k]);
      i += skip;
    } else {
      if (ch < 0x20 || ch == 0x7f)
        putf(l, "\\x%02x", ch);
      else if (ch == '"' && quote)
        puts_(l, "\\\"");
      else
        put(l, s + i, 1);
      i++;
    }
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
      if (l->full)
        return;
      put_json_str(l, f->v.s);
      put_closing(l, '"'); /* a cut string still ends */
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

/* ,"key":value as a whole: when the key or a value other than a string does not fit, the
 * member is taken back out so the object stays well-formed; a string value is cut at a
 * character boundary and closed. Returns 0 while there is room for more. */
static int put_json_member(line *l, const sm_log_field *f) {
  size_t mark = l->len;
  puts_(l, ",\"");
  put_json_str(l, f->key);
  puts_(l, "\":");
  if (!l->full) {
    size_t vmark = l->len;
    put_value(l, f, 1);
    if (l->full && (f->type != SM_LF_STR || f->v.s == NULL || l->len == vmark))
      l->len = mark;
  } else {
    l->len = mark;
  }
  return l->full ? -1 : 0;
}

void sm_log_emit(enum sm_log_level level, const char *component, const char *msg,
                 const sm_log_field *fields, size_t n) {
  line l;
  l.len = 0;
  l.limit = sizeof(l.buf) - 1; /* room for the newline */
  l.full = 0;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[64]; /* room for any int the compiler imagines, so no truncation warning */
  snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
  const char *lvl = level_names[level <= SM_LOG_ERROR ? level : SM_LOG_ERROR];

  if (log_format == SM_LOG_JSON) {
    l.limit = sizeof(l.buf) - 3; /* room for a cut string's quote, the brace and the newline */
    putf(&l, "{\"ts\":\"%s\",\"level\":\"%s\"", ts, lvl);
    const sm_log_field head[] = {SM_LS("component", component), SM_LS("msg", msg)};
    int room = put_json_member(&l, &head[0]) == 0 && put_json_member(&l, &head[1]) == 0;
    for (size_t i = 0; room && i < n; i++) {
      if (fields[i].key != NULL)
        room = put_json_member(&l, &fields[i]) == 0;
    }
    put_closing(&l, '}');
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
