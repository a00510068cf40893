/* llm_sim.c - sheaf-llm-sim: a deterministic, OpenAI-compatible chat
 * completions server for development and tests.
 *
 * POST /v1/chat/completions (also /chat/completions) answers with an
 * extractive summary of the last user message (sim_summary.c), so a job run
 * twice gives byte-identical results and the reducer's output can be
 * compared across fleet sizes.  Some requests get other deterministic
 * answers (sim_answer.c has the rules), in this order:
 *   - structured output: response_format {"type":"json_schema",
 *     "json_schema":{"name","schema","strict"}} answers a compact JSON
 *     object with the schema's top-level properties in order, filled from
 *     "label lines" of the last user message U ("Total amount: EUR 1,234.50"
 *     fills total_amount with 1234.5); {"type":"json_object"} answers
 *     {"summary": <the summary>}.  A bad response_format (schema not of
 *     type object, a property not an object, ...) is a 400 naming the
 *     field.  SHEAF_SIM_BAD_JSON in U makes such answers invalid JSON (cut
 *     in half); SHEAF_SIM_BAD_JSON_ONCE only the first time a request's
 *     messages are seen (FNV-1a 64 of their dump, the last 4096 kept;
 *     POST /stats/reset forgets them), so a validate-and-retry test gets
 *     a good answer on the identical retry;
 *   - the same JSON when there is no response_format but the system
 *     message holds "matches this JSON schema: " followed by the schema
 *     (sheaf's llm.structured_output=prompt: a model following orders);
 *   - a refinement, when the first system message contains "refine" or
 *     "editor": the draft without its longest sentence (kept as it is when
 *     it has one);
 *   - otherwise a critique, when it contains "critic" or "critique": "DONE" once U's "Round: N" line has N >= critique_done_after
 *     (--critique-done-after, default 2; no such line: round 1), else
 *     "Round N: shorten the longest sentence: \"...\"" naming the draft's
 *     longest sentence (the draft: after a "Draft:" line, up to a
 *     "Critique:" line).
 * Around that core it simulates what a real provider does to a fleet:
 * latency (--latency-ms plus uniform --jitter-ms),
 * random 500s (--error-rate), a requests-per-minute limit answered with 429
 * and Retry-After (--rate-limit-rpm: a sliding 60 s window over admitted
 * requests, so no 60 s span ever admits more than the limit), a
 * tokens-per-minute limit the same way (--tpm, over prompt plus completion
 * tokens, both known before the answer is sent: the answer is deterministic
 * and made first), an API key check (--api-key), a model list
 * (SHEAF_SIM_MODELS: any other model gets 404 model_not_found), a request size cap
 * (--max-request-bytes: 413), a context window (--context-tokens or
 * SHEAF_SIM_CONTEXT_TOKENS: a request whose prompt tokens plus max_tokens
 * exceed it gets 400 context_length_exceeded, as OpenAI answers), fault triggers in the text (SHEAF_SIM_FAIL_400
 * / SHEAF_SIM_FAIL_500; SHEAF_SIM_SLOW answers slow_ms late;
 * SHEAF_SIM_HUGE_ANSWER answers about 10 MB of text whatever max_tokens
 * says, a provider gone wrong, so a test can check a client's cap on the
 * response body), strict request validation (400 with an
 * OpenAI-style error object) and max_tokens (the answer is cut to fit,
 * finish_reason "length", as a real model stops).  Every 200 (and every
 * 429 of a limit) carries OpenAI's x-ratelimit-{limit,remaining,reset}-
 * {requests,tokens} headers for the limits that are set; "reset" is the
 * time until the oldest admission leaves the window, when "remaining" next
 * grows ("250ms", "1.5s", "60s").
 *
 * Transport faults for reliability tests: a 200 whose JSON body is cut in
 * half (--malformed-rate), a connection closed with no response at all
 * (--reset-rate: the client reads end-of-file, curl's "Empty reply from
 * server"; on a reused keep-alive connection libcurl may resend the request
 * by itself, so /stats can count more resets than the client saw), and an
 * answer --slow-ms late (--slow-rate), so a client's timeout fires.  Every
 * random draw comes from a splitmix64 stream seeded with --seed, one stream
 * per purpose, so the n-th draw of a fault is the same from run to run; the
 * answer's content never depends on a draw.
 *
 * A request that passed validation meets the faults in this order: a 429
 * storm (rate_limit_next), the rate limits, the latency (plus jitter, plus
 * slow), a reset, a 5xx burst (fail_next), the text triggers, a random 500,
 * then the answer, possibly malformed, else possibly made invalid JSON by
 * SHEAF_SIM_BAD_JSON(_ONCE) (decided last, so the request _ONCE remembers
 * is one whose bad answer was read).  So a reset or a 500 has used up its
 * place in the rate windows, as with a real provider.
 *
 * GET /stats reports counters (requests seen, answers by class, faults
 * injected, tokens, in-flight and its maximum, so tests can check the
 * fleet's concurrency and that it respected the rate limit; json_answers,
 * bad_json_answers, critiques and refinements by answer kind;
 * max_prompt_tokens, the largest prompt of any 200, so a test can check a
 * token budget; max_call_tokens, the largest prompt plus max_tokens of any
 * request, and context_exceeded, the 400s over the window.  prompt_tokens is sheaf_estimate_tokens() of each message's
 * text, summed: what the worker and the reducer estimate); POST
 * /stats/reset zeroes them; GET /health answers "ok".  POST /control changes
 * the fault settings of a running simulator (any subset of latency_ms,
 * jitter_ms, error_rate, malformed_rate, reset_rate, slow_rate, slow_ms,
 * rate_limit_rpm, tpm, critique_done_after, plus fail_next: N, the next N
 * requests answer 500, refuse_next: N, the next N answer 400 (refused for
 * good, as a model would refuse a prompt), and rate_limit_next: N, the next
 * N answer 429 with Retry-After 1); the
 * whole change is validated first and applied at once, or refused with 400
 * naming the key.  GET /control shows the settings.  Only the completions
 * endpoints need the key.
 *
 * Threads: libmicrohttpd runs DAEMON_THREADS polling threads (epoll), each
 * serving many connections, so a request costs no thread switch of its
 * own; a request sleeps through its latency without holding a thread: its
 * connection is suspended and a timer thread resumes it when it is due
 * (timer_sleep), so thousands of connections may be open and sleeping at
 * once (--max-connections).  Shared state is guarded by one mutex each:
 * the counters; the settings /control changes together with the rate
 * windows they limit; each PRNG; the timer's heap.  A request copies the
 * settings once, when it is admitted, and nothing is held while sleeping.
 *
 * A request's life: the access handler is called once with the headers
 * (a request context is made and counted in flight), then once per upload
 * chunk (appended to a capped sheaf_buf; past the cap the rest is
 * discarded), then once more to answer: chat_admit validates, makes the
 * answer and applies the rate limits and the delay; after the delay (the
 * handler is called again when the connection is resumed) chat_reply
 * applies the later faults and answers (or, for a reset, returns MHD_NO,
 * which makes MHD close the connection).  The completed-callback frees the
 * context and ends its in-flight count.
 *
 * CPU: the simulator shares the box with the fleet it measures, so the
 * request path is kept cheap: the usual request body is read without
 * jansson (fast_read; any other goes through jansson as before) and the
 * chat.completion is written directly (answer_body), byte for byte what
 * json_dumps made of it.
 *
 * Shutdown: SIGTERM/SIGINT set a flag (the daemon's threads have both
 * blocked, so the handler runs in the main thread, which waits in
 * sigsuspend); sleeping requests are resumed at once and give up (no
 * response), the daemon is stopped and the program exits 0. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sheaf/buf.h"
#include "sheaf/log.h"
#include "sheaf/util.h"
#include "sim_answer.h"
#include "sim_summary.h"

#define COMP "llm-sim"
#define MAX_RPM 1000000            /* bounds the request window's memory (16 MB) */
#define MAX_TPM 1000000000000LL    /* tokens per minute */
#define MAX_DELAY_MS 3600000       /* latency, jitter and slow: an hour at most */
#define MAX_NEXT 1000000000LL      /* fail_next, rate_limit_next */
#define MAX_ROUNDS 1000000LL       /* critique_done_after */
#define DEFAULT_CRITIQUE_DONE_AFTER 2
#define WINDOW_MS 60000            /* the rate limits' sliding window */
#define MAX_SUMMARY_WORDS 100000
#define HUGE_ANSWER_BYTES ((size_t)10 << 20) /* SHEAF_SIM_HUGE_ANSWER's content */
#define THREAD_STACK (2u << 20)    /* jansson's parser recurses up to depth 2048 */
#define CONNECTION_TIMEOUT_S 300   /* idle keep-alive connections are closed after */
#define DAEMON_THREADS 2u          /* MHD's polling threads (epoll), many connections each */
#define DRAIN_MS 2000              /* at stop, how long resumed sleepers get to give up */

/* What POST /control may change; the command line gives the first values.
 * Guarded by sim.ctl_lock. */
typedef struct sim_settings {
    long long latency_ms, jitter_ms, slow_ms;
    double error_rate, malformed_rate, reset_rate, slow_rate;
    long long rate_limit_rpm;  /* 0: no limit */
    long long tpm;             /* 0: no limit */
    long long fail_next;       /* this many more requests answer 500 */
    long long refuse_next;     /* this many more requests answer 400 (a permanent refusal) */
    long long rate_limit_next; /* this many more requests answer 429 */
    long long critique_done_after; /* a critique of this round or later is "DONE" */
} sim_settings;

typedef struct sim_opts {
    const char *host;
    int port;
    const char *port_file;
    sim_settings initial;
    uint64_t seed;
    const char *api_key;       /* NULL: no key needed */
    const char *models;        /* comma list of served models; NULL: any (SHEAF_SIM_MODELS) */
    int quiet;
    size_t max_request_bytes;
    int summary_words;
    int max_connections;
    uint64_t context_tokens;   /* the model's window; 0: none (SHEAF_SIM_CONTEXT_TOKENS) */
} sim_opts;

typedef struct sim_stats {
    uint64_t requests, completions, errors_500, rate_limited_429, bad_requests,
        unauthorized_401, malformed, resets, slow, prompt_tokens, completion_tokens;
    uint64_t json_answers, bad_json_answers, critiques, refinements;
    uint64_t max_prompt_tokens;   /* of any request answered with a 200 */
    uint64_t max_call_tokens;     /* of any request: prompt plus its max_tokens */
    uint64_t context_exceeded;    /* 400s over --context-tokens */
    int64_t in_flight, max_in_flight;
} sim_stats;

/* A seeded splitmix64 stream; one per purpose so that, e.g., the error
 * sequence does not change when jitter is turned on. */
typedef struct sim_rng {
    pthread_mutex_t lock;
    uint64_t state;
} sim_rng;

/* A sliding window: what was admitted (n of it, at mono time t) in the last
 * WINDOW_MS, oldest at head of a growable ring. */
typedef struct win_entry {
    int64_t t;
    uint64_t n;
} win_entry;

typedef struct sim_window {
    win_entry *ring;
    size_t cap, head, used;
    uint64_t total;            /* sum of n over the window */
} sim_window;

/* A connection suspended until due (mono ms); seq orders equal dues. */
typedef struct sleeper {
    int64_t due;
    uint64_t seq;
    struct MHD_Connection *conn;
} sleeper;

/* The latency's timer: a min-heap of sleepers and the thread that resumes
 * each when it is due.  Guarded by lock; the heap holds one entry per
 * connection at most, so it is made as large as MHD's connection limit once. */
typedef struct sim_timer {
    pthread_mutex_t lock;
    pthread_cond_t cond;       /* on CLOCK_MONOTONIC: an earlier sleeper, or stop */
    sleeper *heap;
    size_t n, cap;
    uint64_t seq;
    int stop;                  /* no more sleepers: every one was resumed */
    atomic_int sleeping;       /* connections suspended and not yet back in on_request */
    pthread_t thread;
    int started;
} sim_timer;

