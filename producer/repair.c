/* repair.c - `sheaf repair JOB`: find what Redis lost of a job and have the
 * fleet redo it.
 *
 * What can be lost.  Redis with appendfsync everysec (or a replica promoted
 * after a failover, or an RDB snapshot) comes back with a prefix of its
 * writes: every Lua script either survived whole or not at all, so the
 * counters stay consistent with the records, but the last writes are gone.
 * The one loss sheaf cannot heal by itself is a chunk's result: the worker
 * committed the message's Kafka offset after Redis acknowledged the write,
 * so nobody will deliver that chunk again.  Its document then never
 * completes, and the job never ends.  (Lost document, group and overview
 * results heal: their ready entry was not acknowledged either, and a
 * reducer claims it again.)  Keys damaged by hand are not a prefix; repair
 * recounts instead of trusting the counters, so it mends those too.
 *
 * How.  A repair runs in this order, so that a refusal changes nothing and
 * the fleet never works from counters that are about to be corrected:
 *   1. reads the job (state, pipeline, topic) and which entries of the
 *      ready stream are still live: not yet delivered to the reducers'
 *      consumer group, or pending in it (delivered, not acknowledged);
 *   2. inspects every document with the per-document script below in
 *      read-only mode: chunks without a record (failed chunks are recorded,
 *      and dead-lettered, so they count as done), the document's counters,
 *      whether it has a result and whether it needs a {type=doc} entry;
 *      then the job with the job script: docs_done, metadata groups,
 *      overview;
 *   3. when chunks are missing: reads the job's recorded offset ranges,
 *      checks they are still on the topic (else refuses, naming the range,
 *      having changed nothing), and reads the workers' committed offsets:
 *      a missing chunk before them was processed and its result lost; one
 *      at or after them is still queued for the fleet (or was processed
 *      within the last auto-commit interval) and is left alone - unless the
 *      job was done, when every chunk had been processed;
 *   4. (not in a dry run) runs the same scripts again, now writing: each
 *      document's done/failed counts become what its records say, the
 *      job's counters move by the same difference, a document whose chunks
 *      are all recorded but that has no result and no live entry gets
 *      {type=doc} again; docs_done and the metadata groups' counts are
 *      recounted from the results present, complete groups without a
 *      result and a missing overview are enqueued; a done job that lost
 *      results is running again and in sheaf:jobs:active;
 *   5. reads the ranges again and produces the lost chunks' messages once
 *      more, same job id and pipeline version, so the normal fleet redoes
 *      them (first write wins, so a chunk also recorded meanwhile costs at
 *      most one more call).
 *
 * Concurrency.  Workers and reducers may run during a repair.  Every write
 * of step 4 is a script that recounts and decides atomically with respect
 * to them: a chunk recorded between inspection and repair is counted, not
 * overwritten; an entry is enqueued only when, in the same script, the
 * result is still missing and no entry for it was appended since the
 * stream was scanned in step 1 (entries live then are known from the
 * scan: if one was acknowledged since, its result is there).  A document's
 * counters are its share of the job's counters (the chunk-store script
 * bumps both together), so moving the job's counters by the document's
 * correction inside the same script needs no global recount and no lock.
 * The chunk-store script does not enqueue a document that already has a
 * result, so recomputed chunks of a document whose result survived cost no
 * combine.
 *
 * Limits.  The LLM call cache is not restored (a lost cache entry is a
 * future miss, nothing worse); a job whose job hash is gone cannot be
 * repaired (nothing is known of it); a listed document without its
 * registration (sheaf:{J}:d:<doc>) is reported, not repaired. */
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "producer.h"
#include "publish.h"
#include "ranges.h"
#include "sheaf/codec.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

#define MAXP SHEAF_KAFKA_MAX_PARTITIONS

/* ---- state of one repair ---- */

enum { CH_NOT_FOUND = 0, CH_LOST = 1, CH_QUEUED = 2 };

typedef struct rdoc {
    char *id;                /* first: bsearch compares it as a string */
    sheaf_repair_doc s;      /* what the repair script found (missing: ascending) */
    uint8_t *fate;           /* per missing chunk: CH_* */
} rdoc;

