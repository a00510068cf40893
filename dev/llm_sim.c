/* llm_sim.c - sheaf-llm-sim: a deterministic, OpenAI-compatible chat
 * completions server for development and tests.
 *
 * POST /v1/chat/completions (also /chat/completions) answers with an
 * extractive summary of the last user message (sim_summary.c), so a job run
 * twice gives byte-identical results and the reducer's output can be
 * compared across fleet sizes.  Around that core it simulates what a real
 * provider does to a fleet: latency (--latency-ms plus uniform --jitter-ms),
 * random 500s (--error-rate, drawn from a PRNG seeded with --seed), a
 * requests-per-minute limit answered with 429 and Retry-After
 * (--rate-limit-rpm: a sliding 60 s window over admitted requests, so no 60 s
 * span ever admits more than the limit), an API key check (--api-key), a
 * request size cap (--max-request-bytes: 413), fault triggers in the text
 * (SHEAF_SIM_FAIL_400 / SHEAF_SIM_FAIL_500), strict request validation
 * (400 with an OpenAI-style error object) and max_tokens (the answer is cut
 * to fit, finish_reason "length", as a real model stops).
 *
 * GET /stats reports counters (requests seen, answers by class, tokens,
 * in-flight and its maximum, so tests can check the fleet's concurrency and
 * that it respected the rate limit); POST /stats/reset zeroes them; GET
 * /health answers "ok".  Only the completions endpoints need the key.
 *
 * Threads: libmicrohttpd runs one thread per connection
 * (MHD_USE_THREAD_PER_CONNECTION), so sleeping for the simulated latency in
 * the handler delays only that request; hundreds of connections may be open
 * at once (--max-connections).  Shared state (counters, the rate window, the
 * PRNGs) is guarded by one mutex each; nothing is held while sleeping.
 *
 * A request's life: the access handler is called once with the headers
 * (a request context is made and counted in flight), then once per upload
 * chunk (appended to a capped sheaf_buf; past the cap the rest is
 * discarded), then once more to answer.  The completed-callback frees the
 * context and ends its in-flight count.
 *
 * Shutdown: SIGTERM/SIGINT set a flag (the daemon's threads have both
 * blocked, so the handler runs in the main thread, which waits in
 * sigsuspend); handlers still sleeping give up, the daemon is stopped and
 * the program exits 0. */
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
#include "sim_summary.h"

#define COMP "llm-sim"
#define SLEEP_SLICE_MS 50          /* latency sleeps wake this often to see shutdown */
#define MAX_RPM 1000000            /* bounds the sliding window's memory (8 MB) */
#define MAX_SUMMARY_WORDS 100000
#define THREAD_STACK (2u << 20)    /* jansson's parser recurses up to depth 2048 */
#define CONNECTION_TIMEOUT_S 300   /* idle keep-alive connections are closed after */

typedef struct sim_opts {
    const char *host;
    int port;
    const char *port_file;
    int latency_ms;
    int jitter_ms;
    double error_rate;
    uint64_t seed;
    int rate_limit_rpm;        /* 0: no limit */
    const char *api_key;       /* NULL: no key needed */
    int quiet;
    size_t max_request_bytes;
    int summary_words;
    int max_connections;
} sim_opts;

typedef struct sim_stats {
    uint64_t requests, completions, errors_500, rate_limited_429, bad_requests,
        unauthorized_401, prompt_tokens, completion_tokens;
    int64_t in_flight, max_in_flight;
} sim_stats;

/* A seeded splitmix64 stream; one per purpose so that, e.g., the error
 * sequence does not change when jitter is turned on. */
typedef struct sim_rng {
    pthread_mutex_t lock;
    uint64_t state;
} sim_rng;

typedef struct sim {
    sim_opts opts;
    pthread_mutex_t stats_lock;
    sim_stats stats;
    pthread_mutex_t rate_lock;
    int64_t *rate_ring;        /* admission times (mono ms), oldest at rate_head */
    size_t rate_used, rate_head;
    sim_rng err_rng, jitter_rng;
    atomic_ullong next_id;
    atomic_int stopping;
} sim;

