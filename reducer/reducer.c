/* reducer.c - sheaf-reducer: the combine and overview stages.
 *
 * Work arrives through each active job's Redis stream sheaf:{J}:ready, read
 * with a consumer group (reducer.group) so any number of reducers share it.
 * An entry {type=doc, doc=D} means every chunk of D has a recorded result:
 * the reducer reads the partial results ordered by chunk index (never by
 * arrival, so one worker or twenty give the same output), runs the combine
 * prompt, and records the document result once (Lua).  The last document
 * enqueues {type=overview}; whoever reads it runs the overview over the
 * document results in submit order and marks the job done.
 *
 * An entry is acknowledged (XACK) only after its result is stored.  Entries
 * left pending by a reducer that died are taken over with XAUTOCLAIM once
 * idle for reducer.claim_idle_ms; running them twice is harmless because
 * results are recorded first-write-wins and the LLM is deterministic for
 * the same input at temperature 0.
 *
 * A document whose chunk results are all failures gets a result carrying
 * the errors and no LLM call; a one-chunk document takes its map result as
 * its summary (no combine call needed). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sheaf/buf.h"
#include "sheaf/llm_async.h"
#include "sheaf/log.h"
#include "sheaf/pipeline.h"
#include "sheaf/program.h"
#include "sheaf/ratelimit.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

#define MAX_JOBS 256
#define PROMPT_CAP ((size_t)64 << 20)

typedef struct reducer {
    sheaf_config cfg;
    sheaf_redis *redis;
    sheaf_ratelimit *limit;      /* fleet-wide, shared with the workers; NULL = none */
    sheaf_llm_async *llm;        /* same engine as the workers: retries, breaker, limiter */
    char consumer[128];
    FILE *out;                   /* reducer.output, or NULL */
    char *jobs[MAX_JOBS];        /* active jobs, refreshed every second */
    size_t n_jobs;
    int64_t jobs_refreshed_ms, claimed_ms;
    unsigned long docs, overviews;
} reducer;

typedef enum { ENTRY_DONE, ENTRY_RETRY, ENTRY_STOPPED } entry_outcome;

static const char usage_text[] =
            "usage: sheaf-reducer [-c FILE] [-X key=value ...]\n"
            "  Combines each ready document's partial results and writes the\n"
            "  overview of each finished job.\n"
            "  -c, --config FILE   configuration file (default: $SHEAF_CONFIG)\n"
            "  -X key=value        set a configuration key (see --help-config)\n"
            "      --help-config   list every configuration key\n";

/* ---- LLM calls ---- */

/* ---- template variables ---- */

typedef struct stage_vars {
    const char *job, *doc, *chunk_count, *partials, *doc_count, *results;
    json_t *meta;
} stage_vars;

static const char *stage_var(const char *name, size_t len, void *ud, size_t *out_len)
{
    stage_vars *v = ud;
    const char *s = NULL;
#define IS(lit) (len == sizeof(lit) - 1 && memcmp(name, lit, len) == 0)
    if (IS("job_id")) s = v->job;
    else if (IS("doc_id")) s = v->doc;
    else if (IS("chunk_count")) s = v->chunk_count;
    else if (IS("partials")) s = v->partials;
    else if (IS("doc_count")) s = v->doc_count;
    else if (IS("results")) s = v->results;
    else if (len > 5 && memcmp(name, "meta.", 5) == 0 && v->meta) {
        char key[256];
        if (len - 5 >= sizeof(key)) return NULL;
        memcpy(key, name + 5, len - 5);
        key[len - 5] = '\0';
        s = json_string_value(json_object_get(v->meta, key));
        if (!s) s = "";
    }
#undef IS
    if (s) *out_len = strlen(s);
    return s;
}

/* One reducer call waited for by run_stage. */
typedef struct stage_call {
    int done;
    sheaf_err err;
    char *text;
    sheaf_llm_usage usage;
    char errstr[SHEAF_ERRSTR_SIZE];
} stage_call;

static void stage_done(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr)
{
    stage_call *sc = ud;
    sc->done = 1;
    sc->err = err;
    snprintf(sc->errstr, sizeof(sc->errstr), "%s", errstr);
    if (err == SHEAF_OK) {
        sc->text = res->content; /* taken from the engine */
        res->content = NULL;
        sc->usage = res->usage;
    }
}

/* Renders one stage's prompts with v and calls the LLM.  Returns
 * SHEAF_ERR_STOPPED on shutdown (nothing decided), else SHEAF_OK with
 * either *text (the answer) or *error (why there is none) malloc'd. */
