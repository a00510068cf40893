/* progress.c - a job's progress for people and scripts.  See progress.h.
 *
 * Rates come from successive samples (smoothed, so one slow second does
 * not swing the ETA), or for a single `status` from the job's age.  The
 * ETA is the chunks left over the rate; the reduce stages after the last
 * chunk are not in it (they are shown as their own bars).  Cost is the
 * tokens of each stage priced with that stage's model from cost.prices;
 * a model without a price makes the cost unknown, never zero. */
#include "progress.h"

#include <stdlib.h>
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
    pg->has_groups = p->group.present;
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
    fprintf(out, "  %-12s [%s] %llu/%llu %3.0f%%%s\n", label, b, (unsigned long long)done,
            (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 0.0,
            extra);
}

const char *progress_prices(const sheaf_config *cfg, const sheaf_job_status *st,
                            const char **currency, const char **from)
{
    int own = st->prices[0] != '\0';
    if (currency) *currency = own && st->currency[0] ? st->currency : cfg->cost_currency;
    if (from) *from = own ? "job" : "config";
    return own ? st->prices : cfg->cost_prices;
}

const char *progress_state(const sheaf_job_status *st, char *buf, size_t len)
{
    uint64_t missing = st->results < st->docs ? st->docs - st->results : 0;
    if (st->state == SHEAF_JOB_DONE && (missing || !st->overview_done)) {
        snprintf(buf, len, "incomplete (done, but %llu of %llu document results%s missing: "
                 "sheaf repair)", (unsigned long long)missing, (unsigned long long)st->docs,
                 st->overview_done ? "" : " and the overview");
        return buf;
    }
    return sheaf_job_state_name(st->state);
}

/* Total cost and whether every stage with tokens had a price. */
static double job_cost(const sheaf_config *cfg, const sheaf_job_status *st, const progress *pg,
                       int *known, double per_stage[4])
{
    sheaf_price_table t;
    char e[SHEAF_ERRSTR_SIZE];
    double total = 0;
    *known = pg->have_models &&
             sheaf_price_table_parse(progress_prices(cfg, st, NULL, NULL), &t, e, sizeof(e)) ==
                 SHEAF_OK &&
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

/* "sheaf-sim (map, reduce, overview); gpt-4o (group)": each model once,
 * with the stages that use it; with t, only the models t has no price
 * for. */
static void models_text(char *out, size_t len, const progress *pg, const sheaf_price_table *t)
{
    size_t n = 0;
    out[0] = '\0';
    for (int k = 0; k < 4; k++) {
        int seen = 0, first = 1, priced = 0;
        if (!pg->models[k][0]) continue;
        for (int j = 0; j < k; j++) seen |= strcmp(pg->models[j], pg->models[k]) == 0;
        if (t) sheaf_cost_of(t, pg->models[k], 0, 0, &priced);
        if (seen || priced) continue;
        n += (size_t)snprintf(out + n, n < len ? len - n : 0, "%s%s (", n ? "; " : "",
                              pg->models[k]);
        for (int j = k; j < 4; j++) {
            if (strcmp(pg->models[j], pg->models[k]) != 0) continue;
            n += (size_t)snprintf(out + n, n < len ? len - n : 0, "%s%s", first ? "" : ", ",
                                  stage_names[j]);
            first = 0;
        }
        n += (size_t)snprintf(out + n, n < len ? len - n : 0, ")");
    }
}

static void print_full(FILE *out, const sheaf_config *cfg, const char *job,
                       const sheaf_job_status *st, const progress *pg, int64_t now_ms)
{
    char extra[160], state[192], models[512];
    double eta = eta_s(st, pg), per[4];
    int64_t end = st->finished_ms ? st->finished_ms : now_ms;
    int known;

    fprintf(out, "job %s: %s%s%s  (pipeline %s, %.1f s)\n", job, progress_state(st, state, sizeof(state)),
            st->error[0] ? ": " : "", st->error, st->pv,
            st->created_ms ? (double)(end - st->created_ms) / 1000.0 : 0.0);
    int64_t stalled = sheaf_job_stalled_ms(st);
    if (stalled)
        fprintf(out, "  %-12s no heartbeat from its submit for %.0f s: the submit was killed or "
                "lost Redis. The chunks it produced are processed; finish the job with `sheaf "
                "submit --resume %s INPUT...` (the same inputs), or end it with `sheaf cancel "
                "%s`.\n", "STALLED", (double)stalled / 1000.0, job, job);
    if (st->waiting[0])
        fprintf(out, "  %-12s the provider keeps failing; chunks are retried (llm.retry_horizon_ms), "
                "last %.0f s ago: %s\n", "WAITING", (double)st->waiting_age_ms / 1000.0,
                st->waiting);
    if (eta >= 0 && finished(st) < st->chunks)
        snprintf(extra, sizeof(extra), "  %.1f chunks/s  ETA %.0f s", pg->rate, eta);
    else
        snprintf(extra, sizeof(extra), "  %.1f chunks/s", pg->rate);
    size_t n = strlen(extra);
    if (st->chunks_failed)
        snprintf(extra + n, sizeof(extra) - n, "  (%llu failed)", (unsigned long long)st->chunks_failed);
    bar(out, "chunks", finished(st), st->chunks, extra);
    bar(out, "documents", st->docs_done, st->docs, "");
    if (pg->has_groups)
        fprintf(out, "  %-12s %llu done\n", "groups", (unsigned long long)st->groups_done);
    fprintf(out, "  %-12s %s\n", "overview", st->overview_done ? "written" : "pending");
    fprintf(out, "  %-12s %llu\n", "dead letters", (unsigned long long)st->dlq);
    models_text(models, sizeof(models), pg, NULL);
    if (models[0]) fprintf(out, "  %-12s %s\n", "models", models);
    const char *label = "tokens";
    for (int k = 0; k < 4; k++) {
        if (!st->stage_tokens[k][0] && !st->stage_tokens[k][1]) continue;
        fprintf(out, "  %-12s %-8s %llu prompt + %llu completion\n", label, stage_names[k],
                (unsigned long long)st->stage_tokens[k][0],
                (unsigned long long)st->stage_tokens[k][1]);
        label = "";
    }
    fprintf(out, "  %-12s %-8s %llu prompt + %llu completion\n", label, "total",
            (unsigned long long)st->tokens_prompt, (unsigned long long)st->tokens_completion);
    double cost = job_cost(cfg, st, pg, &known, per);
    const char *currency, *from;
    const char *prices = progress_prices(cfg, st, &currency, &from);
    if (known) {
        fprintf(out, "  %-12s %.6f %s (prices %s)\n", "cost", cost, currency,
                strcmp(from, "job") == 0 ? "stored with the job at submit" : "from cost.prices now");
    } else {
        sheaf_price_table t;
        char e[SHEAF_ERRSTR_SIZE];
        int ok = sheaf_price_table_parse(prices, &t, e, sizeof(e)) == SHEAF_OK;
        models_text(models, sizeof(models), pg, ok ? &t : NULL);
        fprintf(out, "  %-12s unknown (set cost.prices for: %s)\n", "cost",
                models[0] ? models : "the job's models");
    }
    fprintf(out, "  %-12s %llu hits, %llu misses, %llu tokens saved\n", "cache",
            (unsigned long long)st->cache_hits, (unsigned long long)st->cache_misses,
            (unsigned long long)st->tokens_saved);
}

void progress_print_full(FILE *out, const sheaf_config *cfg, const char *job,
                         const sheaf_job_status *st, progress *pg, int64_t now_ms, int redraw)
{
    char *text = NULL;
    size_t len = 0;
    FILE *m = redraw ? open_memstream(&text, &len) : NULL;
    if (!m) {
        print_full(out, cfg, job, st, pg, now_ms);
        return;
    }
    print_full(m, cfg, job, st, pg, now_ms);
    fclose(m);
    /* Back up over the previous print and overwrite it line by line, each
     * line's old tail erased (ESC[K), anything left below erased (ESC[J):
     * the screen above is never cleared. */
    if (pg->lines > 0) fprintf(out, "\r\033[%dA", pg->lines);
    int lines = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\n') {
            fputs("\033[K", out);
            lines++;
        }
        fputc(text[i], out);
    }
    fputs("\033[J", out);
    pg->lines = lines;
    free(text);
}

