/* collector.c - families, series, rendering. A series is found through a hash map keyed by its
 * length-prefixed label values, so an update costs one hash and a compare, whatever the number
 * of series. */
#include "metrics/collector.h"

#include "util/alloc.h"
#include "util/err.h"
#include "util/map.h"
#include "util/utf8.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Default histogram buckets: seconds, from a millisecond to five minutes (command times). */
static const double default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                         2.5,   5,    10,    30,   60,  120,  300};
static const double summary_quantiles[] = {0.5, 0.9, 0.99};
#define NQUANTILES (sizeof(summary_quantiles) / sizeof(summary_quantiles[0]))

typedef struct series {
  char *key; /* length-prefixed values: the map's key */
  size_t klen;
  char *values[METRICS_MAX_LABELS]; /* sanitized label values */
  double value;                     /* counter, gauge; histogram/summary: sum */
  uint64_t count;                   /* histogram/summary observations */
  uint64_t *buckets;                /* histogram: per-bucket (not cumulative) counts, +Inf last */
  double *window;                   /* summary: the last METRICS_SUMMARY_WINDOW observations */
  size_t wlen, wpos;
} series;

struct metrics_family {
  metrics_registry *reg;
  metrics_type type;
  char *name;
  char *help;
  char *labels[METRICS_MAX_LABELS];
  size_t nlabels;
  size_t max_series;
  double buckets[METRICS_MAX_BUCKETS];
  size_t nbuckets;
  series **series; /* insertion order */
  size_t nseries, cap;
  series *other; /* the overflow series, once created (also in series[]) */
  sm_map index;  /* key -> series */
};

typedef struct hook {
  void (*fn)(void *ud, metrics_registry *r);
  void *ud;
} hook;

struct metrics_registry {
  metrics_family *fam[METRICS_MAX_FAMILIES];
  size_t nfam;
  hook hooks[METRICS_MAX_HOOKS];
  size_t nhooks;
  metrics_family *dropped; /* metrics_series_dropped_total{family} */
  uint64_t ndropped;
};

/* ---- growable text buffer with a hard maximum ---- */

#define OUT_MAX (64u * 1024u * 1024u) /* a scrape above this is refused (SM_ENOMEM) */

typedef struct obuf {
  char *p;
  size_t len, cap;
  int failed;
} obuf;

static void ob_grow(obuf *b, size_t need) {
  if (b->failed || b->len + need + 1 <= b->cap)
    return;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + need + 1)
    cap *= 2;
  char *np = cap > OUT_MAX ? NULL : sm_realloc(b->p, cap);
  if (np == NULL) {
    b->failed = 1;
    return;
  }
  b->p = np;
  b->cap = cap;
}

static void ob_put(obuf *b, const char *s, size_t n) {
  ob_grow(b, n);
  if (b->failed)
    return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void ob_str(obuf *b, const char *s) {
  ob_put(b, s, strlen(s));
}

/* ---- names and values ---- */

static int valid_name(const char *s, int colon) {
  if (s == NULL || *s == '\0')
    return 0;
  for (size_t i = 0; s[i]; i++) {
    char ch = s[i];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
             (colon && ch == ':') || (i > 0 && ch >= '0' && ch <= '9');
    if (!ok)
      return 0;
  }
  return 1;
}

/* A label value as stored: at most METRICS_LABEL_VALUE_MAX bytes, valid UTF-8. */
static void sanitize(const char *v, char out[METRICS_LABEL_VALUE_MAX + 1]) {
  const unsigned char *s = (const unsigned char *)(v ? v : "");
  size_t n = strlen((const char *)s), o = 0;
  for (size_t i = 0; i < n && o < METRICS_LABEL_VALUE_MAX;) {
    size_t l = sm_utf8_char((const char *)s + i, n - i, NULL);
    if (l == 0) {
      out[o++] = '?';
      i++;
    } else if (o + l > METRICS_LABEL_VALUE_MAX) {
      break;
    } else {
      memcpy(out + o, s + i, l);
      o += l;
      i += l;
    }
  }
  out[o] = '\0';
}

char *metrics_format_double(double v, char *buf, size_t cap) {
  if (isnan(v)) {
    snprintf(buf, cap, "NaN");
  } else if (isinf(v)) {
    snprintf(buf, cap, v > 0 ? "+Inf" : "-Inf");
  } else if (v == floor(v) && fabs(v) < 1e15) {
    snprintf(buf, cap, "%.0f", v);
  } else {
    /* the shortest of %.15g..%.17g that reads back as the same double */
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(buf, cap, "%.*g", prec, v);
      if (strtod(buf, NULL) == v)
        break;
    }
  }
  return buf;
}

