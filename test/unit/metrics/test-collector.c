/* test-collector.c - the metrics collector: updates, the series limit, and the text format
 * (escaping, order, histogram buckets, summaries). */
#include "metrics/collector.h"
#include "t.h"
#include "util/err.h"

#include <math.h>

static metrics_registry *reg_new(void) {
  metrics_registry *r = NULL;
  T_EQ_INT(metrics_registry_create(&r), 0);
  return r;
}

static char *text_of(metrics_registry *r) {
  char *out = NULL;
  size_t len = 0;
  T_EQ_INT(metrics_collect_text(r, &out, &len), 0);
  T_EQ_INT(strlen(out), len);
  return out;
}

static metrics_family *fam(metrics_registry *r, metrics_type type, const char *name,
                           const char *const *labels, size_t n, size_t max_series) {
  metrics_desc d = {.type = type,
                    .name = name,
                    .help = "help",
                    .labels = labels,
                    .nlabels = n,
                    .max_series = max_series};
  metrics_family *f = NULL;
  T_EQ_INT(metrics_register(r, &d, &f), 0);
  return f;
}

static void test_counter_gauge(void) {
  metrics_registry *r = reg_new();
  static const char *const lab[] = {"type"};
  metrics_family *c = fam(r, METRICS_COUNTER, "x_total", lab, 1, 0);
  metrics_family *g = fam(r, METRICS_GAUGE, "g", NULL, 0, 0);
  const char *scan[] = {"scan"};
  T_EQ_INT(metrics_counter_add(c, scan, 1), 0);
  T_EQ_INT(metrics_counter_add(c, scan, 2), 0);
  T_EQ_INT(metrics_counter_add(c, scan, -1), SM_EINVAL);
  T_EQ_INT(metrics_gauge_set(c, scan, 1), SM_EINVAL);
  double v = 0;
  T_EQ_INT(metrics_value(c, scan, &v, NULL), 0);
  T_ASSERT(v == 3);
  /* counter_set never goes down */
  T_EQ_INT(metrics_counter_set(c, scan, 2), 0);
  T_EQ_INT(metrics_value(c, scan, &v, NULL), 0);
  T_ASSERT(v == 3);
  T_EQ_INT(metrics_counter_set(c, scan, 10), 0);
  T_EQ_INT(metrics_value(c, scan, &v, NULL), 0);
  T_ASSERT(v == 10);
  /* label-less families exist from registration */
  T_EQ_INT(metrics_value(g, NULL, &v, NULL), 0);
  T_ASSERT(v == 0);
  T_EQ_INT(metrics_gauge_set(g, NULL, 5), 0);
  T_EQ_INT(metrics_gauge_add(g, NULL, -7.5), 0);
  T_EQ_INT(metrics_value(g, NULL, &v, NULL), 0);
  T_ASSERT(v == -2.5);
  const char *other[] = {"nope"};
  T_EQ_INT(metrics_value(c, other, &v, NULL), SM_ENOENT);
  metrics_registry_destroy(r);
}

static void test_register_checks(void) {
  metrics_registry *r = reg_new();
  static const char *const bad1[] = {"le"};
  static const char *const bad2[] = {"__x"};
  static const char *const bad3[] = {"a-b"};
  metrics_desc d = {.type = METRICS_COUNTER, .name = "1abc", .help = "h"};
  T_EQ_INT(metrics_register(r, &d, NULL), SM_EINVAL);
  d.name = "ok:name_1";
  T_EQ_INT(metrics_register(r, &d, NULL), 0);
  T_EQ_INT(metrics_register(r, &d, NULL), SM_EEXIST);
  d.name = "l1";
  d.labels = bad1;
  d.nlabels = 1;
  T_EQ_INT(metrics_register(r, &d, NULL), SM_EINVAL);
  d.labels = bad2;
  T_EQ_INT(metrics_register(r, &d, NULL), SM_EINVAL);
  d.labels = bad3;
  T_EQ_INT(metrics_register(r, &d, NULL), SM_EINVAL);
  static const double unsorted[] = {1, 0.5};
  metrics_desc h = {.type = METRICS_HISTOGRAM, .name = "h", .buckets = unsorted, .nbuckets = 2};
  T_EQ_INT(metrics_register(r, &h, NULL), SM_EINVAL);
  static const double inf[] = {1, INFINITY};
  h.buckets = inf;
  T_EQ_INT(metrics_register(r, &h, NULL), SM_EINVAL);
  /* the family table is bounded */
  int err = 0;
  char name[32];
  for (int i = 0; i < METRICS_MAX_FAMILIES + 1 && err == 0; i++) {
    snprintf(name, sizeof(name), "f%d", i);
    metrics_desc x = {.type = METRICS_GAUGE, .name = name, .help = ""};
    err = metrics_register(r, &x, NULL);
  }
  T_EQ_INT(err, SM_ELIMIT);
  metrics_registry_destroy(r);
}

