/* chunk.c - one chunk message, from decode to recorded result.
 *
 * worker_take() decodes the message strictly, skips it when its result is
 * already recorded (a redelivery costs no LLM call), looks up the job's
 * pipeline by the version the message carries, renders the map prompt and
 * submits the call to the LLM engine.  The engine calls on_done() when the
 * call ends, in any order; the result is recorded in Redis with the
 * idempotent chunk-store script and only then is the message's offset
 * finished in the offset window, which stores offsets per partition up to
 * the lowest unfinished one.
 *
 * What cannot be processed is never dropped: an undecodable message, an
 * unknown job or pipeline, a prompt that cannot be rendered, or an LLM call
 * that still fails after llm.max_attempts (or is refused) goes to
 * <prefix>.dlq with the reason, flushed before the offset is finished; a
 * chunk that fails for LLM or prompt reasons is also recorded as failed so
 * its document completes.
 *
 * A call aborted at shutdown is abandoned: nothing recorded, offset not
 * finished, so the message is redelivered to another worker.
 *
 * Transient failures are never final.  A call that still fails after
 * llm.max_attempts for a cause a retry can change (timeouts, resets, 5xx,
 * 429, an open circuit) is parked: it keeps its offset unfinished and is
 * sent again from the worker's loop after a growing delay (1 s doubling to
 * 5 min), for up to llm.retry_horizon_ms since it was first parked; the
 * job shows the cause (retry_reason, retry_ms) in `sheaf status`.  Only
 * when the horizon is over, or for a permanent cause (4xx refusals, an
 * answer invalid after the schema retries, a prompt that cannot be
 * rendered), does the chunk fail and go to the DLQ.
 *
 * Structured output: when the pipeline's map stage has a JSON schema, it is
 * sent with the call (response_format) and the answer must parse as JSON
 * and pass sheaf_jschema_validate.  An answer that does not is asked for
 * again, the same request, up to json_retries more times: models slip now
 * and then (a cut-off object, a number as a string) and an identical retry
 * usually mends it, while a transport retry inside the engine would never
 * see the problem (the HTTP exchange itself succeeded).  Every answer's
 * tokens count, the rejected ones too.  The record is then
 *   {"text": <answer>, "data": <parsed>, "pages": [page_first, page_last]}
 * instead of {"text": <answer>}; a free-text record is unchanged.
 *
 * The LLM call cache (sheaf/cache.h): before the first send, a call that
 * may be cached is looked up under the hash of the very request the engine
 * would get.  A hit goes through on_done like an answer from the provider
 * (same validation, same record) with zero usage, so the job's spent tokens
 * do not grow; a miss is sent, and its answer stored once it is accepted
 * (for a schema, once it validated: a rejected answer is never stored).
 * A resend after a rejected answer skips the lookup: the cache cannot hold
 * an answer for it, and it is the same call, not another miss. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/cache.h"
#include "sheaf/codec.h"
#include "sheaf/jschema.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"
#include "worker.h"

#define PROMPT_CAP ((size_t)64 << 20)

/* What a map call sends, owned by the call: an answer that fails the
 * schema is asked for again from on_done, when the pipeline it came from
 * may have been evicted from the cache (and freed) by newer jobs. */
typedef struct map_request {
    char *model;
    char *system;              /* "" when the stage has none */
    char *user;                /* NULL once no resend can come (memory) */
    double temperature;
    int max_tokens;
    uint32_t est_tokens;       /* what the limiter is charged per attempt */
} map_request;

typedef struct call {
    worker *w;
    rd_kafka_message_t *msg;   /* owned; destroyed when the call ends */
    sheaf_chunk_msg m;
    uint32_t generation;       /* of msg's partition when taken */
    map_request req;           /* owned */
    json_t *schema;            /* a reference to the pipeline's; NULL: free text */
    int json_answers;          /* answers checked against the schema so far */
    int json_max;              /* answers allowed: 1 + the pipeline's json_retries */
    sheaf_llm_usage usage;     /* summed over every answer of this call */
    char cache_key[SHEAF_CACHE_KEY_SIZE]; /* "" when the call is not cached */
    int cache_looked;          /* the first send looked the cache up */
    int from_cache;            /* the answer in on_done came from the cache */
    /* Parked (transient failure after every attempt): sent again at
     * parked_until, until llm.retry_horizon_ms after parked_since. */
    int64_t parked_since, parked_until;
    int parks;
    struct call *next_wait;    /* in w->parked or w->held (never both at once) */
    /* Held while Redis is unreachable (worker_held_run): the message waits
     * to be checked (HOLD_TAKE) or its result to be recorded (HOLD_RECORD,
     * held_json, held_ok). */
    int hold;
    char *held_json;
    int held_ok;
    int64_t held_until;
} call;