typedef enum { EP_OTHER, EP_COMPLETIONS } endpoint;

/* One request, from its headers to its completion callback. */
typedef struct req_ctx {
    endpoint ep;
    int64_t started_ms;
    sheaf_buf body;
    int too_large;             /* the body went past --max-request-bytes */
    int answered;              /* a response was queued early (413 by Content-Length) */
} req_ctx;

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

/* Sleeps ms in short slices; returns -1 if shutdown began meanwhile. */
static int sleep_unless_stopping(sim *s, int64_t ms)
{
    int64_t end = sheaf_mono_ms() + ms;
    for (;;) {
        if (atomic_load(&s->stopping)) return -1;
        int64_t left = end - sheaf_mono_ms();
        if (left <= 0) return 0;
        sheaf_sleep_ms(left < SLEEP_SLICE_MS ? left : SLEEP_SLICE_MS);
    }
}

/* Sliding 60 s window over admitted requests.  Returns 1 to admit, else 0
 * with *retry_after_s the whole seconds until the oldest admission in the
 * window expires (at least 1). */
static int rate_admit(sim *s, int *retry_after_s)
{
    size_t cap = (size_t)s->opts.rate_limit_rpm;
    int admit = 1;

    if (cap == 0) return 1;
    pthread_mutex_lock(&s->rate_lock);
    int64_t now = sheaf_mono_ms();
    if (s->rate_used < cap) {
        s->rate_ring[(s->rate_head + s->rate_used) % cap] = now;
        s->rate_used++;
    } else if (s->rate_ring[s->rate_head] <= now - 60000) {
        /* The oldest has left the window: its slot becomes the newest. */
        s->rate_ring[s->rate_head] = now;
        s->rate_head = (s->rate_head + 1) % cap;
    } else {
        int64_t wait_ms = s->rate_ring[s->rate_head] + 60000 - now;
        *retry_after_s = (int)((wait_ms + 999) / 1000);
        if (*retry_after_s < 1) *retry_after_s = 1;
        admit = 0;
    }
    pthread_mutex_unlock(&s->rate_lock);
    return admit;
}

/* ---- responses ---------------------------------------------------------- */

/* Queues body (malloc'd; ownership passes to MHD, which frees it). */
static enum MHD_Result send_body(struct MHD_Connection *conn, unsigned status, char *body,
                                 const char *content_type, int retry_after_s)
{
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (!body) return MHD_NO;
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
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Sends json (a reference is stolen) compactly. */
static enum MHD_Result send_json(struct MHD_Connection *conn, unsigned status, json_t *json,
                                 int retry_after_s)
{
    char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    return send_body(conn, status, text, "application/json", retry_after_s);
}

/* An OpenAI-style error: {"error":{"message","type","param":null,"code"}}. */
static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status,
                                  const char *type, const char *code, int retry_after_s,
                                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status,
                                  const char *type, const char *code, int retry_after_s,
                                  const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *err = json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", msg, "type", type,
                            "param", "code", code);
    return send_json(conn, status, err, retry_after_s);
}

/* ---- chat completions --------------------------------------------------- */

/* A parsed, validated request: borrowed pointers into the JSON document. */
typedef struct chat_request {
    const char *model;
    int max_tokens;            /* 0: not given */
    uint64_t prompt_tokens;
    sheaf_buf user;            /* content of the last user message */
} chat_request;

/* Adds a message content (string, null, or an array of {"type":"text",
 * "text":...} parts) to the token count and, when keep, to out.  Returns an
 * error message or NULL. */
