/* worker.c - sheaf-worker: the map stage of every job.
 *
 * A stateless member of the Kafka consumer group worker.group on
 * <prefix>.map.  One thread runs the runtime's event loop (sheaf/runtime.h,
 * docs/runtime.md): the consumer's queue is watched through its io-event
 * fd, and whenever it has messages and the worker has room (two windows of
 * worker.max_in_flight chunks) they are taken; each is a state machine
 * (chunk.c) driven by Redis replies, LLM answers, delivery reports and
 * timers on the same loop.  Offsets are stored as chunks finish - per
 * partition only up to the lowest unfinished offset (the offset window),
 * so a crash leads to redelivery, never to loss.
 *
 * Flow control: while two windows of chunks are live (max_in_flight
 * in flight, as many queued behind them) the loop stops taking messages
 * and leaves them in librdkafka's prefetch queue (bounded by
 * queued.max.messages.kbytes), so the next message is at hand the moment a
 * call ends.  Pausing is kept for when that is not enough: when the circuit
 * breaker is open (the endpoint is down), or when the backlog has been full
 * for HOLD_MAX_MS (calls that long, or stuck in retries), every assigned
 * partition is paused and the loop polls again, so the consumer serves its
 * rebalances and stays in its group however slow the LLM is; it resumes
 * when no more than one window is left (and the circuit is closed).
 *
 * Why not pause at once, as this loop did before: librdkafka 2.0.2 drops a
 * paused partition's prefetched messages, and a resume does not wake the
 * broker thread, which sleeps up to 1 s (rd_kafka_max_block_ms) when all
 * of its partitions are paused.  Every pause therefore cost up to a second
 * without new messages; with calls shorter than that the window emptied
 * and the map stage was capped near two windows per second (issue 15).
 * A pause after HOLD_MAX_MS costs nothing: the window queued behind the
 * calls in flight lasts longer than the refetch.
 *
 * Rate limits are fleet-wide: the engine asks a GCRA limiter in Redis
 * (llm.rpm, llm.tpm) before every attempt.
 *
 * Rebalances: a revoked partition's window is forgotten and its
 * generation bumped, so calls still running for it record their results
 * (idempotently) but store no offset: the new owner redoes those messages
 * and finds the results recorded.
 *
 * SIGTERM (seen by the tick): pause everything, give back the calls not
 * yet started, let the chunks under way finish for up to worker.drain_ms,
 * abandon the rest (not recorded, redelivered to another worker), commit
 * stored offsets by closing the consumer (which also leaves the group at
 * once), exit 0.
 *
 * Metrics and health (metrics.port): the runtime publishes the kafka, llm
 * and redis checks (Redis failures seen by chunk.c also mark it down at
 * once); the worker's tick adds every 5 s the consumer lag: over the
 * assigned partitions, the cached high watermark minus the consumed
 * position (rd_kafka_get_watermark_offsets and rd_kafka_position, neither
 * of which blocks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"
#include "worker.h"

static const char usage_text[] =
    "usage: sheaf-worker [-c FILE] [-X key=value ...]\n"
    "  Consumes chunk messages from <topic.prefix>.map in consumer group\n"
    "  worker.group, runs the map stage with worker.max_in_flight LLM calls in\n"
    "  flight, stores results in Redis.\n"
    "  -c, --config FILE   configuration file (default: $SHEAF_CONFIG)\n"
    "  -X key=value        set a configuration key (see --help-config)\n"
    "      --help-config   list every configuration key\n";

/* ---- metrics ---- */

#define TICK_MS 100                 /* flow control, shutdown checks */
/* A full backlog for this long pauses the partitions (see Flow control):
 * above librdkafka's 1 s broker wake-up plus a fetch, so the window queued
 * behind calls that long outlasts the refetch; and the longest a rebalance
 * waits for this loop. */
#define HOLD_MAX_MS 2000
#define TAKE_BATCH 256              /* messages taken per turn at most */
#define LAG_EVERY_MS 5000

