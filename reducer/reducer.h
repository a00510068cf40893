/* reducer.h - what the parts of sheaf-reducer share.
 *
 * A reducer process runs reducer.threads threads; each is a full reducer
 * (its own Redis connection, LLM engine and stream consumer name) reading
 * the same consumer groups, so documents are reduced in parallel exactly as
 * with several reducer processes.  What threads share is read-only (the
 * configuration) or guarded (the output file, the results producer).
 * Metrics are shared too (their counters are atomic); the main thread
 * publishes the health checks, from the state each thread leaves in its
 * llm_open / llm_why. */
#ifndef SHEAF_REDUCER_H
#define SHEAF_REDUCER_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "sheaf/health.h"
#include "sheaf/llm_async.h"
#include "sheaf/metrics.h"
#include "sheaf/pipeline.h"
#include "sheaf/ratelimit.h"
#include "sheaf/state.h"

typedef struct reducer_shared {
    sheaf_config cfg;
    FILE *out;                   /* reducer.output, or NULL */
    pthread_mutex_t out_lock;
    rd_kafka_t *results;         /* producer for <prefix>.results */
    char results_topic[256];
    sheaf_metrics *metrics;
    sheaf_metric *docs, *groups, *overviews;             /* counters */
    sheaf_llm_metrics llm_met;   /* shared by every thread's engine */
    sheaf_health *health;        /* checks kafka, redis, llm: published by the main thread */
    sheaf_metrics_server *server; /* NULL when metrics.port is 0 */
    sheaf_redis *redis;          /* the main thread's, for PING; NULL while unreachable */
    pthread_mutex_t health_lock; /* guards each thread's llm_why */
    /* Redis unreachable: since when (0: it answers), and the last log line,
     * shared by the threads so an outage logs one line per interval. */
    atomic_llong redis_down_ms, redis_logged_ms;
    atomic_int redis_waiting;    /* threads waiting for Redis now */
    char redis_why[SHEAF_ERRSTR_SIZE + 160]; /* why, under health_lock */
} reducer_shared;

typedef struct reducer {
    reducer_shared *sh;
    const sheaf_config *cfg;
    sheaf_redis *redis;
    sheaf_ratelimit *limit;      /* fleet-wide, shared with the workers; NULL = none */
    sheaf_llm_limiter limiter;
    sheaf_llm_async *llm;        /* same engine as the workers: retries, breaker, limiter */
    const char *job;             /* the job being reduced (cache counters); set by the stages */
    char pv[80];                 /* its pipeline version (results-topic keys); reducer_job_pipeline */
    char consumer[160];
    int index, n_threads;        /* this thread's place among reducer.threads */
    sheaf_strlist jobs;          /* active jobs, sorted, refreshed every second; no cap */
    size_t rotate;               /* where the next read starts, for fairness */
    int64_t jobs_refreshed_ms, claimed_ms, swept_ms, trimmed_ms;
    int64_t learned_ms;          /* last look for limits learned by the fleet */
    int redis_delay_ms;          /* this thread's wait between tries while Redis is down */
    /* The lease on the entry being worked on (sheaf/state.h): renewed from
     * the LLM wait loop every claim_idle_ms / 3; lost when another reducer
     * claimed the entry, which stops the work (the entry is the other's). */
    struct {
        char job[256], id[48];
        int active, lost;
        int64_t renewed_ms;
    } lease;
    unsigned long docs, groups, overviews;
    atomic_int llm_open;         /* this thread's LLM circuit is open */
    char llm_why[256];           /* why, under sh->health_lock */
    atomic_int fleet;            /* a fleet condition (sheaf_llm_fleet_cause) holds */
    char fleet_why[384];         /* which, under sh->health_lock */
    pthread_t thread;
    int rc;
} reducer;

typedef enum { ENTRY_DONE, ENTRY_RETRY, ENTRY_STOPPED } entry_outcome;

/* ---- template variables (calls.c) ---- */

#define RVARS_MAX 16
typedef struct rvars {
    const char *name[RVARS_MAX];
    const char *value[RVARS_MAX];
    size_t n;
    const json_t *meta;          /* for meta.<key>, values as text
                                    (sheaf_json_object_texts); NULL = none */
} rvars;

/* Sets (or replaces) a variable; value must outlive its use. */
void rvars_set(rvars *v, const char *name, const char *value);
const char *rvars_lookup(const char *name, size_t len, void *ud, size_t *out_len);