static const char *take_content(json_t *content, chat_request *cr, sheaf_buf *out, int keep)
{
    if (json_is_null(content)) return NULL;
    if (json_is_string(content)) {
        const char *t = json_string_value(content);
        size_t n = json_string_length(content);
        cr->prompt_tokens += sheaf_estimate_tokens(t, n);
        if (keep && sheaf_buf_append(out, t, n) != SHEAF_OK) return "out of memory";
        return NULL;
    }
    if (!json_is_array(content)) return "message content must be a string or an array of parts";
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!type || strcmp(type, "text") != 0 || !json_is_string(text))
            return "only text content parts are supported";
        if (keep && out->len && sheaf_buf_append(out, "\n", 1) != SHEAF_OK) return "out of memory";
        if (take_content(text, cr, out, keep)) return "out of memory";
    }
    return NULL;
}

/* Validates the request body; returns an error message (for a 400) or NULL. */
static const char *parse_chat(json_t *root, chat_request *cr)
{
    json_t *messages, *v, *msg;
    size_t i, last_user = (size_t)-1;

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
    json_array_foreach(messages, i, msg) {
        const char *e = take_content(json_object_get(msg, "content"), cr, &cr->user,
                                     i == last_user);
        if (e) return e;
    }

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
    return NULL;
}

