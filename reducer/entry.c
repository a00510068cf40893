/* entry.c - one ready entry, from taken to acknowledged, as an explicit
 * state machine on the runtime's loop.
 *
 *   LEASE -> VERSION -> PIPELINE -> the kind's start (doc.c, group.c)
 *     |        `-- no job / bad pipeline: the job ends failed, entry DONE
 *     `-- held by another reducer: left to it (STOPPED)
 *   the kind: PRIOR? (stored already: OUTPUT only) -> its reductions
 *             (reduce.c) -> STORE -> OUTPUT (claim, write, done) -> ...
 *   ended: DONE (XACK) | RETRY | STOPPED (left pending, claimed later)
 *   a Redis step that fails: HELD (timer) -> that step again
 *
 * Every arrow is a callback that returns at once.  The entry holds a lease
 * on its stream entry (sheaf/state.h): a timer renews it every
 * reducer.claim_idle_ms / 3 while the entry lives, so no other reducer
 * claims work in progress however long its calls take; a renewal that
 * finds the entry gone to another reducer stops the work at its next step
 * (the entry is the other's now).
 *
 * Writing out exactly once (sheaf/state.h, "exactly-once outputs"): a
 * result is stored first-write-wins, then written by whoever is granted
 * the item's emission right; a crash between the write and emit_done is
 * the only repeat, covered by the results topic's key (job, version, item).
 * A step that fails on Redis is tried again, that step only: a result
 * computed is never computed (paid for) again because Redis was away or
 * full, and a result written is not written again because emit_done
 * failed once.
 *
 * Redis trouble is counted for the process: one log line when it starts,
 * one per interval while it lasts, one when it ends; /health's redis
 * check stays down while any step waits (the runtime's redis_held). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"

#define REDIS_LOG_EVERY_MS 10000
#define HOLD_FIRST_MS 200
#define HOLD_MAX_MS 5000

static const char *const item_kinds[] = {"doc", "group", "overview"};

/* ---- life and death ---- */

static void hold_end(rentry *e, int back);

void entry_sent(rentry *e)
{
    e->ops++;
}

static void entry_release(rentry *e)
{
    reducer *r = e->r;
    if (!e->finished || e->ops > 0) return;
    if (e->kind && e->kind->clear) e->kind->clear(e);
    if (e->lease_ev) event_free(e->lease_ev);
    if (e->hold_ev) event_free(e->hold_ev);
    if (e->prev) e->prev->next = e->next;
    else r->entries = e->next;
    if (e->next) e->next->prev = e->prev;
    sheaf_pipeline_destroy(e->p);
    free(e->item);
    free(e->rec.id);
    free(e->rec.json);
    free(e->rec.stored);
    free(e);
}

int entry_back(rentry *e)
{
    e->ops--;
    if (!e->finished) return 1;
    entry_release(e);
    return 0;
}

static void on_acked(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (rep->err != SHEAF_OK)
        sheaf_warn("reducer", "job %s: acknowledging %s: %s (the entry will be redone)", e->job,
                   e->id, rep->errstr);
    entry_back(e);
}

void entry_finish(rentry *e, entry_outcome out)
{
    reducer *r = e->r;
    if (e->finished) return;
    e->finished = 1;
    e->outcome = out;
    if (e->lease_ev) event_del(e->lease_ev);
    if (e->hold_ev) event_del(e->hold_ev);
    hold_end(e, 0);
    r->n_entries--;
    sheaf_metric_set(r->entries_now, (int64_t)r->n_entries);
    if (out == ENTRY_DONE) {
        entry_sent(e);
        sheaf_state_ready_ack_async(r->rt->redis, e->job, r->cfg.reducer_group, e->id, on_acked,
                                    e);
    }
    /* A place in the window is free: the read loop may take another. */
    if (!r->stopping && r->read_ev) event_active(r->read_ev, EV_TIMEOUT, 0);
    entry_release(e);
}

void entry_abort_all(reducer *r)
{
    for (rentry *e = r->entries, *next; e; e = next) {
        next = e->next;
        /* Waiting for Redis or its lease: nothing under way to stop. */
        if (!e->finished && e->ops == 0) entry_finish(e, ENTRY_STOPPED);
    }
    /* The rest end as their calls come back aborted. */
    sheaf_llm_async_abort_all(r->rt->llm);
}