static void test_series_limit(void) {
  metrics_registry *r = reg_new();
  static const char *const lab[] = {"agent", "status"};
  metrics_family *f = fam(r, METRICS_COUNTER, "per_agent_total", lab, 2, 3);
  char id[16];
  for (int i = 0; i < 10; i++) {
    snprintf(id, sizeof(id), "a%d", i);
    const char *v[] = {id, "completed"};
    T_EQ_INT(metrics_counter_add(f, v, 1), 0);
  }
  /* three real series and one "other" holding the seven that did not fit */
  T_EQ_INT(metrics_series_count(f), 4);
  T_EQ_INT(metrics_dropped(r), 7);
  const char *o[] = {"other", "other"};
  double v = 0;
  T_EQ_INT(metrics_value(f, o, &v, NULL), 0);
  T_ASSERT(v == 7);
  /* existing series still count normally */
  const char *a0[] = {"a0", "completed"};
  T_EQ_INT(metrics_counter_add(f, a0, 1), 0);
  T_EQ_INT(metrics_value(f, a0, &v, NULL), 0);
  T_ASSERT(v == 2);
  T_EQ_INT(metrics_dropped(r), 7);
  char *t = text_of(r);
  T_ASSERT(strstr(t, "per_agent_total{agent=\"other\",status=\"other\"} 7\n") != NULL);
  T_ASSERT(strstr(t, "metrics_series_dropped_total{family=\"per_agent_total\"} 7\n") != NULL);
  T_ASSERT(strstr(t, "a3") == NULL);
  free(t);
  metrics_registry_destroy(r);
}

static void test_escaping(void) {
  metrics_registry *r = reg_new();
  static const char *const lab[] = {"v"};
  metrics_desc d = {.type = METRICS_GAUGE,
                    .name = "esc",
                    .help = "back\\slash and\nnewline \"quoted\"",
                    .labels = lab,
                    .nlabels = 1};
  metrics_family *f = NULL;
  T_EQ_INT(metrics_register(r, &d, &f), 0);
  const char *v[] = {"a\\b\"c\nd"};
  T_EQ_INT(metrics_gauge_set(f, v, 1), 0);
  const char *bad_utf8[] = {"x\xff\xfey"};
  T_EQ_INT(metrics_gauge_set(f, bad_utf8, 2), 0);
  char longv[METRICS_LABEL_VALUE_MAX * 2 + 1];
  memset(longv, 'z', sizeof(longv) - 1);
  longv[sizeof(longv) - 1] = '\0';
  const char *lv[] = {longv};
  T_EQ_INT(metrics_gauge_set(f, lv, 3), 0);
  char *t = text_of(r);
  T_ASSERT(strstr(t, "# HELP esc back\\\\slash and\\nnewline \"quoted\"\n") != NULL);
  T_ASSERT(strstr(t, "esc{v=\"a\\\\b\\\"c\\nd\"} 1\n") != NULL);
  T_ASSERT(strstr(t, "esc{v=\"x??y\"} 2\n") != NULL);
  char expect[METRICS_LABEL_VALUE_MAX + 32];
  snprintf(expect, sizeof(expect), "esc{v=\"%.*s\"} 3\n", METRICS_LABEL_VALUE_MAX, longv);
  T_ASSERT(strstr(t, expect) != NULL);
  free(t);
  metrics_registry_destroy(r);
}

static void test_order(void) {
  metrics_registry *r = reg_new();
  static const char *const lab[] = {"k"};
  metrics_family *z = fam(r, METRICS_GAUGE, "zeta", lab, 1, 0);
  fam(r, METRICS_GAUGE, "alpha", NULL, 0, 0);
  const char *b[] = {"b"}, *a[] = {"a"};
  metrics_gauge_set(z, b, 1);
  metrics_gauge_set(z, a, 2);
  char *t = text_of(r);
  char *pa = strstr(t, "# HELP alpha"), *pm = strstr(t, "# HELP metrics_series_dropped_total"),
       *pz = strstr(t, "# HELP zeta");
  T_ASSERT(pa && pm && pz && pa < pm && pm < pz);
  /* series in insertion order */
  T_ASSERT(strstr(t, "zeta{k=\"b\"} 1\nzeta{k=\"a\"} 2\n") != NULL);
  /* every HELP is followed by its TYPE */
  T_ASSERT(strstr(t, "# HELP alpha help\n# TYPE alpha gauge\nalpha 0\n") != NULL);
  /* rendering twice gives the same text */
  char *t2 = text_of(r);
  T_EQ_STR(t, t2);
  free(t);
  free(t2);
  metrics_registry_destroy(r);
}