/* Builds the chat.completion for a valid request; NULL when out of memory. */
static json_t *answer_chat(sim *s, const chat_request *cr, uint64_t *completion_tokens)
{
    int words = s->opts.summary_words;
    const char *finish = "stop";
    char id[40];
    json_t *resp;

    /* About 3 words per 4 tokens; the hard cut below makes sure. */
    if (cr->max_tokens > 0 && cr->max_tokens / 4 * 3 < words)
        words = cr->max_tokens / 4 * 3 > 0 ? cr->max_tokens / 4 * 3 : 1;
    char *text = sim_summary(cr->user.data ? cr->user.data : "", cr->user.len, words);
    if (!text) return NULL;
    size_t len = strlen(text);
    if (cr->max_tokens > 0 && sim_cut_to_tokens(text, len, (unsigned)cr->max_tokens) != len) {
        len = strlen(text);
        finish = "length";
    }
    *completion_tokens = sheaf_estimate_tokens(text, len);
    snprintf(id, sizeof(id), "simcmpl-%llu", (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    resp = json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:{s:I, s:I, s:I}}",
                     "id", id, "object", "chat.completion", "created", 0, "model", cr->model,
                     "choices", "index", 0, "message", "role", "assistant", "content", text,
                     "finish_reason", finish, "usage", "prompt_tokens",
                     (json_int_t)cr->prompt_tokens, "completion_tokens",
                     (json_int_t)*completion_tokens, "total_tokens",
                     (json_int_t)(cr->prompt_tokens + *completion_tokens));
    free(text);
    return resp;
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

/* Answers a complete completions request; returns what MHD wants and sets
 * *status for the log line. */
static enum MHD_Result handle_chat(sim *s, struct MHD_Connection *conn, const char *method,
                                   req_ctx *ctx, unsigned *status, uint64_t *ptok,
                                   uint64_t *ctok)
{
    chat_request cr;
    json_error_t jerr;
    json_t *root = NULL, *resp = NULL;
    enum MHD_Result ret;
    const char *bad;
    int retry_after = 0;

    memset(&cr, 0, sizeof(cr));
    sheaf_buf_init(&cr.user, s->opts.max_request_bytes);

    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0) {
        *status = MHD_HTTP_METHOD_NOT_ALLOWED;
        STATS_UPDATE(s, s->stats.bad_requests++);
        ret = send_error(conn, *status, "invalid_request_error", "method_not_allowed", 0,
                         "%s is not allowed here; use POST", method);
        goto out;
    }
    if (!authorized(s, conn)) {
        *status = MHD_HTTP_UNAUTHORIZED;
        STATS_UPDATE(s, s->stats.unauthorized_401++);
        ret = send_error(conn, *status, "invalid_request_error", "invalid_api_key", 0,
                         "Incorrect or missing API key (expected Authorization: Bearer ...)");
        goto out;
    }
    if (ctx->too_large) {
        *status = MHD_HTTP_CONTENT_TOO_LARGE;
        STATS_UPDATE(s, s->stats.bad_requests++);
        ret = send_error(conn, *status, "invalid_request_error", "request_too_large", 0,
                         "Request body exceeds %zu bytes", s->opts.max_request_bytes);
        goto out;
    }
    root = json_loadb(ctx->body.data ? ctx->body.data : "", ctx->body.len, 0, &jerr);
    bad = root ? parse_chat(root, &cr) : NULL;
    if (!root || bad) {
        *status = MHD_HTTP_BAD_REQUEST;
        STATS_UPDATE(s, s->stats.bad_requests++);
        if (!root)
            ret = send_error(conn, *status, "invalid_request_error", NULL, 0,
                             "We could not parse the JSON body of your request: %s (line %d, "
                             "column %d)",
                             jerr.text, jerr.line, jerr.column);
        else
            ret = send_error(conn, *status, "invalid_request_error", NULL, 0, "%s", bad);
        goto out;
    }
    if (!rate_admit(s, &retry_after)) {
        *status = MHD_HTTP_TOO_MANY_REQUESTS;
        STATS_UPDATE(s, s->stats.rate_limited_429++);
        ret = send_error(conn, *status, "requests", "rate_limit_exceeded", retry_after,
                         "Rate limit reached: %d requests per minute (simulated). Please try "
                         "again in %ds.",
                         s->opts.rate_limit_rpm, retry_after);
        goto out;
    }

    int64_t delay = s->opts.latency_ms;
    if (s->opts.jitter_ms > 0)
        delay += (int64_t)(rng_unit(&s->jitter_rng) * (s->opts.jitter_ms + 1));
    if (sleep_unless_stopping(s, delay) != 0) {
        *status = 0;
        ret = MHD_NO; /* shutting down: drop the connection */
        goto out;
    }
    /* Fault triggers in the text itself, so a test can make one chunk fail
     * for ever without touching the others: SHEAF_SIM_FAIL_400 is refused
     * (non-retryable), SHEAF_SIM_FAIL_500 always errors (retryable). */
    if (cr.user.data && strstr(cr.user.data, "SHEAF_SIM_FAIL_400")) {
        *status = MHD_HTTP_BAD_REQUEST;
        STATS_UPDATE(s, s->stats.bad_requests++);
        ret = send_error(conn, *status, "invalid_request_error", NULL, 0,
                         "The request was refused (simulated: SHEAF_SIM_FAIL_400 in the text).");
        goto out;
    }
    if (cr.user.data && strstr(cr.user.data, "SHEAF_SIM_FAIL_500")) {
        *status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        ret = send_error(conn, *status, "server_error", NULL, 0,
                         "The server had an error (simulated: SHEAF_SIM_FAIL_500 in the text).");
        goto out;
    }
    if (s->opts.error_rate > 0 && rng_unit(&s->err_rng) < s->opts.error_rate) {
        *status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        ret = send_error(conn, *status, "server_error", NULL, 0,
                         "The server had an error while processing your request (simulated).");
        goto out;
    }

    resp = answer_chat(s, &cr, ctok);
    if (!resp) {
        *status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        STATS_UPDATE(s, s->stats.errors_500++);
        ret = send_error(conn, *status, "server_error", NULL, 0, "out of memory");
        goto out;
    }
    *ptok = cr.prompt_tokens;
    *status = MHD_HTTP_OK;
    STATS_UPDATE(s, {
        s->stats.completions++;
        s->stats.prompt_tokens += cr.prompt_tokens;
        s->stats.completion_tokens += *ctok;
    });
    ret = send_json(conn, *status, resp, 0);
    resp = NULL; /* stolen by send_json */

out:
    json_decref(root);
    sheaf_buf_free(&cr.user);
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
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "requests",
        (json_int_t)st.requests, "completions", (json_int_t)st.completions, "errors_500",
        (json_int_t)st.errors_500, "rate_limited_429", (json_int_t)st.rate_limited_429,
        "bad_requests", (json_int_t)st.bad_requests, "unauthorized_401",
        (json_int_t)st.unauthorized_401, "in_flight", (json_int_t)st.in_flight,
        "max_in_flight", (json_int_t)st.max_in_flight, "prompt_tokens",
        (json_int_t)st.prompt_tokens, "completion_tokens", (json_int_t)st.completion_tokens);
    return send_json(conn, MHD_HTTP_OK, j, 0);
}

