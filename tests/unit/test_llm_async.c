/* test_llm_async.c - unit tests of the many-in-flight LLM engine
 * (common/llm/llm_async.c) against an in-process HTTP stub (http_stub.h).
 *
 * Each request tells the stub what to do: the user message carries
 * "id=<n> plan=<a1>,<a2>,... delay=<ms>", and attempt k of call n gets
 * action a_k (the last one repeats).  Actions:
 *   ok          200 with a completion "answer <n>"
 *   e<status>   that status with a JSON error body; e429/<s> adds
 *               "Retry-After: <s>"
 *   bad         200 with broken JSON            trunc  half the body, close
 *   close       connection reset, no answer      hang   never answers
 *   rl0         200 ok with x-ratelimit-remaining-requests: 0 and
 *               x-ratelimit-reset-requests: 250ms
 *   tpm         200 ok with x-ratelimit-limit-tokens: 540 (one answer of 9
 *               tokens a second) and -remaining-tokens: 540
 * A fake limiter counts acquire and penalize calls and can refuse or fail.
 * The whole file runs in a few seconds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "http_stub.h"

#include "../../common/llm/llm_internal.h"
#include "sheaf/llm_async.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

#define MAX_IDS 1024

/* ---- the stub's handler ----------------------------------------------------------- */

static atomic_int attempts_by_id[MAX_IDS];

static void reset_attempts(void)
{
    for (int i = 0; i < MAX_IDS; i++) atomic_store(&attempts_by_id[i], 0);
}

/* Copies the k-th (0-based, last repeats) comma-separated action of plan. */
static void plan_action(const char *plan, int k, char *out, size_t outlen)
{
    const char *p = plan, *end;
    for (; k > 0; k--) {
        const char *comma = strchr(p, ',');
        if (!comma || comma > strchr(p, ' ')) break;
        p = comma + 1;
    }
    end = p + strcspn(p, ", \"");
    snprintf(out, outlen, "%.*s", (int)(end - p), p);
}

static void stub_handler(void *ud, const char *head, const char *body, http_stub_reply *r)
{
    const char *idp = strstr(body, "id="), *plan = strstr(body, "plan="),
               *delay = strstr(body, "delay=");
    int id = idp ? atoi(idp + 3) : 0, k;
    char act[32];
    (void)ud;
    (void)head;

    if (id < 0 || id >= MAX_IDS || !plan) {
        r->status = 400;
        snprintf(r->body, sizeof(r->body), "{\"error\":{\"message\":\"no plan\"}}");
        return;
    }
    k = atomic_fetch_add(&attempts_by_id[id], 1);
    plan_action(plan + 5, k, act, sizeof(act));
    r->delay_ms = delay ? atoi(delay + 6) : 0;
    if (strcmp(act, "ok") == 0 || strcmp(act, "rl0") == 0 || strcmp(act, "trunc") == 0 ||
        strcmp(act, "tpm") == 0) {
        snprintf(r->body, sizeof(r->body),
                 "{\"id\":\"c%d\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                 "\"content\":\"answer %d\"},\"finish_reason\":\"stop\"}],"
                 "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}",
                 id, id);
        if (strcmp(act, "rl0") == 0)
            snprintf(r->headers, sizeof(r->headers),
                     "x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 250ms\r\n");
        if (strcmp(act, "tpm") == 0)
            snprintf(r->headers, sizeof(r->headers),
                     "x-ratelimit-limit-tokens: 540\r\nx-ratelimit-remaining-tokens: 540\r\n"
                     "x-ratelimit-reset-tokens: 1s\r\n");
        if (strcmp(act, "trunc") == 0) r->action = HTTP_STUB_TRUNCATE;
    } else if (act[0] == 'e') {
        const char *slash = strchr(act, '/');
        r->status = atoi(act + 1);
        if (slash) snprintf(r->headers, sizeof(r->headers), "Retry-After: %s\r\n", slash + 1);
        snprintf(r->body, sizeof(r->body), "{\"error\":{\"message\":\"stub says %d\"}}",
                 r->status);
    } else if (strcmp(act, "bad") == 0) {
        snprintf(r->body, sizeof(r->body), "{\"choices\":[{\"message\":");
    } else if (strcmp(act, "close") == 0) {
        r->action = HTTP_STUB_CLOSE;
    } else if (strcmp(act, "hang") == 0) {
        r->action = HTTP_STUB_HANG;
    } else {
        r->status = 400;
        snprintf(r->body, sizeof(r->body), "{\"error\":{\"message\":\"unknown action\"}}");
    }
}

