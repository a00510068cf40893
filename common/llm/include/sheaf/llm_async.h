/* sheaf/llm_async.h - the one LLM client: many calls in flight from one
 * thread (libcurl multi on a libevent loop).
 *
 * A worker's throughput is min(C / L, R) for provider latency L, fleet
 * concurrency C and rate limit R (see DESIGN.md), so a worker keeps many
 * requests in flight instead of one thread per call.  The caller submits
 * calls and turns the crank with sheaf_llm_async_run(); each submitted call
 * ends in exactly one callback, in completion order (not submission order).
 *
 * The request body, response parsing, status classes, Retry-After
 * handling and key scrubbing are the wire format's (sheaf/llm.h,
 * common/llm/llm_wire.c); the engine adds:
 *
 *   - retries inside the engine, up to llm.max_attempts: retryable failures
 *     (429, 408, 409, 5xx, transport errors, timeouts, a truncated or
 *     non-JSON 2xx) wait with exponential backoff and full jitter from
 *     llm.backoff_ms (cap 30 s), or the server's Retry-After when longer
 *     (cap 300 s).  Waits are timers, not sleeps: other calls proceed.
 *   - admission: a call starts when one of max_in_flight slots is free, the
 *     limiter admits it (each attempt is charged) and the circuit breaker
 *     lets it.  Queued calls start oldest first, retries before new calls
 *     submitted after them, so Kafka offsets can be committed early.
 *   - back-pressure from the provider: a 429 penalizes the limiter by its
 *     Retry-After (else the current backoff ceiling); a response with
 *     x-ratelimit-remaining-requests: 0 penalizes it by
 *     x-ratelimit-reset-requests ("1s", "6m0s", "250ms").  Either also
 *     holds back this engine's own new starts for that long, with or
 *     without a limiter.
 *   - a circuit breaker: after llm.breaker_threshold (10) consecutive
 *     transient failures (connection errors, timeouts, 5xx, 408) no new
 *     attempt starts for a cooldown (llm.breaker_cooldown_ms, 5 s, doubled
 *     on each failed probe up to llm.breaker_max_cooldown_ms, 60 s); then
 *     one probe call goes (half-open); its success closes
 *     the circuit, its failure opens it again.  Queued calls wait rather
 *     than burn attempts against a dead endpoint.  429 and other 4xx are an
 *     answer from a live server and reset the count.
 *
 * Connections: HTTP/2 multiplexing when the server offers it over TLS
 * (CURL_HTTP_VERSION_2TLS, CURLPIPE_MULTIPLEX), else up to max_in_flight
 * kept-alive HTTP/1.1 connections.  Easy handles are pooled, not created
 * per call.  Memory per call: the request body, a small record, and while
 * in flight a response buffer capped at llm.max_response_bytes.
 *
 * Not thread-safe: one engine is used by one thread. */
#ifndef SHEAF_LLM_ASYNC_H
#define SHEAF_LLM_ASYNC_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/llm.h"
#include "sheaf/metrics.h"

/* The breaker's settings where a config has none (zeros): the defaults of
 * llm.breaker_threshold, llm.breaker_cooldown_ms, llm.breaker_max_cooldown_ms. */
#define SHEAF_LLM_BREAKER_THRESHOLD 10
#define SHEAF_LLM_BREAKER_COOLDOWN_MS 5000
#define SHEAF_LLM_BREAKER_MAX_COOLDOWN_MS 60000

/* A fleet-wide rate limiter as the engine sees it; the worker binds it to
 * sheaf_ratelimit (Redis GCRA), tests to a fake.  Both functions are called
 * from sheaf_llm_async_run() / _submit() on the engine's thread.
 *
 *   acquire:  admit one attempt costing tokens.  SHEAF_OK with *wait_ms 0:
 *             admitted (and charged); SHEAF_OK with *wait_ms > 0: not yet,
 *             ask again after that long.  Any other return (Redis down):
 *             the engine asks again after SHEAF_LLM_LIMITER_ERROR_WAIT_MS;
 *             calls wait, they do not fail.  The implementation logs why.
 *   penalize: the provider pushed back: admit nothing for ms from now.
 *
 * Binding the Redis limiter (sheaf/ratelimit.h), in the worker:
 *
 *   static sheaf_err rl_acquire(void *ud, uint32_t tokens, int64_t *wait_ms) {
 *       char e[SHEAF_ERRSTR_SIZE];
 *       sheaf_err err = sheaf_ratelimit_acquire(ud, tokens, wait_ms, e, sizeof(e));
 *       if (err != SHEAF_OK) sheaf_warn("worker", "rate limiter: %s", e);
 *       return err;
 *   }
 *   static void rl_penalize(void *ud, int64_t ms) {
 *       char e[SHEAF_ERRSTR_SIZE];
 *       if (sheaf_ratelimit_penalize(ud, ms, e, sizeof(e)) != SHEAF_OK)
 *           sheaf_warn("worker", "rate limiter penalty: %s", e);
 *   }
 *   sheaf_llm_limiter lim = {rl_acquire, rl_penalize, rl};  // rl outlives the engine
 */
