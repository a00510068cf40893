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
 * LLM call.  The result is recorded once
 * (Lua, first write wins) and written to the outputs once (reducer_output);
 * an entry redone after its result was stored makes no call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"
#include "sheaf/jschema.h"
#include "sheaf/log.h"
#include "sheaf/merge.h"
#include "sheaf/util.h"

typedef struct doc_work {
    const char *job, *doc;
    sheaf_pipeline *p;
    json_t *meta;            /* as registered: the result's "meta" */
    json_t *meta_text;       /* the same, every value as text: meta.<key> */
    json_t **recs;           /* parsed partial records (NULL for failed ones) */
    uint32_t n, n_ok;
    char **texts;            /* the ok partials' texts, in chunk order */
    json_t *rec;             /* the result being built */
    stage_result res;
} doc_work;

/* Reads the partials: ok ones into w->recs/texts, failures into "failed". */
static void read_partials(doc_work *w, sheaf_partial *parts, json_t *failed)
{
    for (uint32_t i = 0; i < w->n; i++) {
        json_t *pj = parts[i].json ? json_loads(parts[i].json, 0, NULL) : NULL;
        char *text = parts[i].ok == 1 ? sheaf_pipeline_result_text(pj) : NULL;
        if (text) {
            w->recs[i] = pj;
            w->texts[w->n_ok++] = text;
            continue;
        }
        const char *e = json_string_value(json_object_get(pj, "error"));
        json_array_append_new(failed, json_pack("{s:i,s:s}", "idx", (int)i, "error",
                                                e ? e : "no result recorded"));
        json_decref(pj);
    }
}

static void set_error(doc_work *w, const char *msg)
{
    if (!w->res.error) w->res.error = strdup(msg);
}

/* Page-batch extraction: merges the records of the batches, in page order. */
static void merge_records(doc_work *w)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    json_t *batches = json_array();
    sheaf_merge_spec spec = {json_string_value(json_object_get(w->p->merge, "key")),
                             json_object_get(w->p->merge, "rules")};
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