/* ---- what the callbacks saw ---------------------------------------------------------- */

typedef struct call_rec {
    int id;
    int fired;              /* times the callback ran: must end at 1 */
    int order;              /* completion order, from 1 */
    sheaf_err err;
    int attempts;
    long http_status;
    int64_t done_ms;
    char content[64];
    char errstr[SHEAF_ERRSTR_SIZE];
} call_rec;

static call_rec recs[MAX_IDS];
static int completions;

static void done_cb(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr)
{
    call_rec *r = ud;
    r->fired++;
    r->order = ++completions;
    r->err = err;
    r->attempts = res->attempts;
    r->http_status = res->http_status;
    r->done_ms = sheaf_mono_ms();
    snprintf(r->content, sizeof(r->content), "%s", res->content ? res->content : "");
    snprintf(r->errstr, sizeof(r->errstr), "%s", errstr);
    if (err == SHEAF_OK) {
        /* Take the answer, as a worker would. */
        assert_non_null(res->content);
        assert_int_equal(res->usage.prompt_tokens, 7);
        free(res->content);
        res->content = NULL;
    }
}

/* ---- a fake limiter ------------------------------------------------------------------ */

typedef struct fake_limiter {
    int acquires;
    int refuse;             /* refuse this many acquires with wait_ms */
    int fail;               /* fail this many acquires (Redis down) */
    int64_t wait_ms;
    int penalties;
    int64_t last_penalty_ms;
} fake_limiter;

static sheaf_err fake_acquire(void *ud, uint32_t tokens, int64_t *wait_ms)
{
    fake_limiter *f = ud;
    assert_int_equal(tokens, 42);
    f->acquires++;
    *wait_ms = 0;
    if (f->fail > 0) {
        f->fail--;
        return SHEAF_ERR_REDIS;
    }
    if (f->refuse > 0) {
        f->refuse--;
        *wait_ms = f->wait_ms;
    }
    return SHEAF_OK;
}

static void fake_penalize(void *ud, int64_t ms)
{
    fake_limiter *f = ud;
    f->penalties++;
    f->last_penalty_ms = ms;
}

/* ---- helpers --------------------------------------------------------------------------- */

static char base_url[128];

static void cfg_fill(sheaf_config *c, int port, int max_attempts, int backoff_ms)
{
    memset(c, 0, sizeof(*c));
    snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d/v1", port);
    c->llm_base_url = base_url;
    c->llm_api_key = "sk-test-secret-key";
    c->llm_timeout_ms = 5000;
    c->llm_connect_timeout_ms = 1000;
    c->llm_max_attempts = max_attempts;
    c->llm_backoff_ms = backoff_ms;
    c->llm_max_response_bytes = 1 << 16;
}

static sheaf_llm_async *engine(const sheaf_config *cfg, int max_in_flight, fake_limiter *f)
{
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_limiter lim = {fake_acquire, fake_penalize, f, NULL};
    sheaf_llm_async *a = sheaf_llm_async_create(cfg, max_in_flight, f ? &lim : NULL, err,
                                                sizeof(err));
    if (!a) fail_msg("create: %s", err);
    return a;
}

/* Submits call id with a plan; its record is recs[id]. */
static void submit(sheaf_llm_async *a, int id, const char *plan, int delay_ms)
{
    char text[128];
    sheaf_llm_message m[] = {{"system", "Be brief."}, {"user", text}};
    sheaf_llm_request req = {"stub-model", 0.0, 16, m, 2, NULL};
    snprintf(text, sizeof(text), "id=%d plan=%s delay=%d", id, plan, delay_ms);
    memset(&recs[id], 0, sizeof(recs[id]));
    recs[id].id = id;
    assert_int_equal(sheaf_llm_async_submit(a, &req, 42, done_cb, &recs[id]), SHEAF_OK);
}

/* Runs the engine until nothing is pending or deadline_ms passes; returns
 * the callbacks fired. */
static int drive(sheaf_llm_async *a, int64_t deadline_ms)
{
    int64_t end = sheaf_mono_ms() + deadline_ms;
    int fired = 0;
    while (sheaf_llm_async_pending(a) > 0 && sheaf_mono_ms() < end) {
        int64_t before = sheaf_mono_ms();
        int n = sheaf_llm_async_run(a, 50);
        assert_true(n >= 0);
        /* Never blocks much longer than asked. */
        assert_true(sheaf_mono_ms() - before < 50 + 1000) /* generous: CI machines are loaded */;
        fired += n;
    }
    return fired;
}

