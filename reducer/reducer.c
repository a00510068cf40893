/* reducer.c - sheaf-reducer: the reduce stages of every pattern.
 *
 * Work arrives through each active job's Redis stream sheaf:{J}:ready, read
 * with a consumer group (reducer.group) so any number of reducers share it.
 * Entries:
 *   {type=doc, doc=D}      every chunk of D has a recorded result (doc.c)
 *   {type=group, g=PATH}   every member of a metadata group is done (group.c)
 *   {type=overview}        every document (or top-level group) is done
 * An entry is acknowledged (XACK) only after its result is stored and
 * written out (entry.c).  Entries left pending by a reducer that died, or
 * whose LLM calls failed transiently, are taken over with XAUTOCLAIM once
 * idle for reducer.claim_idle_ms.  An entry redone finds its result stored
 * (first write wins) and makes no call.
 *
 * One thread, one event loop (the runtime's, sheaf/runtime.h): this file
 * is the read loop.  Up to reducer.window entries are worked on at once,
 * each an explicit state machine (entry.c); a read asks for new entries as
 * soon as a place is free.  It waits in Redis for them (XREADGROUP BLOCK,
 * READ_BLOCK_MS at most, then again) on a connection of its own: a
 * blocked read holds its connection, and the steps of the entries share
 * the runtime's.  An entry is taken the moment it is written, and an idle
 * reducer makes ten reads a second.
 * A tick lists the active jobs (creating the reducers' group on new
 * streams), claims stale entries, trims acknowledged ones and sweeps
 * expired jobs from the index, each on its own period, and polls the
 * results producer (delivery reports, broker news for /health).
 *
 * Results are written to reducer.output (JSONL) and produced to
 * <prefix>.results (key: [job, pipeline version, kind, item]) as soon as
 * each is recorded, so batch items stream out while the job runs, and
 * each exactly once (entry.c; README "Guarantees" says what a SIGKILL can
 * repeat).
 *
 * SIGTERM: no more reads; the entries under way finish for up to
 * reducer.drain_ms, then the rest are abandoned (left pending: another
 * reducer claims them, and finds whatever was stored). */
#include <event2/event.h>
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

#define TICK_MS 100
#define REFRESH_EVERY_MS 200   /* a new job is read within this of its creation */
#define READ_BLOCK_MS 100      /* a read waits this long for entries; a new job's
                                  stream joins the reads within this */
#define READ_IDLE_MS 50        /* no job: look again after this */
#define READ_FAILED_MS 500     /* a read failed: the next after this */
#define SWEEP_EVERY_MS 60000
#define TRIM_EVERY_MS 10000
#define CLAIM_COUNT 32

/* ---- reading ---- */

/* What an entry is: its kind, or NULL (acknowledged and dropped). */
static const rkind *kind_of(const sheaf_ready_entry *in)
{
    if (in->deleted) return NULL; /* claimed after it was deleted */
    if (strcmp(in->type, "doc") == 0 && in->item) return &reducer_kind_doc;
    if (strcmp(in->type, "group") == 0 && in->item) return &reducer_kind_group;
    if (strcmp(in->type, "overview") == 0) return &reducer_kind_overview;
    sheaf_warn("reducer", "job %s: ignoring unknown ready entry %s", in->job, in->id);
    return NULL;
}

static void start(reducer *r, const sheaf_ready_entry *in)
{
    entry_start(r, in, kind_of(in));
}

static void read_later(reducer *r, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(r->read_ev, &tv);
}

static void on_read(void *ud, const sheaf_state_reply *rep)
{
    reducer *r = ud;
    size_t n = 0;
    r->reading = 0;
    if (r->stopping) return;
    if (rep->err == SHEAF_ERR_NOT_FOUND) {
        /* A job's stream vanished (deleted by hand): the next refresh
         * recreates the group of every job. */
        sheaf_warn("reducer", "%s", rep->errstr);
        sheaf_strlist_free(&r->jobs);
        r->refreshed_ms = 0;
        read_later(r, READ_FAILED_MS);
        return;
    }
    if (rep->err != SHEAF_OK) {
        reducer_redis_trouble(r, "reading ready entries", rep->errstr);
        read_later(r, READ_FAILED_MS);
        return;
    }
    reducer_redis_fine(r);
    for (size_t i = 0; rep->batch && i < rep->batch->n; i++) {
        start(r, &rep->batch->v[i]);
        n++;
    }
    /* More may be there; or the wait ran out: wait again. */
    event_active(r->read_ev, EV_TIMEOUT, 0);
}

