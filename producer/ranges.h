/* producer/ranges.h - where a job's chunk messages are on the topic, and
 * reading them back (internal to producer/: replay.c and repair.c).
 *
 * The producer records, per partition, the first and last offset of the
 * job's chunk messages (sheaf:{J}:offsets).  Both `sheaf replay` and
 * `sheaf repair` read exactly those ranges again with an assign()ed
 * consumer in a fresh group (it commits nothing and never joins the
 * workers' group), keep the messages of the job (other jobs' messages
 * interleave) and hand each decoded message to a callback. */
#ifndef SHEAF_PRODUCER_RANGES_H
#define SHEAF_PRODUCER_RANGES_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include "publish.h"
#include "sheaf/codec.h"
#include "sheaf/error.h"
#include "sheaf/kafka.h"
#include "sheaf/state.h"

#define SHEAF_RANGES_WM_TIMEOUT_MS 10000

typedef struct sheaf_job_ranges {
    int64_t first[SHEAF_KAFKA_MAX_PARTITIONS], last[SHEAF_KAFKA_MAX_PARTITIONS];
    int n;                      /* partitions 0..n-1 considered; first < 0: none there */
} sheaf_job_ranges;

/* Reads sheaf:{J}:offsets.  SHEAF_ERR_NOT_FOUND when the job has none,
 * errstr ending with ": <consequence>" ("nothing to replay"). */
sheaf_err sheaf_job_ranges_read(sheaf_redis *r, const char *job, const char *consequence,
                                sheaf_job_ranges *rg, char *errstr, size_t errlen);

/* Every recorded range must still be on the topic (watermarks).  Else
 * SHEAF_ERR_NOT_FOUND naming every partition that lost offsets and the
 * range it lost (the first in full, with what it still holds; the others
 * while they fit in errstr), how many offsets are gone, and ending with
 * "; <consequence>" ("nothing was replayed"). */
sheaf_err sheaf_job_ranges_check(rd_kafka_t *rk, const char *topic, const char *job,
                                 const sheaf_job_ranges *rg, const char *consequence,
                                 char *errstr, size_t errlen);

/* Called for each message of the job in its ranges, in partition order of
 * arrival; m is cleared after the call.  Anything but SHEAF_OK stops. */
typedef sheaf_err (*sheaf_job_msg_fn)(void *opaque, const sheaf_chunk_msg *m, int32_t partition,
                                      int64_t offset, char *errstr, size_t errlen);

/* Reads the ranges with consumer (assign()ed here) until every partition's
 * last offset was seen.  SHEAF_ERR_STOPPED on shutdown, SHEAF_ERR_KAFKA
 * when nothing arrives for 60 s. */
sheaf_err sheaf_job_ranges_scan(rd_kafka_t *consumer, const char *topic, const char *job,
                                const sheaf_job_ranges *rg, sheaf_job_msg_fn fn, void *opaque,
                                char *errstr, size_t errlen);

/* Produces a decoded chunk message again through cp (cp's job and
 * pipeline version, m's document, chunk, pages, text and metadata). */
sheaf_err sheaf_chunk_resend(sheaf_chunk_producer *cp, const sheaf_chunk_msg *m, char *errstr,
                             size_t errlen);

/* ---- timescan.c ---- */

/* Called for each message of the window; anything but SHEAF_OK stops. */
typedef sheaf_err (*sheaf_time_msg_fn)(void *ud, const rd_kafka_message_t *msg, char *errstr,
                                       size_t errlen);

/* Hands every message of topic timestamped in [from, to] to fn, partition
 * by partition as they arrive, reading with an assign()ed consumer in a
 * fresh group (commits nothing).  SHEAF_ERR_STOPPED on shutdown. */
sheaf_err sheaf_topic_time_scan(const sheaf_config *cfg, const char *topic, int64_t from,
                                int64_t to, sheaf_time_msg_fn fn, void *ud, char *errstr,
                                size_t errlen);

#endif
