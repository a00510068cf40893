/* replay.c - `sheaf replay`: run a job again, from its retained chunk
 * messages, under a (possibly new) pipeline version.
 *
 * The producer recorded where each job's chunks landed (first and last
 * offset per partition, sheaf:{J}:offsets).  A replay:
 *   1. checks that every recorded range is still on the topic (watermarks)
 *      and refuses, naming the missing range, before changing anything;
 *   2. creates a run R = J@rN (a job of its own: same documents, metadata
 *      and order, the new pipeline) and maps the version to it in
 *      sheaf:{J}:versions, so every version of J stays readable;
 *   3. reads exactly those ranges with an assign()ed consumer in a fresh
 *      group (ranges.c), keeps the messages of J (other jobs' messages
 *      interleave),
 *      and produces each again with job R and the new version - so the
 *      normal worker fleet does the work, side by side with new jobs;
 *   4. records R's own offsets and marks it running.
 * What is paid for is decided by the LLM call cache: calls whose request
 * is unchanged are answered from it, so only changed stages call the LLM.
 *
 * A time-range replay (--from/--to) finds the jobs with chunk messages
 * timestamped in the window (timescan.c) and replays each whole. */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "producer.h"
#include "publish.h"
#include "ranges.h"
#include "sheaf/codec.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/pipeline.h"
#include "sheaf/program.h"
#include "sheaf/state.h"
#include "sheaf/state_stream.h"
#include "sheaf/util.h"

#define MAXP SHEAF_KAFKA_MAX_PARTITIONS
#define WM_TIMEOUT_MS SHEAF_RANGES_WM_TIMEOUT_MS
#define DOC_BATCH 500

/* The pipeline of the run: the configured one, or the job's own. */
static sheaf_pipeline *run_pipeline(const sheaf_config *cfg, sheaf_redis *r, const char *pv,
                                    char *errstr, size_t errlen)
{
    char *json = NULL;
    sheaf_pipeline *p;
    if (sheaf_config_is_set(cfg, "pipeline")) return sheaf_pipeline_load(cfg->pipeline, cfg, errstr, errlen);
    if (sheaf_state_pipeline_get(r, pv, &json, errstr, errlen) != SHEAF_OK) return NULL;
    p = sheaf_pipeline_from_json(json, strlen(json), errstr, errlen);
    free(json);
    return p;
}

/* Registers J's documents, in order, under run R. */
static sheaf_err copy_docs(sheaf_redis *r, const char *job, const char *run,
                           const sheaf_pipeline *pl, uint64_t *ndocs, char *errstr, size_t errlen)
{
    sheaf_strlist ids;
    sheaf_err err = sheaf_state_doc_ids(r, job, &ids, errstr, errlen);
    if (err != SHEAF_OK) return err;
    *ndocs = ids.n;
    for (size_t start = 0; start < ids.n && err == SHEAF_OK; start += DOC_BATCH) {
        size_t n = ids.n - start < DOC_BATCH ? ids.n - start : DOC_BATCH;
        sheaf_doc_reg regs[DOC_BATCH];
        char *metas[DOC_BATCH], *paths[DOC_BATCH][SHEAF_MAX_GROUP_PATHS];
        memset(regs, 0, sizeof(regs));
        memset(metas, 0, sizeof(metas));
        memset(paths, 0, sizeof(paths));
        for (size_t i = 0; i < n && err == SHEAF_OK; i++) {
            const char *doc = ids.v[start + i];
            regs[i].id = doc;
            err = sheaf_state_doc_info(r, job, doc, &metas[i], &regs[i].chunks, errstr, errlen);
            if (err != SHEAF_OK) break;
            regs[i].meta_json = metas[i];
            regs[i].n_group_paths = sheaf_group_paths(pl, metas[i], paths[i]);
            regs[i].group_paths = (const char *const *)paths[i];
        }
        if (err == SHEAF_OK)
            err = sheaf_state_docs_add(r, run, regs, n, start, errstr, errlen);
        for (size_t i = 0; i < n; i++) {
            free(metas[i]);
            for (size_t k = 0; k < SHEAF_MAX_GROUP_PATHS; k++) free(paths[i][k]);
        }
    }
    sheaf_strlist_free(&ids);
    return err;
}

/* Each message of J is produced again as run R. */
static sheaf_err resend_cb(void *opaque, const sheaf_chunk_msg *m, int32_t partition,
                           int64_t offset, char *errstr, size_t errlen)
{
    (void)partition;
    (void)offset;
    return sheaf_chunk_resend(opaque, m, errstr, errlen);
}