static struct series *lookup(metrics_family *f, const char *const *values, int create);

/* ---- registry ---- */

int metrics_registry_create(metrics_registry **out) {
  metrics_registry *r = sm_calloc(1, sizeof(*r));
  if (r == NULL)
    return SM_ENOMEM;
  static const char *const lab[] = {"family"};
  metrics_desc d = {
      .type = METRICS_COUNTER,
      .name = "metrics_series_dropped_total",
      .help = "Updates folded into the \"other\" series because a family reached its series limit.",
      .labels = lab,
      .nlabels = 1,
      .max_series = METRICS_MAX_FAMILIES,
  };
  int err = metrics_register(r, &d, &r->dropped);
  if (err) {
    metrics_registry_destroy(r);
    return err;
  }
  *out = r;
  return 0;
}

static void series_free(series *s) {
  if (s == NULL)
    return;
  for (size_t i = 0; i < METRICS_MAX_LABELS; i++)
    free(s->values[i]);
  free(s->key);
  free(s->buckets);
  free(s->window);
  free(s);
}

static void family_free(metrics_family *f) {
  if (f == NULL)
    return;
  for (size_t i = 0; i < f->nseries; i++)
    series_free(f->series[i]);
  free(f->series);
  sm_map_finish(&f->index);
  for (size_t i = 0; i < f->nlabels; i++)
    free(f->labels[i]);
  free(f->name);
  free(f->help);
  free(f);
}

void metrics_registry_destroy(metrics_registry *r) {
  if (r == NULL)
    return;
  for (size_t i = 0; i < r->nfam; i++)
    family_free(r->fam[i]);
  free(r);
}

metrics_family *metrics_find(const metrics_registry *r, const char *name) {
  for (size_t i = 0; i < r->nfam; i++)
    if (strcmp(r->fam[i]->name, name) == 0)
      return r->fam[i];
  return NULL;
}

int metrics_register(metrics_registry *r, const metrics_desc *d, metrics_family **out) {
  if (d == NULL || !valid_name(d->name, 1) || d->nlabels > METRICS_MAX_LABELS ||
      (d->nlabels && d->labels == NULL) || d->nbuckets > METRICS_MAX_BUCKETS ||
      d->type > METRICS_SUMMARY)
    return SM_EINVAL;
  for (size_t i = 0; i < d->nlabels; i++) {
    const char *l = d->labels[i];
    if (!valid_name(l, 0) || strncmp(l, "__", 2) == 0 || strcmp(l, "le") == 0 ||
        strcmp(l, "quantile") == 0)
      return SM_EINVAL;
  }
  const double *b = d->buckets ? d->buckets : default_buckets;
  size_t nb = d->buckets ? d->nbuckets : sizeof(default_buckets) / sizeof(default_buckets[0]);
  if (d->type == METRICS_HISTOGRAM) {
    for (size_t i = 0; i < nb; i++)
      if (!isfinite(b[i]) || (i > 0 && b[i] <= b[i - 1]))
        return SM_EINVAL;
  }
  if (metrics_find(r, d->name))
    return SM_EEXIST;
  if (r->nfam >= METRICS_MAX_FAMILIES)
    return SM_ELIMIT;
  metrics_family *f = sm_calloc(1, sizeof(*f));
  if (f == NULL)
    return SM_ENOMEM;
  f->reg = r;
  f->type = d->type;
  f->name = sm_strdup(d->name);
  f->help = sm_strdup(d->help ? d->help : "");
  f->nlabels = d->nlabels;
  int bad = f->name == NULL || f->help == NULL;
  for (size_t i = 0; i < d->nlabels; i++) {
    f->labels[i] = sm_strdup(d->labels[i]);
    bad |= f->labels[i] == NULL;
  }
  if (bad) {
    family_free(f);
    return SM_ENOMEM;
  }
  f->max_series = d->max_series ? d->max_series : METRICS_DEFAULT_MAX_SERIES;
  if (d->type == METRICS_HISTOGRAM) {
    memcpy(f->buckets, b, nb * sizeof(double));
    f->nbuckets = nb;
  }
  sm_map_init(&f->index, 0);
  /* a family without labels has its one series from the start, so it is never absent */
  if (f->nlabels == 0 && lookup(f, NULL, 1) == NULL) {
    family_free(f);
    return SM_ENOMEM;
  }
  r->fam[r->nfam++] = f;
  if (out)
    *out = f;
  return 0;
}

