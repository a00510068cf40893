/* producer/stream_window.c - tumbling windows of `sheaf stream`
 * (stream.window_docs, stream.window_ms): group and overview stages per
 * window.
 *
 * A document joins its window when it is registered (stream_doc.lua).
 * Every second a stream process looks at the open windows; one that is
 * complete - every document it will ever hold registered and with a
 * result - becomes a job NAME@w<k> holding those documents with their
 * stored results, turned running, so the reducer runs the pipeline's group
 * and overview stages over exactly them; a record on <prefix>.results names
 * the documents.  docs/stream.md tells why sub-jobs. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "publish.h"
#include "sheaf/log.h"
#include "sheaf/state.h"
#include "sheaf/state_stream.h"
#include "sheaf/util.h"
#include "stream.h"

#define WINDOW_LEASE_MS 120000
#define WINDOW_BATCH 500
#define WINDOW_LIST_MAX 10000   /* ids named in a window record at most */

/* Registers window k's documents in its job, with their stored results
 * (doc_result_store: counted once however often this runs). */
static sheaf_err window_fill(const sheaf_stream_windows *s, const char *wjob, const sheaf_strlist *docs,
                             const sheaf_strlist *results, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    for (size_t first = 0; first < docs->n && err == SHEAF_OK; first += WINDOW_BATCH) {
        size_t n = docs->n - first < WINDOW_BATCH ? docs->n - first : WINDOW_BATCH;
        sheaf_doc_reg *regs = calloc(n, sizeof(*regs));
        char **metas = calloc(n, sizeof(*metas));
        char *(*paths)[SHEAF_MAX_GROUP_PATHS] = calloc(n, sizeof(*paths));
        err = regs && metas && paths ? SHEAF_OK : SHEAF_ERR_NOMEM;
        for (size_t i = 0; i < n && err == SHEAF_OK; i++) {
            uint32_t chunks = 0;
            err = sheaf_state_doc_info(s->redis, s->name, docs->v[first + i], &metas[i],
                                       &chunks, errstr, errlen);
            regs[i] = (sheaf_doc_reg){docs->v[first + i], 1, metas[i], NULL, 0};
            if (err == SHEAF_OK) {
                regs[i].n_group_paths = sheaf_group_paths(s->pipe, metas[i], paths[i]);
                regs[i].group_paths = (const char *const *)paths[i];
            }
        }
        if (err == SHEAF_OK)
            err = sheaf_state_docs_add(s->redis, wjob, regs, n, first, errstr, errlen);
        for (size_t i = 0; i < n && err == SHEAF_OK; i++) {
            sheaf_store_outcome out;
            err = sheaf_state_doc_result_store(s->redis, wjob, docs->v[first + i],
                                               results->v[first + i], 0, 0, &out, errstr,
                                               errlen);
        }
        for (size_t i = 0; metas && i < n; i++) free(metas[i]);
        for (size_t i = 0; paths && i < n; i++)
            for (size_t k = 0; k < SHEAF_MAX_GROUP_PATHS; k++) free(paths[i][k]);
        free(regs);
        free(metas);
        free(paths);
    }
    if (err == SHEAF_ERR_NOMEM) snprintf(errstr, errlen, "out of memory");
    return err;
}

/* The window's record on <prefix>.results: which documents its job covers. */
static void window_record(const sheaf_stream_windows *s, long long k, const char *wjob, const sheaf_strlist *docs)
{
    char kbuf[32];
    snprintf(kbuf, sizeof(kbuf), "%lld", k);
    json_t *ids = json_array(),
           *key = json_pack("[s,s,s,s]", s->name, s->pipe->version, "window", kbuf);
    for (size_t i = 0; i < docs->n && i < WINDOW_LIST_MAX; i++)
        json_array_append_new(ids, json_string(docs->v[i]));
    json_t *res = json_pack("{s:I,s:s,s:I,s:o,s:b}", "window", (json_int_t)k, "job", wjob,
                            "count", (json_int_t)docs->n, "docs", ids,
                            "docs_truncated", docs->n > WINDOW_LIST_MAX);
    if (s->cfg->stream_window_ms > 0) {
        json_object_set_new(res, "from_ms", json_integer((json_int_t)(k * s->cfg->stream_window_ms)));
        json_object_set_new(res, "to_ms", json_integer((json_int_t)((k + 1) * s->cfg->stream_window_ms)));
    }
    json_t *line = json_pack("{s:s,s:s,s:o}", "job", s->name, "kind", "window", "result", res);
    char *v = line ? json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    char *kj = key ? json_dumps(key, JSON_COMPACT) : NULL;
    char topic[256];
    sheaf_topic_name(s->cfg, "results", topic, sizeof(topic));
    if (v && kj) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            s->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(kj, strlen(kj)),
            RD_KAFKA_V_VALUE(v, strlen(v)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (e) sheaf_warn("stream", "window %s: record not sent to %s: %s", wjob, topic,
                          rd_kafka_err2str(e));
    }
    free(v);
    free(kj);
    json_decref(line);
    json_decref(key);
}