/* Replays one job; the run id goes to run (256 bytes). */
static sheaf_err replay_job(const sheaf_config *cfg, sheaf_redis *r, const char *job, char *run,
                            char *pv_out, uint64_t *chunks, char *errstr, size_t errlen)
{
    char group[320], *pjson = NULL;
    sheaf_job_status st;
    sheaf_job_ranges rg;
    sheaf_pipeline *pl = NULL;
    rd_kafka_t *consumer = NULL, *producer = NULL;
    sheaf_chunk_producer cp;
    int cp_ready = 0;
    sheaf_beat *beat = NULL;     /* the replay job's heartbeat while it produces */
    uint64_t ndocs = 0;
    sheaf_err err = SHEAF_OK;

    memset(&cp, 0, sizeof(cp));
    if ((err = sheaf_state_job_status(r, job, &st, errstr, errlen)) != SHEAF_OK) {
        if (err == SHEAF_ERR_NOT_FOUND) snprintf(errstr, errlen, "job %s does not exist", job);
        goto done;
    }
    const char *topic = st.topic, *pv = st.pv;
    if (st.state != SHEAF_JOB_RUNNING && st.state != SHEAF_JOB_DONE) {
        snprintf(errstr, errlen, "job %s is %s: only a job whose chunks were all produced can be "
                 "replayed", job, sheaf_job_state_name(st.state));
        err = SHEAF_ERR_INVALID;
        goto done;
    }
    if ((err = sheaf_job_ranges_read(r, job, "nothing to replay", &rg, errstr, errlen)) != SHEAF_OK)
        goto done;
    if (!(pl = run_pipeline(cfg, r, pv, errstr, errlen))) {
        err = SHEAF_ERR_CONFIG;
        goto done;
    }
    snprintf(pv_out, 17, "%s", pl->version);
    /* A fresh consumer group: it only reads assigned ranges, commits nothing. */
    snprintf(group, sizeof(group), "sheaf-replay-%s-%lld", job, (long long)sheaf_wall_ms());
    if (!(consumer = sheaf_kafka_consumer_new(cfg, "sheaf-replay", group, NULL, NULL, errstr,
                                              errlen)) ||
        !(producer = sheaf_kafka_producer_new(cfg, "sheaf-replay", errstr, errlen))) {
        err = SHEAF_ERR_KAFKA;
        goto done;
    }
    /* Nothing is written before this check passes. */
    if ((err = sheaf_job_ranges_check(consumer, topic, job, &rg, "nothing was replayed", errstr,
                                      errlen)) != SHEAF_OK)
        goto done;
    long long nth = 0;
    if ((err = sheaf_state_job_next_replay(r, job, &nth, errstr, errlen)) != SHEAF_OK) goto done;
    snprintf(run, 256, "%s@r%lld", job, nth);
    if (!sheaf_job_id_valid(run)) {
        snprintf(errstr, errlen, "job id %s is too long to name its replay", job);
        err = SHEAF_ERR_INVALID;
        goto done;
    }
    if (!(pjson = sheaf_pipeline_to_json(pl))) {
        err = SHEAF_ERR_NOMEM;
        goto done;
    }
    if ((err = sheaf_state_job_create(r, cfg, run, pjson, pl->version, topic, errstr, errlen))) {
        /* Not ours (the id was taken, e.g. by `submit --job-id J@r1`): a
         * refused replay never touches an existing job. */
        run[0] = '\0';
        goto done;
    }
    if (!(beat = sheaf_beat_start(cfg, run, errstr, errlen))) {
        err = SHEAF_ERR_REDIS;
        goto fail_run;
    }
    if ((err = copy_docs(r, job, run, pl, &ndocs, errstr, errlen)) ||
        (err = sheaf_chunk_producer_init(&cp, producer, topic, run, pl->version, errstr, errlen)))
        goto fail_run;
    cp_ready = 1;
    sheaf_info("producer", "replaying job %s as %s (pipeline %s, was %s)", job, run, pl->version,
               pv);
    if ((err = sheaf_job_ranges_scan(consumer, topic, job, &rg, resend_cb, &cp, errstr,
                                     errlen)) ||
        (err = sheaf_kafka_flush(producer, 60000, errstr, errlen)))
        goto fail_run;
    {
        int64_t first[MAXP], last[MAXP];
        int np = 0;
        for (int i = 0; i < MAXP; i++) {
            if (!sheaf_kafka_delivered_range(producer, i, &first[i], &last[i])) first[i] = -1;
            else np = i + 1;
        }
        if ((err = sheaf_state_job_offsets_store(r, run, first, last, np, errstr, errlen)) ||
            (err = sheaf_state_job_running(r, run, ndocs, cp.produced, errstr, errlen)))
            goto fail_run;
    }
    if ((err = sheaf_state_version_set(r, job, pl->version, run, errstr, errlen)) != SHEAF_OK)
        goto done;
    *chunks = cp.produced;
    goto done;
fail_run:
    {
        char ferr[SHEAF_ERRSTR_SIZE];
        if (run[0] && sheaf_state_job_fail(r, cfg, run, errstr, ferr, sizeof(ferr)) != SHEAF_OK)
            sheaf_warn("producer", "replay %s: could not be marked failed: %s", run, ferr);
    }
done:
    sheaf_beat_stop(beat);
    if (cp_ready) sheaf_chunk_producer_clear(&cp);
    if (consumer) {
        rd_kafka_consumer_close(consumer);
        rd_kafka_destroy(consumer);
    }
    sheaf_kafka_producer_destroy(producer);
    sheaf_pipeline_destroy(pl);
    free(pjson);
    return err;
}