int metrics_on_collect(metrics_registry *r, void (*fn)(void *ud, metrics_registry *r), void *ud) {
  if (r->nhooks >= METRICS_MAX_HOOKS)
    return SM_ELIMIT;
  r->hooks[r->nhooks++] = (hook){fn, ud};
  return 0;
}

uint64_t metrics_dropped(const metrics_registry *r) {
  return r->ndropped;
}

size_t metrics_series_count(const metrics_family *f) {
  return f->nseries;
}

/* ---- series lookup ---- */

/* The map key of a label set: each value as "<len>:<bytes>", so no value can fake another. */
static char *make_key(char vals[][METRICS_LABEL_VALUE_MAX + 1], size_t n, size_t *klen) {
  size_t total = 1;
  for (size_t i = 0; i < n; i++)
    total += strlen(vals[i]) + 8;
  char *k = sm_malloc(total);
  if (k == NULL)
    return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i++)
    o += (size_t)snprintf(k + o, total - o, "%zu:%s", strlen(vals[i]), vals[i]);
  *klen = o;
  return k;
}

static series *series_new(metrics_family *f, char vals[][METRICS_LABEL_VALUE_MAX + 1], char *key,
                          size_t klen) {
  series *s = sm_calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  s->key = key;
  s->klen = klen;
  int bad = 0;
  for (size_t i = 0; i < f->nlabels; i++) {
    s->values[i] = sm_strdup(vals[i]);
    bad |= s->values[i] == NULL;
  }
  if (f->type == METRICS_HISTOGRAM) {
    s->buckets = sm_calloc(f->nbuckets + 1, sizeof(uint64_t));
    bad |= s->buckets == NULL;
  } else if (f->type == METRICS_SUMMARY) {
    s->window = sm_calloc(METRICS_SUMMARY_WINDOW, sizeof(double));
    bad |= s->window == NULL;
  }
  if (!bad && f->nseries == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 8;
    series **np = sm_realloc(f->series, cap * sizeof(*np));
    if (np == NULL) {
      bad = 1;
    } else {
      f->series = np;
      f->cap = cap;
    }
  }
  if (!bad && sm_map_put(&f->index, s->key, s->klen, s) != 0)
    bad = 1;
  if (bad) {
    s->key = NULL; /* the caller frees the key */
    series_free(s);
    return NULL;
  }
  f->series[f->nseries++] = s;
  return s;
}

/* The series of values, created when new; past max_series the "other" series. NULL when out of
 * memory. */
static series *lookup(metrics_family *f, const char *const *values, int create) {
  char vals[METRICS_MAX_LABELS][METRICS_LABEL_VALUE_MAX + 1];
  for (size_t i = 0; i < f->nlabels; i++)
    sanitize(values ? values[i] : NULL, vals[i]);
  size_t klen = 0;
  char *key = make_key(vals, f->nlabels, &klen);
  if (key == NULL)
    return NULL;
  series *s = sm_map_get(&f->index, key, klen);
  if (s || !create) {
    free(key);
    return s;
  }
  size_t regular = f->nseries - (f->other ? 1 : 0);
  if (regular >= f->max_series) {
    free(key);
    metrics_registry *r = f->reg;
    r->ndropped++;
    if (f != r->dropped) {
      const char *fam[] = {f->name};
      metrics_counter_add(r->dropped, fam, 1);
    }
    if (f->other == NULL) {
      for (size_t i = 0; i < f->nlabels; i++)
        snprintf(vals[i], sizeof(vals[i]), "%s", METRICS_OTHER);
      key = make_key(vals, f->nlabels, &klen);
      if (key == NULL)
        return NULL;
      s = sm_map_get(&f->index, key, klen); /* a real "other" label set already exists */
      if (s) {
        free(key);
      } else {
        s = series_new(f, vals, key, klen);
        if (s == NULL)
          free(key);
      }
      f->other = s;
    }
    return f->other;
  }
  s = series_new(f, vals, key, klen);
  if (s == NULL)
    free(key);
  return s;
}

/* ---- updates ---- */

int metrics_counter_add(metrics_family *f, const char *const *values, double v) {
  if (f->type != METRICS_COUNTER || !(v >= 0))
    return SM_EINVAL;
  series *s = lookup(f, values, 1);
  if (s == NULL)
    return SM_ENOMEM;
  s->value += v;
  return 0;
}

int metrics_counter_set(metrics_family *f, const char *const *values, double v) {
  if (f->type != METRICS_COUNTER || !(v >= 0))
    return SM_EINVAL;
  series *s = lookup(f, values, 1);
  if (s == NULL)
    return SM_ENOMEM;
  if (v > s->value)
    s->value = v;
  return 0;
}