static sheaf_metric *counter(worker *w, const char *name, const char *help, char *errstr,
                             size_t errlen)
{
    return sheaf_metrics_add(w->rt->metrics, SHEAF_METRIC_COUNTER, name, help, NULL, NULL, NULL,
                             0, errstr, errlen);
}

static sheaf_metric *gauge(worker *w, const char *name, const char *help, char *errstr,
                           size_t errlen)
{
    return sheaf_metrics_add(w->rt->metrics, SHEAF_METRIC_GAUGE, name, help, NULL, NULL, NULL, 0,
                             errstr, errlen);
}

/* The worker's series in the runtime's registry. */
static int metrics_start(worker *w, char *errstr, size_t errlen)
{
    worker_metrics *m = &w->met;
    chunk_metrics *cm = &w->chunks.met;
    if (!(m->consumed = counter(w, "sheaf_messages_consumed_total",
                                "Chunk messages taken from Kafka.", errstr, errlen)) ||
        !(cm->processed = counter(w, "sheaf_chunks_processed_total",
                                  "Chunks whose map result was recorded.", errstr, errlen)) ||
        !(cm->failed = counter(w, "sheaf_chunks_failed_total",
                               "Chunks recorded as failed (and dead-lettered).", errstr, errlen)) ||
        !(cm->dlq = counter(w, "sheaf_dlq_messages_total",
                            "Messages sent to the dead-letter topic.", errstr, errlen)) ||
        !(m->lag = gauge(w, "sheaf_consumer_lag_messages",
                         "Consumer lag in messages: high watermark minus consumed position, "
                         "summed over the assigned partitions.", errstr, errlen)) ||
        !(m->partitions = gauge(w, "sheaf_partitions_assigned",
                                "Partitions of the map topic assigned to this worker.", errstr,
                                errlen)) ||
        !(cm->parked = gauge(w, "sheaf_chunks_parked",
                             "Chunks whose LLM call failed transiently after every attempt, "
                             "waiting to be sent again (llm.retry_horizon_ms).", errstr,
                             errlen)))
        return -1;
    return 0;
}

/* Consumer lag over the assignment, from librdkafka's cached offsets.  A
 * partition nothing was consumed from yet has no position: it is left
 * out. */
static void publish_lag(worker *w)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    int64_t lag = 0;
    if (rd_kafka_assignment(w->consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || !parts) return;
    sheaf_metric_set(w->met.partitions, parts->cnt);
    if (parts->cnt > 0 && rd_kafka_position(w->consumer, parts) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < parts->cnt; i++) {
            const rd_kafka_topic_partition_t *p = &parts->elems[i];
            int64_t lo = -1, hi = -1;
            if (p->offset < 0 ||
                rd_kafka_get_watermark_offsets(w->consumer, p->topic, p->partition, &lo, &hi) !=
                    RD_KAFKA_RESP_ERR_NO_ERROR ||
                hi < 0)
                continue;
            if (hi > p->offset) lag += hi - p->offset;
        }
    }
    sheaf_metric_set(w->met.lag, lag);
    rd_kafka_topic_partition_list_destroy(parts);
}

/* ---- flow control ---- */

static void set_paused(worker *w, int pause)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(w->consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || !parts) return;
    if (parts->cnt > 0) {
        if (pause) rd_kafka_pause_partitions(w->consumer, parts);
        else rd_kafka_resume_partitions(w->consumer, parts);
    }
    rd_kafka_topic_partition_list_destroy(parts);
    w->paused = pause;
}

/* Up to one window of chunks waits behind the window in flight, so when a
 * batch of calls ends the next starts at once, before the loop takes a
 * single message; and after a pause the queued window covers the
 * refetch.  Every live chunk counts, parked ones too: an outage must not
 * pull the topic into memory. */
static size_t backlog_limit(const worker *w)
{
    return 2 * (size_t)w->cfg.worker_max_in_flight;
}

/* From the tick: notes how long the backlog has been full, pauses for an
 * open circuit or a full backlog held too long, resumes once a window is
 * left. */
