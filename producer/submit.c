/* producer/submit.c - sheaf_submit(): the two passes, start to end.
 *
 * Everything that can be checked without touching Redis or Kafka is
 * checked first: the input and chunk options, the job id, the pipeline
 * (whose version goes into every message), then pass 1 over all inputs
 * (scan.c).  Only a clean pass 1 - or, with input.on_error=skip, one with
 * at least one good document - goes on to pass 2 (publish.c), so a refused
 * submit leaves no trace anywhere.  See producer.h for the contract. */
#include "producer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "inputs.h"
#include "publish.h"
#include "scan.h"
#include "sheaf/log.h"
#include "sheaf/pipeline.h"
#include "sheaf/plan.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

/* Tokens of a stage's prompt with its inputs left empty: what every call
 * of it pays on top of its inputs. */
static uint64_t overhead(const sheaf_stage *st)
{
    return sheaf_stage_overhead(st);
}

/* An answer's tokens in a plan: the stage's max_tokens (a ceiling), or the
 * default completion budget when the stage sets none. */
static uint32_t answer_tokens(const sheaf_stage *st)
{
    return st->max_tokens > 0 ? (uint32_t)st->max_tokens : 512;
}

/* Records a warning for the dry run's report and the log. */
static void plan_warn(sheaf_submit_report *rep, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void plan_warn(sheaf_submit_report *rep, const char *fmt, ...)
{
    char msg[sizeof(rep->warnings[0])];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sheaf_warn("producer", "%s", msg);
    if (rep->n_warnings < sizeof(rep->warnings) / sizeof(rep->warnings[0]))
        snprintf(rep->warnings[rep->n_warnings++], sizeof(rep->warnings[0]), "%s", msg);
}

/* Adds a stage's plan to the report, warning when a pipeline file's own
 * setting goes over the window or a reduction cannot fit it. */
static void plan_stage(sheaf_submit_report *rep, const char *name, const sheaf_stage *st,
                       int budget, const sheaf_reduce_plan *pl, int planned)
{
    size_t k = rep->n_plan;
    int window = st->context_tokens - (st->max_tokens > 0 ? st->max_tokens : 0);
    if (k >= sizeof(rep->plan) / sizeof(rep->plan[0])) return;
    rep->n_plan++;
    snprintf(rep->plan[k].stage, sizeof(rep->plan[k].stage), "%s", name);
    rep->plan[k].window = st->context_tokens;
    rep->plan[k].budget = budget;
    rep->plan[k].planned = planned;
    rep->plan[k].levels = pl->levels;
    rep->plan[k].calls = pl->calls;
    rep->plan[k].largest = pl->largest;
    rep->plan[k].stuck = pl->stuck;
    if (st->context_tokens && st->budget_tokens > window)
        plan_warn(rep, "stage %s: budget_tokens %d is over the window of %s (%d less max_tokens "
                  "%d); its calls are bounded at %d", name, st->budget_tokens, st->model,
                  st->context_tokens, st->max_tokens, window);
    if (pl->stuck)
        plan_warn(rep, "stage %s: an input does not fit one call of %d prompt tokens (window %d "
                  "of %s): the stage would fail; raise context_tokens or lower max_tokens",
                  name, budget, st->context_tokens, st->model);
}

/* The plan of each reduce stage (see sheaf_submit_report.plan). */
static void plan(const sheaf_pipeline *p, const sheaf_scan *scan, sheaf_submit_report *rep,
                 sheaf_reduce_plan *combine, sheaf_reduce_plan *ov)
{
    sheaf_reduce_plan map = {1, scan->chunks, 0, scan->max_chunk_tokens + overhead(&p->map), 0,
                             0};
    uint32_t *sizes = NULL;
    size_t cap = 0;
    int budget = sheaf_stage_prompt_budget(&p->map);

    map.prompt_tokens = scan->tokens + scan->chunks * overhead(&p->map);
    map.stuck = budget && map.largest > (uint64_t)budget;
    plan_stage(rep, "map", &p->map, budget, &map, 1);
    for (size_t i = 0; p->combine.present && !p->merge && i < scan->docs.n; i++) {
        /* Each multi-chunk document's combine reads its map answers. */
        uint32_t n = scan->docs.v[i].chunks;
        if (n < 2) continue;
        if (n > cap) {
            uint32_t *v = realloc(sizes, n * sizeof(*v));
            if (!v) break;
            sizes = v;
            cap = n;
        }
        for (uint32_t k = 0; k < n; k++) sizes[k] = answer_tokens(&p->map);
        sheaf_reduce_plan_add(sizes, n, overhead(&p->combine), (uint64_t)sheaf_pipeline_combine_budget(p),
                              (size_t)p->combine.group_size, answer_tokens(&p->combine), combine);
    }
    if (p->combine.present)
        plan_stage(rep, "combine", &p->combine, sheaf_pipeline_combine_budget(p), combine, 1);
    if (p->refine_rounds) {
        /* A critique sees the final combine call's inputs and the draft. */
        sheaf_reduce_plan crit = {1, scan->docs.n, 0, 0, scan->docs.n, 0};
        uint64_t partials = combine->largest > overhead(&p->combine)
                                ? combine->largest - overhead(&p->combine)
                                : (uint64_t)answer_tokens(&p->map);
        crit.largest = overhead(&p->critique) + partials + answer_tokens(&p->combine);
        budget = sheaf_stage_prompt_budget(&p->critique);
        crit.stuck = budget && crit.largest > (uint64_t)budget;
        plan_stage(rep, "critique", &p->critique, budget, &crit, 1);
    }
    if (p->group.present) {
        sheaf_reduce_plan none = {0, 0, 0, 0, 0, 0};
        plan_stage(rep, "group", &p->group, sheaf_stage_prompt_budget(&p->group), &none, 0);
    }
    if (p->overview.present) {
        /* Its inputs are "[doc id]\n" and each document's result. */
        size_t n = scan->docs.n;
        uint32_t *v = p->group.present ? NULL : realloc(sizes, (n ? n : 1) * sizeof(*v));
        if (v) {
            sizes = v;
            for (size_t i = 0; i < n; i++) {
                const sheaf_in_doc *d = &scan->docs.v[i];
                uint32_t result = d->chunks > 1 && p->combine.present
                                      ? answer_tokens(&p->combine)
                                      : d->chunks * answer_tokens(&p->map);
                sizes[i] = sheaf_estimate_tokens(d->id, strlen(d->id)) + 1 + result;
            }
            sheaf_reduce_plan_add(sizes, n, overhead(&p->overview),
                                  (uint64_t)sheaf_stage_prompt_budget(&p->overview),
                                  (size_t)p->overview.group_size, answer_tokens(&p->overview),
                                  ov);
        }
        plan_stage(rep, "overview", &p->overview, sheaf_stage_prompt_budget(&p->overview), ov,
                   v != NULL);
    }
    free(sizes);
}

/* The dry run's estimate of calls and tokens (see sheaf_submit_report). */
static void estimate(const sheaf_pipeline *p, const sheaf_scan *scan, sheaf_submit_report *rep)
{
    const sheaf_stage *reduce = p->combine.present ? &p->combine : NULL;
    sheaf_reduce_plan combine = {0, 0, 0, 0, 0, 0}, ov = {0, 0, 0, 0, 0, 0};

    plan(p, scan, rep, &combine, &ov);
    rep->est.calls[SHEAF_STAGE_KIND_MAP] = scan->chunks;
    rep->est.prompt_tokens[SHEAF_STAGE_KIND_MAP] = scan->tokens + scan->chunks * overhead(&p->map);
    rep->est.completion_tokens_max[SHEAF_STAGE_KIND_MAP] = scan->chunks * (uint64_t)p->map.max_tokens;
    if (reduce) {
        /* Every call of every level of each multi-chunk document's combine. */
        rep->est.calls[SHEAF_STAGE_KIND_REDUCE] = combine.calls;
        rep->est.prompt_tokens[SHEAF_STAGE_KIND_REDUCE] = combine.prompt_tokens;
        rep->est.completion_tokens_max[SHEAF_STAGE_KIND_REDUCE] =
            combine.calls * (uint64_t)reduce->max_tokens;
    }
    if (p->refine_rounds) {
        /* At least one critique per document. */
        rep->est.calls[SHEAF_STAGE_KIND_REDUCE] += scan->docs.n;
        rep->est.prompt_tokens[SHEAF_STAGE_KIND_REDUCE] += scan->docs.n * overhead(&p->critique);
        rep->est.completion_tokens_max[SHEAF_STAGE_KIND_REDUCE] +=
            scan->docs.n * (uint64_t)p->critique.max_tokens;
    }
    if (p->overview.present) {
        /* Over the groups (their number depends on the answers): one call. */
        int by_plan = ov.calls > 0;
        rep->est.calls[SHEAF_STAGE_KIND_OVERVIEW] = by_plan ? ov.calls : 1;
        rep->est.prompt_tokens[SHEAF_STAGE_KIND_OVERVIEW] =
            by_plan ? ov.prompt_tokens : overhead(&p->overview);
        rep->est.completion_tokens_max[SHEAF_STAGE_KIND_OVERVIEW] =
            rep->est.calls[SHEAF_STAGE_KIND_OVERVIEW] * (uint64_t)p->overview.max_tokens;
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
    /* The pipeline's chunking is the default; chunk.* set by the user wins. */
    eff = *cfg; /* shallow: eff owns nothing and is never cleared */
    if (pipe->pages_per_batch && !sheaf_config_is_set(cfg, "chunk.pages_per_batch"))
        eff.chunk_pages_per_batch = pipe->pages_per_batch;
    if (pipe->chunk_max_tokens && !sheaf_config_is_set(cfg, "chunk.max_tokens"))
        eff.chunk_max_tokens = pipe->chunk_max_tokens;
    if (pipe->chunk_overlap_tokens && !sheaf_config_is_set(cfg, "chunk.overlap_tokens"))
        eff.chunk_overlap_tokens = pipe->chunk_overlap_tokens;
    err = sheaf_input_opts_init(&io, &eff, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    io_ready = 1;
    {   /* A chunk that cannot fit the map call's window is refused now. */
        int budget = sheaf_stage_prompt_budget(&pipe->map);
        uint64_t over = overhead(&pipe->map);
        if (budget > 0) {
            io.chunk_limit = (uint64_t)budget > over ? (uint32_t)(budget - (int)over) : 1;
            snprintf(io.chunk_limit_why, sizeof(io.chunk_limit_why),
                     "model %.60s: window %d tokens, less the map prompt ~%llu and the answer's "
                     "max_tokens %d; see llm.context_tokens",
                     pipe->map.model, pipe->map.context_tokens, (unsigned long long)over,
                     pipe->map.max_tokens);
        }
    }

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
    report->files_skipped = scan.files.n_skips;
    for (size_t i = 0; opts->on_skip && i < scan.files.n_skips; i++)
        opts->on_skip(opts->ud, scan.files.skips[i].path, scan.files.skips[i].reason);
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

    /* The plan, also before a real submit: its warnings (a stage that
     * would not fit the window) are logged before anything is paid for. */
    estimate(pipe, &scan, report);
    if (opts->dry_run) {
        for (size_t i = 0; opts->on_doc && i < scan.docs.n; i++) {
            char where[SHEAF_PROBLEM_SIZE];
            sheaf_scan_where(&scan, &scan.docs.v[i], where, sizeof(where));
            opts->on_doc(opts->ud, scan.docs.v[i].id, where, scan.docs.v[i].chunks);
        }
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