/* DONE: finish the offset; STOPPED: abandon (redelivered); HELD: the call
 * waits for Redis in the worker's held list and is not ended. */
typedef enum { DONE, STOPPED, HELD } outcome;
enum { HOLD_TAKE = 1, HOLD_RECORD = 2 };

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
        memmove(&w->pipelines[0], &w->pipelines[1],
                sizeof(w->pipelines[0]) * (PIPELINE_CACHE - 1));
        free_slot = PIPELINE_CACHE - 1;
    }
    snprintf(w->pipelines[free_slot].pv, sizeof(w->pipelines[free_slot].pv), "%s", pv);
    w->pipelines[free_slot].p = p;
    *err = SHEAF_OK;
    return p;
}

void worker_pipelines_clear(worker *w)
{
    for (int i = 0; i < PIPELINE_CACHE; i++) {
        sheaf_pipeline_destroy(w->pipelines[i].p);
        w->pipelines[i].p = NULL;
    }
}

/* ---- prompt variables of the map stage ---- */

typedef struct map_vars {
    const sheaf_chunk_msg *m;
    char chunk_index[16], chunk_count[16], pages[32], page_first[16], page_last[16];
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
    /* page_first and page_last pass validation (map's variables in
     * pipeline.c), so they must render too, else every chunk of such a
     * pipeline was dead-lettered with "unknown variable". */
    else if (IS("page_first")) s = v->page_first;
    else if (IS("page_last")) s = v->page_last;
    else if (len > 5 && memcmp(name, "meta.", 5) == 0) {
        /* Compared in place: any key length that validation accepts must
         * render (a copy into a fixed buffer refused keys over 250 bytes). */
        s = ""; /* a missing metadata field renders empty */
        for (size_t i = 0; i < v->m->meta_len; i++) {
            const char *k = v->m->meta[i].key;
            if (strlen(k) == len - 5 && memcmp(k, name + 5, len - 5) == 0) {
                s = v->m->meta[i].value;
                break;
            }
        }
    }
#undef IS
    if (s) *out_len = strlen(s);
    return s;
}

/* ---- dead letters and records ---- */

/* Sends msg to the DLQ and waits until it is durable there; only then may
 * its offset be finished.  Retries until it works; once shutdown started it
 * tries once more and then gives up (the message is redelivered). */
static outcome dead_letter(worker *w, const rd_kafka_message_t *msg, const char *job,
                           const char *reason)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_warn("worker", "dead-lettering %s [%d] offset %lld%s%s: %s",
               rd_kafka_topic_name(msg->rkt), (int)msg->partition, (long long)msg->offset,
               job ? " job " : "", job ? job : "", reason);
    for (;;) {
        if (sheaf_kafka_dlq_send(w->producer, w->dlq_topic, msg, reason, job, errstr,
                                 sizeof(errstr)) == SHEAF_OK &&
            sheaf_kafka_flush(w->producer, 10000, errstr, sizeof(errstr)) == SHEAF_OK) {
            w->dead_lettered++;
            sheaf_metric_inc(w->met.dlq);
            if (job && sheaf_state_job_dlq_incr(w->redis, job, errstr, sizeof(errstr)) != SHEAF_OK)
                sheaf_warn("worker", "job %s: could not count the dead letter: %s", job, errstr);
            return DONE;
        }
        sheaf_error("worker", "cannot dead-letter to %s: %s", w->dlq_topic, errstr);
        if (sheaf_stop) return STOPPED;
        sheaf_sleep_ms(1000);
    }
}

