/* doc.c - a ready document's result: combine (progressive when over
 * budget), refinement chain, record merging, or the map result itself.
 *
 * The partial results are read ordered by chunk index (never by arrival, so
 * one worker or twenty give the same output).  What is computed depends on
 * the pipeline:
 *   merge      the per-batch JSON records are merged (sheaf/merge.h) into
 *              "records", one per merge key, with the pages of each value;
 *   combine    the map results are reduced with the combine stage (every
 *              progressive level kept in "levels"); a one-chunk document
 *              takes its map result as is;
 *   neither    batch items: the map result is the document result ("data"
 *              holds the parsed answer with a schema);
 * then, with refinement, critique -> refine rounds on the summary, every
 * version and critique kept.  The critique's "partials" are the inputs of
 * the final combine call (the map results when one call took them all, else
 * the last progressive level), so they fit the window as that call did.  A
 * document whose chunks all failed gets a result carrying the errors and no
 * LLM call.  The result is recorded once (Lua, first write wins) and written
 * to the outputs once (entry_record); an entry redone after its result was
 * stored makes no call.
 *
 * The steps, each a callback on the loop:
 *   PRIOR (entry.c) -> READ (chunk count, metadata, partials) -> COMBINE
 *   (reduce.c, maybe in levels) -> CRITIQUE -> REFINE -> ... (refine_rounds)
 *   -> RECORD (entry.c) -> done */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"
#include "sheaf/jschema.h"
#include "sheaf/log.h"
#include "sheaf/merge.h"
#include "sheaf/util.h"

typedef struct doc_work {
    json_t *meta;            /* as registered: the result's "meta" */
    json_t *meta_text;       /* the same, every value as text: meta.<key> */
    json_t **recs;           /* parsed partial records (NULL for failed ones) */
    uint32_t n, n_ok;
    char **texts;            /* the ok partials' texts, in chunk order */
    json_t *failed;          /* [{idx, error}] of the failed chunks */
    json_t *rec;             /* what the pattern adds to the result */
    stage_result res;
    /* The refinement chain. */
    rvars v;
    char *partials;          /* the final combine call's inputs, joined */
    char *draft, *critique;
    char round[16], chunks[16];
    int k;
    json_t *versions, *critiques;
} doc_work;

static void doc_clear(rentry *e)
{
    doc_work *w = e->work;
    if (!w) return;
    for (uint32_t i = 0; w->recs && i < w->n; i++) json_decref(w->recs[i]);
    for (uint32_t i = 0; w->texts && i < w->n_ok; i++) free(w->texts[i]);
    free(w->recs);
    free(w->texts);
    stage_result_clear(&w->res);
    json_decref(w->rec);
    json_decref(w->meta);
    json_decref(w->meta_text);
    json_decref(w->failed);
    json_decref(w->versions);
    json_decref(w->critiques);
    free(w->partials);
    free(w->draft);
    free(w->critique);
    free(w);
    e->work = NULL;
}

/* Reads the partials: ok ones into w->recs/texts, failures into "failed". */
static void read_partials(doc_work *w, sheaf_partial *parts)
{
    for (uint32_t i = 0; i < w->n; i++) {
        json_t *pj = parts[i].json ? json_loads(parts[i].json, 0, NULL) : NULL;
        char *text = parts[i].ok == 1 ? sheaf_pipeline_result_text(pj) : NULL;
        if (text) {
            w->recs[i] = pj;
            w->texts[w->n_ok++] = text;
            continue;
        }
        const char *err = json_string_value(json_object_get(pj, "error"));
        json_array_append_new(w->failed, json_pack("{s:i,s:s}", "idx", (int)i, "error",
                                                   err ? err : "no result recorded"));
        json_decref(pj);
    }
}

static void set_error(doc_work *w, const char *msg)
{
    if (!w->res.error) w->res.error = strdup(msg);
}

/* Page-batch extraction: merges the records of the batches, in page order. */
static void merge_records(rentry *e, doc_work *w)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    json_t *batches = json_array();
    sheaf_merge_spec spec = {json_string_value(json_object_get(e->p->merge, "key")),
                             json_object_get(e->p->merge, "rules")};
    for (uint32_t i = 0; i < w->n; i++) {
        json_t *data = json_object_get(w->recs[i], "data");
        json_t *pages = json_object_get(w->recs[i], "pages");
        if (!w->recs[i] || !json_is_object(data)) continue;
        if (!json_is_array(pages) || json_integer_value(json_array_get(pages, 0)) < 1)
            pages = json_pack("[i,i]", (int)i + 1, (int)i + 1); /* no pages: chunk numbers */
        else
            json_incref(pages);
        json_array_append_new(batches, json_pack("{s:o,s:O}", "pages", pages, "data", data));
    }
    json_t *records = sheaf_merge_records(&spec, batches, errstr, sizeof(errstr));
    if (records) {
        json_object_set_new(w->rec, "records", records);
    } else {
        char msg[SHEAF_ERRSTR_SIZE + 16];
        snprintf(msg, sizeof(msg), "merge: %s", errstr);
        set_error(w, msg);
    }
    json_decref(batches);
}

