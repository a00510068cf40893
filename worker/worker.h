/* worker/worker.h - the worker's state, shared by its two files.
 *
 * worker.c runs the loop: Kafka consumption, flow control (pausing
 * partitions while the LLM window is full), rebalances, shutdown.
 * chunk.c handles one chunk message from decode to recorded result.
 * Metrics and health (sheaf/metrics.h) are fed by both: counters where
 * things happen, the gauges and health checks by the loop. */
#ifndef SHEAF_WORKER_H
#define SHEAF_WORKER_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "sheaf/config.h"
#include "sheaf/health.h"
#include "sheaf/llm_async.h"
#include "sheaf/metrics.h"
#include "sheaf/offwin.h"
#include "sheaf/pipeline.h"
#include "sheaf/ratelimit.h"
#include "sheaf/state.h"

#define PIPELINE_CACHE 16

/* The worker's own series in the registry (the LLM engine has its own). */
typedef struct worker_metrics {
    sheaf_metric *consumed, *processed, *failed, *dlq;   /* counters */
    sheaf_metric *lag, *partitions, *parked;             /* gauges */
} worker_metrics;

typedef struct worker {
    sheaf_config cfg;
    rd_kafka_t *consumer;
    rd_kafka_t *producer;       /* dead letters */
    sheaf_redis *redis;
    sheaf_ratelimit *limit;     /* NULL: no fleet-wide limit configured */
    sheaf_llm_async *llm;
    sheaf_offwin *window;       /* offsets in flight per partition */
    uint32_t *generation;       /* per partition id: bumped on every revoke */
    size_t n_generation;
    char map_topic[256];
    char dlq_topic[256];
    int paused;
    int full;                   /* the engine held a full backlog at the last look */
    int64_t full_since_ms;      /* ... since then: taking nothing from Kafka */
    struct {
        char pv[17];
        sheaf_pipeline *p;
    } pipelines[PIPELINE_CACHE];
    unsigned long processed, duplicates, failed, dead_lettered, abandoned;
    sheaf_metrics *metrics;
    worker_metrics met;
    sheaf_llm_metrics llm_met;
    struct call *parked;        /* transient failures waiting to be sent again (chunk.c) */
    size_t n_parked;
    struct call *held;          /* calls waiting for Redis (chunk.c) */
    size_t n_held;
    int64_t redis_down_ms;      /* since when Redis fails (0: it answers) */
    int64_t redis_logged_ms, redis_delay_ms;
    /* A fleet condition (sheaf_llm_fleet_cause: a refused key, an unknown
     * model): "" when none.  While set, fetching is paused and /health is
     * unhealthy; the first call that goes through clears it. */
    char fleet_cause[SHEAF_ERRSTR_SIZE];
    sheaf_health *health;       /* checks kafka, redis, llm: published by the loop */
    sheaf_metrics_server *server; /* NULL when metrics.port is 0 */
    int64_t health_ms, redis_ms, lag_ms; /* when each was last published */
} worker;

/* Takes one chunk message: ownership of msg passes to the worker (it is
 * destroyed once its chunk is finished or abandoned). */
void worker_take(worker *w, rd_kafka_message_t *msg);

/* Current generation of a partition (0 when never revoked). */
uint32_t worker_generation(worker *w, int32_t partition);

void worker_pipelines_clear(worker *w);

/* Sends again the parked calls that are due (from the loop). */
void worker_parked_run(worker *w);
/* At shutdown: every parked call is abandoned (redelivered later). */
void worker_parked_abandon(worker *w);

/* Retries the calls held for Redis whose time has come (from the loop);
 * at shutdown, abandons them. */
void worker_held_run(worker *w);
void worker_held_abandon(worker *w);

/* After a revoke: parked and held calls of partitions no longer ours are
 * abandoned (their messages are the new owner's). */
void worker_waiting_revoked(worker *w);

/* A Redis command failed (errstr says why): /health says so until the next
 * PING works. */
void worker_redis_failed(worker *w, const char *errstr);

#endif
