/* sheaf/state_stream.h - the Redis state of a stream (`sheaf stream`).
 *
 * A stream NAME is a long-lived job NAME (every key of sheaf/state.h, hash
 * tag {NAME}) that stays "producing" while documents keep arriving, so the
 * workers and reducers treat its documents exactly like a batch job's,
 * and nothing ever counts it done.  On top of a job's keys:
 *
 *   sheaf:{N}:job          + stream_from (input topic), stream_group
 *                            (its consumer group)
 *   sheaf:{N}:d:<doc>      + t0 (input record timestamp, ms), src (its
 *                            place), id (the id the record gave), v (its
 *                            version: 1, 2, ...)
 *   sheaf:{N}:src          hash    "<topic>/<partition>/<offset>" -> document
 *   sheaf:{N}:idv          hash    document id -> last version
 *   sheaf:{N}:finished     zset    documents with a result, score = when
 *   sheaf:{N}:lat          hash    end-to-end latency histogram:
 *                                  all:<b> and m<minute>:<b> = documents,
 *                                  bucket b = floor(4 log2(ms))
 *   sheaf:{N}:wd:<k>       list    window k's documents (registration order)
 *   sheaf:{N}:wopen        set     windows not yet closed
 *   sheaf:{N}:wclose:<k>   string  who is closing window k (a lease)
 *   sheaf:{N}:stream       hash    lag:<partition> = "<lag> <ms>" and
 *                                  paused:<consumer> = "<0|1> <ms>", as the
 *                                  stream processes last saw them
 *
 * The scripts are common/state/lua/stream_*.lua; doc_result_store.lua feeds
 * lat and finished for documents that carry t0. */
#ifndef SHEAF_STATE_STREAM_H
#define SHEAF_STATE_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/state.h"

typedef struct sheaf_stream_def {
    const char *name;            /* the stream's job id */
    const char *pipeline_json;
    const char *pv;
    const char *map_topic;       /* <prefix>.map */
    const char *from_topic;      /* the input topic */
    const char *group;           /* its consumer group */
} sheaf_stream_def;

/* Creates the stream's job, or attaches to it when it exists as a stream
 * of the same input topic and pipeline version (*created says which).
 * SHEAF_ERR_INVALID with the reason when NAME is another job, a stream of
 * another topic or pipeline (replay is the way to run another), or was
 * cancelled. */
sheaf_err sheaf_state_stream_open(sheaf_redis *r, const sheaf_config *cfg,
                                  const sheaf_stream_def *d, int *created, char *errstr,
                                  size_t errlen);

/* Registers the document of the record at place ("topic/partition/offset")
 * once (common/state/lua/stream_doc.lua): doc (at least 600 bytes) receives the
 * document's id in the job - the record's id, or "<id>#v<N>" for a later
 * version - *version its N, *fresh 1 when registered now.  A record read
 * again gets what it got the first time.  SHEAF_ERR_NOT_FOUND when the
 * stream job is gone or ended. */
sheaf_err sheaf_state_stream_doc(sheaf_redis *r, const char *name, const char *place,
                                 const char *id, uint32_t chunks, const char *meta_json,
                                 int64_t t0_ms, char *doc, size_t doclen, int *version,
                                 int *fresh, char *errstr, size_t errlen);

/* ---- windows (stream.window_docs, stream.window_ms) ---- */

/* Registers like sheaf_state_stream_doc, the document joining its window
 * (stream_doc.lua says which). */
sheaf_err sheaf_state_stream_doc_w(sheaf_redis *r, const char *name, const char *place,
                                   const char *id, uint32_t chunks, const char *meta_json,
                                   int64_t t0_ms, int window_docs, int64_t window_ms, char *doc,
                                   size_t doclen, int *version, int *fresh, char *errstr,
                                   size_t errlen);

/* The windows not yet closed, ascending (*ks malloc'd). */
sheaf_err sheaf_state_stream_windows(sheaf_redis *r, const char *name, long long **ks,
                                     size_t *n, char *errstr, size_t errlen);