static char *result_record(const char *key, const char *value)
{
    json_t *o = json_object();
    json_object_set_new(o, key, json_string(value));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* The record of a structured answer: {"text","data","pages"} in that
 * order.  pages is [0, 0] for input without pages, so a record's shape
 * does not depend on the input format.  NULL on no memory. */
static char *schema_record(const char *text, json_t *data, const sheaf_chunk_msg *m)
{
    char *s = NULL;
    /* "O" adds a reference: data stays the caller's. */
    json_t *o = json_pack("{s:s, s:O, s:[I, I]}", "text", text, "data", data, "pages",
                          (json_int_t)m->page_first, (json_int_t)m->page_last);
    if (o) s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* ---- waiting for Redis ---- */

#define REDIS_WAIT_FIRST_MS 200
#define REDIS_WAIT_MAX_MS 5000
#define REDIS_LOG_EVERY_MS 10000

/* Redis failed for the call: it joins the held list (HELD), retried from
 * the loop after a delay that doubles to 5 s while Redis stays away.  The
 * loop pauses fetching while anything is held, keeps serving the consumer
 * group, and logs one line per interval, not one per chunk. */
static outcome hold(worker *w, call *c, int kind, const char *errstr)
{
    int64_t now = sheaf_mono_ms();
    if (sheaf_stop) return STOPPED;
    worker_redis_failed(w, errstr);
    if (!w->redis_down_ms) {
        w->redis_down_ms = now;
        w->redis_logged_ms = now;
        w->redis_delay_ms = REDIS_WAIT_FIRST_MS;
        sheaf_error("worker", "%s: %s; consumption paused, chunks held until it answers",
                    sheaf_redis_trouble(errstr), errstr);
    } else if (now - w->redis_logged_ms >= REDIS_LOG_EVERY_MS) {
        w->redis_logged_ms = now;
        sheaf_error("worker", "%s for %lld s: %zu chunk(s) held: %s", sheaf_redis_trouble(errstr),
                    (long long)((now - w->redis_down_ms) / 1000), w->n_held + 1, errstr);
    }
    c->hold = kind;
    c->held_until = now + w->redis_delay_ms;
    c->next_wait = w->held;
    w->held = c;
    w->n_held++;
    return HELD;
}

/* Records the chunk (a Redis failure holds it). */
static outcome record(worker *w, call *c, int ok, const char *json,
                      const sheaf_llm_usage *usage)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    const sheaf_chunk_msg *m = &c->m;
    sheaf_chunk_outcome out = SHEAF_CHUNK_NEW;
    sheaf_err err = sheaf_state_chunk_store(w->redis, m, ok, json, usage->prompt_tokens,
                                            usage->completion_tokens, &out, errstr,
                                            sizeof(errstr));
    if (err == SHEAF_OK) {
        if (out == SHEAF_CHUNK_DUPLICATE) w->duplicates++;
        if (out == SHEAF_CHUNK_DOC_READY)
            sheaf_info("worker", "job %s doc %s: all %u chunks recorded, ready to combine",
                       m->job, m->doc, m->count);
        if (ok) {
            w->processed++;
            sheaf_metric_inc(w->met.processed);
        }
        return DONE;
    }
    if (err == SHEAF_ERR_NOT_FOUND) return dead_letter(w, c->msg, m->job, errstr);
    if (json != c->held_json) {
        free(c->held_json);
        if (!(c->held_json = strdup(json))) return STOPPED;
    }
    c->held_ok = ok;
    return hold(w, c, HOLD_RECORD, errstr);
}

/* Dead-letters a failed chunk's message, then records the failure.  In
 * that order, so that when the failure completes the document (and maybe
 * the job) the job's dead-letter count already includes it; a crash in
 * between dead-letters the message twice, which is harmless.  The call's
 * usage is recorded with the failure: answers rejected by the schema were
 * paid for. */
static outcome fail_chunk(worker *w, call *c, const char *reason)
{
    outcome out = dead_letter(w, c->msg, c->m.job, reason);
    if (out == DONE) {
        char *json = result_record("error", reason);
        out = json ? record(w, c, 0, json, &c->usage) : STOPPED;
        free(json);
    }
    if (out == DONE) {
        w->failed++;
        sheaf_metric_inc(w->met.failed);
    }
    return out;
}

/* ---- ending a call ---- */

/* Ends a call: with DONE its offset is finished in the window and every
 * offset that became committable is stored; with STOPPED the message is
 * abandoned (redelivered later).  Frees the call. */
static void call_end(call *c, outcome out)
{
    worker *w = c->w;
    int32_t part = c->msg->partition;
    if (out == HELD) return; /* lives on in the held list */
    if (out == STOPPED) {
        w->abandoned++;
    } else if (c->generation == worker_generation(w, part) &&
               sheaf_offwin_finish(w->window, part, c->msg->offset) == SHEAF_OK) {
        int64_t next = sheaf_offwin_take(w->window, part);
        if (next >= 0) {
            rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
            rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(c->msg->rkt), part)
                ->offset = next;
            rd_kafka_resp_err_t err = rd_kafka_offsets_store(w->consumer, l);
            if (err || l->elems[0].err)
                /* Revoked meanwhile: the new owner redoes the message and
                 * finds its result recorded. */
                sheaf_debug("worker", "offset %lld of [%d] not stored: %s", (long long)next,
                            (int)part, rd_kafka_err2str(err ? err : l->elems[0].err));
            rd_kafka_topic_partition_list_destroy(l);
        }
    }
    /* A partition revoked while the call ran: the result is recorded (or
     * not), the offset belongs to the partition's new owner. */
    free(c->req.model);
    free(c->req.system);
    free(c->req.user);
    free(c->held_json);
    json_decref(c->schema);
    sheaf_chunk_msg_clear(&c->m);
    rd_kafka_message_destroy(c->msg);
    free(c);
}

