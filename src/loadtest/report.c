/* report.c - report figures and their three formats. JSON goes through cJSON; text and CSV are
 * printed directly. CSV is one header line and one row, so runs can be appended and compared. */
#include "loadtest/report.h"

#include "util/err.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

void lt_count_add(lt_count *arr, size_t *n, size_t max, const char *name, uint64_t add) {
  for (size_t i = 0; i < *n; i++)
    if (strcmp(arr[i].name, name) == 0) {
      arr[i].n += add;
      return;
    }
  if (*n == max)
    return;
  snprintf(arr[*n].name, sizeof(arr[*n].name), "%s", name);
  arr[*n].n = add;
  (*n)++;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples. */
static double pct(const double *v, uint64_t n, double p) {
  uint64_t rank = (uint64_t)(p / 100.0 * (double)n + 0.999999);
  if (rank < 1)
    rank = 1;
  if (rank > n)
    rank = n;
  return v[rank - 1];
}

void lt_latency_compute(double *ms, uint64_t n, lt_latency *out) {
  memset(out, 0, sizeof(*out));
  out->n = n;
  if (n == 0)
    return;
  qsort(ms, n, sizeof(*ms), cmp_double);
  double sum = 0;
  for (uint64_t i = 0; i < n; i++)
    sum += ms[i];
  out->avg = sum / (double)n;
  out->min = ms[0];
  out->max = ms[n - 1];
  out->p50 = pct(ms, n, 50);
  out->p95 = pct(ms, n, 95);
  out->p99 = pct(ms, n, 99);
}

static double share(uint64_t part, uint64_t whole) {
  return whole ? 100.0 * (double)part / (double)whole : 0.0;
}

static void write_text(FILE *f, const lt_report *r) {
  fprintf(f, "sirius-loadtest report (submit=%s)\n", r->submit);
  fprintf(f, "  commands      total=%llu successful=%llu (%.2f%%) failed=%llu (%.2f%%)\n",
          (unsigned long long)r->total, (unsigned long long)r->successful,
          share(r->successful, r->total), (unsigned long long)r->failed,
          share(r->failed, r->total));
  fprintf(f, "  not final     %llu%s\n", (unsigned long long)r->not_final,
          r->not_final ? "  <-- commands without a final status" : " (every command final)");
  for (size_t i = 0; i < r->nnot_final_ids; i++)
    fprintf(f, "                %s\n", r->not_final_ids[i]);
  if (r->unsubmitted)
    fprintf(f, "  unsubmitted   %llu\n", (unsigned long long)r->unsubmitted);
  fprintf(f, "  by status    ");
  for (size_t i = 0; i < r->nby_status; i++)
    fprintf(f, " %s=%llu", r->by_status[i].name, (unsigned long long)r->by_status[i].n);
  fprintf(f, "\n");
  fprintf(f,
          "  latency ms    avg=%.1f p50=%.1f p95=%.1f p99=%.1f max=%.1f (submit to final "
          "result)\n",
          r->latency.avg, r->latency.p50, r->latency.p95, r->latency.p99, r->latency.max);
  fprintf(f, "  throughput    %.1f commands/s over %.2f s\n", r->throughput, r->elapsed_s);
  fprintf(f, "  agents        %u in fleet, %u connected at start, %u at end, %u crashed\n",
          r->agents, r->agents_connected, r->agents_connected_end, r->crashed_agents);
  fprintf(f, "  errors       ");
  if (r->nerrors == 0)
    fprintf(f, " none");
  for (size_t i = 0; i < r->nerrors; i++)
    fprintf(f, " %s=%llu", r->errors[i].name, (unsigned long long)r->errors[i].n);
  fprintf(f, "\n");
  if (r->manager_ok) {
    fprintf(f, "  manager       ");
    for (size_t i = 0; i < r->nmanager; i++)
      fprintf(f, "%s%s=%llu", i ? " " : "", r->manager[i].name,
              (unsigned long long)r->manager[i].n);
    fprintf(f, "\n");
  } else {
    fprintf(f, "  manager       counters unavailable\n");
  }
}

static cJSON *counts_json(const lt_count *c, size_t n) {
  cJSON *o = cJSON_CreateObject();
  for (size_t i = 0; o && i < n; i++)
    cJSON_AddNumberToObject(o, c[i].name, (double)c[i].n);
  return o;
}

static int write_json(FILE *f, const lt_report *r) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return SM_ENOMEM;
  cJSON_AddStringToObject(o, "submit", r->submit);
  cJSON_AddNumberToObject(o, "planned", (double)r->planned);
  cJSON_AddNumberToObject(o, "total", (double)r->total);
  cJSON_AddNumberToObject(o, "successful", (double)r->successful);
  cJSON_AddNumberToObject(o, "successful_pct", share(r->successful, r->total));
  cJSON_AddNumberToObject(o, "failed", (double)r->failed);
  cJSON_AddNumberToObject(o, "failed_pct", share(r->failed, r->total));
  cJSON_AddNumberToObject(o, "not_final", (double)r->not_final);
  cJSON_AddBoolToObject(o, "all_final", r->not_final == 0);
  cJSON_AddNumberToObject(o, "unsubmitted", (double)r->unsubmitted);
  cJSON *ids = cJSON_AddArrayToObject(o, "not_final_ids");
  for (size_t i = 0; ids && i < r->nnot_final_ids; i++)
    cJSON_AddItemToArray(ids, cJSON_CreateString(r->not_final_ids[i]));
  cJSON_AddItemToObject(o, "by_status", counts_json(r->by_status, r->nby_status));
  cJSON *l = cJSON_AddObjectToObject(o, "latency_ms");
  if (l) {
    cJSON_AddNumberToObject(l, "count", (double)r->latency.n);
    cJSON_AddNumberToObject(l, "avg", r->latency.avg);
    cJSON_AddNumberToObject(l, "min", r->latency.min);
    cJSON_AddNumberToObject(l, "p50", r->latency.p50);
    cJSON_AddNumberToObject(l, "p95", r->latency.p95);
    cJSON_AddNumberToObject(l, "p99", r->latency.p99);
    cJSON_AddNumberToObject(l, "max", r->latency.max);
  }
  cJSON_AddNumberToObject(o, "elapsed_seconds", r->elapsed_s);
  cJSON_AddNumberToObject(o, "throughput", r->throughput);
  cJSON *a = cJSON_AddObjectToObject(o, "agents");
  if (a) {
    cJSON_AddNumberToObject(a, "fleet", r->agents);
    cJSON_AddNumberToObject(a, "connected", r->agents_connected);
    cJSON_AddNumberToObject(a, "connected_end", r->agents_connected_end);
    cJSON_AddNumberToObject(a, "crashed", r->crashed_agents);
  }
  cJSON_AddItemToObject(o, "errors", counts_json(r->errors, r->nerrors));
  if (r->manager_ok)
    cJSON_AddItemToObject(o, "manager", counts_json(r->manager, r->nmanager));
  else
    cJSON_AddNullToObject(o, "manager");
  char *txt = cJSON_Print(o);
  cJSON_Delete(o);
  if (txt == NULL)
    return SM_ENOMEM;
  fprintf(f, "%s\n", txt);
  free(txt);
  return 0;
}

