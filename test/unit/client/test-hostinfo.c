/* Unit tests of client/hostinfo.c: real figures from this machine's /proc, within range. */
#include "client/hostinfo.h"
#include "t.h"

static void test_sample_ranges(void) {
  client_hostinfo h = {0};
  client_hostinfo_sample(&h, 1000);
  T_ASSERT(h.memory_usage > 0 && h.memory_usage <= 100);
  T_ASSERT(h.cpu_usage >= 0 && h.cpu_usage <= 100);
  uint64_t total = h.cpu_total;
  T_ASSERT(total > 0);
  client_hostinfo_sample(&h, 1500); /* cached: under a second since the last sample */
  T_EQ_INT(h.cpu_total == total, 1);
  client_hostinfo_sample(&h, 2100);
  T_ASSERT(h.cpu_total >= total);
  T_ASSERT(h.cpu_usage >= 0 && h.cpu_usage <= 100);
}

static const char *fact(const client_fact *f, size_t n, const char *key) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(f[i].key, key))
      return f[i].value;
  return NULL;
}

static void test_facts(void) {
  client_fact f[CLIENT_FACTS_MAX];
  size_t n = client_hostinfo_facts(f);
  T_ASSERT(n >= 10 && n <= CLIENT_FACTS_MAX);
  T_ASSERT(fact(f, n, "hostname") && *fact(f, n, "hostname"));
  T_EQ_STR(fact(f, n, "os"), "Linux");
  T_ASSERT(atoi(fact(f, n, "cpus")) >= 1);
  T_ASSERT(fact(f, n, "load_1m") != NULL);
  T_ASSERT(atoll(fact(f, n, "memory_total_kb")) > 0);
  T_ASSERT(fact(f, n, "uptime_seconds") != NULL);
}

int main(void) {
  T_RUN(test_sample_ranges);
  T_RUN(test_facts);
  return t_done();
}