/* ---- asking the LLM ---- */

static void on_done(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr);

/* Looks the call's request up in the cache (first send only) and counts
 * the hit or miss against the job.  On a hit the cached answer is handled
 * by on_done exactly like the provider's, with zero usage, and 1 is
 * returned: the call may have ended, c must not be touched again.  Redis
 * trouble is a miss: the cache never fails a chunk. */
static int cache_lookup(worker *w, call *c, const sheaf_llm_request *req)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_llm_result res;
    sheaf_llm_usage saved = {0, 0};
    int hit = 0;

    c->cache_looked = 1;
    if (!sheaf_cache_usable(&w->cfg, req)) return 0;
    if (sheaf_cache_key(w->cfg.llm_base_url, req, c->cache_key) != SHEAF_OK) {
        c->cache_key[0] = '\0';
        return 0;
    }
    memset(&res, 0, sizeof(res));
    res.retry_after_ms = -1;
    if (sheaf_cache_get(w->redis, c->cache_key, &res.content, &saved, &hit, errstr,
                        sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("worker", "job %s doc %s chunk %u: %s; calling the LLM", c->m.job, c->m.doc,
                   c->m.idx, errstr);
    sheaf_cache_count(w->redis, c->m.job, hit, &saved);
    sheaf_metric_inc(hit ? w->llm_met.cache_hits : w->llm_met.cache_misses);
    if (!hit) return 0;
    sheaf_debug("worker", "job %s doc %s chunk %u: cache hit (%llu+%llu tokens saved)",
                c->m.job, c->m.doc, c->m.idx, (unsigned long long)saved.prompt_tokens,
                (unsigned long long)saved.completion_tokens);
    c->from_cache = 1;
    on_done(c, SHEAF_OK, &res, "");   /* does not take res.content */
    free(res.content);
    return 1;
}

/* Stores an accepted answer from the provider under the call's key. */
static void cache_store(worker *w, const call *c, const sheaf_llm_result *res)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    if (sheaf_cache_put(w->redis, &w->cfg, c->cache_key, res->content, &res->usage, errstr,
                        sizeof(errstr)) != SHEAF_OK)
        sheaf_warn("worker", "job %s doc %s chunk %u: %s", c->m.job, c->m.doc, c->m.idx, errstr);
}

/* Submits the call's map request (first time or again); the call ends in
 * on_done.  The engine copies the request into its body, so once no resend
 * can follow the prompts are dropped: a call in flight holds its prompt
 * once, not twice. */
static outcome send_map(worker *w, call *c)
{
    const map_request *r = &c->req;
    sheaf_llm_message msgs[2];
    size_t n = 0;
    if (r->system[0]) msgs[n++] = (sheaf_llm_message){"system", r->system};
    msgs[n++] = (sheaf_llm_message){"user", r->user};
    sheaf_llm_request req = {.model = r->model,
                             .temperature = r->temperature,
                             .max_tokens = r->max_tokens,
                             .messages = msgs,
                             .n_messages = n,
                             .json_schema = strcmp(w->cfg.llm_structured_output, "prompt")
                                                ? c->schema : NULL};
    /* The key is computed from req itself: what is hashed is what is sent. */
    if (!c->cache_looked && cache_lookup(w, c, &req)) return DONE;
    c->from_cache = 0;
    if (sheaf_llm_async_submit(w->llm, &req, r->est_tokens, on_done, c) != SHEAF_OK) {
        sheaf_error("worker", "out of memory submitting job %s doc %s chunk %u", c->m.job,
                    c->m.doc, c->m.idx);
        call_end(c, STOPPED);
        return STOPPED;
    }
    if (!c->schema || c->json_answers + 1 >= c->json_max) {
        free(c->req.system);
        free(c->req.user);
        c->req.system = c->req.user = NULL;
    }
    return DONE;
}

