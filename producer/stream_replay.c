/* producer/stream_replay.c - `sheaf replay NAME --from T --to T`: a time
 * window of a stream's input, processed again (after a prompt change).
 *
 * The input records timestamped in the window (timescan.c: offsets for
 * times on a real broker, a read from the earliest offset on the dev mock)
 * are read again from the input topic and become the documents of a run
 * NAME@rN - a batch job of its own under the configured pipeline (else
 * the stream's), mapped from its pipeline version in NAME's versions like
 * any replay, so `sheaf results NAME --version PV` reads it.  Each record
 * keeps the document id the stream gave it (its version "<id>#vN" while
 * the stream still knows the record's place; the record's own id once its
 * state expired, made unique within the run by "#r<partition>-<offset>"
 * should two records then share one).  Records that cannot be read were
 * dead-lettered by the stream and are left out.  Chunks go to the map
 * topic like a submit's; the LLM call cache answers every call whose
 * request did not change.  The run is an ordinary job: groups and the
 * overview run over its documents, its chunk ranges are recorded (it can
 * be replayed or repaired by its id). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inputs.h"
#include "publish.h"
#include "ranges.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/pipeline.h"
#include "sheaf/state.h"
#include "sheaf/state_stream.h"
#include "sheaf/util.h"
#include "stream.h"

#define FLUSH_MS 60000

typedef struct replay {
    const sheaf_config *cfg;
    const char *name, *from_topic;
    char run[256], map_topic[256];
    sheaf_redis *r;
    sheaf_pipeline *pipe;
    char *pipe_json;
    sheaf_config eff;
    sheaf_input_opts io;
    int io_ready, created;
    rd_kafka_t *producer;
    sheaf_chunk_producer cp;
    uint64_t docs, chunks, skipped;
    char **ids;                 /* document ids used in the run: a hash set */
    size_t ids_cap, ids_n;
} replay;

/* ---- the run's document ids: an open-addressing set ---- */

