/* reducer.h - what the parts of sheaf-reducer share.
 *
 * One process, one thread, one event loop: the runtime's (sheaf/runtime.h).
 * Every ready entry being worked on is an explicit state machine (rentry,
 * entry.c) and every LLM reduction inside it another (rop, reduce.c); up to
 * reducer.window entries run at once, each step a callback that returns at
 * once.  Who calls whom, with no two files calling each other:
 *
 *   reducer.c   main, the read loop (streams, claims, trims, sweeps),
 *               shutdown                                 -> entry.c, kinds
 *   entry.c     an entry's life: lease, pipeline, store, write out (file,
 *               results topic), ack; Redis waits  -> the kind's start, through
 *               a function pointer; the read loop, through r->read_ev
 *   doc.c       the doc kind: partials, merge, combine, refinement chain
 *   group.c     the group and overview kinds            -> entry.c, reduce.c
 *   reduce.c    LLM calls: render, cache, progressive levels -> entry.c
 */
#ifndef SHEAF_REDUCER_H
#define SHEAF_REDUCER_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>

#include "sheaf/llm_async.h"
#include "sheaf/metrics.h"
#include "sheaf/pipeline.h"
#include "sheaf/runtime.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

typedef struct rentry rentry;
typedef struct reducer reducer;

/* ---- entry outcomes ---- */

typedef enum {
    ENTRY_DONE,    /* acknowledged: its result is stored and written out */
    ENTRY_RETRY,   /* left pending: claimed again after reducer.claim_idle_ms */
    ENTRY_STOPPED  /* no longer ours (lease lost) or shutting down: left pending */
} entry_outcome;

/* What an entry does once its pipeline is loaded (doc.c, group.c). */
typedef struct rkind {
    const char *name;                 /* "doc", "group", "overview" */
    void (*start)(rentry *e);         /* ends, in the end, with entry_finish */
    void (*clear)(rentry *e);         /* frees e->work (may be NULL) */
} rkind;

extern const rkind reducer_kind_doc, reducer_kind_group, reducer_kind_overview;

/* ---- the process ---- */

struct reducer {
    sheaf_config cfg;
    sheaf_runtime *rt;
    sheaf_aredis *reads;         /* the read loop's own connection (blocking reads) */
    FILE *out;                   /* reducer.output, or NULL */
    rd_kafka_t *results;         /* producer for <prefix>.results */
    sheaf_runtime_queue *results_q;
    char results_topic[256];
    sheaf_metric *docs, *groups, *overviews; /* counters */
    sheaf_metric *entries_now;   /* gauge: n_entries */
    char consumer[160];
    sheaf_strlist jobs;          /* active jobs whose group exists, sorted */
    size_t rotate;               /* where the next read starts, for fairness */
    int reading, refreshing;     /* a read / a refresh is under way */
    struct event *read_ev;       /* the next read */
    int64_t refreshed_ms, claimed_ms, swept_ms, trimmed_ms;
    size_t n_entries;            /* entries in flight */
    rentry *entries;             /* their list */
    int stopping;                /* SIGTERM: no more reads; draining */
    int64_t drain_deadline_ms;
    /* Redis trouble, for the whole process: since when (0: it answers) and
     * the last log line; how many steps wait for it is the runtime's
     * redis_held. */
    int64_t redis_down_ms, redis_logged_ms;
    unsigned long n_docs, n_groups, n_overviews;
};

/* ---- an entry (entry.c) ---- */

struct rentry {
    reducer *r;
    char job[256], id[48];
    char *item;                  /* document id or group path (owned); NULL for overview */
    const rkind *kind;
    sheaf_pipeline *p;           /* held (sheaf_pipeline_hold) once loaded */
    char pv[80];
    struct event *lease_ev;      /* renews the lease every claim_idle_ms / 3 */
    struct event *hold_ev;       /* a Redis step tried again */
    void (*held_step)(rentry *e);
    int hold_ms;                 /* this entry's wait between tries while Redis fails */
    int lease_lost, finished;
    int ops;                     /* Redis commands and LLM reductions under way */
    entry_outcome outcome;
    void *work;                  /* the kind's state */
    /* The item being recorded (entry_record / entry_output). */
    struct {
        sheaf_item_kind kind;
        char *id;                /* NULL for the overview */
        char *json;              /* this entry's result, when it computed one */
        char *stored;            /* the result read back when another's was first */
        sheaf_llm_usage usage;
        int counted;
        char name[1200];         /* "doc:<id>", "group:<path>", "overview" */
        sheaf_store_outcome stored_as;
        void (*absent)(rentry *e);   /* entry_prior: none stored */
        void (*then)(rentry *e, sheaf_store_outcome stored);
    } rec;
    rentry *prev, *next;
};

/* Every asynchronous step of an entry (a Redis command, a reduction) is
 * counted: entry_sent before it is sent; its callback begins with
 * entry_back, and returns at once when that says 0 (the entry ended
 * meanwhile: nothing more to do; it is freed with its last step). */