/* Critique -> refine rounds on the summary. */
static sheaf_err refine_chain(reducer *r, doc_work *w, const char *partials)
{
    json_t *versions = json_array(), *critiques = json_array();
    char round[16], *draft = strdup(w->res.text);
    sheaf_err err = SHEAF_OK;
    rvars v = {.meta = w->meta_text};

    rvars_set(&v, "job_id", w->job);
    rvars_set(&v, "doc_id", w->doc);
    rvars_set(&v, "partials", partials);
    json_array_append_new(versions, json_string(draft));
    for (int k = 1; k <= w->p->refine_rounds && draft; k++) {
        stage_result crit = {0}, ref = {0};
        snprintf(round, sizeof(round), "%d", k);
        rvars_set(&v, "round", round);
        rvars_set(&v, "draft", draft);
        err = reducer_call(r, "critique", &w->p->critique, &v, &crit);
        w->res.usage.prompt_tokens += crit.usage.prompt_tokens;
        w->res.usage.completion_tokens += crit.usage.completion_tokens;
        if (err != SHEAF_OK || crit.error) {
            if (crit.error) set_error(w, crit.error);
            stage_result_clear(&crit);
            break;
        }
        json_array_append_new(critiques, json_string(crit.text));
        if (strstr(crit.text, w->p->refine_stop)) {
            stage_result_clear(&crit);
            break;
        }
        rvars_set(&v, "critique", crit.text);
        err = reducer_call(r, "refine", &w->p->refine, &v, &ref);
        stage_result_clear(&crit);
        w->res.usage.prompt_tokens += ref.usage.prompt_tokens;
        w->res.usage.completion_tokens += ref.usage.completion_tokens;
        if (err != SHEAF_OK || ref.error) {
            if (ref.error) set_error(w, ref.error);
            stage_result_clear(&ref);
            break;
        }
        free(draft);
        draft = ref.text; /* taken */
        json_array_append_new(versions, json_string(draft));
    }
    if (err == SHEAF_OK && draft) {
        free(w->res.text);
        w->res.text = draft;
        draft = NULL;
        json_object_set_new(w->rec, "versions", versions);
        json_object_set_new(w->rec, "critiques", critiques);
        versions = critiques = NULL;
    }
    free(draft);
    json_decref(versions);
    json_decref(critiques);
    return err;
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

/* Computes the result text (and extras) from the ok partials. */
static sheaf_err compute(reducer *r, doc_work *w)
{
    sheaf_err err = SHEAF_OK;
    char nbuf[16], *partials = NULL;
    json_t *top = NULL;          /* the final combine call's inputs, when progressive */

    if (w->n_ok == 0) {
        set_error(w, "every chunk of the document failed");
        return SHEAF_OK;
    }
    if (w->p->merge) {
        merge_records(w);
        return SHEAF_OK;
    }
    if (w->n == 1 || !w->p->combine.present) {
        /* One chunk, or batch items: the map result is the result. */
        if (w->n == 1) {
            json_t *data = json_object_get(w->recs[0], "data");
            if (data) json_object_set(w->rec, "data", data);
            w->res.text = strdup(w->texts[0]);
        } else {
            w->res.text = join_partials(w, NULL);
        }
    } else {
        json_t *levels = json_array();
        rvars v = {.meta = w->meta_text};
        snprintf(nbuf, sizeof(nbuf), "%u", w->n);
        rvars_set(&v, "job_id", w->job);
        rvars_set(&v, "doc_id", w->doc);
        rvars_set(&v, "chunk_count", nbuf);
        err = reducer_reduce(r, "combine", &w->p->combine, sheaf_pipeline_combine_budget(w->p),
                             &v, "partials", w->texts, w->n_ok, levels, &w->res);
        if (json_array_size(levels)) {
            json_object_set(w->rec, "levels", levels);
            top = json_incref(json_array_get(levels, json_array_size(levels) - 1));
        }
        json_decref(levels);
    }
    if (err == SHEAF_OK && w->res.text && !w->res.error && w->p->refine_rounds) {
        partials = join_partials(w, top);
        err = refine_chain(r, w, partials ? partials : "");
    }
    free(partials);
    json_decref(top);
    return err;
}

/* The result line: doc, summary, chunks, chunks_failed, failed_chunks,
 * error, meta, then what the pattern adds (data, records, levels,
 * versions, critiques). */
static char *result_json(doc_work *w, json_t *failed)
{
    json_t *out = json_object(), *extra = w->rec;
    const char *key;
    json_t *val;
    json_object_set_new(out, "doc", json_string(w->doc));
    json_object_set_new(out, "summary", w->res.text && !w->res.error ? json_string(w->res.text)
                                                                     : json_null());
    json_object_set_new(out, "chunks", json_integer(w->n));
    json_object_set_new(out, "chunks_failed", json_integer((json_int_t)(w->n - w->n_ok)));
    if (json_array_size(failed)) json_object_set(out, "failed_chunks", failed);
    if (w->res.error) json_object_set_new(out, "error", json_string(w->res.error));
    json_object_set_new(out, "meta", w->meta ? json_incref(w->meta) : json_object());
    json_object_foreach(extra, key, val) json_object_set(out, key, val);
    char *s = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(out);
    return s;
}

entry_outcome reducer_doc(reducer *r, const char *job, const char *doc)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", *meta_json = NULL, *result = NULL, *prev = NULL;
    sheaf_partial *parts = NULL;
    json_t *failed = json_array();
    entry_outcome out = ENTRY_RETRY;
    doc_work w;
    sheaf_err err;
    sheaf_store_outcome stored = SHEAF_STORE_KEPT;

    r->job = job;
    memset(&w, 0, sizeof(w));
    w.job = job;
    w.doc = doc;
    w.rec = json_object();
    if (!(w.p = reducer_job_pipeline(r, job, errstr, sizeof(errstr), &err))) {
        sheaf_error("reducer", "job %s: %s", job, errstr);
        out = err == SHEAF_ERR_REDIS ? ENTRY_RETRY : ENTRY_DONE;
        goto done;
    }
    /* Stored already (the entry is redone after a crash, or came twice):
     * no call, only the outputs if nobody wrote them yet. */
    if (sheaf_state_result_get(r->redis, job, SHEAF_ITEM_DOC, doc, &prev, errstr,
                               sizeof(errstr)) != SHEAF_OK)
        goto done;
    if (prev) {
        out = reducer_output(r, job, SHEAF_ITEM_DOC, doc, NULL);
        goto done;
    }
    if ((err = sheaf_state_doc_info(r->redis, job, doc, &meta_json, &w.n, errstr,
                                    sizeof(errstr))) != SHEAF_OK ||
        (err = sheaf_state_doc_partials(r->redis, job, doc, &w.n, &parts, errstr,
                                        sizeof(errstr))) != SHEAF_OK) {
        sheaf_error("reducer", "job %s doc %s: %s", job, doc, errstr);
        out = err == SHEAF_ERR_NOT_FOUND ? ENTRY_DONE : ENTRY_RETRY;
        goto done;
    }
    w.meta = json_loads(meta_json, 0, NULL);
    /* meta.<key> renders as the worker renders it (sheaf_json_text). */
    if (w.meta && (!(w.meta_text = json_deep_copy(w.meta)) ||
                   sheaf_json_object_texts(w.meta_text) != 0))
        goto done;
    w.recs = calloc(w.n ? w.n : 1, sizeof(*w.recs));
    w.texts = calloc(w.n ? w.n : 1, sizeof(*w.texts));
    if (!w.recs || !w.texts) goto done;
    read_partials(&w, parts, failed);
    err = compute(r, &w);
    if (err != SHEAF_OK) {
        out = entry_from(err);
        goto done;
    }
    if (!(result = result_json(&w, failed))) goto done;
    while ((err = sheaf_state_doc_result_store(r->redis, job, doc, result,
                                               w.res.usage.prompt_tokens,
                                               w.res.usage.completion_tokens, &stored, errstr,
                                               sizeof(errstr))) != SHEAF_OK &&
           reducer_store_wait(r, err, "storing a document's result", errstr))
        ;
    if (err != SHEAF_OK) {
        sheaf_error("reducer", "job %s doc %s: cannot store result (will retry): %s", job, doc,
                    errstr);
        goto done;
    }
    if (stored == SHEAF_STORE_NO_JOB) {
        sheaf_info("reducer", "job %s doc %s: the job is gone (cancelled or deleted)", job, doc);
        out = ENTRY_DONE;
        goto done;
    }
    /* Only a result this thread stored is its to count; the outputs take
     * whichever was stored first. */
    out = reducer_output(r, job, SHEAF_ITEM_DOC, doc, stored >= SHEAF_STORE_NEW ? result : NULL);
    if (stored < SHEAF_STORE_NEW) goto done;
    r->docs++;
    sheaf_metric_inc(r->sh->docs);
    if (w.res.error)
        sheaf_warn("reducer", "job %s doc %s: done with error: %s", job, doc, w.res.error);
    else
        sheaf_info("reducer", "job %s doc %s: reduced %u chunk(s)", job, doc, w.n);
    if (stored == SHEAF_STORE_NEW_OVERVIEW)
        sheaf_info("reducer", "job %s: every document done, overview queued", job);
done:
    for (uint32_t i = 0; w.recs && i < w.n; i++) json_decref(w.recs[i]);
    for (uint32_t i = 0; w.texts && i < w.n_ok; i++) free(w.texts[i]);
    free(w.recs);
    free(w.texts);
    stage_result_clear(&w.res);
    json_decref(w.rec);
    json_decref(w.meta);
    json_decref(w.meta_text);
    json_decref(failed);
    sheaf_pipeline_destroy(w.p);
    sheaf_partials_free(parts, w.n);
    free(meta_json);
    free(result);
    free(prev);
    return out;
}
