/* worker.c - sheaf-worker: the map stage of every job.
 *
 * A stateless member of the Kafka consumer group worker.group on
 * <prefix>.map.  For each chunk message: decode it strictly, look up the
 * job's pipeline by the version the message carries, render the map
 * prompt, call the LLM (with retries), record the result in Redis with the
 * idempotent chunk-store script, and only then hand the offset to
 * rd_kafka_offsets_store() so the auto-committer may commit it.  A crash
 * at any point therefore leads to redelivery, never to loss, and a
 * redelivered chunk whose result is already recorded costs no LLM call.
 *
 * What cannot be processed is never dropped: an undecodable message, an
 * unknown job or pipeline, a prompt that cannot be rendered, or an LLM call
 * that still fails after llm.max_attempts goes to <prefix>.dlq with the
 * reason (flushed before the offset is stored); a chunk that fails for LLM
 * reasons is also recorded as failed so its document still completes.
 *
 * SIGTERM: the current call is finished or abandoned (not recorded: another
 * worker redoes it), stored offsets are committed by rd_kafka_consumer_close,
 * exit 0. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sheaf/codec.h"
#include "sheaf/kafka.h"
#include "sheaf/llm.h"
#include "sheaf/log.h"
#include "sheaf/pipeline.h"
#include "sheaf/program.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

#define PIPELINE_CACHE 16

typedef struct worker {
    sheaf_config cfg;
    rd_kafka_t *consumer;
    rd_kafka_t *producer;       /* dead letters */
    sheaf_redis *redis;
    sheaf_llm *llm;
    char map_topic[256];
    char dlq_topic[256];
    struct {
        char pv[17];
        sheaf_pipeline *p;
    } pipelines[PIPELINE_CACHE];
    unsigned long processed, duplicates, failed, dead_lettered;
} worker;

typedef enum { MSG_DONE, MSG_STOPPED } msg_outcome;

static const char usage_text[] =
            "usage: sheaf-worker [-c FILE] [-X key=value ...]\n"
            "  Consumes chunk messages from <topic.prefix>.map in consumer group\n"
            "  worker.group, runs the map stage, stores results in Redis.\n"
            "  -c, --config FILE   configuration file (default: $SHEAF_CONFIG)\n"
            "  -X key=value        set a configuration key (see --help-config)\n"
            "      --help-config   list every configuration key\n";

/* ---- pipelines, looked up by version and cached ---- */

static const sheaf_pipeline *pipeline_for(worker *w, const char *pv, sheaf_err *err,
                                          char *errstr, size_t errlen)
{
    int free_slot = -1;
    char *json = NULL;
    for (int i = 0; i < PIPELINE_CACHE; i++) {
        if (w->pipelines[i].p && strcmp(w->pipelines[i].pv, pv) == 0) return w->pipelines[i].p;
        if (!w->pipelines[i].p && free_slot < 0) free_slot = i;
    }
    *err = sheaf_state_pipeline_get(w->redis, pv, &json, errstr, errlen);
    if (*err != SHEAF_OK) return NULL;
    sheaf_pipeline *p = sheaf_pipeline_from_json(json, strlen(json), errstr, errlen);
    free(json);
    if (!p) {
        *err = SHEAF_ERR_INVALID;
        return NULL;
    }
    if (free_slot < 0) {
        /* Full: evict the oldest (slot 0) by shifting. */
        sheaf_pipeline_destroy(w->pipelines[0].p);
        memmove(&w->pipelines[0], &w->pipelines[1], sizeof(w->pipelines[0]) * (PIPELINE_CACHE - 1));
        free_slot = PIPELINE_CACHE - 1;
    }
    snprintf(w->pipelines[free_slot].pv, sizeof(w->pipelines[free_slot].pv), "%s", pv);
    w->pipelines[free_slot].p = p;
    *err = SHEAF_OK;
    return p;
}

/* ---- prompt variables of the map stage ---- */

typedef struct map_vars {
    const sheaf_chunk_msg *m;
    char chunk_index[16], chunk_count[16], pages[32];
} map_vars;

static const char *map_var(const char *name, size_t len, void *ud, size_t *out_len)
{
    map_vars *v = ud;
    const char *s = NULL;
#define IS(lit) (len == sizeof(lit) - 1 && memcmp(name, lit, len) == 0)
    if (IS("text")) {
        *out_len = v->m->text_len;
        return v->m->text;
    }
    if (IS("doc_id")) s = v->m->doc;
    else if (IS("job_id")) s = v->m->job;
    else if (IS("chunk_index")) s = v->chunk_index;
    else if (IS("chunk_count")) s = v->chunk_count;
    else if (IS("pages")) s = v->pages;
    else if (len > 5 && memcmp(name, "meta.", 5) == 0) {
        char key[256];
        if (len - 5 >= sizeof(key)) return NULL;
        memcpy(key, name + 5, len - 5);
        key[len - 5] = '\0';
        s = sheaf_chunk_meta_get(v->m, key);
        if (!s) s = ""; /* a missing metadata field renders empty */
    }
#undef IS
    if (s) *out_len = strlen(s);
    return s;
}