static sheaf_err run_stage(reducer *r, const char *name, const sheaf_stage *st, stage_vars *v,
                           char **text, sheaf_llm_usage *usage, char **error)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", msg[SHEAF_ERRSTR_SIZE + 64];
    sheaf_buf system, user;
    sheaf_llm_message msgs[2];
    size_t n = 0;
    sheaf_err err = SHEAF_OK;

    sheaf_buf_init(&system, PROMPT_CAP);
    sheaf_buf_init(&user, PROMPT_CAP);
    if (sheaf_prompt_render(st->system, stage_var, v, &system, errstr, sizeof(errstr)) ||
        sheaf_prompt_render(st->user, stage_var, v, &user, errstr, sizeof(errstr))) {
        snprintf(msg, sizeof(msg), "%s prompt: %s", name, errstr);
        *error = strdup(msg);
        goto out;
    }
    if (system.len) msgs[n++] = (sheaf_llm_message){"system", system.data};
    msgs[n++] = (sheaf_llm_message){"user", user.data};
    sheaf_llm_request req = {.model = st->model,
                             .temperature = st->temperature,
                             .max_tokens = st->max_tokens,
                             .messages = msgs,
                             .n_messages = n};
    stage_call sc;
    memset(&sc, 0, sizeof(sc));
    uint64_t est = (uint64_t)sheaf_estimate_tokens(system.data ? system.data : "", system.len) +
                   sheaf_estimate_tokens(user.data, user.len) +
                   (uint64_t)(st->max_tokens > 0 ? st->max_tokens : 0);
    if (sheaf_llm_async_submit(r->llm, &req, est > UINT32_MAX ? UINT32_MAX : (uint32_t)est,
                               stage_done, &sc) != SHEAF_OK) {
        *error = strdup("out of memory submitting the call");
        goto out;
    }
    while (!sc.done) {
        if (sheaf_stop) sheaf_llm_async_abort_all(r->llm);
        sheaf_llm_async_run(r->llm, 10);
    }
    err = sc.err;
    if (err == SHEAF_OK) {
        *text = sc.text; /* ownership moves to the caller */
        *usage = sc.usage;
    } else if (err == SHEAF_ERR_LLM_RETRY) {
        /* Transient (429 storm, 5xx, timeouts) even after every attempt:
         * not the document's fault, so nothing is recorded; the entry stays
         * pending and is claimed again after reducer.claim_idle_ms. */
        sheaf_warn("reducer", "%s call failed, will retry later: %s", name, sc.errstr);
    } else if (err != SHEAF_ERR_STOPPED) {
        snprintf(msg, sizeof(msg), "%s call failed: %s", name, sc.errstr);
        *error = strdup(msg);
        err = SHEAF_OK;
    }
out:
    sheaf_buf_free(&system);
    sheaf_buf_free(&user);
    return err;
}

static sheaf_pipeline *job_pipeline(reducer *r, const char *job, char *errstr, size_t errlen,
                                    sheaf_err *err)
{
    char kjob[512], *json = NULL;
    sheaf_pipeline *p = NULL;
    sheaf_key(kjob, sizeof(kjob), job, "job");
    redisReply *rep = sheaf_redis_cmd(r->redis, errstr, errlen, "HGET %s pv", kjob);
    if (!rep) {
        *err = SHEAF_ERR_REDIS;
        return NULL;
    }
    if (rep->type != REDIS_REPLY_STRING) {
        snprintf(errstr, errlen, "job %s has no pipeline version", job);
        freeReplyObject(rep);
        *err = SHEAF_ERR_NOT_FOUND;
        return NULL;
    }
    *err = sheaf_state_pipeline_get(r->redis, rep->str, &json, errstr, errlen);
    freeReplyObject(rep);
    if (*err != SHEAF_OK) return NULL;
    p = sheaf_pipeline_from_json(json, strlen(json), errstr, errlen);
    free(json);
    *err = p ? SHEAF_OK : SHEAF_ERR_INVALID;
    return p;
}

static void emit(reducer *r, const char *job, const char *kind, const char *json)
{
    if (!r->out) return;
    /* One line per result: {"job":J,"kind":"doc"|"overview","result":{...}} */
    fprintf(r->out, "{\"job\":\"%s\",\"kind\":\"%s\",\"result\":%s}\n", job, kind, json);
    fflush(r->out);
}

