/* producer/publish.c - pass 2: register the job, produce every chunk.
 *
 * Order matters for "no document is forgotten":
 *   1. the Kafka producer is created first, so a bad kafka.* property
 *      stops the submit before anything exists in Redis;
 *   2. the job is created in Redis (state "producing");
 *   3. per batch of documents (500, or fewer when their metadata is
 *      large), the documents are registered - id, chunk count, metadata -
 *      BEFORE any of their chunks is produced, so a worker never meets a
 *      chunk of an unknown document;
 *   4. every chunk message is produced; then everything is flushed, and
 *      only when all were delivered does the job turn "running" with its
 *      totals.  Any failure after step 2 marks the job failed with the
 *      reason, so it is never left "producing" forever; a submit that dies
 *      outright stops its heartbeat (beat.c) and `sheaf status` says the
 *      job is stalled.
 *
 * Pass 2 reads exactly the documents pass 1 accepted, from the places
 * pass 1 recorded (JSONL: line offsets), re-chunks them with the same
 * options and checks the counts agree.  A JSONL item is read twice here:
 * once by the registration reader for its metadata, once by the production
 * reader for its text; each reader has its own file handle and moves
 * forward, so neither ever holds more than a line.  Text and PDF files need
 * no registration read (their metadata is empty); a PDF is converted again
 * by pdftotext, which gives the same text every time. */
#include "publish.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sheaf/jschema.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

#define BATCH_DOCS 500
#define BATCH_META_BYTES (8u * 1024 * 1024)
#define FLUSH_TIMEOUT_MS 60000
#define CHECK_TIMEOUT_MS 10000
#define PROGRESS_EVERY_MS 10000

/* A line reader that follows the documents, reopening on a file change. */
typedef struct item_reader {
    sheaf_lines lr;
    int64_t file;            /* index of the open file, -1 for none */
} item_reader;

typedef struct pub {
    const sheaf_publish_args *a;
    rd_kafka_t *rk;          /* owned */
    sheaf_redis *r;          /* owned */
    sheaf_chunk_producer cp;
    item_reader reg;         /* registration: metadata of JSONL items */
    item_reader out;         /* production: text of JSONL items */
    int64_t last_progress;
} pub;

/* Per-document state for the chunker callback. */
typedef struct doc_ctx {
    pub *p;
    sheaf_doc_out out;
    char err[SHEAF_ERRSTR_SIZE];   /* the callback's message, if it failed */
} doc_ctx;

static sheaf_err chunker_sink(const char *data, size_t len, void *ud)
{
    return sheaf_chunker_feed(ud, data, len);
}

static sheaf_err produce_cb(const sheaf_chunk *ch, void *ud)
{
    doc_ctx *dc = ud;
    return sheaf_chunk_producer_send(&dc->p->cp, &dc->out, ch, dc->err, sizeof(dc->err));
}

/* Reads again the JSONL item of d with reader ir and checks it is the one
 * pass 1 accepted. */
static sheaf_err read_item(pub *p, item_reader *ir, const sheaf_in_doc *d, sheaf_jsonl_item *it,
                           char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    const char *path = p->a->scan->files.v[d->file].path;
    unsigned long long ln = (unsigned long long)d->line;
    char msg[SHEAF_PROBLEM_SIZE];
    sheaf_line_status st;

    if (ir->file != (int64_t)d->file) {
        sheaf_lines_close(&ir->lr);
        ir->file = -1;
        if (sheaf_lines_open(&ir->lr, path, p->a->opts->max_line_bytes) != SHEAF_OK) {
            snprintf(errstr, errlen, "%s: cannot read: %s", path, strerror(ir->lr.err));
            err = SHEAF_ERR_IO;
            goto done;
        }
        ir->file = (int64_t)d->file;
    }
    if (sheaf_lines_seek(&ir->lr, d->offset, d->line) != SHEAF_OK) {
        snprintf(errstr, errlen, "%s:%llu: cannot read: %s", path, ln, strerror(ir->lr.err));
        err = SHEAF_ERR_IO;
        goto done;
    }
    st = sheaf_lines_next(&ir->lr);
    if (st != SHEAF_LINE_OK) {
        snprintf(errstr, errlen, "%s:%llu: %s", path, ln,
                 st == SHEAF_LINE_ERROR ? strerror(ir->lr.err)
                                        : "line gone or too long (the input changed during "
                                          "the submit)");
        err = st == SHEAF_LINE_ERROR ? SHEAF_ERR_IO : SHEAF_ERR_INVALID;
        goto done;
    }
    err = sheaf_jsonl_parse(p->a->opts, path, d->line, ir->lr.line.data, ir->lr.line.len, it,
                            msg, sizeof(msg));
    if (err != SHEAF_OK) {
        snprintf(errstr, errlen, "%s (the input changed during the submit?)", msg);
        goto done;
    }
    if (it->id_len != strlen(d->id) || memcmp(it->id, d->id, it->id_len) != 0) {
        snprintf(errstr, errlen, "%s:%llu: id is \"%.*s\", pass 1 read \"%s\" (the input "
                 "changed during the submit)", path, ln, (int)(it->id_len > 200 ? 200 : it->id_len),
                 it->id, d->id);
        err = SHEAF_ERR_INVALID;
        goto done;
    }
    err = SHEAF_OK;
done:
    return err;
}