/* ---- dead letters ---- */

/* Sends msg to the DLQ and waits until it is durable there; only then may
 * the caller store the offset.  Retries until it works or shutdown. */
static msg_outcome dead_letter(worker *w, const rd_kafka_message_t *msg, const char *job,
                               const char *reason)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_warn("worker", "dead-lettering %s [%d] offset %lld%s%s: %s",
               rd_kafka_topic_name(msg->rkt), (int)msg->partition, (long long)msg->offset,
               job ? " job " : "", job ? job : "", reason);
    while (!sheaf_stop) {
        if (sheaf_kafka_dlq_send(w->producer, w->dlq_topic, msg, reason, job, errstr,
                                 sizeof(errstr)) == SHEAF_OK &&
            sheaf_kafka_flush(w->producer, 10000, errstr, sizeof(errstr)) == SHEAF_OK) {
            w->dead_lettered++;
            if (job && sheaf_state_job_dlq_incr(w->redis, job, errstr, sizeof(errstr)) != SHEAF_OK)
                sheaf_warn("worker", "job %s: could not count the dead letter: %s", job, errstr);
            return MSG_DONE;
        }
        sheaf_error("worker", "cannot dead-letter to %s (will retry): %s", w->dlq_topic, errstr);
        sheaf_sleep_ms(1000);
    }
    return MSG_STOPPED;
}

/* ---- one message ---- */

static char *result_record(const char *key, const char *value)
{
    json_t *o = json_object();
    json_object_set_new(o, key, json_string(value));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Records the chunk, retrying Redis failures until shutdown. */
static msg_outcome record(worker *w, const rd_kafka_message_t *msg, const sheaf_chunk_msg *m,
                          int ok, const char *json, const sheaf_llm_usage *usage)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    int64_t delay = 200;
    for (;;) {
        sheaf_chunk_outcome outcome = SHEAF_CHUNK_NEW;
        sheaf_err err = sheaf_state_chunk_store(w->redis, m, ok, json, usage->prompt_tokens,
                                                usage->completion_tokens, &outcome, errstr,
                                                sizeof(errstr));
        if (err == SHEAF_OK) {
            if (outcome == SHEAF_CHUNK_DUPLICATE) w->duplicates++;
            if (outcome == SHEAF_CHUNK_DOC_READY)
                sheaf_info("worker", "job %s doc %s: all %u chunks recorded, ready to combine",
                           m->job, m->doc, m->count);
            return MSG_DONE;
        }
        if (err == SHEAF_ERR_NOT_FOUND) return dead_letter(w, msg, m->job, errstr);
        sheaf_error("worker", "job %s doc %s chunk %u: cannot record result (will retry): %s",
                    m->job, m->doc, m->idx, errstr);
        if (sheaf_stop) return MSG_STOPPED;
        sheaf_sleep_ms(delay);
        if (delay < 5000) delay *= 2;
    }
}

