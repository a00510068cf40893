/* progress.c - a job's progress for people and scripts.  See progress.h.
 *
 * Rates come from successive samples (smoothed, so one slow second does
 * not swing the ETA), or for a single `status` from the job's age.  The
 * ETA is the chunks left over the rate; the reduce stages after the last
 * chunk are not in it (they are shown as their own bars).  Cost is the
 * tokens of each stage priced with that stage's model from cost.prices;
 * a model without a price makes the cost unknown, never zero. */
#include "progress.h"

#include <string.h>

#include "sheaf/cost.h"
#include "sheaf/pipeline.h"
#include "sheaf/util.h"

#define BAR_WIDTH 30

static const char *const stage_names[4] = {"map", "reduce", "group", "overview"};

void progress_load_models(progress *pg, sheaf_redis *r, const sheaf_job_status *st)
{
    char errstr[SHEAF_ERRSTR_SIZE], *json = NULL;
    if (pg->have_models || !st->pv[0]) return;
    if (sheaf_state_pipeline_get(r, st->pv, &json, errstr, sizeof(errstr)) != SHEAF_OK) return;
    sheaf_pipeline *p = sheaf_pipeline_from_json(json, strlen(json), errstr, sizeof(errstr));
    free(json);
    if (!p) return;
    const sheaf_stage *stages[4] = {&p->map, p->combine.present ? &p->combine : &p->critique,
                                    &p->group, &p->overview};
    for (int k = 0; k < 4; k++)
        snprintf(pg->models[k], sizeof(pg->models[k]), "%s",
                 stages[k]->present && stages[k]->model ? stages[k]->model : "");
    pg->have_models = 1;
    sheaf_pipeline_destroy(p);
}

static uint64_t finished(const sheaf_job_status *st) { return st->chunks_ok + st->chunks_failed; }

void progress_update(progress *pg, const sheaf_job_status *st, int64_t now_ms)
{
    uint64_t f = finished(st);
    if (pg->last_ms && now_ms > pg->last_ms) {
        double inst = (double)(f - (f > pg->last_chunks ? pg->last_chunks : f)) * 1000.0 /
                      (double)(now_ms - pg->last_ms);
        pg->rate = pg->rate > 0 ? 0.7 * pg->rate + 0.3 * inst : inst;
    } else if (st->created_ms && now_ms > st->created_ms) {
        int64_t end = st->finished_ms ? st->finished_ms : now_ms;
        pg->rate = end > st->created_ms ? (double)f * 1000.0 / (double)(end - st->created_ms) : 0;
    }
    pg->last_ms = now_ms;
    pg->last_chunks = f;
}

static double eta_s(const sheaf_job_status *st, const progress *pg)
{
    uint64_t f = finished(st);
    if (f >= st->chunks) return 0;
    return pg->rate > 0 ? (double)(st->chunks - f) / pg->rate : -1;
}