/* The answer parsed and validated against the call's schema, or NULL with
 * why in errstr.  Strict JSON, no fences or prose around it: that is what
 * response_format asks of the provider, and the record's "data" must be
 * exactly what the schema describes. */
static json_t *checked_answer(const call *c, const char *content, char *errstr, size_t errlen)
{
    json_error_t jerr;
    json_t *data = json_loads(content, 0, &jerr);
    if (!data) {
        sheaf_set_err(errstr, errlen, "not JSON: %s at line %d column %d", jerr.text, jerr.line,
                      jerr.column);
        return NULL;
    }
    if (sheaf_jschema_validate(c->schema, data, errstr, errlen) != SHEAF_OK) {
        json_decref(data);
        return NULL;
    }
    return data;
}

/* An answer that failed the schema: the same request goes again while the
 * call has answers left (counted per call, so one stubborn chunk cannot use
 * up another's), else the chunk fails like any unusable answer. */
static void answer_rejected(worker *w, call *c, const char *why)
{
    char reason[SHEAF_ERRSTR_SIZE + 128];
    c->json_answers++;
    if (c->json_answers < c->json_max) {
        sheaf_warn("worker", "job %s doc %s chunk %u: map answer %d of at most %d rejected, "
                   "asking again: %s", c->m.job, c->m.doc, c->m.idx, c->json_answers,
                   c->json_max, why);
        /* At shutdown the message goes back instead: a new call would be
         * abandoned by the drain anyway. */
        if (sheaf_stop) call_end(c, STOPPED);
        else send_map(w, c);
        return;
    }
    snprintf(reason, sizeof(reason),
             "map answer is not valid JSON for the schema after %d attempt(s): %s",
             c->json_answers, why);
    sheaf_warn("worker", "job %s doc %s chunk %u: %s", c->m.job, c->m.doc, c->m.idx, reason);
    call_end(c, fail_chunk(w, c, reason));
}

/* ---- parking transient failures ---- */

#define PARK_FIRST_MS 1000
#define PARK_MAX_MS 300000

#define PARK_FLEET_MS 30000

/* Parks the call, or fails it when llm.retry_horizon_ms is over.  A fleet
 * condition (fleet = 1: the key or the model is refused) has no horizon and
 * a fixed probe period: it is fixed by an operator, not by time. */
static void park(worker *w, call *c, const char *why, int fleet)
{
    char reason[SHEAF_ERRSTR_SIZE + 128], errstr[SHEAF_ERRSTR_SIZE];
    int64_t now = sheaf_mono_ms();
    if (!c->parked_since) c->parked_since = now;
    if (!fleet && now - c->parked_since >= w->cfg.llm_retry_horizon_ms) {
        snprintf(reason, sizeof(reason), "provider failing for %lld s (llm.retry_horizon_ms): %s",
                 (long long)((now - c->parked_since) / 1000), why);
        sheaf_warn("worker", "job %s doc %s chunk %u: %s", c->m.job, c->m.doc, c->m.idx, reason);
        call_end(c, fail_chunk(w, c, reason));
        return;
    }
    if (sheaf_stop) {
        call_end(c, STOPPED);
        return;
    }
    int64_t delay = (int64_t)PARK_FIRST_MS << (c->parks < 9 ? c->parks : 9);
    if (delay > PARK_MAX_MS) delay = PARK_MAX_MS;
    if (fleet) delay = PARK_FLEET_MS;
    c->parks++;
    c->parked_until = now + delay;
    c->next_wait = w->parked;
    w->parked = c;
    w->n_parked++;
    sheaf_metric_set(w->met.parked, (int64_t)w->n_parked);
    if (c->parks == 1 || c->parks % 8 == 0)
        sheaf_warn("worker", "job %s doc %s chunk %u: provider failing, retrying in %lld ms "
                   "(parked %d time(s)): %s", c->m.job, c->m.doc, c->m.idx, (long long)delay,
                   c->parks, why);
    /* What the job waits on, for `sheaf status` (not a failure). */
    if (sheaf_state_job_waiting(w->redis, c->m.job, why, errstr, sizeof(errstr)) != SHEAF_OK)
        sheaf_debug("worker", "job %s: cannot record the retry reason: %s", c->m.job, errstr);
}