/* ---- combine one document ---- */

static entry_outcome combine_doc(reducer *r, const char *job, const char *doc)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", nbuf[16];
    sheaf_partial *parts = NULL;
    uint32_t n = 0, n_ok = 0;
    char *meta_json = NULL, *summary = NULL, *result = NULL;
    json_t *meta = NULL, *failed = json_array(), *rec = NULL;
    sheaf_pipeline *p = NULL;
    sheaf_buf partials;
    sheaf_llm_usage usage = {0, 0};
    entry_outcome out = ENTRY_RETRY;
    const char *last_ok = NULL;
    char *error = NULL;
    sheaf_err err;

    sheaf_buf_init(&partials, PROMPT_CAP);

    if ((err = sheaf_state_doc_info(r->redis, job, doc, &meta_json, &n, errstr,
                                    sizeof(errstr))) != SHEAF_OK ||
        (err = sheaf_state_doc_partials(r->redis, job, doc, &n, &parts, errstr,
                                        sizeof(errstr))) != SHEAF_OK) {
        sheaf_error("reducer", "job %s doc %s: %s", job, doc, errstr);
        out = err == SHEAF_ERR_NOT_FOUND ? ENTRY_DONE : ENTRY_RETRY;
        goto done;
    }
    meta = json_loads(meta_json, 0, NULL);
    for (uint32_t i = 0; i < n; i++) {
        json_t *pj = parts[i].json ? json_loads(parts[i].json, 0, NULL) : NULL;
        const char *text = json_string_value(json_object_get(pj, "text"));
        if (parts[i].ok == 1 && text) {
            if (partials.len) sheaf_buf_appends(&partials, "\n\n");
            if (sheaf_buf_appends(&partials, text) != SHEAF_OK) {
                error = strdup("partial results exceed the combine prompt cap");
            }
            last_ok = parts[i].json;
            n_ok++;
        } else {
            const char *e = json_string_value(json_object_get(pj, "error"));
            json_array_append_new(failed, json_pack("{s:i,s:s}", "idx", (int)i, "error",
                                                    e ? e : "no result recorded"));
        }
        json_decref(pj);
    }

    if (!error && n_ok == 0) {
        error = strdup("every chunk of the document failed");
    } else if (!error && n == 1) {
        /* One chunk: the map result is the document summary. */
        json_t *pj = json_loads(last_ok, 0, NULL);
        summary = strdup(json_string_value(json_object_get(pj, "text")));
        json_decref(pj);
    } else if (!error) {
        p = job_pipeline(r, job, errstr, sizeof(errstr), &err);
        if (!p) {
            sheaf_error("reducer", "job %s: %s", job, errstr);
            out = err == SHEAF_ERR_REDIS ? ENTRY_RETRY : ENTRY_DONE;
            goto done;
        }
        snprintf(nbuf, sizeof(nbuf), "%u", n);
        stage_vars v = {.job = job, .doc = doc, .chunk_count = nbuf, .partials = partials.data,
                        .meta = meta};
        err = run_stage(r, "combine", &p->combine, &v, &summary, &usage, &error);
        if (err != SHEAF_OK) {
            out = err == SHEAF_ERR_STOPPED ? ENTRY_STOPPED : ENTRY_RETRY;
            goto done;
        }
    }

    rec = json_object();
    json_object_set_new(rec, "doc", json_string(doc));
    json_object_set_new(rec, "summary", summary ? json_string(summary) : json_null());
    json_object_set_new(rec, "chunks", json_integer(n));
    json_object_set_new(rec, "chunks_failed", json_integer((json_int_t)(n - n_ok)));
    if (json_array_size(failed)) json_object_set(rec, "failed_chunks", failed);
    if (error) json_object_set_new(rec, "error", json_string(error));
    json_object_set_new(rec, "meta", meta ? json_incref(meta) : json_object());
    result = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!result) goto done;

    int overview_queued = 0;
    if (sheaf_state_doc_result_store(r->redis, job, doc, result, usage.prompt_tokens,
                                     usage.completion_tokens, &overview_queued, errstr,
                                     sizeof(errstr)) != SHEAF_OK) {
        sheaf_error("reducer", "job %s doc %s: cannot store result (will retry): %s", job, doc,
                    errstr);
        goto done;
    }
    emit(r, job, "doc", result);
    r->docs++;
    if (error)
        sheaf_warn("reducer", "job %s doc %s: done with error: %s", job, doc, error);
    else
        sheaf_info("reducer", "job %s doc %s: combined %u chunk(s)", job, doc, n);
    if (overview_queued) sheaf_info("reducer", "job %s: every document done, overview queued", job);
    out = ENTRY_DONE;

