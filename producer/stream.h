/* producer/stream.h - `sheaf stream`: documents from the user's own topic.
 *
 * A long-running process, a member of the consumer group stream.group
 * (default sheaf-stream-<name>) on the input topic: any number of them
 * share its partitions.  Each record is one document of the stream job
 * <name> (sheaf/state_stream.h), chunked, registered and produced to
 * <prefix>.map as `sheaf submit` does; the fleet maps it and the reducer
 * writes its result as soon as it is done.  docs/stream.md tells the
 * design.  stream.c: the loop of a stream process; stream_record.c: a
 * record to a document; stream_window.c: windows; stream_replay.c: replay
 * of a time window of the input. */
#ifndef SHEAF_PRODUCER_STREAM_H
#define SHEAF_PRODUCER_STREAM_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>
#include "sheaf/chunker.h"
#include "sheaf/config.h"
#include "sheaf/error.h"

typedef struct sheaf_stream_opts {
    const char *name;         /* the stream's job id */
    const char *from_topic;   /* the input topic */
} sheaf_stream_opts;

/* What a record becomes (stream_record.c): the document id from the
 * record (before versions), its text (pages joined by form feeds) and its
 * metadata as stored (JSON) and as carried in chunk messages. */
typedef struct sheaf_stream_record {
    char *id;                 /* owned */
    char *text;               /* owned, NUL-terminated */
    size_t text_len;
    int has_pages;
    char *meta_json;          /* owned, "{}" when none */
    sheaf_kv *meta;           /* owned (sheaf_meta_kv_free) */
    size_t meta_len;
} sheaf_stream_record;

struct sheaf_input_opts;

/* Reads one record (stream.format): SHEAF_OK with rec filled, or
 * SHEAF_ERR_INVALID with the reason in msg (what goes to the DLQ), e.g.
 * `field "text": expected a string, got number`.  key may be NULL.
 * Clear rec in every case. */
sheaf_err sheaf_stream_record_parse(const sheaf_config *cfg, const struct sheaf_input_opts *io,
                                    const void *key, size_t key_len, const void *value,
                                    size_t len, sheaf_stream_record *rec, char *msg,
                                    size_t msglen);
void sheaf_stream_record_clear(sheaf_stream_record *rec);

/* A document's chunks, kept between chunking and producing (a record is
 * bounded by the broker's message size); texts owned. */
typedef struct sheaf_chunk_vec {
    sheaf_chunk *v;
    size_t n, cap;
} sheaf_chunk_vec;

/* Chunks rec's text with o into cv (cleared first; free it in every case).
 * A text the chunker refuses (a page too large) is SHEAF_ERR_TOO_LARGE
 * or another error, with "chunking: <why>" in errstr. */
sheaf_err sheaf_stream_record_chunk(const sheaf_chunk_opts *o, const sheaf_stream_record *rec,
                                    sheaf_chunk_vec *cv, char *errstr, size_t errlen);
void sheaf_chunk_vec_free(sheaf_chunk_vec *cv);

/* What closing windows needs (stream_window.c); all borrowed. */
struct sheaf_redis;
struct sheaf_pipeline;
typedef struct sheaf_stream_windows {
    const sheaf_config *cfg;
    struct sheaf_redis *redis;
    rd_kafka_t *producer;            /* for the window records on <prefix>.results */
    const char *name;
    const struct sheaf_pipeline *pipe;
    const char *pipe_json;
    const char *map_topic;
    const char *owner;               /* this process, for the closing lease */
} sheaf_stream_windows;

/* Closes the stream's complete windows (a no-op without windows); errors
 * are logged and retried on the next call. */
void sheaf_stream_windows_tick(const sheaf_stream_windows *w);

/* `sheaf replay NAME --from T --to T` (stream_replay.c): the stream's
 * input records timestamped in [from_ms, to_ms] become the documents of a
 * run NAME@rN under the "pipeline" setting (else the stream's own); run
 * receives its id.  Unchanged LLM calls are answered from the call cache.
 * SHEAF_ERR_NOT_FOUND when name is no stream or no record is in the
 * window. */
sheaf_err sheaf_stream_replay(const sheaf_config *cfg, const char *name, int64_t from_ms,
                              int64_t to_ms, char *run, size_t runlen, uint64_t *docs,
                              char *errstr, size_t errlen);

/* Runs the stream until SIGTERM/SIGINT (then: every produced chunk
 * delivered, offsets committed, exit 0) or a failure it cannot get past
 * (a chunk that cannot be delivered, the stream job cancelled):
 * SHEAF_ERR_* with errstr. */
sheaf_err sheaf_stream_run(const sheaf_config *cfg, const sheaf_stream_opts *o, char *errstr,
                           size_t errlen);

#endif