static enum MHD_Result handle_stats_reset(sim *s, struct MHD_Connection *conn)
{
    pthread_mutex_lock(&s->stats_lock);
    int64_t in_flight = s->stats.in_flight; /* a gauge, not a counter: kept */
    memset(&s->stats, 0, sizeof(s->stats));
    s->stats.in_flight = s->stats.max_in_flight = in_flight;
    pthread_mutex_unlock(&s->stats_lock);
    return send_json(conn, MHD_HTTP_OK, json_pack("{s:b}", "reset", 1), 0);
}

static int is_path(const char *url, const char *path) { return strcmp(url, path) == 0; }

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
    if (ctx->answered) return MHD_YES;
    ctx->answered = 1;

    if (ctx->ep == EP_COMPLETIONS) {
        unsigned status = 0;
        uint64_t ptok = 0, ctok = 0;
        enum MHD_Result ret = handle_chat(s, conn, method, ctx, &status, &ptok, &ctok);
        if (!s->opts.quiet && status == 0)
            sheaf_info(COMP, "%s %s -> dropped: shutting down", method, url);
        else if (!s->opts.quiet)
            sheaf_info(COMP, "%s %s -> %u in %lld ms (prompt %llu, completion %llu tokens)",
                       method, url, status, (long long)(sheaf_mono_ms() - ctx->started_ms),
                       (unsigned long long)ptok, (unsigned long long)ctok);
        return ret;
    }
    if (is_path(url, "/health") && strcmp(method, MHD_HTTP_METHOD_GET) == 0)
        return send_body(conn, MHD_HTTP_OK, strdup("ok\n"), "text/plain", 0);
    if (is_path(url, "/stats") && strcmp(method, MHD_HTTP_METHOD_GET) == 0)
        return handle_stats(s, conn);
    if (is_path(url, "/stats/reset") && strcmp(method, MHD_HTTP_METHOD_POST) == 0)
        return handle_stats_reset(s, conn);
    if (is_path(url, "/health") || is_path(url, "/stats") || is_path(url, "/stats/reset"))
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
    if (ctx->ep == EP_COMPLETIONS) STATS_UPDATE(s, s->stats.in_flight--);
    sheaf_buf_free(&ctx->body);
    free(ctx);
    *con_cls = NULL;
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
            "  --seed N                 seed of the error and jitter draws (default 1)\n"
            "  --rate-limit-rpm N       requests per 60 s window, else 429 (0 = none)\n"
            "  --api-key KEY            require Authorization: Bearer KEY\n"
            "  --max-request-bytes N    larger bodies get 413 (default 8388608)\n"
            "  --summary-words N        words in an answer at most (default 120)\n"
            "  --max-connections N      concurrent connections (default 1024)\n"
            "  --quiet                  no log line per request\n"
            "  -h, --help               this text\n"
            "  Endpoints: POST /v1/chat/completions, POST /chat/completions,\n"
            "             GET /stats, POST /stats/reset, GET /health\n");
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