void progress_print_line(FILE *out, const char *job, const sheaf_job_status *st,
                         const progress *pg)
{
    double eta = eta_s(st, pg);
    int64_t stalled = sheaf_job_stalled_ms(st);
    char state[192], groups[48] = "";
    if (pg->has_groups)
        snprintf(groups, sizeof(groups), ", groups %llu", (unsigned long long)st->groups_done);
    fprintf(out, "job %s %s: chunks %llu/%llu (%llu failed), documents %llu/%llu%s, "
            "overview %s, dlq %llu, %.1f chunks/s",
            job, progress_state(st, state, sizeof(state)), (unsigned long long)finished(st),
            (unsigned long long)st->chunks, (unsigned long long)st->chunks_failed,
            (unsigned long long)st->docs_done, (unsigned long long)st->docs, groups,
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
    const char *currency, *from;
    progress_prices(cfg, st, &currency, &from);
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
                  "cost", known ? json_real(cost) : json_null(), "currency", currency);
    json_object_set_new(o, "prices_from", json_string(from));
    json_object_set_new(o, "results", json_integer((json_int_t)st->results));
    json_object_set_new(o, "complete", json_boolean(st->state == SHEAF_JOB_DONE &&
                                                    st->results >= st->docs && st->overview_done));
    if (st->error[0]) json_object_set_new(o, "error", json_string(st->error));
    /* stalled_s: seconds without a heartbeat from a producing job's submit
     * (it died); null while it beats or once it is done producing. */
    json_object_set_new(o, "stalled_s", stalled ? json_real((double)stalled / 1000.0) : json_null());
    /* waiting: why chunks are being retried (the provider keeps failing). */
    json_object_set_new(o, "waiting", st->waiting[0] ? json_string(st->waiting) : json_null());
    /* 9 significant digits: 0.00563265, not 0.0056326499999999995. */
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    if (s) fprintf(out, "%s\n", s);
    free(s);
    json_decref(o);
}