static void flow_control(worker *w)
{
    /* Redis away (chunks held) or a fleet condition: no new work. */
    size_t pending = w->chunks.n_calls;
    int circuit = sheaf_llm_async_circuit_open(w->rt->llm) || w->rt->fleet_cause[0] ||
                  w->chunks.n_held;
    int64_t now = sheaf_mono_ms();

    /* full is set by take() when it stops for room and cleared whenever a
     * chunk ends with room left: it says no chunk ended for that long (a
     * sample here, every 100 ms, would nearly always find the backlog
     * refilled and pause a worker that is only busy). */
    if (pending < backlog_limit(w)) w->full = 0;
    if (!w->paused && circuit) {
        if (!w->rt->fleet_cause[0] && !w->chunks.n_held)
            sheaf_warn("worker", "LLM endpoint failing: circuit open, consumption paused");
        set_paused(w, 1);
    } else if (!w->paused && w->full && now - w->full_since_ms >= HOLD_MAX_MS) {
        sheaf_debug("worker", "%zu chunks pending for %lld ms: consumption paused", pending,
                    (long long)(now - w->full_since_ms));
        set_paused(w, 1);
    } else if (w->paused && !circuit && pending <= (size_t)w->cfg.worker_max_in_flight) {
        set_paused(w, 0);
    }
    if (w->paused) sheaf_runtime_queue_kick(w->consumer_w); /* the group's news */
}

/* Logs and applies partition assignment changes.  With cooperative-sticky
 * only the partitions that move are given or taken. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    worker *w = opaque;
    char list[512] = "";
    size_t used = 0;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;

    for (int i = 0; i < parts->cnt && used + 16 < sizeof(list); i++)
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%d", i ? "," : "",
                                 (int)parts->elems[i].partition);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        sheaf_info("worker", "partitions assigned: %d [%s]", parts->cnt, list);
        if (cooperative) error = rd_kafka_incremental_assign(rk, parts);
        else aerr = rd_kafka_assign(rk, parts);
        /* New partitions join the current flow-control state.  Resumed
         * explicitly too: one paused before a lost session took it away
         * is still paused in librdkafka when it comes back. */
        if (parts->cnt > 0) {
            if (w->paused) rd_kafka_pause_partitions(rk, parts);
            else rd_kafka_resume_partitions(rk, parts);
        }
    } else {
        size_t dropped = 0;
        for (int i = 0; i < parts->cnt; i++) {
            dropped += chunks_revoke(&w->chunks, parts->elems[i].partition);
        }
        /* Parked and held chunks of those partitions are the new owner's
         * now: waiting on for them would only repeat its calls. */
        chunks_abandon_revoked(&w->chunks);
        sheaf_info("worker", "partitions revoked: %d [%s]; %zu call(s) in flight for them will "
                   "record results but leave offsets to the new owner", parts->cnt, list, dropped);
        /* They leave unpaused: librdkafka keeps the application's pause on
         * the partition itself, and a resume once they are gone reaches
         * only what is assigned then, so a partition paused here and
         * assigned again later would never be fetched. */
        if (w->paused && parts->cnt > 0) rd_kafka_resume_partitions(rk, parts);
        if (cooperative) error = rd_kafka_incremental_unassign(rk, parts);
        else aerr = rd_kafka_assign(rk, NULL);
    }
    if (error) {
        sheaf_error("worker", "rebalance: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (aerr) {
        sheaf_error("worker", "rebalance: %s", rd_kafka_err2str(aerr));
    }
    rd_kafka_topic_partition_list_t *now = NULL;
    if (rd_kafka_assignment(rk, &now) == RD_KAFKA_RESP_ERR_NO_ERROR && now) {
        sheaf_info("worker", "now owning %d partition(s)", now->cnt);
        sheaf_metric_set(w->met.partitions, now->cnt);
        rd_kafka_topic_partition_list_destroy(now);
    }
}

/* ---- taking messages ---- */

/* The consumer's queue has something (or room appeared): takes messages
 * while the backlog has room, at most TAKE_BATCH per turn so the loop's
 * other events are served between batches.  With a full backlog the
 * consumer is not polled (its messages wait in the prefetch queue), unless
 * the partitions are paused: then a poll brings no messages, only the
 * group's news.  Draining, anything fetched is not ours to start. */
