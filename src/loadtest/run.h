/* run.h - one load-test run: the in-process fleet(s) of simulated agents, the submitter (REST
 * arrays over keep-alive HTTP/1.1, or the AMQP intake), the result tracker (REST listing with a
 * watermark cursor, or the AMQP result queue), progress lines and the final report.
 *
 * Latency of a command = its final result's completed_at (the manager's clock) minus the wall
 * clock time at which the accepted submission was sent (same host: same clock), so the polling
 * period does not blur it.
 */
#ifndef SM_LOADTEST_RUN_H
#define SM_LOADTEST_RUN_H

#include "loadtest/report.h"
#include "loadtest/scenario.h"

#include <stdio.h>
#include <uv.h>

typedef struct lt_run lt_run;

/* Runs once the run is over and every handle it owned is closed. */
typedef void (*lt_run_done_cb)(lt_run *r, void *ud);

/* Prepares a run of scenario s (kept by pointer: it must outlive the run); progress lines go to
 * progress (NULL: none). Returns 0, or SM_EADDR / SM_EINVAL / SM_ENOMEM with err holding the
 * one-line reason. */
int lt_run_create(uv_loop_t *loop, const lt_scenario *s, FILE *progress, lt_run **out, char *err,
                  size_t errlen);

/* Starts: agents connect, then submission begins. */
void lt_run_start(lt_run *r, lt_run_done_cb done, void *ud);

/* Stops submitting at once and finishes after a short drain (a first SIGINT). */
void lt_run_abort(lt_run *r);

/* The report, valid once done ran. */
const lt_report *lt_run_report(const lt_run *r);

/* Frees a finished run. NULL is fine. */
void lt_run_destroy(lt_run *r);

#endif
