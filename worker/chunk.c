/* chunk.c - one chunk message, from decode to recorded result, as an
 * explicit state machine on the runtime's loop.
 *
 *   TAKEN -> CHECKING -> LOADING -> LOOKING -> CALLING -> STORING -> ended
 *              |  recorded already (a redelivery costs no call) -----^
 *              |                      | hit: the cached answer ------^
 *              |                      `-- transient failure: PARKED (timer) -> LOADING
 *              `-- Redis failed at any step: HELD (timer) -> that step again
 *   a permanent failure: DEAD_LETTERING (until the DLQ has it) -> STORING (failed)
 *
 * Every arrow is a callback that returns at once: Redis answers through the
 * runtime's asynchronous connection (sheaf/state.h *_async, sheaf/cache.h),
 * the LLM through the engine on the same loop, the DLQ through the
 * producer's delivery report; waits are per-chunk timers.  Nothing sleeps,
 * nothing waits for a flush.
 *
 * CHECKING: a chunk already recorded (or of a cancelled job) is finished at
 * once.  LOADING: the pipeline by the version the message carries, from
 * the runtime (loaded and parsed once per version).  The map prompt is
 * rendered, then LOOKING: the LLM call cache (sheaf/cache.h) under the
 * hash of the very request the engine would get; a hit goes through the
 * same path as an answer from the provider (same validation, same record)
 * with zero usage, so the job's spent tokens do not grow; a miss is sent,
 * and its answer stored once it is accepted (for a schema, once it
 * validated: a rejected answer is never stored).  A resend after a
 * rejected answer skips the lookup: the cache cannot hold an answer for
 * it, and it is the same call, not another miss.  STORING: the idempotent
 * chunk-store script; only then is the message's offset finished in the
 * offset window, which stores offsets per partition up to the lowest
 * unfinished one.
 *
 * What cannot be processed is never dropped: an undecodable message, an
 * unknown job or pipeline, a prompt that cannot be rendered, or an LLM call
 * that still fails after llm.max_attempts (or is refused) goes to
 * <prefix>.dlq with the reason, and only once the DLQ has it (its delivery
 * report) is the offset finished; a chunk that fails for LLM or prompt
 * reasons is also recorded as failed so its document completes.  The
 * dead letter is counted against the job before the failure is recorded
 * (both on the one Redis connection, which keeps their order), so when
 * the failure completes the document (and maybe the job) the job's
 * dead-letter count already includes it; a crash in between dead-letters
 * the message twice, which is harmless.
 *
 * A chunk abandoned at shutdown or at a revoke (STOPPED) records nothing
 * and leaves its offset unfinished: the message is redelivered.
 *
 * Transient failures are never final.  A call that still fails after
 * llm.max_attempts for a cause a retry can change (timeouts, resets, 5xx,
 * 429, an open circuit) is parked: it keeps its offset unfinished and is
 * sent again after a growing delay (1 s doubling to 5 min), for up to
 * llm.retry_horizon_ms since it was first parked; the job shows the cause
 * (retry_reason, retry_ms) in `sheaf status`.  Only when the horizon is
 * over, or for a permanent cause (4xx refusals, an answer invalid after the
 * schema retries, a prompt that cannot be rendered), does the chunk fail
 * and go to the DLQ.
 *
 * Redis away: the chunk is held on a timer and the step that failed is
 * tried again after a delay that doubles to 5 s while Redis stays away;
 * the worker pauses fetching while anything is held and logs one line per
 * interval, not one per chunk.
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
 * instead of {"text": <answer>}; a free-text record is unchanged. */
#include <event2/event.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/buf.h"
#include "sheaf/cache.h"
#include "sheaf/codec.h"
#include "sheaf/jschema.h"
#include "sheaf/kafka.h"
#include "sheaf/log.h"
#include "sheaf/program.h"
#include "sheaf/util.h"
#include "chunk.h"

#define PROMPT_CAP ((size_t)64 << 20)

typedef enum {
    TAKEN,
    CHECKING,       /* is it recorded already? (Redis) */
    LOADING,        /* its pipeline (runtime) */
    LOOKING,        /* the call cache (Redis) */
    CALLING,        /* in the LLM engine */
    PARKED,         /* transient failure: timer, then LOADING */
    HELD,           /* Redis failed: timer, then the failed step again */
    DEAD_LETTERING, /* produced to the DLQ, waiting for the delivery report */
    STORING         /* the chunk-store script (Redis) */
} chunk_state;

/* DONE: finish the offset; STOPPED: abandon (redelivered). */
typedef enum { DONE, STOPPED } outcome;

/* What a map call sends, owned by the call: an answer that fails the
 * schema is asked for again from on_done, when the pipeline it came from
 * may have been evicted from the runtime (and freed) by newer jobs. */