static msg_outcome handle(worker *w, const rd_kafka_message_t *msg)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    char reason[SHEAF_ERRSTR_SIZE + 64];
    sheaf_chunk_msg m;
    sheaf_buf user, system;
    sheaf_llm_result res;
    sheaf_llm_usage usage = {0, 0};
    msg_outcome out = MSG_DONE;
    char *json = NULL;
    sheaf_err err;
    int exists = 0;

    memset(&m, 0, sizeof(m));
    memset(&res, 0, sizeof(res));
    sheaf_buf_init(&user, (size_t)64 << 20);
    sheaf_buf_init(&system, (size_t)1 << 20);

    err = sheaf_chunk_decode(msg->payload, msg->len, &m, errstr, sizeof(errstr));
    if (err != SHEAF_OK) {
        snprintf(reason, sizeof(reason), "not a valid sheaf chunk message: %s", errstr);
        out = dead_letter(w, msg, NULL, reason);
        goto done;
    }

    /* Cheap check first: a redelivered chunk that is already recorded costs
     * no LLM call. */
    while ((err = sheaf_state_chunk_exists(w->redis, &m, &exists, errstr, sizeof(errstr))) !=
           SHEAF_OK) {
        sheaf_error("worker", "Redis unavailable (will retry): %s", errstr);
        if (sheaf_stop) {
            out = MSG_STOPPED;
            goto done;
        }
        sheaf_sleep_ms(1000);
    }
    if (exists) {
        w->duplicates++;
        goto done;
    }

    const sheaf_pipeline *p;
    while (!(p = pipeline_for(w, m.pv, &err, errstr, sizeof(errstr)))) {
        if (err != SHEAF_ERR_REDIS) {
            snprintf(reason, sizeof(reason), "pipeline %s: %s", m.pv, errstr);
            out = dead_letter(w, msg, m.job, reason);
            goto done;
        }
        sheaf_error("worker", "Redis unavailable (will retry): %s", errstr);
        if (sheaf_stop) {
            out = MSG_STOPPED;
            goto done;
        }
        sheaf_sleep_ms(1000);
    }

    map_vars vars = {.m = &m};
    snprintf(vars.chunk_index, sizeof(vars.chunk_index), "%u", m.idx + 1);
    snprintf(vars.chunk_count, sizeof(vars.chunk_count), "%u", m.count);
    if (m.page_first && m.page_last > m.page_first)
        snprintf(vars.pages, sizeof(vars.pages), "%u-%u", m.page_first, m.page_last);
    else if (m.page_first)
        snprintf(vars.pages, sizeof(vars.pages), "%u", m.page_first);
    if (sheaf_prompt_render(p->map.system, map_var, &vars, &system, errstr, sizeof(errstr)) ||
        sheaf_prompt_render(p->map.user, map_var, &vars, &user, errstr, sizeof(errstr))) {
        snprintf(reason, sizeof(reason), "map prompt: %s", errstr);
        json = result_record("error", reason);
        out = record(w, msg, &m, 0, json, &usage);
        if (out == MSG_DONE) out = dead_letter(w, msg, m.job, reason);
        w->failed++;
        goto done;
    }

    sheaf_llm_message msgs[2];
    size_t nmsgs = 0;
    if (system.len) msgs[nmsgs++] = (sheaf_llm_message){"system", system.data};
    msgs[nmsgs++] = (sheaf_llm_message){"user", user.data};
    sheaf_llm_request req = {.model = p->map.model,
                             .temperature = p->map.temperature,
                             .max_tokens = p->map.max_tokens,
                             .messages = msgs,
                             .n_messages = nmsgs};
    err = sheaf_llm_complete_retry(w->llm, &req, &res, &sheaf_stop, errstr, sizeof(errstr));
    if (err == SHEAF_ERR_STOPPED) {
        out = MSG_STOPPED;
        goto done;
    }
    if (err != SHEAF_OK) {
        snprintf(reason, sizeof(reason), "LLM call failed after %d attempt(s): %s", res.attempts,
                 errstr);
        sheaf_warn("worker", "job %s doc %s chunk %u: %s", m.job, m.doc, m.idx, reason);
        json = result_record("error", reason);
        out = record(w, msg, &m, 0, json, &usage);
        if (out == MSG_DONE) out = dead_letter(w, msg, m.job, reason);
        w->failed++;
        goto done;
    }
    json = result_record("text", res.content);
    out = record(w, msg, &m, 1, json, &res.usage);
    if (out == MSG_DONE) w->processed++;
    sheaf_debug("worker", "job %s doc %s chunk %u/%u done (%llu+%llu tokens)", m.job, m.doc,
                m.idx + 1, m.count, (unsigned long long)res.usage.prompt_tokens,
                (unsigned long long)res.usage.completion_tokens);

done:
    free(json);
    sheaf_llm_result_clear(&res);
    sheaf_buf_free(&user);
    sheaf_buf_free(&system);
    sheaf_chunk_msg_clear(&m);
    return out;
}