/* ---- Redis trouble ---- */

static void on_hold(evutil_socket_t fd, short what, void *arg)
{
    rentry *e = arg;
    (void)fd;
    (void)what;
    if (entry_stopped(e)) {
        entry_finish(e, ENTRY_STOPPED);
        return;
    }
    e->held_step(e);
}

void reducer_redis_trouble(reducer *r, const char *what, const char *errstr)
{
    int64_t now = sheaf_mono_ms();
    const char *trouble = sheaf_redis_trouble(errstr);
    sheaf_runtime_redis_failed(r->rt, errstr);
    if (!r->redis_down_ms) {
        r->redis_down_ms = r->redis_logged_ms = now;
        sheaf_error("reducer", "%s (%s): %s; waiting for it", trouble, what, errstr);
    } else if (now - r->redis_logged_ms >= REDIS_LOG_EVERY_MS) {
        r->redis_logged_ms = now;
        sheaf_error("reducer", "%s for %lld s (%s): %s", trouble,
                    (long long)(now - r->redis_down_ms) / 1000, what, errstr);
    }
}

void reducer_redis_fine(reducer *r)
{
    /* Back for the process only when nothing waits any more: a full Redis
     * answers reads while it refuses writes. */
    if (r->rt->redis_held > 0 || !r->redis_down_ms) return;
    sheaf_info("reducer", "Redis answers again after %lld s",
               (long long)(sheaf_mono_ms() - r->redis_down_ms) / 1000);
    r->redis_down_ms = 0;
}

void entry_redis_failed(rentry *e, const char *what, const char *errstr,
                        void (*step)(rentry *e))
{
    reducer *r = e->r;
    struct timeval tv;

    reducer_redis_trouble(r, what, errstr);
    if (!e->hold_ms) {
        r->rt->redis_held++;
    }
    e->hold_ms = e->hold_ms ? e->hold_ms * 2 : HOLD_FIRST_MS;
    if (e->hold_ms > HOLD_MAX_MS) e->hold_ms = HOLD_MAX_MS;
    e->held_step = step;
    if (!e->hold_ev && !(e->hold_ev = evtimer_new(r->rt->base, on_hold, e))) {
        sheaf_error("reducer", "job %s: out of memory", e->job);
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    tv.tv_sec = e->hold_ms / 1000;
    tv.tv_usec = (e->hold_ms % 1000) * 1000;
    evtimer_add(e->hold_ev, &tv);
}

/* e waits no more: back says whether because Redis answered. */
static void hold_end(rentry *e, int back)
{
    reducer *r = e->r;
    if (!e->hold_ms) return;
    e->hold_ms = 0;
    r->rt->redis_held--;
    if (back) reducer_redis_fine(r);
}

void entry_redis_ok(rentry *e)
{
    hold_end(e, 1);
}

/* ---- writing out ---- */

/* One result line to reducer.output and <prefix>.results:
 * {"job":J,"kind":kind,"result":json}, keyed on the topic by job, pipeline
 * version and item (["J","pv","doc","<id>"]) so a compacted topic keeps
 * one message per item even if a crash made it written twice. */
static void emit(rentry *e, const char *json)
{
    reducer *r = e->r;
    const char *kind = item_kinds[e->rec.kind];
    json_t *k = json_pack("[s,s,s,s]", e->job, e->pv, kind, e->rec.id ? e->rec.id : "");
    char *key = k ? json_dumps(k, JSON_COMPACT) : NULL, *line = NULL;
    size_t len = strlen(e->job) + strlen(kind) + strlen(json) + 40;
    json_decref(k);
    if (!key || !(line = malloc(len))) goto out;
    snprintf(line, len, "{\"job\":\"%s\",\"kind\":\"%s\",\"result\":%s}", e->job, kind, json);
    if (r->out) {
        fprintf(r->out, "%s\n", line);
        fflush(r->out);
    }
    if (r->results) {
        /* RD_KAFKA_MSG_F_COPY: librdkafka copies line; a full queue or a
         * dead cluster must not stop the reduce (Redis holds every result). */
        rd_kafka_resp_err_t err = rd_kafka_producev(
            r->results, RD_KAFKA_V_TOPIC(r->results_topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE(line, strlen(line)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (err)
            sheaf_warn("reducer", "job %s: result not sent to %s: %s", e->job, r->results_topic,
                       rd_kafka_err2str(err));
    }
out:
    free(key);
    free(line);
}

static void rec_output(rentry *e);
static void rec_emit_done(rentry *e);

static void on_emit_done(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        /* Written already: only the record of it is tried again. */
        entry_redis_failed(e, "recording a result as written", rep->errstr, rec_emit_done);
        return;
    }
    entry_redis_ok(e);
    e->rec.then(e, e->rec.stored_as);
}

static void rec_emit_done(rentry *e)
{
    entry_sent(e);
    sheaf_state_emit_done_async(e->r->rt->redis, e->job, e->rec.name, on_emit_done, e);
}

/* Writes text out, then records it written.  A crash in between makes the
 * next owner of the entry write it again: the at-least-once window,
 * covered by the topic's key. */
static void rec_write(rentry *e, const char *text)
{
    emit(e, text);
    rec_emit_done(e);
}

static void on_fetched(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "reading a stored result", rep->errstr, rec_output);
        return;
    }
    entry_redis_ok(e);
    if (!rep->str) {
        sheaf_error("reducer", "job %s %s: no stored result to write", e->job, e->rec.name);
        e->rec.then(e, e->rec.stored_as);
        return;
    }
    free(e->rec.stored);
    if (!(e->rec.stored = sheaf_strndup(rep->str, rep->len))) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    rec_write(e, e->rec.stored);
}

static void on_claimed(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "claiming the right to write a result", rep->errstr, rec_output);
        return;
    }
    entry_redis_ok(e);
    switch ((sheaf_emit_right)rep->n) {
    case SHEAF_EMIT_LOST:
        sheaf_warn("reducer", "job %s %s: the entry was taken over by another reducer; its "
                   "result is theirs to write", e->job, e->rec.name);
        entry_finish(e, ENTRY_STOPPED);
        return;
    case SHEAF_EMIT_YES:
        break;
    default: /* written before, held through another entry, or the job is gone */
        e->rec.then(e, e->rec.stored_as);
        return;
    }
    if (e->rec.json && e->rec.stored_as >= SHEAF_STORE_NEW) {
        rec_write(e, e->rec.json); /* this entry's own result, just stored */
        return;
    }
    entry_sent(e);
    sheaf_state_result_get_async(e->r->rt->redis, e->job, e->rec.kind, e->rec.id, on_fetched, e);
}