/* Asks for new entries when there is room, starting at another job each
 * time: none is always last. */
static void on_read_ev(evutil_socket_t fd, short what, void *arg)
{
    reducer *r = arg;
    size_t room, count;
    (void)fd;
    (void)what;
    if (r->reading || r->stopping) return;
    if (r->jobs.n == 0) {
        read_later(r, READ_IDLE_MS);
        return;
    }
    if (r->n_entries >= (size_t)r->cfg.reducer_window) return; /* entry_finish asks again */
    room = (size_t)r->cfg.reducer_window - r->n_entries;
    /* COUNT is per stream: a share of the room each, at least one.  With
     * more jobs than room, a slice of them (one entry each at most) and
     * the next slice the next time: never more entries than the window. */
    char *const *jobs = r->jobs.v;
    size_t n = r->jobs.n, first;
    if (room < n) {
        jobs += r->rotate;
        n = r->jobs.n - r->rotate < room ? r->jobs.n - r->rotate : room;
        r->rotate = (r->rotate + n) % r->jobs.n;
        first = 0;
    } else {
        r->rotate = (r->rotate + 1) % r->jobs.n;
        first = r->rotate;
    }
    count = room / n;
    r->reading = 1;
    evtimer_del(r->read_ev);
    /* Within redis.timeout_ms, or the watchdog takes the wait for a hang. */
    int block = r->cfg.redis_timeout_ms / 2 < READ_BLOCK_MS ? r->cfg.redis_timeout_ms / 2
                                                            : READ_BLOCK_MS;
    sheaf_state_ready_read_async(r->reads, r->cfg.reducer_group, r->consumer, jobs, n, first,
                                 (int)count, block, on_read, r);
}

/* ---- the active jobs ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct refresh {
    reducer *r;
    sheaf_strlist jobs;     /* the new list, sorted */
    size_t pending;         /* group creations under way */
    int failed;
} refresh;

static void refresh_end(refresh *f)
{
    reducer *r = f->r;
    r->refreshing = 0;
    if (!f->failed) {
        /* A job counts as seen only once its group exists: a failed round
         * tries again, and the outage is logged once, not per job. */
        sheaf_strlist_free(&r->jobs);
        r->jobs = f->jobs;
        memset(&f->jobs, 0, sizeof(f->jobs));
        if (r->rotate >= r->jobs.n) r->rotate = 0;
        if (!r->reading && !r->stopping) event_active(r->read_ev, EV_TIMEOUT, 0);
    }
    sheaf_strlist_free(&f->jobs);
    free(f);
}

static void on_group_made(void *ud, const sheaf_state_reply *rep)
{
    refresh *f = ud;
    if (rep->err != SHEAF_OK) {
        /* A write (refused when Redis is full). */
        if (!f->failed) reducer_redis_trouble(f->r, "creating the reducers' group", rep->errstr);
        f->failed = 1;
    }
    if (--f->pending == 0) refresh_end(f);
}

static void on_jobs(void *ud, const sheaf_state_reply *rep)
{
    refresh *f = ud;
    reducer *r = f->r;
    if (rep->err != SHEAF_OK) {
        reducer_redis_trouble(r, "listing the active jobs", rep->errstr);
        f->failed = 1;
        refresh_end(f);
        return;
    }
    f->jobs = *rep->list; /* taken */
    memset(rep->list, 0, sizeof(*rep->list));
    qsort(f->jobs.v, f->jobs.n, sizeof(*f->jobs.v), cmp_str);
    f->pending = 1; /* this function's own hold, given back below */
    for (size_t i = 0; i < f->jobs.n; i++) {
        if (r->jobs.n && bsearch(&f->jobs.v[i], r->jobs.v, r->jobs.n, sizeof(*r->jobs.v), cmp_str))
            continue;
        f->pending++;
        sheaf_state_ready_group_async(r->rt->redis, f->jobs.v[i], r->cfg.reducer_group, NULL,
                                      on_group_made, f);
    }
    if (--f->pending == 0) refresh_end(f);
}