/* The answer to an asynchronous acquire: as the synchronous one's return
 * and *wait_ms.  engine is what acquire_async was given. */
typedef void (*sheaf_llm_admit_fn)(void *engine, sheaf_err err, int64_t wait_ms);

typedef struct sheaf_llm_limiter {
    sheaf_err (*acquire)(void *ud, uint32_t tokens, int64_t *wait_ms);
    void (*penalize)(void *ud, int64_t ms);
    void *ud;
    /* Instead of acquire (the runtime's, sheaf_ratelimit_bind_async): asks
     * and returns at once; admit(engine, ...) fires exactly once, later
     * or at once.  The engine asks for one call at a time. */
    void (*acquire_async)(void *ud, uint32_t tokens, sheaf_llm_admit_fn admit, void *engine);
} sheaf_llm_limiter;

#define SHEAF_LLM_LIMITER_ERROR_WAIT_MS 500

/* Of a limit learned from the provider's headers: what is used of it. */
#define SHEAF_LLM_LEARN_MARGIN 0.97

/* Called exactly once per accepted call, from sheaf_llm_async_run(),
 * sheaf_llm_async_abort_all() or sheaf_llm_async_destroy().
 *   err     SHEAF_OK; SHEAF_ERR_LLM_FATAL (not retryable: 4xx other than
 *           429/408/409, an unusable answer, an invalid request);
 *           SHEAF_ERR_LLM_RETRY (llm.max_attempts used up on retryable
 *           failures: worth trying again much later); SHEAF_ERR_STOPPED
 *           (aborted at shutdown); SHEAF_ERR_NOMEM or SHEAF_ERR_INTERNAL
 *           (no memory or a curl failure to start a transfer).
 *   result  never NULL; valid only during the callback.  On SHEAF_OK
 *           result->content is the answer: the callback may take it (set
 *           result->content = NULL and free() it later), otherwise it is
 *           freed after the callback returns.  http_status is the last seen,
 *           attempts the number of HTTP attempts made.
 *   errstr  never NULL: "" on success, else why (the API key scrubbed).
 * The callback may submit new calls and may call _abort_all; it must not
 * call _destroy (refused with an error log) and a nested _run returns 0. */
typedef void (*sheaf_llm_done_fn)(void *ud, sheaf_err err, sheaf_llm_result *result,
                                  const char *errstr);

typedef enum sheaf_llm_breaker_state {
    SHEAF_LLM_BREAKER_CLOSED = 0,    /* calls flow */
    SHEAF_LLM_BREAKER_OPEN = 1,      /* cooling down: nothing starts */
    SHEAF_LLM_BREAKER_HALF_OPEN = 2  /* cooldown over: one probe call decides */
} sheaf_llm_breaker_state;

typedef struct sheaf_llm_stats {
    uint64_t submitted;      /* calls accepted by sheaf_llm_async_submit */
    uint64_t started;        /* HTTP attempts started (retries included) */
    uint64_t completed_ok;   /* callbacks fired with SHEAF_OK */
    uint64_t failed;         /* callbacks fired with an error (STOPPED included) */
    uint64_t retries;        /* attempts scheduled again after a retryable failure */
    uint64_t http_429;       /* 429 responses seen */
    uint64_t penalties;      /* limiter penalties sent (429, remaining-requests 0) */
    uint64_t breaker_opens;  /* times the circuit opened (failed probes included) */
    sheaf_llm_breaker_state breaker;  /* current state */
    uint64_t latency_ms_sum; /* over completed_ok calls: submit to callback, ms */
    uint64_t attempt_ms_sum; /* over finished HTTP attempts: their duration, ms */
    size_t queued;           /* waiting for a slot, the limiter or the breaker */
    size_t waiting;          /* waiting for a retry timer */
    size_t in_flight;        /* HTTP requests under way */
    size_t window;           /* calls allowed in flight now: max_in_flight, less after
                              * 429s without limit headers (AIMD) */
    char breaker_reason[256]; /* why the circuit last opened ("" never) */
} sheaf_llm_stats;

