/* report.h - the final report of a load test: counts, submit-to-result latency, throughput,
 * agents, errors by kind and the manager's own counters, written as text, JSON or CSV. */
#ifndef SM_LOADTEST_REPORT_H
#define SM_LOADTEST_REPORT_H

#include "loadtest/scenario.h"

#include <stdint.h>
#include <stdio.h>

#define LT_KINDS_MAX 32      /* distinct error kinds / counters kept */
#define LT_NOT_FINAL_LIST 20 /* command ids listed when some did not reach a final status */

/* A named counter. */
typedef struct lt_count {
  char name[48];
  uint64_t n;
} lt_count;

/* Latency figures in milliseconds. */
typedef struct lt_latency {
  uint64_t n;                          /* samples */
  double avg, p50, p95, p99, max, min; /* ms */
} lt_latency;

/* One fault of a chaos scenario as the harness saw it. Times in seconds. */
typedef struct lt_fault_report {
  char target[32];
  const char *action;
  double at, duration;   /* as scheduled, after submission started */
  double start_s, end_s; /* as applied, after submission started; -1: never */
  double detect_s;       /* fault start to the first error, retry or latency spike; -1: none */
  double recover_s;      /* fault end to the first fresh command completed under the spike
                            threshold; -1: none before the run ended */
  uint64_t submitted;    /* first submissions during the fault window */
  uint64_t completed;    /* final status completed during the window */
  uint64_t failed;       /* any other final status during the window */
  uint64_t retried;      /* re-submissions (refused, connection errors) during the window */
  uint64_t errors;       /* harness errors (every kind) during the window */
  double max_latency_ms; /* of the commands in flight at any time during the window */
  int pid, restart_pid;  /* process signalled or hog; restart_cmd shell */
  char error[160];       /* applying the fault failed: why */
} lt_fault_report;

/* One step of the timeline (the HTML chart, and the JSON "timeline"). */
typedef struct lt_tl_point {
  double t;                      /* seconds after submission started */
  double submitted_per_s;        /* first submissions */
  double ok_per_s, failed_per_s; /* final results by completed_at */
  double lat_avg_ms, lat_max_ms; /* of the commands that finished in the step */
  uint64_t errors;               /* harness errors and retries */
} lt_tl_point;

typedef struct lt_report {
  const char *submit;    /* "rest" or "amqp" */
  uint64_t planned;      /* commands the scenario wanted (0: unlimited) */
  uint64_t total;        /* commands accepted by the manager */
  uint64_t successful;   /* final status completed */
  uint64_t failed;       /* any other final status */
  uint64_t not_final;    /* accepted but no final status seen before the drain timeout */
  uint64_t unsubmitted;  /* never accepted (refused until the end, or submission errors) */
  lt_count by_status[8]; /* final statuses seen */
  size_t nby_status;
  lt_latency latency;            /* submit to final result */
  double elapsed_s;              /* first submission to last result */
  double throughput;             /* final results per second over elapsed_s */
  uint32_t agents;               /* agents in the fleet */
  uint32_t agents_connected;     /* connected when submission started */
  uint32_t agents_connected_end; /* connected at the end */
  uint32_t crashed_agents;       /* agents crashed on purpose */
  lt_count errors[LT_KINDS_MAX]; /* errors by kind */
  size_t nerrors;
  lt_count manager[LT_KINDS_MAX]; /* manager counters: after - before (GET /api/status) */
  size_t nmanager;
  int manager_ok; /* the manager counters were read */
  char not_final_ids[LT_NOT_FINAL_LIST][80];
  size_t nnot_final_ids;
  /* the no-loss check: every accepted command reached a final status, none twice */
  uint64_t final_twice; /* commands whose final status (or completed_at) changed once final */
  int no_loss;          /* not_final == 0 && final_twice == 0 */
  /* chaos */
  lt_fault_report *faults; /* owned by the run */
  size_t nfaults;
  double spike_threshold_ms; /* latency above this counts as a spike (from the baseline) */
  double baseline_p99_ms;    /* p99 before the first fault (0: no baseline) */
  lt_tl_point *timeline;     /* owned by the run */
  size_t ntimeline;
  double timeline_step_s;
  char fatal[256]; /* the run could not be carried out (manager unreachable, deadline) */
} lt_report;

/* Adds n to the counter `name` of arr (appends it when new and there is room). */
void lt_count_add(lt_count *arr, size_t *n, size_t max, const char *name, uint64_t add);

/* Fills out from the samples (sorted in place). */
void lt_latency_compute(double *ms, uint64_t n, lt_latency *out);

/* Writes the report. Returns 0 or SM_EIO. */
int lt_report_write(FILE *f, const lt_report *r, enum lt_format fmt);

#endif