/* Asks for the item's emission right (sheaf/state.h). */
static void rec_output(rentry *e)
{
    reducer *r = e->r;
    /* A result computed is still stored and written after the drain's
     * deadline (Redis answers at once); only a lost lease stops it. */
    if (e->lease_lost) {
        entry_finish(e, ENTRY_STOPPED);
        return;
    }
    sheaf_entry_ref ref = {e->job, r->cfg.reducer_group, r->consumer, e->id};
    entry_sent(e);
    sheaf_state_emit_claim_async(r->rt->redis, e->job, &ref, e->rec.name, on_claimed, e);
}

/* Sets the item being recorded: kind, id, its name in the emit hash. */
static int rec_set(rentry *e, sheaf_item_kind kind, const char *id, const char *json)
{
    free(e->rec.id);
    free(e->rec.json);
    free(e->rec.stored);
    memset(&e->rec, 0, sizeof(e->rec));
    e->rec.kind = kind;
    if (kind == SHEAF_ITEM_OVERVIEW) snprintf(e->rec.name, sizeof(e->rec.name), "overview");
    else snprintf(e->rec.name, sizeof(e->rec.name), "%s:%s", item_kinds[kind], id);
    if ((id && !(e->rec.id = strdup(id))) || (json && !(e->rec.json = strdup(json)))) {
        sheaf_error("reducer", "job %s: out of memory", e->job);
        entry_finish(e, ENTRY_RETRY);
        return -1;
    }
    return 0;
}

/* ---- prior results ---- */

static void prior_look(rentry *e);

static void on_prior(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "looking for a stored result", rep->errstr, prior_look);
        return;
    }
    entry_redis_ok(e);
    if (!rep->str) {
        e->rec.absent(e);
        return;
    }
    /* Stored already (the entry is redone after a crash, or came twice):
     * no call, only the outputs if nobody wrote them yet. */
    e->rec.stored_as = SHEAF_STORE_KEPT;
    rec_output(e);
}

