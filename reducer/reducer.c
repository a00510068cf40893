/* reducer.c - sheaf-reducer: the reduce stages of every pattern.
 *
 * Work arrives through each active job's Redis stream sheaf:{J}:ready, read
 * with a consumer group (reducer.group) so any number of reducers - and
 * reducer.threads threads in each - share it.  Entries:
 *   {type=doc, doc=D}      every chunk of D has a recorded result (doc.c)
 *   {type=group, g=PATH}   every member of a metadata group is done (group.c)
 *   {type=overview}        every document (or top-level group) is done
 * An entry is acknowledged (XACK) only after its result is stored and
 * written out.  A thread works on an entry under a lease (renewed from the
 * LLM wait loop, reducer_lease_tick in entry.c), so no other reducer takes work in
 * progress over however long its calls take; entries left pending by a
 * reducer that died, or whose LLM calls failed transiently, are taken over
 * with XAUTOCLAIM once idle for reducer.claim_idle_ms.  An entry redone
 * finds its result stored (first write wins) and makes no call.
 *
 * Results are written to reducer.output (JSONL) and produced to
 * <prefix>.results (key: [job, pipeline version, kind, item]) as soon as
 * each is recorded, so batch items stream out while the job runs, and
 * each exactly once (reducer_output in entry.c, and sheaf/state.h's emission right;
 * README "Guarantees" says what a SIGKILL can repeat).
 *
 * Metrics and health (metrics.port): the threads count into shared atomic
 * counters (their engines feed the LLM series).  While they run, the main
 * thread polls the results producer (delivery reports, and the statistics
 * that tell sheaf_kafka_brokers_ok when a broker is up again) and
 * publishes the health checks: kafka (the producer's broker news), redis
 * (a PING every 5 s on its own connection) and llm (unhealthy while any
 * thread's circuit breaker is open, with that thread's reason). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reducer.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"

static const char usage_text[] =
            "usage: sheaf-reducer [-c FILE] [-X key=value ...]\n"
            "  Runs the reduce stages (combine, refinement, merge, groups, overview)\n"
            "  of every job as its inputs become ready.\n"
            "  -c, --config FILE   configuration file (default: $SHEAF_CONFIG)\n"
            "  -X key=value        set a configuration key (see --help-config)\n"
            "      --help-config   list every configuration key\n";

/* A new job is read from within REFRESH_EVERY_MS of its creation; a read
 * waits at most READ_BLOCK_MS for an entry before the loop turns again. */
#define REFRESH_EVERY_MS 200
#define READ_BLOCK_MS 200

/* ---- stream plumbing ---- */

/* Handles one ready entry. */
static entry_outcome handle_entry(reducer *r, const sheaf_ready_entry *e)
{
    if (strcmp(e->type, "doc") == 0 && e->item) return reducer_doc(r, e->job, e->item);
    if (strcmp(e->type, "group") == 0 && e->item) return reducer_group(r, e->job, e->item);
    if (strcmp(e->type, "overview") == 0) return reducer_overview(r, e->job);
    sheaf_warn("reducer", "job %s: ignoring unknown ready entry %s", e->job, e->id);
    return ENTRY_DONE;
}

