/* report.c - report figures and their four formats. JSON goes through cJSON; text, CSV and HTML
 * are printed directly. CSV is one header line and one row, so runs can be appended and
 * compared; a chaos run adds an empty line and a table with one row per fault. HTML is one
 * self-contained page (inline CSS and SVG, no script). */
#include "loadtest/report.h"

#include "util/err.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
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

static void fmt_s(char *buf, size_t len, double v) {
  if (v < 0)
    snprintf(buf, len, "-");
  else
    snprintf(buf, len, "%.1f", v);
}

static void write_faults_text(FILE *f, const lt_report *r) {
  if (r->nfaults == 0)
    return;
  fprintf(f, "  faults        spike threshold %.0f ms (baseline p99 %.1f ms)\n",
          r->spike_threshold_ms, r->baseline_p99_ms);
  fprintf(f, "    %-3s %-12s %-16s %7s %7s %8s %8s %6s %6s %6s %6s %6s %9s\n", "#", "target",
          "action", "start_s", "end_s", "detect_s", "recov_s", "subm", "done", "failed", "retry",
          "errors", "max_ms");
  for (size_t i = 0; i < r->nfaults; i++) {
    const lt_fault_report *x = &r->faults[i];
    char st[16], en[16], de[16], re[16];
    fmt_s(st, sizeof(st), x->start_s);
    fmt_s(en, sizeof(en), x->end_s);
    fmt_s(de, sizeof(de), x->detect_s);
    fmt_s(re, sizeof(re), x->recover_s);
    fprintf(f, "    %-3zu %-12s %-16s %7s %7s %8s %8s %6llu %6llu %6llu %6llu %6llu %9.1f%s%s\n",
            i + 1, x->target, x->action, st, en, de, re, (unsigned long long)x->submitted,
            (unsigned long long)x->completed, (unsigned long long)x->failed,
            (unsigned long long)x->retried, (unsigned long long)x->errors, x->max_latency_ms,
            x->error[0] ? "  error: " : "", x->error);
  }
}

static void write_text(FILE *f, const lt_report *r) {
  fprintf(f, "sirius-loadtest report (submit=%s)\n", r->submit);
  if (r->fatal[0])
    fprintf(f, "  FAILED        %s\n", r->fatal);
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
  fprintf(f, "  no loss       %s (accepted=%llu not_final=%llu final_twice=%llu)\n",
          r->no_loss ? "PASS" : "FAIL", (unsigned long long)r->total,
          (unsigned long long)r->not_final, (unsigned long long)r->final_twice);
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
  write_faults_text(f, r);
}

static cJSON *counts_json(const lt_count *c, size_t n) {
  cJSON *o = cJSON_CreateObject();
  for (size_t i = 0; o && i < n; i++)
    cJSON_AddNumberToObject(o, c[i].name, (double)c[i].n);
  return o;
}

static void num_or_null(cJSON *o, const char *k, double v) {
  if (v < 0)
    cJSON_AddNullToObject(o, k);
  else
    cJSON_AddNumberToObject(o, k, v);
}