typedef struct map_request {
    char *model;
    char *system;              /* "" when the stage has none */
    char *user;                /* NULL once no resend can come (memory) */
    double temperature;
    int max_tokens;
    uint32_t est_tokens;       /* what the limiter is charged per attempt */
} map_request;

/* A dead letter in flight: the producer's opaque.  The call may be
 * abandoned before the report comes; then c is NULL and the report only
 * frees this. */
/* A dead letter's delivery hook (sheaf/kafka.h): the call it continues,
 * NULL once the call was abandoned meanwhile. */
typedef struct dlq_token {
    sheaf_kafka_delivery hook; /* first: the produce's hook */
    call *c;
} dlq_token;

struct call {
    chunks *cs;
    call *prev, *next;         /* in cs->calls */
    chunk_state state;
    chunk_state held_step;     /* HELD: the step to try again */
    rd_kafka_message_t *msg;   /* owned; destroyed when the call ends */
    sheaf_chunk_msg m;
    int decoded;
    int text_dropped;          /* m.text freed after rendering (text_drop) */
    uint32_t generation;       /* of msg's partition when taken */
    map_request req;           /* owned */
    json_t *schema;            /* a reference to the pipeline's; NULL: free text */
    int json_answers;          /* answers checked against the schema so far */
    int json_max;              /* answers allowed: 1 + the pipeline's json_retries */
    sheaf_llm_usage usage;     /* summed over every answer of this call */
    char cache_key[SHEAF_CACHE_KEY_SIZE]; /* "" when the call is not cached */
    int cache_looked;          /* the first send looked the cache up */
    int from_cache;            /* the answer came from the cache */
    char *body;                /* LOOKING: the request body hashed for the key, sent on a miss */
    sheaf_lookup lookup;       /* the cache's answer, counted with the store */
    uint64_t lookup_saved;     /* tokens a hit saved */
    /* Parked: sent again at the timer, until llm.retry_horizon_ms after
     * parked_since. */
    int64_t parked_since;
    int parks;
    int held_again;            /* held before: a failed retry doubles the delay */
    struct event *timer;       /* owned, made when first needed */
    dlq_token *dlq;            /* DEAD_LETTERING */
    int dlq_then_record;       /* after the DLQ: record the failure (else end) */
    char *reason;              /* why it failed (DEAD_LETTERING, STORING failed) */
    char *record;              /* STORING: the record JSON */
    int record_ok;
};

static void step_check(call *c);
static void step_load(call *c);
static void step_store(call *c);
static void dead_letter(call *c, const char *reason, int then_record);
static void dlq_send(call *c);

/* ---- partitions: offsets and generations ---- */

/* Current generation of a partition (0 when never revoked). */
static uint32_t generation(const chunks *cs, int32_t partition)
{
    return partition >= 0 && (size_t)partition < cs->n_generation ? cs->generation[partition] : 0;
}

static void generation_bump(chunks *cs, int32_t partition)
{
    if (partition < 0) return;
    if ((size_t)partition >= cs->n_generation) {
        size_t n = (size_t)partition + 64;
        uint32_t *g = realloc(cs->generation, n * sizeof(*g));
        if (!g) return; /* stays 0: at worst an idempotent rewrite */
        memset(g + cs->n_generation, 0, (n - cs->n_generation) * sizeof(*g));
        cs->generation = g;
        cs->n_generation = n;
    }
    cs->generation[partition]++;
}

size_t chunks_revoke(chunks *cs, int32_t partition)
{
    size_t dropped = sheaf_offwin_forget(cs->window, partition);
    generation_bump(cs, partition);
    return dropped;
}

int chunks_init(chunks *cs)
{
    cs->window = sheaf_offwin_create();
    cs->stores = sheaf_chunk_stores_new(cs->rt->redis);
    return cs->window && cs->stores ? 0 : -1;
}

void chunks_clear(chunks *cs)
{
    sheaf_chunk_stores_destroy(cs->stores);
    cs->stores = NULL;
    sheaf_offwin_destroy(cs->window);
    cs->window = NULL;
    free(cs->generation);
    cs->generation = NULL;
    cs->n_generation = 0;
}

/* ---- ending a call ---- */

/* Ends a call: with DONE its offset is finished in the window and every
 * offset that became committable is stored; with STOPPED the message is
 * abandoned (redelivered later).  Frees the call. */