static outcome submit(worker *w, call *c, const sheaf_pipeline *p);

/* Sends parked calls whose time has come; each renders its prompt again
 * (the first send dropped it) from the pipeline by version. */
void worker_parked_run(worker *w)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    int64_t now = sheaf_mono_ms();
    call **pp = &w->parked;
    while (*pp) {
        call *c = *pp;
        if (c->parked_until > now) {
            pp = &c->next_wait;
            continue;
        }
        *pp = c->next_wait;
        w->n_parked--;
        sheaf_err err;
        const sheaf_pipeline *p = pipeline_for(w, c->m.pv, &err, errstr, sizeof(errstr));
        free(c->req.model);
        free(c->req.system);
        free(c->req.user);
        json_decref(c->schema);
        memset(&c->req, 0, sizeof(c->req));
        c->schema = NULL;
        c->json_answers = 0;
        if (p) submit(w, c, p);
        else park(w, c, errstr, 0); /* Redis trouble, or the pipeline is gone */
    }
    sheaf_metric_set(w->met.parked, (int64_t)w->n_parked);
}

void worker_parked_abandon(worker *w)
{
    while (w->parked) {
        call *c = w->parked;
        w->parked = c->next_wait;
        call_end(c, STOPPED);
    }
    w->n_parked = 0;
}

static void on_done(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr)
{
    call *c = ud;
    worker *w = c->w;
    char reason[SHEAF_ERRSTR_SIZE + 64], why[SHEAF_ERRSTR_SIZE];
    json_t *data = NULL;
    char *json;
    outcome out;

    if (err == SHEAF_ERR_STOPPED) {
        call_end(c, STOPPED);
        return;
    }
    c->usage.prompt_tokens += res->usage.prompt_tokens;
    c->usage.completion_tokens += res->usage.completion_tokens;
    if (err == SHEAF_ERR_LLM_RETRY) {
        park(w, c, errstr, 0);
        return;
    }
    if (err == SHEAF_ERR_LLM_FATAL &&
        sheaf_llm_fleet_cause(res->http_status, errstr, why, sizeof(why))) {
        if (strcmp(w->fleet_cause, why) != 0)
            sheaf_error("worker", "%s; consumption paused, no chunk fails for it", why);
        snprintf(w->fleet_cause, sizeof(w->fleet_cause), "%s", why);
        park(w, c, why, 1);
        return;
    }
    if (err == SHEAF_OK && w->fleet_cause[0]) {
        sheaf_info("worker", "the LLM endpoint answers again; resuming (%s)", w->fleet_cause);
        w->fleet_cause[0] = '\0';
    }
    if (err != SHEAF_OK) {
        snprintf(reason, sizeof(reason), "LLM call failed after %d attempt(s): %s", res->attempts,
                 errstr);
        sheaf_warn("worker", "job %s doc %s chunk %u: %s", c->m.job, c->m.doc, c->m.idx, reason);
        call_end(c, fail_chunk(w, c, reason));
        return;
    }
    if (c->schema && !(data = checked_answer(c, res->content, why, sizeof(why)))) {
        answer_rejected(w, c, why);
        return;
    }
    json = data ? schema_record(res->content, data, &c->m) : result_record("text", res->content);
    json_decref(data);
    /* Accepted: stored for the next identical call (a hit is not stored again). */
    if (json && c->cache_key[0] && !c->from_cache) cache_store(w, c, res);
    out = json ? record(w, c, 1, json, &c->usage) : STOPPED;
    free(json);
    sheaf_debug("worker", "job %s doc %s chunk %u/%u done (%llu+%llu tokens)", c->m.job,
                c->m.doc, c->m.idx + 1, c->m.count, (unsigned long long)c->usage.prompt_tokens,
                (unsigned long long)c->usage.completion_tokens);
    call_end(c, out);
}

/* ---- taking a message ---- */

/* llm.structured_output=prompt, for endpoints without response_format:
 * the schema goes at the end of the system prompt instead (the answer is
 * validated and retried the same way). */