static int write_json(FILE *f, const lt_report *r) {
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return SM_ENOMEM;
  cJSON_AddStringToObject(o, "submit", r->submit);
  if (r->fatal[0])
    cJSON_AddStringToObject(o, "fatal", r->fatal);
  else
    cJSON_AddNullToObject(o, "fatal");
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
  cJSON *nl = cJSON_AddObjectToObject(o, "no_loss");
  if (nl) {
    cJSON_AddBoolToObject(nl, "pass", r->no_loss);
    cJSON_AddNumberToObject(nl, "accepted", (double)r->total);
    cJSON_AddNumberToObject(nl, "final", (double)(r->successful + r->failed));
    cJSON_AddNumberToObject(nl, "not_final", (double)r->not_final);
    cJSON_AddNumberToObject(nl, "final_twice", (double)r->final_twice);
  }
  cJSON_AddNumberToObject(o, "spike_threshold_ms", r->spike_threshold_ms);
  cJSON_AddNumberToObject(o, "baseline_p99_ms", r->baseline_p99_ms);
  cJSON *fa = cJSON_AddArrayToObject(o, "faults");
  for (size_t i = 0; fa && i < r->nfaults; i++) {
    const lt_fault_report *x = &r->faults[i];
    cJSON *e = cJSON_CreateObject();
    if (e == NULL)
      break;
    cJSON_AddStringToObject(e, "target", x->target);
    cJSON_AddStringToObject(e, "action", x->action);
    cJSON_AddNumberToObject(e, "at", x->at);
    cJSON_AddNumberToObject(e, "duration", x->duration);
    num_or_null(e, "start_s", x->start_s);
    num_or_null(e, "end_s", x->end_s);
    num_or_null(e, "time_to_detect_s", x->detect_s);
    num_or_null(e, "time_to_recover_s", x->recover_s);
    cJSON_AddNumberToObject(e, "submitted", (double)x->submitted);
    cJSON_AddNumberToObject(e, "completed", (double)x->completed);
    cJSON_AddNumberToObject(e, "failed", (double)x->failed);
    cJSON_AddNumberToObject(e, "retried", (double)x->retried);
    cJSON_AddNumberToObject(e, "errors", (double)x->errors);
    cJSON_AddNumberToObject(e, "max_latency_ms", x->max_latency_ms);
    cJSON_AddNumberToObject(e, "pid", x->pid);
    cJSON_AddNumberToObject(e, "restart_pid", x->restart_pid);
    if (x->error[0])
      cJSON_AddStringToObject(e, "error", x->error);
    else
      cJSON_AddNullToObject(e, "error");
    cJSON_AddItemToArray(fa, e);
  }
  cJSON *tl = cJSON_AddObjectToObject(o, "timeline");
  if (tl) {
    cJSON_AddNumberToObject(tl, "step_s", r->timeline_step_s);
    const char *cols[] = {"t",          "submitted_per_s", "ok_per_s", "failed_per_s",
                          "lat_avg_ms", "lat_max_ms",      "errors"};
    cJSON *c = cJSON_AddArrayToObject(tl, "columns");
    for (size_t k = 0; c && k < 7; k++)
      cJSON_AddItemToArray(c, cJSON_CreateString(cols[k]));
    cJSON *rows = cJSON_AddArrayToObject(tl, "rows");
    for (size_t i = 0; rows && i < r->ntimeline; i++) {
      const lt_tl_point *p = &r->timeline[i];
      double v[7] = {p->t,          p->submitted_per_s, p->ok_per_s,      p->failed_per_s,
                     p->lat_avg_ms, p->lat_max_ms,      (double)p->errors};
      cJSON_AddItemToArray(rows, cJSON_CreateDoubleArray(v, 7));
    }
  }
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
             "elapsed_s,throughput,agents,agents_connected,agents_connected_end,crashed_agents,"
             "no_loss,final_twice");
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
  fprintf(f, ",%s,%llu", r->no_loss ? "pass" : "fail", (unsigned long long)r->final_twice);
  for (size_t i = 0; i < r->nby_status; i++)
    fprintf(f, ",%llu", (unsigned long long)r->by_status[i].n);
  for (size_t i = 0; i < r->nerrors; i++)
    fprintf(f, ",%llu", (unsigned long long)r->errors[i].n);
  for (size_t i = 0; r->manager_ok && i < r->nmanager; i++)
    fprintf(f, ",%llu", (unsigned long long)r->manager[i].n);
  fprintf(f, "\n");
  if (r->nfaults == 0)
    return;
  fprintf(f, "\nfault,target,action,at,duration,start_s,end_s,time_to_detect_s,time_to_recover_s,"
             "submitted,completed,failed,retried,errors,max_latency_ms,error\n");
  for (size_t i = 0; i < r->nfaults; i++) {
    const lt_fault_report *x = &r->faults[i];
    char st[16], en[16], de[16], re[16];
    fmt_s(st, sizeof(st), x->start_s);
    fmt_s(en, sizeof(en), x->end_s);
    fmt_s(de, sizeof(de), x->detect_s);
    fmt_s(re, sizeof(re), x->recover_s);
    fprintf(f, "%zu,%s,%s,%g,%g,%s,%s,%s,%s,%llu,%llu,%llu,%llu,%llu,%.1f,\"", i + 1, x->target,
            x->action, x->at, x->duration, st, en, de, re, (unsigned long long)x->submitted,
            (unsigned long long)x->completed, (unsigned long long)x->failed,
            (unsigned long long)x->retried, (unsigned long long)x->errors, x->max_latency_ms);
    for (const char *p = x->error; *p; p++)
      fputs(*p == '"' ? "\"\"" : (char[]){*p, 0}, f);
    fprintf(f, "\"\n");
  }
}