done:
    free(error);
    free(result);
    free(summary);
    free(meta_json);
    json_decref(rec);
    json_decref(meta);
    json_decref(failed);
    sheaf_pipeline_destroy(p);
    sheaf_partials_free(parts, n);
    sheaf_buf_free(&partials);
    return out;
}

/* ---- the overview of a job ---- */

static entry_outcome overview(reducer *r, const char *job)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", kdocs[512], kres[512], nbuf[24];
    sheaf_buf results;
    sheaf_pipeline *p = NULL;
    redisReply *ids = NULL;
    char *text = NULL, *json = NULL, *error = NULL;
    sheaf_llm_usage usage = {0, 0};
    entry_outcome out = ENTRY_RETRY;
    size_t failed_docs = 0;
    json_t *rec = NULL;
    sheaf_err err;

    sheaf_buf_init(&results, PROMPT_CAP);
    sheaf_key(kdocs, sizeof(kdocs), job, "docs");
    sheaf_key(kres, sizeof(kres), job, "results");

    p = job_pipeline(r, job, errstr, sizeof(errstr), &err);
    if (!p) {
        sheaf_error("reducer", "job %s: %s", job, errstr);
        out = err == SHEAF_ERR_REDIS ? ENTRY_RETRY : ENTRY_DONE;
        goto done;
    }
    ids = sheaf_redis_cmd(r->redis, errstr, sizeof(errstr), "LRANGE %s 0 -1", kdocs);
    if (!ids) goto done;
    /* Document results in submit order, fetched one at a time to keep
     * replies small. */
    for (size_t i = 0; i < ids->elements; i++) {
        const char *doc = ids->element[i]->str;
        redisReply *rep = sheaf_redis_cmd(r->redis, errstr, sizeof(errstr), "HGET %s %s", kres,
                                          doc);
        if (!rep) goto done;
        json_t *d = rep->type == REDIS_REPLY_STRING ? json_loads(rep->str, 0, NULL) : NULL;
        const char *s = json_string_value(json_object_get(d, "summary"));
        if (s) {
            if (results.len) sheaf_buf_appends(&results, "\n\n");
            if (sheaf_buf_appendf(&results, "[%s]\n%s", doc, s) != SHEAF_OK && !error)
                error = strdup("document results exceed the overview prompt cap");
        } else {
            failed_docs++;
        }
        json_decref(d);
        freeReplyObject(rep);
    }
    snprintf(nbuf, sizeof(nbuf), "%zu", ids->elements);
    if (!error && results.len == 0) error = strdup("no document has a summary");
    if (!error) {
        stage_vars v = {.job = job, .doc_count = nbuf, .results = results.data};
        err = run_stage(r, "overview", &p->overview, &v, &text, &usage, &error);
        if (err != SHEAF_OK) {
            out = err == SHEAF_ERR_STOPPED ? ENTRY_STOPPED : ENTRY_RETRY;
            goto done;
        }
    }
    rec = json_object();
    json_object_set_new(rec, "overview", text ? json_string(text) : json_null());
    json_object_set_new(rec, "docs", json_integer((json_int_t)ids->elements));
    json_object_set_new(rec, "docs_failed", json_integer((json_int_t)failed_docs));
    if (error) json_object_set_new(rec, "error", json_string(error));
    json = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!json) goto done;
    if (sheaf_state_overview_store(r->redis, job, json, usage.prompt_tokens,
                                   usage.completion_tokens, errstr, sizeof(errstr)) != SHEAF_OK) {
        sheaf_error("reducer", "job %s: cannot store overview (will retry): %s", job, errstr);
        goto done;
    }
    emit(r, job, "overview", json);
    r->overviews++;
    sheaf_info("reducer", "job %s: overview written, job done", job);
    out = ENTRY_DONE;

done:
    if (out == ENTRY_RETRY && errstr[0]) sheaf_error("reducer", "job %s overview: %s", job, errstr);
    free(error);
    free(text);
    free(json);
    json_decref(rec);
    if (ids) freeReplyObject(ids);
    sheaf_pipeline_destroy(p);
    sheaf_buf_free(&results);
    return out;
}

/* ---- stream plumbing ---- */