static sheaf_err append_schema(sheaf_buf *system, const json_t *schema, char *errstr,
                               size_t errlen)
{
    char *text = json_dumps(schema, JSON_COMPACT | JSON_SORT_KEYS);
    sheaf_err err = text ? sheaf_buf_appendf(system, "%sAnswer with one JSON object, and nothing "
                                             "else, that matches this JSON schema: %s",
                                             system->len ? "\n\n" : "", text)
                         : SHEAF_ERR_NOMEM;
    if (err != SHEAF_OK) snprintf(errstr, errlen, "adding the JSON schema: %s", sheaf_strerror(err));
    free(text);
    return err;
}

/* Renders the map prompts into the call's own request and submits it; the
 * call ends in on_done. */
static outcome submit(worker *w, call *c, const sheaf_pipeline *p)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", reason[SHEAF_ERRSTR_SIZE + 32];
    const sheaf_chunk_msg *m = &c->m;
    sheaf_buf user, system;
    map_vars vars = {.m = m};
    outcome out = DONE;

    sheaf_buf_init(&user, PROMPT_CAP);
    sheaf_buf_init(&system, PROMPT_CAP);
    snprintf(vars.chunk_index, sizeof(vars.chunk_index), "%u", m->idx + 1);
    snprintf(vars.chunk_count, sizeof(vars.chunk_count), "%u", m->count);
    if (m->page_first && m->page_last > m->page_first)
        snprintf(vars.pages, sizeof(vars.pages), "%u-%u", m->page_first, m->page_last);
    else if (m->page_first)
        snprintf(vars.pages, sizeof(vars.pages), "%u", m->page_first);
    if (m->page_first) { /* "" without pages, like pages */
        snprintf(vars.page_first, sizeof(vars.page_first), "%u", m->page_first);
        snprintf(vars.page_last, sizeof(vars.page_last), "%u", m->page_last);
    }
    if (sheaf_prompt_render(p->map.system, map_var, &vars, &system, errstr, sizeof(errstr)) ||
        sheaf_prompt_render(p->map.user, map_var, &vars, &user, errstr, sizeof(errstr))) {
        snprintf(reason, sizeof(reason), "map prompt: %s", errstr);
        call_end(c, fail_chunk(w, c, reason));
        goto done;
    }
    if (p->schema && strcmp(w->cfg.llm_structured_output, "prompt") == 0 &&
        append_schema(&system, p->schema, errstr, sizeof(errstr)) != SHEAF_OK) {
        snprintf(reason, sizeof(reason), "map prompt: %s", errstr);
        call_end(c, fail_chunk(w, c, reason));
        goto done;
    }
    /* The limiter is charged what the provider will count: the prompt
     * (estimated) plus the completion budget. */
    uint64_t est = (uint64_t)sheaf_estimate_tokens(system.data ? system.data : "", system.len) +
                   sheaf_estimate_tokens(user.data, user.len) +
                   (uint64_t)(p->map.max_tokens > 0 ? p->map.max_tokens : 0);
    /* Copies, not pointers into p: the pipeline cache may free p before a
     * resend.  The pipeline never changes its schema after loading, so a
     * reference to it is as good as a copy. */
    c->req.model = strdup(p->map.model);
    c->req.system = sheaf_buf_steal(&system);
    c->req.user = sheaf_buf_steal(&user);
    c->req.temperature = p->map.temperature;
    c->req.max_tokens = p->map.max_tokens;
    c->req.est_tokens = est > UINT32_MAX ? UINT32_MAX : (uint32_t)est;
    c->schema = json_incref(p->schema);
    c->json_max = 1 + p->json_retries;
    if (!c->req.model || !c->req.system || !c->req.user) {
        sheaf_error("worker", "out of memory submitting job %s doc %s chunk %u", m->job, m->doc,
                    m->idx);
        call_end(c, STOPPED);
        out = STOPPED;
        goto done;
    }
    out = send_map(w, c);
done:
    sheaf_buf_free(&user);
    sheaf_buf_free(&system);
    return out;
}

/* The checks before a call: a chunk already recorded (or of a cancelled
 * job) costs no call; then the pipeline by version.  Redis trouble holds
 * the call (it comes back here). */