static int setup(void **state)
{
    (void)state;
    reset_attempts();
    memset(recs, 0, sizeof(recs));
    completions = 0;
    return 0;
}

/* ---- tests ------------------------------------------------------------------------------ */

/* A provider that says its token limit is obeyed without configuration:
 * 540 tokens/min and 9 tokens an answer is one call a second; once the
 * first answer taught it, the engine paces the next four at ~0.97/s (one
 * second of burst), where it would otherwise send them at once. */
static void test_learned_limit_paces(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    cfg_fill(&cfg, s->port, 1, 1);
    sheaf_llm_async *a = engine(&cfg, 8, NULL);
    submit(a, 0, "tpm", 0);
    drive(a, 3000);
    assert_int_equal(recs[0].err, SHEAF_OK);
    int64_t t0 = sheaf_mono_ms();
    for (int i = 1; i <= 4; i++) submit(a, i, "tpm", 0);
    drive(a, 10000);
    int64_t took = sheaf_mono_ms() - t0;
    for (int i = 1; i <= 4; i++) assert_int_equal(recs[i].err, SHEAF_OK);
    /* Starts at about 0, 0.03, 1.06 and 2.1 s. */
    assert_true(took >= 1800);
    assert_true(took < 6000);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* Without limit headers, 429s halve the window (once per attempt time) and
 * successes grow it back by 1/window each. */
static void test_aimd_without_headers(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    cfg_fill(&cfg, s->port, 3, 1);
    sheaf_llm_async *a = engine(&cfg, 16, NULL);
    for (int i = 0; i < 16; i++) submit(a, i, "e429,ok", 20);
    drive(a, 10000);
    for (int i = 0; i < 16; i++) assert_int_equal(recs[i].err, SHEAF_OK);
    sheaf_llm_async_stats(a, &st);
    assert_true(st.http_429 >= 16);
    assert_true(st.window < 16);   /* halved at least once, not all back yet */
    size_t low = st.window;
    for (int i = 16; i < 48; i++) submit(a, i, "ok", 0);
    drive(a, 10000);
    sheaf_llm_async_stats(a, &st);
    assert_true(st.window > low);  /* grown back by the successes */
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}



static void test_create_errors(void **state)
{
    (void)state;
    sheaf_config cfg;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_llm_limiter no_acquire = {NULL, fake_penalize, NULL, NULL};
    cfg_fill(&cfg, 1, 1, 1);
    assert_null(sheaf_llm_async_create(&cfg, 0, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "max_in_flight"));
    assert_null(sheaf_llm_async_create(&cfg, 4, &no_acquire, err, sizeof(err)));
    assert_non_null(strstr(err, "acquire"));
    cfg.llm_base_url = "";
    assert_null(sheaf_llm_async_create(&cfg, 4, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "base_url"));
    sheaf_llm_async_destroy(NULL);
    assert_int_equal(sheaf_llm_async_run(NULL, 0), 0);
    assert_int_equal(sheaf_llm_async_pending(NULL), 0);
}

static void test_parse_duration(void **state)
{
    (void)state;
    assert_int_equal(sheaf_llm_parse_duration("1s"), 1000);
    assert_int_equal(sheaf_llm_parse_duration("6m0s"), 360000);
    assert_int_equal(sheaf_llm_parse_duration("250ms"), 250);
    assert_int_equal(sheaf_llm_parse_duration("1h2m3.5s"), 3723500);
    assert_int_equal(sheaf_llm_parse_duration(" 0.5s\r\n"), 500);
    assert_int_equal(sheaf_llm_parse_duration("20.001ms"), 21); /* rounded up */
    assert_int_equal(sheaf_llm_parse_duration("1500us"), 2);
    assert_int_equal(sheaf_llm_parse_duration("3ns"), 1);
    assert_int_equal(sheaf_llm_parse_duration("2"), 2000);
    assert_int_equal(sheaf_llm_parse_duration("0s"), 0);
    assert_int_equal(sheaf_llm_parse_duration(""), -1);
    assert_int_equal(sheaf_llm_parse_duration("s"), -1);
    assert_int_equal(sheaf_llm_parse_duration("5x"), -1);
    assert_int_equal(sheaf_llm_parse_duration("1m2"), -1);
    assert_int_equal(sheaf_llm_parse_duration("-1s"), -1);
    assert_int_equal(sheaf_llm_parse_duration("99999999999999999999h"), -1);
    assert_int_equal(sheaf_llm_parse_duration(NULL), -1);
}

/* 100 calls of 200 ms each, 64 at a time: two waves, not 20 s. */
static void test_concurrency(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    sheaf_llm_stats st;
    int64_t t0;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 3, 10);
    a = engine(&cfg, 64, NULL);
    for (int i = 0; i < 100; i++) submit(a, i, "ok", 200);
    assert_int_equal(sheaf_llm_async_pending(a), 100);
    t0 = sheaf_mono_ms();
    assert_int_equal(drive(a, 10000), 100);
    int64_t took = sheaf_mono_ms() - t0;
    for (int i = 0; i < 100; i++) {
        char want[32];
        snprintf(want, sizeof(want), "answer %d", i);
        assert_int_equal(recs[i].fired, 1);
        assert_int_equal(recs[i].err, SHEAF_OK);
        assert_string_equal(recs[i].content, want);
        assert_int_equal(recs[i].attempts, 1);
    }
    assert_true(took < 5000);
    assert_true(atomic_load(&s->max_concurrent) >= 50);
    assert_int_equal(atomic_load(&s->requests), 100);
    /* Connections are kept and reused: at most one per slot. */
    assert_true(atomic_load(&s->accepts) <= 64);
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.submitted, 100);
    assert_int_equal(st.started, 100);
    assert_int_equal(st.completed_ok, 100);
    assert_int_equal(st.failed, 0);
    assert_true(st.latency_ms_sum >= 100 * 200);
    assert_int_equal(sheaf_llm_async_pending(a), 0);
    assert_int_equal(sheaf_llm_async_in_flight(a), 0);
    print_message("    100 calls x 200 ms, 64 in flight: %lld ms, server saw %d at once, "
                  "%d connections\n",
                  (long long)took, atomic_load(&s->max_concurrent), atomic_load(&s->accepts));
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* Later submissions answered sooner complete first; each ud once. */
static void test_out_of_order(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 1, 10);
    a = engine(&cfg, 32, NULL);
    /* 40 ms apart: completion order must not depend on scheduling noise on
     * a loaded machine (15 ms was not enough under a full CI run). */
    for (int i = 0; i < 20; i++) submit(a, i, "ok", (20 - i) * 40);
    assert_int_equal(drive(a, 5000), 20);
    for (int i = 0; i < 20; i++) {
        char want[32];
        snprintf(want, sizeof(want), "answer %d", i);
        assert_int_equal(recs[i].fired, 1);
        assert_string_equal(recs[i].content, want);
    }
    assert_true(recs[19].order < recs[10].order);
    assert_true(recs[10].order < recs[0].order);
    assert_int_equal(recs[0].order, 20);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