/* ---- time range ---- */

/* Collects the job of each chunk message (jobs_in_window). */
typedef struct job_set {
    char ***jobs;
    size_t *n_jobs;
} job_set;

static sheaf_err collect_job(void *ud, const rd_kafka_message_t *msg, char *errstr,
                             size_t errlen)
{
    job_set *js = ud;
    sheaf_chunk_msg m;
    char derr[SHEAF_ERRSTR_SIZE];
    (void)errstr;
    (void)errlen;
    memset(&m, 0, sizeof(m));
    if (sheaf_chunk_decode(msg->payload, msg->len, &m, derr, sizeof(derr)) == SHEAF_OK) {
        size_t k = 0;
        while (k < *js->n_jobs && strcmp((*js->jobs)[k], m.job) != 0) k++;
        if (k == *js->n_jobs) {
            char **grown = realloc(*js->jobs, (*js->n_jobs + 1) * sizeof(char *));
            if (grown) {
                *js->jobs = grown;
                (*js->jobs)[(*js->n_jobs)++] = strdup(m.job);
            }
        }
    }
    sheaf_chunk_msg_clear(&m);
    return SHEAF_OK;
}

/* Job ids with chunk messages timestamped in [from, to] on topic. */
static sheaf_err jobs_in_window(const sheaf_config *cfg, const char *topic, int64_t from,
                                int64_t to, char ***jobs, size_t *n_jobs, char *errstr,
                                size_t errlen)
{
    job_set js = {jobs, n_jobs};
    return sheaf_topic_time_scan(cfg, topic, from, to, collect_job, &js, errstr, errlen);
}

sheaf_err sheaf_replay(const sheaf_config *cfg, const sheaf_replay_opts *o,
                       sheaf_replay_report *rep, char *errstr, size_t errlen)
{
    char **jobs = NULL, topic[256];
    size_t n_jobs = 0;
    sheaf_err err = SHEAF_OK;
    sheaf_redis *r = sheaf_redis_connect(cfg, errstr, errlen);

    memset(rep, 0, sizeof(*rep));
    if (!r) return SHEAF_ERR_REDIS;
    if (o->job) {
        jobs = calloc(1, sizeof(char *));
        if (jobs && (jobs[0] = strdup(o->job))) n_jobs = 1;
    } else {
        sheaf_topic_name(cfg, "map", topic, sizeof(topic));
        err = jobs_in_window(cfg, topic, o->from_ms, o->to_ms, &jobs, &n_jobs, errstr, errlen);
        if (err == SHEAF_OK && n_jobs == 0) {
            snprintf(errstr, errlen, "no chunk message on %s was produced in that time range",
                     topic);
            err = SHEAF_ERR_NOT_FOUND;
        }
    }
    for (size_t i = 0; i < n_jobs && err == SHEAF_OK; i++) {
        sheaf_stream_status ss;
        if (!o->job && sheaf_state_stream_status(r, jobs[i], &ss, errstr, errlen) == SHEAF_OK) {
            /* A stream has no ranges of its own: its input is replayed by name. */
            sheaf_info("producer", "stream %s has chunk messages in the range: replay its input "
                       "with `sheaf replay %s --from T --to T`", jobs[i], jobs[i]);
            continue;
        }
        if (rep->n_runs == SHEAF_REPLAY_MAX_RUNS) {
            sheaf_warn("producer", "more than %d jobs in the range: replay the rest by job id",
                       SHEAF_REPLAY_MAX_RUNS);
            break;
        }
        uint64_t chunks = 0;
        err = replay_job(cfg, r, jobs[i], rep->runs[rep->n_runs], rep->pv, &chunks, errstr,
                         errlen);
        if (err == SHEAF_OK) {
            snprintf(rep->jobs[rep->n_runs], sizeof(rep->jobs[0]), "%s", jobs[i]);
            rep->n_runs++;
            rep->chunks += chunks;
        }
    }
    if (err == SHEAF_OK && n_jobs > 0 && rep->n_runs == 0) {
        snprintf(errstr, errlen, "only streams have chunk messages in that range: replay a "
                 "stream's input by its name");
        err = SHEAF_ERR_NOT_FOUND;
    }
    for (size_t i = 0; i < n_jobs; i++) free(jobs[i]);
    free(jobs);
    sheaf_redis_destroy(r);
    return err;
}
