/* ranges.c - a job's recorded offset ranges: read, checked against the
 * topic's watermarks, scanned.  See ranges.h. */
#include "ranges.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/program.h"
#include "sheaf/util.h"

#define MAXP SHEAF_KAFKA_MAX_PARTITIONS

sheaf_err sheaf_job_ranges_read(sheaf_redis *r, const char *job, const char *consequence,
                                sheaf_job_ranges *rg, char *errstr, size_t errlen)
{
    sheaf_err err = sheaf_state_job_offsets_get(r, job, rg->first, rg->last, MAXP, &rg->n, errstr,
                                                errlen);
    if (err != SHEAF_OK) return err;
    if (rg->n == 0) {
        snprintf(errstr, errlen, "job %s has no recorded offsets (submitted by an older sheaf, "
                 "or it failed while producing): %s", job, consequence);
        return SHEAF_ERR_NOT_FOUND;
    }
    return SHEAF_OK;
}

/* The part of [first, last] a partition that now holds [low, high) lost,
 * in *from..*to; 0 when it holds it all. */
static int range_gone(int64_t first, int64_t last, int64_t low, int64_t high, int64_t *from,
                      int64_t *to)
{
    if (first >= low && last < high) return 0;
    /* Retention (or delete-records) deletes from the start; a topic
     * recreated since (or truncated) can also end before the range does. */
    *from = first < low ? first : high;
    *to = first < low ? (low - 1 < last ? low - 1 : last) : last;
    return 1;
}

sheaf_err sheaf_job_ranges_check(rd_kafka_t *rk, const char *topic, const char *job,
                                 const sheaf_job_ranges *rg, const char *consequence,
                                 char *errstr, size_t errlen)
{
    /* Every partition is checked, so the error names each one that lost
     * offsets: the first in full, the others as "P: FROM-TO" while they
     * fit, then how many more. */
    char head[320] = "", others[SHEAF_ERRSTR_SIZE] = "", tail[SHEAF_ERRSTR_SIZE];
    size_t used = 0;
    int gaps = 0, listed = 0;
    long long gone = 0;

    for (int p = 0; p < rg->n; p++) {
        int64_t low = 0, high = 0, from, to;
        if (rg->first[p] < 0) continue;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, p, &low, &high,
                                                                 SHEAF_RANGES_WM_TIMEOUT_MS);
        if (e) {
            snprintf(errstr, errlen, "topic %s partition %d: cannot read its offsets: %s", topic,
                     p, rd_kafka_err2str(e));
            return SHEAF_ERR_KAFKA;
        }
        if (!range_gone(rg->first[p], rg->last[p], low, high, &from, &to)) continue;
        gone += to - from + 1;
        if (gaps++ == 0) {
            snprintf(head, sizeof(head),
                     "job %s: %s partition %d no longer holds offsets %lld-%lld of its messages "
                     "(first missing offset: %lld; the partition now holds %lld-%lld)",
                     job, topic, p, (long long)from, (long long)to, (long long)from,
                     (long long)low, (long long)high - 1);
        } else if (used + 48 < sizeof(others) / 2) {
            used += (size_t)snprintf(others + used, sizeof(others) - used, "%s%d: %lld-%lld",
                                     listed ? ", " : "; also partition(s) ", p, (long long)from,
                                     (long long)to);
            listed++;
        }
    }
    if (!gaps) return SHEAF_OK;
    if (gaps - 1 > listed)
        snprintf(others + used, sizeof(others) - used, "%s%d more partition(s)",
                 listed ? " and " : "; also ", gaps - 1 - listed);
    snprintf(tail, sizeof(tail), "; %lld offset(s) of its ranges gone from %d partition(s), "
             "deleted by retention?; %s", gone, gaps, consequence);
    /* The consequence matters most, then the first partition. */
    size_t room = errlen > strlen(tail) ? errlen - strlen(tail) : 1;
    snprintf(errstr, room, "%s%s", head, others);
    snprintf(errstr + strlen(errstr), errlen - strlen(errstr), "%s", tail);
    return SHEAF_ERR_NOT_FOUND;
}

sheaf_err sheaf_job_ranges_scan(rd_kafka_t *consumer, const char *topic, const char *job,
                                const sheaf_job_ranges *rg, sheaf_job_msg_fn fn, void *opaque,
                                char *errstr, size_t errlen)
{
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(rg->n);
    int remaining = 0, done[MAXP] = {0};
    sheaf_err err = SHEAF_OK;
    int64_t idle_since = sheaf_mono_ms();

    for (int p = 0; p < rg->n; p++) {
        if (rg->first[p] < 0) continue;
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = rg->first[p];
        remaining++;
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(consumer, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (e) {
        snprintf(errstr, errlen, "assigning %s: %s", topic, rd_kafka_err2str(e));
        return SHEAF_ERR_KAFKA;
    }
    while (remaining > 0 && err == SHEAF_OK) {
        if (sheaf_stop) return SHEAF_ERR_STOPPED;
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(consumer, 200);
        if (!msg) {
            if (sheaf_mono_ms() - idle_since > 60000) {
                snprintf(errstr, errlen, "no message from %s for 60 s with %d partition(s) "
                         "still to read", topic, remaining);
                return SHEAF_ERR_KAFKA;
            }
            continue;
        }
        idle_since = sheaf_mono_ms();
        int32_t p = msg->partition;
        if (msg->err) {
            if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                snprintf(errstr, errlen, "reading %s: %s", topic, rd_kafka_message_errstr(msg));
                err = SHEAF_ERR_KAFKA;
            }
        } else if (p >= 0 && p < MAXP && !done[p] && msg->offset <= rg->last[p]) {
            sheaf_chunk_msg m;
            char derr[SHEAF_ERRSTR_SIZE];
            memset(&m, 0, sizeof(m));
            /* Another job's message, or one that is not ours at all: skip. */
            if (sheaf_chunk_decode(msg->payload, msg->len, &m, derr, sizeof(derr)) == SHEAF_OK &&
                strcmp(m.job, job) == 0)
                err = fn(opaque, &m, p, msg->offset, errstr, errlen);
            sheaf_chunk_msg_clear(&m);
            if (msg->offset >= rg->last[p]) {
                done[p] = 1;
                remaining--;
            }
        }
        rd_kafka_message_destroy(msg);
    }
    return err;
}

sheaf_err sheaf_chunk_resend(sheaf_chunk_producer *cp, const sheaf_chunk_msg *m, char *errstr,
                             size_t errlen)
{
    sheaf_doc_out d = {m->doc, m->count, m->page_first > 0, m->meta, m->meta_len};
    sheaf_chunk ch = {m->text, m->text_len, m->idx, m->page_first, m->page_last, m->tokens};
    return sheaf_chunk_producer_send(cp, &d, &ch, errstr, errlen);
}