/* A document's metadata group paths (see sheaf_doc_reg): for level k the
 * JSON array of the values of the first k+1 "meta." levels as text
 * (sheaf_json_text: a year of 2021 groups as "2021"), "" for a missing
 * value.  paths[] entries are malloc'd; returns how many. */
size_t sheaf_group_paths(const sheaf_pipeline *pl, const char *meta_json, char **paths)
{
    json_t *meta = json_loads(meta_json ? meta_json : "{}", 0, NULL), *vals = json_array();
    size_t n = 0;
    /* Out of memory: no paths, as when json_dumps fails below. */
    int ok = vals && (!meta || sheaf_json_object_texts(meta) == 0);
    for (size_t k = 0; ok && pl && k < pl->n_meta_levels; k++) {
        const char *v = json_string_value(json_object_get(meta, pl->group_by[k] + 5));
        json_array_append_new(vals, json_string(v ? v : ""));
        if (!(paths[n] = json_dumps(vals, JSON_COMPACT))) break;
        n++;
    }
    json_decref(vals);
    json_decref(meta);
    return n;
}

/* Registers documents first.. (as many as fit in a batch) in Redis; *n
 * says how many. */
static sheaf_err register_batch(pub *p, size_t first, size_t *n, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_ERR_NOMEM;
    const sheaf_doclist *docs = &p->a->scan->docs;
    size_t max = docs->n - first < BATCH_DOCS ? docs->n - first : BATCH_DOCS;
    sheaf_doc_reg *regs = calloc(max, sizeof(*regs));
    char **metas = calloc(max, sizeof(*metas));
    char *(*paths)[SHEAF_MAX_GROUP_PATHS] = calloc(max, sizeof(*paths));
    size_t count = 0, meta_bytes = 0;
    sheaf_jsonl_item it = {0};
    json_t *meta = NULL;

    if (!regs || !metas || !paths) {
        snprintf(errstr, errlen, "out of memory");
        goto done;
    }
    while (count < max && meta_bytes < BATCH_META_BYTES) {
        const sheaf_in_doc *d = &docs->v[first + count];
        regs[count].id = d->id;
        regs[count].chunks = d->chunks;
        regs[count].meta_json = "{}";
        if (p->a->scan->files.v[d->file].format == SHEAF_FORMAT_JSONL) {
            err = read_item(p, &p->reg, d, &it, errstr, errlen);
            if (err != SHEAF_OK) goto done;
            meta = sheaf_jsonl_meta(p->a->opts, &it);
            metas[count] = meta ? sheaf_meta_to_json(meta) : NULL;
            if (!metas[count]) {
                err = SHEAF_ERR_NOMEM;
                snprintf(errstr, errlen, "out of memory");
                goto done;
            }
            regs[count].meta_json = metas[count];
            meta_bytes += strlen(metas[count]);
            json_decref(meta);
            meta = NULL;
            sheaf_jsonl_item_clear(&it);
        }
        regs[count].n_group_paths = sheaf_group_paths(p->a->pipeline, regs[count].meta_json,
                                                      paths[count]);
        regs[count].group_paths = (const char *const *)paths[count];
        count++;
    }
    err = sheaf_state_docs_add(p->r, p->a->job, regs, count, first, errstr, errlen);
    if (err == SHEAF_OK) *n = count;
done:
    json_decref(meta);
    sheaf_jsonl_item_clear(&it);
    if (metas)
        for (size_t i = 0; i < max; i++) free(metas[i]);
    if (paths)
        for (size_t i = 0; i < max; i++)
            for (size_t k = 0; k < SHEAF_MAX_GROUP_PATHS; k++) free(paths[i][k]);
    free(paths);
    free(metas);
    free(regs);
    return err;
}