static void prior_look(rentry *e)
{
    entry_sent(e);
    sheaf_state_result_get_async(e->r->rt->redis, e->job, e->rec.kind, e->rec.id, on_prior, e);
}

void entry_prior(rentry *e, sheaf_item_kind kind, const char *id, void (*absent)(rentry *e),
                 void (*written)(rentry *e, sheaf_store_outcome stored))
{
    if (rec_set(e, kind, id, NULL) != 0) return;
    e->rec.absent = absent;
    e->rec.then = written;
    prior_look(e);
}

/* ---- storing ---- */

static void rec_store(rentry *e);

static void on_stored(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        /* Redis down or full: the result stays here and is stored again;
         * a redo of the entry would pay for its calls again. */
        entry_redis_failed(e, "storing a result", rep->errstr, rec_store);
        return;
    }
    entry_redis_ok(e);
    e->rec.stored_as = (sheaf_store_outcome)rep->n;
    if (e->rec.stored_as == SHEAF_STORE_NO_JOB) {
        sheaf_info("reducer", "job %s %s: the job is gone (cancelled or deleted)", e->job,
                   e->rec.name);
        entry_finish(e, ENTRY_DONE);
        return;
    }
    /* Only a result this entry stored is its to write as its own; the
     * outputs take whichever was stored first. */
    rec_output(e);
}

static void rec_store(rentry *e)
{
    sheaf_aredis *ar = e->r->rt->redis;
    uint64_t pt = e->rec.usage.prompt_tokens, ct = e->rec.usage.completion_tokens;
    if (e->lease_lost) {
        entry_finish(e, ENTRY_STOPPED);
        return;
    }
    entry_sent(e);
    if (e->rec.kind == SHEAF_ITEM_DOC)
        sheaf_state_doc_result_store_async(ar, e->job, e->rec.id, e->rec.json, pt, ct, on_stored,
                                           e);
    else if (e->rec.kind == SHEAF_ITEM_GROUP)
        sheaf_state_group_result_store_async(ar, e->job, e->rec.id, e->rec.counted, e->rec.json,
                                             pt, ct, on_stored, e);
    else
        sheaf_state_overview_store_async(ar, e->job, e->rec.json, pt, ct, on_stored, e);
}

void entry_record(rentry *e, sheaf_item_kind kind, const char *id, const char *json,
                  const sheaf_llm_usage *usage, int counted,
                  void (*then)(rentry *e, sheaf_store_outcome stored))
{
    if (rec_set(e, kind, id, json) != 0) return;
    e->rec.usage = *usage;
    e->rec.counted = counted;
    e->rec.then = then;
    rec_store(e);
}

/* ---- taken: lease, version, pipeline ---- */

static void on_job_failed(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    entry_finish(e, rep->err == SHEAF_OK || rep->err == SHEAF_ERR_NOT_FOUND ? ENTRY_DONE
                                                                           : ENTRY_RETRY);
}

/* Nothing of the job can be reduced: it ends failed with the reason
 * instead of staying "running" for ever (a job that is gone has nothing
 * to end). */
static void job_unusable(rentry *e, const char *errstr)
{
    char reason[SHEAF_ERRSTR_SIZE + 64];
    snprintf(reason, sizeof(reason), "the reducer cannot load the job's pipeline: %s", errstr);
    sheaf_error("reducer", "job %s: %s", e->job, reason);
    entry_sent(e);
    sheaf_state_job_end_async(e->r->rt->redis, &e->r->cfg, e->job, SHEAF_JOB_FAILED, reason,
                              on_job_failed, e);
}

static void load_version(rentry *e);

static void on_pipeline(void *ud, const sheaf_pipeline *p, sheaf_err err, const char *errstr)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (err == SHEAF_ERR_REDIS) {
        entry_redis_failed(e, "loading a pipeline", errstr, load_version);
        return;
    }
    if (err != SHEAF_OK) {
        if (err == SHEAF_ERR_STOPPED) entry_finish(e, ENTRY_STOPPED);
        else job_unusable(e, errstr);
        return;
    }
    entry_redis_ok(e);
    e->p = sheaf_pipeline_hold(p);
    e->kind->start(e);
}

