/* hostinfo.h - real facts about the host, read from /proc and uname: the figures heartbeats
 * report and the data of a `status` command.
 *
 * Memory is host-wide. CPU is measured both host-wide and for this process (as a share of all
 * CPUs); heartbeats report the process figure by default (--cpu-source): simulated agents
 * share a host with other work (tests, the manager itself), and the host figure would make
 * every one of them look loaded. Reads are cached for a second so 10,000 agents in one process
 * do not read /proc 10,000 times.
 */
#ifndef SM_CLIENT_HOSTINFO_H
#define SM_CLIENT_HOSTINFO_H

#include <stddef.h>
#include <stdint.h>

typedef struct client_hostinfo {
  uint64_t sampled_ms;      /* loop time of the last sample; 0: never */
  uint64_t cpu_total;       /* jiffies of all states at the last /proc/stat read */
  uint64_t cpu_idle;        /* jiffies idle + iowait at that read */
  double cpu_usage;         /* percent busy, 0..100, between the last two reads */
  uint64_t proc_ticks;      /* this process's utime + stime at the last read */
  double process_cpu_usage; /* this process's share of all CPUs, percent, same interval */
  double memory_usage;      /* percent of MemTotal not available, 0..100 */
} client_hostinfo;

/* Refreshes the figures when now_ms is a second or more past the last sample. The first call
 * measures cpu over the time since boot. Never fails: unreadable files leave figures at 0. */
void client_hostinfo_sample(client_hostinfo *h, uint64_t now_ms);

/* One host fact. */
typedef struct client_fact {
  char key[24];
  char value[128];
} client_fact;

#define CLIENT_FACTS_MAX 16

/* Fills facts (at most CLIENT_FACTS_MAX) with hostname, os, kernel, arch, cpus, load_1m,
 * load_5m, load_15m, memory_total_kb, memory_available_kb, memory_usage, uptime_seconds.
 * Returns the count. */
size_t client_hostinfo_facts(client_fact *facts);

/* Writes the host name into buf (NUL-terminated, "localhost" if unknown). */
void client_hostname(char *buf, size_t cap);

#endif