static int parse_opts(int argc, char **argv, sim_opts *o)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"port-file", required_argument, NULL, 'f'},
        {"latency-ms", required_argument, NULL, 'l'},
        {"jitter-ms", required_argument, NULL, 'j'},
        {"error-rate", required_argument, NULL, 'e'},
        {"seed", required_argument, NULL, 's'},
        {"rate-limit-rpm", required_argument, NULL, 'r'},
        {"api-key", required_argument, NULL, 'k'},
        {"max-request-bytes", required_argument, NULL, 'm'},
        {"summary-words", required_argument, NULL, 'w'},
        {"max-connections", required_argument, NULL, 'c'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *name;
    long long v;
    char *end;
    int c, idx;

    *o = (sim_opts){.host = "127.0.0.1", .seed = 1, .max_request_bytes = 8u << 20,
                    .summary_words = 120, .max_connections = 1024};
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
            if (parse_ll(name, optarg, 0, 3600000, &v)) return -1;
            o->latency_ms = (int)v;
            break;
        case 'j':
            if (parse_ll(name, optarg, 0, 3600000, &v)) return -1;
            o->jitter_ms = (int)v;
            break;
        case 's':
            if (parse_ll(name, optarg, 0, LLONG_MAX, &v)) return -1;
            o->seed = (uint64_t)v;
            break;
        case 'r':
            if (parse_ll(name, optarg, 0, MAX_RPM, &v)) return -1;
            o->rate_limit_rpm = (int)v;
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
            errno = 0;
            o->error_rate = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(o->error_rate >= 0 && o->error_rate <= 1)) {
                fprintf(stderr, "sheaf-llm-sim: --error-rate: expected 0..1, got \"%s\"\n",
                        optarg);
                return -1;
            }
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sheaf-llm-sim: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
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
 * descriptor and a thread. */
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
    free(s->rate_ring);
    s->rate_ring = NULL;
    pthread_mutex_destroy(&s->stats_lock);
    pthread_mutex_destroy(&s->rate_lock);
    pthread_mutex_destroy(&s->err_rng.lock);
    pthread_mutex_destroy(&s->jitter_rng.lock);
}

int main(int argc, char **argv)
{
    static sim s; /* shared with the daemon's threads */
    struct MHD_Daemon *d = NULL;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    const char *host;
    char port_text[16], url[128], limit[32];
    sigset_t block, old;
    struct sigaction act;
    int rc = 1;

    if (parse_opts(argc, argv, &s.opts) != 0) return 2;

    pthread_mutex_init(&s.stats_lock, NULL);
    pthread_mutex_init(&s.rate_lock, NULL);
    pthread_mutex_init(&s.err_rng.lock, NULL);
    pthread_mutex_init(&s.jitter_rng.lock, NULL);
    s.err_rng.state = s.opts.seed;
    s.jitter_rng.state = s.opts.seed ^ 0x6A09E667F3BCC909ULL;
    atomic_init(&s.next_id, 1);
    atomic_init(&s.stopping, 0);
    if (s.opts.rate_limit_rpm > 0) {
        s.rate_ring = calloc((size_t)s.opts.rate_limit_rpm, sizeof(*s.rate_ring));
        if (!s.rate_ring) {
            sheaf_error(COMP, "out of memory");
            goto out;
        }
    }

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

    /* The logger must be the first option to catch every message. */
    d = MHD_start_daemon(flags, (uint16_t)s.opts.port, NULL, NULL, on_request, &s,
                         MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                         MHD_OPTION_SOCK_ADDR, sa,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)s.opts.max_connections,
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
    if (s.opts.rate_limit_rpm)
        snprintf(limit, sizeof(limit), "%d rpm", s.opts.rate_limit_rpm);
    else
        snprintf(limit, sizeof(limit), "none");
    sheaf_info(COMP,
               "LLM simulator listening on %s (deterministic, latency=%dms jitter=%dms "
               "error-rate=%g rate-limit=%s seed=%llu%s)",
               url, s.opts.latency_ms, s.opts.jitter_ms, s.opts.error_rate, limit,
               (unsigned long long)s.opts.seed, s.opts.api_key ? ", API key required" : "");

    /* Wait with the signals unblocked, atomically: none is missed. */
    sigdelset(&old, SIGTERM);
    sigdelset(&old, SIGINT);
    while (!stop_requested) sigsuspend(&old);
    sheaf_info(COMP, "stopping");
    rc = 0;

out:
    atomic_store(&s.stopping, 1);
    if (d) MHD_stop_daemon(d);
    if (rc == 0 && s.opts.port_file) unlink(s.opts.port_file);
    sim_destroy(&s);
    if (rc == 0) sheaf_info(COMP, "stopped");
    return rc;
}
