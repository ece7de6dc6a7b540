/* chaos.h - the fault schedule of a run: the --proxy proxies and the --fault list.
 *
 * Faults start and end on the run's clock (seconds after submission started), driven by
 * lt_chaos_tick from the run's timer. Proxy actions set the proxy's fault (one at a time per
 * proxy: the end of a fault clears it). Process actions signal a pid (given, or read from
 * pid_file when the fault starts) or run `cmd` with /bin/sh -c; `restart_cmd` runs when the
 * fault ends, detached (it may be the long-running server itself: the harness does not own the
 * user's processes and leaves it running). cpu_pressure / memory_pressure fork a hog child that
 * stops by itself after `duration` (alarm and PR_SET_PDEATHSIG as safety nets) and is killed at
 * the fault's end or when the run closes.
 */
#ifndef SM_LOADTEST_CHAOS_H
#define SM_LOADTEST_CHAOS_H

#include "loadtest/scenario.h"
#include "util/err.h"

#include <stdint.h>
#include <uv.h>

/* What happened to one fault. Times are wall-clock ms (sm_now_ms), 0 when not reached. */
typedef struct lt_fault_state {
  const lt_fault_spec *spec;
  int64_t start_ms, end_ms;
  int pid;         /* the process signalled, or the hog child */
  int restart_pid; /* the restart_cmd shell (exec'ing the server keeps this pid) */
  char error[160]; /* why applying it failed ("" when it did not) */
} lt_fault_state;

typedef struct lt_chaos lt_chaos;

typedef void (*lt_chaos_close_cb)(void *ud);

/* Creates the proxies of s (bound and listening at once, so their addresses are known).
 * Returns 0, or SM_EADDR / SM_ENOMEM / SM_EINVAL with err naming the --proxy. */
SM_MUST_CHECK int lt_chaos_create(uv_loop_t *loop, const lt_scenario *s, lt_chaos **out, char *err,
                                  size_t errlen);

/* The bound address of proxy `name`, or NULL. */
const char *lt_chaos_proxy_addr(const lt_chaos *c, const char *name);

/* Starts the schedule: t0 (wall ms) is second 0 of the faults. */
void lt_chaos_start(lt_chaos *c, int64_t t0_ms);

/* Starts and ends the faults that are due; reaps hog children. */
void lt_chaos_tick(lt_chaos *c);

/* Faults not ended yet (0 before lt_chaos_start: nothing is scheduled then). */
size_t lt_chaos_pending(const lt_chaos *c);

/* Seconds after t0 at which the last fault ends. */
double lt_chaos_last_end(const lt_chaos *c);

size_t lt_chaos_nfaults(const lt_chaos *c);
const lt_fault_state *lt_chaos_fault(const lt_chaos *c, size_t i);

/* Ends every started fault now (restart_cmd still runs) and drops the ones not started. */
void lt_chaos_stop(lt_chaos *c);

/* Stops, kills hogs, closes proxies and process handles; cb(ud) runs once after all closed
 * (never inside this call), then c is freed. */
void lt_chaos_close(lt_chaos *c, lt_chaos_close_cb cb, void *ud);

#endif
