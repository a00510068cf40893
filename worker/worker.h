/* worker/worker.h - the worker's state (worker.c).
 *
 * worker.c sets up the runtime (sheaf/runtime.h: loop, Redis, LLM engine,
 * metrics, health), Kafka consumption, flow control, rebalances and
 * shutdown.  The chunks it takes are chunk.c's (worker/chunk.h), which
 * reports back only through the room callback: the two files do not call
 * each other in a loop.  Metrics are fed by both: counters where things
 * happen, the gauges by worker.c's tick. */
#ifndef SHEAF_WORKER_H
#define SHEAF_WORKER_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "chunk.h"
#include "sheaf/config.h"
#include "sheaf/runtime.h"

/* The worker's own series in the registry (the LLM engine has its own,
 * the chunks theirs: chunk_metrics). */
typedef struct worker_metrics {
    sheaf_metric *consumed;                 /* counter */
    sheaf_metric *lag, *partitions;         /* gauges */
} worker_metrics;

typedef struct worker {
    sheaf_config cfg;
    sheaf_runtime *rt;
    rd_kafka_t *consumer;
    rd_kafka_t *producer;       /* dead letters */
    rd_kafka_queue_t *consumer_q, *producer_q;
    sheaf_runtime_queue *consumer_w, *producer_w; /* their io-event fds on the loop */
    char map_topic[256];
    char dlq_topic[256];
    int paused;
    int full;                   /* the backlog is full and no chunk ended since full_since_ms */
    int64_t full_since_ms;      /* ... since then: taking nothing from Kafka */
    int starved;                /* take() stopped for a full backlog: kick when room */
    int draining;               /* SIGTERM seen: take nothing, finish what runs */
    int64_t drain_deadline_ms;
    worker_metrics met;
    chunks chunks;              /* every live chunk (chunk.c) */
    int64_t lag_ms;             /* when the lag was last published */
} worker;

#endif
