/* test_ratelimit.c - unit tests of the fleet-wide GCRA limiter
 * (common/state/ratelimit.c) against a real redis-server.
 *
 * The group setup (redis_server.h) starts its own redis-server, hiredis
 * test.sh style: a free loopback port (bind a socket to port 0, read it,
 * close it), no persistence, PING polled until a deadline; the group
 * teardown stops it by its PID.  When redis-server is not on PATH every
 * test is skipped.  Each test uses its own endpoint key, so the tests do
 * not share limiter state.
 *
 * Timing tests count admissions over a short window (1-2 s) with bounds a
 * few requests wide: sleeping is never exact, but the GCRA arithmetic
 * makes the expected counts exact to within one request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/config.h"
#include "sheaf/ratelimit.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

/* ---- the redis-server of this test run (redis_server.h) --------------- */

#define REDIS_SERVER_TESTS "the rate limiter tests"
#include "redis_server.h"

/* ---- helpers -------------------------------------------------------------- */

static char err[SHEAF_ERRSTR_SIZE];

static sheaf_ratelimit *limiter(sheaf_redis *r, const char *ep, double rpm, double tpm)
{
    sheaf_ratelimit *rl = sheaf_ratelimit_create(r, ep, rpm, tpm, 0, err, sizeof(err));
    if (!rl) fail_msg("sheaf_ratelimit_create: %s", err);
    return rl;
}

/* One acquire that must not fail; returns wait_ms. */
static int64_t acq(sheaf_ratelimit *rl, uint32_t tokens)
{
    int64_t wait = -1;
    sheaf_err e = sheaf_ratelimit_acquire(rl, tokens, &wait, err, sizeof(err));
    if (e != SHEAF_OK) fail_msg("sheaf_ratelimit_acquire: %s", err);
    assert_true(wait >= 0);
    return wait;
}

/* Sleeps the wait and retries until admitted (a few tries at most). */
static void acq_blocking(sheaf_ratelimit *rl, uint32_t tokens)
{
    for (int i = 0; i < 5; i++) {
        int64_t w = acq(rl, tokens);
        if (w == 0) return;
        sheaf_sleep_ms(w);
    }
    fail_msg("not admitted after sleeping the announced waits 5 times");
}

/* Acquires from n limiters in turn as fast as allowed for ms milliseconds
 * (sleeping the shortest announced wait); admitted[i] counts per limiter.
 * Each round starts after the limiter admitted last, as workers waking at
 * random would: otherwise the first one asked would take every slot. */
static int run_for(sheaf_ratelimit **rls, int n, int64_t ms, int *admitted)
{
    int total = 0, last = n - 1;
    int64_t end = sheaf_mono_ms() + ms;
    for (int i = 0; i < n; i++) admitted[i] = 0;
    while (sheaf_mono_ms() < end) {
        int64_t min_wait = INT64_MAX;
        int start = last + 1;
        for (int k = 0; k < n; k++) {
            int i = (start + k) % n;
            int64_t w = acq(rls[i], 1);
            if (w == 0) {
                admitted[i]++;
                last = i;
                total++;
                min_wait = 0;
            } else if (w < min_wait) {
                min_wait = w;
            }
        }
        if (min_wait > 0) {
            int64_t left = end - sheaf_mono_ms();
            sheaf_sleep_ms(min_wait < left ? min_wait : left);
        }
    }
    return total;
}

static long long key_exists(sheaf_redis *r, const char *key)
{
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), "EXISTS %s", key);
    if (!rep) fail_msg("EXISTS: %s", err);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

static long long key_pttl(sheaf_redis *r, const char *key)
{
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), "PTTL %s", key);
    if (!rep) fail_msg("PTTL: %s", err);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

/* ---- tests ---------------------------------------------------------------- */

/* 600 rpm = one per 100 ms with a burst of 10: over 2 s, 10 + 20 (+1 at
 * the very end) requests. */
static void test_steady_rate(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    assert_non_null(r);
    sheaf_ratelimit *rl = limiter(r, "steady", 600, 0);
    int admitted;
    int total = run_for(&rl, 1, 2000, &admitted);
    fprintf(stderr, "  600 rpm for 2 s: %d admitted (expected ~30)\n", total);
    assert_in_range(total, 27, 32);
    sheaf_ratelimit_destroy(rl);
    sheaf_redis_destroy(r);
}