/* Handles one stream entry (fields as a flat array of name/value). */
static entry_outcome handle_entry(reducer *r, const char *job, redisReply *fields)
{
    const char *type = NULL, *doc = NULL;
    for (size_t i = 0; fields && i + 1 < fields->elements; i += 2) {
        if (strcmp(fields->element[i]->str, "type") == 0) type = fields->element[i + 1]->str;
        else if (strcmp(fields->element[i]->str, "doc") == 0) doc = fields->element[i + 1]->str;
    }
    if (type && strcmp(type, "doc") == 0 && doc) return combine_doc(r, job, doc);
    if (type && strcmp(type, "overview") == 0) return overview(r, job);
    sheaf_warn("reducer", "job %s: ignoring unknown ready entry", job);
    return ENTRY_DONE;
}

static void ack(reducer *r, const char *stream, const char *id)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    redisReply *rep = sheaf_redis_cmd(r->redis, errstr, sizeof(errstr), "XACK %s %s %s", stream,
                                      r->cfg.reducer_group, id);
    if (rep) freeReplyObject(rep);
    else sheaf_warn("reducer", "XACK %s %s: %s (the entry will be redone)", stream, id, errstr);
}

/* Processes entries of one stream from an XREADGROUP/XAUTOCLAIM array. */
static void process_entries(reducer *r, const char *job, const char *stream, redisReply *entries)
{
    for (size_t i = 0; entries && i < entries->elements && !sheaf_stop; i++) {
        redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) continue;
        const char *id = e->element[0]->str;
        /* A claimed entry may have been deleted: fields are nil. */
        if (e->element[1]->type != REDIS_REPLY_ARRAY) {
            ack(r, stream, id);
            continue;
        }
        if (handle_entry(r, job, e->element[1]) == ENTRY_DONE) ack(r, stream, id);
    }
}

static void refresh_jobs(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    redisReply *rep = sheaf_redis_cmd(r->redis, errstr, sizeof(errstr), "SMEMBERS sheaf:jobs:active");
    if (!rep) {
        sheaf_error("reducer", "cannot list active jobs: %s", errstr);
        return;
    }
    for (size_t i = 0; i < r->n_jobs; i++) free(r->jobs[i]);
    r->n_jobs = 0;
    for (size_t i = 0; i < rep->elements && r->n_jobs < MAX_JOBS; i++) {
        const char *job = rep->element[i]->str;
        char kready[512];
        sheaf_key(kready, sizeof(kready), job, "ready");
        /* Creating the group is idempotent: BUSYGROUP means it exists. */
        redisReply *g = sheaf_redis_cmd(r->redis, errstr, sizeof(errstr),
                                        "XGROUP CREATE %s %s 0 MKSTREAM", kready,
                                        r->cfg.reducer_group);
        if (g) freeReplyObject(g);
        r->jobs[r->n_jobs++] = strdup(job);
    }
    if (rep->elements > MAX_JOBS)
        sheaf_warn("reducer", "%zu active jobs; serving %d per round", rep->elements, MAX_JOBS);
    freeReplyObject(rep);
}

/* Takes over entries pending longer than reducer.claim_idle_ms (their
 * reducer died or hangs) and processes them. */
static void claim_stale(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE], kready[512], idle[24];
    snprintf(idle, sizeof(idle), "%d", r->cfg.reducer_claim_idle_ms);
    for (size_t j = 0; j < r->n_jobs && !sheaf_stop; j++) {
        sheaf_key(kready, sizeof(kready), r->jobs[j], "ready");
        redisReply *rep = sheaf_redis_cmd(r->redis, errstr, sizeof(errstr),
                                          "XAUTOCLAIM %s %s %s %s 0-0 COUNT 32", kready,
                                          r->cfg.reducer_group, r->consumer, idle);
        if (!rep) continue;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 2 &&
            rep->element[1]->elements > 0) {
            sheaf_info("reducer", "job %s: claimed %zu stale entr%s", r->jobs[j],
                       rep->element[1]->elements, rep->element[1]->elements == 1 ? "y" : "ies");
            process_entries(r, r->jobs[j], kready, rep->element[1]);
        }
        freeReplyObject(rep);
    }
}