static void test_retry_500_then_ok(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 5, 10);
    a = engine(&cfg, 8, NULL);
    submit(a, 1, "e500,e502,ok", 0);
    submit(a, 2, "ok", 100);
    assert_int_equal(drive(a, 5000), 2);
    assert_int_equal(recs[1].err, SHEAF_OK);
    assert_int_equal(recs[1].attempts, 3);
    assert_string_equal(recs[1].content, "answer 1");
    assert_int_equal(recs[2].err, SHEAF_OK);
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.started, 4);
    assert_int_equal(st.breaker, SHEAF_LLM_BREAKER_CLOSED);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* A 429 with Retry-After delays the call, penalizes the fleet's limiter
 * and holds this engine's other starts for as long. */
static void test_429_retry_after(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    fake_limiter f = {0};
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    int64_t t0;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 3, 1);
    a = engine(&cfg, 1, &f);
    t0 = sheaf_mono_ms();
    submit(a, 1, "e429/0.3,ok", 0);
    submit(a, 2, "ok", 0);
    assert_int_equal(drive(a, 5000), 2);
    assert_int_equal(recs[1].err, SHEAF_OK);
    assert_int_equal(recs[1].attempts, 2);
    assert_true(recs[1].done_ms - t0 >= 300);
    /* Call 2 waited for the hold, and the retried older call went first. */
    assert_int_equal(recs[2].err, SHEAF_OK);
    assert_true(recs[2].done_ms - t0 >= 300);
    assert_true(recs[1].order < recs[2].order);
    assert_int_equal(f.penalties, 1);
    assert_int_equal(f.last_penalty_ms, 300);
    assert_int_equal(f.acquires, 3); /* per attempt */
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.http_429, 1);
    assert_int_equal(st.penalties, 1);
    assert_int_equal(st.breaker, SHEAF_LLM_BREAKER_CLOSED);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* x-ratelimit-remaining-requests: 0 pushes the limiter back before a 429. */