/* Prometheus metrics the engine keeps up to date (sheaf/metrics.h); any
 * may be NULL.  Several engines (one per thread) may share them: counters
 * and the histogram only grow, and the gauge gets each engine's changes.
 *   in_flight       gauge: HTTP requests under way
 *   duration        histogram, seconds: each call called back (aborted
 *                   ones excepted), from submit to callback
 *   retries, http_429               counters, as in sheaf_llm_stats
 *   prompt_tokens, completion_tokens counters: usage of every answer
 *   cache_hits, cache_misses         counters, fed by the caller: the call
 *                                    cache (sheaf/cache.h) sits in front of
 *                                    the engine */
/* Classes of sheaf_llm_requests_total{class=...}, by the HTTP status of an
 * attempt; transport: no HTTP answer (timeout, reset, refused, TLS). */
enum { SHEAF_LLM_CLASS_2XX, SHEAF_LLM_CLASS_4XX, SHEAF_LLM_CLASS_5XX, SHEAF_LLM_CLASS_TRANSPORT,
       SHEAF_LLM_CLASS_OTHER, SHEAF_LLM_N_CLASSES };

typedef struct sheaf_llm_metrics {
    sheaf_metric *in_flight, *duration, *retries, *http_429;
    sheaf_metric *calls;                            /* calls finished, whatever their attempts */
    sheaf_metric *requests[SHEAF_LLM_N_CLASSES];    /* HTTP attempts by status class */
    sheaf_metric *prompt_tokens, *completion_tokens;
    sheaf_metric *cache_hits, *cache_misses;
} sheaf_llm_metrics;

typedef struct sheaf_llm_async sheaf_llm_async;

/* Creates an engine from llm.* settings (base_url, api_key, timeout_ms,
 * connect_timeout_ms, max_attempts, backoff_ms, max_response_bytes) with at
 * most max_in_flight (1..4096) concurrent HTTP requests.  cfg is read here
 * and not kept.  limiter is copied (the struct, not what ud points to: ud
 * must outlive the engine); NULL means no limiter.  NULL with errstr on a
 * bad argument, setting or no memory. */
sheaf_llm_async *sheaf_llm_async_create(const sheaf_config *cfg, int max_in_flight,
                                        const sheaf_llm_limiter *limiter, char *errstr,
                                        size_t errlen);

/* The same engine on the caller's libevent loop (the runtime's): curl's
 * sockets and timers, the retry timers and the callbacks are all events
 * of base, so sheaf_llm_async_run() is not called: callbacks fire from
 * event_base_loop().  base is borrowed and must outlive the engine.  With
 * base NULL this is sheaf_llm_async_create, whose engine has a private
 * loop turned by sheaf_llm_async_run(). */
struct event_base;
sheaf_llm_async *sheaf_llm_async_create_on(struct event_base *base, const sheaf_config *cfg,
                                           int max_in_flight, const sheaf_llm_limiter *limiter,
                                           char *errstr, size_t errlen);

/* Aborts what is still pending (each callback fires with SHEAF_ERR_STOPPED,
 * so call it while the callbacks' ud are still valid), then frees.  NULL is
 * a no-op. */
void sheaf_llm_async_destroy(sheaf_llm_async *a);

/* Tunes the circuit breaker (defaults: the SHEAF_LLM_BREAKER_* constants).
 * threshold >= 1, 1 <= cooldown_ms <= max_cooldown_ms.  SHEAF_ERR_INVALID
 * otherwise.  Takes effect from the next failure. */
sheaf_err sheaf_llm_async_set_breaker(sheaf_llm_async *a, int threshold, int cooldown_ms,
                                      int max_cooldown_ms);

/* Queues one call.  req is copied into the JSON body at once (nothing of it
 * is kept); est_tokens is what the limiter is charged per attempt (e.g.
 * prompt estimate + max_tokens).  The call starts during a later
 * sheaf_llm_async_run().  SHEAF_OK: accepted, done(ud, ...) will fire
 * exactly once - also for a request that can never be sent (empty model,
 * invalid UTF-8), which fails with SHEAF_ERR_LLM_FATAL on the next run.
 * SHEAF_ERR_INVALID (a or done NULL) or SHEAF_ERR_NOMEM: not accepted and
 * done will never fire. */
sheaf_err sheaf_llm_async_submit(sheaf_llm_async *a, const sheaf_llm_request *req,
                                 uint32_t est_tokens, sheaf_llm_done_fn done, void *ud);