typedef struct repair {
    const sheaf_config *cfg;
    const sheaf_repair_opts *o;
    sheaf_repair_report *rep;
    sheaf_redis *r;
    const char *job;
    sheaf_job_status st;     /* state, pipeline version, topic */
    sheaf_ready_scan scan;   /* the ready stream when scanned */
    /* documents needing repair, in submit order; then those with missing
     * chunks, sorted by id for the Kafka scan */
    rdoc *docs;
    size_t n_docs, cap_docs;
    rdoc **by_id;
    size_t n_by_id;
    sheaf_repair_job jobinfo;/* the job script's answer: complete groups without a result */
    /* Kafka */
    sheaf_job_ranges rg;
    int64_t committed[MAXP]; /* workers' committed offsets; -1 unknown */
    int was_done;
    sheaf_chunk_producer *cp;/* NULL: count only */
} repair;

static void rdoc_clear(rdoc *d)
{
    free(d->id);
    free(d->s.missing);
    free(d->fate);
    memset(d, 0, sizeof(*d));
}

/* ---- step 1: the job and its ready stream ---- */

static sheaf_err load_job(repair *x, char *errstr, size_t errlen)
{
    int have = 0;
    sheaf_err err = sheaf_state_job_status(x->r, x->job, &x->st, errstr, errlen);
    if (err == SHEAF_ERR_NOT_FOUND) {
        snprintf(errstr, errlen, "no job %s in Redis: its job hash is gone, so nothing is known "
                 "of it (documents, pipeline, where its messages are); it cannot be repaired",
                 x->job);
        return err;
    }
    if (err != SHEAF_OK) return err;
    if (!x->st.pv[0] || !x->st.topic[0]) {
        snprintf(errstr, errlen, "job %s lacks its pipeline version or topic", x->job);
        return SHEAF_ERR_NOT_FOUND;
    }
    snprintf(x->rep->state, sizeof(x->rep->state), "%s", sheaf_job_state_name(x->st.state));
    if (x->st.state != SHEAF_JOB_RUNNING && x->st.state != SHEAF_JOB_DONE) {
        snprintf(errstr, errlen, "job %s is %s: only a job whose chunks were all produced "
                 "(running or done) can be repaired", x->job, sheaf_job_state_name(x->st.state));
        return SHEAF_ERR_INVALID;
    }
    x->was_done = x->st.state == SHEAF_JOB_DONE;
    if ((err = sheaf_state_pipeline_exists(x->r, x->st.pv, &have, errstr, errlen)) != SHEAF_OK)
        return err;
    if (!have) {
        snprintf(errstr, errlen, "job %s: its pipeline snapshot (version %s) is gone; workers "
                 "and reducers could not redo anything", x->job, x->st.pv);
        return SHEAF_ERR_NOT_FOUND;
    }
    return SHEAF_OK;
}

/* ---- steps 2 and 4: the scripts ---- */

/* Runs the document script; d->s is (re)filled. */
static sheaf_err run_doc(repair *x, const char *doc, int apply, rdoc *d, char *errstr,
                         size_t errlen)
{
    free(d->fate);
    d->fate = NULL;
    sheaf_err err = sheaf_state_repair_doc(x->r, x->job, doc, apply,
                                           sheaf_ready_scan_live(&x->scan.live_docs, doc),
                                           x->scan.since, &d->s, errstr, errlen);
    if (err == SHEAF_OK && d->s.n_missing && !(d->fate = calloc(d->s.n_missing, 1)))
        err = SHEAF_ERR_NOMEM;
    return err;
}