static void call_end(call *c, outcome out)
{
    chunks *cs = c->cs;
    int32_t part = c->msg->partition;
    if (c->state == PARKED) cs->n_parked--;
    if (c->state == HELD) cs->n_held--;
    if (c->state == LOADING) sheaf_runtime_pipeline_cancel(cs->rt, c);
    if (c->dlq) c->dlq->c = NULL; /* the report, if it still comes, finds nobody */
    if (out == STOPPED) {
        cs->abandoned++;
    } else if (c->generation == generation(cs, part) &&
               sheaf_offwin_finish(cs->window, part, c->msg->offset) == SHEAF_OK) {
        int64_t next = sheaf_offwin_take(cs->window, part);
        if (next >= 0) {
            rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
            rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(c->msg->rkt), part)
                ->offset = next;
            rd_kafka_resp_err_t err = rd_kafka_offsets_store(cs->consumer, l);
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
    if (c->prev) c->prev->next = c->next;
    else cs->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    cs->n_calls--;
    sheaf_metric_set(cs->met.parked, (int64_t)cs->n_parked);
    if (c->timer) event_free(c->timer);
    free(c->req.model);
    free(c->req.system);
    free(c->req.user);
    free(c->reason);
    free(c->record);
    free(c->body);
    json_decref(c->schema);
    if (c->decoded) sheaf_chunk_msg_clear(&c->m);
    rd_kafka_message_destroy(c->msg);
    free(c);
    if (cs->room) cs->room(cs->room_ud);
}

/* Arms the call's timer to run fn after ms. */
static int call_timer(call *c, int64_t ms, event_callback_fn fn)
{
    struct timeval tv = {(long)(ms / 1000), (long)(ms % 1000) * 1000};
    if (c->timer) event_free(c->timer);
    c->timer = evtimer_new(c->cs->rt->base, fn, c);
    return c->timer && evtimer_add(c->timer, &tv) == 0 ? 0 : -1;
}

/* ---- waiting for Redis ---- */

#define REDIS_WAIT_FIRST_MS 200
#define REDIS_WAIT_MAX_MS 5000
#define REDIS_LOG_EVERY_MS 10000

static void on_held(evutil_socket_t fd, short what, void *arg)
{
    call *c = arg;
    (void)fd;
    (void)what;
    c->cs->n_held--;
    c->held_again = 1;
    switch (c->held_step) {
    case CHECKING: step_check(c); break;
    case LOADING: step_load(c); break;
    default: step_store(c); break;
    }
}

/* Redis failed for the call at step: it waits on a timer and tries the
 * step again.  At shutdown it is abandoned instead. */
static void hold(call *c, chunk_state step, const char *errstr)
{
    chunks *cs = c->cs;
    int64_t now = sheaf_mono_ms();
    if (sheaf_stop) {
        call_end(c, STOPPED);
        return;
    }
    sheaf_runtime_redis_failed(cs->rt, errstr);
    if (!cs->redis_down_ms) {
        cs->redis_down_ms = now;
        cs->redis_logged_ms = now;
        cs->redis_delay_ms = REDIS_WAIT_FIRST_MS;
        sheaf_error("worker", "%s: %s; consumption paused, chunks held until it answers",
                    sheaf_redis_trouble(errstr), errstr);
    } else if (now - cs->redis_logged_ms >= REDIS_LOG_EVERY_MS) {
        cs->redis_logged_ms = now;
        sheaf_error("worker", "%s for %lld s: %zu chunk(s) held: %s", sheaf_redis_trouble(errstr),
                    (long long)((now - cs->redis_down_ms) / 1000), cs->n_held + 1, errstr);
    }
    if (c->held_again) {
        /* Still failing: wait longer before the next round. */
        cs->redis_delay_ms = cs->redis_delay_ms * 2 > REDIS_WAIT_MAX_MS ? REDIS_WAIT_MAX_MS
                                                                        : cs->redis_delay_ms * 2;
    }
    c->state = HELD;
    c->held_step = step;
    cs->n_held++;
    cs->rt->redis_held = cs->n_held;
    if (call_timer(c, cs->redis_delay_ms, on_held) != 0) call_end(c, STOPPED);
}

/* A Redis step worked: after an outage, say so once nothing is held. */
static void redis_ok(call *c)
{
    chunks *cs = c->cs;
    c->held_again = 0;
    if (cs->redis_down_ms && !cs->n_held) {
        sheaf_info("worker", "Redis answers again after %lld s; consumption resumed",
                   (long long)((sheaf_mono_ms() - cs->redis_down_ms) / 1000));
        cs->redis_down_ms = 0;
        cs->redis_delay_ms = REDIS_WAIT_FIRST_MS;
    }
}

/* ---- records ---- */

/* {"<key>":value}, the bytes jansson's compact dump gave (which was {}
 * for a value that is not UTF-8: never an answer, which was parsed as
 * JSON).  NULL on no memory. */
static char *result_record(const char *key, const char *value)
{
    sheaf_buf b;
    sheaf_err err;
    sheaf_buf_init(&b, SIZE_MAX / 2);
    if (sheaf_buf_append(&b, "{", 1) != SHEAF_OK ||
        sheaf_buf_json_string(&b, key, strlen(key)) != SHEAF_OK ||
        sheaf_buf_append(&b, ":", 1) != SHEAF_OK)
        goto fail;
    err = sheaf_buf_json_string(&b, value, strlen(value));
    if (err == SHEAF_ERR_INVALID) { /* jansson left the object empty */
        sheaf_buf_reset(&b);
        err = sheaf_buf_append(&b, "{", 1);
    }
    if (err == SHEAF_OK && sheaf_buf_append(&b, "}", 1) == SHEAF_OK) return sheaf_buf_steal(&b);
fail:
    sheaf_buf_free(&b);
    return NULL;
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

static void on_stored(void *ud, const sheaf_state_reply *r)
{
    call *c = ud;
    chunks *cs = c->cs;
    const sheaf_chunk_msg *m = &c->m;
    if (r->err == SHEAF_ERR_NOT_FOUND) {
        redis_ok(c);
        dead_letter(c, r->errstr, 0);
        return;
    }
    if (r->err != SHEAF_OK) {
        hold(c, STORING, r->errstr);
        return;
    }
    redis_ok(c);
    if (r->n == SHEAF_CHUNK_DUPLICATE) cs->duplicates++;
    if (r->n == SHEAF_CHUNK_DOC_READY)
        sheaf_info("worker", "job %s doc %s: all %u chunks recorded, ready to combine", m->job,
                   m->doc, m->count);
    if (c->record_ok) {
        cs->processed++;
        sheaf_metric_inc(cs->met.processed);
    } else {
        cs->failed++;
        sheaf_metric_inc(cs->met.failed);
    }
    call_end(c, DONE);
}

/* The chunk's store goes with the others of its job that finish while
 * one is on its way (sheaf_chunk_stores): one script per batch. */
static void step_store(call *c)
{
    chunks *cs = c->cs;
    sheaf_chunk_result res = {.ok = c->record_ok, .record = c->record,
                              .prompt_tokens = c->usage.prompt_tokens,
                              .completion_tokens = c->usage.completion_tokens,
                              .cache = c->lookup, .tokens_saved = c->lookup_saved};
    c->state = STORING;
    sheaf_chunk_stores_put(cs->stores, &c->m, &res, on_stored, c);
}

/* Records the chunk: record (owned from here) is its JSON. */
static void store(call *c, int ok, char *record)
{
    if (!record) {
        sheaf_error("worker", "out of memory recording job %s doc %s chunk %u", c->m.job,
                    c->m.doc, c->m.idx);
        call_end(c, STOPPED);
        return;
    }
    free(c->record);
    c->record = record;
    c->record_ok = ok;
    step_store(c);
}

/* ---- dead letters ---- */

#define DLQ_RETRY_MS 1000

static void on_dlq_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dlq_send(arg);
}

static void dlq_count_failed(void *ud, const sheaf_state_reply *r)
{
    (void)ud;
    if (r->err != SHEAF_OK) sheaf_warn("worker", "could not count a dead letter: %s", r->errstr);
}

/* The dead letter reached the DLQ, or did not: the call goes on. */
static void dlq_delivered(sheaf_kafka_delivery *d, rd_kafka_resp_err_t err)
{
    dlq_token *t = (dlq_token *)d;
    const char *errstr = rd_kafka_err2str(err);
    call *c = t->c;
    free(t);
    if (!c) return; /* abandoned meanwhile */
    c->dlq = NULL;
    chunks *cs = c->cs;
    if (err) {
        sheaf_error("worker", "cannot dead-letter to %s: %s", cs->dlq_topic, errstr);
        if (sheaf_stop || call_timer(c, DLQ_RETRY_MS, on_dlq_retry) != 0) call_end(c, STOPPED);
        return;
    }
    cs->dead_lettered++;
    sheaf_metric_inc(cs->met.dlq);
    if (c->decoded) sheaf_state_job_dlq_incr_async(cs->rt->redis, c->m.job, dlq_count_failed, NULL);
    if (!c->dlq_then_record) {
        call_end(c, DONE);
        return;
    }
    /* The call's usage is recorded with the failure: answers rejected by
     * the schema were paid for. */
    store(c, 0, result_record("error", c->reason));
}

/* Produces the dead letter; its delivery report continues the call. */
static void dlq_send(call *c)
{
    chunks *cs = c->cs;
    char errstr[SHEAF_ERRSTR_SIZE];
    dlq_token *t = malloc(sizeof(*t));
    if (!t) {
        call_end(c, STOPPED);
        return;
    }
    t->hook.done = dlq_delivered;
    t->c = c;
    c->state = DEAD_LETTERING;
    if (sheaf_kafka_dlq_send(cs->producer, cs->dlq_topic, c->msg, c->reason,
                             c->decoded ? c->m.job : NULL, &t->hook, errstr,
                             sizeof(errstr)) == SHEAF_OK) {
        c->dlq = t;
        return;
    }
    free(t);
    sheaf_error("worker", "cannot dead-letter to %s: %s", cs->dlq_topic, errstr);
    if (sheaf_stop || call_timer(c, DLQ_RETRY_MS, on_dlq_retry) != 0) call_end(c, STOPPED);
}

/* Sends the message to the DLQ with reason; then, with then_record, the
 * failure is recorded (so its document completes), else the call ends. */
static void dead_letter(call *c, const char *reason, int then_record)
{
    const rd_kafka_message_t *msg = c->msg;
    sheaf_warn("worker", "dead-lettering %s [%d] offset %lld%s%s: %s",
               rd_kafka_topic_name(msg->rkt), (int)msg->partition, (long long)msg->offset,
               c->decoded ? " job " : "", c->decoded ? c->m.job : "", reason);
    free(c->reason);
    if (!(c->reason = strdup(reason))) {
        call_end(c, STOPPED);
        return;
    }
    c->dlq_then_record = then_record;
    dlq_send(c);
}

/* A chunk that failed for good: dead-lettered, then recorded failed. */
static void fail_chunk(call *c, const char *reason)
{
    dead_letter(c, reason, 1);
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

/* ---- asking the LLM ---- */

static void on_done(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr);
static void answer(call *c, const char *content);

/* The engine's request for the call's map request (pointers into c->req). */
static sheaf_llm_request map_llm_request(const call *c, sheaf_llm_message msgs[2])
{
    const map_request *r = &c->req;
    size_t n = 0;
    if (r->system[0]) msgs[n++] = (sheaf_llm_message){"system", r->system};
    msgs[n++] = (sheaf_llm_message){"user", r->user};
    return (sheaf_llm_request){.model = r->model,
                               .temperature = r->temperature,
                               .max_tokens = r->max_tokens,
                               .messages = msgs,
                               .n_messages = n,
                               .json_schema = strcmp(c->cs->cfg->llm_structured_output, "prompt")
                                                  ? c->schema : NULL};
}

/* Submits the call's map request to the engine; the call goes on in
 * on_done.  The engine copies the request into its body, so once no
 * resend can follow the prompts are dropped: a call in flight holds its
 * prompt once, not twice. */
static void step_call(call *c)
{
    sheaf_llm_message msgs[2];
    sheaf_llm_request req = map_llm_request(c, msgs);
    char *body = c->body; /* the engine's from here */
    c->body = NULL;
    c->state = CALLING;
    c->from_cache = 0;
    if (sheaf_llm_async_submit_body(c->cs->rt->llm, &req, body, c->req.est_tokens, on_done, c) !=
        SHEAF_OK) {
        sheaf_error("worker", "out of memory submitting job %s doc %s chunk %u", c->m.job,
                    c->m.doc, c->m.idx);
        call_end(c, STOPPED);
        return;
    }
    if (!c->schema || c->json_answers + 1 >= c->json_max) {
        free(c->req.system);
        free(c->req.user);
        c->req.system = c->req.user = NULL;
    }
}

/* The cache's answer: a hit is handled like the provider's answer with
 * zero usage; a miss (or Redis trouble: the cache never fails a chunk)
 * is sent. */
static void on_cached(void *ud, int hit, char **content, const sheaf_llm_usage *saved,
                      const char *errstr)
{
    call *c = ud;
    chunks *cs = c->cs;
    if (sheaf_stop && !hit) {
        call_end(c, STOPPED); /* a new call would be abandoned by the drain anyway */
        return;
    }
    if (errstr[0])
        sheaf_warn("worker", "job %s doc %s chunk %u: %s; calling the LLM", c->m.job, c->m.doc,
                   c->m.idx, errstr);
    c->lookup = hit ? SHEAF_LOOKUP_HIT : SHEAF_LOOKUP_MISS;
    c->lookup_saved = hit && saved ? saved->prompt_tokens + saved->completion_tokens : 0;
    sheaf_metric_inc(hit ? cs->rt->llm_met.cache_hits : cs->rt->llm_met.cache_misses);
    if (!hit) {
        step_call(c);
        return;
    }
    sheaf_debug("worker", "job %s doc %s chunk %u: cache hit (%llu+%llu tokens saved)",
                c->m.job, c->m.doc, c->m.idx, (unsigned long long)saved->prompt_tokens,
                (unsigned long long)saved->completion_tokens);
    c->from_cache = 1;
    free(c->body);
    c->body = NULL;
    answer(c, *content);
}

/* LOOKING (first send of a call that may be cached), else CALLING. */
static void step_send(call *c)
{
    sheaf_llm_message msgs[2];
    sheaf_llm_request req = map_llm_request(c, msgs);
    if (!c->cache_looked) {
        c->cache_looked = 1;
        /* The key is the hash of the body itself: what is hashed is what
         * is sent (the same bytes, made once). */
        if (sheaf_cache_usable(c->cs->cfg, &req) && (c->body = sheaf_llm_request_json(&req)) &&
            sheaf_cache_key_body(c->cs->cfg->llm_base_url, c->body, strlen(c->body),
                                 c->cache_key) == SHEAF_OK) {
            c->state = LOOKING;
            sheaf_cache_get_async(c->cs->rt->redis, c->cache_key, on_cached, c);
            return;
        }
        c->cache_key[0] = '\0';
    }
    step_call(c);
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
static void answer_rejected(call *c, const char *why)
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
        else step_call(c);
        return;
    }
    snprintf(reason, sizeof(reason),
             "map answer is not valid JSON for the schema after %d attempt(s): %s",
             c->json_answers, why);
    sheaf_warn("worker", "job %s doc %s chunk %u: %s", c->m.job, c->m.doc, c->m.idx, reason);
    fail_chunk(c, reason);
}

/* An answer (the provider's or the cache's): checked, stored in the cache
 * when new, recorded. */
static void answer(call *c, const char *content)
{
    char why[SHEAF_ERRSTR_SIZE];
    json_t *data = NULL;
    char *json;
    if (c->schema && !(data = checked_answer(c, content, why, sizeof(why)))) {
        answer_rejected(c, why);
        return;
    }
    json = data ? schema_record(content, data, &c->m) : result_record("text", content);
    json_decref(data);
    /* Accepted: stored for the next identical call (a hit is not stored again). */
    if (json && c->cache_key[0] && !c->from_cache) {
        sheaf_llm_usage u = c->usage;
        sheaf_cache_put_async(c->cs->rt->redis, c->cs->cfg, c->cache_key, content, &u);
    }
    sheaf_debug("worker", "job %s doc %s chunk %u/%u done (%llu+%llu tokens)", c->m.job,
                c->m.doc, c->m.idx + 1, c->m.count, (unsigned long long)c->usage.prompt_tokens,
                (unsigned long long)c->usage.completion_tokens);
    store(c, 1, json);
}

/* ---- parking transient failures ---- */

#define PARK_FIRST_MS 1000
#define PARK_MAX_MS 300000
#define PARK_FLEET_MS 30000

static void on_parked(evutil_socket_t fd, short what, void *arg)
{
    call *c = arg;
    (void)fd;
    (void)what;
    c->cs->n_parked--;
    sheaf_metric_set(c->cs->met.parked, (int64_t)c->cs->n_parked);
    /* The prompt is rendered again (the first send dropped it) from the
     * pipeline by version. */
    free(c->req.model);
    free(c->req.system);
    free(c->req.user);
    json_decref(c->schema);
    memset(&c->req, 0, sizeof(c->req));
    c->schema = NULL;
    c->json_answers = 0;
    step_load(c);
}

static void waiting_noted(void *ud, const sheaf_state_reply *r)
{
    (void)ud;
    if (r->err != SHEAF_OK) sheaf_debug("worker", "cannot record the retry reason: %s", r->errstr);
}

/* Parks the call, or fails it when llm.retry_horizon_ms is over.  A fleet
 * condition (fleet = 1: the key or the model is refused) has no horizon and
 * a fixed probe period: it is fixed by an operator, not by time. */
static void park(call *c, const char *why, int fleet)
{
    chunks *cs = c->cs;
    char reason[SHEAF_ERRSTR_SIZE + 128];
    int64_t now = sheaf_mono_ms();
    if (!c->parked_since) c->parked_since = now;
    if (!fleet && now - c->parked_since >= cs->cfg->llm_retry_horizon_ms) {
        snprintf(reason, sizeof(reason), "provider failing for %lld s (llm.retry_horizon_ms): %s",
                 (long long)((now - c->parked_since) / 1000), why);
        sheaf_warn("worker", "job %s doc %s chunk %u: %s", c->m.job, c->m.doc, c->m.idx, reason);
        fail_chunk(c, reason);
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
    c->state = PARKED;
    cs->n_parked++;
    sheaf_metric_set(cs->met.parked, (int64_t)cs->n_parked);
    if (call_timer(c, delay, on_parked) != 0) {
        call_end(c, STOPPED);
        return;
    }
    if (c->parks == 1 || c->parks % 8 == 0)
        sheaf_warn("worker", "job %s doc %s chunk %u: provider failing, retrying in %lld ms "
                   "(parked %d time(s)): %s", c->m.job, c->m.doc, c->m.idx, (long long)delay,
                   c->parks, why);
    /* What the job waits on, for `sheaf status` (not a failure). */
    sheaf_state_job_waiting_async(cs->rt->redis, c->m.job, why, waiting_noted, NULL);
}

static void on_done(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr)
{
    call *c = ud;
    chunks *cs = c->cs;
    sheaf_runtime *rt = cs->rt;
    char reason[SHEAF_ERRSTR_SIZE + 64], why[SHEAF_ERRSTR_SIZE];

    if (err == SHEAF_ERR_STOPPED) {
        call_end(c, STOPPED);
        return;
    }
    c->usage.prompt_tokens += res->usage.prompt_tokens;
    c->usage.completion_tokens += res->usage.completion_tokens;
    if (err == SHEAF_ERR_LLM_RETRY) {
        park(c, errstr, 0);
        return;
    }
    if (err == SHEAF_ERR_LLM_FATAL &&
        sheaf_llm_fleet_cause(res->http_status, errstr, why, sizeof(why))) {
        if (strcmp(rt->fleet_cause, why) != 0)
            sheaf_error("worker", "%s; consumption paused, no chunk fails for it", why);
        snprintf(rt->fleet_cause, sizeof(rt->fleet_cause), "%s", why);
        park(c, why, 1);
        return;
    }
    if (err == SHEAF_OK && rt->fleet_cause[0]) {
        sheaf_info("worker", "the LLM endpoint answers again; resuming (%s)", rt->fleet_cause);
        rt->fleet_cause[0] = '\0';
    }
    if (err != SHEAF_OK) {
        snprintf(reason, sizeof(reason), "LLM call failed after %d attempt(s): %s", res->attempts,
                 errstr);
        sheaf_warn("worker", "job %s doc %s chunk %u: %s", c->m.job, c->m.doc, c->m.idx, reason);
        fail_chunk(c, reason);
        return;
    }
    answer(c, res->content);
}

/* ---- rendering ---- */

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

/* The chunk's text is needed only to render its prompt, which then holds
 * it (and, once submitted, the engine's request body): kept on in the
 * decoded message as well, it was a third copy of every live chunk's text
 * (two windows of them) beside the Kafka message's own.  Dropped after
 * rendering, decoded again from the message for a resend after a park. */
static void text_drop(call *c)
{
    free(c->m.text);
    c->m.text = NULL;
    c->m.text_len = 0;
    c->text_dropped = 1;
}

/* The text back before a new rendering: 0, or -1 (no memory) with errstr. */
static int text_restore(call *c, char *errstr, size_t errlen)
{
    if (!c->text_dropped) return 0;
    sheaf_chunk_msg_clear(&c->m);
    c->decoded = 0;
    if (sheaf_chunk_decode(c->msg->payload, c->msg->len, &c->m, errstr, errlen) != SHEAF_OK)
        return -1;
    c->decoded = 1;
    c->text_dropped = 0;
    return 0;
}

/* Renders the map prompts of p into the call's own request, then sends. */
static void step_render(call *c, const sheaf_pipeline *p)
{
    chunks *cs = c->cs;
    char errstr[SHEAF_ERRSTR_SIZE] = "", reason[SHEAF_ERRSTR_SIZE + 32];
    const sheaf_chunk_msg *m = &c->m;
    sheaf_buf user, system;
    map_vars vars = {.m = m};

    if (text_restore(c, errstr, sizeof(errstr)) != 0) {
        /* It decoded once: only memory can be missing.  Redelivered. */
        sheaf_error("worker", "decoding a parked chunk again: %s; message redelivered later",
                    errstr);
        call_end(c, STOPPED);
        return;
    }
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
        sheaf_prompt_render(p->map.user, map_var, &vars, &user, errstr, sizeof(errstr)) ||
        (p->schema && strcmp(cs->cfg->llm_structured_output, "prompt") == 0 &&
         append_schema(&system, p->schema, errstr, sizeof(errstr)) != SHEAF_OK)) {
        snprintf(reason, sizeof(reason), "map prompt: %s", errstr);
        sheaf_buf_free(&user);
        sheaf_buf_free(&system);
        fail_chunk(c, reason);
        return;
    }
    /* The limiter is charged what the provider will count: the prompt
     * (estimated) plus the completion budget. */
    uint64_t est = (uint64_t)sheaf_estimate_tokens(system.data ? system.data : "", system.len) +
                   sheaf_estimate_tokens(user.data, user.len) +
                   (uint64_t)(p->map.max_tokens > 0 ? p->map.max_tokens : 0);
    /* Copies, not pointers into p: the runtime may evict p before a
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
    sheaf_buf_free(&user);
    sheaf_buf_free(&system);
    if (!c->req.model || !c->req.system || !c->req.user) {
        sheaf_error("worker", "out of memory submitting job %s doc %s chunk %u", m->job, m->doc,
                    m->idx);
        call_end(c, STOPPED);
        return;
    }
    text_drop(c);
    step_send(c);
}

/* ---- taking a message ---- */

static void on_pipeline(void *ud, const sheaf_pipeline *p, sheaf_err err, const char *errstr)
{
    call *c = ud;
    char reason[SHEAF_ERRSTR_SIZE + 64];
    if (p) {
        redis_ok(c);
        step_render(c, p);
        return;
    }
    if (err == SHEAF_ERR_STOPPED) {
        call_end(c, STOPPED);
        return;
    }
    if (c->parks) {
        /* A resend: Redis trouble, or the pipeline is gone. */
        park(c, errstr, 0);
        return;
    }
    if (err == SHEAF_ERR_REDIS) {
        hold(c, LOADING, errstr);
        return;
    }
    /* Recorded failed too, so its document completes and the job ends
     * (failed, with the reason) instead of running for ever. */
    snprintf(reason, sizeof(reason), "pipeline %s: %s", c->m.pv, errstr);
    fail_chunk(c, reason);
}

static void step_load(call *c)
{
    const sheaf_pipeline *p;
    c->state = LOADING;
    if ((p = sheaf_runtime_pipeline(c->cs->rt, c->m.pv, on_pipeline, c))) step_render(c, p);
}

static void on_checked(void *ud, const sheaf_state_reply *r)
{
    call *c = ud;
    if (r->err != SHEAF_OK) {
        hold(c, CHECKING, r->errstr);
        return;
    }
    redis_ok(c);
    if (r->n) {
        c->cs->duplicates++;
        call_end(c, DONE);
        return;
    }
    step_load(c);
}

/* A chunk already recorded (or of a cancelled job) costs no call. */
static void step_check(call *c)
{
    c->state = CHECKING;
    sheaf_chunk_stores_check(c->cs->stores, &c->m, on_checked, c);
}

void chunks_take(chunks *cs, rd_kafka_message_t *msg)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "", reason[SHEAF_ERRSTR_SIZE + 64];
    call *c = calloc(1, sizeof(*c));

    if (!c) {
        sheaf_error("worker", "out of memory; message redelivered later");
        rd_kafka_message_destroy(msg);
        return;
    }
    c->cs = cs;
    c->msg = msg;
    c->state = TAKEN;
    c->generation = generation(cs, msg->partition);
    c->next = cs->calls;
    if (cs->calls) cs->calls->prev = c;
    cs->calls = c;
    cs->n_calls++;
    if (sheaf_offwin_begin(cs->window, msg->partition, msg->offset) != SHEAF_OK) {
        /* An offset at or below one already taken: the partition was
         * rewound (seek, reset).  Start its window afresh. */
        sheaf_offwin_forget(cs->window, msg->partition);
        sheaf_offwin_begin(cs->window, msg->partition, msg->offset);
    }
    if (sheaf_chunk_decode(msg->payload, msg->len, &c->m, errstr, sizeof(errstr)) != SHEAF_OK) {
        snprintf(reason, sizeof(reason), "not a valid sheaf chunk message: %s", errstr);
        dead_letter(c, reason, 0);
        return;
    }
    c->decoded = 1;
    step_check(c);
}

/* ---- abandoning ---- */

/* Abandons calls that wait on a timer (parked, held, a DLQ retry) and,
 * with all, also those waiting for their pipeline or a DLQ delivery
 * report; only those of revoked partitions with revoked_only.  Calls with
 * a Redis command or an LLM call under way are not touched: their
 * callback comes (at the latest when the runtime goes) and ends them. */
static void abandon_where(chunks *cs, int all, int revoked_only)
{
    call *c = cs->calls, *next;
    for (; c; c = next) {
        next = c->next;
        int timer = c->state == PARKED || c->state == HELD ||
                    (c->state == DEAD_LETTERING && !c->dlq);
        int waiting = c->state == LOADING || c->state == DEAD_LETTERING;
        if (!timer && !(all && waiting)) continue;
        if (revoked_only && c->generation == generation(cs, c->msg->partition)) continue;
        call_end(c, STOPPED);
    }
}

void chunks_abandon(chunks *cs, int all)
{
    abandon_where(cs, all, 0);
}

void chunks_abandon_revoked(chunks *cs)
{
    abandon_where(cs, 0, 1);
}