/* ---- HTML ----------------------------------------------------------------------------------- */

static void html_esc(FILE *f, const char *s) {
  for (; *s; s++) {
    switch (*s) {
    case '<':
      fputs("&lt;", f);
      break;
    case '>':
      fputs("&gt;", f);
      break;
    case '&':
      fputs("&amp;", f);
      break;
    case '"':
      fputs("&quot;", f);
      break;
    default:
      fputc(*s, f);
    }
  }
}

static double tl_val(const lt_tl_point *p, int k) {
  switch (k) {
  case 0:
    return p->submitted_per_s;
  case 1:
    return p->ok_per_s;
  case 2:
    return p->failed_per_s;
  case 3:
    return p->lat_avg_ms;
  case 4:
    return p->lat_max_ms;
  default:
    return (double)p->errors;
  }
}

#define CH_W 960
#define CH_H 260
#define CH_L 60 /* left margin (axis labels) */
#define CH_B 30 /* bottom margin */

/* One chart of some timeline columns, with the fault windows shaded behind the lines. */
static void svg_chart(FILE *f, const lt_report *r, const char *title, const char *unit,
                      const int *cols, const char *const *names, const char *const *colors,
                      size_t ncols, double hline) {
  double tmax = r->ntimeline ? r->timeline[r->ntimeline - 1].t + r->timeline_step_s : 1;
  double vmax = hline > 0 ? hline * 1.1 : 0;
  for (size_t i = 0; i < r->ntimeline; i++)
    for (size_t c = 0; c < ncols; c++)
      if (tl_val(&r->timeline[i], cols[c]) > vmax)
        vmax = tl_val(&r->timeline[i], cols[c]);
  if (vmax <= 0)
    vmax = 1;
  double pw = CH_W - CH_L - 10, ph = CH_H - CH_B - 20;
#define X(t) (CH_L + (t) / tmax * pw)
#define Y(v) (20 + ph - (v) / vmax * ph)
  fprintf(f, "<h2>");
  html_esc(f, title);
  fprintf(f,
          "</h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
          "viewBox=\"0 0 %d %d\" role=\"img\">\n",
          CH_W, CH_H, CH_W, CH_H);
  fprintf(f,
          "<rect x=\"%d\" y=\"20\" width=\"%.0f\" height=\"%.0f\" fill=\"#fafafa\" "
          "stroke=\"#ccc\"/>\n",
          CH_L, pw, ph);
  for (size_t i = 0; i < r->nfaults; i++) {
    const lt_fault_report *x = &r->faults[i];
    if (x->start_s < 0)
      continue;
    double x0 = X(x->start_s), x1 = X(x->end_s > x->start_s ? x->end_s : x->start_s + 0.05);
    fprintf(f,
            "<rect class=\"fault\" x=\"%.1f\" y=\"20\" width=\"%.1f\" height=\"%.0f\" "
            "fill=\"#f4a261\" fill-opacity=\"0.25\"><title>",
            x0, x1 - x0 < 1 ? 1 : x1 - x0, ph);
    html_esc(f, x->action);
    fputs(" ", f);
    html_esc(f, x->target);
    fprintf(f, "</title></rect>\n<text x=\"%.1f\" y=\"14\" font-size=\"10\" fill=\"#b5651d\">", x0);
    html_esc(f, x->action);
    fputs("</text>\n", f);
  }
  for (int k = 0; k <= 4; k++) {
    double v = vmax * k / 4;
    fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%.0f</text>\n",
            CH_L - 4, Y(v) + 3, v);
  }
  for (int k = 0; k <= 8; k++) {
    double t = tmax * k / 8;
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"10\" text-anchor=\"middle\">%.1fs</text>\n",
            X(t), CH_H - 12, t);
  }
  fprintf(f, "<text x=\"4\" y=\"14\" font-size=\"10\">");
  html_esc(f, unit);
  fputs("</text>\n", f);
  if (hline > 0)
    fprintf(f,
            "<line x1=\"%d\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" "
            "stroke-dasharray=\"4 3\"><title>spike threshold</title></line>\n",
            CH_L, CH_L + pw, Y(hline), Y(hline));
  for (size_t c = 0; c < ncols; c++) {
    fprintf(f,
            "<polyline class=\"series\" data-name=\"%s\" fill=\"none\" stroke=\"%s\" "
            "stroke-width=\"1.5\" points=\"",
            names[c], colors[c]);
    for (size_t i = 0; i < r->ntimeline; i++)
      fprintf(f, "%.1f,%.1f ", X(r->timeline[i].t + r->timeline_step_s / 2),
              Y(tl_val(&r->timeline[i], cols[c])));
    fputs("\"/>\n", f);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" font-size=\"11\" fill=\"%s\">%s</text>\n",
            CH_L + 10 + 150.0 * (double)c, 34.0, colors[c], names[c]);
  }
  fputs("</svg>\n", f);