sheaf_err sheaf_record_offsets(rd_kafka_t *rk, sheaf_redis *r, const char *job, char *errstr,
                               size_t errlen)
{
    int64_t first[SHEAF_KAFKA_MAX_PARTITIONS], last[SHEAF_KAFKA_MAX_PARTITIONS];
    int n = 0;
    for (int32_t i = 0; i < SHEAF_KAFKA_MAX_PARTITIONS; i++) {
        if (!sheaf_kafka_delivered_range(rk, i, &first[i], &last[i])) first[i] = last[i] = -1;
        else n = i + 1;
    }
    return sheaf_state_job_offsets_store(r, job, first, last, n, errstr, errlen);
}

/* Re-reads, re-chunks and produces document i. */
static sheaf_err produce_doc(pub *p, size_t i, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    const sheaf_in_doc *d = &p->a->scan->docs.v[i];
    const sheaf_in_file *f = &p->a->scan->files.v[d->file];
    doc_ctx dc;
    sheaf_chunker *ch = NULL;
    sheaf_jsonl_item it = {0};
    json_t *meta = NULL;
    sheaf_text_info info;
    char msg[SHEAF_PROBLEM_SIZE] = "";

    memset(&dc, 0, sizeof(dc));
    dc.p = p;
    dc.out.id = d->id;
    dc.out.chunks = d->chunks;
    dc.out.has_pages = d->has_pages;
    ch = sheaf_chunker_create(&p->a->opts->chunk, produce_cb, &dc, errstr, errlen);
    if (!ch) {
        err = SHEAF_ERR_INTERNAL;
        goto done;
    }
    if (f->format == SHEAF_FORMAT_JSONL) {
        err = read_item(p, &p->out, d, &it, errstr, errlen);
        if (err != SHEAF_OK) goto done;
        meta = sheaf_jsonl_meta(p->a->opts, &it);
        err = meta ? sheaf_meta_flatten(meta, &dc.out.meta, &dc.out.meta_len) : SHEAF_ERR_NOMEM;
        if (err == SHEAF_OK) err = sheaf_chunker_feed(ch, it.text, it.text_len);
    } else {
        err = sheaf_in_file_read(f, p->a->opts->max_doc_bytes, chunker_sink, ch, &info, msg,
                                 sizeof(msg));
        if (info.bad) {
            snprintf(errstr, errlen, "%s (the input changed during the submit?)", msg);
            goto done;
        }
    }
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    if (err != SHEAF_OK) {
        if (dc.err[0]) snprintf(errstr, errlen, "%s", dc.err);
        else snprintf(errstr, errlen, "document \"%s\": %s", d->id, sheaf_strerror(err));
        goto done;
    }
    if (sheaf_chunker_count(ch) != d->chunks) {
        err = SHEAF_ERR_INTERNAL;
        snprintf(errstr, errlen,
                 "document \"%s\": %u chunks now, %u in pass 1 (did the input change during "
                 "the submit?)",
                 d->id, sheaf_chunker_count(ch), d->chunks);
        goto done;
    }
done:
    if (ch) sheaf_chunker_destroy(ch);
    sheaf_meta_kv_free(dc.out.meta, dc.out.meta_len);
    json_decref(meta);
    sheaf_jsonl_item_clear(&it);
    return err;
}

static void progress(pub *p, size_t docs_done)
{
    int64_t now = sheaf_mono_ms();
    if (now - p->last_progress < PROGRESS_EVERY_MS) return;
    p->last_progress = now;
    sheaf_info("producer", "job %s: %zu of %zu documents, %llu of %llu chunks produced",
               p->a->job, docs_done, p->a->scan->docs.n, (unsigned long long)p->cp.produced,
               (unsigned long long)p->a->scan->chunks);
}

