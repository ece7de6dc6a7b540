/* collector.h - the metrics collector: families of counters, gauges, histograms and summaries
 * with labels, rendered as Prometheus text (format 0.0.4) or JSON.
 *
 * - Bounded: a family holds at most max_series label sets; past it, new label sets are folded
 *   into one series whose every label value is "other", and metrics_series_dropped_total{family}
 *   counts each update that was folded. A label value is truncated to METRICS_LABEL_VALUE_MAX
 *   bytes and invalid UTF-8 bytes become '?', so a peer cannot grow memory or break the format.
 * - Stable output: families sorted by name, series in insertion order.
 * - Pull figures: hooks added with metrics_on_collect run at the start of every collect, to copy
 *   figures from other modules' stats getters (gauges, or counters through metrics_counter_set).
 * Not thread-safe: everything runs on the loop thread.
 */
#ifndef SM_METRICS_COLLECTOR_H
#define SM_METRICS_COLLECTOR_H

#include "util/err.h"

#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_LABELS 4          /* label names per family */
#define METRICS_MAX_BUCKETS 24        /* histogram upper bounds (+Inf is implicit) */
#define METRICS_MAX_FAMILIES 128      /* families per collector */
#define METRICS_MAX_HOOKS 8           /* metrics_on_collect hooks */
#define METRICS_DEFAULT_MAX_SERIES 64 /* max_series when a family says 0 */
#define METRICS_LABEL_VALUE_MAX 128   /* bytes of a label value; longer ones are truncated */
#define METRICS_SUMMARY_WINDOW 1024   /* observations a summary keeps for its quantiles */
#define METRICS_OTHER "other"         /* label value of the overflow series */

typedef enum metrics_type {
  METRICS_COUNTER = 0,
  METRICS_GAUGE,
  METRICS_HISTOGRAM,
  METRICS_SUMMARY,
} metrics_type;

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;

/* A family's description; every string is copied by metrics_register. */
typedef struct metrics_desc {
  metrics_type type;
  const char *name;          /* [a-zA-Z_:][a-zA-Z0-9_:]* */
  const char *help;          /* one line of text */
  const char *const *labels; /* nlabels names, [a-zA-Z_][a-zA-Z0-9_]*, not "le"/"quantile" */
  size_t nlabels;
  size_t max_series;     /* label sets kept before folding into "other"; 0: default */
  const double *buckets; /* histogram: ascending finite upper bounds; NULL: default buckets */
  size_t nbuckets;       /* at most METRICS_MAX_BUCKETS */
} metrics_desc;

/* Creates an empty collector (it registers metrics_series_dropped_total itself). Returns 0 or
 * SM_ENOMEM. */
SM_MUST_CHECK int metrics_registry_create(metrics_registry **out);

/* Frees the collector and its families. NULL is fine. */
void metrics_registry_destroy(metrics_registry *r);

/* Adds a family. Returns 0 with *out set, SM_EINVAL (bad name, label name, buckets), SM_EEXIST
 * (name taken), SM_ELIMIT (METRICS_MAX_FAMILIES) or SM_ENOMEM. */
SM_MUST_CHECK int metrics_register(metrics_registry *r, const metrics_desc *d,
                                   metrics_family **out);

/* The family named name, or NULL. */
metrics_family *metrics_find(const metrics_registry *r, const char *name);

/* values: f's nlabels label values (NULL when the family has none; a NULL value is ""). The
 * update functions below return 0, SM_EINVAL (wrong type, or a negative counter increment) or
 * SM_ENOMEM (the update is lost). Folding into "other" is not an error. A metric update is best
 * effort, so callers may ignore the result (no SM_MUST_CHECK on them). */

/* Adds v >= 0 to a counter. */
int metrics_counter_add(metrics_family *f, const char *const *values, double v);

/* Sets a counter copied from a monotonic source (a module's stats); a value below the current
 * one is ignored so the counter never goes down. */
int metrics_counter_set(metrics_family *f, const char *const *values, double v);

/* Sets a gauge. */
int metrics_gauge_set(metrics_family *f, const char *const *values, double v);

/* Adds v (may be negative) to a gauge. */
int metrics_gauge_add(metrics_family *f, const char *const *values, double v);

/* Records one observation in a histogram or a summary. */
int metrics_observe(metrics_family *f, const char *const *values, double v);

/* Runs fn(ud, r) at the start of every metrics_collect_*. Returns 0 or SM_ELIMIT. */
SM_MUST_CHECK int metrics_on_collect(metrics_registry *r, void (*fn)(void *ud, metrics_registry *r),
                                     void *ud);

/* Runs the hooks and renders every family as Prometheus text exposition format 0.0.4 into a
 * malloc'ed buffer (*out, *len; the caller frees). Returns 0 or SM_ENOMEM. */
SM_MUST_CHECK int metrics_collect_text(metrics_registry *r, char **out, size_t *len);

/* Runs the hooks and renders every family as JSON: {"name":{"type","help","series":[{"labels":
 * {...},"value"} or for histograms/summaries {"labels","count","sum"}]}}. Returns 0 or
 * SM_ENOMEM; the caller frees *out. */
SM_MUST_CHECK int metrics_collect_json(metrics_registry *r, char **out, size_t *len);

/* A series' value: counters and gauges their value, histograms and summaries their sum; *count
 * (optional) gets the observation count (1 for counters and gauges). Returns 0 or SM_ENOENT
 * when the series does not exist. For tests and the JSON snapshot. */
SM_MUST_CHECK int metrics_value(const metrics_family *f, const char *const *values, double *v,
                                uint64_t *count);

/* Series held by f (the "other" series included). */
size_t metrics_series_count(const metrics_family *f);

/* Updates folded into "other" series since creation, over all families. */
uint64_t metrics_dropped(const metrics_registry *r);

/* Appends v in the exposition format's notation ("+Inf", "NaN", shortest round-trip decimal)
 * to buf (at least 32 bytes). Returns buf. */
char *metrics_format_double(double v, char *buf, size_t cap);

#endif