void entry_sent(rentry *e);
int entry_back(rentry *e);

/* Starts an entry read from a stream (every field copied) as kind; NULL:
 * nothing to do but acknowledge it. */
void entry_start(reducer *r, const sheaf_ready_entry *in, const rkind *kind);
/* Ends the entry: DONE acknowledges it; the entry is freed once nothing of
 * it is under way any more. */
void entry_finish(rentry *e, entry_outcome out);
/* SIGTERM past reducer.drain_ms: every entry ends STOPPED as its calls
 * come back aborted. */
void entry_abort_all(reducer *r);

/* Redis failed a step of the process (what): logged once when it starts
 * and once per interval while it lasts, /health says why.
 * reducer_redis_fine: a step worked; once nothing waits any more, Redis
 * is back (logged once). */
void reducer_redis_trouble(reducer *r, const char *what, const char *errstr);
void reducer_redis_fine(reducer *r);

/* A Redis step of e failed: logged once per interval for the process,
 * /health says so, and step(e) runs again after a wait (200 ms doubling to
 * 5 s) unless the entry is no longer ours or the process stops. */
void entry_redis_failed(rentry *e, const char *what, const char *errstr,
                        void (*step)(rentry *e));
/* A Redis step of e worked (after a failure: Redis is back). */
void entry_redis_ok(rentry *e);

/* Is the item's result stored already?  Then it is written out (if nobody
 * did) and written(e, SHEAF_STORE_KEPT) follows; else absent(e). */
void entry_prior(rentry *e, sheaf_item_kind kind, const char *id, void (*absent)(rentry *e),
                 void (*written)(rentry *e, sheaf_store_outcome stored));
/* Stores json as the item's result (first write wins; Redis trouble
 * waits and stores again, never redoing the calls), then writes out the
 * stored one exactly once, then then(e, outcome).  A job gone (NO_JOB)
 * finishes the entry DONE instead. */
void entry_record(rentry *e, sheaf_item_kind kind, const char *id, const char *json,
                  const sheaf_llm_usage *usage, int counted,
                  void (*then)(rentry *e, sheaf_store_outcome stored));

/* ---- template variables (reduce.c) ---- */

#define RVARS_MAX 16
typedef struct rvars {
    const char *name[RVARS_MAX];
    const char *value[RVARS_MAX];
    size_t n;
    const json_t *meta;          /* for meta.<key>, values as text; NULL = none */
} rvars;

/* Sets (or replaces) a variable; value must outlive its use. */
void rvars_set(rvars *v, const char *name, const char *value);

/* ---- LLM reductions (reduce.c) ---- */

typedef struct stage_result {
    char *text;                  /* the answer (malloc'd), NULL when error is set */
    char *error;                 /* why there is no answer (a permanent failure) */
    sheaf_llm_usage usage;       /* summed over every call made */
} stage_result;

void stage_result_clear(stage_result *res);

/* err: SHEAF_OK with res->text or res->error (taken by the callee: move
 * them out); SHEAF_ERR_STOPPED (shutdown, lease lost) or
 * SHEAF_ERR_LLM_RETRY (transient, after every attempt: nothing decided,
 * the entry is tried again later).  levels: each progressive level's
 * results (an array of arrays; the callee takes a reference); ud: the
 * caller's, as given (an entry may run several reductions at once). */
typedef void (*reduce_done_fn)(rentry *e, void *ud, sheaf_err err, stage_result *res,
                               json_t *levels);

/* Renders the stage with vars and calls the LLM once. */
void reduce_call(rentry *e, const char *name, const sheaf_stage *st, const rvars *vars,
                 reduce_done_fn done, void *ud);
/* Reduces texts with the stage: one call with every text joined under
 * input_var when the prompt fits budget (sheaf_stage_prompt_budget; 0 = no
 * bound), else in levels (sheaf/plan.h): consecutive texts in groups that
 * fit, all calls of a level at once, level by level, until one call takes
 * everything.  vars and texts are copied; the strings vars points to must
 * live until done. */
void reduce_run(rentry *e, const char *name, const sheaf_stage *st, int budget,
                const rvars *vars, const char *input_var, char *const *texts, size_t n,
                reduce_done_fn done, void *ud);

/* The entry is no longer to be worked on: its lease was lost, or SIGTERM's
 * drain is over.  Checked before every step that costs something. */
static inline int entry_stopped(const rentry *e)
{
    return e->lease_lost || (e->r->stopping && sheaf_mono_ms() >= e->r->drain_deadline_ms);
}

/* Maps a reduction's error to what happens to the entry. */
static inline entry_outcome entry_from(sheaf_err err)
{
    return err == SHEAF_OK ? ENTRY_DONE : err == SHEAF_ERR_STOPPED ? ENTRY_STOPPED : ENTRY_RETRY;
}

#endif