int metrics_gauge_set(metrics_family *f, const char *const *values, double v) {
  if (f->type != METRICS_GAUGE)
    return SM_EINVAL;
  series *s = lookup(f, values, 1);
  if (s == NULL)
    return SM_ENOMEM;
  s->value = v;
  return 0;
}

int metrics_gauge_add(metrics_family *f, const char *const *values, double v) {
  if (f->type != METRICS_GAUGE)
    return SM_EINVAL;
  series *s = lookup(f, values, 1);
  if (s == NULL)
    return SM_ENOMEM;
  s->value += v;
  return 0;
}

int metrics_observe(metrics_family *f, const char *const *values, double v) {
  if ((f->type != METRICS_HISTOGRAM && f->type != METRICS_SUMMARY) || isnan(v))
    return SM_EINVAL;
  series *s = lookup(f, values, 1);
  if (s == NULL)
    return SM_ENOMEM;
  s->value += v;
  s->count++;
  if (f->type == METRICS_HISTOGRAM) {
    size_t i = 0;
    while (i < f->nbuckets && v > f->buckets[i])
      i++;
    s->buckets[i]++;
  } else {
    s->window[s->wpos] = v;
    s->wpos = (s->wpos + 1) % METRICS_SUMMARY_WINDOW;
    if (s->wlen < METRICS_SUMMARY_WINDOW)
      s->wlen++;
  }
  return 0;
}

int metrics_value(const metrics_family *f, const char *const *values, double *v, uint64_t *count) {
  series *s = lookup((metrics_family *)f, values, 0);
  if (s == NULL)
    return SM_ENOENT;
  if (v)
    *v = s->value;
  if (count)
    *count = (f->type == METRICS_HISTOGRAM || f->type == METRICS_SUMMARY) ? s->count : 1;
  return 0;
}

/* ---- rendering ---- */

static void run_hooks(metrics_registry *r) {
  for (size_t i = 0; i < r->nhooks; i++)
    r->hooks[i].fn(r->hooks[i].ud, r);
}

static int cmp_family(const void *a, const void *b) {
  const metrics_family *x = *(metrics_family *const *)a, *y = *(metrics_family *const *)b;
  return strcmp(x->name, y->name);
}

/* HELP text escapes backslash and newline; label values also the double quote. */
static void put_escaped(obuf *b, const char *s, int quote) {
  for (; *s; s++) {
    if (*s == '\\')
      ob_put(b, "\\\\", 2);
    else if (*s == '\n')
      ob_put(b, "\\n", 2);
    else if (quote && *s == '"')
      ob_put(b, "\\\"", 2);
    else
      ob_put(b, s, 1);
  }
}