static void read_new(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    size_t n = r->n_jobs;
    if (n == 0) {
        sheaf_sleep_ms(500);
        return;
    }
    /* XREADGROUP GROUP g c COUNT 16 BLOCK 1000 STREAMS k1..kn > .. > */
    size_t argc = 9 + 2 * n;
    const char **argv = calloc(argc, sizeof(char *));
    char **keys = calloc(n, sizeof(char *));
    if (!argv || !keys) goto out;
    argv[0] = "XREADGROUP";
    argv[1] = "GROUP";
    argv[2] = r->cfg.reducer_group;
    argv[3] = r->consumer;
    argv[4] = "COUNT";
    argv[5] = "16";
    argv[6] = "BLOCK";
    argv[7] = "1000";
    argv[8] = "STREAMS";
    argc = 9;
    for (size_t i = 0; i < n; i++) {
        keys[i] = malloc(512);
        if (!keys[i]) goto out;
        sheaf_key(keys[i], 512, r->jobs[i], "ready");
        argv[argc++] = keys[i];
    }
    for (size_t i = 0; i < n; i++) argv[argc++] = ">";
    redisReply *rep = sheaf_redis_argv(r->redis, (int)argc, argv, NULL, errstr, sizeof(errstr));
    if (!rep) {
        /* NOGROUP: a job's stream vanished; the next refresh recreates it. */
        sheaf_warn("reducer", "%s", errstr);
        sheaf_sleep_ms(500);
        goto out;
    }
    for (size_t s = 0; rep->type == REDIS_REPLY_ARRAY && s < rep->elements; s++) {
        redisReply *st = rep->element[s];
        const char *key = st->element[0]->str;
        /* key is sheaf:{JOB}:ready */
        const char *lb = strchr(key, '{'), *rb = strrchr(key, '}');
        if (!lb || !rb || rb <= lb) continue;
        char *job = sheaf_strndup(lb + 1, (size_t)(rb - lb - 1));
        process_entries(r, job, key, st->element[1]);
        free(job);
    }
    freeReplyObject(rep);
out:
    if (keys)
        for (size_t i = 0; i < n; i++) free(keys[i]);
    free(keys);
    free(argv);
}

int main(int argc, char **argv)
{
    reducer r;
    char errstr[SHEAF_ERRSTR_SIZE] = "", host[64] = "host";
    sheaf_llm_limiter limiter;
    int rc;

    memset(&r, 0, sizeof(r));
    rc = sheaf_program_start(&r.cfg, "sheaf-reducer", usage_text, argc, argv);
    if (rc >= 0) return rc;
    rc = 1;
    gethostname(host, sizeof(host) - 1);
    snprintf(r.consumer, sizeof(r.consumer), "%s-%d", host, (int)getpid());
    if (r.cfg.reducer_output && *r.cfg.reducer_output) {
        r.out = strcmp(r.cfg.reducer_output, "-") == 0 ? stdout
                                                        : fopen(r.cfg.reducer_output, "a");
        if (!r.out) {
            sheaf_error("reducer", "reducer.output %s: cannot open for appending",
                        r.cfg.reducer_output);
            goto stop;
        }
    }
    if (!(r.redis = sheaf_redis_connect(&r.cfg, errstr, sizeof(errstr))) ||
        sheaf_ratelimit_from_config(r.redis, &r.cfg, &r.limit, errstr, sizeof(errstr)) ||
        (r.limit && (sheaf_ratelimit_bind(r.limit, &limiter), 0)) ||
        !(r.llm = sheaf_llm_async_create(&r.cfg, 4, r.limit ? &limiter : NULL, errstr,
                                         sizeof(errstr)))) {
        sheaf_error("reducer", "%s", errstr);
        goto stop;
    }
    sheaf_info("reducer", "consumer %s in group %s; LLM %s", r.consumer, r.cfg.reducer_group,
               r.cfg.llm_base_url);
    while (!sheaf_stop) {
        int64_t now = sheaf_mono_ms();
        if (now - r.jobs_refreshed_ms >= 1000) {
            refresh_jobs(&r);
            r.jobs_refreshed_ms = now;
        }
        if (now - r.claimed_ms >= r.cfg.reducer_claim_idle_ms / 2) {
            claim_stale(&r);
            r.claimed_ms = now;
        }
        read_new(&r);
    }
    sheaf_info("reducer", "stopping: %lu documents combined, %lu overviews", r.docs, r.overviews);
    rc = 0;
stop:
    if (r.out && r.out != stdout) fclose(r.out);
    for (size_t i = 0; i < r.n_jobs; i++) free(r.jobs[i]);
    sheaf_llm_async_destroy(r.llm);
    sheaf_ratelimit_destroy(r.limit);
    sheaf_redis_destroy(r.redis);
    sheaf_config_clear(&r.cfg);
    return rc;
}