/* Step 2: every document, read-only; keeps those needing repair. */
static sheaf_err inspect_docs(repair *x, char *errstr, size_t errlen)
{
    sheaf_strlist ids;
    sheaf_err err = sheaf_state_doc_ids(x->r, x->job, &ids, errstr, errlen);
    if (err != SHEAF_OK) return err;
    x->rep->docs = ids.n;
    for (size_t i = 0; i < ids.n && err == SHEAF_OK; i++) {
        rdoc d;
        memset(&d, 0, sizeof(d));
        if (sheaf_stop) {
            err = SHEAF_ERR_STOPPED;
            break;
        }
        err = run_doc(x, ids.v[i], 0, &d, errstr, errlen);
        if (err == SHEAF_OK && !d.s.registered) {
            x->rep->docs_unregistered++;
            sheaf_warn("producer", "repair %s: document %s is listed but its registration is "
                       "gone; it cannot be repaired", x->job, ids.v[i]);
        }
        if (err != SHEAF_OK || !d.s.registered || (!d.s.n_missing && !d.s.fix && !d.s.entry)) {
            rdoc_clear(&d);
            continue;
        }
        if (x->n_docs == x->cap_docs) {
            size_t cap = x->cap_docs ? 2 * x->cap_docs : 16;
            rdoc *v = realloc(x->docs, cap * sizeof(*v));
            if (!v) {
                rdoc_clear(&d);
                err = SHEAF_ERR_NOMEM;
                break;
            }
            x->docs = v;
            x->cap_docs = cap;
        }
        if (!(d.id = strdup(ids.v[i]))) err = SHEAF_ERR_NOMEM;
        x->docs[x->n_docs++] = d;
    }
    sheaf_strlist_free(&ids);
    return err;
}

/* The job script; fills the report's job-level fields and x->jobinfo. */
static sheaf_err run_job_script(repair *x, int apply, char *errstr, size_t errlen)
{
    sheaf_err err = sheaf_state_repair_job(x->r, x->job, apply, x->scan.since,
                                           x->scan.live_overview, &x->jobinfo, errstr, errlen);
    if (err != SHEAF_OK) return err;
    x->rep->docs_done_fixed = x->jobinfo.docs_done_fixed;
    x->rep->overview_missing = x->jobinfo.overview_missing;
    x->rep->reopened = x->jobinfo.reopened;
    x->rep->groups_counted = x->jobinfo.groups_counted;
    return SHEAF_OK;
}

/* ---- step 3: Kafka ---- */

/* The workers' committed offsets (-1 where unknown). */
static void read_committed(repair *x)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    for (int p = 0; p < MAXP; p++) x->committed[p] = -1;
    rd_kafka_t *c = sheaf_kafka_consumer_new(x->cfg, "sheaf-repair", x->cfg->worker_group, NULL,
                                             NULL, errstr, sizeof(errstr));
    if (!c) {
        sheaf_warn("producer", "repair %s: cannot read the workers' committed offsets (%s); "
                   "every missing chunk counts as lost", x->job, errstr);
        return;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(x->rg.n);
    for (int p = 0; p < x->rg.n; p++)
        if (x->rg.first[p] >= 0) rd_kafka_topic_partition_list_add(l, x->st.topic, p);
    /* Only reads the group's offsets: this consumer never joins it. */
    rd_kafka_resp_err_t e = rd_kafka_committed(c, l, SHEAF_RANGES_WM_TIMEOUT_MS);
    if (e)
        sheaf_warn("producer", "repair %s: cannot read the workers' committed offsets (%s); "
                   "every missing chunk counts as lost", x->job, rd_kafka_err2str(e));
    for (int i = 0; !e && i < l->cnt; i++)
        if (!l->elems[i].err && l->elems[i].offset >= 0 && l->elems[i].partition < MAXP)
            x->committed[l->elems[i].partition] = l->elems[i].offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
}

static int cmp_rdoc_id(const void *key, const void *elem)
{
    return strcmp((const char *)key, (*(rdoc *const *)elem)->id);
}