/* ---- LLM calls (calls.c) ---- */

typedef struct stage_result {
    char *text;                  /* the answer (malloc'd), NULL when error is set */
    char *error;                 /* why there is no answer (a permanent failure) */
    sheaf_llm_usage usage;       /* summed over every call made */
} stage_result;

void stage_result_clear(stage_result *res);

/* Renders the stage with vars and calls the LLM once.  SHEAF_OK with
 * res->text or res->error; SHEAF_ERR_STOPPED at shutdown;
 * SHEAF_ERR_LLM_RETRY when the provider failed transiently after every
 * attempt (nothing decided: retry the entry later). */
sheaf_err reducer_call(reducer *r, const char *name, const sheaf_stage *st, const rvars *vars,
                       stage_result *res);

/* Runs a reduce stage over texts: one call with every text joined under
 * the variable input_var ("partials" or "results") when the rendered
 * prompt fits budget (sheaf_stage_prompt_budget: the window less the
 * answer; 0 = no bound), else progressive (sheaf/plan.h):
 * consecutive texts are reduced in groups of at most st->group_size that
 * fit the budget, all calls of a level at once, level by level, until one
 * call takes everything.  Each level's results are appended to levels (an
 * array of arrays) when levels is not NULL.  Same outcomes as reducer_call. */
sheaf_err reducer_reduce(reducer *r, const char *name, const sheaf_stage *st, int budget,
                         rvars *vars, const char *input_var, char *const *texts, size_t n,
                         json_t *levels, stage_result *res);

/* Publishes this thread's LLM circuit state for the main thread's health
 * check (entry.c); called from the thread's loops. */
void reducer_llm_state(reducer *r);

/* ---- entries: lease, pipeline, output, Redis waits (entry.c) ---- */

/* Renews the lease on the current entry when it is due (a Redis call at
 * most every reducer.claim_idle_ms / 3); returns 0 while it is held, -1
 * once lost. */
int reducer_lease_tick(reducer *r);

/* A Redis call of the thread failed: logs one line per interval for the
 * whole process (naming a full Redis as such), marks Redis unhealthy with
 * the reason, and waits a little longer each time (200 ms doubling to 5 s)
 * so that an outage costs no CPU.  reducer_redis_back: this thread's calls
 * succeed again (Redis is back for the process when no thread waits). */
void reducer_redis_down(reducer *r, const char *what, const char *errstr);
void reducer_redis_back(reducer *r);

/* A store of a result this thread computed failed with err: Redis trouble
 * (down, or full and refusing writes) keeps the result in the thread and
 * waits (logged once per interval, 200 ms doubling to 5 s), because a redo
 * of the entry would pay for its LLM calls again.  Returns 1 to store
 * again; 0 for another error, on SIGTERM, or once the lease is lost (the
 * entry is another reducer's then). */
int reducer_store_wait(reducer *r, sheaf_err err, const char *what, const char *errstr);

/* Writes an item's stored result to the outputs, exactly once across every
 * reducer (sheaf/state.h, "exactly-once outputs"): only when this thread is
 * granted the emission right for the entry it works on; mine is the result
 * this thread just stored (NULL: read the stored one).  ENTRY_DONE when the
 * entry may be acknowledged, ENTRY_STOPPED when it is no longer ours,
 * ENTRY_RETRY on a Redis failure. */
entry_outcome reducer_output(reducer *r, const char *job, sheaf_item_kind kind, const char *id,
                             const char *mine);
/* The job's pipeline (NULL with *err: SHEAF_ERR_REDIS to retry, others
 * permanent). */
sheaf_pipeline *reducer_job_pipeline(reducer *r, const char *job, char *errstr, size_t errlen,
                                     sheaf_err *err);

/* ---- stages (doc.c, group.c) ---- */

entry_outcome reducer_doc(reducer *r, const char *job, const char *doc);
entry_outcome reducer_group(reducer *r, const char *job, const char *path);
entry_outcome reducer_overview(reducer *r, const char *job);

/* Maps a stage outcome to what happens to the stream entry. */
static inline entry_outcome entry_from(sheaf_err err)
{
    return err == SHEAF_OK ? ENTRY_DONE : err == SHEAF_ERR_STOPPED ? ENTRY_STOPPED : ENTRY_RETRY;
}

#endif
