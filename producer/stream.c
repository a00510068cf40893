/* producer/stream.c - `sheaf stream`: the loop of a stream process.
 *
 * One thread, one loop: take a record from the input topic, turn it into a
 * document (stream_record.c), register it in Redis and produce its chunks
 * to <prefix>.map; serve delivery reports; store input offsets; every
 * second look at the map stage's backlog and report lag.
 *
 * Exactly once per input record.  A record's document is registered by
 * its place (topic/partition/offset, common/state/lua/stream_doc.lua) before any
 * of its chunks is produced, and the input offset is stored only once the
 * broker acknowledged every chunk (each message carries its record as a
 * delivery hook, sheaf/kafka.h), per partition never past an earlier
 * record still under way (the offset window, sheaf/offwin.h).  A process
 * killed anywhere in between leaves the offset behind; whoever reads the
 * record again gets the same document, the same chunk keys
 * ("<name>/<doc>/<idx>"), and the workers' first-write-wins store counts
 * each chunk once.  A record that cannot be read goes to <prefix>.dlq with
 * its topic, partition, offset and reason (sheaf_kafka_dlq_send headers),
 * and its offset moves on once the DLQ has it.
 *
 * Rebalances: a revoked partition's window is forgotten and its
 * generation bumped, so reports of its records still arriving store no
 * offset (the new owner reads them again and finds them registered).
 *
 * Back-pressure: the backlog is the stream's chunks registered and not
 * yet recorded by the workers (Redis counters, fleet-wide).  Above
 * stream.max_pending_chunks every assigned partition is paused, below
 * half of it resumed: the input waits on Kafka instead of flooding the map
 * topic.  The loop keeps polling while paused (group membership).
 *
 * Failures: Redis down is waited out (the record is retried, the consumer
 * polled meanwhile); a chunk the producer cannot deliver ends the process
 * with an error (its offset was never stored: a restart redoes it). */
#include "stream.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inputs.h"
#include "publish.h"
#include "sheaf/health.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/metrics.h"
#include "sheaf/offwin.h"
#include "sheaf/pipeline.h"
#include "sheaf/program.h"
#include "sheaf/state.h"
#include "sheaf/state_stream.h"
#include "sheaf/util.h"

#define TICK_MS 1000            /* backlog check, lag report, metrics */
#define EXPIRE_EVERY_MS 60000
#define EXPIRE_BATCH 1000
#define REDIS_RETRY_MS 500
#define DRAIN_MS 30000

typedef struct stream stream;

/* One input record on its way: pending counts the messages produced for
 * it and not yet acknowledged, plus one while it is being produced. */
typedef struct rec {
    sheaf_kafka_delivery hook;  /* first: the messages' opaque */
    stream *s;
    int32_t partition;
    int64_t offset;
    uint32_t gen;               /* its partition's generation when taken */
    int pending;
} rec;

struct stream {
    const sheaf_config *cfg;
    const sheaf_stream_opts *o;
    sheaf_config eff;           /* cfg with the pipeline's chunking */
    sheaf_input_opts io;
    int io_ready;
    sheaf_pipeline *pipe;
    char *pipe_json;
    char map_topic[256], dlq_topic[256], group[256], consumer_name[128];
    rd_kafka_t *consumer, *producer;
    sheaf_chunk_producer cp;
    sheaf_redis *redis;
    sheaf_offwin *window;
    uint32_t gen[SHEAF_KAFKA_MAX_PARTITIONS];
    int64_t stored[SHEAF_KAFKA_MAX_PARTITIONS]; /* last offset stored, -1 none */
    int paused;
    int assigned;               /* an assignment came (even an empty one) */
    int failed;                 /* a delivery failed: stop */
    int hold;                   /* a record was left unfinished: store no more offsets */
    char fail_why[SHEAF_ERRSTR_SIZE];
    size_t in_flight;           /* records taken and not finished */
    int64_t tick_ms, beat_ms, expire_ms;
    /* The backlog as last read from Redis plus the chunks this process
     * produced since: checked after every record, so one process never
     * overshoots the bound by more than a record. */
    int64_t waiting;
    uint64_t docs, dup, dlq;
    sheaf_stream_windows windows; /* what closing windows needs (stream_window.c) */
    /* metrics (metrics.port) */
    sheaf_metrics *metrics;
    sheaf_health *health;
    sheaf_metrics_server *server;
    sheaf_metric *m_docs, *m_dlq, *m_paused, *m_in_flight, *m_waiting, *m_p50, *m_p99,
        *m_lag_total, *m_records_in_flight;
};