/* The burst goes out at once; then the wait is at most one interval. */
static void test_burst_and_wait(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    assert_non_null(r);
    sheaf_ratelimit *rl = limiter(r, "burst", 600, 0);
    for (int i = 0; i < 10; i++) assert_int_equal(acq(rl, 1), 0);
    int64_t w = acq(rl, 1);
    assert_in_range(w, 50, 100);
    /* Refused attempts charge nothing: the wait does not grow. */
    int64_t w2 = acq(rl, 1);
    assert_in_range(w2, 1, w);
    sheaf_sleep_ms(w2);
    assert_int_equal(acq(rl, 1), 0);
    assert_in_range(acq(rl, 1), 50, 100);

    /* A larger burst_seconds: 600 rpm * 3 s = 30 at once. */
    sheaf_ratelimit *big = sheaf_ratelimit_create(r, "burst3", 600, 0, 3, err, sizeof(err));
    assert_non_null(big);
    for (int i = 0; i < 30; i++) assert_int_equal(acq(big, 1), 0);
    assert_in_range(acq(big, 1), 50, 100);
    sheaf_ratelimit_destroy(big);
    sheaf_ratelimit_destroy(rl);
    sheaf_redis_destroy(r);
}

/* Two workers (two connections) on one endpoint share one limit. */
static void test_two_instances_share(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r1 = conn(), *r2 = conn();
    assert_non_null(r1);
    assert_non_null(r2);
    sheaf_ratelimit *rls[2] = {limiter(r1, "shared", 600, 0), limiter(r2, "shared", 600, 0)};

    for (int i = 0; i < 10; i++) assert_int_equal(acq(rls[0], 1), 0);
    assert_in_range(acq(rls[1], 1), 50, 100);   /* worker 2 sees worker 1's burst */

    int admitted[2];
    int total = run_for(rls, 2, 1000, admitted);
    fprintf(stderr, "  two workers, 600 rpm for 1 s: %d + %d admitted (expected ~10)\n",
            admitted[0], admitted[1]);
    assert_in_range(total, 8, 12);
    assert_true(admitted[0] > 0);
    assert_true(admitted[1] > 0);
    sheaf_ratelimit_destroy(rls[0]);
    sheaf_ratelimit_destroy(rls[1]);
    sheaf_redis_destroy(r1);
    sheaf_redis_destroy(r2);
}

/* Four workers racing in threads, each with its own connection: the
 * script is atomic, so the fleet never gets more than the limit allows. */
typedef struct racer {
    int64_t end_ms;
    int admitted;
    int failed;
} racer;

static void *race(void *arg)
{
    racer *rc = arg;
    char e[SHEAF_ERRSTR_SIZE];
    sheaf_redis *r = conn();
    sheaf_ratelimit *rl = r ? sheaf_ratelimit_create(r, "race", 600, 0, 0, e, sizeof(e)) : NULL;
    if (!rl) rc->failed = 1;
    while (rl && sheaf_mono_ms() < rc->end_ms) {
        int64_t w;
        if (sheaf_ratelimit_acquire(rl, 1, &w, e, sizeof(e)) != SHEAF_OK) {
            rc->failed = 1;
            break;
        }
        if (w == 0)
            rc->admitted++;
        else
            sheaf_sleep_ms(w);
    }
    sheaf_ratelimit_destroy(rl);
    sheaf_redis_destroy(r);
    return NULL;
}