static void bar(FILE *out, const char *label, uint64_t done, uint64_t total, const char *extra)
{
    char b[BAR_WIDTH + 1];
    int fill = total ? (int)((double)done * BAR_WIDTH / (double)total) : 0;
    if (fill > BAR_WIDTH) fill = BAR_WIDTH;
    memset(b, '#', (size_t)fill);
    memset(b + fill, '.', (size_t)(BAR_WIDTH - fill));
    b[BAR_WIDTH] = '\0';
    fprintf(out, "  %-10s [%s] %llu/%llu %3.0f%%%s\n", label, b, (unsigned long long)done,
            (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 0.0,
            extra);
}

/* Total cost and whether every stage with tokens had a price. */
static double job_cost(const sheaf_config *cfg, const sheaf_job_status *st, const progress *pg,
                       int *known, double per_stage[4])
{
    sheaf_price_table t;
    char e[SHEAF_ERRSTR_SIZE];
    double total = 0;
    *known = pg->have_models && sheaf_price_table_parse(cfg->cost_prices, &t, e, sizeof(e)) == SHEAF_OK &&
             t.n > 0;
    for (int k = 0; k < 4; k++) {
        int ok = 0;
        per_stage[k] = 0;
        if (!st->stage_tokens[k][0] && !st->stage_tokens[k][1]) continue;
        if (*known) per_stage[k] = sheaf_cost_of(&t, pg->models[k], st->stage_tokens[k][0],
                                                 st->stage_tokens[k][1], &ok);
        if (!ok) *known = 0;
        total += per_stage[k];
    }
    return total;
}

void progress_print_full(FILE *out, const sheaf_config *cfg, const char *job,
                         const sheaf_job_status *st, const progress *pg, int64_t now_ms)
{
    char extra[160];
    double eta = eta_s(st, pg), per[4];
    int64_t end = st->finished_ms ? st->finished_ms : now_ms;
    int known;

    fprintf(out, "job %s: %s%s%s  (pipeline %s, %.1f s)\n", job, sheaf_job_state_name(st->state),
            st->error[0] ? ": " : "", st->error, st->pv,
            st->created_ms ? (double)(end - st->created_ms) / 1000.0 : 0.0);
    int64_t stalled = sheaf_job_stalled_ms(st);
    if (stalled)
        fprintf(out, "  %-10s no heartbeat from its submit for %.0f s: the submit was killed or "
                "lost Redis. The chunks it produced are processed; finish the job with `sheaf "
                "submit --resume %s INPUT...` (the same inputs), or end it with `sheaf cancel "
                "%s`.\n", "STALLED", (double)stalled / 1000.0, job, job);
    if (st->waiting[0])
        fprintf(out, "  %-10s the provider keeps failing; chunks are retried (llm.retry_horizon_ms), "
                "last %.0f s ago: %s\n", "WAITING", (double)st->waiting_age_ms / 1000.0,
                st->waiting);
    if (eta >= 0 && finished(st) < st->chunks)
        snprintf(extra, sizeof(extra), "  %.1f/s  ETA %.0f s", pg->rate, eta);
    else
        snprintf(extra, sizeof(extra), "  %.1f/s", pg->rate);
    size_t n = strlen(extra);
    if (st->chunks_failed)
        snprintf(extra + n, sizeof(extra) - n, "  (%llu failed)", (unsigned long long)st->chunks_failed);
    bar(out, "chunks", finished(st), st->chunks, extra);
    bar(out, "documents", st->docs_done, st->docs, "");
    if (st->groups_done) fprintf(out, "  %-10s %llu done\n", "groups", (unsigned long long)st->groups_done);
    fprintf(out, "  %-10s %s\n", "overview", st->overview_done ? "written" : "pending");
    fprintf(out, "  %-10s %llu\n", "dead letters", (unsigned long long)st->dlq);
    fprintf(out, "  %-10s", "tokens");
    for (int k = 0; k < 4; k++)
        if (st->stage_tokens[k][0] || st->stage_tokens[k][1])
            fprintf(out, " %s %llu+%llu;", stage_names[k], (unsigned long long)st->stage_tokens[k][0],
                    (unsigned long long)st->stage_tokens[k][1]);
    fprintf(out, " total %llu prompt + %llu completion\n", (unsigned long long)st->tokens_prompt,
            (unsigned long long)st->tokens_completion);
    double cost = job_cost(cfg, st, pg, &known, per);
    if (known)
        fprintf(out, "  %-10s %.4f %s\n", "cost", cost, cfg->cost_currency);
    else
        fprintf(out, "  %-10s unknown (set cost.prices for the models used: %s%s%s%s%s%s%s)\n",
                "cost", pg->models[0], pg->models[1][0] ? ", " : "", pg->models[1],
                pg->models[2][0] ? ", " : "", pg->models[2], pg->models[3][0] ? ", " : "",
                pg->models[3]);
    fprintf(out, "  %-10s %llu hits, %llu misses, %llu tokens saved\n", "cache",
            (unsigned long long)st->cache_hits, (unsigned long long)st->cache_misses,
            (unsigned long long)st->tokens_saved);
}

void progress_print_line(FILE *out, const char *job, const sheaf_job_status *st,
                         const progress *pg)
{
    double eta = eta_s(st, pg);
    int64_t stalled = sheaf_job_stalled_ms(st);
    fprintf(out, "job %s %s: chunks %llu/%llu (%llu failed), documents %llu/%llu, groups %llu, "
            "overview %s, dlq %llu, %.1f chunks/s",
            job, sheaf_job_state_name(st->state), (unsigned long long)finished(st), (unsigned long long)st->chunks,
            (unsigned long long)st->chunks_failed, (unsigned long long)st->docs_done,
            (unsigned long long)st->docs, (unsigned long long)st->groups_done,
            st->overview_done ? "written" : "pending", (unsigned long long)st->dlq, pg->rate);
    /* No ETA while the provider keeps failing: the rate says nothing then. */
    if (st->waiting[0]) fprintf(out, ", WAITING: %.200s", st->waiting);
    else if (eta > 0) fprintf(out, ", ETA %.0f s", eta);
    if (stalled) fprintf(out, ", STALLED: no heartbeat from its submit for %.0f s",
                         (double)stalled / 1000.0);
    fputc('\n', out);
}

void progress_print_json(FILE *out, const sheaf_config *cfg, const char *job,
                         const sheaf_job_status *st, const progress *pg)
{
    uint64_t f = finished(st), in_flight = st->chunks > f ? st->chunks - f : 0;
    double per[4], eta = eta_s(st, pg);
    int known;
    double cost = job_cost(cfg, st, pg, &known, per);
    json_t *tok = json_object(), *o;
    int64_t stalled = sheaf_job_stalled_ms(st);
    for (int k = 0; k < 4; k++)
        json_object_set_new(tok, stage_names[k],
                            json_pack("{s:I,s:I}", "prompt", (json_int_t)st->stage_tokens[k][0],
                                      "completion", (json_int_t)st->stage_tokens[k][1]));
    o = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:I,s:I,s:I,s:I,s:I,"
                  "s:o,s:f,s:o,s:o,s:s}",
                  "job", job, "state", sheaf_job_state_name(st->state), "pipeline", st->pv, "docs", (json_int_t)st->docs,
                  "docs_done", (json_int_t)st->docs_done, "docs_ready", (json_int_t)st->docs_ready,
                  "chunks", (json_int_t)st->chunks, "chunks_done", (json_int_t)st->chunks_ok,
                  "chunks_failed", (json_int_t)st->chunks_failed, "chunks_in_flight",
                  (json_int_t)in_flight, "dlq", (json_int_t)st->dlq, "groups_done",
                  (json_int_t)st->groups_done, "overview", st->overview_done, "tokens_prompt",
                  (json_int_t)st->tokens_prompt, "tokens_completion",
                  (json_int_t)st->tokens_completion, "cache_hits", (json_int_t)st->cache_hits,
                  "cache_misses", (json_int_t)st->cache_misses, "tokens_saved",
                  (json_int_t)st->tokens_saved, "tokens_by_stage", tok, "chunks_per_s", pg->rate,
                  "eta_s", eta >= 0 ? json_real(eta) : json_null(),
                  "cost", known ? json_real(cost) : json_null(), "currency", cfg->cost_currency);
    if (st->error[0]) json_object_set_new(o, "error", json_string(st->error));
    /* stalled_s: seconds without a heartbeat from a producing job's submit
     * (it died); null while it beats or once it is done producing. */
    json_object_set_new(o, "stalled_s", stalled ? json_real((double)stalled / 1000.0) : json_null());
    /* waiting: why chunks are being retried (the provider keeps failing). */
    json_object_set_new(o, "waiting", st->waiting[0] ? json_string(st->waiting) : json_null());
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) fprintf(out, "%s\n", s);
    free(s);
    json_decref(o);
}