static void take(void *ud)
{
    worker *w = ud;
    size_t max = backlog_limit(w);
    for (int i = 0; i < TAKE_BATCH; i++) {
        if (w->chunks.n_calls >= max && !w->paused && !w->draining) {
            w->starved = 1;
            if (!w->full) {
                w->full = 1;
                w->full_since_ms = sheaf_mono_ms();
            }
            return;
        }
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(w->consumer, 0);
        if (!msg) return;
        if (w->draining) {
            rd_kafka_message_destroy(msg);
            continue;
        }
        if (msg->err) {
            if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                sheaf_warn("worker", "consumer: %s", rd_kafka_message_errstr(msg));
            rd_kafka_message_destroy(msg);
            continue;
        }
        sheaf_metric_inc(w->met.consumed);
        chunks_take(&w->chunks, msg);
    }
    sheaf_runtime_queue_kick(w->consumer_w); /* more may be waiting */
}

/* A chunk ended (chunk.c's room callback): take more when there is room. */
static void room(void *ud)
{
    worker *w = ud;
    if (w->chunks.n_calls < backlog_limit(w)) w->full = 0;
    if (w->starved && w->chunks.n_calls < backlog_limit(w)) {
        w->starved = 0;
        sheaf_runtime_queue_kick(w->consumer_w);
    }
}

/* Serves the dead-letter producer's delivery reports (and statistics). */
static void producer_events(void *ud)
{
    worker *w = ud;
    rd_kafka_poll(w->producer, 0);
}

/* ---- start, tick, drain, stop ---- */

/* SIGTERM: stop fetching, give back what has not started, let the rest
 * finish until the deadline (checked by the tick). */
static void drain_start(worker *w)
{
    w->draining = 1;
    w->drain_deadline_ms = sheaf_mono_ms() + w->cfg.worker_drain_ms;
    set_paused(w, 1);
    /* Calls not yet started are given back (redelivered to whoever takes
     * the partition); only requests under way are worth waiting for. */
    sheaf_llm_async_abort_queued(w->rt->llm);
    chunks_abandon(&w->chunks, 0);
    if (w->chunks.n_calls)
        sheaf_info("worker", "stopping: draining %zu call(s), at most %d ms", w->chunks.n_calls,
                   w->cfg.worker_drain_ms);
}

static void tick(void *ud)
{
    worker *w = ud;
    int64_t now = sheaf_mono_ms();
    if (sheaf_stop && !w->draining) drain_start(w);
    if (w->draining) {
        if (w->chunks.n_calls && now < w->drain_deadline_ms) return;
        if (w->chunks.n_calls)
            sheaf_warn("worker", "drain deadline reached: abandoning %zu chunk(s); their "
                       "messages will be redelivered", w->chunks.n_calls);
        sheaf_runtime_break(w->rt);
        return;
    }
    w->rt->redis_held = w->chunks.n_held;
    flow_control(w);
    if (now - w->lag_ms >= LAG_EVERY_MS) {
        publish_lag(w);
        w->lag_ms = now;
    }
}

