/* producer/submit.c - sheaf_submit(): the two passes, start to end.
 *
 * Everything that can be checked without touching Redis or Kafka is
 * checked first: the input and chunk options, the job id, the pipeline
 * (whose version goes into every message), then pass 1 over all inputs
 * (scan.c).  Only a clean pass 1 - or, with input.on_error=skip, one with
 * at least one good document - goes on to pass 2 (publish.c), so a refused
 * submit leaves no trace anywhere.  See producer.h for the contract. */
#include "producer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "inputs.h"
#include "publish.h"
#include "scan.h"
#include "sheaf/log.h"
#include "sheaf/pipeline.h"
#include "sheaf/state.h"
#include "sheaf/util.h"
#include "sheaf/util.h"

/* Tokens of a stage's prompt with its inputs left empty: what every call
 * of it pays on top of its inputs. */
static uint64_t overhead(const sheaf_stage *st)
{
    return sheaf_estimate_tokens(st->system, strlen(st->system)) +
           sheaf_estimate_tokens(st->user, strlen(st->user));
}

/* The dry run's estimate of calls and tokens (see sheaf_submit_report). */
static void estimate(const sheaf_pipeline *p, const sheaf_scan *scan, sheaf_submit_report *rep)
{
    const sheaf_stage *reduce = p->combine.present ? &p->combine : NULL;
    uint64_t multi = 0, reduced_docs;
    for (size_t i = 0; i < scan->docs.n; i++) multi += scan->docs.v[i].chunks > 1;
    reduced_docs = p->combine.present ? multi : 0;

    rep->est.calls[SHEAF_STAGE_KIND_MAP] = scan->chunks;
    rep->est.prompt_tokens[SHEAF_STAGE_KIND_MAP] = scan->tokens + scan->chunks * overhead(&p->map);
    rep->est.completion_tokens_max[SHEAF_STAGE_KIND_MAP] = scan->chunks * (uint64_t)p->map.max_tokens;
    if (reduce) {
        /* Each multi-chunk document's combine reads its map answers. */
        uint64_t calls = reduced_docs;
        rep->est.calls[SHEAF_STAGE_KIND_REDUCE] = calls;
        rep->est.prompt_tokens[SHEAF_STAGE_KIND_REDUCE] =
            calls * overhead(reduce) + (scan->chunks > scan->docs.n ? scan->chunks : 0) *
                                           (uint64_t)p->map.max_tokens;
        rep->est.completion_tokens_max[SHEAF_STAGE_KIND_REDUCE] = calls * (uint64_t)reduce->max_tokens;
    }
    if (p->refine_rounds) {
        /* At least one critique per document. */
        rep->est.calls[SHEAF_STAGE_KIND_REDUCE] += scan->docs.n;
        rep->est.prompt_tokens[SHEAF_STAGE_KIND_REDUCE] += scan->docs.n * overhead(&p->critique);
        rep->est.completion_tokens_max[SHEAF_STAGE_KIND_REDUCE] +=
            scan->docs.n * (uint64_t)p->critique.max_tokens;
    }
    if (p->overview.present) {
        uint64_t per_doc = reduce ? (uint64_t)reduce->max_tokens : (uint64_t)p->map.max_tokens;
        rep->est.calls[SHEAF_STAGE_KIND_OVERVIEW] = 1;
        rep->est.prompt_tokens[SHEAF_STAGE_KIND_OVERVIEW] =
            overhead(&p->overview) + (p->group.present ? 0 : scan->docs.n * per_doc);
        rep->est.completion_tokens_max[SHEAF_STAGE_KIND_OVERVIEW] = (uint64_t)p->overview.max_tokens;
    }
    const sheaf_stage *st[4] = {&p->map, reduce ? reduce : &p->critique, &p->group, &p->overview};
    for (int k = 0; k < 4; k++)
        snprintf(rep->est.models[k], sizeof(rep->est.models[k]), "%s",
                 st[k]->present && st[k]->model ? st[k]->model : "");
}