static int cmp_rdoc_ptr(const void *a, const void *b)
{
    return strcmp((*(rdoc *const *)a)->id, (*(rdoc *const *)b)->id);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static sheaf_err index_missing(repair *x)
{
    free(x->by_id);
    x->n_by_id = 0;
    x->by_id = calloc(x->n_docs ? x->n_docs : 1, sizeof(*x->by_id));
    if (!x->by_id) return SHEAF_ERR_NOMEM;
    for (size_t i = 0; i < x->n_docs; i++)
        if (x->docs[i].s.n_missing) x->by_id[x->n_by_id++] = &x->docs[i];
    qsort(x->by_id, x->n_by_id, sizeof(*x->by_id), cmp_rdoc_ptr);
    return SHEAF_OK;
}

/* A message of the job: is its chunk missing, and lost or still queued? */
static sheaf_err on_message(void *opaque, const sheaf_chunk_msg *m, int32_t partition,
                            int64_t offset, char *errstr, size_t errlen)
{
    repair *x = opaque;
    rdoc **dp = bsearch(m->doc, x->by_id, x->n_by_id, sizeof(*x->by_id), cmp_rdoc_id);
    if (!dp) return SHEAF_OK;
    rdoc *d = *dp;
    uint32_t *ip = bsearch(&m->idx, d->s.missing, d->s.n_missing, sizeof(uint32_t), cmp_u32);
    if (!ip) return SHEAF_OK;
    uint8_t *fate = &d->fate[ip - d->s.missing];
    if (*fate != CH_NOT_FOUND) return SHEAF_OK; /* seen already */
    int64_t c = partition >= 0 && partition < MAXP ? x->committed[partition] : -1;
    if (!x->was_done && c >= 0 && offset >= c) {
        *fate = CH_QUEUED;
        return SHEAF_OK;
    }
    *fate = CH_LOST;
    return x->cp ? sheaf_chunk_resend(x->cp, m, errstr, errlen) : SHEAF_OK;
}

/* Reads the ranges; with x->cp set, produces the lost chunks again. */
static sheaf_err scan_kafka(repair *x, rd_kafka_t *consumer, char *errstr, size_t errlen)
{
    sheaf_err err = index_missing(x);
    for (size_t i = 0; i < x->n_docs; i++)
        if (x->docs[i].fate) memset(x->docs[i].fate, CH_NOT_FOUND, x->docs[i].s.n_missing);
    if (err == SHEAF_OK && x->n_by_id)
        err = sheaf_job_ranges_scan(consumer, x->st.topic, x->job, &x->rg, on_message, x, errstr,
                                    errlen);
    return err;
}

/* ---- the report ---- */

static void tally(repair *x)
{
    sheaf_repair_report *rp = x->rep;
    rp->chunks_missing = rp->chunks_enqueued = rp->chunks_queued = rp->chunks_not_found = 0;
    rp->docs_lost_chunks = rp->results_missing = rp->docs_requeued = rp->docs_counted = 0;
    for (size_t i = 0; i < x->n_docs; i++) {
        rdoc *d = &x->docs[i];
        uint32_t lost = 0, queued = 0;
        for (uint32_t k = 0; k < d->s.n_missing; k++) {
            if (d->fate[k] == CH_LOST) lost++;
            else if (d->fate[k] == CH_QUEUED) queued++;
        }
        rp->chunks_missing += d->s.n_missing;
        rp->chunks_enqueued += lost;
        rp->chunks_queued += queued;
        rp->chunks_not_found += d->s.n_missing - lost - queued;
        rp->docs_lost_chunks += lost > 0;
        rp->docs_requeued += d->s.entry != 0;
        rp->docs_counted += d->s.fix != 0;
        if (!d->s.has_result && (lost || d->s.entry || d->s.fix)) rp->results_missing++;
    }
}

/* One JSON line per document repaired (or, dry run, to repair). */
static void print_details(repair *x, FILE *out)
{
    for (size_t i = 0; out && i < x->n_docs; i++) {
        rdoc *d = &x->docs[i];
        json_t *lost = json_array();
        json_int_t queued = 0, not_found = 0;
        for (uint32_t k = 0; k < d->s.n_missing; k++) {
            if (d->fate[k] == CH_LOST) json_array_append_new(lost, json_integer(d->s.missing[k]));
            else if (d->fate[k] == CH_QUEUED) queued++;
            else not_found++;
        }
        if (!json_array_size(lost) && !not_found && !d->s.entry && !d->s.fix) {
            json_decref(lost); /* only chunks still queued: nothing to repair */
            continue;
        }
        json_t *o = json_pack("{s:s,s:i,s:o,s:s,s:b,s:b}", "doc", d->id, "chunks", (int)d->s.n,
                              "lost_chunks", lost, "result",
                              d->s.has_result ? "present" : "missing", "requeued", d->s.entry,
                              "counters_fixed", d->s.fix);
        if (queued) json_object_set_new(o, "queued_chunks", json_integer(queued));
        if (not_found) json_object_set_new(o, "chunks_not_found", json_integer(not_found));
        char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s) fprintf(out, "%s\n", s);
        free(s);
        json_decref(o);
    }
}