static void ack(reducer *r, const sheaf_ready_entry *e)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    if (sheaf_state_ready_ack(r->redis, e->job, r->cfg->reducer_group, e->id, errstr,
                              sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("reducer", "job %s: acknowledging %s: %s (the entry will be redone)", e->job,
                   e->id, errstr);
}

/* Processes a batch of entries.  Each is worked on under a lease, taken
 * (checked and renewed) first: an entry that waited in the batch past
 * reducer.claim_idle_ms may belong to another reducer by now, and is then
 * left to it. */
static void process_entries(reducer *r, const sheaf_ready_batch *b)
{
    for (size_t i = 0; i < b->n && !sheaf_stop; i++) {
        const sheaf_ready_entry *e = &b->v[i];
        if (e->deleted) { /* claimed after it was deleted */
            ack(r, e);
            continue;
        }
        snprintf(r->lease.job, sizeof(r->lease.job), "%s", e->job);
        snprintf(r->lease.id, sizeof(r->lease.id), "%s", e->id);
        r->lease.active = 1;
        r->lease.lost = 0;
        r->lease.renewed_ms = 0; /* due now */
        if (reducer_lease_tick(r) == 0 && handle_entry(r, e) == ENTRY_DONE) ack(r, e);
        r->lease.active = 0;
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the active jobs, however many (no cap: work follows ready work,
 * and XREADGROUP takes every job's stream at once).  The reducers' group
 * is created (idempotently) only on a stream not seen in the last round. */
static void refresh_jobs(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_strlist jobs;
    if (sheaf_state_active_jobs(r->redis, &jobs, errstr, sizeof(errstr)) != SHEAF_OK) {
        reducer_redis_down(r, "listing the active jobs", errstr);
        return;
    }
    qsort(jobs.v, jobs.n, sizeof(*jobs.v), cmp_str);
    for (size_t i = 0; i < jobs.n; i++) {
        if (r->jobs.n && bsearch(&jobs.v[i], r->jobs.v, r->jobs.n, sizeof(*jobs.v), cmp_str))
            continue;
        if (sheaf_state_ready_group(r->redis, jobs.v[i], r->cfg->reducer_group, NULL, errstr,
                                    sizeof(errstr)) != SHEAF_OK) {
            /* A write (refused when Redis is full): the job counts as
             * seen only once its group exists, so the next round tries
             * again, and the outage is logged once, not per job. */
            reducer_redis_down(r, "creating the reducers' group", errstr);
            sheaf_strlist_free(&jobs);
            return;
        }
    }
    sheaf_strlist_free(&r->jobs);
    r->jobs = jobs;
}

/* Takes over entries pending longer than reducer.claim_idle_ms (their
 * reducer died or hangs) and processes them. */
static void claim_stale(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    /* Each thread claims for its share of the jobs: every job is looked at
     * by one thread of each reducer process per round. */
    for (size_t j = (size_t)r->index; j < r->jobs.n && !sheaf_stop; j += (size_t)r->n_threads) {
        sheaf_ready_batch b;
        if (sheaf_state_ready_claim(r->redis, r->jobs.v[j], r->cfg->reducer_group, r->consumer,
                                    r->cfg->reducer_claim_idle_ms, 32, &b, errstr,
                                    sizeof(errstr)) != SHEAF_OK)
            continue;
        if (b.n) {
            sheaf_info("reducer", "job %s: claimed %zu stale entr%s", r->jobs.v[j], b.n,
                       b.n == 1 ? "y" : "ies");
            process_entries(r, &b);
        }
        sheaf_ready_batch_free(&b);
    }
}

/* Drops what every reducer acknowledged from this thread's share of the
 * active jobs' streams: a long job's stream holds its work in progress,
 * not its history. */
static void trim_streams(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    for (size_t j = (size_t)r->index; j < r->jobs.n && !sheaf_stop; j += (size_t)r->n_threads)
        if (sheaf_state_ready_trim(r->redis, r->jobs.v[j], NULL, errstr, sizeof(errstr)) !=
            SHEAF_OK)
            sheaf_debug("reducer", "job %s: trimming its stream: %s", r->jobs.v[j], errstr);
}

static void read_new(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_ready_batch b;
    size_t n = r->jobs.n;
    if (n == 0) {
        sheaf_sleep_ms(500);
        return;
    }
    /* One entry at a time: entries never wait in a thread's batch while
     * the other threads idle, so reductions run reducer.threads at once.
     * Starting at another job each round: none is always last. */
    r->rotate = (r->rotate + 1) % n;
    sheaf_err err = sheaf_state_ready_read(r->redis, r->cfg->reducer_group, r->consumer, r->jobs.v,
                                           n, r->rotate, 1, READ_BLOCK_MS, &b, errstr, sizeof(errstr));
    if (err == SHEAF_ERR_NOT_FOUND) {
        /* A job's stream vanished (deleted by hand): the next refresh
         * recreates the group of every job. */
        sheaf_warn("reducer", "%s", errstr);
        sheaf_strlist_free(&r->jobs);
        r->jobs_refreshed_ms = 0;
        sheaf_sleep_ms(500);
        return;
    }
    if (err != SHEAF_OK) {
        reducer_redis_down(r, "reading ready entries", errstr);
        return;
    }
    reducer_redis_back(r);
    process_entries(r, &b);
    sheaf_ready_batch_free(&b);
}

/* ---- metrics and health ---- */

#define HEALTH_EVERY_MS 1000
#define PING_EVERY_MS 5000
#define SWEEP_EVERY_MS 60000
#define TRIM_EVERY_MS 10000

static sheaf_metric *counter(reducer_shared *sh, const char *name, const char *help,
                             char *errstr, size_t errlen)
{
    return sheaf_metrics_add(sh->metrics, SHEAF_METRIC_COUNTER, name, help, NULL, NULL, NULL, 0,
                             errstr, errlen);
}

/* The registry, the health checks and, with metrics.port, the endpoint
 * (a port that cannot be bound stops the reducer). */
static int metrics_start(reducer_shared *sh, char *errstr, size_t errlen)
{
    if (!(sh->metrics = sheaf_metrics_create()) || !(sh->health = sheaf_health_create())) {
        sheaf_set_err(errstr, errlen, "out of memory");
        return -1;
    }
    if (!(sh->docs = counter(sh, "sheaf_docs_reduced_total",
                             "Documents whose result was recorded.", errstr, errlen)) ||
        !(sh->groups = counter(sh, "sheaf_groups_reduced_total",
                               "Metadata groups whose result was recorded.", errstr, errlen)) ||
        !(sh->overviews = counter(sh, "sheaf_overviews_total",
                                  "Job overviews recorded.", errstr, errlen)) ||
        sheaf_llm_metrics_register(sh->metrics, &sh->llm_met, errstr, errlen) != SHEAF_OK)
        return -1;
    if (sheaf_health_add(sh->health, "kafka", 0) != SHEAF_OK ||
        sheaf_health_add(sh->health, "redis", 0) != SHEAF_OK ||
        sheaf_health_add(sh->health, "llm", 0) != SHEAF_OK) {
        sheaf_set_err(errstr, errlen, "cannot add health checks");
        return -1;
    }
    if (sh->cfg.metrics_port > 0 &&
        !(sh->server = sheaf_metrics_server_create(&sh->cfg, sh->metrics, sh->health, errstr,
                                                    errlen)))
        return -1;
    return 0;
}

/* One turn of the main thread while the reducer threads run. */
static void watch(reducer_shared *sh, reducer *rs, int n, int64_t *health_ms, int64_t *ping_ms)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", why[SHEAF_HEALTH_REASON_SIZE + 32];
    int64_t now = sheaf_mono_ms();
    /* Under out_lock: the delivery callback is not meant for two threads. */
    pthread_mutex_lock(&sh->out_lock);
    rd_kafka_poll(sh->results, 0);
    pthread_mutex_unlock(&sh->out_lock);
    if (now - *health_ms >= HEALTH_EVERY_MS) {
        int ok = sheaf_kafka_brokers_ok(why, sizeof(why));
        *health_ms = now;
        sheaf_health_set(sh->health, "kafka", ok, why);
        ok = 1;
        for (int i = 0; i < n && ok; i++) {
            if (!atomic_load(&rs[i].llm_open) && !atomic_load(&rs[i].fleet)) continue;
            pthread_mutex_lock(&sh->health_lock);
            if (atomic_load(&rs[i].fleet)) snprintf(why, sizeof(why), "%.250s", rs[i].fleet_why);
            else snprintf(why, sizeof(why), "circuit open: %s", rs[i].llm_why);
            pthread_mutex_unlock(&sh->health_lock);
            ok = 0;
        }
        sheaf_health_set(sh->health, "llm", ok, why);
    }
    if (now - *ping_ms >= PING_EVERY_MS) {
        redisReply *rep = NULL;
        if (!sh->redis) sh->redis = sheaf_redis_connect(&sh->cfg, errstr, sizeof(errstr));
        if (sh->redis) rep = sheaf_redis_cmd(sh->redis, errstr, sizeof(errstr), "PING");
        if (!rep) {
            sheaf_health_set(sh->health, "redis", 0, errstr);
        } else if (atomic_load(&sh->redis_down_ms)) {
            /* PING answers, a thread's calls do not (Redis full refuses
             * writes only): the threads' reason stands until one succeeds. */
            pthread_mutex_lock(&sh->health_lock);
            snprintf(why, sizeof(why), "%.*s", (int)sizeof(why) - 1, sh->redis_why);
            pthread_mutex_unlock(&sh->health_lock);
            sheaf_health_set(sh->health, "redis", 0, why);
        } else {
            sheaf_health_set(sh->health, "redis", 1, NULL);
        }
        if (rep) freeReplyObject(rep);
        *ping_ms = sheaf_mono_ms();
    }
}

/* ---- threads ---- */

/* The engine learned the provider's limits (no llm.rpm/tpm configured):
 * shared with the fleet through the endpoint's Redis limiter, as the
 * workers' runtime does (common/runtime/runtime.c), on this thread's own
 * connection. */
static void on_learned(void *ud, int64_t rpm, int64_t tpm)
{
    reducer *r = ud;
    char errstr[SHEAF_ERRSTR_SIZE];
    double q = (double)rpm * SHEAF_LLM_LEARN_MARGIN, t = (double)tpm * SHEAF_LLM_LEARN_MARGIN;
    if (r->limit) {
        sheaf_ratelimit_set_rates(r->limit, q, t);
        return;
    }
    if (!(r->limit = sheaf_ratelimit_for_endpoint(r->redis, r->cfg, q, t, errstr,
                                                  sizeof(errstr)))) {
        sheaf_warn("reducer", "cannot share the learned limits: %s", errstr);
        return;
    }
    sheaf_ratelimit_bind(r->limit, &r->limiter);
    sheaf_llm_async_set_learned_limiter(r->llm, &r->limiter);
}

/* Until this thread has a limiter: limits the fleet learned (a worker saw
 * the provider's headers before this thread made a call), every second,
 * so the first calls are paced too.  Not with llm.rpm/tpm configured. */
static void learned_look(reducer *r)
{
    int64_t now = sheaf_mono_ms(), rpm = 0, tpm = 0;
    if (r->limit || r->cfg->llm_rpm > 0 || r->cfg->llm_tpm > 0 || now - r->learned_ms < 1000) return;
    r->learned_ms = now;
    if (sheaf_ratelimit_learned_get(r->redis, r->cfg, &rpm, &tpm)) on_learned(r, rpm, tpm);
}

static void *reducer_run(void *arg)
{
    reducer *r = arg;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    r->rc = 1;
    if (!(r->redis = sheaf_redis_connect(r->cfg, errstr, sizeof(errstr))) ||
        sheaf_ratelimit_from_config(r->redis, r->cfg, &r->limit, errstr, sizeof(errstr)) ||
        (r->limit && (sheaf_ratelimit_bind(r->limit, &r->limiter), 0)) ||
        !(r->llm = sheaf_llm_async_create(r->cfg, 64, r->limit ? &r->limiter : NULL, errstr,
                                          sizeof(errstr)))) {
        sheaf_error("reducer", "%s", errstr);
        sheaf_stop = 1; /* one thread failing to start stops the process */
        return NULL;
    }
    sheaf_llm_async_set_metrics(r->llm, &r->sh->llm_met);
    if (!r->limit) sheaf_llm_async_on_learned(r->llm, on_learned, r);
    while (!sheaf_stop) {
        learned_look(r);
        reducer_llm_state(r);
        int64_t now = sheaf_mono_ms();
        if (now - r->jobs_refreshed_ms >= REFRESH_EVERY_MS) {
            refresh_jobs(r);
            r->jobs_refreshed_ms = now;
        }
        if (now - r->claimed_ms >= r->cfg->reducer_claim_idle_ms / 2) {
            claim_stale(r);
            r->claimed_ms = now;
        }
        if (now - r->trimmed_ms >= TRIM_EVERY_MS) {
            trim_streams(r);
            r->trimmed_ms = now;
        }
        if (r->index == 0 && now - r->swept_ms >= SWEEP_EVERY_MS) {
            /* Index entries of jobs whose keys expired (job.retention_s). */
            char errstr2[SHEAF_ERRSTR_SIZE];
            size_t gone = 0;
            if (sheaf_state_jobs_sweep(r->redis, &gone, errstr2, sizeof(errstr2)) != SHEAF_OK)
                sheaf_warn("reducer", "sweeping expired jobs: %s", errstr2);
            else if (gone)
                sheaf_info("reducer", "%zu expired job(s) removed from the index", gone);
            r->swept_ms = now;
        }
        read_new(r);
    }
    r->rc = 0;
    return NULL;
}

static void reducer_clear(reducer *r)
{
    sheaf_strlist_free(&r->jobs);
    sheaf_llm_async_destroy(r->llm);
    sheaf_ratelimit_destroy(r->limit);
    sheaf_redis_destroy(r->redis);
}

int main(int argc, char **argv)
{
    reducer_shared sh;
    reducer *rs = NULL;
    char errstr[SHEAF_ERRSTR_SIZE] = "", host[64] = "host";
    unsigned long docs = 0, groups = 0, overviews = 0;
    int rc, n = 0, started = 0;

    memset(&sh, 0, sizeof(sh));
    pthread_mutex_init(&sh.out_lock, NULL);
    pthread_mutex_init(&sh.health_lock, NULL);
    rc = sheaf_program_start(&sh.cfg, "sheaf-reducer", usage_text, argc, argv);
    if (rc >= 0) return rc;
    rc = 1;
    json_object_seed(0); /* before any thread makes a JSON object */
    gethostname(host, sizeof(host) - 1);
    if (metrics_start(&sh, errstr, sizeof(errstr)) != 0) {
        sheaf_error("reducer", "%s", errstr);
        goto stop;
    }
    if (sh.cfg.reducer_output && *sh.cfg.reducer_output) {
        sh.out = strcmp(sh.cfg.reducer_output, "-") == 0 ? stdout
                                                          : fopen(sh.cfg.reducer_output, "a");
        if (!sh.out) {
            sheaf_error("reducer", "reducer.output %s: cannot open for appending",
                        sh.cfg.reducer_output);
            goto stop;
        }
    }
    sheaf_topic_name(&sh.cfg, "results", sh.results_topic, sizeof(sh.results_topic));
    if (!(sh.results = sheaf_kafka_producer_new(&sh.cfg, "sheaf-reducer", errstr,
                                                sizeof(errstr)))) {
        sheaf_error("reducer", "results producer: %s", errstr);
        goto stop;
    }
    n = sh.cfg.reducer_threads;
    if (!(rs = calloc((size_t)n, sizeof(*rs)))) goto stop;
    for (int i = 0; i < n; i++) {
        rs[i].sh = &sh;
        rs[i].cfg = &sh.cfg;
        rs[i].index = i;
        rs[i].n_threads = n;
        snprintf(rs[i].consumer, sizeof(rs[i].consumer), "%s-%d-%d", host, (int)getpid(), i);
        if (pthread_create(&rs[i].thread, NULL, reducer_run, &rs[i]) != 0) {
            sheaf_error("reducer", "cannot start thread %d", i);
            sheaf_stop = 1;
            break;
        }
        started++;
    }
    sheaf_info("reducer", "%d thread(s) in group %s; LLM %s; results to %s", started,
               sh.cfg.reducer_group, sh.cfg.llm_base_url, sh.results_topic);
    rc = 0;
    {
        int64_t health_ms = 0, ping_ms = 0;
        /* The threads run until sheaf_stop (a failing one sets it too). */
        while (!sheaf_stop) {
            watch(&sh, rs, started, &health_ms, &ping_ms);
            sheaf_sleep_ms(200);
        }
    }
    for (int i = 0; i < started; i++) {
        pthread_join(rs[i].thread, NULL);
        if (rs[i].rc) rc = 1;
        docs += rs[i].docs;
        groups += rs[i].groups;
        overviews += rs[i].overviews;
    }
    sheaf_info("reducer", "stopping: %lu documents, %lu groups, %lu overviews", docs, groups,
               overviews);
stop:
    /* The endpoint first: it reads the registry and the checks. */
    sheaf_metrics_server_destroy(sh.server);
    for (int i = 0; rs && i < n; i++) reducer_clear(&rs[i]);
    free(rs);
    if (sh.results) {
        if (sheaf_kafka_flush(sh.results, 10000, errstr, sizeof(errstr)) != SHEAF_OK)
            sheaf_warn("reducer", "results producer: %s", errstr);
        sheaf_kafka_producer_destroy(sh.results);
    }
    if (sh.out && sh.out != stdout) fclose(sh.out);
    /* After the engines, which give back their share of the in-flight gauge. */
    sheaf_metrics_destroy(sh.metrics);
    sheaf_health_destroy(sh.health);
    sheaf_redis_destroy(sh.redis);
    pthread_mutex_destroy(&sh.health_lock);
    pthread_mutex_destroy(&sh.out_lock);
    sheaf_config_clear(&sh.cfg);
    return rc;
}
