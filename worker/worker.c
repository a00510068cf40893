/* worker.c - sheaf-worker: the map stage of every job.
 *
 * A stateless member of the Kafka consumer group worker.group on
 * <prefix>.map.  One thread runs one loop: it takes chunk messages from
 * Kafka while the LLM engine has room (worker.max_in_flight calls in
 * flight, libcurl multi), turns the engine, and stores offsets as calls
 * finish - per partition only up to the lowest unfinished offset (the
 * offset window), so a crash leads to redelivery, never to loss.  See
 * chunk.c for what happens to one message.
 *
 * Flow control: while the engine holds two windows of calls (max_in_flight
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
 * SIGTERM: pause everything, give back the calls not yet started, let
 * the calls in flight finish for up to worker.drain_ms, abandon the rest (not recorded, redelivered to another
 * worker), commit stored offsets by closing the consumer (which also leaves
 * the group at once), exit 0.
 *
 * Metrics and health (metrics.port): counters are fed where things happen;
 * the loop publishes, never the HTTP thread, what needs a handle: every
 * second the kafka check (librdkafka's broker news, sheaf/kafka.h; it goes
 * stale when the loop stops polling for a minute) and the llm check (the
 * engine's circuit breaker); every 5 s a Redis PING (Redis failures seen
 * by chunk.c also mark it down at once) and the consumer lag: over the
 * assigned partitions, the cached high watermark minus the consumed
 * position (rd_kafka_get_watermark_offsets and rd_kafka_position, neither
 * of which blocks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---- metrics and health ---- */

#define HEALTH_EVERY_MS 1000
/* A full backlog for this long pauses the partitions (see Flow control):
 * above librdkafka's 1 s broker wake-up plus a fetch, so the window queued
 * behind calls that long outlasts the refetch; and the longest a rebalance
 * waits for this loop. */
#define HOLD_MAX_MS 2000
#define TAKE_BATCH 256              /* messages taken per loop turn at most */
#define SLOW_EVERY_MS 5000          /* Redis PING, consumer lag */
#define KAFKA_STALE_MS 60000        /* no poll for this long: the loop is stuck */

static sheaf_metric *counter(worker *w, const char *name, const char *help, char *errstr,
                             size_t errlen)
{
    return sheaf_metrics_add(w->metrics, SHEAF_METRIC_COUNTER, name, help, NULL, NULL, NULL, 0,
                             errstr, errlen);
}

static sheaf_metric *gauge(worker *w, const char *name, const char *help, char *errstr,
                           size_t errlen)
{
    return sheaf_metrics_add(w->metrics, SHEAF_METRIC_GAUGE, name, help, NULL, NULL, NULL, 0,
                             errstr, errlen);
}

/* The registry, the health checks and, with metrics.port, the endpoint.
 * First thing at start-up: a port that cannot be bound stops the worker
 * before it joins the group. */
static int metrics_start(worker *w, char *errstr, size_t errlen)
{
    worker_metrics *m = &w->met;
    if (!(w->metrics = sheaf_metrics_create()) || !(w->health = sheaf_health_create())) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return -1;
    }
    if (!(m->consumed = counter(w, "sheaf_messages_consumed_total",
                                "Chunk messages taken from Kafka.", errstr, errlen)) ||
        !(m->processed = counter(w, "sheaf_chunks_processed_total",
                                 "Chunks whose map result was recorded.", errstr, errlen)) ||
        !(m->failed = counter(w, "sheaf_chunks_failed_total",
                              "Chunks recorded as failed (and dead-lettered).", errstr, errlen)) ||
        !(m->dlq = counter(w, "sheaf_dlq_messages_total",
                           "Messages sent to the dead-letter topic.", errstr, errlen)) ||
        !(m->lag = gauge(w, "sheaf_consumer_lag_messages",
                         "Consumer lag in messages: high watermark minus consumed position, "
                         "summed over the assigned partitions.", errstr, errlen)) ||
        !(m->partitions = gauge(w, "sheaf_partitions_assigned",
                                "Partitions of the map topic assigned to this worker.", errstr,
                                errlen)) ||
        !(m->parked = gauge(w, "sheaf_chunks_parked",
                            "Chunks whose LLM call failed transiently after every attempt, "
                            "waiting to be sent again (llm.retry_horizon_ms).", errstr,
                            errlen)) ||
        sheaf_llm_metrics_register(w->metrics, &w->llm_met, errstr, errlen) != SHEAF_OK)
        return -1;
    if (sheaf_health_add(w->health, "kafka", KAFKA_STALE_MS) != SHEAF_OK ||
        sheaf_health_add(w->health, "redis", 0) != SHEAF_OK ||
        sheaf_health_add(w->health, "llm", 0) != SHEAF_OK) {
        sheaf_set_err(errstr, errlen, "cannot add health checks");
        return -1;
    }
    if (w->cfg.metrics_port > 0 &&
        !(w->server = sheaf_metrics_server_create(&w->cfg, w->metrics, w->health, errstr, errlen)))
        return -1;
    return 0;
}