static void test_histogram(void) {
  metrics_registry *r = reg_new();
  static const char *const lab[] = {"type"};
  static const double bk[] = {0.1, 1, 2.5};
  metrics_desc d = {.type = METRICS_HISTOGRAM,
                    .name = "lat_seconds",
                    .help = "h",
                    .labels = lab,
                    .nlabels = 1,
                    .buckets = bk,
                    .nbuckets = 3};
  metrics_family *f = NULL;
  T_EQ_INT(metrics_register(r, &d, &f), 0);
  const char *v[] = {"scan"};
  T_EQ_INT(metrics_observe(f, v, 0.05), 0);
  T_EQ_INT(metrics_observe(f, v, 0.1), 0); /* le is inclusive */
  T_EQ_INT(metrics_observe(f, v, 2), 0);
  T_EQ_INT(metrics_observe(f, v, 100), 0);
  T_EQ_INT(metrics_observe(f, v, NAN), SM_EINVAL);
  T_EQ_INT(metrics_counter_add(f, v, 1), SM_EINVAL);
  char *t = text_of(r);
  T_ASSERT(strstr(t, "# TYPE lat_seconds histogram\n"
                     "lat_seconds_bucket{type=\"scan\",le=\"0.1\"} 2\n"
                     "lat_seconds_bucket{type=\"scan\",le=\"1\"} 2\n"
                     "lat_seconds_bucket{type=\"scan\",le=\"2.5\"} 3\n"
                     "lat_seconds_bucket{type=\"scan\",le=\"+Inf\"} 4\n"
                     "lat_seconds_sum{type=\"scan\"} 102.15\n"
                     "lat_seconds_count{type=\"scan\"} 4\n") != NULL);
  free(t);
  uint64_t n = 0;
  double sum = 0;
  T_EQ_INT(metrics_value(f, v, &sum, &n), 0);
  T_EQ_INT(n, 4);
  metrics_registry_destroy(r);
}

static void test_summary(void) {
  metrics_registry *r = reg_new();
  metrics_family *f = fam(r, METRICS_SUMMARY, "wait_seconds", NULL, 0, 0);
  char *t = text_of(r);
  T_ASSERT(strstr(t, "wait_seconds{quantile=\"0.5\"} NaN\n") != NULL);
  T_ASSERT(strstr(t, "wait_seconds_count 0\n") != NULL);
  free(t);
  /* more than the window: only the last METRICS_SUMMARY_WINDOW observations count */
  for (int i = 1; i <= METRICS_SUMMARY_WINDOW + 100; i++)
    T_EQ_INT(metrics_observe(f, NULL, i <= 100 ? 1e9 : (double)(i - 100)), 0);
  t = text_of(r);
  char expect[96];
  snprintf(expect, sizeof(expect), "wait_seconds{quantile=\"0.5\"} %d\n",
           METRICS_SUMMARY_WINDOW / 2);
  T_ASSERT(strstr(t, expect) != NULL);
  snprintf(expect, sizeof(expect), "wait_seconds_count %d\n", METRICS_SUMMARY_WINDOW + 100);
  T_ASSERT(strstr(t, expect) != NULL);
  T_ASSERT(strstr(t, "wait_seconds{quantile=\"0.99\"} 1014\n") != NULL);
  free(t);
  metrics_registry_destroy(r);
}

static int hook_calls;
static void hook(void *ud, metrics_registry *r) {
  (void)r;
  hook_calls++;
  metrics_gauge_set(ud, NULL, hook_calls);
}

static void test_hooks_json(void) {
  metrics_registry *r = reg_new();
  metrics_family *g = fam(r, METRICS_GAUGE, "pulled", NULL, 0, 0);
  T_EQ_INT(metrics_on_collect(r, hook, g), 0);
  char *t = text_of(r);
  T_ASSERT(strstr(t, "pulled 1\n") != NULL);
  free(t);
  char *j = NULL;
  size_t len = 0;
  T_EQ_INT(metrics_collect_json(r, &j, &len), 0);
  T_ASSERT(strstr(j, "\"pulled\":{\"type\":\"gauge\",\"help\":\"help\",\"series\":[{\"labels\":{},"
                     "\"value\":2}]}") != NULL);
  free(j);
  metrics_registry_destroy(r);
}

static void test_format_double(void) {
  char b[40];
  T_EQ_STR(metrics_format_double(0.005, b, sizeof(b)), "0.005");
  T_EQ_STR(metrics_format_double(3, b, sizeof(b)), "3");
  T_EQ_STR(metrics_format_double(-2.5, b, sizeof(b)), "-2.5");
  T_EQ_STR(metrics_format_double(INFINITY, b, sizeof(b)), "+Inf");
  T_EQ_STR(metrics_format_double(-INFINITY, b, sizeof(b)), "-Inf");
  T_EQ_STR(metrics_format_double(NAN, b, sizeof(b)), "NaN");
  T_EQ_STR(metrics_format_double(0.1 + 0.2, b, sizeof(b)), "0.30000000000000004");
}

int main(void) {
  T_RUN(test_counter_gauge);
  T_RUN(test_register_checks);
  T_RUN(test_series_limit);
  T_RUN(test_escaping);
  T_RUN(test_order);
  T_RUN(test_histogram);
  T_RUN(test_summary);
  T_RUN(test_hooks_json);
  T_RUN(test_format_double);
  return t_done();
}