static void write_csv(FILE *f, const lt_report *r) {
  fprintf(f, "submit,total,successful,successful_pct,failed,failed_pct,not_final,unsubmitted,"
             "latency_avg_ms,latency_p50_ms,latency_p95_ms,latency_p99_ms,latency_max_ms,"
             "elapsed_s,throughput,agents,agents_connected,agents_connected_end,crashed_agents");
  for (size_t i = 0; i < r->nby_status; i++)
    fprintf(f, ",status_%s", r->by_status[i].name);
  for (size_t i = 0; i < r->nerrors; i++)
    fprintf(f, ",error_%s", r->errors[i].name);
  for (size_t i = 0; r->manager_ok && i < r->nmanager; i++)
    fprintf(f, ",manager_%s", r->manager[i].name);
  fprintf(
      f, "\n%s,%llu,%llu,%.2f,%llu,%.2f,%llu,%llu,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.2f,%u,%u,%u,%u",
      r->submit, (unsigned long long)r->total, (unsigned long long)r->successful,
      share(r->successful, r->total), (unsigned long long)r->failed, share(r->failed, r->total),
      (unsigned long long)r->not_final, (unsigned long long)r->unsubmitted, r->latency.avg,
      r->latency.p50, r->latency.p95, r->latency.p99, r->latency.max, r->elapsed_s, r->throughput,
      r->agents, r->agents_connected, r->agents_connected_end, r->crashed_agents);
  for (size_t i = 0; i < r->nby_status; i++)
    fprintf(f, ",%llu", (unsigned long long)r->by_status[i].n);
  for (size_t i = 0; i < r->nerrors; i++)
    fprintf(f, ",%llu", (unsigned long long)r->errors[i].n);
  for (size_t i = 0; r->manager_ok && i < r->nmanager; i++)
    fprintf(f, ",%llu", (unsigned long long)r->manager[i].n);
  fprintf(f, "\n");
}

int lt_report_write(FILE *f, const lt_report *r, enum lt_format fmt) {
  int rc = 0;
  if (fmt == LT_FORMAT_JSON)
    rc = write_json(f, r);
  else if (fmt == LT_FORMAT_CSV)
    write_csv(f, r);
  else
    write_text(f, r);
  if (fflush(f) != 0 || ferror(f))
    return SM_EIO;
  return rc;
}
