/* progress.h - how `sheaf status`, `status --watch` and `submit --wait`
 * show a job: progress bars per stage, rates, ETA, failures, tokens by
 * stage and their cost. */
#ifndef SHEAF_CLI_PROGRESS_H
#define SHEAF_CLI_PROGRESS_H

#include <stdint.h>
#include <stdio.h>
#include "sheaf/config.h"
#include "sheaf/state.h"

typedef struct progress {
    int64_t last_ms;         /* wall clock of the previous sample, 0: none */
    uint64_t last_chunks;    /* chunks finished at that sample */
    double rate;             /* chunks/s, smoothed */
    /* The job's cost, by stage (from its pipeline's models and cost.prices). */
    char models[4][128];
    int have_models;
    int has_groups;          /* the pipeline has a group stage */
    int lines;               /* lines of the last full print (redrawn in place) */
} progress;

/* The prices a job is costed with: those stored with it at submit, or for
 * a job submitted without any (or before jobs kept them) cfg's; *currency
 * and *from ("job" or "config") say which. */
const char *progress_prices(const sheaf_config *cfg, const sheaf_job_status *st,
                            const char **currency, const char **from);
/* The job's state as shown: "done" only when every document result and the
 * overview are there ("done, N results missing" otherwise). */
const char *progress_state(const sheaf_job_status *st, char *buf, size_t len);

/* Reads the models of the job's pipeline (once). */
void progress_load_models(progress *pg, sheaf_redis *r, const sheaf_job_status *st);
/* Feeds a new sample (st read at wall-clock now_ms). */
void progress_update(progress *pg, const sheaf_job_status *st, int64_t now_ms);

/* Several lines with bars (a terminal, or `sheaf status`).  With redraw,
 * the previous print (pg->lines) is overwritten in place by moving the
 * cursor up, never by clearing the screen. */
void progress_print_full(FILE *out, const sheaf_config *cfg, const char *job,
                         const sheaf_job_status *st, progress *pg, int64_t now_ms, int redraw);
/* One plain line (logs, pipes). */
void progress_print_line(FILE *out, const char *job, const sheaf_job_status *st,
                         const progress *pg);
/* One JSON object. */
void progress_print_json(FILE *out, const sheaf_config *cfg, const char *job,
                         const sheaf_job_status *st, const progress *pg);

#endif