int sheaf_repair_nothing(const sheaf_repair_report *rp)
{
    return !rp->chunks_enqueued && !rp->chunks_not_found && !rp->docs_requeued &&
           !rp->docs_counted && !rp->docs_done_fixed && !rp->groups_counted &&
           !rp->groups_requeued && !rp->overview_requeued && !rp->reopened && !rp->activated;
}

/* ---- step 4 ---- */

static sheaf_err apply_redis(repair *x, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    sheaf_job_status now;

    x->rep->groups_requeued = 0;
    /* At the scanned end: entries appended since are delivered. */
    if (!x->scan.group_exists &&
        (err = sheaf_state_ready_group(x->r, x->job, x->cfg->reducer_group, x->scan.since,
                                       errstr, errlen)) != SHEAF_OK)
        return err;
    /* A done job reopened keeps its keys (it retires again when it ends),
     * and is watched by the reducers before anything is enqueued; taken out
     * again below when the job turns out to be done after all. */
    if (x->rep->reopened && (err = sheaf_state_job_keep(x->r, x->job, errstr, errlen)) != SHEAF_OK)
        return err;
    if ((x->rep->activated || x->rep->reopened) &&
        (err = sheaf_state_job_set_active(x->r, x->job, 1, errstr, errlen)) != SHEAF_OK)
        return err;
    for (size_t i = 0; i < x->n_docs && err == SHEAF_OK; i++)
        err = run_doc(x, x->docs[i].id, 1, &x->docs[i], errstr, errlen);
    if (err == SHEAF_OK) err = run_job_script(x, 1, errstr, errlen);
    if (err != SHEAF_OK) return err;
    x->rep->overview_requeued = x->jobinfo.need_overview;
    for (size_t i = 0; i < x->jobinfo.groups.n; i++) {
        const char *path = x->jobinfo.groups.v[i];
        int enqueued = 0;
        if (sheaf_ready_scan_live(&x->scan.live_groups, path)) continue;
        if ((err = sheaf_state_repair_group(x->r, x->job, path, x->scan.since, &enqueued, errstr,
                                            errlen)) != SHEAF_OK)
            return err;
        x->rep->groups_requeued += enqueued;
    }
    /* Done meanwhile (or all along): not active. */
    if ((err = sheaf_state_job_status(x->r, x->job, &now, errstr, errlen)) != SHEAF_OK) return err;
    if (now.state == SHEAF_JOB_DONE)
        return sheaf_state_job_set_active(x->r, x->job, 0, errstr, errlen);
    return SHEAF_OK;
}

/* ---- the whole ---- */

