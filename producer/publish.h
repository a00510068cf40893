/* producer/publish.h - pass 2 of a submit (internal to producer/).
 *
 *   produce.c  one chunk to one Kafka message: encode, key, headers,
 *              producev with back-pressure, delivery report polling.
 *   publish.c  pass 2: registers the job and, batch by batch, the
 *              documents in Redis, then re-reads and re-chunks each
 *              document and produces its chunks; marks the job running or
 *              failed at the end.
 *   beat.c     the job's heartbeat while pass 2 runs. */
#ifndef SHEAF_PRODUCER_PUBLISH_H
#define SHEAF_PRODUCER_PUBLISH_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>
#include "scan.h"
#include "sheaf/buf.h"
#include "sheaf/chunker.h"
#include "sheaf/config.h"
#include "sheaf/pipeline.h"
#include "sheaf/error.h"

/* ---- produce.c ---- */

typedef struct sheaf_chunk_producer {
    rd_kafka_t *rk;          /* borrowed */
    rd_kafka_topic_t *rkt;   /* owned topic handle */
    const char *job;         /* borrowed */
    const char *pv;          /* borrowed */
    sheaf_buf key;           /* "<job>/<doc>/<idx>" */
    sheaf_buf value;         /* the encoded message */
    sheaf_buf text;          /* the chunk text, NUL-terminated for the codec */
    uint64_t produced;       /* messages handed to librdkafka */
    void *delivery;          /* each message's opaque: a sheaf_kafka_delivery hook or NULL
                                (set per document by `sheaf stream`) */
} sheaf_chunk_producer;

/* The document a chunk belongs to, as the message needs it. */
typedef struct sheaf_doc_out {
    const char *id;
    uint32_t chunks;         /* count from pass 1: the message's "n" */
    int has_pages;           /* pf/pl from the chunk, else 0 */
    sheaf_kv *meta;          /* flattened metadata (borrowed) */
    size_t meta_len;
} sheaf_doc_out;

/* Prepares to produce to topic.  rk, job and pv must outlive cp. */
sheaf_err sheaf_chunk_producer_init(sheaf_chunk_producer *cp, rd_kafka_t *rk, const char *topic,
                                    const char *job, const char *pv, char *errstr,
                                    size_t errlen);
/* Produces one chunk (asynchronously: delivery is checked by the final
 * flush).  Waits while librdkafka's queue is full.  Fails with
 * SHEAF_ERR_KAFKA when producing is refused or a delivery has already
 * failed (no point going on: the job will fail), SHEAF_ERR_STOPPED on
 * shutdown, SHEAF_ERR_INTERNAL when the chunk index is not below the pass-1
 * count. */
sheaf_err sheaf_chunk_producer_send(sheaf_chunk_producer *cp, const sheaf_doc_out *doc,
                                    const sheaf_chunk *ch, char *errstr, size_t errlen);
void sheaf_chunk_producer_clear(sheaf_chunk_producer *cp);

/* ---- publish.c ---- */

typedef struct sheaf_publish_args {
    const sheaf_config *cfg;
    const sheaf_input_opts *opts;
    const sheaf_scan *scan;     /* pass 1's result: the documents to publish */
    const char *job;
    const char *pv;
    const char *pipeline_json;
    const char *topic;          /* <prefix>.map */
    const sheaf_pipeline *pipeline; /* for its metadata grouping levels */
    int resume;                 /* take the existing job over instead of creating it */
} sheaf_publish_args;

/* A document's metadata group paths under pipeline pl (see sheaf_doc_reg):
 * one malloc'd JSON array per "meta." level into paths; returns how many. */
size_t sheaf_group_paths(const sheaf_pipeline *pl, const char *meta_json, char **paths);

/* Records where rk's messages since its creation landed (first and last
 * offset per partition) as job's ranges, so `sheaf replay` and `sheaf
 * repair` can read exactly them again. */
struct sheaf_redis;
sheaf_err sheaf_record_offsets(rd_kafka_t *rk, struct sheaf_redis *r, const char *job,
                               char *errstr, size_t errlen);

/* ---- beat.c ---- */

/* A thread that marks job alive in Redis (sheaf_state_job_beat) every
 * producer.heartbeat_ms on a connection of its own, from start to stop.
 * It beats whatever the submit's main thread is blocked in (a flush
 * waiting for brokers, a full queue), so `sheaf status` tells a slow
 * submit from a dead one.  A failed beat is logged, not fatal.  NULL with
 * errstr when Redis or the thread cannot be had; cfg and job must outlive
 * it. */
typedef struct sheaf_beat sheaf_beat;
sheaf_beat *sheaf_beat_start(const sheaf_config *cfg, const char *job, char *errstr,
                             size_t errlen);
/* Stops the thread and frees everything; NULL is a no-op. */
void sheaf_beat_stop(sheaf_beat *b);

/* Pass 2.  On success every chunk is delivered and the job is running;
 * *chunks says how many were produced.  Once the job exists in Redis, any
 * failure marks it failed with the reason before returning. */
sheaf_err sheaf_publish(const sheaf_publish_args *a, uint64_t *chunks, char *errstr,
                        size_t errlen);

#endif