/* Reads the active jobs, however many (no cap: work follows ready work,
 * and a read takes every job's stream at once).  The reducers' group is
 * created (idempotently) only on a stream not seen in the last round. */
static void refresh_jobs(reducer *r)
{
    refresh *f = calloc(1, sizeof(*f));
    if (!f) return;
    f->r = r;
    r->refreshing = 1;
    sheaf_state_active_jobs_async(r->rt->redis, on_jobs, f);
}

/* ---- claims, trims, sweeps ---- */

typedef struct claim {
    reducer *r;
    char job[256];
} claim;

static void on_claimed(void *ud, const sheaf_state_reply *rep)
{
    claim *c = ud;
    reducer *r = c->r;
    if (rep->err == SHEAF_OK && rep->batch && rep->batch->n && !r->stopping) {
        sheaf_info("reducer", "job %s: claimed %zu stale entr%s", c->job, rep->batch->n,
                   rep->batch->n == 1 ? "y" : "ies");
        for (size_t i = 0; i < rep->batch->n; i++) start(r, &rep->batch->v[i]);
    }
    free(c);
}

/* Takes over entries pending longer than reducer.claim_idle_ms (their
 * reducer died or hangs, or their calls failed transiently). */
static void claim_stale(reducer *r)
{
    for (size_t j = 0; j < r->jobs.n; j++) {
        claim *c = calloc(1, sizeof(*c));
        if (!c) return;
        c->r = r;
        snprintf(c->job, sizeof(c->job), "%s", r->jobs.v[j]);
        sheaf_state_ready_claim_async(r->rt->redis, r->jobs.v[j], r->cfg.reducer_group,
                                      r->consumer, r->cfg.reducer_claim_idle_ms, CLAIM_COUNT,
                                      on_claimed, c);
    }
}

static void on_trimmed(void *ud, const sheaf_state_reply *rep)
{
    (void)ud;
    if (rep->err != SHEAF_OK) sheaf_debug("reducer", "trimming a job's stream: %s", rep->errstr);
}

/* Drops what every reducer acknowledged from the active jobs' streams: a
 * long job's stream holds its work in progress, not its history. */
static void trim_streams(reducer *r)
{
    for (size_t j = 0; j < r->jobs.n; j++)
        sheaf_state_ready_trim_async(r->rt->redis, r->jobs.v[j], on_trimmed, NULL);
}

static void on_swept(void *ud, const sheaf_state_reply *rep)
{
    (void)ud;
    if (rep->err != SHEAF_OK) sheaf_warn("reducer", "sweeping expired jobs: %s", rep->errstr);
    else if (rep->n)
        sheaf_info("reducer", "%lld expired job(s) removed from the index", rep->n);
}

/* ---- tick, drain ---- */

static void tick(void *ud)
{
    reducer *r = ud;
    int64_t now = sheaf_mono_ms();

    if (r->results) rd_kafka_poll(r->results, 0);
    if (sheaf_stop && !r->stopping) {
        r->stopping = 1;
        r->drain_deadline_ms = now + r->cfg.reducer_drain_ms;
        evtimer_del(r->read_ev);
        if (r->n_entries)
            sheaf_info("reducer", "stopping: finishing %zu reduction(s), at most %d ms",
                       r->n_entries, r->cfg.reducer_drain_ms);
    }
    if (r->stopping) {
        if (r->n_entries && now >= r->drain_deadline_ms) {
            sheaf_warn("reducer", "drain deadline reached: leaving %zu reduction(s) pending "
                       "for another reducer", r->n_entries);
            entry_abort_all(r);
            r->drain_deadline_ms = INT64_MAX; /* once */
        }
        if (!r->n_entries && !r->entries) sheaf_runtime_break(r->rt);
        return;
    }
    if (!r->refreshing && now - r->refreshed_ms >= REFRESH_EVERY_MS) {
        r->refreshed_ms = now;
        refresh_jobs(r);
    }
    if (now - r->claimed_ms >= r->cfg.reducer_claim_idle_ms / 2) {
        r->claimed_ms = now;
        claim_stale(r);
    }
    if (now - r->trimmed_ms >= TRIM_EVERY_MS) {
        r->trimmed_ms = now;
        trim_streams(r);
    }
    if (now - r->swept_ms >= SWEEP_EVERY_MS) {
        /* Index entries of jobs whose keys expired (job.retention_s). */
        r->swept_ms = now;
        sheaf_state_jobs_sweep_async(r->rt->redis, on_swept, NULL);
    }
}