/* name{labels,extra="value"} value */
static void put_sample(obuf *b, const metrics_family *f, const series *s, const char *suffix,
                       const char *extra, const char *extra_val, double v) {
  char num[40];
  ob_str(b, f->name);
  ob_str(b, suffix);
  if (f->nlabels || extra) {
    ob_put(b, "{", 1);
    for (size_t i = 0; i < f->nlabels; i++) {
      if (i)
        ob_put(b, ",", 1);
      ob_str(b, f->labels[i]);
      ob_put(b, "=\"", 2);
      put_escaped(b, s->values[i], 1);
      ob_put(b, "\"", 1);
    }
    if (extra) {
      if (f->nlabels)
        ob_put(b, ",", 1);
      ob_str(b, extra);
      ob_put(b, "=\"", 2);
      ob_str(b, extra_val);
      ob_put(b, "\"", 1);
    }
    ob_put(b, "}", 1);
  }
  ob_put(b, " ", 1);
  ob_str(b, metrics_format_double(v, num, sizeof(num)));
  ob_put(b, "\n", 1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Quantile q of the window (nearest rank); NaN when empty. tmp holds wlen doubles. */
static double quantile(const series *s, double *tmp, double q) {
  if (s->wlen == 0)
    return NAN;
  size_t rank = (size_t)ceil(q * (double)s->wlen);
  if (rank > 0)
    rank--;
  if (rank >= s->wlen)
    rank = s->wlen - 1;
  return tmp[rank];
}

static const char *type_name(metrics_type t) {
  static const char *const names[] = {"counter", "gauge", "histogram", "summary"};
  return names[t];
}

static void render_family(obuf *b, const metrics_family *f, double *tmp) {
  char num[40];
  ob_str(b, "# HELP ");
  ob_str(b, f->name);
  ob_put(b, " ", 1);
  put_escaped(b, f->help, 0);
  ob_str(b, "\n# TYPE ");
  ob_str(b, f->name);
  ob_put(b, " ", 1);
  ob_str(b, type_name(f->type));
  ob_put(b, "\n", 1);
  for (size_t i = 0; i < f->nseries; i++) {
    const series *s = f->series[i];
    switch (f->type) {
    case METRICS_COUNTER:
    case METRICS_GAUGE:
      put_sample(b, f, s, "", NULL, NULL, s->value);
      break;
    case METRICS_HISTOGRAM: {
      uint64_t cum = 0;
      for (size_t k = 0; k < f->nbuckets; k++) {
        cum += s->buckets[k];
        put_sample(b, f, s, "_bucket", "le", metrics_format_double(f->buckets[k], num, sizeof(num)),
                   (double)cum);
      }
      cum += s->buckets[f->nbuckets];
      put_sample(b, f, s, "_bucket", "le", "+Inf", (double)cum);
      put_sample(b, f, s, "_sum", NULL, NULL, s->value);
      put_sample(b, f, s, "_count", NULL, NULL, (double)s->count);
      break;
    }
    case METRICS_SUMMARY:
      memcpy(tmp, s->window, s->wlen * sizeof(double));
      qsort(tmp, s->wlen, sizeof(double), cmp_double);
      for (size_t k = 0; k < NQUANTILES; k++)
        put_sample(b, f, s, "", "quantile",
                   metrics_format_double(summary_quantiles[k], num, sizeof(num)),
                   quantile(s, tmp, summary_quantiles[k]));
      put_sample(b, f, s, "_sum", NULL, NULL, s->value);
      put_sample(b, f, s, "_count", NULL, NULL, (double)s->count);
      break;
    }
  }
}

int metrics_collect_text(metrics_registry *r, char **out, size_t *len) {
  run_hooks(r);
  metrics_family *sorted[METRICS_MAX_FAMILIES];
  memcpy(sorted, r->fam, r->nfam * sizeof(*sorted));
  qsort(sorted, r->nfam, sizeof(*sorted), cmp_family);
  double *tmp = sm_malloc(METRICS_SUMMARY_WINDOW * sizeof(double));
  obuf b = {0};
  if (tmp == NULL)
    b.failed = 1;
  ob_grow(&b, 1);
  for (size_t i = 0; i < r->nfam && !b.failed; i++)
    render_family(&b, sorted[i], tmp);
  free(tmp);
  if (b.failed) {
    free(b.p);
    return SM_ENOMEM;
  }
  b.p[b.len] = '\0';
  *out = b.p;
  *len = b.len;
  return 0;
}

int metrics_collect_json(metrics_registry *r, char **out, size_t *len) {
  run_hooks(r);
  metrics_family *sorted[METRICS_MAX_FAMILIES];
  memcpy(sorted, r->fam, r->nfam * sizeof(*sorted));
  qsort(sorted, r->nfam, sizeof(*sorted), cmp_family);
  cJSON *root = cJSON_CreateObject();
  int bad = root == NULL;
  for (size_t i = 0; i < r->nfam && !bad; i++) {
    const metrics_family *f = sorted[i];
    cJSON *fo = cJSON_AddObjectToObject(root, f->name);
    cJSON *arr = NULL;
    if (fo == NULL || !cJSON_AddStringToObject(fo, "type", type_name(f->type)) ||
        !cJSON_AddStringToObject(fo, "help", f->help) ||
        (arr = cJSON_AddArrayToObject(fo, "series")) == NULL) {
      bad = 1;
      break;
    }
    for (size_t k = 0; k < f->nseries && !bad; k++) {
      const series *s = f->series[k];
      cJSON *so = cJSON_CreateObject();
      cJSON *lo = so ? cJSON_AddObjectToObject(so, "labels") : NULL;
      bad = lo == NULL;
      for (size_t l = 0; l < f->nlabels && !bad; l++)
        bad = cJSON_AddStringToObject(lo, f->labels[l], s->values[l]) == NULL;
      if (!bad && (f->type == METRICS_COUNTER || f->type == METRICS_GAUGE))
        bad = cJSON_AddNumberToObject(so, "value", s->value) == NULL;
      else if (!bad)
        bad = cJSON_AddNumberToObject(so, "count", (double)s->count) == NULL ||
              cJSON_AddNumberToObject(so, "sum", s->value) == NULL;
      if (so)
        cJSON_AddItemToArray(arr, so);
    }
  }
  char *text = bad ? NULL : cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (text == NULL)
    return SM_ENOMEM;
  *out = text;
  *len = strlen(text);
  return 0;
}