static void test_ratelimit_headers(void **state)
{
    (void)state;
    sheaf_config cfg;
    fake_limiter f = {0};
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    int64_t t0;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 1, 1);
    a = engine(&cfg, 4, &f);
    submit(a, 1, "rl0", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_int_equal(recs[1].err, SHEAF_OK);
    assert_int_equal(f.penalties, 1);
    assert_int_equal(f.last_penalty_ms, 250);
    /* The engine holds its own starts too. */
    t0 = sheaf_mono_ms();
    submit(a, 2, "ok", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_true(recs[2].done_ms - t0 >= 150);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* The limiter's "wait" and its failures delay calls, never fail them. */
static void test_limiter_wait_and_failure(void **state)
{
    (void)state;
    sheaf_config cfg;
    fake_limiter f = {.refuse = 1, .wait_ms = 200, .fail = 1};
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    int64_t t0;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 1, 1);
    a = engine(&cfg, 4, &f);
    t0 = sheaf_mono_ms();
    submit(a, 1, "ok", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_int_equal(recs[1].err, SHEAF_OK);
    /* failed (wait 500 ms), refused (wait 200 ms), admitted */
    assert_int_equal(f.acquires, 3);
    assert_true(recs[1].done_ms - t0 >= SHEAF_LLM_LIMITER_ERROR_WAIT_MS + 200);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

static void test_fatal_not_retried(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 5, 1);
    a = engine(&cfg, 4, NULL);
    submit(a, 1, "e400,ok", 0);
    submit(a, 2, "e401,ok", 0);
    assert_int_equal(drive(a, 5000), 2);
    assert_int_equal(recs[1].err, SHEAF_ERR_LLM_FATAL);
    assert_int_equal(recs[1].attempts, 1);
    assert_int_equal(recs[1].http_status, 400);
    assert_non_null(strstr(recs[1].errstr, "HTTP 400"));
    assert_non_null(strstr(recs[1].errstr, "stub says 400"));
    assert_int_equal(recs[2].err, SHEAF_ERR_LLM_FATAL);
    assert_int_equal(atomic_load(&attempts_by_id[1]), 1);
    assert_int_equal(atomic_load(&attempts_by_id[2]), 1);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

static void test_attempts_exhausted(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 3, 5);
    a = engine(&cfg, 4, NULL);
    submit(a, 1, "e503", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_int_equal(recs[1].fired, 1);
    assert_int_equal(recs[1].err, SHEAF_ERR_LLM_RETRY);
    assert_int_equal(recs[1].attempts, 3);
    assert_int_equal(recs[1].http_status, 503);
    assert_non_null(strstr(recs[1].errstr, "HTTP 503"));
    assert_non_null(strstr(recs[1].errstr, "(attempt 3/3)"));
    assert_null(strstr(recs[1].errstr, "sk-test-secret-key"));
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.retries, 2);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* Resets, broken and truncated bodies, timeouts: all retried. */
static void test_transport_failures_retried(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 3, 5);
    cfg.llm_timeout_ms = 300;
    a = engine(&cfg, 8, NULL);
    submit(a, 1, "close,ok", 0);
    submit(a, 2, "bad,ok", 0);
    submit(a, 3, "trunc,ok", 0);
    submit(a, 4, "hang,ok", 0);
    submit(a, 5, "e429,e408,ok", 0);
    assert_int_equal(drive(a, 5000), 5);
    for (int i = 1; i <= 5; i++) {
        char want[32];
        snprintf(want, sizeof(want), "answer %d", i);
        assert_int_equal(recs[i].err, SHEAF_OK);
        assert_string_equal(recs[i].content, want);
    }
    assert_int_equal(recs[1].attempts, 2);
    assert_int_equal(recs[4].attempts, 2);
    assert_int_equal(recs[5].attempts, 3);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

static void test_response_too_large(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 3, 1);
    cfg.llm_max_response_bytes = 64;
    a = engine(&cfg, 2, NULL);
    submit(a, 1, "ok", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_int_equal(recs[1].err, SHEAF_ERR_LLM_FATAL);
    assert_int_equal(recs[1].attempts, 1);
    assert_non_null(strstr(recs[1].errstr, "max_response_bytes"));
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* An unsendable request fails through the callback; a callback may
 * submit more work. */
static void test_invalid_request_and_resubmit(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    sheaf_llm_message m[] = {{"user", "hello"}};
    sheaf_llm_request bad = {"", 0.0, 0, m, 1, NULL};
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 1, 1);
    a = engine(&cfg, 2, NULL);
    assert_int_equal(sheaf_llm_async_submit(a, &bad, 1, done_cb, &recs[7]), SHEAF_OK);
    assert_int_equal(sheaf_llm_async_submit(a, &bad, 1, NULL, NULL), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_llm_async_pending(a), 1);
    assert_int_equal(sheaf_llm_async_run(a, 1000), 1);
    assert_int_equal(recs[7].err, SHEAF_ERR_LLM_FATAL);
    assert_non_null(strstr(recs[7].errstr, "model is empty"));
    assert_int_equal(recs[7].attempts, 0);
    assert_int_equal(atomic_load(&s->requests), 0);
    assert_int_equal(sheaf_llm_async_pending(a), 0);
    /* Nothing pending: returns at once. */
    int64_t t0 = sheaf_mono_ms();
    assert_int_equal(sheaf_llm_async_run(a, 1000), 0);
    assert_true(sheaf_mono_ms() - t0 < 500); /* well under the 1000 ms asked */
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

static sheaf_llm_async *chain_engine;

static void chain_cb(void *ud, sheaf_err err, sheaf_llm_result *res, const char *errstr)
{
    call_rec *r = ud;
    char text[64];
    sheaf_llm_message m[] = {{"user", text}};
    sheaf_llm_request req = {"stub-model", 0.0, 16, m, 1, NULL};
    done_cb(ud, err, res, errstr);
    if (r->id >= 3) return;
    snprintf(text, sizeof(text), "id=%d plan=ok delay=0", r->id + 1);
    recs[r->id + 1].id = r->id + 1;
    assert_int_equal(sheaf_llm_async_submit(chain_engine, &req, 1, chain_cb, &recs[r->id + 1]),
                     SHEAF_OK);
}

static void test_callback_submits(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_message m[] = {{"user", "id=1 plan=ok delay=0"}};
    sheaf_llm_request req = {"stub-model", 0.0, 16, m, 1, NULL};
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 1, 1);
    chain_engine = engine(&cfg, 2, NULL);
    recs[1].id = 1;
    /* Each callback submits the next call from inside the callback. */
    assert_int_equal(sheaf_llm_async_submit(chain_engine, &req, 1, chain_cb, &recs[1]), SHEAF_OK);
    assert_int_equal(drive(chain_engine, 5000), 3);
    for (int i = 1; i <= 3; i++) assert_int_equal(recs[i].fired, 1);
    assert_int_equal(recs[3].err, SHEAF_OK);
    sheaf_llm_async_destroy(chain_engine);
    http_stub_stop(s);
}

/* Consecutive connection failures open the circuit; nothing starts while
 * it is open; a failed probe opens it again for longer; a successful one
 * closes it. */
static void test_circuit_breaker(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    int port = http_stub_closed_port();
    http_stub *s = NULL;
    sheaf_llm_async *a;
    uint64_t started;
    int64_t t0, t_open;
    assert_true(port > 0);
    cfg_fill(&cfg, port, 100, 1);
    a = engine(&cfg, 4, NULL);
    assert_int_equal(sheaf_llm_async_set_breaker(a, 0, 1, 1), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_llm_async_set_breaker(a, 3, 200, 1000), SHEAF_OK);
    submit(a, 1, "ok", 0);

    t0 = sheaf_mono_ms();
    /* t_open: an instant before the circuit opened (the start of the turn
     * that opened it), so the cooldown measured from it is a lower bound
     * however late a loaded machine lets this thread look. */
    t_open = t0;
    while (!sheaf_llm_async_circuit_open(a) && sheaf_mono_ms() - t0 < 3000) {
        t_open = sheaf_mono_ms();
        sheaf_llm_async_run(a, 20);
    }
    assert_true(sheaf_llm_async_circuit_open(a));
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.breaker, SHEAF_LLM_BREAKER_OPEN);
    assert_int_equal(st.breaker_opens, 1);
    assert_int_equal(st.started, 3);
    assert_int_equal(sheaf_llm_async_pending(a), 1); /* still waiting, attempts kept */

    /* Open: new calls queue, nothing starts. */
    submit(a, 2, "ok", 0);
    started = st.started;
    for (int i = 0; i < 5; i++) sheaf_llm_async_run(a, 20);
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.started, started);
    assert_true(sheaf_llm_async_circuit_open(a));

    /* After the cooldown one probe goes; it fails: open again (400 ms). */
    t0 = sheaf_mono_ms();
    while (st.breaker_opens < 2 && sheaf_mono_ms() - t0 < 3000) {
        sheaf_llm_async_run(a, 20);
        sheaf_llm_async_stats(a, &st);
    }
    assert_int_equal(st.breaker_opens, 2);
    assert_int_equal(st.started, started + 1);
    assert_true(sheaf_mono_ms() - t_open >= 190); /* the 200 ms cooldown was kept */

    /* The endpoint comes back: the next probe succeeds and closes it. */
    s = http_stub_start(port, stub_handler, NULL);
    assert_non_null(s);
    assert_int_equal(drive(a, 5000), 2);
    assert_false(sheaf_llm_async_circuit_open(a));
    assert_int_equal(recs[1].err, SHEAF_OK);
    assert_int_equal(recs[1].attempts, 5);
    assert_int_equal(recs[2].err, SHEAF_OK);
    assert_int_equal(recs[2].attempts, 1);
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.breaker, SHEAF_LLM_BREAKER_CLOSED);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* 5xx counts too, and any answer (even a 4xx) resets the count. */
static void test_breaker_counts_consecutive_only(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 1, 1);
    a = engine(&cfg, 1, NULL);
    assert_int_equal(sheaf_llm_async_set_breaker(a, 3, 200, 5000), SHEAF_OK);
    submit(a, 1, "e500", 0);
    submit(a, 2, "e502", 0);
    submit(a, 3, "e400", 0);
    submit(a, 4, "e503", 0);
    submit(a, 5, "e500", 0);
    assert_int_equal(drive(a, 5000), 5);
    assert_false(sheaf_llm_async_circuit_open(a));
    submit(a, 6, "e504", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_true(sheaf_llm_async_circuit_open(a));
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.breaker_opens, 1);
    assert_int_equal(st.breaker, SHEAF_LLM_BREAKER_OPEN);
    /* Nothing is pending when the cooldown ends: the circuit must not stay
     * "open" for a caller that waits for it before submitting. */
    sheaf_sleep_ms(250);
    assert_false(sheaf_llm_async_circuit_open(a));
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.breaker, SHEAF_LLM_BREAKER_HALF_OPEN);
    submit(a, 7, "ok", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_int_equal(recs[7].err, SHEAF_OK);
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.breaker, SHEAF_LLM_BREAKER_CLOSED);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* One call that the provider answers 500 every time (a prompt it chokes
 * on), retried alone: its attempts count once, the circuit stays closed;
 * three such calls open it. */
