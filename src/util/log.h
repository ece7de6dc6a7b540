/* log.h - structured logging: one line per event on stderr, as JSON or for a console.
 *
 * The logger is the one piece of process-wide state (like the allocator): it is configured once
 * by the program's main before the loop starts and only read afterwards.
 *
 *   sm_log_info("registry", "agent registered", SM_LS("agent_id", id), SM_LD("load", load));
 */
#ifndef SM_UTIL_LOG_H
#define SM_UTIL_LOG_H

#include <stddef.h>

enum sm_log_level { SM_LOG_DEBUG = 0, SM_LOG_INFO, SM_LOG_WARN, SM_LOG_ERROR };
enum sm_log_format { SM_LOG_JSON = 0, SM_LOG_CONSOLE };

enum sm_log_field_type { SM_LF_NONE = 0, SM_LF_STR, SM_LF_INT, SM_LF_DBL, SM_LF_BOOL };

typedef struct sm_log_field {
  const char *key;             /* field name; NULL marks the unused sentinel */
  enum sm_log_field_type type; /* which member of v is set */
  union {
    const char *s; /* SM_LF_STR; NULL prints as null */
    long long i;   /* SM_LF_INT */
    double d;      /* SM_LF_DBL */
    int b;         /* SM_LF_BOOL */
  } v;
} sm_log_field;

#define SM_LS(k, val) ((sm_log_field){.key = (k), .type = SM_LF_STR, .v.s = (val)})
#define SM_LI(k, val) ((sm_log_field){.key = (k), .type = SM_LF_INT, .v.i = (long long)(val)})
#define SM_LD(k, val) ((sm_log_field){.key = (k), .type = SM_LF_DBL, .v.d = (double)(val)})
#define SM_LB(k, val) ((sm_log_field){.key = (k), .type = SM_LF_BOOL, .v.b = !!(val)})
/* An error code as its symbolic name. */
#define SM_LE(err) SM_LS("error", sm_err_name(err))

/* Sets the threshold and format. Safe to call again (tests do). */
void sm_log_configure(enum sm_log_level level, enum sm_log_format format);

/* Parses "debug"/"info"/"warn"/"error" (also "warning"); returns 0 or SM_EINVAL. */
int sm_log_level_parse(const char *s, enum sm_log_level *out);

/* Parses "json"/"console"; returns 0 or SM_EINVAL. */
int sm_log_format_parse(const char *s, enum sm_log_format *out);

/* Whether an event of this level would be written (to skip building costly fields). */
int sm_log_enabled(enum sm_log_level level);

/* Writes one event line. fields[0] is a sentinel and skipped; n counts it. */
void sm_log_emit(enum sm_log_level level, const char *component, const char *msg,
                 const sm_log_field *fields, size_t n);

#define SM_LOG_(level, comp, msg, ...)                                                             \
  do {                                                                                             \
    if (sm_log_enabled(level)) {                                                                   \
      const sm_log_field sm_lf_[] = {{0}, __VA_ARGS__};                                            \
      sm_log_emit((level), (comp), (msg), sm_lf_, sizeof(sm_lf_) / sizeof(sm_lf_[0]));             \
    }                                                                                              \
  } while (0)

#define sm_log_debug(comp, msg, ...) SM_LOG_(SM_LOG_DEBUG, comp, msg, __VA_ARGS__)
#define sm_log_info(comp, msg, ...) SM_LOG_(SM_LOG_INFO, comp, msg, __VA_ARGS__)
#define sm_log_warn(comp, msg, ...) SM_LOG_(SM_LOG_WARN, comp, msg, __VA_ARGS__)
#define sm_log_error(comp, msg, ...) SM_LOG_(SM_LOG_ERROR, comp, msg, __VA_ARGS__)

#endif