void worker_redis_failed(worker *w, const char *errstr)
{
    char why[SHEAF_ERRSTR_SIZE + 160];
    snprintf(why, sizeof(why), "%s: %s", sheaf_redis_trouble(errstr), errstr);
    sheaf_health_set(w->health, "redis", 0, why);
    w->redis_ms = sheaf_mono_ms(); /* the next PING in SLOW_EVERY_MS */
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

/* Publishes what the HTTP thread may not find out itself; called by the
 * loop after every poll. */
static void publish_health(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE], why[SHEAF_HEALTH_REASON_SIZE + 32];
    int64_t now = sheaf_mono_ms();
    if (now - w->health_ms >= HEALTH_EVERY_MS) {
        w->health_ms = now;
        int ok = sheaf_kafka_brokers_ok(why, sizeof(why));
        sheaf_health_set(w->health, "kafka", ok, why);
        if (w->fleet_cause[0]) {
            sheaf_health_set(w->health, "llm", 0, w->fleet_cause);
        } else if (sheaf_llm_async_circuit_open(w->llm)) {
            sheaf_llm_stats st;
            sheaf_llm_async_stats(w->llm, &st);
            snprintf(why, sizeof(why), "circuit open: %s", st.breaker_reason);
            sheaf_health_set(w->health, "llm", 0, why);
        } else {
            sheaf_health_set(w->health, "llm", 1, NULL);
        }
    }
    if (now - w->redis_ms >= SLOW_EVERY_MS) {
        redisReply *rep = sheaf_redis_cmd(w->redis, errstr, sizeof(errstr), "PING");
        /* A full Redis answers PING but refuses writes: while chunks are
         * held the check stays down, with the reason their retries set. */
        if (!rep) worker_redis_failed(w, errstr);
        else if (!w->n_held) sheaf_health_set(w->health, "redis", 1, NULL);
        if (rep) freeReplyObject(rep);
        w->redis_ms = sheaf_mono_ms();
    }
    if (now - w->lag_ms >= SLOW_EVERY_MS) {
        publish_lag(w);
        w->lag_ms = now;
    }
}

/* ---- partition generations ---- */

uint32_t worker_generation(worker *w, int32_t partition)
{
    return partition >= 0 && (size_t)partition < w->n_generation ? w->generation[partition] : 0;
}

