/* hostinfo.c - /proc/stat, /proc/meminfo, /proc/loadavg, /proc/uptime, uname. */
#include "client/hostinfo.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

static int read_cpu(uint64_t *total, uint64_t *idle) {
  FILE *f = fopen("/proc/stat", "r");
  unsigned long long v[8] = {0};
  int n;
  if (f == NULL)
    return -1;
  n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
             &v[5], &v[6], &v[7]);
  fclose(f);
  if (n < 4)
    return -1;
  *total = 0;
  for (int i = 0; i < 8; i++)
    *total += v[i];
  *idle = v[3] + v[4]; /* idle + iowait */
  return 0;
}

static int read_mem(uint64_t *total_kb, uint64_t *avail_kb) {
  FILE *f = fopen("/proc/meminfo", "r");
  char line[128];
  unsigned long long v;
  int got = 0;
  if (f == NULL)
    return -1;
  *total_kb = *avail_kb = 0;
  while (fgets(line, sizeof(line), f) && got < 2) {
    if (sscanf(line, "MemTotal: %llu", &v) == 1) {
      *total_kb = v;
      got++;
    } else if (sscanf(line, "MemAvailable: %llu", &v) == 1) {
      *avail_kb = v;
      got++;
    }
  }
  fclose(f);
  return got == 2 ? 0 : -1;
}

/* utime + stime of this process in clock ticks (fields 14 and 15 of /proc/self/stat, after the
 * parenthesised command name, which may contain spaces). */
static int read_proc_ticks(uint64_t *ticks) {
  char buf[512];
  FILE *f = fopen("/proc/self/stat", "r");
  if (f == NULL)
    return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')');
  unsigned long long ut, st;
  if (p == NULL ||
      sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return -1;
  *ticks = ut + st;
  return 0;
}

void client_hostinfo_sample(client_hostinfo *h, uint64_t now_ms) {
  uint64_t total, idle, mt, ma, pt = 0;
  if (h->sampled_ms != 0 && now_ms < h->sampled_ms + 1000)
    return;
  h->sampled_ms = now_ms ? now_ms : 1;
  int have_pt = read_proc_ticks(&pt) == 0;
  if (read_cpu(&total, &idle) == 0) {
    uint64_t dt = total - h->cpu_total, di = idle - h->cpu_idle;
    if (total > h->cpu_total && di <= dt)
      h->cpu_usage = 100.0 * (double)(dt - di) / (double)dt;
    /* /proc/stat's total sums all CPUs, so this is the process's share of the machine. */
    if (have_pt && total > h->cpu_total && pt >= h->proc_ticks) {
      double v = 100.0 * (double)(pt - h->proc_ticks) / (double)dt;
      h->process_cpu_usage = v > 100.0 ? 100.0 : v;
    }
    h->cpu_total = total;
    h->cpu_idle = idle;
  }
  if (have_pt)
    h->proc_ticks = pt;
  if (read_mem(&mt, &ma) == 0 && mt > 0 && ma <= mt)
    h->memory_usage = 100.0 * (double)(mt - ma) / (double)mt;
}

void client_hostname(char *buf, size_t cap) {
  if (gethostname(buf, cap) != 0 || buf[0] == '\0')
    snprintf(buf, cap, "localhost");
  buf[cap - 1] = '\0';
}

static void fact(client_fact *facts, size_t *n, const char *k, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fact(client_fact *facts, size_t *n, const char *k, const char *fmt, ...) {
  va_list ap;
  if (*n >= CLIENT_FACTS_MAX)
    return;
  snprintf(facts[*n].key, sizeof(facts[*n].key), "%s", k);
  va_start(ap, fmt);
  vsnprintf(facts[*n].value, sizeof(facts[*n].value), fmt, ap);
  va_end(ap);
  (*n)++;
}

size_t client_hostinfo_facts(client_fact *facts) {
  size_t n = 0;
  char host[128];
  struct utsname u;
  double l1 = 0, l5 = 0, l15 = 0, up = 0;
  uint64_t mt = 0, ma = 0;
  FILE *f;

  client_hostname(host, sizeof(host));
  fact(facts, &n, "hostname", "%s", host);
  if (uname(&u) == 0) {
    fact(facts, &n, "os", "%s", u.sysname);
    fact(facts, &n, "kernel", "%s", u.release);
    fact(facts, &n, "arch", "%s", u.machine);
  }
  fact(facts, &n, "cpus", "%ld", sysconf(_SC_NPROCESSORS_ONLN));
  f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf %lf %lf", &l1, &l5, &l15) == 3) {
      fact(facts, &n, "load_1m", "%.2f", l1);
      fact(facts, &n, "load_5m", "%.2f", l5);
      fact(facts, &n, "load_15m", "%.2f", l15);
    }
    fclose(f);
  }
  if (read_mem(&mt, &ma) == 0) {
    fact(facts, &n, "memory_total_kb", "%llu", (unsigned long long)mt);
    fact(facts, &n, "memory_available_kb", "%llu", (unsigned long long)ma);
    if (mt)
      fact(facts, &n, "memory_usage", "%.1f", 100.0 * (double)(mt - ma) / (double)mt);
  }
  f = fopen("/proc/uptime", "r");
  if (f) {
    if (fscanf(f, "%lf", &up) == 1)
      fact(facts, &n, "uptime_seconds", "%.0f", up);
    fclose(f);
  }
  return n;
}