/* The same with req's body already made (it was hashed for the call
 * cache, say): body is sheaf_llm_request_json(req), owned from here and
 * freed on every path; NULL: made here, as _submit. */
sheaf_err sheaf_llm_async_submit_body(sheaf_llm_async *a, const sheaf_llm_request *req,
                                      char *body, uint32_t est_tokens, sheaf_llm_done_fn done,
                                      void *ud);

/* One event-loop step of an engine with a private loop: starts what may start, waits for network activity
 * up to timeout_ms (less when a retry, limiter or breaker timer is due
 * sooner, 0 when a callback is ready), advances transfers, schedules
 * retries, and fires the callbacks of finished calls.  Returns how many
 * callbacks fired.  Returns 0 at once when nothing is pending or when
 * called from a callback.  Never blocks longer than timeout_ms (plus the
 * time of the callbacks and of limiter calls). */
int sheaf_llm_async_run(sheaf_llm_async *a, int timeout_ms);

/* Calls not yet called back: queued + waiting for a retry + in flight. */
size_t sheaf_llm_async_pending(const sheaf_llm_async *a);
/* HTTP requests under way. */
size_t sheaf_llm_async_in_flight(const sheaf_llm_async *a);
/* 1 while the circuit is open (cooling down) or its probe call is in
 * flight: the worker should stop taking new work (pause Kafka consumption)
 * meanwhile.  0 when closed, and when the cooldown is over but no call has
 * come to probe with: then new work must be submitted, or the circuit
 * could never close. */
int sheaf_llm_async_circuit_open(const sheaf_llm_async *a);

/* Whether a refused call (SHEAF_ERR_LLM_FATAL with its last HTTP status and
 * error text) is a condition of the whole fleet rather than of the request:
 * 401/403 (the API key) or 404 naming the model.  No chunk is at fault, so
 * none may fail for it: callers park the work, stop calling, report cause
 * (what to fix) on /health and in the job's status, and resume once a call
 * goes through (after a restart with the fixed key or model).  1 with
 * cause filled, else 0. */
int sheaf_llm_fleet_cause(long http_status, const char *errstr, char *cause, size_t len);
/* Fills st with the counters since create and the current state. */
void sheaf_llm_async_stats(const sheaf_llm_async *a, sheaf_llm_stats *st);

/* Limits learned from the provider's headers (x-ratelimit-limit-*): fn
 * is called with them (per minute, 0 when not sent) the first time and
 * whenever they change, from the engine's step.  The owner may then share
 * them with the fleet through the Redis limiter (the runtime does, and the
 * reducer), with sheaf_llm_async_set_learned_limiter: from then on that
 * limiter paces the engine instead of its own pace, charged per call what
 * the provider counted for the last answers (their usage), not the
 * estimate.  Only for an engine created without a limiter. */
void sheaf_llm_async_on_learned(sheaf_llm_async *a,
                                void (*fn)(void *ud, int64_t rpm, int64_t tpm), void *ud);
void sheaf_llm_async_set_learned_limiter(sheaf_llm_async *a, const sheaf_llm_limiter *lim);

/* Feeds m's metrics from now on (m is copied; the metrics it points to
 * must outlive the engine).  NULL stops feeding them. */
void sheaf_llm_async_set_metrics(sheaf_llm_async *a, const sheaf_llm_metrics *m);

/* Registers (or finds) the engine's metrics in reg and points out at them:
 * sheaf_llm_calls_in_flight, sheaf_llm_call_duration_seconds,
 * sheaf_llm_calls_total, sheaf_llm_requests_total{class="2xx"|"4xx"|"5xx"|
 * "transport"|"other"}, sheaf_llm_retries_total, sheaf_llm_429_total,
 * sheaf_llm_tokens_total{kind="prompt"|"completion"},
 * sheaf_cache_hits_total and sheaf_cache_misses_total.  Errors name the
 * metric. */
sheaf_err sheaf_llm_metrics_register(sheaf_metrics *reg, sheaf_llm_metrics *out, char *errstr,
                                     size_t errlen);

/* For shutdown after the drain deadline: stops every transfer and fires
 * every pending callback with SHEAF_ERR_STOPPED.  Calls submitted from
 * those callbacks stay queued. */
void sheaf_llm_async_abort_all(sheaf_llm_async *a);
/* For the start of a drain: fires every call that has no HTTP request
 * under way (queued, or waiting for a retry timer) with SHEAF_ERR_STOPPED;
 * calls in flight go on.  Finished calls keep their outcome. */
void sheaf_llm_async_abort_queued(sheaf_llm_async *a);

#endif