/* ---- start, stop ---- */

static sheaf_metric *metric(reducer *r, sheaf_metric_type type, const char *name,
                            const char *help, char *errstr, size_t errlen)
{
    return sheaf_metrics_add(r->rt->metrics, type, name, help, NULL, NULL, NULL, 0, errstr,
                             errlen);
}

static int setup(reducer *r, char *errstr, size_t errlen)
{
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(r->consumer, sizeof(r->consumer), "%s-%d", host, (int)getpid());
    if (!(r->rt = sheaf_runtime_create(&r->cfg, "reducer", r->cfg.reducer_window, errstr,
                                       errlen)))
        return -1;
    if (!(r->docs = metric(r, SHEAF_METRIC_COUNTER, "sheaf_docs_reduced_total",
                           "Documents whose result was recorded.", errstr, errlen)) ||
        !(r->groups = metric(r, SHEAF_METRIC_COUNTER, "sheaf_groups_reduced_total",
                             "Metadata groups whose result was recorded.", errstr, errlen)) ||
        !(r->overviews = metric(r, SHEAF_METRIC_COUNTER, "sheaf_overviews_total",
                                "Job overviews recorded.", errstr, errlen)) ||
        !(r->entries_now = metric(r, SHEAF_METRIC_GAUGE, "sheaf_reducer_entries",
                                  "Ready entries (documents, groups, overviews) worked on now; "
                                  "at most reducer.window.",
                                  errstr, errlen)))
        return -1;
    if (r->cfg.reducer_output && *r->cfg.reducer_output) {
        r->out = strcmp(r->cfg.reducer_output, "-") == 0 ? stdout
                                                         : fopen(r->cfg.reducer_output, "a");
        if (!r->out) {
            sheaf_set_err(errstr, errlen, "reducer.output %s: cannot open for appending",
                          r->cfg.reducer_output);
            return -1;
        }
    }
    sheaf_topic_name(&r->cfg, "results", r->results_topic, sizeof(r->results_topic));
    if (!(r->results = sheaf_kafka_producer_new(&r->cfg, "sheaf-reducer", errstr, errlen)))
        return -1;
    if (!(r->reads = sheaf_aredis_create(r->rt->base, &r->cfg, errstr, errlen))) return -1;
    if (!(r->read_ev = event_new(r->rt->base, -1, 0, on_read_ev, r)) ||
        sheaf_runtime_set_tick(r->rt, TICK_MS, tick, r) != SHEAF_OK) {
        sheaf_set_err(errstr, errlen, "cannot arm the reducer's timers");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    reducer r;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    int rc;

    memset(&r, 0, sizeof(r));
    rc = sheaf_program_start(&r.cfg, "sheaf-reducer", usage_text, argc, argv);
    if (rc >= 0) return rc;
    rc = 1;
    if (setup(&r, errstr, sizeof(errstr)) != 0) {
        sheaf_error("reducer", "%s", errstr);
        goto stop;
    }
    sheaf_info("reducer", "window %d in group %s; LLM %s; results to %s", r.cfg.reducer_window,
               r.cfg.reducer_group, r.cfg.llm_base_url, r.results_topic);
    sheaf_runtime_run(r.rt);
    sheaf_info("reducer", "stopping: %lu documents, %lu groups, %lu overviews", r.n_docs,
               r.n_groups, r.n_overviews);
    rc = 0;
stop:
    /* Callbacks that fire from here on (the runtime's engine and Redis
     * fail what is left) see stopping and schedule nothing. */
    r.stopping = 1;
    if (r.read_ev) event_free(r.read_ev);
    r.read_ev = NULL;
    sheaf_aredis_destroy(r.reads); /* on the runtime's loop: first */
    sheaf_runtime_destroy(r.rt);
    if (r.results) {
        if (sheaf_kafka_flush(r.results, 10000, errstr, sizeof(errstr)) != SHEAF_OK)
            sheaf_warn("reducer", "results producer: %s", errstr);
        sheaf_kafka_producer_destroy(r.results);
    }
    if (r.out && r.out != stdout) fclose(r.out);
    sheaf_strlist_free(&r.jobs);
    sheaf_config_clear(&r.cfg);
    return rc;
}