/* texts (a JSON array of strings, or w->texts when NULL) joined with
 * blank lines; malloc'd, NULL when out of memory. */
static char *join_partials(const doc_work *w, const json_t *texts)
{
    size_t n = texts ? json_array_size(texts) : w->n_ok;
    sheaf_buf b;
    sheaf_buf_init(&b, (size_t)64 << 20);
    for (size_t i = 0; i < n; i++) {
        if (i) sheaf_buf_appends(&b, "\n\n");
        sheaf_buf_appends(&b, texts ? json_string_value(json_array_get(texts, i)) : w->texts[i]);
    }
    return b.data ? b.data : strdup("");
}

/* ---- the end: the result line, stored and written out ---- */

static void on_written(rentry *e, sheaf_store_outcome stored)
{
    doc_work *w = e->work;
    reducer *r = e->r;
    if (stored >= SHEAF_STORE_NEW) {
        /* Only a result this entry stored is its to count. */
        r->n_docs++;
        sheaf_metric_inc(r->docs);
        if (w && w->res.error)
            sheaf_warn("reducer", "job %s doc %s: done with error: %s", e->job, e->item,
                       w->res.error);
        else
            sheaf_info("reducer", "job %s doc %s: reduced %u chunk(s)", e->job, e->item,
                       w ? w->n : 0);
        if (stored == SHEAF_STORE_NEW_OVERVIEW)
            sheaf_info("reducer", "job %s: every document done, overview queued", e->job);
    }
    entry_finish(e, ENTRY_DONE);
}

/* The result line: doc, summary, chunks, chunks_failed, failed_chunks,
 * error, meta, then what the pattern adds (data, records, levels,
 * versions, critiques). */
static void record(rentry *e)
{
    doc_work *w = e->work;
    json_t *out = json_object();
    const char *key;
    json_t *val;
    json_object_set_new(out, "doc", json_string(e->item));
    json_object_set_new(out, "summary", w->res.text && !w->res.error ? json_string(w->res.text)
                                                                     : json_null());
    json_object_set_new(out, "chunks", json_integer(w->n));
    json_object_set_new(out, "chunks_failed", json_integer((json_int_t)(w->n - w->n_ok)));
    if (json_array_size(w->failed)) json_object_set(out, "failed_chunks", w->failed);
    if (w->res.error) json_object_set_new(out, "error", json_string(w->res.error));
    json_object_set_new(out, "meta", w->meta ? json_incref(w->meta) : json_object());
    json_object_foreach(w->rec, key, val) json_object_set(out, key, val);
    char *s = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(out);
    if (!s) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    entry_record(e, SHEAF_ITEM_DOC, e->item, s, &w->res.usage, 0, on_written);
    free(s);
}

/* ---- the refinement chain: critique -> refine, refine_rounds times ---- */

static void critique_next(rentry *e);

static void add_usage(doc_work *w, const stage_result *res)
{
    w->res.usage.prompt_tokens += res->usage.prompt_tokens;
    w->res.usage.completion_tokens += res->usage.completion_tokens;
}

/* The chain ends: its last draft is the summary, with every version and
 * critique (a failed call leaves its error beside them). */
static void refine_end(rentry *e)
{
    doc_work *w = e->work;
    if (w->draft) {
        free(w->res.text);
        w->res.text = w->draft;
        w->draft = NULL;
        json_object_set(w->rec, "versions", w->versions);
        json_object_set(w->rec, "critiques", w->critiques);
    }
    record(e);
}

/* A call of the chain is in: its tokens count; 1 when it answered, else
 * the entry or the chain ended here. */
static int chain_answered(rentry *e, sheaf_err err, const stage_result *res)
{
    doc_work *w = e->work;
    add_usage(w, res);
    if (err != SHEAF_OK) {
        entry_finish(e, entry_from(err));
        return 0;
    }
    if (res->error) {
        set_error(w, res->error);
        refine_end(e);
        return 0;
    }
    return 1;
}

static void on_refined(rentry *e, void *ud, sheaf_err err, stage_result *res, json_t *levels)
{
    (void)ud;
    doc_work *w = e->work;
    (void)levels;
    if (!chain_answered(e, err, res)) return;
    free(w->draft);
    w->draft = res->text; /* taken */
    res->text = NULL;
    json_array_append_new(w->versions, json_string(w->draft));
    critique_next(e);
}

static void on_critique(rentry *e, void *ud, sheaf_err err, stage_result *res, json_t *levels)
{
    (void)ud;
    doc_work *w = e->work;
    (void)levels;
    if (!chain_answered(e, err, res)) return;
    json_array_append_new(w->critiques, json_string(res->text));
    if (strstr(res->text, e->p->refine_stop)) {
        refine_end(e);
        return;
    }
    free(w->critique);
    w->critique = res->text; /* taken */
    res->text = NULL;
    rvars_set(&w->v, "critique", w->critique);
    reduce_call(e, "refine", &e->p->refine, &w->v, on_refined, NULL);
}