typedef struct sim {
    sim_opts opts;
    pthread_mutex_t stats_lock;
    sim_stats stats;
    pthread_mutex_t ctl_lock;  /* guards settings, req_window, tok_window */
    sim_settings settings;
    sim_window req_window;     /* one per admitted request, while rate_limit_rpm is set */
    sim_window tok_window;     /* tokens per admitted request, while tpm is set */
    sim_rng err_rng, jitter_rng, malformed_rng, reset_rng, slow_rng;
    sim_seen seen;             /* requests SHEAF_SIM_BAD_JSON_ONCE answered badly */
    sim_timer timer;           /* resumes connections suspended for their latency */
    atomic_ullong next_id;
    atomic_int stopping;
    atomic_int connections;    /* open, counted by on_connection */
} sim;

typedef enum { EP_OTHER, EP_COMPLETIONS } endpoint;

/* One request, from its headers to its completion callback. */
typedef struct req_ctx {
    endpoint ep;
    int64_t started_ms;
    sheaf_buf body;
    int too_large;             /* the body went past --max-request-bytes */
    int answered;              /* a response was queued early (413 by Content-Length) */
    const char *url;           /* completions: its path (static), for the log line */
    struct chat_call *call;    /* admitted, to be answered after its delay */
    int sleeping;              /* suspended until the timer resumes it */
    unsigned status;           /* for the log line: 0, no response */
    const char *note;          /* for the log line: a fault injected, or NULL */
    uint64_t ptok, ctok;       /* for the log line: the tokens of a 200 */
} req_ctx;

/* The outcome of the rate limits for one request, and what the
 * x-ratelimit-* headers say (for the limits that are set). */
typedef struct rate_verdict {
    int admitted;
    const char *limited_by;    /* "requests" or "tokens" when refused */
    int too_large;             /* the request alone is over --tpm: never admitted */
    int retry_after_s;
    long long rpm, remaining_requests;
    int64_t reset_requests_ms;
    long long tpm, remaining_tokens;
    int64_t reset_tokens_ms;
} rate_verdict;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* ---- small helpers ------------------------------------------------------ */