static void generation_bump(worker *w, int32_t partition)
{
    if (partition < 0) return;
    if ((size_t)partition >= w->n_generation) {
        size_t n = (size_t)partition + 64;
        uint32_t *g = realloc(w->generation, n * sizeof(*g));
        if (!g) return; /* stays 0: at worst an idempotent rewrite */
        memset(g + w->n_generation, 0, (n - w->n_generation) * sizeof(*g));
        w->generation = g;
        w->n_generation = n;
    }
    w->generation[partition]++;
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

/* The engine holds up to one window of calls queued behind the window in
 * flight, so when a batch of calls ends the next starts at once, before
 * the loop takes a single message; and after a pause the queued window
 * covers the refetch. */
static size_t backlog_limit(const worker *w)
{
    return 2 * (size_t)w->cfg.worker_max_in_flight;
}

/* Called after every turn of the engine: notes how long the backlog has
 * been full, pauses for an open circuit or a full backlog held too long,
 * resumes once a window is left. */
static void flow_control(worker *w)
{
    /* Parked calls count: an outage must not pull the topic into memory.
     * Redis away (calls held) or a fleet condition: no new work. */
    size_t pending = sheaf_llm_async_pending(w->llm) + w->n_parked;
    int circuit = sheaf_llm_async_circuit_open(w->llm) || w->fleet_cause[0] || w->n_held;
    int64_t now = sheaf_mono_ms();

    if (pending < backlog_limit(w)) {
        w->full = 0;
    } else if (!w->full) {
        w->full = 1;
        w->full_since_ms = now;
    }
    if (!w->paused && circuit) {
        if (!w->fleet_cause[0] && !w->n_held)
            sheaf_warn("worker", "LLM endpoint failing: circuit open, consumption paused");
        set_paused(w, 1);
    } else if (!w->paused && w->full && now - w->full_since_ms >= HOLD_MAX_MS) {
        sheaf_debug("worker", "%zu calls pending for %lld ms: consumption paused", pending,
                    (long long)(now - w->full_since_ms));
        set_paused(w, 1);
    } else if (w->paused && !circuit && pending <= (size_t)w->cfg.worker_max_in_flight) {
        set_paused(w, 0);
    }
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
            dropped += sheaf_offwin_forget(w->window, parts->elems[i].partition);
            generation_bump(w, parts->elems[i].partition);
        }
        /* Parked and held calls of those partitions are the new owner's
         * now: waiting on for them would only repeat its calls. */
        worker_waiting_revoked(w);
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

/* ---- start, loop, stop ---- */

static int worker_start(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    char client_id[128], host[64] = "host";
    sheaf_llm_limiter limiter;

    gethostname(host, sizeof(host) - 1);
    snprintf(client_id, sizeof(client_id), "sheaf-worker-%s-%d", host, (int)getpid());
    sheaf_topic_name(&w->cfg, "map", w->map_topic, sizeof(w->map_topic));
    sheaf_topic_name(&w->cfg, "dlq", w->dlq_topic, sizeof(w->dlq_topic));

    if (metrics_start(w, errstr, sizeof(errstr)) != 0) {
        sheaf_error("worker", "%s", errstr);
        return -1;
    }
    if (!(w->window = sheaf_offwin_create())) {
        sheaf_error("worker", "out of memory");
        return -1;
    }
    if (!(w->redis = sheaf_redis_connect(&w->cfg, errstr, sizeof(errstr))) ||
        sheaf_ratelimit_from_config(w->redis, &w->cfg, &w->limit, errstr, sizeof(errstr)) ||
        (w->limit && (sheaf_ratelimit_bind(w->limit, &limiter), 0)) ||
        !(w->llm = sheaf_llm_async_create(&w->cfg, w->cfg.worker_max_in_flight,
                                          w->limit ? &limiter : NULL, errstr, sizeof(errstr))) ||
        !(w->producer = sheaf_kafka_producer_new(&w->cfg, client_id, errstr, sizeof(errstr))) ||
        !(w->consumer = sheaf_kafka_consumer_new(&w->cfg, client_id, w->cfg.worker_group,
                                                 on_rebalance, w, errstr, sizeof(errstr)))) {
        sheaf_error("worker", "%s", errstr);
        return -1;
    }
    sheaf_llm_async_set_metrics(w->llm, &w->llm_met);
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
               w->cfg.worker_max_in_flight, w->limit ? "; fleet-wide rate limit" : "");
    return 0;
}

/* Takes messages while the engine has room, then turns the engine once.
 * With a full backlog the consumer is not polled (its messages wait in
 * the prefetch queue), unless the partitions are paused: then a poll
 * brings no messages, only the group's news. */