static void load_pipeline(rentry *e)
{
    const sheaf_pipeline *p = sheaf_runtime_pipeline(e->r->rt, e->pv, on_pipeline, e);
    if (p) {
        e->p = sheaf_pipeline_hold(p);
        e->kind->start(e);
        return;
    }
    entry_sent(e); /* on_pipeline comes */
}

static void on_version(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    if (rep->err == SHEAF_ERR_NOT_FOUND) {
        job_unusable(e, rep->errstr);
        return;
    }
    if (rep->err != SHEAF_OK || !rep->str) {
        entry_redis_failed(e, "reading a job's pipeline version", rep->errstr, load_version);
        return;
    }
    entry_redis_ok(e);
    snprintf(e->pv, sizeof(e->pv), "%.*s", (int)rep->len, rep->str);
    load_pipeline(e);
}

static void load_version(rentry *e)
{
    entry_sent(e);
    sheaf_state_job_pv_async(e->r->rt->redis, e->job, on_version, e);
}

static void lease_renew(rentry *e, sheaf_state_fn fn);

static void on_renewed(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    if (!entry_back(e)) return;
    /* Redis trouble: tried again at the next tick (logged for the
     * process, not per entry); the lease may lapse meanwhile, which the
     * emission right covers. */
    if (rep->err != SHEAF_OK) {
        reducer_redis_trouble(e->r, "renewing a lease", rep->errstr);
        return;
    }
    if (rep->n == 1 || e->lease_lost) return;
    sheaf_warn("reducer", "lease on job %s entry %s lost: another reducer took it over", e->job,
               e->id);
    e->lease_lost = 1;
    /* Waiting for Redis: nothing under way, stop now; otherwise at the
     * next step. */
    if (e->hold_ev && evtimer_pending(e->hold_ev, NULL)) entry_finish(e, ENTRY_STOPPED);
}

static void on_lease_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lease_renew(arg, on_renewed);
}

static void take(rentry *e);

static void on_taken(void *ud, const sheaf_state_reply *rep)
{
    rentry *e = ud;
    int every = e->r->cfg.reducer_claim_idle_ms / 3;
    struct timeval tv = {every / 1000, (every % 1000) * 1000};
    if (!entry_back(e)) return;
    if (rep->err != SHEAF_OK) {
        entry_redis_failed(e, "taking a lease", rep->errstr, take);
        return;
    }
    if (rep->n != 1) {
        /* Waited in a batch past reducer.claim_idle_ms: another reducer's
         * by now, left to it. */
        entry_finish(e, ENTRY_STOPPED);
        return;
    }
    entry_redis_ok(e);
    if (!(e->lease_ev = event_new(e->r->rt->base, -1, EV_PERSIST, on_lease_tick, e)) ||
        event_add(e->lease_ev, &tv) != 0) {
        sheaf_error("reducer", "job %s: cannot arm a lease timer", e->job);
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    load_version(e);
}

static void lease_renew(rentry *e, sheaf_state_fn fn)
{
    reducer *r = e->r;
    sheaf_entry_ref ref = {e->job, r->cfg.reducer_group, r->consumer, e->id};
    entry_sent(e);
    sheaf_state_lease_renew_async(r->rt->redis, &ref, fn, e);
}

void entry_start(reducer *r, const sheaf_ready_entry *in, const rkind *kind)
{
    rentry *e;

    /* Already worked on here (claimed back after a lapse of its lease). */
    for (e = r->entries; e; e = e->next)
        if (!e->finished && strcmp(e->id, in->id) == 0 && strcmp(e->job, in->job) == 0) return;
    if (!(e = calloc(1, sizeof(*e)))) {
        sheaf_error("reducer", "job %s: out of memory", in->job);
        return;
    }
    e->r = r;
    e->kind = kind;
    snprintf(e->job, sizeof(e->job), "%s", in->job);
    snprintf(e->id, sizeof(e->id), "%s", in->id);
    if (in->item && !(e->item = strdup(in->item))) {
        free(e);
        return;
    }
    e->next = r->entries;
    if (r->entries) r->entries->prev = e;
    r->entries = e;
    r->n_entries++;
    sheaf_metric_set(r->entries_now, (int64_t)r->n_entries);
    if (!kind) {
        entry_finish(e, ENTRY_DONE);
        return;
    }
    take(e);
}

static void take(rentry *e)
{
    lease_renew(e, on_taken);
}