static void test_breaker_poisoned_call(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 8, 1);
    a = engine(&cfg, 4, NULL);
    assert_int_equal(sheaf_llm_async_set_breaker(a, 3, 200, 5000), SHEAF_OK);
    submit(a, 1, "e500", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_int_equal(recs[1].err, SHEAF_ERR_LLM_RETRY);
    assert_int_equal(recs[1].attempts, 8);
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.breaker_opens, 0);
    assert_false(sheaf_llm_async_circuit_open(a));
    /* Three different calls failing: the endpoint is unwell. */
    submit(a, 2, "e500", 0);
    submit(a, 3, "e502", 0);
    submit(a, 4, "e503", 0);
    drive(a, 5000);
    sheaf_llm_async_stats(a, &st);
    assert_true(st.breaker_opens >= 1);
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

/* abort_all: in flight, waiting for a retry, queued - all STOPPED, once. */
static void test_abort_all(void **state)
{
    (void)state;
    sheaf_config cfg;
    sheaf_llm_stats st;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 5, 10000);
    a = engine(&cfg, 4, NULL);
    submit(a, 1, "e500", 0);
    submit(a, 2, "e500", 0);
    for (int i = 3; i <= 6; i++) submit(a, i, "hang", 0);
    for (int i = 7; i <= 10; i++) submit(a, i, "ok", 0);
    /* 1 and 2 fail fast and wait (>= seconds of backoff, usually), the
     * hanging ones fill the slots, the rest queue. */
    for (int i = 0; i < 50; i++) {
        sheaf_llm_async_stats(a, &st);
        if (st.in_flight == 4 && st.waiting == 2) break;
        sheaf_llm_async_run(a, 20);
    }
    assert_int_equal(sheaf_llm_async_pending(a), 10);
    assert_int_equal(sheaf_llm_async_in_flight(a), 4);
    sheaf_llm_async_abort_all(a);
    assert_int_equal(sheaf_llm_async_pending(a), 0);
    for (int i = 1; i <= 10; i++) {
        assert_int_equal(recs[i].fired, 1);
        assert_int_equal(recs[i].err, SHEAF_ERR_STOPPED);
        assert_non_null(strstr(recs[i].errstr, "stopped"));
    }
    assert_non_null(strstr(recs[1].errstr, "HTTP 500"));
    assert_int_equal(sheaf_llm_async_run(a, 100), 0);
    sheaf_llm_async_stats(a, &st);
    assert_int_equal(st.failed, 10);
    /* The engine still works afterwards. */
    submit(a, 11, "ok", 0);
    assert_int_equal(drive(a, 5000), 1);
    assert_int_equal(recs[11].err, SHEAF_OK);
    submit(a, 12, "hang", 0);
    sheaf_llm_async_run(a, 20);
    /* destroy aborts too: the callback still fires exactly once. */
    sheaf_llm_async_destroy(a);
    assert_int_equal(recs[12].fired, 1);
    assert_int_equal(recs[12].err, SHEAF_ERR_STOPPED);
    http_stub_stop(s);
}