/* Closes window k when it is complete (every document it will ever have
 * is registered and has a result): its job NAME@w<k> gets them with their
 * results and turns running, so the reducer runs the pipeline's group and
 * overview stages over exactly them.  Idempotent under a lease, so two
 * stream processes never both do it and a crash half-way is redone. */
static void window_close(const sheaf_stream_windows *s, long long k, int64_t now_ms)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", wjob[256];
    sheaf_strlist docs = {0}, results = {0};
    sheaf_job_status st;
    int got = 0;
    sheaf_err err;

    if (s->cfg->stream_window_ms > 0 && now_ms < (k + 1) * s->cfg->stream_window_ms) return;
    if (sheaf_state_stream_window_docs(s->redis, s->name, k, &docs, &results, errstr,
                                       sizeof(errstr)) != SHEAF_OK)
        goto out;
    if (s->cfg->stream_window_docs > 0 && docs.n < (size_t)s->cfg->stream_window_docs) goto out;
    for (size_t i = 0; i < docs.n; i++)
        if (!docs.v[i] || !results.v[i]) goto out; /* still running */
    if (sheaf_state_stream_window_claim(s->redis, s->name, k, s->owner,
                                        WINDOW_LEASE_MS, &got, errstr, sizeof(errstr)) != SHEAF_OK ||
        !got)
        goto out;
    snprintf(wjob, sizeof(wjob), "%s@w%lld", s->name, k);
    err = sheaf_state_job_status(s->redis, wjob, &st, errstr, sizeof(errstr));
    if (err == SHEAF_ERR_NOT_FOUND)
        err = sheaf_state_job_create(s->redis, s->cfg, wjob, s->pipe_json, s->pipe->version,
                                     s->map_topic, errstr, sizeof(errstr));
    else if (err == SHEAF_OK && st.state != SHEAF_JOB_PRODUCING)
        goto closed; /* closed before; only the bookkeeping was left */
    if (err == SHEAF_OK) err = window_fill(s, wjob, &docs, &results, errstr, sizeof(errstr));
    if (err == SHEAF_OK)
        err = sheaf_state_job_running(s->redis, wjob, docs.n, 0, errstr, sizeof(errstr));
    if (err != SHEAF_OK) goto out;
    window_record(s, k, wjob, &docs);
    sheaf_info("stream", "window %lld closed: %zu document(s), group and overview in job %s", k,
               docs.n, wjob);
closed:
    if (sheaf_state_stream_window_closed(s->redis, s->name, k, errstr, sizeof(errstr)) !=
        SHEAF_OK)
        goto out;
    errstr[0] = '\0';
out:
    if (errstr[0]) sheaf_warn("stream", "window %lld: %s (will retry)", k, errstr);
    sheaf_strlist_free(&docs);
    sheaf_strlist_free(&results);
}

void sheaf_stream_windows_tick(const sheaf_stream_windows *s)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    long long *ks = NULL;
    size_t n = 0;
    int64_t now = 0;
    if (s->cfg->stream_window_docs <= 0 && s->cfg->stream_window_ms <= 0) return;
    if (sheaf_state_time_ms(s->redis, &now, errstr, sizeof(errstr)) != SHEAF_OK ||
        sheaf_state_stream_windows(s->redis, s->name, &ks, &n, errstr, sizeof(errstr)) !=
            SHEAF_OK) {
        sheaf_debug("stream", "windows: %s", errstr);
        return;
    }
    for (size_t i = 0; i < n; i++) window_close(s, ks[i], now);
    free(ks);
}