/* Window k's documents in registration order, and each one's stored
 * result (results->v[i] NULL while it has none). */
sheaf_err sheaf_state_stream_window_docs(sheaf_redis *r, const char *name, long long k,
                                         sheaf_strlist *docs, sheaf_strlist *results,
                                         char *errstr, size_t errlen);
/* The right to close window k for ttl_ms (*got 1), unless another holds it. */
sheaf_err sheaf_state_stream_window_claim(sheaf_redis *r, const char *name, long long k,
                                          const char *owner, int ttl_ms, int *got,
                                          char *errstr, size_t errlen);
/* Window k is closed: out of wopen, its list and lease gone. */
sheaf_err sheaf_state_stream_window_closed(sheaf_redis *r, const char *name, long long k,
                                           char *errstr, size_t errlen);
/* Redis TIME in ms (windows by time are cut by Redis's clock). */
sheaf_err sheaf_state_time_ms(sheaf_redis *r, int64_t *ms, char *errstr, size_t errlen);

/* The document the record at place became, into doc ("" when it is not
 * known, or no longer: past retention). */
sheaf_err sheaf_state_stream_place_doc(sheaf_redis *r, const char *name, const char *place,
                                       char *doc, size_t doclen, char *errstr, size_t errlen);

/* The map stage's backlog of the stream: chunks registered and not yet
 * recorded, documents registered and without a result. */
sheaf_err sheaf_state_stream_backlog(sheaf_redis *r, const char *name, int64_t *chunks_waiting,
                                     int64_t *docs_in_flight, char *errstr, size_t errlen);

/* Publishes what one stream process sees: the lag of each partition it
 * reads (parts[i], lags[i]) and whether it holds them paused. */
sheaf_err sheaf_state_stream_report(sheaf_redis *r, const char *name, const char *consumer,
                                    const int32_t *parts, const int64_t *lags, size_t n,
                                    int paused, char *errstr, size_t errlen);

/* Drops finished documents older than job.retention_s (at most limit per
 * call; see stream_expire.lua; none with retention 0), latency minutes
 * older than an hour and reports of processes silent for a day. */
sheaf_err sheaf_state_stream_expire(sheaf_redis *r, const sheaf_config *cfg, const char *name,
                                    int limit, long long *dropped, char *errstr, size_t errlen);

#define SHEAF_STREAM_MAX_PARTS 256

typedef struct sheaf_stream_status {
    char from_topic[256], group[256];
    int32_t parts[SHEAF_STREAM_MAX_PARTS];   /* partitions reported, ascending */
    int64_t lags[SHEAF_STREAM_MAX_PARTS];    /* their last reported lag */
    int64_t lag_age_ms[SHEAF_STREAM_MAX_PARTS]; /* how old that report is */
    size_t n_parts;
    int64_t lag_total;
    int paused;                  /* a live process (report under 30 s) holds its input paused */
    int processes;               /* processes that reported in the last 30 s */
    int64_t chunks_waiting, docs_in_flight;
    uint64_t docs, docs_done, dlq;
    /* End-to-end latency (input record timestamp to result stored), ms:
     * since the start and over the last 5 minutes; -1 when no document. */
    int64_t p50_ms, p99_ms, p50_recent_ms, p99_recent_ms;
    uint64_t latency_docs, latency_docs_recent;
} sheaf_stream_status;

/* SHEAF_ERR_NOT_FOUND when name is no stream. */
sheaf_err sheaf_state_stream_status(sheaf_redis *r, const char *name, sheaf_stream_status *st,
                                    char *errstr, size_t errlen);

/* The q-quantile (0..1) of a latency histogram (counts by bucket b, see
 * above; n buckets from 0): the upper bound of the bucket that holds it,
 * in ms, or -1 for an empty histogram. */
int64_t sheaf_stream_quantile(const uint64_t *counts, size_t n, double q);

#define SHEAF_STREAM_LAT_BUCKETS 160   /* up to 2^40 ms */

#endif