/* Resident set size of this process in bytes (Linux), or 0. */
static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0, resident = 0;
    if (!f) return 0;
    if (fscanf(f, "%lu %lu", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* 256 calls in flight stay small: the whole test process (stub and its
 * 256 connections included) under 32 MB resident. */
static void test_memory_256_in_flight(void **state)
{
    (void)state;
    sheaf_config cfg;
    http_stub *s = http_stub_start(0, stub_handler, NULL);
    sheaf_llm_async *a;
    size_t peak = 0, in_flight_max = 0, before = rss_bytes();
    int64_t t0 = sheaf_mono_ms();
    assert_non_null(s);
    cfg_fill(&cfg, s->port, 1, 1);
    a = engine(&cfg, 256, NULL);
    for (int i = 0; i < 256; i++) submit(a, i, "ok", 400);
    while (sheaf_llm_async_pending(a) > 0 && sheaf_mono_ms() - t0 < 10000) {
        size_t r;
        sheaf_llm_async_run(a, 20);
        if (sheaf_llm_async_in_flight(a) > in_flight_max)
            in_flight_max = sheaf_llm_async_in_flight(a);
        if ((r = rss_bytes()) > peak) peak = r;
    }
    assert_int_equal(sheaf_llm_async_pending(a), 0);
    for (int i = 0; i < 256; i++) assert_int_equal(recs[i].err, SHEAF_OK);
    assert_int_equal(in_flight_max, 256);
    assert_true(atomic_load(&s->max_concurrent) >= 250);
    print_message("    256 in flight: peak RSS %.1f MB (%.1f MB before), done in %lld ms\n",
                  (double)peak / (1024.0 * 1024.0), (double)before / (1024.0 * 1024.0),
                  (long long)(sheaf_mono_ms() - t0));
#ifndef UNDER_ASAN
    assert_true(peak < (size_t)32 << 20);
#endif
    sheaf_llm_async_destroy(a);
    http_stub_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_create_errors, setup),
        cmocka_unit_test_setup(test_parse_duration, setup),
        cmocka_unit_test_setup(test_concurrency, setup),
        cmocka_unit_test_setup(test_out_of_order, setup),
        cmocka_unit_test_setup(test_retry_500_then_ok, setup),
        cmocka_unit_test_setup(test_429_retry_after, setup),
        cmocka_unit_test_setup(test_ratelimit_headers, setup),
        cmocka_unit_test_setup(test_limiter_wait_and_failure, setup),
        cmocka_unit_test_setup(test_fatal_not_retried, setup),
        cmocka_unit_test_setup(test_attempts_exhausted, setup),
        cmocka_unit_test_setup(test_transport_failures_retried, setup),
        cmocka_unit_test_setup(test_response_too_large, setup),
        cmocka_unit_test_setup(test_invalid_request_and_resubmit, setup),
        cmocka_unit_test_setup(test_callback_submits, setup),
        cmocka_unit_test_setup(test_circuit_breaker, setup),
        cmocka_unit_test_setup(test_breaker_counts_consecutive_only, setup),
        cmocka_unit_test_setup(test_breaker_poisoned_call, setup),
        cmocka_unit_test_setup(test_abort_all, setup),
        cmocka_unit_test_setup(test_learned_limit_paces, setup),
        cmocka_unit_test_setup(test_aimd_without_headers, setup),
        cmocka_unit_test_setup(test_memory_256_in_flight, setup),
    };
    sheaf_log_set_level(SHEAF_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