static uint64_t rng_next(sim_rng *r)
{
    pthread_mutex_lock(&r->lock);
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ULL);
    pthread_mutex_unlock(&r->lock);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rng_unit(sim_rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

/* Runs the statements under the counters' lock. */
#define STATS_UPDATE(s, ...)                    \
    do {                                        \
        pthread_mutex_lock(&(s)->stats_lock);   \
        __VA_ARGS__;                            \
        pthread_mutex_unlock(&(s)->stats_lock); \
    } while (0)

/* ---- the latency: suspended connections and their timer ------------------ */

/* A request sleeps through its latency without a thread: its connection is
 * suspended (MHD_suspend_connection) and put here, and the timer thread
 * resumes it when it is due; MHD then calls on_request again, which
 * answers.  So the daemon's few threads serve every connection, and
 * thousands of requests can sleep at once as before. */

static int sleeper_before(const sleeper *a, const sleeper *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_push(sim_timer *t, sleeper e)
{
    size_t i = t->n++;
    while (i > 0 && sleeper_before(&e, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = e;
}

static sleeper heap_pop(sim_timer *t)
{
    sleeper top = t->heap[0], last = t->heap[--t->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->n) break;
        if (c + 1 < t->n && sleeper_before(&t->heap[c + 1], &t->heap[c])) c++;
        if (!sleeper_before(&t->heap[c], &last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (t->n) t->heap[i] = last;
    return top;
}

/* Resumes each sleeper when it is due; at stop, every one at once. */
static void *timer_main(void *arg)
{
    sim_timer *t = arg;

    pthread_mutex_lock(&t->lock);
    for (;;) {
        if (t->n == 0) {
            if (t->stop) break;
            pthread_cond_wait(&t->cond, &t->lock);
            continue;
        }
        int64_t wait_ms = t->heap[0].due - sheaf_mono_ms();
        if (wait_ms > 0 && !t->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += wait_ms / 1000;
            ts.tv_nsec += (wait_ms % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&t->cond, &t->lock, &ts);
            continue;
        }
        sleeper e = heap_pop(t);
        /* MHD's lock is taken with ours free: a handler holds ours while
         * suspending (timer_sleep). */
        pthread_mutex_unlock(&t->lock);
        MHD_resume_connection(e.conn);
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static int timer_init(sim_timer *t, size_t cap)
{
    pthread_condattr_t attr;
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &attr);
    pthread_condattr_destroy(&attr);
    atomic_init(&t->sleeping, 0);
    t->cap = cap;
    t->heap = malloc(cap * sizeof(*t->heap));
    return t->heap ? 0 : -1;
}

static int timer_start(sim_timer *t)
{
    if (pthread_create(&t->thread, NULL, timer_main, t) != 0) return -1;
    t->started = 1;
    return 0;
}

/* Suspends the connection (from its access handler) until ms from now;
 * -1 when it cannot sleep (shutting down, or no room: not expected, the
 * heap is as large as the connection limit), then the caller answers at
 * once. */
static int timer_sleep(sim_timer *t, struct MHD_Connection *conn, req_ctx *ctx, int64_t ms)
{
    int rc = -1;
    pthread_mutex_lock(&t->lock);
    if (!t->stop && t->n < t->cap) {
        sleeper e = {sheaf_mono_ms() + ms, t->seq++, conn};
        MHD_suspend_connection(conn);
        ctx->sleeping = 1;
        atomic_fetch_add(&t->sleeping, 1);
        heap_push(t, e);
        if (t->heap[0].seq == e.seq) pthread_cond_signal(&t->cond);
        rc = 0;
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* A suspended connection is back (resumed, or closed by MHD). */
static void timer_woke(sim_timer *t, req_ctx *ctx)
{
    if (!ctx->sleeping) return;
    ctx->sleeping = 0;
    atomic_fetch_sub(&t->sleeping, 1);
}

/* Resumes every sleeper and stops the thread; the daemon may be stopped
 * once the sleepers are back (MHD must not stop with a connection
 * suspended). */
static void timer_stop(sim_timer *t)
{
    pthread_mutex_lock(&t->lock);
    t->stop = 1;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    if (t->started) pthread_join(t->thread, NULL);
    t->started = 0;
}

static void timer_destroy(sim_timer *t)
{
    free(t->heap);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
}

/* ---- rate windows ------------------------------------------------------ */

/* Drops what left the window: admitted at or before now - WINDOW_MS. */
static void win_expire(sim_window *w, int64_t now)
{
    while (w->used > 0 && w->ring[w->head].t <= now - WINDOW_MS) {
        w->total -= w->ring[w->head].n;
        w->head = (w->head + 1) % w->cap;
        w->used--;
    }
}

/* Makes room for one more entry; -1 when out of memory. */
static int win_reserve(sim_window *w)
{
    if (w->used < w->cap) return 0;
    size_t cap = w->cap ? w->cap * 2 : 64;
    win_entry *ring = malloc(cap * sizeof(*ring));
    if (!ring) return -1;
    for (size_t i = 0; i < w->used; i++) ring[i] = w->ring[(w->head + i) % w->cap];
    free(w->ring);
    w->ring = ring;
    w->cap = cap;
    w->head = 0;
    return 0;
}

/* Adds an entry as the newest; win_reserve made room. */
static void win_push(sim_window *w, int64_t t, uint64_t n)
{
    w->ring[(w->head + w->used) % w->cap] = (win_entry){t, n};
    w->used++;
    w->total += n;
}

static void win_clear(sim_window *w)
{
    free(w->ring);
    memset(w, 0, sizeof(*w));
}

/* Ms from now until the window holds at most limit - n, as its oldest
 * entries leave; -1 if it never will (n > limit). */
static int64_t win_wait_ms(const sim_window *w, uint64_t limit, uint64_t n, int64_t now)
{
    uint64_t total = w->total;
    if (n > limit) return -1;
    for (size_t i = 0; i < w->used && total > limit - n; i++) {
        const win_entry *e = &w->ring[(w->head + i) % w->cap];
        total -= e->n;
        if (total <= limit - n) return e->t + WINDOW_MS - now;
    }
    return 0;
}

/* Ms until the oldest entry leaves the window, when "remaining" next grows. */
static int64_t win_reset_ms(const sim_window *w, int64_t now)
{
    return w->used ? w->ring[w->head].t + WINDOW_MS - now : 0;
}

static int ceil_seconds(int64_t ms)
{
    int64_t sec = (ms + 999) / 1000;
    return sec < 1 ? 1 : sec > INT_MAX ? INT_MAX : (int)sec;
}

/* Decides whether a request of `tokens` (prompt plus completion) is
 * admitted under the limits in *set (the caller's copy, taken under the
 * same lock), and records it in the windows if so.  A request is admitted
 * only when both limits allow it, so a refusal never uses up a place.
 * Returns -1 when out of memory. */
static int rate_admit_locked(sim *s, const sim_settings *set, uint64_t tokens, rate_verdict *v)
{
    int64_t now = sheaf_mono_ms(), wait_ms = 0;
    uint64_t rpm = (uint64_t)set->rate_limit_rpm, tpm = (uint64_t)set->tpm;

    memset(v, 0, sizeof(*v));
    v->rpm = set->rate_limit_rpm;
    v->tpm = set->tpm;
    win_expire(&s->req_window, now);
    win_expire(&s->tok_window, now);
    if (rpm && s->req_window.used >= rpm) {
        v->limited_by = "requests";
        wait_ms = win_wait_ms(&s->req_window, rpm, 1, now);
    }
    if (tpm && s->tok_window.total + tokens > tpm) {
        int64_t w = win_wait_ms(&s->tok_window, tpm, tokens, now);
        if (w < 0) {
            v->too_large = 1;
            w = WINDOW_MS;
        }
        if (!v->limited_by || w > wait_ms) {
            v->limited_by = "tokens";
            wait_ms = w;
        }
    }
    if (v->limited_by) {
        v->retry_after_s = ceil_seconds(wait_ms);
    } else {
        if ((rpm && win_reserve(&s->req_window) != 0) ||
            (tpm && tokens && win_reserve(&s->tok_window) != 0))
            return -1;
        if (rpm) win_push(&s->req_window, now, 1);
        if (tpm && tokens) win_push(&s->tok_window, now, tokens);
        v->admitted = 1;
    }
    if (rpm) {
        v->remaining_requests =
            s->req_window.used >= rpm ? 0 : (long long)(rpm - s->req_window.used);
        v->reset_requests_ms = win_reset_ms(&s->req_window, now);
    }
    if (tpm) {
        v->remaining_tokens =
            s->tok_window.total >= tpm ? 0 : (long long)(tpm - s->tok_window.total);
        v->reset_tokens_ms = win_reset_ms(&s->tok_window, now);
    }
    return 0;
}

/* Takes one from *counter (fail_next, rate_limit_next) if it is above 0;
 * returns 1 if it did. */
static int take_next(sim *s, long long *counter)
{
    int taken = 0;
    pthread_mutex_lock(&s->ctl_lock);
    if (*counter > 0) {
        (*counter)--;
        taken = 1;
    }
    pthread_mutex_unlock(&s->ctl_lock);
    return taken;
}

/* 1 with probability rate, from the stream r; no draw when rate is 0, so a
 * fault that is off leaves its stream where it was. */
static int draw(sim_rng *r, double rate) { return rate > 0 && rng_unit(r) < rate; }

/* ---- responses ---------------------------------------------------------- */

/* Formats ms as OpenAI's reset headers do: "250ms", "1.5s", "60s". */
static void format_reset(char *out, size_t size, int64_t ms)
{
    if (ms < 0) ms = 0;
    if (ms < 1000) {
        snprintf(out, size, "%lldms", (long long)ms);
        return;
    }
    int n = snprintf(out, size, "%lld.%03lld", (long long)(ms / 1000), (long long)(ms % 1000));
    while (n > 0 && out[n - 1] == '0') out[--n] = '\0';
    if (n > 0 && out[n - 1] == '.') out[--n] = '\0';
    snprintf(out + n, size - (size_t)n, "s");
}

/* Adds the x-ratelimit-* headers of the limits that are set. */
static void add_ratelimit_headers(struct MHD_Response *resp, const rate_verdict *v)
{
    char val[32];
    if (v->rpm > 0) {
        snprintf(val, sizeof(val), "%lld", v->rpm);
        MHD_add_response_header(resp, "x-ratelimit-limit-requests", val);
        snprintf(val, sizeof(val), "%lld", v->remaining_requests);
        MHD_add_response_header(resp, "x-ratelimit-remaining-requests", val);
        format_reset(val, sizeof(val), v->reset_requests_ms);
        MHD_add_response_header(resp, "x-ratelimit-reset-requests", val);
    }
    if (v->tpm > 0) {
        snprintf(val, sizeof(val), "%lld", v->tpm);
        MHD_add_response_header(resp, "x-ratelimit-limit-tokens", val);
        snprintf(val, sizeof(val), "%lld", v->remaining_tokens);
        MHD_add_response_header(resp, "x-ratelimit-remaining-tokens", val);
        format_reset(val, sizeof(val), v->reset_tokens_ms);
        MHD_add_response_header(resp, "x-ratelimit-reset-tokens", val);
    }
}

/* Queues body (malloc'd; ownership passes to MHD, which frees it), with
 * Retry-After when retry_after_s > 0 and the rate headers when rl.  With
 * no connection (its client left while it slept: on_completed) the body is
 * only freed. */
static enum MHD_Result send_body(struct MHD_Connection *conn, unsigned status, char *body,
                                 const char *content_type, int retry_after_s,
                                 const rate_verdict *rl)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (!body || !conn) {
        free(body);
        return MHD_NO;
    }
    resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    body = NULL; /* owned by resp */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (retry_after_s > 0) {
        char v[16];
        snprintf(v, sizeof(v), "%d", retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (rl) add_ratelimit_headers(resp, rl);
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Sends json (a reference is stolen) compactly. */
static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned status, json_t *json,
                                 int retry_after_s, const rate_verdict *rl)
{
    /* 15 digits: a rate of 0.1 reads 0.1, not 0.10000000000000001. */
    char *text = json ? json_dumps(json, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(json);
    return send_body(conn, status, text, "application/json", retry_after_s, rl);
}

/* An OpenAI-style error: {"error":{"message","type","param":null,"code"}}. */
static json_t *error_json(const char *type, const char *code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static json_t *error_json(const char *type, const char *code, const char *fmt, va_list ap)
{
    char msg[512];
    size_t len, bad;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    /* The message may quote the request (jansson's parse error shows the
     * bytes it choked on) or be cut inside a character: every byte that is
     * not well-formed UTF-8 becomes '?', or json_pack refuses it and the
     * client gets no answer at all. */
    len = strlen(msg);
    while (!sheaf_utf8_valid(msg, len, &bad)) msg[bad] = '?';
    return json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", msg, "type", type, "param",
                     "code", code);
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status,
                                  const char *type, const char *code, int retry_after_s,
                                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status,
                                  const char *type, const char *code, int retry_after_s,
                                  const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *err = error_json(type, code, fmt, ap);
    va_end(ap);
    return send_json(conn, status, err, retry_after_s, NULL);
}

/* A 429 of the rate limits: the error, Retry-After and the rate headers. */
static enum MHD_Result send_429(struct MHD_Connection *conn, const rate_verdict *v,
                                const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static enum MHD_Result send_429(struct MHD_Connection *conn, const rate_verdict *v,
                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *err = error_json(v->limited_by, "rate_limit_exceeded", fmt, ap);
    va_end(ap);
    return send_json(conn, MHD_HTTP_TOO_MANY_REQUESTS, err, v->retry_after_s, v);
}

/* ---- chat completions --------------------------------------------------- */

/* A parsed, validated request: borrowed pointers into the JSON document. */
typedef struct chat_request {
    const char *model;
    int max_tokens;            /* 0: not given */
    uint64_t prompt_tokens;
    json_t *messages;
    sheaf_buf user;            /* content of the last user message */
    sheaf_buf system;          /* content of the first system message */
    int has_system;
    sim_format format;         /* response_format */
    int triggers;              /* "SHEAF_SIM_" is in user: the text triggers are looked for */
    char *strings;             /* read by fast_read: its decoded strings (model points here) */
    const sheaf_buf *body;     /* the request body, for a late jansson read (apply_bad_json) */
} chat_request;

/* Appends a message content (string, null, or an array of {"type":"text",
 * "text":...} parts, joined with newlines) to out.  Returns an error
 * message or NULL. */
static const char *content_text(json_t *content, sheaf_buf *out)
{
    size_t i;
    json_t *part;

    if (json_is_null(content)) return NULL;
    if (json_is_string(content))
        return sheaf_buf_append(out, json_string_value(content), json_string_length(content)) ==
                       SHEAF_OK
                   ? NULL
                   : "out of memory";
    if (!json_is_array(content)) return "message content must be a string or an array of parts";
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!type || strcmp(type, "text") != 0 || !json_is_string(text))
            return "only text content parts are supported";
        if ((out->len && sheaf_buf_append(out, "\n", 1) != SHEAF_OK) ||
            sheaf_buf_append(out, json_string_value(text), json_string_length(text)) != SHEAF_OK)
            return "out of memory";
    }
    return NULL;
}

/* Where message i's text is kept: the last user message's in cr->user, the
 * first system message's in cr->system, no other (NULL: only counted).
 * Notes a system message as seen, whichever is kept. */
static sheaf_buf *message_keeper(chat_request *cr, size_t i, size_t last_user, const char *role)
{
    int first_system = !cr->has_system && strcmp(role, "system") == 0;
    cr->has_system |= first_system;
    return i == last_user ? &cr->user : first_system ? &cr->system : NULL;
}

/* Reads every message's text: counts its tokens and keeps the last user
 * message's and the first system message's.  prompt_tokens is the sum of
 * sheaf_estimate_tokens() over each message's text, exactly what the worker
 * and the reducer estimate (system plus user, each on its own), so a test
 * can compare the two. */
static const char *take_messages(json_t *messages, size_t last_user, chat_request *cr)
{
    size_t i;
    json_t *msg;
    const char *e = NULL;

    json_array_foreach(messages, i, msg) {
        const char *role = json_string_value(json_object_get(msg, "role"));
        sheaf_buf *keep = message_keeper(cr, i, last_user, role);
        sheaf_buf text;

        sheaf_buf_init(&text, cr->user.max);
        e = content_text(json_object_get(msg, "content"), keep ? keep : &text);
        if (!e) {
            const sheaf_buf *t = keep ? keep : &text;
            cr->prompt_tokens += sheaf_estimate_tokens(t->data ? t->data : "", t->len);
        }
        sheaf_buf_free(&text);
        if (e) return e;
    }
    return NULL;
}

/* 1 when model is served: any without SHEAF_SIM_MODELS, else one of its
 * comma-separated names. */
static int model_served(const sim *s, const char *model)
{
    const char *p = s->opts.models;
    size_t len = strlen(model);
    if (!p) return 1;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == len && strncmp(p, model, n) == 0) return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

/* Validates the request body; returns an error message (for a 400, in err
 * or static) or NULL. */
static const char *parse_chat(json_t *root, chat_request *cr, char *err, size_t errlen)
{
    json_t *messages, *v, *msg;
    size_t i, last_user = (size_t)-1;
    const char *e;

    if (!json_is_object(root)) return "the request body must be a JSON object";
    v = json_object_get(root, "model");
    if (!json_is_string(v)) return "you must provide a model parameter (a string)";
    cr->model = json_string_value(v);

    messages = json_object_get(root, "messages");
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return "'messages' must be a non-empty array";
    json_array_foreach(messages, i, msg) {
        const char *role = json_string_value(json_object_get(msg, "role"));
        if (!json_is_object(msg) || !role) return "each message must be an object with a 'role'";
        if (strcmp(role, "user") == 0) last_user = i;
    }
    /* No user message: answer from the last message of any role. */
    if (last_user == (size_t)-1) last_user = json_array_size(messages) - 1;
    cr->messages = messages;
    if ((e = take_messages(messages, last_user, cr))) return e;

    v = json_object_get(root, "max_tokens");
    if (!v) v = json_object_get(root, "max_completion_tokens");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > INT_MAX)
            return "max_tokens must be a positive integer";
        cr->max_tokens = (int)json_integer_value(v);
    }
    v = json_object_get(root, "temperature");
    if (v && !json_is_null(v) &&
        (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 2))
        return "temperature must be a number between 0 and 2";
    v = json_object_get(root, "stream");
    if (json_is_true(v)) return "stream=true is not supported by the simulator";
    return sim_format_parse(json_object_get(root, "response_format"), &cr->format, err, errlen);
}

/* sheaf_utf8_valid(s, len), quicker on text that is mostly ASCII: whole
 * words of ASCII without a NUL are skipped first. */
static int utf8_valid(const char *s, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if ((w & 0x8080808080808080ULL) ||
            ((w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL))
            break;
    }
    return sheaf_utf8_valid(s + i, len - i, NULL);
}

/* ---- the common request, read without jansson --------------------------- */

/* Almost every request is the same small shape: {"model", "messages" of
 * {"role","content"} with string (or null) content, and perhaps
 * "max_tokens", "temperature", "stream":false}.  Building jansson's tree
 * for it (a hash table per object, a malloc per value) was the largest
 * part of the simulator's CPU per request, so fast_read reads that shape
 * directly.  It only ever says yes to a body that jansson reads to the same
 * values and parse_chat accepts: anything else (another key, a duplicate
 * key, content parts, a number it is not sure of, a surrogate escape, any
 * error) gives up, and the body takes the jansson path, which answers it
 * and words every refusal as before. */
#define FAST_MAX_MESSAGES 32

typedef struct fast_msg {
    const char *role;
    const char *content;       /* NULL: "content": null */
    size_t content_len;
} fast_msg;

typedef struct fast_req {
    char *strings;             /* decoded strings, NUL-terminated, one after another */
    size_t used;
    const char *model;
    fast_msg msg[FAST_MAX_MESSAGES];
    size_t n_msg;
    int max_tokens;            /* 0: not given */
} fast_req;

typedef struct lexer {
    const char *p, *end;
} lexer;

static void lex_ws(lexer *l)
{
    while (l->p < l->end && (*l->p == ' ' || *l->p == '\t' || *l->p == '\n' || *l->p == '\r'))
        l->p++;
}

/* 1 and past it if the next token is the character c. */
static int lex_char(lexer *l, char c)
{
    lex_ws(l);
    if (l->p == l->end || *l->p != c) return 0;
    l->p++;
    return 1;
}

/* 1 and past it if the next token is the literal word (null, false). */
static int lex_word(lexer *l, const char *word)
{
    size_t n = strlen(word);
    lex_ws(l);
    if ((size_t)(l->end - l->p) < n || memcmp(l->p, word, n) != 0) return 0;
    l->p += n;
    return 1;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The end of the run at p of bytes that stand for themselves in a JSON
 * string (not '"', '\\' or a control character), a word at a time. */
static const char *plain_run(const char *p, const char *end)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (; end - p >= 8; p += 8) {
        uint64_t w, q, b;
        memcpy(&w, p, 8);
        q = w ^ (ones * '"');
        b = w ^ (ones * '\\');
        /* A byte < 0x20, or equal to '"' or '\\', sets its high bit here;
         * bytes >= 0x80 are masked out by ~w. */
        if ((((w - ones * 0x20) | (q - ones) | (b - ones)) & ~w & highs) != 0) break;
    }
    while (p < end && (unsigned char)*p >= 0x20 && *p != '"' && *p != '\\') p++;
    return p;
}

/* Reads a string token into r->strings; NULL when it is not one jansson
 * surely reads the same (a control character, a bad escape, \u0000 or a
 * surrogate: jansson judges those).  The body is known to be valid UTF-8,
 * and a decoded string plus its NUL is never longer than its token, so the
 * strings fit in the body's length. */
static const char *lex_string(lexer *l, fast_req *r, size_t *len)
{
    char *out = r->strings + r->used;
    size_t n = 0;

    if (!lex_char(l, '"')) return NULL;
    while (l->p < l->end) {
        const char *plain = l->p;
        l->p = plain_run(l->p, l->end);
        memcpy(out + n, plain, (size_t)(l->p - plain));
        n += (size_t)(l->p - plain);
        if (l->p == l->end) break;
        unsigned char c = (unsigned char)*l->p++;
        if (c == '"') {
            out[n] = '\0';
            r->used += n + 1;
            if (len) *len = n;
            return out;
        }
        if (c < 0x20) return NULL;
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (l->p == l->end) return NULL;
        switch (c = (unsigned char)*l->p++) {
        case '"': case '\\': case '/': out[n++] = (char)c; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned v = 0;
            if (l->end - l->p < 4) return NULL;
            for (int k = 0; k < 4; k++) {
                int h = hex_digit(l->p[k]);
                if (h < 0) return NULL;
                v = v * 16 + (unsigned)h;
            }
            l->p += 4;
            if (v == 0 || (v >= 0xD800 && v <= 0xDFFF)) return NULL;
            if (v < 0x80) {
                out[n++] = (char)v;
            } else if (v < 0x800) {
                out[n++] = (char)(0xC0 | (v >> 6));
                out[n++] = (char)(0x80 | (v & 0x3F));
            } else {
                out[n++] = (char)(0xE0 | (v >> 12));
                out[n++] = (char)(0x80 | ((v >> 6) & 0x3F));
                out[n++] = (char)(0x80 | (v & 0x3F));
            }
            break;
        }
        default: return NULL;
        }
    }
    return NULL;
}

/* Reads the digits of a JSON number with no sign, fraction or exponent
 * check of its own: returns how many there are (0: none), the first not
 * '0' unless it is alone. */
static size_t lex_digits(lexer *l)
{
    const char *start = l->p;
    while (l->p < l->end && *l->p >= '0' && *l->p <= '9') l->p++;
    size_t n = (size_t)(l->p - start);
    return n > 1 && *start == '0' ? 0 : n;
}

/* "max_tokens": a plain integer in 1..INT_MAX (0, a sign, a fraction or
 * anything larger: jansson's path, which refuses or reads it). */
static int lex_max_tokens(lexer *l, int *out)
{
    lex_ws(l);
    const char *start = l->p;
    size_t n = lex_digits(l);
    long long v = 0;
    if (n == 0 || n > 10 || *start == '0') return -1;
    for (size_t i = 0; i < n; i++) v = v * 10 + (start[i] - '0');
    if (v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

/* "temperature": digits with perhaps a fraction (no sign, no exponent), in
 * 0..2 by the same strtod jansson uses. */
static int lex_temperature(lexer *l)
{
    char num[40];
    lex_ws(l);
    const char *start = l->p;
    if (lex_digits(l) == 0) return -1;
    if (l->p < l->end && *l->p == '.') {
        l->p++;
        const char *frac = l->p;
        while (l->p < l->end && *l->p >= '0' && *l->p <= '9') l->p++;
        if (l->p == frac) return -1;
    }
    size_t n = (size_t)(l->p - start);
    if (n >= sizeof(num)) return -1;
    memcpy(num, start, n);
    num[n] = '\0';
    double d = strtod(num, NULL);
    return d >= 0 && d <= 2 ? 0 : -1;
}

/* One {"role": "...", "content": "..." or null}, each key once. */
static int lex_message(lexer *l, fast_req *r)
{
    fast_msg *m;
    int has_content = 0;

    if (r->n_msg == FAST_MAX_MESSAGES || !lex_char(l, '{')) return -1;
    m = &r->msg[r->n_msg++];
    *m = (fast_msg){0};
    do {
        const char *key = lex_string(l, r, NULL);
        if (!key || !lex_char(l, ':')) return -1;
        if (strcmp(key, "role") == 0 && !m->role) {
            if (!(m->role = lex_string(l, r, NULL))) return -1;
        } else if (strcmp(key, "content") == 0 && !has_content) {
            has_content = 1;
            if (!lex_word(l, "null") && !(m->content = lex_string(l, r, &m->content_len)))
                return -1;
        } else {
            return -1;
        }
    } while (lex_char(l, ','));
    return lex_char(l, '}') && m->role && has_content ? 0 : -1;
}

/* Reads body into *r (r->strings must hold body_len + 1 bytes); 0 when it
 * is the common shape and valid, -1 when jansson's path must judge it. */
static int fast_read(const char *body, size_t len, fast_req *r)
{
    lexer l = {body, body + len};
    int seen_model = 0, seen_messages = 0, seen_max = 0, seen_temp = 0, seen_stream = 0;

    if (!utf8_valid(body, len) || !lex_char(&l, '{')) return -1;
    do {
        const char *key = lex_string(&l, r, NULL);
        if (!key || !lex_char(&l, ':')) return -1;
        if (strcmp(key, "model") == 0 && !seen_model++) {
            if (!(r->model = lex_string(&l, r, NULL))) return -1;
        } else if (strcmp(key, "messages") == 0 && !seen_messages++) {
            if (!lex_char(&l, '[')) return -1;
            do {
                if (lex_message(&l, r) != 0) return -1;
            } while (lex_char(&l, ','));
            if (!lex_char(&l, ']')) return -1;
        } else if (strcmp(key, "max_tokens") == 0 && !seen_max++) {
            if (lex_max_tokens(&l, &r->max_tokens) != 0) return -1;
        } else if (strcmp(key, "temperature") == 0 && !seen_temp++) {
            if (lex_temperature(&l) != 0) return -1;
        } else if (strcmp(key, "stream") == 0 && !seen_stream++) {
            if (!lex_word(&l, "false") && !lex_word(&l, "null")) return -1;
        } else {
            return -1;
        }
    } while (lex_char(&l, ','));
    if (!lex_char(&l, '}')) return -1;
    lex_ws(&l);
    return l.p == l.end && seen_model && seen_messages ? 0 : -1;
}

/* The chat_request of a body fast_read took, as parse_chat makes it;
 * -1 when fast_read did not take it (cr->strings then NULL). */
static int fast_chat(const sheaf_buf *body, chat_request *cr)
{
    fast_req r = {.strings = malloc(body->len + 1)};
    size_t last_user = (size_t)-1;

    if (!r.strings) return -1;
    if (fast_read(body->data ? body->data : "", body->len, &r) != 0) {
        free(r.strings);
        return -1;
    }
    cr->strings = r.strings;
    cr->model = r.model;
    cr->max_tokens = r.max_tokens;
    for (size_t i = 0; i < r.n_msg; i++)
        if (strcmp(r.msg[i].role, "user") == 0) last_user = i;
    if (last_user == (size_t)-1) last_user = r.n_msg - 1;
    for (size_t i = 0; i < r.n_msg; i++) {
        const fast_msg *m = &r.msg[i];
        sheaf_buf *keep = message_keeper(cr, i, last_user, m->role);
        if (keep && m->content &&
            sheaf_buf_append(keep, m->content, m->content_len) != SHEAF_OK) {
            /* Out of memory: cleared for jansson's path, which says so. */
            sheaf_buf_free(&cr->user);
            sheaf_buf_free(&cr->system);
            free(cr->strings);
            *cr = (chat_request){.user = cr->user, .system = cr->system, .body = cr->body};
            return -1;
        }
        cr->prompt_tokens += sheaf_estimate_tokens(m->content ? m->content : "", m->content_len);
    }
    return 0;
}

/* The answer to a valid request, made before it is admitted so that its
 * tokens count against --tpm. */
typedef struct chat_answer {
    char *text;                /* malloc'd */
    const char *finish;
    uint64_t completion_tokens;
    sim_kind kind;
    int bad_json;              /* the content was made invalid JSON on purpose */
} chat_answer;

/* Makes the deterministic answer (sim_answer.c); -1 when out of memory. */
static int compose_answer(sim *s, const chat_request *cr, chat_answer *a)
{
    sim_prompt p = {.user = cr->user.data ? cr->user.data : "",
                    .user_len = cr->user.len,
                    .system = cr->has_system ? (cr->system.data ? cr->system.data : "") : NULL,
                    .system_len = cr->system.len,
                    .format = cr->format,
                    .summary_words = s->opts.summary_words};

    pthread_mutex_lock(&s->ctl_lock);
    p.critique_done_after = s->settings.critique_done_after;
    pthread_mutex_unlock(&s->ctl_lock);
    a->finish = "stop";
    /* About 3 words per 4 tokens; the hard cut below makes sure. */
    if (cr->max_tokens > 0 && cr->max_tokens / 4 * 3 < p.summary_words)
        p.summary_words = cr->max_tokens / 4 * 3 > 0 ? cr->max_tokens / 4 * 3 : 1;
    a->text = sim_answer(&p, &a->kind);
    if (!a->text) return -1;
    size_t len = strlen(a->text);
    if (cr->triggers && strstr(cr->user.data, "SHEAF_SIM_HUGE_ANSWER")) {
        /* A runaway answer: HUGE_ANSWER_BYTES of words, max_tokens ignored. */
        static const char word[] = "runaway ";
        char *huge = malloc(HUGE_ANSWER_BYTES + 1);
        if (!huge) return -1;
        for (size_t i = 0; i < HUGE_ANSWER_BYTES; i++) huge[i] = word[i % (sizeof(word) - 1)];
        huge[HUGE_ANSWER_BYTES] = '\0';
        free(a->text);
        a->text = huge;
        a->kind = SIM_KIND_SUMMARY;
        a->completion_tokens = sheaf_estimate_tokens(huge, HUGE_ANSWER_BYTES);
        return 0;
    }
    if (cr->max_tokens > 0 && sim_cut_to_tokens(a->text, len, (unsigned)cr->max_tokens) != len) {
        len = strlen(a->text);
        a->finish = "length";
    }
    a->completion_tokens = sheaf_estimate_tokens(a->text, len);
    return 0;
}

/* The SHEAF_SIM_BAD_JSON triggers of a structured answer about to be sent:
 * cuts its content in half (never valid JSON: an object's closing brace is
 * its last byte).  Decided only now, after every fault, so that with
 * _ONCE the request that is remembered is one whose bad answer the client
 * actually reads. */
static void apply_bad_json(sim *s, const chat_request *cr, chat_answer *a)
{
    if (a->kind != SIM_KIND_JSON) return;
    sim_bad_json trig = sim_bad_json_trigger(cr->user.data ? cr->user.data : "", cr->user.len);
    if (trig == SIM_BAD_JSON_NONE) return;
    if (trig == SIM_BAD_JSON_ONCE) {
        /* fast_chat made no tree: jansson reads the body now (it is valid). */
        json_t *root = cr->messages ? NULL
                                    : json_loadb(cr->body->data, cr->body->len, 0, NULL);
        int first = sim_seen_first(&s->seen, root ? json_object_get(root, "messages")
                                                  : cr->messages);
        json_decref(root);
        if (first != 1) return;
    }
    size_t len = strlen(a->text) / 2;
    a->text[len] = '\0';
    a->completion_tokens = sheaf_estimate_tokens(a->text, len);
    a->bad_json = 1;
}

/* Counts a delivered answer by its kind. */
static void count_answer(sim *s, const chat_request *cr, const chat_answer *a)
{
    STATS_UPDATE(s, {
        s->stats.completions++;
        s->stats.prompt_tokens += cr->prompt_tokens;
        s->stats.completion_tokens += a->completion_tokens;
        if (a->bad_json) s->stats.bad_json_answers++;
        else if (a->kind == SIM_KIND_JSON) s->stats.json_answers++;
        else if (a->kind == SIM_KIND_CRITIQUE) s->stats.critiques++;
        else if (a->kind == SIM_KIND_REFINEMENT) s->stats.refinements++;
    });
}

/* The length of s[0..len) written as a JSON string by json_string_write. */
static size_t json_string_size(const char *s, size_t len)
{
    size_t n = len + 2;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            n += 1;
        else if (c < 0x20)
            n += 5;
    }
    return n;
}

/* Writes s[0..len) as a JSON string at out, byte for byte as json_dumps
 * does (JSON_COMPACT, UTF-8 kept): '"', '\\' and control characters
 * escaped, \u00XX in upper case for those without a short escape; returns
 * the end.  s is valid UTF-8 (the caller checks, as json_string does). */
static char *json_string_write(char *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    *out++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *out++ = (char)c;
            continue;
        }
        *out++ = '\\';
        switch (c) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '\b': *out++ = 'b'; break;
        case '\f': *out++ = 'f'; break;
        case '\n': *out++ = 'n'; break;
        case '\r': *out++ = 'r'; break;
        case '\t': *out++ = 't'; break;
        default:
            memcpy(out, "u00", 3);
            out[3] = hex[c >> 4];
            out[4] = hex[c & 15];
            out += 5;
            break;
        }
    }
    *out++ = '"';
    return out;
}

/* The chat.completion around the answer, as the compact dump of
 * {"id","object","created":0,"model","choices":[{"index":0,"message":
 * {"role":"assistant","content"},"finish_reason"}],"usage":{...}}: written
 * directly, jansson's tree and dump cost more than the rest of a request.
 * NULL when out of memory or when a string is not valid UTF-8 (jansson
 * refused to build such an answer: the client gets the same 500). */
static char *answer_body(sim *s, const chat_request *cr, const chat_answer *a)
{
    static const char mid[] = ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                              "\"content\":";
    char head[96], tail[160];
    size_t text_len = strlen(a->text), model_len = strlen(cr->model);
    int head_len = snprintf(head, sizeof(head),
                            "{\"id\":\"simcmpl-%llu\",\"object\":\"chat.completion\","
                            "\"created\":0,\"model\":",
                            (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    if (!utf8_valid(a->text, text_len) || !utf8_valid(cr->model, model_len)) return NULL;
    int tail_len = snprintf(tail, sizeof(tail),
                            "},\"finish_reason\":\"%s\"}],\"usage\":{\"prompt_tokens\":%lld,"
                            "\"completion_tokens\":%lld,\"total_tokens\":%lld}}",
                            a->finish, (long long)cr->prompt_tokens,
                            (long long)a->completion_tokens,
                            (long long)(cr->prompt_tokens + a->completion_tokens));
    char *text = malloc((size_t)head_len + json_string_size(cr->model, model_len) + sizeof(mid) -
                        1 + json_string_size(a->text, text_len) + (size_t)tail_len + 1);
    if (!text) return NULL;
    char *p = text;
    memcpy(p, head, (size_t)head_len);
    p = json_string_write(p + head_len, cr->model, model_len);
    memcpy(p, mid, sizeof(mid) - 1);
    p = json_string_write(p + sizeof(mid) - 1, a->text, text_len);
    memcpy(p, tail, (size_t)tail_len + 1);
    return text;
}

/* 1 if the Authorization header carries "Bearer <--api-key>". */
static int authorized(const sim *s, struct MHD_Connection *conn)
{
    const char *h, *key = s->opts.api_key;
    size_t klen, hlen;
    unsigned char diff = 0;

    if (!key) return 1;
    h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    klen = strlen(key);
    hlen = strlen(h);
    if (hlen != klen) return 0;
    for (size_t i = 0; i < klen; i++) diff |= (unsigned char)(h[i] ^ key[i]);
    return diff == 0;
}

/* A completions request from its admission to its answer: kept in its
 * req_ctx while the connection sleeps through the latency. */
typedef struct chat_call {
    chat_request cr;
    chat_answer ans;
    sim_settings set;          /* copied once, at admission */
    rate_verdict rv;
    json_t *root;              /* jansson's tree of the body, when fast_chat did not read it */
    int64_t delay_ms;          /* latency, jitter and slow, drawn at admission */
} chat_call;

static void chat_call_free(chat_call *c)
{
    if (!c) return;
    json_decref(c->root);
    free(c->cr.strings);
    free(c->ans.text);
    sheaf_buf_free(&c->cr.user);
    sheaf_buf_free(&c->cr.system);
    free(c);
}

/* The first half of a complete completions request: validation, the
 * answer, the rate limits and the delay.  Returns 1 when the request was
 * admitted (ctx->call holds it, to be answered after call->delay_ms by
 * chat_reply), 0 when it was answered already (*ret is what MHD wants;
 * ctx->status and ctx->note are set for the log line). */
static int chat_admit(sim *s, struct MHD_Connection *conn, const char *method, req_ctx *ctx,
                      enum MHD_Result *ret)
{
    chat_call *c = calloc(1, sizeof(*c));
    chat_request *cr = c ? &c->cr : NULL;
    chat_answer *ans = c ? &c->ans : NULL;
    json_error_t jerr;
    const char *bad;
    char err[256];
    int storm = 0, admit_rc;

    ctx->note = NULL;
    if (!c) {
        ctx->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        *ret = send_error(conn, ctx->status, "server_error", NULL, 0, "out of memory");
        return 0;
    }
    sheaf_buf_init(&cr->user, s->opts.max_request_bytes);
    sheaf_buf_init(&cr->system, s->opts.max_request_bytes);

    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0) {
        ctx->status = MHD_HTTP_METHOD_NOT_ALLOWED;
        STATS_UPDATE(s, s->stats.bad_requests++);
        *ret = send_error(conn, ctx->status, "invalid_request_error", "method_not_allowed", 0,
                          "%s is not allowed here; use POST", method);
        goto refused;
    }
    if (!authorized(s, conn)) {
        ctx->status = MHD_HTTP_UNAUTHORIZED;
        STATS_UPDATE(s, s->stats.unauthorized_401++);
        *ret = send_error(conn, ctx->status, "invalid_request_error", "invalid_api_key", 0,
                          "Incorrect or missing API key (expected Authorization: Bearer ...)");
        goto refused;
    }
    if (ctx->too_large) {
        ctx->status = MHD_HTTP_CONTENT_TOO_LARGE;
        STATS_UPDATE(s, s->stats.bad_requests++);
        *ret = send_error(conn, ctx->status, "invalid_request_error", "request_too_large", 0,
                          "Request body exceeds %zu bytes", s->opts.max_request_bytes);
        goto refused;
    }
    cr->body = &ctx->body;
    if (fast_chat(&ctx->body, cr) == 0) {
        bad = NULL; /* the common shape, read and valid */
    } else {
        c->root = json_loadb(ctx->body.data ? ctx->body.data : "", ctx->body.len, 0, &jerr);
        bad = c->root ? parse_chat(c->root, cr, err, sizeof(err)) : NULL;
    }
    if (!cr->strings && (!c->root || bad)) {
        ctx->status = MHD_HTTP_BAD_REQUEST;
        STATS_UPDATE(s, s->stats.bad_requests++);
        if (!c->root)
            *ret = send_error(conn, ctx->status, "invalid_request_error", NULL, 0,
                              "We could not parse the JSON body of your request: %s (line %d, "
                              "column %d)",
                              jerr.text, jerr.line, jerr.column);
        else
            *ret = send_error(conn, ctx->status, "invalid_request_error", NULL, 0, "%s", bad);
        goto refused;
    }
    /* One look for the prefix of every text trigger, instead of one each. */
    cr->triggers = cr->user.data && strstr(cr->user.data, "SHEAF_SIM_") != NULL;
    if (!model_served(s, cr->model)) {
        /* As providers answer an unknown model. */
        ctx->status = MHD_HTTP_NOT_FOUND;
        STATS_UPDATE(s, s->stats.bad_requests++);
        *ret = send_error(conn, ctx->status, "invalid_request_error", "model_not_found", 0,
                          "The model `%s` does not exist or you do not have access to it.",
                          cr->model);
        goto refused;
    }
    {   /* The window, checked as providers do: prompt plus the completion
         * asked for (max_tokens) must fit. */
        uint64_t want = cr->prompt_tokens + (uint64_t)(cr->max_tokens > 0 ? cr->max_tokens : 0);
        STATS_UPDATE(s, {
            if (want > s->stats.max_call_tokens) s->stats.max_call_tokens = want;
        });
        if (s->opts.context_tokens && want > s->opts.context_tokens) {
            ctx->status = MHD_HTTP_BAD_REQUEST;
            ctx->note = "context_length_exceeded";
            STATS_UPDATE(s, { s->stats.bad_requests++; s->stats.context_exceeded++; });
            *ret = send_error(conn, ctx->status, "invalid_request_error",
                              "context_length_exceeded", 0,
                              "This model's maximum context length is %llu tokens. However, you "
                              "requested %llu tokens (%llu in the messages, %d in the "
                              "completion). Please reduce the length of the messages or "
                              "completion.",
                              (unsigned long long)s->opts.context_tokens, (unsigned long long)want,
                              (unsigned long long)cr->prompt_tokens, cr->max_tokens);
            goto refused;
        }
    }
    if (compose_answer(s, cr, ans) != 0) {
        ctx->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        *ret = send_error(conn, ctx->status, "server_error", NULL, 0, "out of memory");
        goto refused;
    }

    /* Admission: the settings are copied here for the whole request. */
    pthread_mutex_lock(&s->ctl_lock);
    c->set = s->settings;
    if (s->settings.rate_limit_next > 0) {
        s->settings.rate_limit_next--;
        storm = 1;
        admit_rc = 0;
    } else {
        admit_rc =
            rate_admit_locked(s, &c->set, cr->prompt_tokens + ans->completion_tokens, &c->rv);
    }
    pthread_mutex_unlock(&s->ctl_lock);
    if (storm) {
        ctx->status = MHD_HTTP_TOO_MANY_REQUESTS;
        ctx->note = "rate_limit_next";
        STATS_UPDATE(s, s->stats.rate_limited_429++);
        *ret = send_error(conn, ctx->status, "requests", "rate_limit_exceeded", 1,
                          "Rate limit reached (simulated: rate_limit_next). Please try again "
                          "in 1s.");
        goto refused;
    }
    if (admit_rc != 0) {
        ctx->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        *ret = send_error(conn, ctx->status, "server_error", NULL, 0, "out of memory");
        goto refused;
    }
    if (!c->rv.admitted) {
        ctx->status = MHD_HTTP_TOO_MANY_REQUESTS;
        STATS_UPDATE(s, s->stats.rate_limited_429++);
        uint64_t want = cr->prompt_tokens + ans->completion_tokens;
        if (c->rv.too_large)
            *ret = send_429(conn, &c->rv,
                            "Request too large: %lld tokens per minute (simulated), requested "
                            "%llu.",
                            c->rv.tpm, (unsigned long long)want);
        else if (strcmp(c->rv.limited_by, "tokens") == 0)
            *ret = send_429(conn, &c->rv,
                            "Rate limit reached: %lld tokens per minute (simulated), used %lld, "
                            "requested %llu. Please try again in %ds.",
                            c->rv.tpm, c->rv.tpm - c->rv.remaining_tokens, (unsigned long long)want,
                            c->rv.retry_after_s);
        else
            *ret = send_429(conn, &c->rv,
                            "Rate limit reached: %lld requests per minute (simulated). Please "
                            "try again in %ds.",
                            c->rv.rpm, c->rv.retry_after_s);
        goto refused;
    }

    c->delay_ms = c->set.latency_ms;
    if (c->set.jitter_ms > 0)
        c->delay_ms += (int64_t)(rng_unit(&s->jitter_rng) * (c->set.jitter_ms + 1));
    /* SHEAF_SIM_SLOW in the text: this answer is slow_ms late, always (so a
     * test can hold back chosen items and watch the others complete). */
    if (draw(&s->slow_rng, c->set.slow_rate) ||
        (c->set.slow_ms > 0 && cr->triggers && strstr(cr->user.data, "SHEAF_SIM_SLOW"))) {
        c->delay_ms += c->set.slow_ms;
        ctx->note = "slow";
        STATS_UPDATE(s, s->stats.slow++);
    }
    ctx->call = c;
    return 1;

refused:
    chat_call_free(c);
    return 0;
}

/* The second half, after the delay: the faults that strike then and the
 * answer.  Frees ctx->call; returns what MHD wants. */
static enum MHD_Result chat_reply(sim *s, struct MHD_Connection *conn, req_ctx *ctx)
{
    chat_call *c = ctx->call;
    chat_request *cr = &c->cr;
    chat_answer *ans = &c->ans;
    enum MHD_Result ret;

    ctx->call = NULL;
    if (atomic_load(&s->stopping)) {
        ctx->status = 0;
        ctx->note = "shutting down";
        ret = MHD_NO; /* drop the connection */
        goto done;
    }
    if (draw(&s->reset_rng, c->set.reset_rate)) {
        ctx->status = 0;
        ctx->note = "reset";
        STATS_UPDATE(s, s->stats.resets++);
        ret = MHD_NO; /* MHD closes the connection without a response */
        goto done;
    }
    if (take_next(s, &s->settings.fail_next)) {
        ctx->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        ctx->note = "fail_next";
        STATS_UPDATE(s, s->stats.errors_500++);
        ret = send_error(conn, ctx->status, "server_error", NULL, 0,
                         "The server had an error while processing your request (simulated: "
                         "fail_next).");
        goto done;
    }
    if (take_next(s, &s->settings.refuse_next)) {
        ctx->status = MHD_HTTP_BAD_REQUEST;
        ctx->note = "refuse_next";
        STATS_UPDATE(s, s->stats.bad_requests++);
        ret = send_error(conn, ctx->status, "invalid_request_error", NULL, 0,
                         "The request was refused (simulated: refuse_next).");
        goto done;
    }
    /* Fault triggers in the text itself, so a test can make one chunk fail
     * for ever without touching the others: SHEAF_SIM_FAIL_400 is refused
     * (non-retryable), SHEAF_SIM_FAIL_500 always errors (retryable). */
    if (cr->triggers && strstr(cr->user.data, "SHEAF_SIM_FAIL_400")) {
        ctx->status = MHD_HTTP_BAD_REQUEST;
        STATS_UPDATE(s, s->stats.bad_requests++);
        ret = send_error(conn, ctx->status, "invalid_request_error", NULL, 0,
                         "The request was refused (simulated: SHEAF_SIM_FAIL_400 in the text).");
        goto done;
    }
    if (cr->triggers && strstr(cr->user.data, "SHEAF_SIM_FAIL_500")) {
        ctx->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        ret = send_error(conn, ctx->status, "server_error", NULL, 0,
                         "The server had an error (simulated: SHEAF_SIM_FAIL_500 in the text).");
        goto done;
    }
    if (draw(&s->err_rng, c->set.error_rate)) {
        ctx->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        ret = send_error(conn, ctx->status, "server_error", NULL, 0,
                         "The server had an error while processing your request (simulated).");
        goto done;
    }

    int malformed = draw(&s->malformed_rng, c->set.malformed_rate);
    if (!malformed) apply_bad_json(s, cr, ans);
    char *text = answer_body(s, cr, ans);
    if (!text) {
        ctx->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        ret = send_error(conn, ctx->status, "server_error", NULL, 0, "out of memory");
        goto done;
    }
    ctx->ptok = cr->prompt_tokens;
    ctx->ctok = ans->completion_tokens;
    ctx->status = MHD_HTTP_OK;
    /* Every answered request, malformed or not, is in max_prompt_tokens:
     * it is there to show that no call went over a budget. */
    STATS_UPDATE(s, {
        if (cr->prompt_tokens > s->stats.max_prompt_tokens)
            s->stats.max_prompt_tokens = cr->prompt_tokens;
    });
    if (malformed) {
        /* Half of a JSON object is never valid JSON: its closing brace is
         * the last byte. */
        text[strlen(text) / 2] = '\0';
        ctx->note = "malformed";
        STATS_UPDATE(s, s->stats.malformed++);
    } else {
        if (ans->bad_json) ctx->note = "bad_json";
        count_answer(s, cr, ans);
    }
    ret = send_body(conn, ctx->status, text, "application/json", 0, &c->rv);
    text = NULL; /* owned by MHD (or freed by send_body) */

done:
    chat_call_free(c);
    return ret;
}

/* ---- other endpoints ---------------------------------------------------- */

static enum MHD_Result handle_stats(sim *s, struct MHD_Connection *conn)
{
    sim_stats st;
    pthread_mutex_lock(&s->stats_lock);
    st = s->stats;
    pthread_mutex_unlock(&s->stats_lock);
    json_t *j = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
        "s:I, s:I, s:I, s:I}",
        "requests",
        (json_int_t)st.requests, "completions", (json_int_t)st.completions, "errors_500",
        (json_int_t)st.errors_500, "rate_limited_429", (json_int_t)st.rate_limited_429,
        "bad_requests", (json_int_t)st.bad_requests, "unauthorized_401",
        (json_int_t)st.unauthorized_401, "malformed", (json_int_t)st.malformed, "resets",
        (json_int_t)st.resets, "slow", (json_int_t)st.slow, "in_flight",
        (json_int_t)st.in_flight, "max_in_flight", (json_int_t)st.max_in_flight,
        "prompt_tokens", (json_int_t)st.prompt_tokens, "completion_tokens",
        (json_int_t)st.completion_tokens, "max_prompt_tokens", (json_int_t)st.max_prompt_tokens,
        "json_answers", (json_int_t)st.json_answers, "bad_json_answers",
        (json_int_t)st.bad_json_answers, "critiques", (json_int_t)st.critiques, "refinements",
        (json_int_t)st.refinements, "max_call_tokens", (json_int_t)st.max_call_tokens,
        "context_exceeded", (json_int_t)st.context_exceeded, "context_tokens",
        (json_int_t)s->opts.context_tokens);
    return send_json(conn, MHD_HTTP_OK, j, 0, NULL);
}

static enum MHD_Result handle_stats_reset(sim *s, struct MHD_Connection *conn)
{
    pthread_mutex_lock(&s->stats_lock);
    int64_t in_flight = s->stats.in_flight; /* a gauge, not a counter: kept */
    memset(&s->stats, 0, sizeof(s->stats));
    s->stats.in_flight = s->stats.max_in_flight = in_flight;
    pthread_mutex_unlock(&s->stats_lock);
    /* A test that starts with a reset sees SHEAF_SIM_BAD_JSON_ONCE fire
     * again, whatever the tests before it sent. */
    sim_seen_clear(&s->seen);
    return send_json(conn, MHD_HTTP_OK, json_pack("{s:b}", "reset", 1), 0, NULL);
}

/* ---- runtime control ---------------------------------------------------- */

typedef enum { CTL_INT, CTL_RATE } ctl_type;

/* The keys of POST /control: one row each, so validation, application and
 * GET /control cannot disagree. */
static const struct ctl_key {
    const char *name;
    ctl_type type;
    size_t offset;             /* in sim_settings: long long (CTL_INT) or double (CTL_RATE) */
    long long max;             /* CTL_INT: 0..max */
} ctl_keys[] = {
    {"latency_ms", CTL_INT, offsetof(sim_settings, latency_ms), MAX_DELAY_MS},
    {"jitter_ms", CTL_INT, offsetof(sim_settings, jitter_ms), MAX_DELAY_MS},
    {"error_rate", CTL_RATE, offsetof(sim_settings, error_rate), 0},
    {"malformed_rate", CTL_RATE, offsetof(sim_settings, malformed_rate), 0},
    {"reset_rate", CTL_RATE, offsetof(sim_settings, reset_rate), 0},
    {"slow_rate", CTL_RATE, offsetof(sim_settings, slow_rate), 0},
    {"slow_ms", CTL_INT, offsetof(sim_settings, slow_ms), MAX_DELAY_MS},
    {"rate_limit_rpm", CTL_INT, offsetof(sim_settings, rate_limit_rpm), MAX_RPM},
    {"tpm", CTL_INT, offsetof(sim_settings, tpm), MAX_TPM},
    {"fail_next", CTL_INT, offsetof(sim_settings, fail_next), MAX_NEXT},
    {"refuse_next", CTL_INT, offsetof(sim_settings, refuse_next), MAX_NEXT},
    {"rate_limit_next", CTL_INT, offsetof(sim_settings, rate_limit_next), MAX_NEXT},
    {"critique_done_after", CTL_INT, offsetof(sim_settings, critique_done_after), MAX_ROUNDS},
};

static json_t *settings_json(const sim_settings *set)
{
    json_t *j = json_object();
    for (size_t i = 0; j && i < sizeof(ctl_keys) / sizeof(ctl_keys[0]); i++) {
        const struct ctl_key *k = &ctl_keys[i];
        const char *field = (const char *)set + k->offset;
        json_t *v = k->type == CTL_INT ? json_integer(*(const long long *)(const void *)field)
                                       : json_real(*(const double *)(const void *)field);
        if (json_object_set_new(j, k->name, v) != 0) {
            json_decref(j);
            j = NULL;
        }
    }
    return j;
}

static const struct ctl_key *find_ctl_key(const char *name)
{
    for (size_t i = 0; i < sizeof(ctl_keys) / sizeof(ctl_keys[0]); i++)
        if (strcmp(ctl_keys[i].name, name) == 0) return &ctl_keys[i];
    return NULL;
}

/* A slow answer needs a delay: "slow_rate" without "slow_ms" is refused. */
static const char *settings_conflict(const sim_settings *set)
{
    return set->slow_rate > 0 && set->slow_ms == 0 ? "slow_rate > 0 needs slow_ms > 0" : NULL;
}

/* Applies the changes of *req to *set; fills err and returns -1 (set then
 * half-changed) on an unknown key or a bad value. */
static int apply_control(json_t *req, sim_settings *set, char *err, size_t errlen)
{
    const char *name;
    json_t *v;

    if (!json_is_object(req)) {
        snprintf(err, errlen, "the body must be a JSON object");
        return -1;
    }
    json_object_foreach(req, name, v) {
        const struct ctl_key *k = find_ctl_key(name);
        char *field = (char *)set;
        if (!k) {
            snprintf(err, errlen, "unknown key \"%s\"", name);
            return -1;
        }
        field += k->offset;
        if (k->type == CTL_INT) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > k->max) {
                snprintf(err, errlen, "\"%s\": expected an integer in 0..%lld", name, k->max);
                return -1;
            }
            *(long long *)(void *)field = (long long)json_integer_value(v);
        } else {
            double d = json_number_value(v);
            if (!json_is_number(v) || !(d >= 0 && d <= 1)) {
                snprintf(err, errlen, "\"%s\": expected a number in 0..1", name);
                return -1;
            }
            *(double *)(void *)field = d;
        }
    }
    const char *conflict = settings_conflict(set);
    if (conflict) {
        snprintf(err, errlen, "%s", conflict);
        return -1;
    }
    return 0;
}

/* GET /control: the settings; POST /control: changes them, all or none,
 * and answers with the settings now in force. */
static enum MHD_Result handle_control(sim *s, struct MHD_Connection *conn, const char *method,
                                      req_ctx *ctx)
{
    sim_settings set;
    json_error_t jerr;
    char err[256];

    if (strcmp(method, MHD_HTTP_METHOD_GET) == 0) {
        pthread_mutex_lock(&s->ctl_lock);
        set = s->settings;
        pthread_mutex_unlock(&s->ctl_lock);
        return send_json(conn, MHD_HTTP_OK, settings_json(&set), 0, NULL);
    }
    if (ctx->too_large)
        return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error",
                          "request_too_large", 0, "Request body exceeds %zu bytes",
                          s->opts.max_request_bytes);
    json_t *req = json_loadb(ctx->body.data ? ctx->body.data : "", ctx->body.len, 0, &jerr);
    if (!req)
        return send_error(conn, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, 0,
                          "We could not parse the JSON body of your request: %s", jerr.text);

    pthread_mutex_lock(&s->ctl_lock);
    set = s->settings;
    int rc = apply_control(req, &set, err, sizeof(err));
    if (rc == 0) {
        /* A limit turned off forgets its window: it starts afresh when
         * turned on again. */
        if (set.rate_limit_rpm == 0) win_clear(&s->req_window);
        if (set.tpm == 0) win_clear(&s->tok_window);
        s->settings = set;
    }
    pthread_mutex_unlock(&s->ctl_lock);
    json_decref(req);
    if (rc != 0)
        return send_error(conn, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, 0,
                          "/control: %s", err);
    json_t *now = settings_json(&set);
    char *text = now ? json_dumps(now, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    sheaf_info(COMP, "control: settings now %s", text ? text : "(out of memory)");
    free(text);
    return send_json(conn, MHD_HTTP_OK, now, 0, NULL);
}

static int is_path(const char *url, const char *path) { return strcmp(url, path) == 0; }

/* Logs a completions request's outcome (unless --quiet); returns ret. */
static enum MHD_Result chat_logged(sim *s, const char *method, const char *url,
                                   const req_ctx *ctx, enum MHD_Result ret)
{
    long long ms = (long long)(sheaf_mono_ms() - ctx->started_ms);
    if (s->opts.quiet) {
        /* no line per request */
    } else if (ctx->status == 0) {
        sheaf_info(COMP, "%s %s -> no response (%s) after %lld ms", method, url,
                   ctx->note ? ctx->note : "error", ms);
    } else {
        sheaf_info(COMP, "%s %s -> %u in %lld ms (prompt %llu, completion %llu tokens)%s%s",
                   method, url, ctx->status, ms, (unsigned long long)ctx->ptok,
                   (unsigned long long)ctx->ctok, ctx->note ? " fault: " : "",
                   ctx->note ? ctx->note : "");
    }
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    sim *s = cls;
    req_ctx *ctx = *con_cls;
    (void)version;

    if (!ctx) {
        /* First call: headers only. */
        ctx = calloc(1, sizeof(*ctx));
        if (!ctx) return MHD_NO;
        ctx->started_ms = sheaf_mono_ms();
        sheaf_buf_init(&ctx->body, s->opts.max_request_bytes);
        *con_cls = ctx;
        if (is_path(url, "/v1/chat/completions") || is_path(url, "/chat/completions")) {
            ctx->ep = EP_COMPLETIONS;
            ctx->url = is_path(url, "/chat/completions") ? "/chat/completions"
                                                         : "/v1/chat/completions";
            STATS_UPDATE(s, {
                s->stats.requests++;
                if (++s->stats.in_flight > s->stats.max_in_flight)
                    s->stats.max_in_flight = s->stats.in_flight;
            });
            /* A declared body over the cap is refused before it is sent. */
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > s->opts.max_request_bytes) {
                ctx->too_large = 1;
                ctx->answered = 1;
                STATS_UPDATE(s, s->stats.bad_requests++);
                if (!s->opts.quiet)
                    sheaf_info(COMP, "%s %s -> 413 (Content-Length %s)", method, url, cl);
                return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error",
                                  "request_too_large", 0, "Request body exceeds %zu bytes",
                                  s->opts.max_request_bytes);
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        /* Past the cap the rest is read and dropped; the answer is 413. */
        if (!ctx->too_large &&
            sheaf_buf_append(&ctx->body, upload_data, *upload_data_size) != SHEAF_OK) {
            ctx->too_large = 1;
            sheaf_buf_free(&ctx->body);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (ctx->call) {
        /* Back from its latency: timer_main resumed the connection. */
        timer_woke(&s->timer, ctx);
        return chat_logged(s, method, url, ctx, chat_reply(s, conn, ctx));
    }
    if (ctx->answered) return MHD_YES;
    ctx->answered = 1;

    if (ctx->ep == EP_COMPLETIONS) {
        enum MHD_Result ret;
        if (!chat_admit(s, conn, method, ctx, &ret)) return chat_logged(s, method, url, ctx, ret);
        if (ctx->call->delay_ms > 0 &&
            timer_sleep(&s->timer, conn, ctx, ctx->call->delay_ms) == 0)
            return MHD_YES; /* on_request is called again when it is resumed */
        return chat_logged(s, method, url, ctx, chat_reply(s, conn, ctx));
    }
    if (is_path(url, "/health") && strcmp(method, MHD_HTTP_METHOD_GET) == 0)
        return send_body(conn, MHD_HTTP_OK, strdup("ok\n"), "text/plain", 0, NULL);
    if (is_path(url, "/stats") && strcmp(method, MHD_HTTP_METHOD_GET) == 0)
        return handle_stats(s, conn);
    if (is_path(url, "/stats/reset") && strcmp(method, MHD_HTTP_METHOD_POST) == 0)
        return handle_stats_reset(s, conn);
    if (is_path(url, "/control") && (strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                                     strcmp(method, MHD_HTTP_METHOD_POST) == 0))
        return handle_control(s, conn, method, ctx);
    if (is_path(url, "/health") || is_path(url, "/stats") || is_path(url, "/stats/reset") ||
        is_path(url, "/control"))
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request_error",
                          "method_not_allowed", 0, "%s is not allowed on %s", method, url);
    return send_error(conn, MHD_HTTP_NOT_FOUND, "invalid_request_error", "unknown_url", 0,
                      "Unknown request URL: %s %s", method, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    sim *s = cls;
    req_ctx *ctx = *con_cls;
    (void)conn;
    (void)toe;
    if (!ctx) return;
    if (ctx->call) {
        /* Its client left while it slept: MHD saw the connection closed
         * when it was resumed and did not call on_request.  It is answered
         * all the same, to no one (faults drawn, answers counted, a log
         * line), as a handler sleeping in its own thread did. */
        timer_woke(&s->timer, ctx);
        chat_logged(s, MHD_HTTP_METHOD_POST, ctx->url, ctx, chat_reply(s, NULL, ctx));
    }
    if (ctx->ep == EP_COMPLETIONS) STATS_UPDATE(s, s->stats.in_flight--);
    timer_woke(&s->timer, ctx);
    sheaf_buf_free(&ctx->body);
    free(ctx);
    *con_cls = NULL;
}

/* --max-connections: MHD's own limit, in its epoll mode, stops accepting
 * when it is reached (a client over it waits in the listen backlog), where
 * with a thread per connection MHD accepted and closed it at once, with a
 * warning.  So the limit is kept here, the same way: MHD's is set a little
 * higher (DAEMON_THREADS more) so that it keeps accepting, and a connection
 * over ours is closed with the warning MHD wrote. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    sim *s = cls;
    (void)conn;
    (void)socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) atomic_fetch_add(&s->connections, 1);
    else if (code == MHD_CONNECTION_NOTIFY_CLOSED) atomic_fetch_sub(&s->connections, 1);
}

static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    sim *s = cls;
    (void)addr;
    (void)addrlen;
    if (atomic_load(&s->connections) < s->opts.max_connections) return MHD_YES;
    sheaf_warn(COMP, "libmicrohttpd: Server reached connection limit. Closing inbound connection.");
    return MHD_NO;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[1024];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    sheaf_warn(COMP, "libmicrohttpd: %s", msg);
}

/* ---- start-up ----------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sheaf-llm-sim [options]\n"
            "  A deterministic OpenAI-compatible chat completions server (extractive\n"
            "  summaries of the last user message, or of its <text>...</text> sections).\n"
            "  --host ADDR              listen address (default 127.0.0.1)\n"
            "  --port N                 port; 0 picks a free one (default 0)\n"
            "  --port-file PATH         write the bound port here once listening\n"
            "  --latency-ms N           delay before each answer (default 0)\n"
            "  --jitter-ms N            plus a uniform 0..N ms (default 0)\n"
            "  --error-rate F           probability 0..1 of a 500 (default 0)\n"
            "  --malformed-rate F       probability 0..1 of a 200 with truncated JSON (default 0)\n"
            "  --reset-rate F           probability 0..1 of a connection reset, no response\n"
            "                           (default 0)\n"
            "  --slow-rate F            probability 0..1 of an answer --slow-ms late (default 0)\n"
            "  --slow-ms N              the extra delay of a slow answer (default 0; needed\n"
            "                           with --slow-rate)\n"
            "  --seed N                 seed of the random draws (default 1)\n"
            "  --rate-limit-rpm N       requests per 60 s window, else 429 (0 = none)\n"
            "  --tpm N                  tokens (prompt + completion) per 60 s window, else\n"
            "                           429 (0 = none)\n"
            "  --api-key KEY            require Authorization: Bearer KEY (or set\n"
            "                           SHEAF_SIM_API_KEY, which ps does not show)\n"
            "  (SHEAF_SIM_MODELS=a,b    serve only these models: others get 404)\n"
            "  --max-request-bytes N    larger bodies get 413 (default 8388608)\n"
            "  --summary-words N        words in an answer at most (default 120)\n"
            "  --context-tokens N       the model's window: prompt tokens plus max_tokens over\n"
            "                           it get 400 context_length_exceeded (default 0: none;\n"
            "                           also SHEAF_SIM_CONTEXT_TOKENS)\n"
            "  --critique-done-after K  a critique request of \"Round: K\" or later\n"
            "                           answers DONE (default 2)\n"
            "  --max-connections N      concurrent connections (default 4096: a fleet of\n"
            "                           windows of 1,024 keeps its idle connections open)\n"
            "  --quiet                  no log line per request\n"
            "  -h, --help               this text\n"
            "  Endpoints: POST /v1/chat/completions, POST /chat/completions,\n"
            "             GET /stats, POST /stats/reset, GET /health,\n"
            "             GET /control, POST /control with any of {\"latency_ms\",\n"
            "             \"jitter_ms\", \"error_rate\", \"malformed_rate\", \"reset_rate\",\n"
            "             \"slow_rate\", \"slow_ms\", \"rate_limit_rpm\", \"tpm\",\n"
            "             \"fail_next\": N (next N answer 500), \"refuse_next\": N (next N\n"
            "             answer 400), \"rate_limit_next\": N (next N\n"
            "             answer 429), \"critique_done_after\"}\n"
            "  Answers: structured output for response_format json_schema/json_object;\n"
            "  a critique or a refinement when the system message says \"critic\" or\n"
            "  \"refine\"/\"editor\"; else the summary (see the top of llm_sim.c).\n");
}

static int parse_ll(const char *name, const char *s, long long min, long long max,
                    long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "sheaf-llm-sim: --%s: expected an integer in %lld..%lld, got \"%s\"\n",
                name, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_rate(const char *name, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0 && v <= 1)) {
        fprintf(stderr, "sheaf-llm-sim: --%s: expected 0..1, got \"%s\"\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* getopt codes of the options without a letter. */
enum {
    OPT_MALFORMED_RATE = 256,
    OPT_RESET_RATE,
    OPT_SLOW_RATE,
    OPT_SLOW_MS,
    OPT_TPM,
    OPT_CRITIQUE_DONE_AFTER,
    OPT_CONTEXT_TOKENS
};

static int parse_opts(int argc, char **argv, sim_opts *o)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"port-file", required_argument, NULL, 'f'},
        {"latency-ms", required_argument, NULL, 'l'},
        {"jitter-ms", required_argument, NULL, 'j'},
        {"error-rate", required_argument, NULL, 'e'},
        {"malformed-rate", required_argument, NULL, OPT_MALFORMED_RATE},
        {"reset-rate", required_argument, NULL, OPT_RESET_RATE},
        {"slow-rate", required_argument, NULL, OPT_SLOW_RATE},
        {"slow-ms", required_argument, NULL, OPT_SLOW_MS},
        {"seed", required_argument, NULL, 's'},
        {"rate-limit-rpm", required_argument, NULL, 'r'},
        {"tpm", required_argument, NULL, OPT_TPM},
        {"critique-done-after", required_argument, NULL, OPT_CRITIQUE_DONE_AFTER},
        {"context-tokens", required_argument, NULL, OPT_CONTEXT_TOKENS},
        {"api-key", required_argument, NULL, 'k'},
        {"max-request-bytes", required_argument, NULL, 'm'},
        {"summary-words", required_argument, NULL, 'w'},
        {"max-connections", required_argument, NULL, 'c'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    sim_settings *set = &o->initial;
    const char *name, *conflict;
    long long v;
    int c, idx;

    *o = (sim_opts){.host = "127.0.0.1", .seed = 1, .max_request_bytes = 8u << 20,
                    .summary_words = 120, .max_connections = 4096};
    set->critique_done_after = DEFAULT_CRITIQUE_DONE_AFTER;
    while ((c = getopt_long(argc, argv, "h", longopts, &idx)) != -1) {
        name = c == 'h' || c == '?' ? "" : longopts[idx].name;
        switch (c) {
        case 'H': o->host = optarg; break;
        case 'f': o->port_file = optarg; break;
        case 'k': o->api_key = optarg; break;
        case 'q': o->quiet = 1; break;
        case 'p':
            if (parse_ll(name, optarg, 0, 65535, &v)) return -1;
            o->port = (int)v;
            break;
        case 'l':
            if (parse_ll(name, optarg, 0, MAX_DELAY_MS, &set->latency_ms)) return -1;
            break;
        case 'j':
            if (parse_ll(name, optarg, 0, MAX_DELAY_MS, &set->jitter_ms)) return -1;
            break;
        case OPT_SLOW_MS:
            if (parse_ll(name, optarg, 0, MAX_DELAY_MS, &set->slow_ms)) return -1;
            break;
        case 's':
            if (parse_ll(name, optarg, 0, LLONG_MAX, &v)) return -1;
            o->seed = (uint64_t)v;
            break;
        case 'r':
            if (parse_ll(name, optarg, 0, MAX_RPM, &set->rate_limit_rpm)) return -1;
            break;
        case OPT_TPM:
            if (parse_ll(name, optarg, 0, MAX_TPM, &set->tpm)) return -1;
            break;
        case OPT_CRITIQUE_DONE_AFTER:
            if (parse_ll(name, optarg, 0, MAX_ROUNDS, &set->critique_done_after)) return -1;
            break;
        case OPT_CONTEXT_TOKENS:
            if (parse_ll(name, optarg, 0, 1LL << 32, &v)) return -1;
            o->context_tokens = (uint64_t)v;
            break;
        case 'm':
            if (parse_ll(name, optarg, 1, 1LL << 32, &v)) return -1;
            o->max_request_bytes = (size_t)v;
            break;
        case 'w':
            if (parse_ll(name, optarg, 1, MAX_SUMMARY_WORDS, &v)) return -1;
            o->summary_words = (int)v;
            break;
        case 'c':
            if (parse_ll(name, optarg, 1, 100000, &v)) return -1;
            o->max_connections = (int)v;
            break;
        case 'e':
            if (parse_rate(name, optarg, &set->error_rate)) return -1;
            break;
        case OPT_MALFORMED_RATE:
            if (parse_rate(name, optarg, &set->malformed_rate)) return -1;
            break;
        case OPT_RESET_RATE:
            if (parse_rate(name, optarg, &set->reset_rate)) return -1;
            break;
        case OPT_SLOW_RATE:
            if (parse_rate(name, optarg, &set->slow_rate)) return -1;
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sheaf-llm-sim: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    conflict = settings_conflict(set);
    if (conflict) {
        fprintf(stderr, "sheaf-llm-sim: --slow-rate > 0 needs --slow-ms > 0\n");
        return -1;
    }
    /* From the environment, the key stays out of the process list. */
    if (!o->api_key) o->api_key = getenv("SHEAF_SIM_API_KEY");
    if (!o->models) o->models = getenv("SHEAF_SIM_MODELS");
    if (!o->context_tokens && getenv("SHEAF_SIM_CONTEXT_TOKENS") &&
        parse_ll("SHEAF_SIM_CONTEXT_TOKENS", getenv("SHEAF_SIM_CONTEXT_TOKENS"), 0, 1LL << 32, &v))
        return -1;
    else if (!o->context_tokens && getenv("SHEAF_SIM_CONTEXT_TOKENS"))
        o->context_tokens = (uint64_t)v;
    if (o->models && !o->models[0]) o->models = NULL;
    if (o->api_key && !o->api_key[0]) o->api_key = NULL;
    return 0;
}

/* Writes "text\n" to path via path.tmp and rename, so readers never see a
 * half-written file. */
static int write_file_atomic(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    FILE *f;
    int ok;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) return -1;
    f = fopen(tmp, "w");
    if (!f) return -1;
    ok = fprintf(f, "%s\n", text) >= 0;
    ok = (fflush(f) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Raises the open-file limit to its hard maximum: every connection is a
 * descriptor. */
static void raise_nofile(int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t need = (rlim_t)want + 64;
    if (rl.rlim_cur >= need) return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < need)
        sheaf_warn(COMP, "open files limited to %llu: fewer than %d connections may be served",
                   (unsigned long long)rl.rlim_cur, want);
}

static void sim_destroy(sim *s)
{
    timer_destroy(&s->timer);
    win_clear(&s->req_window);
    win_clear(&s->tok_window);
    pthread_mutex_destroy(&s->stats_lock);
    pthread_mutex_destroy(&s->ctl_lock);
    pthread_mutex_destroy(&s->err_rng.lock);
    pthread_mutex_destroy(&s->jitter_rng.lock);
    pthread_mutex_destroy(&s->malformed_rng.lock);
    pthread_mutex_destroy(&s->reset_rng.lock);
    pthread_mutex_destroy(&s->slow_rng.lock);
    sim_seen_destroy(&s->seen);
}

int main(int argc, char **argv)
{
    static sim s; /* shared with the daemon's threads */
    struct MHD_Daemon *d = NULL;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    const char *host;
    char port_text[16], url[128], limit[64];
    sigset_t block, old;
    struct sigaction act;
    int rc = 1;

    if (parse_opts(argc, argv, &s.opts) != 0) return 2;

    pthread_mutex_init(&s.stats_lock, NULL);
    pthread_mutex_init(&s.ctl_lock, NULL);
    pthread_mutex_init(&s.err_rng.lock, NULL);
    pthread_mutex_init(&s.jitter_rng.lock, NULL);
    pthread_mutex_init(&s.malformed_rng.lock, NULL);
    pthread_mutex_init(&s.reset_rng.lock, NULL);
    pthread_mutex_init(&s.slow_rng.lock, NULL);
    sim_seen_init(&s.seen);
    /* One sleeper per connection at most: as many as MHD lets in. */
    if (timer_init(&s.timer, (size_t)s.opts.max_connections + DAEMON_THREADS) != 0) {
        fprintf(stderr, "sheaf-llm-sim: out of memory\n");
        sim_destroy(&s);
        return 1;
    }
    /* The error and jitter streams are as before the other faults existed,
     * so --error-rate with a given --seed fails the same requests. */
    s.err_rng.state = s.opts.seed;
    s.jitter_rng.state = s.opts.seed ^ 0x6A09E667F3BCC909ULL;
    s.malformed_rng.state = s.opts.seed ^ 0xBB67AE8584CAA73BULL;
    s.reset_rng.state = s.opts.seed ^ 0x3C6EF372FE94F82BULL;
    s.slow_rng.state = s.opts.seed ^ 0xA54FF53A5F1D36F1ULL;
    s.settings = s.opts.initial;
    atomic_init(&s.next_id, 1);
    atomic_init(&s.stopping, 0);
    atomic_init(&s.connections, 0);

    host = strcmp(s.opts.host, "localhost") == 0 ? "127.0.0.1" : s.opts.host;
    memset(&sin, 0, sizeof(sin));
    memset(&sin6, 0, sizeof(sin6));
    if (inet_pton(AF_INET, host, &sin.sin_addr) == 1) {
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)s.opts.port);
        sa = (struct sockaddr *)&sin;
    } else if (inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1) {
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons((uint16_t)s.opts.port);
        sa = (struct sockaddr *)&sin6;
        flags |= MHD_USE_IPv6;
    } else {
        fprintf(stderr, "sheaf-llm-sim: --host: not a numeric IPv4/IPv6 address: \"%s\"\n",
                s.opts.host);
        rc = 2;
        goto out;
    }
    raise_nofile(s.opts.max_connections);

    memset(&act, 0, sizeof(act));
    act.sa_handler = on_signal;
    sigemptyset(&act.sa_mask);
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* The daemon's threads inherit this mask; only the main thread, waiting
     * in sigsuspend, takes the signals. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    if (timer_start(&s.timer) != 0) {
        sheaf_error(COMP, "cannot start the timer thread: %s", strerror(errno));
        goto out;
    }

    /* The logger must be the first option to catch every message. */
    d = MHD_start_daemon(flags, (uint16_t)s.opts.port, on_accept, &s, on_request, &s,
                         MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                         MHD_OPTION_SOCK_ADDR, sa,
                         MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)s.opts.max_connections + DAEMON_THREADS,
                         MHD_OPTION_NOTIFY_CONNECTION, on_connection, &s,
                         MHD_OPTION_THREAD_POOL_SIZE, DAEMON_THREADS,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S,
                         MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                         MHD_OPTION_THREAD_STACK_SIZE, (size_t)THREAD_STACK,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, &s,
                         MHD_OPTION_END);
    if (!d) {
        sheaf_error(COMP, "cannot listen on %s port %d: %s", s.opts.host, s.opts.port,
                    strerror(errno));
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info ? info->port : 0;
    snprintf(port_text, sizeof(port_text), "%u", port);
    if (s.opts.port_file && write_file_atomic(s.opts.port_file, port_text) != 0) {
        sheaf_error(COMP, "cannot write --port-file %s: %s", s.opts.port_file, strerror(errno));
        goto out;
    }
    snprintf(url, sizeof(url), (flags & MHD_USE_IPv6) ? "http://[%s]:%u/v1" : "http://%s:%u/v1",
             host, port);
    const sim_settings *set = &s.opts.initial;
    if (set->rate_limit_rpm && set->tpm)
        snprintf(limit, sizeof(limit), "%lld rpm, %lld tpm", set->rate_limit_rpm, set->tpm);
    else if (set->rate_limit_rpm)
        snprintf(limit, sizeof(limit), "%lld rpm", set->rate_limit_rpm);
    else if (set->tpm)
        snprintf(limit, sizeof(limit), "%lld tpm", set->tpm);
    else
        snprintf(limit, sizeof(limit), "none");
    sheaf_info(COMP,
               "LLM simulator listening on %s (deterministic, latency=%lldms jitter=%lldms "
               "error-rate=%g malformed-rate=%g reset-rate=%g slow-rate=%g slow=%lldms "
               "rate-limit=%s seed=%llu%s)",
               url, set->latency_ms, set->jitter_ms, set->error_rate, set->malformed_rate,
               set->reset_rate, set->slow_rate, set->slow_ms, limit,
               (unsigned long long)s.opts.seed, s.opts.api_key ? ", API key required" : "");

    /* Wait with the signals unblocked, atomically: none is missed. */
    sigdelset(&old, SIGTERM);
    sigdelset(&old, SIGINT);
    while (!stop_requested) sigsuspend(&old);
    sheaf_info(COMP, "stopping");
    rc = 0;

out:
    atomic_store(&s.stopping, 1);
    /* Sleeping requests are resumed and give up (no response); the daemon
     * stops once they are back, as MHD must not stop with one suspended. */
    timer_stop(&s.timer);
    for (int64_t end = sheaf_mono_ms() + DRAIN_MS;
         atomic_load(&s.timer.sleeping) > 0 && sheaf_mono_ms() < end;)
        sheaf_sleep_ms(5);
    if (d) MHD_stop_daemon(d);
    if (rc == 0 && s.opts.port_file) unlink(s.opts.port_file);
    sim_destroy(&s);
    if (rc == 0) sheaf_info(COMP, "stopped");
    return rc;
}