static void test_concurrent_workers(void **state)
{
    (void)state;
    NEED_REDIS();
    racer rc[4];
    pthread_t th[4];
    int total = 0;
    int64_t end = sheaf_mono_ms() + 1000;
    for (int i = 0; i < 4; i++) {
        rc[i] = (racer){.end_ms = end};
        assert_int_equal(pthread_create(&th[i], NULL, race, &rc[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rc[i].failed, 0);
        total += rc[i].admitted;
    }
    fprintf(stderr, "  four racing workers, 600 rpm for 1 s: %d admitted (expected ~20)\n",
            total);
    assert_in_range(total, 17, 21);   /* burst 10 + 10 in 1 s; 40+ if not shared */
}

/* 60000 tpm = 1000 tokens/s, burst 1000 tokens. */
static void test_tokens(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    assert_non_null(r);

    sheaf_ratelimit *rl = limiter(r, "tok", 0, 60000);
    assert_int_equal(acq(rl, 400), 0);
    assert_int_equal(acq(rl, 400), 0);
    assert_in_range(acq(rl, 400), 150, 200);   /* 800 + 400 - 1000 tokens = 200 ms */
    assert_int_equal(acq(rl, 150), 0);         /* the refused 400 charged nothing */
    sheaf_ratelimit_destroy(rl);

    /* More than the burst: admitted on a full bucket, charged in full. */
    rl = limiter(r, "tok-big", 0, 60000);
    assert_int_equal(acq(rl, 5000), 0);
    assert_in_range(acq(rl, 1), 3900, 4001);    /* 5000 + 1 - 1000 tokens */
    assert_in_range(acq(rl, 5000), 4900, 5000); /* capped at the burst: until full */
    sheaf_ratelimit_destroy(rl);

    /* Both limits: the request is refused by the token limit, and the
     * request limit is not charged for it. */
    rl = limiter(r, "both", 600, 60000);
    assert_int_equal(acq(rl, 900), 0);
    assert_in_range(acq(rl, 900), 750, 800);
    for (int i = 0; i < 9; i++) assert_int_equal(acq(rl, 10), 0);   /* 10 requests in all */
    assert_in_range(acq(rl, 1), 50, 100);                           /* request-limited */
    sheaf_ratelimit_destroy(rl);
    sheaf_redis_destroy(r);
}

/* A 429 seen by one worker stops every worker until Retry-After. */
static void test_penalize(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r1 = conn(), *r2 = conn();
    assert_non_null(r1);
    assert_non_null(r2);
    sheaf_ratelimit *a = limiter(r1, "pen", 600, 60000);
    sheaf_ratelimit *b = limiter(r2, "pen", 600, 60000);

    assert_int_equal(acq(b, 10), 0);
    assert_int_equal(sheaf_ratelimit_penalize(a, 500, err, sizeof(err)), SHEAF_OK);
    int64_t wa = acq(a, 1), wb = acq(b, 1);
    assert_in_range(wa, 400, 500);
    assert_in_range(wb, 400, 500);
    /* A shorter penalty never shortens the wait. */
    assert_int_equal(sheaf_ratelimit_penalize(b, 10, err, sizeof(err)), SHEAF_OK);
    assert_in_range(acq(b, 1), 350, 500);
    assert_int_equal(sheaf_ratelimit_penalize(a, 0, err, sizeof(err)), SHEAF_OK);   /* no-op */

    /* After it: one request, then the steady rate, not a burst. */
    acq_blocking(b, 1);
    assert_in_range(acq(a, 1), 50, 100);
    sheaf_ratelimit_destroy(a);
    sheaf_ratelimit_destroy(b);

    /* An unlimited limiter obeys penalties too. */
    sheaf_ratelimit *u = limiter(r1, "pen-unl", 0, 0);
    assert_int_equal(sheaf_ratelimit_penalize(u, 200, err, sizeof(err)), SHEAF_OK);
    assert_in_range(acq(u, 1), 150, 200);
    acq_blocking(u, 1);
    assert_int_equal(acq(u, 1), 0);
    sheaf_ratelimit_destroy(u);
    sheaf_redis_destroy(r1);
    sheaf_redis_destroy(r2);
}

/* 0 = unlimited: admitted at once, whatever the cost, and no keys left. */
static void test_unlimited(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    assert_non_null(r);
    sheaf_ratelimit *rl = limiter(r, "unl", 0, 0);
    int64_t t0 = sheaf_mono_ms();
    for (int i = 0; i < 1000; i++) assert_int_equal(acq(rl, UINT32_MAX), 0);
    assert_true(sheaf_mono_ms() - t0 < 5000);
    assert_int_equal(key_exists(r, "sheaf:rl:{unl}:req"), 0);
    assert_int_equal(key_exists(r, "sheaf:rl:{unl}:tok"), 0);
    sheaf_ratelimit_destroy(rl);

    /* Requests limited, tokens not: any cost passes the token side. */
    rl = limiter(r, "unl-tok", 600, 0);
    assert_int_equal(acq(rl, UINT32_MAX), 0);
    assert_int_equal(key_exists(r, "sheaf:rl:{unl-tok}:tok"), 0);
    sheaf_ratelimit_destroy(rl);
    sheaf_redis_destroy(r);
}

/* The keys carry one hash tag, expire when the bucket is full again, and
 * the script survives SCRIPT FLUSH (NOSCRIPT -> EVAL). */
static void test_keys_and_noscript(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    assert_non_null(r);
    sheaf_ratelimit *rl = limiter(r, "api.example.com/v1:model-x", 600, 6000);
    assert_int_equal(acq(rl, 50), 0);   /* 100 ms of requests, 500 ms of tokens */
    assert_in_range(key_pttl(r, "sheaf:rl:{api.example.com/v1:model-x}:req"), 1, 102);
    assert_in_range(key_pttl(r, "sheaf:rl:{api.example.com/v1:model-x}:tok"), 400, 502);

    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), "SCRIPT FLUSH");
    assert_non_null(rep);
    freeReplyObject(rep);
    assert_int_equal(acq(rl, 1), 0);
    sheaf_sleep_ms(600);   /* both TATs passed: the keys are gone */
    assert_int_equal(key_exists(r, "sheaf:rl:{api.example.com/v1:model-x}:req"), 0);
    assert_int_equal(key_exists(r, "sheaf:rl:{api.example.com/v1:model-x}:tok"), 0);
    sheaf_ratelimit_destroy(rl);
    sheaf_redis_destroy(r);
}

