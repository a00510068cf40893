/* worker/worker.h - the worker's state, shared by its two files.
 *
 * worker.c sets up the runtime (sheaf/runtime.h: loop, Redis, LLM engine,
 * metrics, health), Kafka consumption, flow control, rebalances and
 * shutdown.  chunk.c is one chunk message's state machine, from decode to
 * recorded result.  Metrics are fed by both: counters where things happen,
 * the gauges by worker.c's tick. */
#ifndef SHEAF_WORKER_H
#define SHEAF_WORKER_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "sheaf/config.h"
#include "sheaf/offwin.h"
#include "sheaf/runtime.h"

/* The worker's own series in the registry (the LLM engine has its own). */
typedef struct worker_metrics {
    sheaf_metric *consumed, *processed, *failed, *dlq;   /* counters */
    sheaf_metric *lag, *partitions, *parked;             /* gauges */
} worker_metrics;

typedef struct call call;

typedef struct worker {
    sheaf_config cfg;
    sheaf_runtime *rt;
    rd_kafka_t *consumer;
    rd_kafka_t *producer;       /* dead letters */
    rd_kafka_queue_t *consumer_q, *producer_q;
    sheaf_runtime_queue *consumer_w, *producer_w; /* their io-event fds on the loop */
    sheaf_offwin *window;       /* offsets in flight per partition */
    uint32_t *generation;       /* per partition id: bumped on every revoke */
    size_t n_generation;
    char map_topic[256];
    char dlq_topic[256];
    int paused;
    int full;                   /* the backlog is full and no chunk ended since full_since_ms */
    int64_t full_since_ms;      /* ... since then: taking nothing from Kafka */
    int starved;                /* take() stopped for a full backlog: kick when room */
    int draining;               /* SIGTERM seen: take nothing, finish what runs */
    int64_t drain_deadline_ms;
    unsigned long processed, duplicates, failed, dead_lettered, abandoned;
    worker_metrics met;
    call *calls;                /* every live chunk (chunk.c), newest first */
    size_t n_calls;
    size_t n_parked;            /* of them: waiting to be sent again */
    size_t n_held;              /* of them: waiting for Redis */
    int64_t redis_down_ms;      /* since when Redis fails (0: it answers) */
    int64_t redis_logged_ms, redis_delay_ms;
    int64_t lag_ms;             /* when the lag was last published */
} worker;

/* Takes one chunk message: ownership of msg passes to the worker (it is
 * destroyed once its chunk is finished or abandoned). */
void worker_take(worker *w, rd_kafka_message_t *msg);

/* Current generation of a partition (0 when never revoked). */
uint32_t worker_generation(worker *w, int32_t partition);

/* A chunk ended: worker.c may take more messages. */
void worker_room(worker *w);

/* At the start of a drain: parked and held chunks are abandoned
 * (redelivered later); with all, every chunk still live is (the drain's
 * deadline, or the end). */
void worker_calls_abandon(worker *w, int all);

/* After a revoke: parked and held chunks of partitions no longer ours are
 * abandoned (their messages are the new owner's). */
void worker_waiting_revoked(worker *w);


#endif