static void take_checks(worker *w, call *c)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", reason[SHEAF_ERRSTR_SIZE + 64];
    const sheaf_pipeline *p;
    sheaf_err err;
    int exists = 0;

    if (sheaf_state_chunk_exists(w->redis, &c->m, &exists, errstr, sizeof(errstr)) != SHEAF_OK) {
        call_end(c, hold(w, c, HOLD_TAKE, errstr));
        return;
    }
    if (exists) {
        w->duplicates++;
        call_end(c, DONE);
        return;
    }
    if (!(p = pipeline_for(w, c->m.pv, &err, errstr, sizeof(errstr)))) {
        if (err == SHEAF_ERR_REDIS) {
            call_end(c, hold(w, c, HOLD_TAKE, errstr));
            return;
        }
        /* Recorded failed too, so its document completes and the job ends
         * (failed, with the reason) instead of running for ever. */
        snprintf(reason, sizeof(reason), "pipeline %s: %s", c->m.pv, errstr);
        call_end(c, fail_chunk(w, c, reason));
        return;
    }
    submit(w, c, p);
}

void worker_held_run(worker *w)
{
    int64_t now = sheaf_mono_ms();
    call *due = NULL, **pp = &w->held;
    /* Take the due ones out first: a call that fails again is held anew. */
    while (*pp) {
        call *c = *pp;
        if (c->held_until > now) {
            pp = &c->next_wait;
            continue;
        }
        *pp = c->next_wait;
        w->n_held--;
        c->next_wait = due;
        due = c;
    }
    if (!due) return;
    size_t before = w->n_held;
    while (due) {
        call *c = due;
        due = c->next_wait;
        int kind = c->hold;
        c->hold = 0;
        if (kind == HOLD_RECORD) call_end(c, record(w, c, c->held_ok, c->held_json, &c->usage));
        else take_checks(w, c);
    }
    if (w->n_held > before) {
        /* Still failing: wait longer before the next round. */
        w->redis_delay_ms = w->redis_delay_ms * 2 > REDIS_WAIT_MAX_MS ? REDIS_WAIT_MAX_MS : w->redis_delay_ms * 2;
    } else if (!w->n_held && w->redis_down_ms) {
        sheaf_info("worker", "Redis answers again after %lld s; consumption resumed",
                   (long long)((sheaf_mono_ms() - w->redis_down_ms) / 1000));
        w->redis_down_ms = 0;
    }
}

void worker_held_abandon(worker *w)
{
    while (w->held) {
        call *c = w->held;
        w->held = c->next_wait;
        call_end(c, STOPPED);
    }
    w->n_held = 0;
}

void worker_take(worker *w, rd_kafka_message_t *msg)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", reason[SHEAF_ERRSTR_SIZE + 64];
    sheaf_err err;
    call *c = calloc(1, sizeof(*c));

    if (!c) {
        sheaf_error("worker", "out of memory; message redelivered later");
        rd_kafka_message_destroy(msg);
        return;
    }
    c->w = w;
    c->msg = msg;
    c->generation = worker_generation(w, msg->partition);
    if (sheaf_offwin_begin(w->window, msg->partition, msg->offset) != SHEAF_OK) {
        /* An offset at or below one already taken: the partition was
         * rewound (seek, reset).  Start its window afresh. */
        sheaf_offwin_forget(w->window, msg->partition);
        sheaf_offwin_begin(w->window, msg->partition, msg->offset);
    }

    err = sheaf_chunk_decode(msg->payload, msg->len, &c->m, errstr, sizeof(errstr));
    if (err != SHEAF_OK) {
        snprintf(reason, sizeof(reason), "not a valid sheaf chunk message: %s", errstr);
        call_end(c, dead_letter(w, msg, NULL, reason));
        return;
    }
    take_checks(w, c);
}

/* Ends (abandons) the calls of a waiting list whose partition was revoked
 * since they were taken; returns how many. */
static size_t drop_revoked(worker *w, call **pp)
{
    size_t n = 0;
    while (*pp) {
        call *c = *pp;
        if (c->generation == worker_generation(w, c->msg->partition)) {
            pp = &c->next_wait;
            continue;
        }
        *pp = c->next_wait;
        call_end(c, STOPPED);
        n++;
    }
    return n;
}

void worker_waiting_revoked(worker *w)
{
    w->n_parked -= drop_revoked(w, &w->parked);
    w->n_held -= drop_revoked(w, &w->held);
    sheaf_metric_set(w->met.parked, (int64_t)w->n_parked);
}