sheaf_err sheaf_submit(const sheaf_config *cfg, const sheaf_submit_opts *opts,
                       sheaf_submit_report *report, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    sheaf_input_opts io;
    sheaf_scan scan;
    sheaf_pipeline *pipe = NULL;
    sheaf_config eff;
    char *pipe_json = NULL;
    char topic[256];
    int io_ready = 0;

    memset(&scan, 0, sizeof(scan));
    if (!cfg || !opts || !report || (opts->n_inputs > 0 && !opts->inputs)) {
        snprintf(errstr, errlen, "sheaf_submit: missing argument");
        return SHEAF_ERR_INVALID;
    }
    memset(report, 0, sizeof(*report));
    if (opts->n_inputs == 0) {
        snprintf(errstr, errlen, "no inputs given (files, directories or .jsonl)");
        goto done;
    }
    pipe = sheaf_pipeline_load(cfg->pipeline, cfg, errstr, errlen);
    if (!pipe) {
        err = SHEAF_ERR_CONFIG;
        goto done;
    }
    sheaf_pipeline_chunking(cfg, pipe, &eff);
    err = sheaf_input_opts_init(&io, &eff, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    io_ready = 1;

    if (opts->resume && !opts->job_id) {
        err = SHEAF_ERR_INVALID;
        snprintf(errstr, errlen, "--resume needs the job id of the submit to resume");
        goto done;
    }
    if (opts->job_id) {
        if (!sheaf_job_id_valid(opts->job_id)) {
            err = SHEAF_ERR_INVALID;
            snprintf(errstr, errlen,
                     "job id \"%.200s\" is not valid (1 to 200 of A-Z a-z 0-9 . _ : / @ + -)",
                     opts->job_id);
            goto done;
        }
        snprintf(report->job_id, sizeof(report->job_id), "%s", opts->job_id);
    } else {
        char id[40];
        sheaf_job_id_new(id);
        snprintf(report->job_id, sizeof(report->job_id), "%s", id);
    }

    pipe_json = sheaf_pipeline_to_json(pipe);
    if (!pipe_json) {
        err = SHEAF_ERR_NOMEM;
        snprintf(errstr, errlen, "out of memory");
        goto done;
    }
    snprintf(report->pv, sizeof(report->pv), "%s", pipe->version);
    sheaf_topic_name(cfg, "map", topic, sizeof(topic));

    /* Pass 1. */
    err = sheaf_scan_run(&io, opts->inputs, opts->n_inputs, &scan, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    report->bytes = scan.bytes;
    report->problems = scan.n_problems;
    if (scan.n_problems > 0 && !io.skip) {
        err = SHEAF_ERR_INVALID;
        snprintf(errstr, errlen,
                 "refused: %llu input problem%s (first: %s); nothing was submitted "
                 "(input.on_error=skip would leave the bad documents out)",
                 (unsigned long long)scan.n_problems, scan.n_problems == 1 ? "" : "s",
                 scan.n_kept > 0 ? scan.problems[0] : "?");
        goto done;
    }
    report->skipped = scan.n_problems;
    if (scan.docs.n == 0) {
        err = SHEAF_ERR_INVALID;
        snprintf(errstr, errlen, "nothing to submit: no documents in the input%s",
                 scan.n_problems > 0 ? " after leaving out the bad ones" : "");
        goto done;
    }
    report->docs = scan.docs.n;
    report->chunks = scan.chunks;
    report->tokens = scan.tokens;
    if (scan.n_problems > 0)
        sheaf_warn("producer", "%llu bad document%s left out (input.on_error=skip)",
                   (unsigned long long)scan.n_problems, scan.n_problems == 1 ? "" : "s");

    if (opts->dry_run) {
        estimate(pipe, &scan, report);
        sheaf_info("producer", "dry run: %llu documents, %llu chunks (~%llu tokens) would be "
                   "produced to %s",
                   (unsigned long long)report->docs, (unsigned long long)report->chunks,
                   (unsigned long long)report->tokens, topic);
        err = SHEAF_OK;
        goto done;
    }

    /* Pass 2. */
    {
        sheaf_publish_args pa = {cfg, &io, &scan, report->job_id, report->pv, pipe_json, topic,
                                 pipe, opts->resume};
        uint64_t produced = 0;
        err = sheaf_publish(&pa, &produced, errstr, errlen);
        report->chunks = produced;
        if (err != SHEAF_OK) goto done;
    }
    sheaf_info("producer", "job %s: %llu documents, %llu chunks (~%llu tokens) produced to %s",
               report->job_id, (unsigned long long)report->docs,
               (unsigned long long)report->chunks, (unsigned long long)report->tokens, topic);
done:
    sheaf_scan_clear(&scan);
    free(pipe_json);
    sheaf_pipeline_destroy(pipe);
    if (io_ready) sheaf_input_opts_clear(&io);
    return err;
}