/* ---- records ---- */

static void store_offsets(stream *s)
{
    int32_t p;
    int64_t off;
    rd_kafka_topic_partition_list_t *l = NULL;
    if (s->hold || s->failed) return;
    while (sheaf_offwin_take_next(s->window, &p, &off)) {
        if (!l) l = rd_kafka_topic_partition_list_new(8);
        rd_kafka_topic_partition_list_add(l, s->o->from_topic, p)->offset = off;
        if (p >= 0 && p < SHEAF_KAFKA_MAX_PARTITIONS) s->stored[p] = off;
    }
    if (!l) return;
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(s->consumer, l);
    if (err) sheaf_debug("stream", "storing offsets: %s", rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

/* The record's last message is acknowledged (or it had none left). */
static void rec_release(rec *r)
{
    stream *s = r->s;
    if (--r->pending > 0) return;
    if (r->partition < SHEAF_KAFKA_MAX_PARTITIONS && s->gen[r->partition] == r->gen)
        sheaf_offwin_finish(s->window, r->partition, r->offset);
    s->in_flight--;
    free(r);
}

static void on_delivery(sheaf_kafka_delivery *d, rd_kafka_resp_err_t err)
{
    rec *r = (rec *)d;
    if (err && !r->s->failed) {
        r->s->failed = 1;
        snprintf(r->s->fail_why, sizeof(r->s->fail_why),
                 "record %s [%d] @%lld: a message could not be delivered: %s",
                 r->s->o->from_topic, (int)r->partition, (long long)r->offset,
                 rd_kafka_err2str(err));
    }
    /* A failed record is left pending: its offset is never stored, and the
     * loop stops (a restart reads it again). */
    if (!err) rec_release(r);
}

/* Sends a bad record to the DLQ; its offset moves on once the DLQ has it. */
static sheaf_err dead_letter(stream *s, rec *r, const rd_kafka_message_t *m, const char *why)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_warn("stream", "%s [%d] @%lld: %s (to %s)", s->o->from_topic, (int)m->partition,
               (long long)m->offset, why, s->dlq_topic);
    r->pending++;
    /* Refused at once, mostly a full local queue: it drains as delivery
     * reports are served, so poll and try again for a while. */
    sheaf_err e;
    int64_t until = sheaf_mono_ms() + 10000;
    while ((e = sheaf_kafka_dlq_send(s->producer, s->dlq_topic, m, why, s->o->name, &r->hook,
                                     errstr, sizeof(errstr))) != SHEAF_OK &&
           !sheaf_stop && sheaf_mono_ms() < until)
        rd_kafka_poll(s->producer, 100);
    if (e != SHEAF_OK) {
        r->pending--;
        snprintf(s->fail_why, sizeof(s->fail_why), "%s", errstr);
        return SHEAF_ERR_KAFKA;
    }
    s->dlq++;
    sheaf_metric_inc(s->m_dlq);
    if (sheaf_state_job_dlq_incr(s->redis, s->o->name, errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("stream", "counting a dead letter: %s", errstr);
    return SHEAF_OK;
}

/* Registers the document, retrying while Redis is unreachable (the
 * producer is served meanwhile; should the wait outlast the consumer's
 * max.poll.interval.ms, the group moves the partitions and their new owner
 * reads this record again).  SHEAF_ERR_STOPPED on shutdown. */
static sheaf_err register_doc(stream *s, const char *place, const sheaf_stream_record *d,
                              uint32_t chunks, int64_t t0, char *doc, size_t doclen,
                              int *version, int *fresh, char *errstr, size_t errlen)
{
    int64_t logged = 0;
    for (;;) {
        sheaf_err err = sheaf_state_stream_doc_w(s->redis, s->o->name, place, d->id, chunks,
                                                 d->meta_json, t0, s->cfg->stream_window_docs,
                                                 s->cfg->stream_window_ms, doc, doclen, version,
                                                 fresh, errstr, errlen);
        if (err != SHEAF_ERR_REDIS) return err;
        if (sheaf_stop) return SHEAF_ERR_STOPPED;
        if (sheaf_mono_ms() - logged > 10000) {
            sheaf_warn("stream", "Redis: %s (retrying)", errstr);
            logged = sheaf_mono_ms();
        }
        rd_kafka_poll(s->producer, 0);
        sheaf_sleep_ms(REDIS_RETRY_MS);
    }
}

/* A good record: chunk, register, produce. */
static sheaf_err produce_doc(stream *s, rec *r, const rd_kafka_message_t *m,
                             const sheaf_stream_record *d)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", place[600], doc[600];
    sheaf_chunk_vec cv = {0};
    sheaf_err err;
    int version = 0, fresh = 0;
    rd_kafka_timestamp_type_t tstype;
    int64_t t0 = rd_kafka_message_timestamp(m, &tstype);

    err = sheaf_stream_record_chunk(&s->io.chunk, d, &cv, errstr, sizeof(errstr));
    if (err == SHEAF_ERR_NOMEM) goto done;
    if (err != SHEAF_OK) {
        /* Too large a page: the record is bad, not the stream. */
        err = dead_letter(s, r, m, errstr);
        goto done;
    }
    if (t0 < 0) t0 = sheaf_wall_ms();
    snprintf(place, sizeof(place), "%s/%d/%lld", s->o->from_topic, (int)m->partition,
             (long long)m->offset);
    err = register_doc(s, place, d, (uint32_t)cv.n, t0, doc, sizeof(doc), &version, &fresh,
                       errstr, sizeof(errstr));
    if (err != SHEAF_OK) {
        snprintf(s->fail_why, sizeof(s->fail_why), "%s", errstr);
        goto done;
    }
    if (fresh) {
        s->docs++;
        sheaf_metric_inc(s->m_docs);
    } else {
        s->dup++;
    }
    sheaf_debug("stream", "%s: document %s (version %d%s), %zu chunk(s)", place, doc, version,
                fresh ? "" : ", registered before", cv.n);
    sheaf_doc_out out = {doc, (uint32_t)cv.n, d->has_pages, d->meta, d->meta_len};
    s->cp.delivery = &r->hook;
    s->waiting += (int64_t)cv.n;
    for (size_t i = 0; i < cv.n; i++) {
        r->pending++;
        err = sheaf_chunk_producer_send(&s->cp, &out, &cv.v[i], errstr, sizeof(errstr));
        if (err != SHEAF_OK) {
            r->pending--;
            snprintf(s->fail_why, sizeof(s->fail_why), "%s", errstr);
            goto done;
        }
    }
done:
    s->cp.delivery = NULL;
    sheaf_chunk_vec_free(&cv);
    return err;
}

/* Takes one record.  Anything but SHEAF_OK stops the stream. */
static sheaf_err take(stream *s, const rd_kafka_message_t *m)
{
    char msg[SHEAF_PROBLEM_SIZE];
    sheaf_stream_record d;
    sheaf_err err;
    rec *r = calloc(1, sizeof(*r));
    if (!r) return SHEAF_ERR_NOMEM;
    if (m->partition < 0 || m->partition >= SHEAF_KAFKA_MAX_PARTITIONS ||
        sheaf_offwin_begin(s->window, m->partition, m->offset) != SHEAF_OK) {
        /* Out of order (cannot happen with one consumer per partition):
         * leave it uncounted rather than store past it. */
        sheaf_warn("stream", "%s [%d] @%lld: out of order; skipped for now", s->o->from_topic,
                   (int)m->partition, (long long)m->offset);
        free(r);
        return SHEAF_OK;
    }
    r->hook.done = on_delivery;
    r->s = s;
    r->partition = m->partition;
    r->offset = m->offset;
    r->gen = s->gen[m->partition];
    r->pending = 1; /* until everything is produced */
    s->in_flight++;
    err = sheaf_stream_record_parse(s->cfg, &s->io, m->key, m->key_len, m->payload, m->len, &d,
                                    msg, sizeof(msg));
    if (err == SHEAF_ERR_INVALID) err = dead_letter(s, r, m, msg);
    else if (err == SHEAF_OK) err = produce_doc(s, r, m, &d);
    sheaf_stream_record_clear(&d);
    /* Unfinished (shutdown while Redis was away, a refusal): no offset may
     * pass it, so none is stored any more; the stream stops and the
     * record is read again by whoever takes the partition. */
    if (err != SHEAF_OK) s->hold = 1;
    rec_release(r);
    return err;
}

/* ---- partitions ---- */

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    stream *s = opaque;
    rd_kafka_error_t *error = NULL;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        error = rd_kafka_incremental_assign(rk, parts);
        s->assigned = 1;
        if (parts->cnt > 0) {
            if (s->paused) rd_kafka_pause_partitions(rk, parts);
            else rd_kafka_resume_partitions(rk, parts);
        }
        sheaf_info("stream", "%s: %d partition(s) assigned", s->o->from_topic, parts->cnt);
    } else {
        for (int i = 0; i < parts->cnt; i++) {
            int32_t p = parts->elems[i].partition;
            sheaf_offwin_forget(s->window, p);
            if (p >= 0 && p < SHEAF_KAFKA_MAX_PARTITIONS) {
                s->gen[p]++;
                s->stored[p] = -1;
            }
        }
        /* Leave unpaused (see worker.c: a pause stays on the partition). */
        if (s->paused && parts->cnt > 0) rd_kafka_resume_partitions(rk, parts);
        error = rd_kafka_incremental_unassign(rk, parts);
        sheaf_info("stream", "%s: %d partition(s) revoked", s->o->from_topic, parts->cnt);
    }
    if (error) {
        sheaf_error("stream", "rebalance: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    rd_kafka_topic_partition_list_t *now = NULL;
    if (rd_kafka_assignment(rk, &now) == RD_KAFKA_RESP_ERR_NO_ERROR && now) {
        sheaf_info("stream", "now owning %d partition(s)", now->cnt);
        rd_kafka_topic_partition_list_destroy(now);
    }
}

static void set_paused(stream *s, int paused, int64_t waiting)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(s->consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || !parts) return;
    if (paused) rd_kafka_pause_partitions(s->consumer, parts);
    else rd_kafka_resume_partitions(s->consumer, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    s->paused = paused;
    sheaf_metric_set(s->m_paused, paused);
    sheaf_info("stream", "%s: %lld chunk(s) wait for the map stage: input %s", s->o->name,
               (long long)waiting, paused ? "paused" : "resumed");
}

/* The lag of each assigned partition: high watermark minus the offset
 * stored (or, before any, the position). */
static void report(stream *s)
{
    char errstr[SHEAF_ERRSTR_SIZE], val[32];
    rd_kafka_topic_partition_list_t *parts = NULL;
    int32_t ps[SHEAF_STREAM_MAX_PARTS];
    int64_t lags[SHEAF_STREAM_MAX_PARTS], total = 0;
    size_t n = 0;
    if (rd_kafka_assignment(s->consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || !parts) return;
    rd_kafka_position(s->consumer, parts);
    for (int i = 0; i < parts->cnt && n < SHEAF_STREAM_MAX_PARTS; i++) {
        int32_t p = parts->elems[i].partition;
        int64_t lo = -1, hi = -1, at = parts->elems[i].offset;
        if (rd_kafka_get_watermark_offsets(s->consumer, s->o->from_topic, p, &lo, &hi) ||
            hi < 0)
            continue;
        if (p >= 0 && p < SHEAF_KAFKA_MAX_PARTITIONS && s->stored[p] >= 0) at = s->stored[p];
        else if (sheaf_offwin_in_flight(s->window, p)) at = sheaf_offwin_oldest(s->window, p);
        if (at < 0) at = lo >= 0 ? lo : 0;
        ps[n] = p;
        lags[n] = hi > at ? hi - at : 0;
        total += lags[n];
        if (s->metrics) {
            snprintf(val, sizeof(val), "%d", (int)p);
            sheaf_metric_set(sheaf_metrics_add(s->metrics, SHEAF_METRIC_GAUGE,
                                               "sheaf_stream_input_lag",
                                               "Input records not yet committed, per partition "
                                               "this process reads.", "partition", val, NULL, 0,
                                               errstr, sizeof(errstr)),
                             lags[n]);
        }
        n++;
    }
    rd_kafka_topic_partition_list_destroy(parts);
    sheaf_metric_set(s->m_lag_total, total);
    if (sheaf_state_stream_report(s->redis, s->o->name, s->consumer_name, ps, lags, n, s->paused,
                                  errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_debug("stream", "reporting lag: %s", errstr);
}

/* Once a second: back-pressure, reports, metrics; beats and expiry. */
static void tick(stream *s)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    int64_t now = sheaf_mono_ms(), waiting = 0, docs = 0;
    if (now - s->tick_ms < TICK_MS) return;
    s->tick_ms = now;
    if (sheaf_state_stream_backlog(s->redis, s->o->name, &waiting, &docs, errstr,
                                   sizeof(errstr)) == SHEAF_OK) {
        int64_t max = s->cfg->stream_max_pending_chunks;
        s->waiting = waiting;
        if (max > 0 && !s->paused && waiting > max) set_paused(s, 1, waiting);
        else if (s->paused && (max == 0 || waiting <= max / 2)) set_paused(s, 0, waiting);
        sheaf_metric_set(s->m_waiting, waiting);
        sheaf_metric_set(s->m_in_flight, docs);
    }
    sheaf_metric_set(s->m_records_in_flight, (int64_t)s->in_flight);
    report(s);
    sheaf_stream_windows_tick(&s->windows);
    if (s->metrics) {
        sheaf_stream_status st;
        if (sheaf_state_stream_status(s->redis, s->o->name, &st, errstr, sizeof(errstr)) ==
            SHEAF_OK) {
            sheaf_metric_set(s->m_p50, st.p50_recent_ms);
            sheaf_metric_set(s->m_p99, st.p99_recent_ms);
        }
        sheaf_health_set(s->health, "redis", 1, "ok");
        int ok = sheaf_kafka_brokers_ok(errstr, sizeof(errstr));
        sheaf_health_set(s->health, "kafka", ok, errstr);
    }
    if (now - s->beat_ms >= s->cfg->producer_heartbeat_ms) {
        s->beat_ms = now;
        if (sheaf_state_job_beat(s->redis, s->o->name, errstr, sizeof(errstr)) != SHEAF_OK)
            sheaf_debug("stream", "beat: %s", errstr);
    }
    if (now - s->expire_ms >= EXPIRE_EVERY_MS) {
        long long dropped = 0;
        s->expire_ms = now;
        if (sheaf_state_stream_expire(s->redis, s->cfg, s->o->name, EXPIRE_BATCH, &dropped,
                                      errstr, sizeof(errstr)) != SHEAF_OK)
            sheaf_warn("stream", "retention: %s", errstr);
        else if (dropped)
            sheaf_info("stream", "%s: %lld finished document(s) past job.retention_s dropped",
                       s->o->name, dropped);
    }
}

/* ---- start and stop ---- */

/* The process's series (metrics.port). */
static const struct {
    size_t at;                  /* offset of the sheaf_metric pointer in stream */
    sheaf_metric_type type;
    const char *name, *help;
} stream_metrics[] = {
    {offsetof(stream, m_docs), SHEAF_METRIC_COUNTER, "sheaf_stream_docs_total",
     "Documents this process registered from input records."},
    {offsetof(stream, m_dlq), SHEAF_METRIC_COUNTER, "sheaf_stream_dlq_total",
     "Input records sent to the dead-letter topic."},
    {offsetof(stream, m_paused), SHEAF_METRIC_GAUGE, "sheaf_stream_paused",
     "1 while back-pressure holds the input paused."},
    {offsetof(stream, m_in_flight), SHEAF_METRIC_GAUGE, "sheaf_stream_docs_in_flight",
     "Documents of the stream registered and without a result (fleet-wide)."},
    {offsetof(stream, m_records_in_flight), SHEAF_METRIC_GAUGE, "sheaf_stream_records_in_flight",
     "Records this process took whose chunks are not all acknowledged."},
    {offsetof(stream, m_waiting), SHEAF_METRIC_GAUGE, "sheaf_stream_chunks_waiting",
     "The stream's chunks waiting for the map stage (fleet-wide)."},
    {offsetof(stream, m_lag_total), SHEAF_METRIC_GAUGE, "sheaf_stream_input_lag_total",
     "Input records not yet committed, over the partitions this process reads."},
    {offsetof(stream, m_p50), SHEAF_METRIC_GAUGE, "sheaf_stream_latency_p50_ms",
     "End-to-end document latency (input record timestamp to result), median over the last "
     "5 minutes; -1 with none."},
    {offsetof(stream, m_p99), SHEAF_METRIC_GAUGE, "sheaf_stream_latency_p99_ms",
     "End-to-end document latency, 99th percentile over the last 5 minutes; -1 with none."},
};

static sheaf_err metrics_start(stream *s, char *errstr, size_t errlen)
{
    if (s->cfg->metrics_port <= 0) return SHEAF_OK;
    if (!(s->metrics = sheaf_metrics_create()) || !(s->health = sheaf_health_create()))
        goto nomem;
    for (size_t i = 0; i < sizeof(stream_metrics) / sizeof(stream_metrics[0]); i++) {
        sheaf_metric **m = (sheaf_metric **)((char *)s + stream_metrics[i].at);
        if (!(*m = sheaf_metrics_add(s->metrics, stream_metrics[i].type, stream_metrics[i].name,
                                     stream_metrics[i].help, NULL, NULL, NULL, 0, errstr,
                                     errlen)))
            return SHEAF_ERR_INTERNAL;
    }
    if (sheaf_health_add(s->health, "kafka", 0) != SHEAF_OK ||
        sheaf_health_add(s->health, "redis", 0) != SHEAF_OK)
        goto nomem;
    if (!(s->server = sheaf_metrics_server_create(s->cfg, s->metrics, s->health, errstr, errlen)))
        return SHEAF_ERR_CONFIG;
    return SHEAF_OK;
nomem:
    snprintf(errstr, errlen, "out of memory");
    return SHEAF_ERR_NOMEM;
}

static sheaf_err stream_start(stream *s, char *errstr, size_t errlen)
{
    sheaf_err err;
    char host[64] = "host";
    int created = 0;

    for (int i = 0; i < SHEAF_KAFKA_MAX_PARTITIONS; i++) s->stored[i] = -1;
    if (!(s->pipe = sheaf_pipeline_load(s->cfg->pipeline, s->cfg, errstr, errlen)))
        return SHEAF_ERR_CONFIG;
    sheaf_pipeline_chunking(s->cfg, s->pipe, &s->eff);
    if ((err = sheaf_input_opts_init(&s->io, &s->eff, errstr, errlen)) != SHEAF_OK) return err;
    s->io_ready = 1;
    if (!(s->pipe_json = sheaf_pipeline_to_json(s->pipe))) return SHEAF_ERR_NOMEM;
    if (s->cfg->stream_window_docs > 0 && s->cfg->stream_window_ms > 0) {
        snprintf(errstr, errlen, "stream.window_docs and stream.window_ms: set one of them");
        return SHEAF_ERR_CONFIG;
    }
    if ((s->pipe->n_group_by || s->pipe->overview.present) && !s->cfg->stream_window_docs &&
        !s->cfg->stream_window_ms)
        sheaf_info("stream", "pipeline %s: its group and overview stages run per window "
                   "(stream.window_docs or stream.window_ms), and there is none: each "
                   "document's result is written as it finishes", s->cfg->pipeline);
    sheaf_topic_name(s->cfg, "map", s->map_topic, sizeof(s->map_topic));
    sheaf_topic_name(s->cfg, "dlq", s->dlq_topic, sizeof(s->dlq_topic));
    if (s->cfg->stream_group && *s->cfg->stream_group)
        snprintf(s->group, sizeof(s->group), "%s", s->cfg->stream_group);
    else
        snprintf(s->group, sizeof(s->group), "sheaf-stream-%s", s->o->name);
    gethostname(host, sizeof(host) - 1);
    snprintf(s->consumer_name, sizeof(s->consumer_name), "sheaf-stream-%s-%d", host, (int)getpid());

    if ((err = metrics_start(s, errstr, errlen)) != SHEAF_OK) return err;
    if (!(s->window = sheaf_offwin_create())) return SHEAF_ERR_NOMEM;
    if (!(s->producer = sheaf_kafka_producer_new(s->cfg, s->consumer_name, errstr, errlen)))
        return SHEAF_ERR_KAFKA;
    if ((err = sheaf_kafka_check_topic(s->producer, s->map_topic, 10000, errstr, errlen)) !=
            SHEAF_OK ||
        (err = sheaf_kafka_check_topic(s->producer, s->o->from_topic, 10000, errstr, errlen)) !=
            SHEAF_OK)
        return err;
    if ((err = sheaf_chunk_producer_init(&s->cp, s->producer, s->map_topic, s->o->name,
                                         s->pipe->version, errstr, errlen)) != SHEAF_OK)
        return err;
    if (!(s->redis = sheaf_redis_connect(s->cfg, errstr, errlen))) return SHEAF_ERR_REDIS;
    sheaf_stream_def def = {s->o->name, s->pipe_json, s->pipe->version, s->map_topic,
                            s->o->from_topic, s->group};
    if ((err = sheaf_state_stream_open(s->redis, s->cfg, &def, &created, errstr, errlen)) !=
        SHEAF_OK)
        return err;
    if (!(s->consumer = sheaf_kafka_consumer_new(s->cfg, s->consumer_name, s->group, on_rebalance,
                                                 s, errstr, errlen)))
        return SHEAF_ERR_KAFKA;
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, s->o->from_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t kerr = rd_kafka_subscribe(s->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (kerr) {
        snprintf(errstr, errlen, "cannot subscribe to %s: %s", s->o->from_topic,
                 rd_kafka_err2str(kerr));
        return SHEAF_ERR_KAFKA;
    }
    s->windows = (sheaf_stream_windows){s->cfg, s->redis, s->producer, s->o->name, s->pipe,
                                        s->pipe_json, s->map_topic, s->consumer_name};
    sheaf_info("stream", "stream %s (%s): reading %s in group %s, pipeline %s (%s), chunks to %s",
               s->o->name, created ? "created" : "attached", s->o->from_topic, s->group,
               s->cfg->pipeline, s->pipe->version, s->map_topic);
    return SHEAF_OK;
}

/* SIGTERM: every chunk delivered, offsets stored, the consumer closed
 * (which commits them and leaves the group at once). */
static void stream_stop(stream *s)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_metrics_server_destroy(s->server);
    if (s->producer) {
        if (!s->failed && sheaf_kafka_flush(s->producer, DRAIN_MS, errstr, sizeof(errstr)) !=
                              SHEAF_OK)
            sheaf_warn("stream", "producer: %s; those records will be read again", errstr);
        if (s->consumer) store_offsets(s);
    }
    /* librdkafka 2.0.2 aborts destroying a cooperative-sticky consumer
     * that never had an assignment (its issue 4312, fixed in 2.3): wait
     * for the group to answer, else leave the consumer to the exit (the
     * group drops it after its session timeout; it holds no offsets). */
    int64_t until = sheaf_mono_ms() + s->cfg->session_timeout_ms;
    while (s->consumer && !s->assigned && sheaf_mono_ms() < until) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, 100);
        if (m) rd_kafka_message_destroy(m); /* not taken: its offset is not stored */
    }
    if (s->consumer && !s->assigned) {
        sheaf_warn("stream", "no partition assignment came; leaving the group by timeout");
    } else if (s->consumer) {
        rd_kafka_resp_err_t err = rd_kafka_consumer_close(s->consumer);
        if (err) sheaf_warn("stream", "consumer close: %s", rd_kafka_err2str(err));
        rd_kafka_destroy(s->consumer);
    }
    sheaf_chunk_producer_clear(&s->cp);
    /* After a failed flush, records still pending hold hooks into messages
     * the destroy purges; a report served there still finds s alive (its
     * window goes after the producer). */
    sheaf_kafka_producer_destroy(s->producer);
    sheaf_redis_destroy(s->redis);
    sheaf_offwin_destroy(s->window);
    if (s->io_ready) sheaf_input_opts_clear(&s->io);
    free(s->pipe_json);
    sheaf_pipeline_destroy(s->pipe);
    sheaf_metrics_destroy(s->metrics);
    sheaf_health_destroy(s->health);
}

sheaf_err sheaf_stream_run(const sheaf_config *cfg, const sheaf_stream_opts *o, char *errstr,
                           size_t errlen)
{
    stream s;
    sheaf_err err;
    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.o = o;
    s.fail_why[0] = '\0';
    err = stream_start(&s, errstr, errlen);
    while (err == SHEAF_OK && !sheaf_stop && !s.failed) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s.consumer, 100);
        if (m && m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                sheaf_warn("stream", "consumer: %s", rd_kafka_message_errstr(m));
        } else if (m) {
            err = take(&s, m);
            if (s.cfg->stream_max_pending_chunks > 0 && !s.paused &&
                s.waiting > s.cfg->stream_max_pending_chunks)
                set_paused(&s, 1, s.waiting);
            if (err != SHEAF_OK && err != SHEAF_ERR_STOPPED)
                snprintf(errstr, errlen, "%s", s.fail_why[0] ? s.fail_why : sheaf_strerror(err));
        }
        if (m) rd_kafka_message_destroy(m);
        rd_kafka_poll(s.producer, 0);
        store_offsets(&s);
        tick(&s);
    }
    if (err == SHEAF_ERR_STOPPED) err = SHEAF_OK;
    if (s.failed && err == SHEAF_OK) {
        err = SHEAF_ERR_KAFKA;
        snprintf(errstr, errlen, "%s", s.fail_why);
    }
    if (err == SHEAF_OK)
        sheaf_info("stream", "stream %s: stopping; %llu document(s) registered, %llu record(s) "
                   "read again, %llu dead-lettered", o->name, (unsigned long long)s.docs,
                   (unsigned long long)s.dup, (unsigned long long)s.dlq);
    stream_stop(&s);
    return err;
}
