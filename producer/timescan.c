/* producer/timescan.c - the messages of a topic timestamped in a window
 * (`sheaf replay --from/--to` of jobs, and of a stream's input).
 *
 * Each partition is read from the first message at or after `from`, found
 * with offsets-for-times, up to the first message after `to`.  A real
 * broker answers every partition (offset -1: no message that late, nothing
 * to read); librdkafka's mock cluster answers -1 everywhere.  So when no
 * partition gets an offset, a second question tells the two apart: the
 * first message at or after time 0 exists on any non-empty partition of a
 * real broker; if the cluster says -1 to that too, every partition is read
 * from its earliest offset (and the window applied message by message). */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ranges.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"

#define MAXP SHEAF_KAFKA_MAX_PARTITIONS
#define WM_TIMEOUT_MS SHEAF_RANGES_WM_TIMEOUT_MS

/* 1 when the cluster answers offsets-for-times: some partition of parts
 * has a message at or after time 0 (see the top of the file). */
static int cluster_answers_times(rd_kafka_t *c, const rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_topic_partition_list_t *zero = rd_kafka_topic_partition_list_copy(parts);
    int yes = 0;
    for (int i = 0; i < zero->cnt; i++) zero->elems[i].offset = 0;
    if (!rd_kafka_offsets_for_times(c, zero, WM_TIMEOUT_MS))
        for (int i = 0; i < zero->cnt && !yes; i++)
            yes = !zero->elems[i].err && zero->elems[i].offset >= 0;
    rd_kafka_topic_partition_list_destroy(zero);
    return yes;
}

sheaf_err sheaf_topic_time_scan(const sheaf_config *cfg, const char *topic, int64_t from,
                                int64_t to, sheaf_time_msg_fn fn, void *ud, char *errstr,
                                size_t errlen)
{
    char group[64];
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL, *todo = NULL;
    int64_t high[MAXP], nread = 0;
    int remaining = 0, done[MAXP] = {0}, answered = 0, supported;
    rd_kafka_resp_err_t fterr;
    sheaf_err err = SHEAF_OK;
    rd_kafka_t *c;

    snprintf(group, sizeof(group), "sheaf-replay-scan-%lld", (long long)sheaf_wall_ms());
    if (!(c = sheaf_kafka_consumer_new(cfg, "sheaf-replay", group, NULL, NULL, errstr, errlen)))
        return SHEAF_ERR_KAFKA;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(c, topic, NULL);
    if (rd_kafka_metadata(c, 0, rkt, &md, WM_TIMEOUT_MS) || md->topic_cnt != 1 ||
        md->topics[0].err) {
        snprintf(errstr, errlen, "topic %s: no metadata", topic);
        err = SHEAF_ERR_KAFKA;
        goto done;
    }
    parts = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
    for (int i = 0; i < md->topics[0].partition_cnt && i < MAXP; i++)
        rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[i].id)->offset = from;
    /* See the top of the file: an offset where the cluster supports
     * offsets-for-times, else (the dev mock, or an error) the earliest
     * offset of every partition. */
    fterr = rd_kafka_offsets_for_times(c, parts, WM_TIMEOUT_MS);
    for (int i = 0; i < parts->cnt && !fterr; i++)
        if (!parts->elems[i].err && parts->elems[i].offset >= 0) answered++;
    supported = !fterr && (answered > 0 || cluster_answers_times(c, parts));
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int64_t low = 0, hi = 0;
        int nothing_late = supported && !tp->err && tp->offset < 0;
        rd_kafka_query_watermark_offsets(c, topic, tp->partition, &low, &hi, WM_TIMEOUT_MS);
        high[tp->partition] = hi;
        if (!supported || tp->err || tp->offset < low) tp->offset = low;
        if (nothing_late || tp->offset >= hi) done[tp->partition] = 1;
        else remaining++;
    }
    /* Only the partitions with something to read are fetched. */
    todo = rd_kafka_topic_partition_list_new(remaining > 0 ? remaining : 1);
    for (int i = 0; i < parts->cnt; i++)
        if (!done[parts->elems[i].partition])
            rd_kafka_topic_partition_list_add(todo, topic, parts->elems[i].partition)->offset =
                parts->elems[i].offset;
    rd_kafka_assign(c, todo);
    while (remaining > 0 && !sheaf_stop && err == SHEAF_OK) {
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(c, 500);
        if (!msg) continue;
        int32_t p = msg->partition;
        if (!msg->err && p >= 0 && p < MAXP && !done[p]) {
            nread++;
            rd_kafka_timestamp_type_t tt;
            int64_t ts = rd_kafka_message_timestamp(msg, &tt);
            if (ts >= from && ts <= to && err == SHEAF_OK) err = fn(ud, msg, errstr, errlen);
            /* Timestamps only grow within a partition for our producers
             * (and nearly so for others'). */
            if (ts > to || msg->offset + 1 >= high[p]) {
                done[p] = 1;
                remaining--;
            }
        }
        rd_kafka_message_destroy(msg);
    }
    if (supported)
        sheaf_info("producer",
                   "time range on %s: %d of %d partition(s) have messages from then "
                   "(offsets-for-times), %lld message(s) read",
                   topic, answered, parts->cnt, (long long)nread);
    else
        sheaf_info("producer",
                   "time range on %s: no offsets-for-times answer, %d partition(s) read from "
                   "the earliest offset, %lld message(s) read",
                   topic, parts->cnt, (long long)nread);
done:
    if (todo) rd_kafka_topic_partition_list_destroy(todo);
    if (parts) rd_kafka_topic_partition_list_destroy(parts);
    if (md) rd_kafka_metadata_destroy(md);
    if (rkt) rd_kafka_topic_destroy(rkt);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return sheaf_stop ? SHEAF_ERR_STOPPED : err;
}