sheaf_err sheaf_publish(const sheaf_publish_args *a, uint64_t *chunks, char *errstr,
                        size_t errlen)
{
    sheaf_err err = SHEAF_ERR_KAFKA;
    pub p;
    sheaf_beat *beat = NULL;
    int created = 0;
    size_t next = 0;

    memset(&p, 0, sizeof(p));
    p.a = a;
    p.reg.file = p.out.file = -1;
    p.last_progress = sheaf_mono_ms();
    *chunks = 0;

    p.rk = sheaf_kafka_producer_new(a->cfg, "sheaf-producer", errstr, errlen);
    if (!p.rk) goto done;
    /* Fail in seconds, with nothing created, when Kafka cannot be reached. */
    err = sheaf_kafka_check_topic(p.rk, a->topic, CHECK_TIMEOUT_MS, errstr, errlen);
    if (err != SHEAF_OK) {
        size_t len = strlen(errstr);
        if (len < errlen) snprintf(errstr + len, errlen - len, "; nothing was submitted");
        goto done;
    }
    err = sheaf_chunk_producer_init(&p.cp, p.rk, a->topic, a->job, a->pv, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    p.r = sheaf_redis_connect(a->cfg, errstr, errlen);
    if (!p.r) {
        err = SHEAF_ERR_REDIS;
        goto done;
    }
    /* A resumed job was created by a submit that died: every document is
     * registered again (a no-op for those it registered) and every chunk
     * produced again (chunk ids are deterministic, results first-write-wins,
     * and workers skip what is recorded). */
    if (a->resume)
        err = sheaf_state_job_resume(p.r, a->cfg, a->job, a->pv, errstr, errlen);
    else
        err = sheaf_state_job_create(p.r, a->cfg, a->job, a->pipeline_json, a->pv, a->topic,
                                     errstr, errlen);
    if (err != SHEAF_OK) goto done; /* e.g. the id exists: never touch that job */
    created = 1;
    if (!(beat = sheaf_beat_start(a->cfg, a->job, errstr, errlen))) {
        err = SHEAF_ERR_REDIS;
        goto done;
    }

    while (next < a->scan->docs.n) {
        size_t n = 0;
        err = register_batch(&p, next, &n, errstr, errlen);
        if (err != SHEAF_OK) goto done;
        for (size_t i = next; i < next + n; i++) {
            if (sheaf_stop) {
                err = SHEAF_ERR_STOPPED;
                snprintf(errstr, errlen, "interrupted while producing");
                goto done;
            }
            err = produce_doc(&p, i, errstr, errlen);
            if (err != SHEAF_OK) goto done;
            progress(&p, i + 1);
        }
        next += n;
    }
    err = sheaf_kafka_flush(p.rk, FLUSH_TIMEOUT_MS, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    if (p.cp.produced != a->scan->chunks) {
        err = SHEAF_ERR_INTERNAL;
        snprintf(errstr, errlen, "%llu chunks produced, pass 1 counted %llu",
                 (unsigned long long)p.cp.produced, (unsigned long long)a->scan->chunks);
        goto done;
    }
    err = sheaf_record_offsets(p.rk, p.r, a->job, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    err = sheaf_state_job_running(p.r, a->job, (uint64_t)a->scan->docs.n, p.cp.produced, errstr,
                                  errlen);
done:
    sheaf_beat_stop(beat);
    *chunks = p.cp.produced;
    if (err != SHEAF_OK && created) {
        char ferr[SHEAF_ERRSTR_SIZE];
        /* Messages still queued belong to a failed job: do not send them. */
        rd_kafka_purge(p.rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        if (sheaf_state_job_fail(p.r, a->cfg, a->job, errstr, ferr, sizeof(ferr)) != SHEAF_OK)
            sheaf_error("producer", "job %s: could not be marked failed: %s", a->job, ferr);
    }
    sheaf_lines_close(&p.reg.lr);
    sheaf_lines_close(&p.out.lr);
    sheaf_chunk_producer_clear(&p.cp);
    sheaf_kafka_producer_destroy(p.rk);
    sheaf_redis_destroy(p.r);
    return err;
}
