/* sheaf/runtime.h - the one event-loop runtime of the worker (and, next,
 * the reducer): what every long-running sheaf process needs, once.
 *
 *   loop       one libevent 2.1 event_base (docs/runtime.md says why
 *              libevent) drives everything below; nothing in a callback
 *              blocks or sleeps: waits are timers, work is a state machine
 *   redis      the asynchronous connection (sheaf/aredis.h), kept up by
 *              itself; key names stay in state.c, cache.c, ratelimit.c
 *   llm        the asynchronous LLM engine (sheaf/llm_async.h) on the loop,
 *              with the fleet-wide limiter (llm.rpm, llm.tpm; else the
 *              limits the fleet learned from the provider, looked up at
 *              the start and every second until there is one) asked
 *              asynchronously through the same Redis connection
 *   kafka      librdkafka queues watched through their io-event fd
 *              (rd_kafka_queue_io_event_enable): a queue that gets
 *              something writes a byte to a pipe the loop watches
 *   pipelines  pipeline snapshots by version, loaded from Redis once and
 *              parsed once (callers waiting for one loading share it)
 *   ops        the metrics registry, /health checks (kafka, redis, llm)
 *              and the metrics endpoint; once a second the runtime
 *              publishes the kafka and llm checks, every 5 s a Redis PING
 *
 * Not thread-safe: one runtime per thread. */
#ifndef SHEAF_RUNTIME_H
#define SHEAF_RUNTIME_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "sheaf/aredis.h"
#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/health.h"
#include "sheaf/llm_async.h"
#include "sheaf/metrics.h"
#include "sheaf/pipeline.h"
#include "sheaf/ratelimit.h"

struct event_base;

#define SHEAF_RUNTIME_PIPELINES 16

typedef struct sheaf_runtime_loading sheaf_runtime_loading;

typedef struct sheaf_runtime {
    const sheaf_config *cfg;        /* borrowed: outlives the runtime */
    const char *component;          /* log prefix: "worker" */
    struct event_base *base;        /* owned */
    sheaf_aredis *redis;            /* owned */
    sheaf_ratelimit *limit;         /* owned; NULL: no fleet-wide limit configured */
    sheaf_llm_limiter limiter;
    int learned_asking;             /* a look for the fleet's learned limits is under way */
    sheaf_llm_async *llm;           /* owned */
    sheaf_metrics *metrics;         /* owned */
    sheaf_llm_metrics llm_met;
    sheaf_health *health;           /* owned: checks kafka, redis, llm */
    sheaf_metrics_server *server;   /* owned; NULL when metrics.port is 0 */
    /* A fleet condition (sheaf_llm_fleet_cause: a refused key, an unknown
     * model): "" when none.  While set, /health's llm check says so. */
    char fleet_cause[SHEAF_ERRSTR_SIZE];
    size_t redis_held;              /* work held for Redis (the program's count): /health stays down */
    struct {
        char pv[17];
        sheaf_pipeline *p;
    } pipelines[SHEAF_RUNTIME_PIPELINES];
    sheaf_runtime_loading *loading; /* versions being fetched, with who waits */
    struct event *ops;              /* owned: the 1 s health timer */
    int64_t redis_ping_ms;
    void (*tick)(void *ud);         /* called every tick_ms by the loop, or NULL */
    void *tick_ud;
    struct event *tick_ev;          /* owned */
} sheaf_runtime;

/* Builds the runtime for component with an LLM window of max_in_flight:
 * metrics and health first (a metrics port that cannot be bound stops the
 * program before it joins anything), then Redis (connected in the
 * background), the limiter and the engine.  NULL with errstr. */
sheaf_runtime *sheaf_runtime_create(const sheaf_config *cfg, const char *component,
                                    int max_in_flight, char *errstr, size_t errlen);
/* The endpoint first, then the engine (its calls are aborted: callbacks
 * fire), then Redis (waiting commands fail: callbacks fire), then the rest.
 * NULL is a no-op. */
void sheaf_runtime_destroy(sheaf_runtime *rt);

/* Calls fn(ud) every tick_ms from the loop (flow control, shutdown checks). */
sheaf_err sheaf_runtime_set_tick(sheaf_runtime *rt, int tick_ms, void (*fn)(void *ud), void *ud);

/* Runs the loop until sheaf_runtime_break (from a callback). */
void sheaf_runtime_run(sheaf_runtime *rt);
void sheaf_runtime_break(sheaf_runtime *rt);
/* Runs whatever is ready, or waits up to timeout_ms for something: for a
 * drain that checks its own condition between turns. */
void sheaf_runtime_turn(sheaf_runtime *rt, int timeout_ms);

/* A Redis command failed (errstr says why): /health says so until the next
 * PING works. */
void sheaf_runtime_redis_failed(sheaf_runtime *rt, const char *errstr);

/* ---- pipelines by version ---- */

/* err SHEAF_OK with p, or SHEAF_ERR_REDIS (retryable), SHEAF_ERR_NOT_FOUND
 * or SHEAF_ERR_INVALID (a snapshot that does not parse) with errstr.  p
 * stays valid until the callback returns only: it may be evicted later. */
typedef void (*sheaf_runtime_pipeline_fn)(void *ud, const sheaf_pipeline *p, sheaf_err err,
                                          const char *errstr);
/* The pipeline of version pv when it is loaded (returned at once, fn not
 * called); else NULL, and fn(ud, ...) fires once it is (from the loop). */
const sheaf_pipeline *sheaf_runtime_pipeline(sheaf_runtime *rt, const char *pv,
                                             sheaf_runtime_pipeline_fn fn, void *ud);
/* Forgets a waiter (its call ended): fn will not fire for ud. */
void sheaf_runtime_pipeline_cancel(sheaf_runtime *rt, void *ud);

/* ---- Kafka queues ---- */

typedef struct sheaf_runtime_queue sheaf_runtime_queue;
/* Calls fn(ud) from the loop whenever q gets something after being empty
 * (and once at the start).  fn should take what it can; when it stops
 * early it calls sheaf_runtime_queue_kick later, because the fd only says
 * when an empty queue gets something.  q is borrowed. */
sheaf_runtime_queue *sheaf_runtime_watch_queue(sheaf_runtime *rt, rd_kafka_queue_t *q,
                                               void (*fn)(void *ud), void *ud, char *errstr,
                                               size_t errlen);
/* fn runs again soon, from the loop. */
void sheaf_runtime_queue_kick(sheaf_runtime_queue *w);
/* Stops watching (the queue stops writing to the pipe).  NULL: no-op. */
void sheaf_runtime_unwatch(sheaf_runtime_queue *w);

#endif