static size_t fnv(const char *s)
{
    size_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Adds id; 0 when added, 1 when it was there, -1 out of memory. */
static int ids_add(replay *p, const char *id)
{
    if (2 * (p->ids_n + 1) > p->ids_cap) {
        size_t cap = p->ids_cap ? 2 * p->ids_cap : 1024;
        char **v = calloc(cap, sizeof(*v));
        if (!v) return -1;
        for (size_t i = 0; i < p->ids_cap; i++) {
            if (!p->ids[i]) continue;
            size_t h = fnv(p->ids[i]) & (cap - 1);
            while (v[h]) h = (h + 1) & (cap - 1);
            v[h] = p->ids[i];
        }
        free(p->ids);
        p->ids = v;
        p->ids_cap = cap;
    }
    size_t h = fnv(id) & (p->ids_cap - 1);
    for (; p->ids[h]; h = (h + 1) & (p->ids_cap - 1))
        if (strcmp(p->ids[h], id) == 0) return 1;
    if (!(p->ids[h] = strdup(id))) return -1;
    p->ids_n++;
    return 0;
}

/* ---- records ---- */

/* The run is created with its first document: a window without records
 * leaves nothing behind. */
static sheaf_err run_create(replay *p, char *errstr, size_t errlen)
{
    long long n = 0;
    sheaf_err err;
    if (p->created) return SHEAF_OK;
    if ((err = sheaf_state_job_next_replay(p->r, p->name, &n, errstr, errlen)) != SHEAF_OK)
        return err;
    snprintf(p->run, sizeof(p->run), "%s@r%lld", p->name, n);
    if ((err = sheaf_state_job_create(p->r, p->cfg, p->run, p->pipe_json, p->pipe->version,
                                      p->map_topic, errstr, errlen)) != SHEAF_OK ||
        (err = sheaf_chunk_producer_init(&p->cp, p->producer, p->map_topic, p->run,
                                         p->pipe->version, errstr, errlen)) != SHEAF_OK)
        return err;
    p->created = 1;
    return SHEAF_OK;
}

/* The document id a record gets in the run (see the top of the file). */
static sheaf_err doc_id(replay *p, const rd_kafka_message_t *m, const char *rec_id, char *doc,
                        size_t doclen, char *errstr, size_t errlen)
{
    char place[600];
    snprintf(place, sizeof(place), "%s/%d/%lld", p->from_topic, (int)m->partition,
             (long long)m->offset);
    sheaf_err err = sheaf_state_stream_place_doc(p->r, p->name, place, doc, doclen, errstr,
                                                 errlen);
    if (err != SHEAF_OK) return err;
    if (!doc[0]) snprintf(doc, doclen, "%s", rec_id);
    int seen = ids_add(p, doc);
    if (seen == 1) {
        snprintf(doc, doclen, "%s#r%d-%lld", rec_id, (int)m->partition, (long long)m->offset);
        seen = ids_add(p, doc);
    }
    if (seen < 0) {
        snprintf(errstr, errlen, "out of memory");
        return SHEAF_ERR_NOMEM;
    }
    return SHEAF_OK;
}

static sheaf_err on_record(void *ud, const rd_kafka_message_t *m, char *errstr, size_t errlen)
{
    replay *p = ud;
    sheaf_stream_record d;
    sheaf_chunk_vec cv = {0};
    char msg[SHEAF_PROBLEM_SIZE], doc[600], *paths[SHEAF_MAX_GROUP_PATHS] = {0};
    size_t n_paths = 0;
    sheaf_err err = sheaf_stream_record_parse(p->cfg, &p->io, m->key, m->key_len, m->payload,
                                              m->len, &d, msg, sizeof(msg));
    if (err == SHEAF_OK) err = sheaf_stream_record_chunk(&p->io.chunk, &d, &cv, msg, sizeof(msg));
    if (err == SHEAF_ERR_INVALID || err == SHEAF_ERR_TOO_LARGE) {
        p->skipped++; /* the stream dead-lettered it */
        err = SHEAF_OK;
        goto done;
    }
    if (err != SHEAF_OK) {
        snprintf(errstr, errlen, "%s", msg);
        goto done;
    }
    if ((err = run_create(p, errstr, errlen)) != SHEAF_OK ||
        (err = doc_id(p, m, d.id, doc, sizeof(doc), errstr, errlen)) != SHEAF_OK)
        goto done;
    n_paths = sheaf_group_paths(p->pipe, d.meta_json, paths);
    sheaf_doc_reg reg = {doc, (uint32_t)cv.n, d.meta_json, (const char *const *)paths, n_paths};
    if ((err = sheaf_state_docs_add(p->r, p->run, &reg, 1, p->docs, errstr, errlen)) != SHEAF_OK)
        goto done;
    sheaf_doc_out out = {doc, (uint32_t)cv.n, d.has_pages, d.meta, d.meta_len};
    for (size_t i = 0; i < cv.n && err == SHEAF_OK; i++)
        err = sheaf_chunk_producer_send(&p->cp, &out, &cv.v[i], errstr, errlen);
    if (err == SHEAF_OK) {
        p->docs++;
        p->chunks += cv.n;
    }
done:
    for (size_t k = 0; k < n_paths; k++) free(paths[k]);
    sheaf_chunk_vec_free(&cv);
    sheaf_stream_record_clear(&d);
    return err;
}

/* The run's pipeline: the configured one, or the stream's own. */
static sheaf_err load_pipeline(replay *p, char *errstr, size_t errlen)
{
    char pv[32], *json = NULL;
    if (sheaf_config_is_set(p->cfg, "pipeline")) {
        p->pipe = sheaf_pipeline_load(p->cfg->pipeline, p->cfg, errstr, errlen);
    } else {
        sheaf_err err = sheaf_state_job_pipeline(p->r, p->name, pv, sizeof(pv), &json, errstr,
                                                 errlen);
        if (err != SHEAF_OK) return err;
        p->pipe = sheaf_pipeline_from_json(json, strlen(json), errstr, errlen);
        free(json);
    }
    if (!p->pipe) return SHEAF_ERR_CONFIG;
    if (!(p->pipe_json = sheaf_pipeline_to_json(p->pipe))) return SHEAF_ERR_NOMEM;
    sheaf_pipeline_chunking(p->cfg, p->pipe, &p->eff);
    sheaf_err err = sheaf_input_opts_init(&p->io, &p->eff, errstr, errlen);
    p->io_ready = err == SHEAF_OK;
    return err;
}

sheaf_err sheaf_stream_replay(const sheaf_config *cfg, const char *name, int64_t from_ms,
                              int64_t to_ms, char *run, size_t runlen, uint64_t *docs,
                              char *errstr, size_t errlen)
{
    replay p;
    sheaf_stream_status st;
    sheaf_err err = SHEAF_ERR_REDIS;
    char ferr[SHEAF_ERRSTR_SIZE];

    memset(&p, 0, sizeof(p));
    p.cfg = cfg;
    p.name = name;
    *docs = 0;
    run[0] = '\0';
    sheaf_topic_name(cfg, "map", p.map_topic, sizeof(p.map_topic));
    if (!(p.r = sheaf_redis_connect(cfg, errstr, errlen))) goto done;
    if ((err = sheaf_state_stream_status(p.r, name, &st, errstr, errlen)) != SHEAF_OK) goto done;
    p.from_topic = st.from_topic;
    if ((err = load_pipeline(&p, errstr, errlen)) != SHEAF_OK) goto done;
    err = SHEAF_ERR_KAFKA;
    if (!(p.producer = sheaf_kafka_producer_new(cfg, "sheaf-replay", errstr, errlen))) goto done;
    err = sheaf_topic_time_scan(cfg, p.from_topic, from_ms, to_ms, on_record, &p, errstr, errlen);
    if (err == SHEAF_OK && !p.created) {
        snprintf(errstr, errlen, "no record of %s is timestamped in that window (%llu unreadable)",
                 p.from_topic, (unsigned long long)p.skipped);
        err = SHEAF_ERR_NOT_FOUND;
    }
    if (err == SHEAF_OK) err = sheaf_kafka_flush(p.producer, FLUSH_MS, errstr, errlen);
    /* Its own ranges: the run can be replayed and repaired like a job. */
    if (err == SHEAF_OK) err = sheaf_record_offsets(p.producer, p.r, p.run, errstr, errlen);
    if (err == SHEAF_OK)
        err = sheaf_state_job_running(p.r, p.run, p.docs, p.chunks, errstr, errlen);
    if (err == SHEAF_OK)
        err = sheaf_state_version_set(p.r, name, p.pipe->version, p.run, errstr, errlen);
    if (err == SHEAF_OK)
        sheaf_info("producer", "stream %s: %llu record(s) of %s replayed as %s (pipeline %s), "
                   "%llu chunk(s); %llu unreadable left out", name, (unsigned long long)p.docs,
                   p.from_topic, p.run, p.pipe->version, (unsigned long long)p.chunks,
                   (unsigned long long)p.skipped);
done:
    if (err != SHEAF_OK && p.created) {
        rd_kafka_purge(p.producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        if (sheaf_state_job_fail(p.r, cfg, p.run, errstr, ferr, sizeof(ferr)) != SHEAF_OK)
            sheaf_error("producer", "run %s: could not be marked failed: %s", p.run, ferr);
    }
    snprintf(run, runlen, "%s", p.run);
    *docs = p.docs;
    for (size_t i = 0; i < p.ids_cap; i++) free(p.ids[i]);
    free(p.ids);
    if (p.created) sheaf_chunk_producer_clear(&p.cp);
    sheaf_kafka_producer_destroy(p.producer);
    if (p.io_ready) sheaf_input_opts_clear(&p.io);
    free(p.pipe_json);
    sheaf_pipeline_destroy(p.pipe);
    sheaf_redis_destroy(p.r);
    return err;
}