/* A Redis failure is SHEAF_ERR_REDIS (retryable) with a message. */
static void test_redis_error(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    assert_non_null(r);
    sheaf_ratelimit *rl = limiter(r, "err", 600, 0);
    /* A failing script (the wrong type at the key) stands in for an outage. */
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), "HSET sheaf:rl:{err}:req f v");
    assert_non_null(rep);
    freeReplyObject(rep);
    int64_t w = 7;
    err[0] = '\0';
    assert_int_equal(sheaf_ratelimit_acquire(rl, 1, &w, err, sizeof(err)), SHEAF_ERR_REDIS);
    assert_int_equal(w, 0);
    assert_non_null(strstr(err, "sheaf:rl:{err}:req"));
    assert_true(sheaf_err_retryable(SHEAF_ERR_REDIS));
    sheaf_ratelimit_destroy(rl);
    sheaf_redis_destroy(r);
}

static void test_create_rejects(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    assert_non_null(r);
    char big[260];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    /* Without a synchronous connection (the runtime binds it to its
     * asynchronous one): made, but a synchronous acquire fails. */
    sheaf_ratelimit *unbound = sheaf_ratelimit_create(NULL, "x", 1, 1, 0, err, sizeof(err));
    int64_t wait_ms = 0;
    assert_non_null(unbound);
    assert_int_equal(sheaf_ratelimit_acquire(unbound, 1, &wait_ms, err, sizeof(err)),
                     SHEAF_ERR_REDIS);
    sheaf_ratelimit_destroy(unbound);
    assert_null(sheaf_ratelimit_create(r, "", 1, 1, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, NULL, 1, 1, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, "a{b}", 1, 1, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, "a b", 1, 1, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, big, 1, 1, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, "x", -1, 1, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, "x", 1, NAN, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, "x", INFINITY, 1, 0, err, sizeof(err)));
    assert_null(sheaf_ratelimit_create(r, "x", 1, 1, 4000, err, sizeof(err)));
    assert_non_null(strstr(err, "burst"));
    /* errstr may be NULL. */
    assert_null(sheaf_ratelimit_create(r, "x", -1, 1, 0, NULL, 0));
    sheaf_ratelimit *rl = sheaf_ratelimit_create(r, "x", 0, 0, 0, NULL, 0);
    assert_non_null(rl);
    sheaf_ratelimit_destroy(rl);
    sheaf_ratelimit_destroy(NULL);
    sheaf_redis_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_rejects),
        cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_burst_and_wait),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_keys_and_noscript),
        cmocka_unit_test(test_redis_error),
        cmocka_unit_test(test_penalize),
        cmocka_unit_test(test_two_instances_share),
        cmocka_unit_test(test_concurrent_workers),
        cmocka_unit_test(test_steady_rate),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