static int worker_start(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    char client_id[128], host[64] = "host";

    gethostname(host, sizeof(host) - 1);
    snprintf(client_id, sizeof(client_id), "sheaf-worker-%s-%d", host, (int)getpid());
    sheaf_topic_name(&w->cfg, "map", w->map_topic, sizeof(w->map_topic));
    sheaf_topic_name(&w->cfg, "dlq", w->dlq_topic, sizeof(w->dlq_topic));

    /* Metrics first: a port that cannot be bound stops the worker before
     * it joins the group. */
    if (!(w->rt = sheaf_runtime_create(&w->cfg, "worker", w->cfg.worker_max_in_flight, errstr,
                                       sizeof(errstr))) ||
        metrics_start(w, errstr, sizeof(errstr)) != 0) {
        sheaf_error("worker", "%s", errstr);
        return -1;
    }
    w->chunks.rt = w->rt;
    if (chunks_init(&w->chunks) != 0) {
        sheaf_error("worker", "out of memory");
        return -1;
    }
    if (!(w->producer = sheaf_kafka_producer_new(&w->cfg, client_id, errstr, sizeof(errstr))) ||
        !(w->consumer = sheaf_kafka_consumer_new(&w->cfg, client_id, w->cfg.worker_group,
                                                 on_rebalance, w, errstr, sizeof(errstr)))) {
        sheaf_error("worker", "%s", errstr);
        return -1;
    }
    w->chunks.cfg = &w->cfg;
    w->chunks.consumer = w->consumer;
    w->chunks.producer = w->producer;
    w->chunks.dlq_topic = w->dlq_topic;
    w->chunks.room = room;
    w->chunks.room_ud = w;
    w->consumer_q = rd_kafka_queue_get_consumer(w->consumer);
    w->producer_q = rd_kafka_queue_get_main(w->producer);
    if (!w->consumer_q || !w->producer_q ||
        !(w->consumer_w = sheaf_runtime_watch_queue(w->rt, w->consumer_q, take, w, errstr,
                                                    sizeof(errstr))) ||
        !(w->producer_w = sheaf_runtime_watch_queue(w->rt, w->producer_q, producer_events, w,
                                                    errstr, sizeof(errstr))) ||
        sheaf_runtime_set_tick(w->rt, TICK_MS, tick, w) != SHEAF_OK) {
        sheaf_error("worker", "cannot watch the Kafka queues: %s", errstr);
        return -1;
    }
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, w->map_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(w->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        sheaf_error("worker", "cannot subscribe to %s: %s", w->map_topic, rd_kafka_err2str(err));
        return -1;
    }
    sheaf_info("worker", "consuming %s in group %s; LLM %s model %s; %d calls in flight%s",
               w->map_topic, w->cfg.worker_group, w->cfg.llm_base_url, w->cfg.llm_model,
               w->cfg.worker_max_in_flight, w->rt->limit ? "; fleet-wide rate limit" : "");
    return 0;
}

static void worker_stop(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_runtime_unwatch(w->consumer_w);
    sheaf_runtime_unwatch(w->producer_w);
    if (w->rt) {
        /* Calls hold Kafka messages: end them before the consumer goes.
         * Those waiting on Redis end when the runtime fails their commands. */
        sheaf_llm_async_abort_all(w->rt->llm);
        chunks_abandon(&w->chunks, 1);
    }
    if (w->consumer) {
        /* Commits the stored offsets and leaves the group, so partitions move
         * at once instead of after the session timeout. */
        rd_kafka_resp_err_t err = rd_kafka_consumer_close(w->consumer);
        if (err) sheaf_warn("worker", "consumer close: %s", rd_kafka_err2str(err));
    }
    sheaf_runtime_destroy(w->rt);
    w->rt = NULL;
    if (w->consumer_q) rd_kafka_queue_destroy(w->consumer_q);
    if (w->producer_q) rd_kafka_queue_destroy(w->producer_q);
    if (w->consumer) rd_kafka_destroy(w->consumer);
    /* At the end, outside the loop: whatever dead letters are still queued. */
    if (w->producer && sheaf_kafka_flush(w->producer, 10000, errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("worker", "dead-letter producer: %s", errstr);
    sheaf_kafka_producer_destroy(w->producer);
    chunks_clear(&w->chunks);
    sheaf_config_clear(&w->cfg);
}

int main(int argc, char **argv)
{
    worker w;
    int rc;

    memset(&w, 0, sizeof(w));
    rc = sheaf_program_start(&w.cfg, "sheaf-worker", usage_text, argc, argv);
    if (rc >= 0) return rc;
    rc = 1;
    if (worker_start(&w) == 0) {
        sheaf_runtime_run(w.rt);
        sheaf_info("worker", "stopped: %lu chunks processed, %lu duplicates skipped, %lu failed, "
                   "%lu dead-lettered, %lu abandoned", w.chunks.processed, w.chunks.duplicates,
                   w.chunks.failed, w.chunks.dead_lettered, w.chunks.abandoned);
        rc = 0;
    }
    worker_stop(&w);
    return rc;
}