/* Logs and applies partition assignment changes.  With cooperative-sticky
 * only the partitions that move are given or taken; a partition taken away
 * mid-call is harmless: its next owner finds the result recorded. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    char list[512] = "";
    size_t used = 0;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
    (void)opaque;
    for (int i = 0; i < parts->cnt && used + 16 < sizeof(list); i++)
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%d", i ? "," : "",
                                 (int)parts->elems[i].partition);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        sheaf_info("worker", "partitions assigned: %d [%s]", parts->cnt, list);
        if (cooperative) error = rd_kafka_incremental_assign(rk, parts);
        else aerr = rd_kafka_assign(rk, parts);
    } else {
        sheaf_info("worker", "partitions revoked: %d [%s]", parts->cnt, list);
        if (cooperative) error = rd_kafka_incremental_unassign(rk, parts);
        else aerr = rd_kafka_assign(rk, NULL);
    }
    if (error) {
        sheaf_error("worker", "rebalance: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (aerr) {
        sheaf_error("worker", "rebalance: %s", rd_kafka_err2str(aerr));
    }
    rd_kafka_topic_partition_list_t *now = NULL;
    if (rd_kafka_assignment(rk, &now) == RD_KAFKA_RESP_ERR_NO_ERROR && now) {
        sheaf_info("worker", "now owning %d partition(s)", now->cnt);
        rd_kafka_topic_partition_list_destroy(now);
    }
}

/* Marks msg processed: its offset + 1 becomes committable. */
static void store_offset(worker *w, const rd_kafka_message_t *msg)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(msg->rkt), msg->partition)->offset =
        msg->offset + 1;
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(w->consumer, l);
    if (err || l->elems[0].err)
        /* The partition was revoked meanwhile: its new owner redoes the
         * message and finds the result recorded. */
        sheaf_debug("worker", "offset %lld of [%d] not stored: %s", (long long)msg->offset,
                    (int)msg->partition, rd_kafka_err2str(err ? err : l->elems[0].err));
    rd_kafka_topic_partition_list_destroy(l);
}

static int worker_start(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    char client_id[128], host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(client_id, sizeof(client_id), "sheaf-worker-%s-%d", host, (int)getpid());
    sheaf_topic_name(&w->cfg, "map", w->map_topic, sizeof(w->map_topic));
    sheaf_topic_name(&w->cfg, "dlq", w->dlq_topic, sizeof(w->dlq_topic));

    if (!(w->redis = sheaf_redis_connect(&w->cfg, errstr, sizeof(errstr))) ||
        !(w->llm = sheaf_llm_create(&w->cfg, errstr, sizeof(errstr))) ||
        !(w->producer = sheaf_kafka_producer_new(&w->cfg, client_id, errstr, sizeof(errstr))) ||
        !(w->consumer = sheaf_kafka_consumer_new(&w->cfg, client_id, w->cfg.worker_group,
                                                 on_rebalance, NULL, errstr, sizeof(errstr)))) {
        sheaf_error("worker", "%s", errstr);
        return -1;
    }
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, w->map_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(w->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        sheaf_error("worker", "cannot subscribe to %s: %s", w->map_topic, rd_kafka_err2str(err));
        return -1;
    }
    sheaf_info("worker", "consuming %s in group %s; LLM %s model %s", w->map_topic,
               w->cfg.worker_group, w->cfg.llm_base_url, w->cfg.llm_model);
    return 0;
}

static void worker_stop(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    if (w->consumer) {
        /* Commits the stored offsets and leaves the group, so partitions move
         * at once instead of after the session timeout. */
        rd_kafka_resp_err_t err = rd_kafka_consumer_close(w->consumer);
        if (err) sheaf_warn("worker", "consumer close: %s", rd_kafka_err2str(err));
        rd_kafka_destroy(w->consumer);
    }
    if (w->producer && sheaf_kafka_flush(w->producer, 10000, errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("worker", "dead-letter producer: %s", errstr);
    sheaf_kafka_producer_destroy(w->producer);
    sheaf_llm_destroy(w->llm);
    sheaf_redis_destroy(w->redis);
    for (int i = 0; i < PIPELINE_CACHE; i++) sheaf_pipeline_destroy(w->pipelines[i].p);
    sheaf_config_clear(&w->cfg);
}

int main(int argc, char **argv)
{
    worker w;
    int rc;

    memset(&w, 0, sizeof(w));
    rc = sheaf_program_start(&w.cfg, "sheaf-worker", usage_text, argc, argv);
    if (rc >= 0) return rc;
    rc = 1;
    if (worker_start(&w) == 0) {
        while (!sheaf_stop) {
            rd_kafka_message_t *msg = rd_kafka_consumer_poll(w.consumer, 200);
            if (!msg) continue;
            if (msg->err) {
                if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    sheaf_warn("worker", "consumer: %s", rd_kafka_message_errstr(msg));
                rd_kafka_message_destroy(msg);
                continue;
            }
            if (handle(&w, msg) == MSG_DONE) store_offset(&w, msg);
            rd_kafka_message_destroy(msg);
        }
        sheaf_info("worker", "stopping: %lu chunks processed, %lu duplicates skipped, %lu failed, "
                   "%lu dead-lettered", w.processed, w.duplicates, w.failed, w.dead_lettered);
        rc = 0;
    }
    worker_stop(&w);
    return rc;
}