static void loop_once(worker *w)
{
    size_t max = backlog_limit(w);
    int more = 0; /* stopped at TAKE_BATCH with room left: do not wait below */
    for (int i = 0;; i++) {
        size_t pending = sheaf_llm_async_pending(w->llm) + w->n_parked;
        if (pending >= max && !w->paused) break;
        if (i == TAKE_BATCH) {
            more = pending < max;
            break;
        }
        /* Block in Kafka only when there is nothing else to wait for. */
        int timeout = (i == 0 && pending == 0) ? 100 : 0;
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(w->consumer, timeout);
        if (!msg) break;
        if (msg->err) {
            if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                sheaf_warn("worker", "consumer: %s", rd_kafka_message_errstr(msg));
            rd_kafka_message_destroy(msg);
            continue;
        }
        sheaf_metric_inc(w->met.consumed);
        worker_take(w, msg);
    }
    sheaf_llm_async_run(w->llm, (sheaf_llm_async_pending(w->llm) || w->n_parked || w->n_held) &&
                                    !more ? 10 : 0);
    if (w->parked) worker_parked_run(w);
    if (w->held) worker_held_run(w);
    flow_control(w);
    /* Serves the dead-letter producer's callbacks (statistics, reports). */
    rd_kafka_poll(w->producer, 0);
    publish_health(w);
}

/* After SIGTERM: stop fetching, let calls finish until the deadline. */
static void drain(worker *w)
{
    int64_t deadline = sheaf_mono_ms() + w->cfg.worker_drain_ms;
    size_t pending;
    set_paused(w, 1);
    /* Calls not yet started are given back (redelivered to whoever takes
     * the partition); only requests under way are worth waiting for. */
    sheaf_llm_async_abort_queued(w->llm);
    worker_parked_abandon(w);
    worker_held_abandon(w);
    pending = sheaf_llm_async_pending(w->llm);
    if (pending)
        sheaf_info("worker", "stopping: draining %zu call(s), at most %d ms", pending,
                   w->cfg.worker_drain_ms);
    while (sheaf_llm_async_pending(w->llm) && sheaf_mono_ms() < deadline) {
        sheaf_llm_async_run(w->llm, 50);
        /* Keep serving the group; anything fetched is not ours to start. */
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(w->consumer, 0);
        if (msg) rd_kafka_message_destroy(msg);
    }
    pending = sheaf_llm_async_pending(w->llm);
    if (pending)
        sheaf_warn("worker", "drain deadline reached: abandoning %zu call(s); their messages "
                   "will be redelivered", pending);
    sheaf_llm_async_abort_all(w->llm);
}

static void worker_stop(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    /* The endpoint first: it reads the registry and the checks. */
    sheaf_metrics_server_destroy(w->server);
    /* Calls hold Kafka messages: end them before the consumer goes. */
    sheaf_llm_async_destroy(w->llm);
    if (w->consumer) {
        /* Commits the stored offsets and leaves the group, so partitions move
         * at once instead of after the session timeout. */
        rd_kafka_resp_err_t err = rd_kafka_consumer_close(w->consumer);
        if (err) sheaf_warn("worker", "consumer close: %s", rd_kafka_err2str(err));
        rd_kafka_destroy(w->consumer);
    }
    if (w->producer && sheaf_kafka_flush(w->producer, 10000, errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("worker", "dead-letter producer: %s", errstr);
    sheaf_kafka_producer_destroy(w->producer);
    sheaf_ratelimit_destroy(w->limit);
    sheaf_redis_destroy(w->redis);
    sheaf_offwin_destroy(w->window);
    free(w->generation);
    worker_pipelines_clear(w);
    /* After the engine, which gives back its share of the in-flight gauge. */
    sheaf_metrics_destroy(w->metrics);
    sheaf_health_destroy(w->health);
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
        while (!sheaf_stop) loop_once(&w);
        drain(&w);
        sheaf_info("worker", "stopped: %lu chunks processed, %lu duplicates skipped, %lu failed, "
                   "%lu dead-lettered, %lu abandoned", w.processed, w.duplicates, w.failed,
                   w.dead_lettered, w.abandoned);
        rc = 0;
    }
    worker_stop(&w);
    return rc;
}
