/* entry.c - what the reduce stages share while they work on a ready entry:
 * the lease on it (renewed from the LLM wait loop), the job's pipeline,
 * writing a stored result out exactly once (reducer_output), waiting for
 * Redis without paying for a call twice, and the thread's LLM circuit state
 * for the health check.  The stages (doc.c, group.c) and the calls
 * (calls.c) use these; this file calls none of them, and reducer.c (the
 * threads and their loop) calls the stages: no two files call each other.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"

/* ---- results ---- */

/* Writes one result line to reducer.output and <prefix>.results:
 * {"job":J,"kind":kind,"result":json}, keyed on the topic by job, pipeline
 * version and item (["J","pv","doc","<id>"]) so a compacted topic keeps
 * one message per item even if a crash made it written twice. */
static void emit(reducer *r, const char *job, const char *kind, const char *id,
                 const char *json)
{
    reducer_shared *sh = r->sh;
    json_t *k = json_pack("[s,s,s,s]", job, r->pv, kind, id ? id : "");
    char *key = k ? json_dumps(k, JSON_COMPACT) : NULL;
    char *line = NULL;
    size_t len = strlen(job) + strlen(kind) + strlen(json) + 40;
    json_decref(k);
    if (!key || !(line = malloc(len))) goto out;
    snprintf(line, len, "{\"job\":\"%s\",\"kind\":\"%s\",\"result\":%s}", job, kind, json);
    pthread_mutex_lock(&sh->out_lock);
    if (sh->out) {
        fprintf(sh->out, "%s\n", line);
        fflush(sh->out);
    }
    if (sh->results) {
        /* RD_KAFKA_MSG_F_COPY: librdkafka copies line; a full queue or a
         * dead cluster must not stop the reduce (Redis holds every result). */
        rd_kafka_resp_err_t e = rd_kafka_producev(
            sh->results, RD_KAFKA_V_TOPIC(sh->results_topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE(line, strlen(line)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (e) sheaf_warn("reducer", "job %s: result not sent to %s: %s", job, sh->results_topic,
                          rd_kafka_err2str(e));
        rd_kafka_poll(sh->results, 0);
    }
    pthread_mutex_unlock(&sh->out_lock);
out:
    free(key);
    free(line);
}

entry_outcome reducer_output(reducer *r, const char *job, sheaf_item_kind kind, const char *id,
                             const char *mine)
{
    static const char *const kinds[] = {"doc", "group", "overview"};
    char errstr[SHEAF_ERRSTR_SIZE] = "", item[1200], *stored = NULL;
    sheaf_entry_ref e = {r->lease.job, r->cfg->reducer_group, r->consumer, r->lease.id};
    sheaf_emit_right right;
    entry_outcome out = ENTRY_RETRY;

    if (kind == SHEAF_ITEM_OVERVIEW) snprintf(item, sizeof(item), "overview");
    else snprintf(item, sizeof(item), "%s:%s", kinds[kind], id);
    if (!r->lease.active) {
        /* Not from a stream entry (cannot happen today): never emit twice. */
        sheaf_error("reducer", "job %s %s: result stored but not emitted (no entry)", job, item);
        return ENTRY_DONE;
    }
    if (sheaf_state_emit_claim(r->redis, job, &e, item, &right, errstr, sizeof(errstr)) != SHEAF_OK)
        goto done;
    if (right == SHEAF_EMIT_LOST) {
        sheaf_warn("reducer", "job %s %s: the entry was taken over by another reducer; its "
                   "result is theirs to write", job, item);
        out = ENTRY_STOPPED;
        goto done;
    }
    if (right != SHEAF_EMIT_YES) {
        out = ENTRY_DONE;
        goto done;
    }
    if (!mine) {
        if (sheaf_state_result_get(r->redis, job, kind, id, &stored, errstr, sizeof(errstr)) !=
            SHEAF_OK)
            goto done;
        if (!stored) {
            sheaf_error("reducer", "job %s %s: no stored result to write", job, item);
            out = ENTRY_DONE;
            goto done;
        }
    }
    emit(r, job, kinds[kind], kind == SHEAF_ITEM_OVERVIEW ? NULL : id, mine ? mine : stored);
    /* A crash before this line makes the next owner of the entry write the
     * result again: the at-least-once window, covered by the topic's key. */
    if (sheaf_state_emit_done(r->redis, job, item, errstr, sizeof(errstr)) != SHEAF_OK)
        goto done;
    out = ENTRY_DONE;
done:
    if (out == ENTRY_RETRY) sheaf_error("reducer", "job %s %s: %s (will retry)", job, item, errstr);
    free(stored);
    return out;
}

int reducer_lease_tick(reducer *r)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    int held = 1;
    int64_t now = sheaf_mono_ms();
    if (!r->lease.active || r->lease.lost) return r->lease.lost ? -1 : 0;
    if (now - r->lease.renewed_ms < r->cfg->reducer_claim_idle_ms / 3) return 0;
    sheaf_entry_ref e = {r->lease.job, r->cfg->reducer_group, r->consumer, r->lease.id};
    if (sheaf_state_lease_renew(r->redis, &e, &held, errstr, sizeof(errstr)) != SHEAF_OK) {
        /* Redis trouble: try again next tick; the lease may lapse meanwhile,
         * which the emission right covers. */
        sheaf_warn("reducer", "lease on job %s entry %s: %s", r->lease.job, r->lease.id, errstr);
        return 0;
    }
    r->lease.renewed_ms = now;
    if (!held) {
        sheaf_warn("reducer", "lease on job %s entry %s lost: another reducer took it over",
                   r->lease.job, r->lease.id);
        r->lease.lost = 1;
        return -1;
    }
    return 0;
}

sheaf_pipeline *reducer_job_pipeline(reducer *r, const char *job, char *errstr, size_t errlen,
                                     sheaf_err *err)
{
    char *json = NULL;
    sheaf_pipeline *p = NULL;
    *err = sheaf_state_job_pipeline(r->redis, job, r->pv, sizeof(r->pv), &json, errstr, errlen);
    if (*err != SHEAF_OK) goto fail;
    p = sheaf_pipeline_from_json(json, strlen(json), errstr, errlen);
    free(json);
    *err = p ? SHEAF_OK : SHEAF_ERR_INVALID;
fail:
    if (*err != SHEAF_OK && *err != SHEAF_ERR_REDIS) {
        /* Nothing of the job can be reduced: it ends failed with the reason
         * instead of staying "running" for ever (a job that is gone has
         * nothing to end). */
        char reason[SHEAF_ERRSTR_SIZE + 64], e2[SHEAF_ERRSTR_SIZE];
        int ended = 0;
        snprintf(reason, sizeof(reason), "the reducer cannot load the job's pipeline: %s", errstr);
        if (sheaf_state_job_end(r->redis, r->cfg, job, SHEAF_JOB_FAILED, reason, &ended, e2,
                                sizeof(e2)) == SHEAF_OK && ended)
            sheaf_error("reducer", "job %s failed: %s", job, reason);
    }
    return p;
}

/* ---- Redis outages ---- */

#define REDIS_LOG_EVERY_MS 10000

/* A Redis call of the thread's loop failed: logs one line per interval for
 * the whole process, and waits a little longer each time (200 ms doubling
 * to 5 s) so that an outage costs no CPU. */
void reducer_redis_down(reducer *r, const char *what, const char *errstr)
{
    reducer_shared *sh = r->sh;
    long long now = sheaf_mono_ms(), zero = 0, last = atomic_load(&sh->redis_logged_ms);
    const char *trouble = sheaf_redis_trouble(errstr);
    pthread_mutex_lock(&sh->health_lock);
    snprintf(sh->redis_why, sizeof(sh->redis_why), "%s: %s", trouble, errstr);
    pthread_mutex_unlock(&sh->health_lock);
    if (atomic_compare_exchange_strong(&sh->redis_down_ms, &zero, now)) {
        atomic_store(&sh->redis_logged_ms, now);
        sheaf_error("reducer", "%s (%s): %s; waiting for it", trouble, what, errstr);
    } else if (now - last >= REDIS_LOG_EVERY_MS &&
               atomic_compare_exchange_strong(&sh->redis_logged_ms, &last, now)) {
        sheaf_error("reducer", "%s for %lld s (%s): %s", trouble,
                    (now - atomic_load(&sh->redis_down_ms)) / 1000, what, errstr);
    }
    if (!r->redis_delay_ms) atomic_fetch_add(&sh->redis_waiting, 1);
    r->redis_delay_ms = r->redis_delay_ms ? r->redis_delay_ms * 2 : 200;
    if (r->redis_delay_ms > 5000) r->redis_delay_ms = 5000;
    sheaf_sleep_ms(r->redis_delay_ms);
}

/* This thread's Redis calls succeed again.  Redis is back for the process
 * only when no thread waits any more: a full Redis answers one thread's
 * reads while another's writes are refused. */
void reducer_redis_back(reducer *r)
{
    if (!r->redis_delay_ms) return;
    r->redis_delay_ms = 0;
    if (atomic_fetch_sub(&r->sh->redis_waiting, 1) != 1) return;
    long long since = atomic_exchange(&r->sh->redis_down_ms, 0);
    if (since) sheaf_info("reducer", "Redis answers again after %lld s", (sheaf_mono_ms() - since) / 1000);
}

int reducer_store_wait(reducer *r, sheaf_err err, const char *what, const char *errstr)
{
    if (err != SHEAF_ERR_REDIS || sheaf_stop) return 0;
    reducer_redis_down(r, what, errstr);
    return reducer_lease_tick(r) == 0 && !sheaf_stop;
}

/* ---- the LLM circuit, for the health check ---- */

void reducer_llm_state(reducer *r)
{
    int open = sheaf_llm_async_circuit_open(r->llm);
    if (open == atomic_load(&r->llm_open)) return;
    if (open) {
        sheaf_llm_stats st;
        sheaf_llm_async_stats(r->llm, &st);
        pthread_mutex_lock(&r->sh->health_lock);
        snprintf(r->llm_why, sizeof(r->llm_why), "%s", st.breaker_reason);
        pthread_mutex_unlock(&r->sh->health_lock);
    }
    atomic_store(&r->llm_open, open);
}