static void critique_next(rentry *e)
{
    doc_work *w = e->work;
    if (++w->k > e->p->refine_rounds) {
        refine_end(e);
        return;
    }
    snprintf(w->round, sizeof(w->round), "%d", w->k);
    rvars_set(&w->v, "round", w->round);
    rvars_set(&w->v, "draft", w->draft);
    reduce_call(e, "critique", &e->p->critique, &w->v, on_critique, NULL);
}

/* Starts the chain on the summary; partials are the final combine call's
 * inputs. */
static void refine_start(rentry *e, const json_t *top)
{
    doc_work *w = e->work;
    w->partials = join_partials(w, top);
    w->draft = strdup(w->res.text);
    w->versions = json_array();
    w->critiques = json_array();
    if (!w->partials || !w->draft) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    w->v = (rvars){.meta = w->meta_text};
    rvars_set(&w->v, "job_id", e->job);
    rvars_set(&w->v, "doc_id", e->item);
    rvars_set(&w->v, "partials", w->partials);
    json_array_append_new(w->versions, json_string(w->draft));
    critique_next(e);
}

/* ---- combine ---- */

static void combined(rentry *e, const json_t *top)
{
    doc_work *w = e->work;
    if (w->res.text && !w->res.error && e->p->refine_rounds) refine_start(e, top);
    else record(e);
}

static void on_combined(rentry *e, void *ud, sheaf_err err, stage_result *res, json_t *levels)
{
    (void)ud;
    doc_work *w = e->work;
    json_t *top = NULL;
    if (err != SHEAF_OK) {
        entry_finish(e, entry_from(err));
        return;
    }
    w->res = *res; /* taken */
    memset(res, 0, sizeof(*res));
    if (json_array_size(levels)) {
        json_object_set(w->rec, "levels", levels);
        top = json_array_get(levels, json_array_size(levels) - 1);
    }
    combined(e, top);
}

/* Computes the result text (and extras) from the ok partials. */
static void compute(rentry *e)
{
    doc_work *w = e->work;
    const sheaf_pipeline *p = e->p;
    if (w->n_ok == 0) {
        set_error(w, "every chunk of the document failed");
        record(e);
        return;
    }
    if (p->merge) {
        merge_records(e, w);
        record(e);
        return;
    }
    if (w->n == 1 || !p->combine.present) {
        /* One chunk, or batch items: the map result is the result. */
        if (w->n == 1) {
            json_t *data = json_object_get(w->recs[0], "data");
            if (data) json_object_set(w->rec, "data", data);
            w->res.text = strdup(w->texts[0]);
        } else {
            w->res.text = join_partials(w, NULL);
        }
        combined(e, NULL);
        return;
    }
    /* The reduction copies v, not the strings: they live in w. */
    rvars v = {.meta = w->meta_text};
    snprintf(w->chunks, sizeof(w->chunks), "%u", w->n);
    rvars_set(&v, "job_id", e->job);
    rvars_set(&v, "doc_id", e->item);
    rvars_set(&v, "chunk_count", w->chunks);
    reduce_run(e, "combine", &p->combine, sheaf_pipeline_combine_budget(p), &v, "partials",
               w->texts, w->n_ok, on_combined, NULL);
}

/* ---- read ---- */

static void doc_read(rentry *e);

static void on_read(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    doc_work *w;
    if (!entry_back(e)) return;
    if (rep->err == SHEAF_ERR_NOT_FOUND) {
        sheaf_error("reducer", "job %s doc %s: %s", e->job, e->item, rep->errstr);
        entry_finish(e, ENTRY_DONE);
        return;
    }
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "reading a document's partial results", rep->errstr, doc_read);
        return;
    }
    entry_redis_ok(e);
    if (!(w = e->work = calloc(1, sizeof(*w)))) goto nomem;
    w->n = rep->doc->n;
    w->rec = json_object();
    w->failed = json_array();
    w->meta = json_loads(rep->doc->meta ? rep->doc->meta : "{}", 0, NULL);
    /* meta.<key> renders as the worker renders it (sheaf_json_text). */
    if (w->meta && (!(w->meta_text = json_deep_copy(w->meta)) ||
                    sheaf_json_object_texts(w->meta_text) != 0))
        goto nomem;
    w->recs = calloc(w->n ? w->n : 1, sizeof(*w->recs));
    w->texts = calloc(w->n ? w->n : 1, sizeof(*w->texts));
    if (!w->recs || !w->texts || !w->rec || !w->failed) goto nomem;
    read_partials(w, rep->doc->parts);
    compute(e);
    return;
nomem:
    sheaf_error("reducer", "job %s doc %s: out of memory", e->job, e->item);
    entry_finish(e, ENTRY_RETRY);
}

static void doc_read(rentry *e)
{
    entry_sent(e);
    sheaf_state_doc_read_async(e->r->rt->redis, e->job, e->item, on_read, e);
}

static void doc_start(rentry *e)
{
    entry_prior(e, SHEAF_ITEM_DOC, e->item, doc_read, on_written);
}

const rkind reducer_kind_doc = {"doc", doc_start, doc_clear};