static sheaf_err repair_job(repair *x, char *errstr, size_t errlen)
{
    rd_kafka_t *consumer = NULL, *producer = NULL;
    sheaf_chunk_producer cp;
    char group[320];
    int cp_ready = 0, missing = 0;
    sheaf_err err;

    memset(&cp, 0, sizeof(cp));
    if ((err = load_job(x, errstr, errlen)) != SHEAF_OK ||
        (err = sheaf_state_ready_scan(x->r, x->job, x->cfg->reducer_group, &x->scan, errstr,
                                      errlen)) != SHEAF_OK ||
        (err = inspect_docs(x, errstr, errlen)) != SHEAF_OK ||
        (err = run_job_script(x, 0, errstr, errlen)) != SHEAF_OK)
        goto done;
    if (!x->was_done) {
        int active = 0;
        if ((err = sheaf_state_job_active(x->r, x->job, &active, errstr, errlen)) != SHEAF_OK)
            goto done;
        x->rep->activated = !active;
    }
    x->rep->overview_requeued = x->jobinfo.need_overview;
    for (size_t i = 0; i < x->jobinfo.groups.n; i++)
        x->rep->groups_requeued += !sheaf_ready_scan_live(&x->scan.live_groups,
                                                          x->jobinfo.groups.v[i]);
    for (size_t i = 0; i < x->n_docs; i++) missing |= x->docs[i].s.n_missing > 0;

    if (missing) {
        /* Nothing is written before the ranges are known to be there. */
        snprintf(group, sizeof(group), "sheaf-repair-%s-%lld", x->job, (long long)sheaf_wall_ms());
        if ((err = sheaf_job_ranges_read(x->r, x->job,
                                          "its lost chunks cannot be produced again; "
                                          "nothing was changed",
                                          &x->rg, errstr, errlen)) ||
            !(consumer = sheaf_kafka_consumer_new(x->cfg, "sheaf-repair", group, NULL, NULL,
                                                  errstr, errlen))) {
            if (!err) err = SHEAF_ERR_KAFKA;
            goto done;
        }
        if ((err = sheaf_job_ranges_check(consumer, x->st.topic, x->job, &x->rg,
                                          x->o->dry_run ? "nothing can be repaired"
                                                        : "nothing was changed",
                                          errstr, errlen)) != SHEAF_OK)
            goto done;
        read_committed(x);
    }
    if (x->o->dry_run) {
        if (missing) err = scan_kafka(x, consumer, errstr, errlen);
        goto done;
    }
    if (missing) {
        if (!(producer = sheaf_kafka_producer_new(x->cfg, "sheaf-repair", errstr, errlen))) {
            err = SHEAF_ERR_KAFKA;
            goto done;
        }
        if ((err = sheaf_chunk_producer_init(&cp, producer, x->st.topic, x->job, x->st.pv, errstr,
                                             errlen)) != SHEAF_OK)
            goto done;
        cp_ready = 1;
    }
    if ((err = apply_redis(x, errstr, errlen)) != SHEAF_OK) goto done;
    missing = 0;
    for (size_t i = 0; i < x->n_docs; i++) missing |= x->docs[i].s.n_missing > 0;
    if (missing) {
        x->cp = &cp;
        if ((err = scan_kafka(x, consumer, errstr, errlen)) != SHEAF_OK ||
            (err = sheaf_kafka_flush(producer, 60000, errstr, errlen)) != SHEAF_OK)
            goto done;
    }
    tally(x);
    if (!sheaf_repair_nothing(x->rep)) {
        if ((err = sheaf_state_job_count_repair(x->r, x->job, errstr, errlen)) != SHEAF_OK)
            goto done;
        sheaf_info("producer", "repair %s: %llu chunk(s) produced again, %llu document(s), "
                   "%llu group(s)%s re-queued", x->job,
                   (unsigned long long)x->rep->chunks_enqueued,
                   (unsigned long long)x->rep->docs_requeued,
                   (unsigned long long)x->rep->groups_requeued,
                   x->rep->overview_requeued ? " and the overview" : "");
    }
done:
    if (err == SHEAF_OK) {
        tally(x);
        print_details(x, x->o->details);
    }
    if (cp_ready) sheaf_chunk_producer_clear(&cp);
    if (consumer) {
        rd_kafka_consumer_close(consumer);
        rd_kafka_destroy(consumer);
    }
    sheaf_kafka_producer_destroy(producer);
    return err;
}

sheaf_err sheaf_repair(const sheaf_config *cfg, const sheaf_repair_opts *o,
                       sheaf_repair_report *rep, char *errstr, size_t errlen)
{
    repair x;
    sheaf_err err;

    memset(rep, 0, sizeof(*rep));
    memset(&x, 0, sizeof(x));
    if (!o->job || !sheaf_job_id_valid(o->job)) {
        snprintf(errstr, errlen, "\"%s\" is not a valid job id", o->job ? o->job : "");
        return SHEAF_ERR_INVALID;
    }
    x.cfg = cfg;
    x.o = o;
    x.rep = rep;
    x.job = o->job;
    if (!(x.r = sheaf_redis_connect(cfg, errstr, errlen))) return SHEAF_ERR_REDIS;
    err = repair_job(&x, errstr, errlen);
    for (size_t i = 0; i < x.n_docs; i++) rdoc_clear(&x.docs[i]);
    free(x.docs);
    free(x.by_id);
    sheaf_ready_scan_free(&x.scan);
    sheaf_strlist_free(&x.jobinfo.groups);
    sheaf_redis_destroy(x.r);
    return err;
}