#undef X
#undef Y
}

static void html_row(FILE *f, const char *k, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void html_row(FILE *f, const char *k, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  fprintf(f, "<tr><th>%s</th><td>", k);
  html_esc(f, buf);
  fputs("</td></tr>\n", f);
}

static void write_html(FILE *f, const lt_report *r) {
  fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<title>sirius-loadtest report</title>\n<style>\n"
        "body{font-family:sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;margin:8px 0 16px}"
        "th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}"
        "th{background:#f3f3f3}.pass{color:#1a7f37;font-weight:bold}"
        ".fail{color:#c62828;font-weight:bold}svg{display:block;margin-bottom:8px}\n"
        "</style></head><body>\n<h1>sirius-loadtest report</h1>\n",
        f);
  if (r->fatal[0]) {
    fputs("<p class=\"fail\">FAILED: ", f);
    html_esc(f, r->fatal);
    fputs("</p>\n", f);
  }
  fprintf(f,
          "<p>No-loss check: <span id=\"no-loss\" class=\"%s\">%s</span> (accepted %llu, "
          "not final %llu, final twice %llu)</p>\n",
          r->no_loss ? "pass" : "fail", r->no_loss ? "PASS" : "FAIL", (unsigned long long)r->total,
          (unsigned long long)r->not_final, (unsigned long long)r->final_twice);
  fputs("<table id=\"summary\">\n", f);
  html_row(f, "submit", "%s", r->submit);
  html_row(f, "commands", "total %llu, successful %llu (%.2f%%), failed %llu, unsubmitted %llu",
           (unsigned long long)r->total, (unsigned long long)r->successful,
           share(r->successful, r->total), (unsigned long long)r->failed,
           (unsigned long long)r->unsubmitted);
  html_row(f, "latency ms", "avg %.1f, p50 %.1f, p95 %.1f, p99 %.1f, max %.1f", r->latency.avg,
           r->latency.p50, r->latency.p95, r->latency.p99, r->latency.max);
  html_row(f, "throughput", "%.1f commands/s over %.2f s", r->throughput, r->elapsed_s);
  html_row(f, "agents", "%u in fleet, %u connected at start, %u at end, %u crashed", r->agents,
           r->agents_connected, r->agents_connected_end, r->crashed_agents);
  html_row(f, "spike threshold", "%.0f ms (baseline p99 %.1f ms)", r->spike_threshold_ms,
           r->baseline_p99_ms);
  fputs("</table>\n", f);
  static const int tput[] = {1, 2, 0};
  static const char *const tn[] = {"completed/s", "failed/s", "submitted/s"};
  static const char *const tc[] = {"#2a9d8f", "#e63946", "#8d99ae"};
  svg_chart(f, r, "Throughput", "commands/s", tput, tn, tc, 3, 0);
  static const int lat[] = {3, 4};
  static const char *const ln[] = {"latency avg", "latency max"};
  static const char *const lc[] = {"#264653", "#e76f51"};
  svg_chart(f, r, "Latency (submit to final result)", "ms", lat, ln, lc, 2,
            r->nfaults ? r->spike_threshold_ms : 0);
  if (r->nfaults) {
    fputs("<h2>Faults</h2>\n<table id=\"faults\"><tr><th>#</th><th>target</th><th>action</th>"
          "<th>start s</th><th>end s</th><th>time to detect s</th><th>time to recover s</th>"
          "<th>submitted</th><th>completed</th><th>failed</th><th>retried</th><th>errors</th>"
          "<th>max latency ms</th><th>error</th></tr>\n",
          f);
    for (size_t i = 0; i < r->nfaults; i++) {
      const lt_fault_report *x = &r->faults[i];
      char st[16], en[16], de[16], re[16];
      fmt_s(st, sizeof(st), x->start_s);
      fmt_s(en, sizeof(en), x->end_s);
      fmt_s(de, sizeof(de), x->detect_s);
      fmt_s(re, sizeof(re), x->recover_s);
      fprintf(f, "<tr><td>%zu</td><td>", i + 1);
      html_esc(f, x->target);
      fputs("</td><td>", f);
      html_esc(f, x->action);
      fprintf(f,
              "</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%llu</td><td>%llu</td>"
              "<td>%llu</td><td>%llu</td><td>%llu</td><td>%.1f</td><td>",
              st, en, de, re, (unsigned long long)x->submitted, (unsigned long long)x->completed,
              (unsigned long long)x->failed, (unsigned long long)x->retried,
              (unsigned long long)x->errors, x->max_latency_ms);
      html_esc(f, x->error);
      fputs("</td></tr>\n", f);
    }
    fputs("</table>\n", f);
  }
  fputs("<h2>Errors</h2>\n<table id=\"errors\">\n", f);
  if (r->nerrors == 0)
    fputs("<tr><td>none</td></tr>\n", f);
  for (size_t i = 0; i < r->nerrors; i++)
    html_row(f, r->errors[i].name, "%llu", (unsigned long long)r->errors[i].n);
  fputs("</table>\n", f);
  if (r->manager_ok) {
    fputs("<h2>Manager counters (after - before)</h2>\n<table id=\"manager\">\n", f);
    for (size_t i = 0; i < r->nmanager; i++)
      html_row(f, r->manager[i].name, "%llu", (unsigned long long)r->manager[i].n);
    fputs("</table>\n", f);
  }
  fputs("</body></html>\n", f);
}

int lt_report_write(FILE *f, const lt_report *r, enum lt_format fmt) {
  int rc = 0;
  if (fmt == LT_FORMAT_JSON)
    rc = write_json(f, r);
  else if (fmt == LT_FORMAT_CSV)
    write_csv(f, r);
  else if (fmt == LT_FORMAT_HTML)
    write_html(f, r);
  else
    write_text(f, r);
  if (fflush(f) != 0 || ferror(f))
    return SM_EIO;
  return rc;
}
