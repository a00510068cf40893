/* worker/chunk.h - the chunks of one worker: every live chunk message's
 * state machine (chunk.c), with what they share: the offset window, the
 * partitions' generations, the Redis-outage hold and the counters.
 *
 * The interface is owned by this side: worker.c (Kafka, flow control,
 * rebalances, shutdown) fills a chunks set, hands it messages and tells it
 * about revokes and drains; chunk.c never calls into worker.c.  The one
 * thing a chunk reports back, that it ended and made room, goes through
 * the room callback the worker sets.  worker.c reads the counts (n_calls,
 * n_held) for its flow control. */
#ifndef SHEAF_WORKER_CHUNK_H
#define SHEAF_WORKER_CHUNK_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "sheaf/config.h"
#include "sheaf/metrics.h"
#include "sheaf/offwin.h"
#include "sheaf/runtime.h"
#include "sheaf/state.h"

/* The chunks' series in the runtime's registry (registered by the worker). */
typedef struct chunk_metrics {
    sheaf_metric *processed, *failed, *dlq; /* counters */
    sheaf_metric *parked;                   /* gauge */
} chunk_metrics;

typedef struct call call;

typedef struct chunks {
    /* Set by the owner before the first chunks_take (rt before
     * chunks_init); borrowed. */
    const sheaf_config *cfg;
    sheaf_runtime *rt;
    rd_kafka_t *consumer;       /* offsets are stored on it */
    rd_kafka_t *producer;       /* dead letters */
    const char *dlq_topic;
    chunk_metrics met;
    void (*room)(void *ud);     /* a chunk ended: the owner may take more */
    void *room_ud;

    /* Owned here (chunks_init, chunks_clear). */
    sheaf_offwin *window;       /* offsets in flight per partition */
    sheaf_chunk_stores *stores; /* results to Redis, per job (made at the first) */
    uint32_t *generation;       /* per partition id: bumped on every revoke */
    size_t n_generation;
    call *calls;                /* every live chunk, newest first */
    size_t n_calls;
    size_t n_parked;            /* of them: waiting to be sent again */
    size_t n_held;              /* of them: waiting for Redis */
    int64_t redis_down_ms;      /* since when Redis fails (0: it answers) */
    int64_t redis_logged_ms, redis_delay_ms;
    unsigned long processed, duplicates, failed, dead_lettered, abandoned;
} chunks;

/* Makes the offset window and the chunk checks and stores on rt's Redis:
 * -1 on no memory. */
int chunks_init(chunks *cs);
/* Frees what chunks_init and the revokes made (no chunk may be live). */
void chunks_clear(chunks *cs);

/* Takes one chunk message: ownership of msg passes to the chunk (it is
 * destroyed once the chunk is finished or abandoned). */
void chunks_take(chunks *cs, rd_kafka_message_t *msg);

/* A partition was revoked: its window is forgotten and its generation
 * bumped, so chunks still running for it record their results but store
 * no offset.  Returns how many offsets were in flight for it. */
size_t chunks_revoke(chunks *cs, int32_t partition);

/* At the start of a drain: parked and held chunks are abandoned
 * (redelivered later); with all, every chunk still live is (the drain's
 * deadline, or the end). */
void chunks_abandon(chunks *cs, int all);

/* After a revoke: parked and held chunks of partitions no longer ours are
 * abandoned (their messages are the new owner's). */
void chunks_abandon_revoked(chunks *cs);

#endif
