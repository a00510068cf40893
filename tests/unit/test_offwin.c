/* test_offwin.c - unit tests for the offset window (sheaf/offwin.h).
 *
 * Hand-made cases check in-order and out-of-order completion, gaps in
 * offsets, errors (unknown, repeated and out-of-order offsets leave the
 * window unchanged), take and take_next, forget, windows of 10k in-flight
 * messages and thousands of sparse partitions.  A randomized test runs 100k
 * operations over several partitions against a deliberately naive model and
 * checks the promise the worker relies on: the committable offset never
 * passes an unfinished offset, and is exactly one past the finished prefix.
 * Set SHEAF_TEST_SEED to replay a failing seed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sheaf/offwin.h"

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x2545F4914F6CDD1DULL;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t test_seed(uint64_t dflt)
{
    const char *s = getenv("SHEAF_TEST_SEED");
    return s && *s ? strtoull(s, NULL, 0) : dflt;
}

/* Fisher-Yates shuffle of v[0..n). */
static void shuffle(int64_t *v, size_t n, uint64_t *seed)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(rng_next(seed) % i);
        int64_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

/* ---- hand-made cases ----------------------------------------------------- */

static void test_empty_and_null(void **state)
{
    (void)state;
    sheaf_offwin_destroy(NULL);
    assert_int_equal(sheaf_offwin_begin(NULL, 0, 0), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_finish(NULL, 0, 0), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_committable(NULL, 0), -1);
    assert_int_equal(sheaf_offwin_take(NULL, 0), -1);
    assert_int_equal(sheaf_offwin_take_next(NULL, NULL, NULL), 0);
    assert_int_equal(sheaf_offwin_in_flight_total(NULL), 0);
    assert_int_equal(sheaf_offwin_forget(NULL, 0), 0);

    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    assert_int_equal(sheaf_offwin_committable(w, 0), -1);
    assert_int_equal(sheaf_offwin_take(w, 0), -1);
    assert_int_equal(sheaf_offwin_oldest(w, 0), -1);
    assert_int_equal(sheaf_offwin_in_flight(w, 0), 0);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 0);
    assert_int_equal(sheaf_offwin_partitions(w), 0);
    assert_int_equal(sheaf_offwin_forget(w, 3), 0);
    assert_int_equal(sheaf_offwin_finish(w, 0, 0), SHEAF_ERR_NOT_FOUND);
    int32_t p = 99;
    int64_t o = 99;
    assert_int_equal(sheaf_offwin_take_next(w, &p, &o), 0);
    assert_int_equal(p, 99);
    sheaf_offwin_destroy(w);
}

static void test_in_order(void **state)
{
    (void)state;
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    for (int64_t o = 100; o < 105; o++) assert_int_equal(sheaf_offwin_begin(w, 2, o), SHEAF_OK);
    assert_int_equal(sheaf_offwin_in_flight(w, 2), 5);
    assert_int_equal(sheaf_offwin_oldest(w, 2), 100);
    assert_int_equal(sheaf_offwin_committable(w, 2), -1); /* nothing finished yet */
    for (int64_t o = 100; o < 105; o++) {
        assert_int_equal(sheaf_offwin_finish(w, 2, o), SHEAF_OK);
        assert_int_equal(sheaf_offwin_committable(w, 2), o + 1);
        assert_int_equal(sheaf_offwin_in_flight(w, 2), (size_t)(104 - o));
    }
    assert_int_equal(sheaf_offwin_oldest(w, 2), -1);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 0);
    /* The partition stays known with its committable offset. */
    assert_int_equal(sheaf_offwin_partitions(w), 1);
    assert_int_equal(sheaf_offwin_committable(w, 2), 105);
    assert_int_equal(sheaf_offwin_begin(w, 2, 105), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 2), 105);
    sheaf_offwin_destroy(w);
}

static void test_out_of_order(void **state)
{
    (void)state;
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    for (int64_t o = 10; o <= 13; o++) assert_int_equal(sheaf_offwin_begin(w, 0, o), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 0, 12), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 0), -1);
    assert_int_equal(sheaf_offwin_finish(w, 0, 13), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 0), -1);
    assert_int_equal(sheaf_offwin_in_flight(w, 0), 2);
    assert_int_equal(sheaf_offwin_oldest(w, 0), 10);
    assert_int_equal(sheaf_offwin_finish(w, 0, 10), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 0), 11); /* 11 still running */
    assert_int_equal(sheaf_offwin_oldest(w, 0), 11);
    assert_int_equal(sheaf_offwin_finish(w, 0, 11), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 0), 14); /* 12 and 13 were done */
    assert_int_equal(sheaf_offwin_in_flight(w, 0), 0);
    sheaf_offwin_destroy(w);
}

static void test_gaps(void **state)
{
    (void)state;
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    /* Compaction and transaction markers leave holes. */
    const int64_t offs[] = {5, 7, 10, 11, 1000, 1001, 5000000000LL};
    const size_t n = sizeof(offs) / sizeof(offs[0]);
    for (size_t i = 0; i < n; i++) assert_int_equal(sheaf_offwin_begin(w, 1, offs[i]), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 1, 7), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 1), -1);
    assert_int_equal(sheaf_offwin_finish(w, 1, 5), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 1), 8); /* <= 10, the lowest unfinished */
    assert_int_equal(sheaf_offwin_oldest(w, 1), 10);
    /* Offsets in the holes were never begun. */
    assert_int_equal(sheaf_offwin_finish(w, 1, 6), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 1, 9), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 1, 500), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 1, 4999999999LL), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 1, 1001), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 1, 5000000000LL), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 1, 11), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 1), 8);
    assert_int_equal(sheaf_offwin_finish(w, 1, 10), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 1), 12);
    assert_int_equal(sheaf_offwin_oldest(w, 1), 1000);
    assert_int_equal(sheaf_offwin_finish(w, 1, 1000), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 1), 5000000001LL);
    assert_int_equal(sheaf_offwin_in_flight(w, 1), 0);
    /* The first offset may be anything, including 0 after a gap-free start. */
    assert_int_equal(sheaf_offwin_begin(w, 4, 0), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 4, 0), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 4), 1);
    sheaf_offwin_destroy(w);
}

static void test_errors_leave_state(void **state)
{
    (void)state;
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    assert_int_equal(sheaf_offwin_begin(w, -1, 0), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_begin(w, 0, -1), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_begin(w, 0, INT64_MAX), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_partitions(w), 0);

    for (int64_t o = 20; o <= 24; o += 2) assert_int_equal(sheaf_offwin_begin(w, 3, o), SHEAF_OK);
    /* Not increasing. */
    assert_int_equal(sheaf_offwin_begin(w, 3, 24), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_begin(w, 3, 21), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_begin(w, 3, 0), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_in_flight(w, 3), 3);
    /* Unknown partition, offsets outside and inside the window. */
    assert_int_equal(sheaf_offwin_finish(w, 4, 20), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, -1, 20), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 3, 19), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 3, 21), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 3, 25), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 3, INT64_MAX), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 3, INT64_MIN), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_in_flight(w, 3), 3);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 3);
    /* Finishing twice: once while held behind the head, once after popping. */
    assert_int_equal(sheaf_offwin_finish(w, 3, 22), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 3, 22), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_in_flight(w, 3), 2);
    assert_int_equal(sheaf_offwin_finish(w, 3, 20), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 3), 23);
    assert_int_equal(sheaf_offwin_finish(w, 3, 20), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_finish(w, 3, 22), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_committable(w, 3), 23);
    assert_int_equal(sheaf_offwin_in_flight(w, 3), 1);
    /* Offsets already committed cannot be begun again without a forget. */
    assert_int_equal(sheaf_offwin_begin(w, 3, 22), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_finish(w, 3, 24), SHEAF_OK);
    assert_int_equal(sheaf_offwin_begin(w, 3, 24), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_offwin_finish(w, 3, 24), SHEAF_ERR_NOT_FOUND);
    assert_int_equal(sheaf_offwin_committable(w, 3), 25);
    sheaf_offwin_destroy(w);
}

static void test_take(void **state)
{
    (void)state;
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    for (int64_t o = 0; o < 4; o++) assert_int_equal(sheaf_offwin_begin(w, 7, o), SHEAF_OK);
    assert_int_equal(sheaf_offwin_take(w, 7), -1);
    assert_int_equal(sheaf_offwin_finish(w, 7, 1), SHEAF_OK);
    assert_int_equal(sheaf_offwin_take(w, 7), -1); /* 0 is still running */
    assert_int_equal(sheaf_offwin_finish(w, 7, 0), SHEAF_OK);
    assert_int_equal(sheaf_offwin_take(w, 7), 2);
    assert_int_equal(sheaf_offwin_take(w, 7), -1); /* each advance once */
    assert_int_equal(sheaf_offwin_committable(w, 7), 2); /* peeking still works */
    assert_int_equal(sheaf_offwin_finish(w, 7, 3), SHEAF_OK);
    assert_int_equal(sheaf_offwin_take(w, 7), -1);
    assert_int_equal(sheaf_offwin_finish(w, 7, 2), SHEAF_OK);
    assert_int_equal(sheaf_offwin_take(w, 7), 4);
    assert_int_equal(sheaf_offwin_take(w, 7), -1);
    /* take_next has nothing left: take already took partition 7's advance. */
    assert_int_equal(sheaf_offwin_take_next(w, NULL, NULL), 0);

    /* take_next over several partitions, each once, with the latest offset. */
    const int32_t parts[] = {0, 7, 31, 1000000, INT32_MAX};
    const size_t np = sizeof(parts) / sizeof(parts[0]);
    for (size_t i = 0; i < np; i++) {
        int64_t base = parts[i] == 7 ? 4 : 50;
        for (int64_t o = base; o < base + 3; o++)
            assert_int_equal(sheaf_offwin_begin(w, parts[i], o), SHEAF_OK);
        assert_int_equal(sheaf_offwin_finish(w, parts[i], base), SHEAF_OK);
        if (i % 2) assert_int_equal(sheaf_offwin_finish(w, parts[i], base + 1), SHEAF_OK);
    }
    assert_int_equal(sheaf_offwin_take(w, 31), 51); /* taken directly: take_next skips it */
    int seen[5] = {0};
    int32_t p;
    int64_t o;
    size_t got = 0;
    while (sheaf_offwin_take_next(w, &p, &o)) {
        size_t i = 0;
        while (i < np && parts[i] != p) i++;
        assert_true(i < np);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
        int64_t base = parts[i] == 7 ? 4 : 50;
        assert_int_equal(o, base + 1 + (int64_t)(i % 2));
        got++;
    }
    assert_int_equal(got, np - 1);
    assert_int_equal(seen[2], 0);
    for (size_t i = 0; i < np; i++) assert_int_equal(sheaf_offwin_take(w, parts[i]), -1);
    /* A further advance is offered again. */
    assert_int_equal(sheaf_offwin_finish(w, INT32_MAX, 51), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, INT32_MAX, 52), SHEAF_OK);
    assert_int_equal(sheaf_offwin_take_next(w, &p, &o), 1);
    assert_int_equal(p, INT32_MAX);
    assert_int_equal(o, 53);
    assert_int_equal(sheaf_offwin_take_next(w, &p, &o), 0);
    sheaf_offwin_destroy(w);
}

static void test_forget(void **state)
{
    (void)state;
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    for (int64_t o = 0; o < 10; o++) {
        assert_int_equal(sheaf_offwin_begin(w, 1, o), SHEAF_OK);
        assert_int_equal(sheaf_offwin_begin(w, 2, o * 2), SHEAF_OK);
    }
    assert_int_equal(sheaf_offwin_finish(w, 1, 0), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 1, 5), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 2, 0), SHEAF_OK);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 17);
    /* Partition 1 is revoked with an untaken advance: it must not come back
     * through take_next, and its late results are refused. */
    assert_int_equal(sheaf_offwin_forget(w, 1), 8);
    assert_int_equal(sheaf_offwin_forget(w, 1), 0);
    assert_int_equal(sheaf_offwin_partitions(w), 1);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 9);
    assert_int_equal(sheaf_offwin_in_flight(w, 1), 0);
    assert_int_equal(sheaf_offwin_committable(w, 1), -1);
    assert_int_equal(sheaf_offwin_oldest(w, 1), -1);
    assert_int_equal(sheaf_offwin_finish(w, 1, 1), SHEAF_ERR_NOT_FOUND);
    int32_t p;
    int64_t o;
    assert_int_equal(sheaf_offwin_take_next(w, &p, &o), 1);
    assert_int_equal(p, 2);
    assert_int_equal(o, 1);
    assert_int_equal(sheaf_offwin_take_next(w, &p, &o), 0);
    /* Reassigned: consumption restarts from an earlier committed offset. */
    assert_int_equal(sheaf_offwin_begin(w, 1, 1), SHEAF_OK);
    assert_int_equal(sheaf_offwin_finish(w, 1, 1), SHEAF_OK);
    assert_int_equal(sheaf_offwin_take(w, 1), 2);
    /* The other partition was untouched. */
    assert_int_equal(sheaf_offwin_committable(w, 2), 1);
    assert_int_equal(sheaf_offwin_in_flight(w, 2), 9);
    assert_int_equal(sheaf_offwin_oldest(w, 2), 2);
    assert_int_equal(sheaf_offwin_forget(w, 2), 9);
    assert_int_equal(sheaf_offwin_forget(w, 1), 0);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 0);
    assert_int_equal(sheaf_offwin_partitions(w), 0);
    sheaf_offwin_destroy(w);
}

/* Revoke and reassign many times, each time with an untaken advance: the
 * list of advanced partitions must not keep the forgotten ones (it is sized
 * for the live partitions; run under ASan to see an overflow). */
static void test_forget_churn(void **state)
{
    (void)state;
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    assert_int_equal(sheaf_offwin_begin(w, 500, 0), SHEAF_OK);
    for (int64_t round = 0; round < 2000; round++) {
        int32_t id = (int32_t)(round % 3);
        assert_int_equal(sheaf_offwin_begin(w, id, round), SHEAF_OK);
        assert_int_equal(sheaf_offwin_begin(w, id, round + 1), SHEAF_OK);
        assert_int_equal(sheaf_offwin_finish(w, id, round), SHEAF_OK);
        assert_int_equal(sheaf_offwin_forget(w, id), 1);
    }
    assert_int_equal(sheaf_offwin_finish(w, 500, 0), SHEAF_OK);
    int32_t p;
    int64_t o;
    assert_int_equal(sheaf_offwin_take_next(w, &p, &o), 1);
    assert_int_equal(p, 500);
    assert_int_equal(o, 1);
    assert_int_equal(sheaf_offwin_take_next(w, &p, &o), 0);
    assert_int_equal(sheaf_offwin_partitions(w), 1);
    sheaf_offwin_destroy(w);
}

/* 10k in flight on one partition: reverse order, random order with gaps, and
 * a sliding window that wraps the ring many times. */
static void test_large_window(void **state)
{
    (void)state;
    enum { N = 10000 };
    uint64_t seed = test_seed(0xC0FFEE);
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);

    for (int64_t o = 0; o < N; o++) assert_int_equal(sheaf_offwin_begin(w, 0, o), SHEAF_OK);
    assert_int_equal(sheaf_offwin_in_flight(w, 0), N);
    for (int64_t o = N - 1; o > 0; o--) assert_int_equal(sheaf_offwin_finish(w, 0, o), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 0), -1);
    assert_int_equal(sheaf_offwin_oldest(w, 0), 0);
    assert_int_equal(sheaf_offwin_finish(w, 0, 0), SHEAF_OK);
    assert_int_equal(sheaf_offwin_committable(w, 0), N);
    assert_int_equal(sheaf_offwin_in_flight(w, 0), 0);

    /* Gaps of 1..3 and completion in random order. */
    int64_t *offs = malloc(N * sizeof(*offs));
    assert_non_null(offs);
    int64_t o = 1000000;
    for (size_t i = 0; i < N; i++) {
        o += 1 + (int64_t)(rng_next(&seed) % 3);
        offs[i] = o;
        assert_int_equal(sheaf_offwin_begin(w, 5, o), SHEAF_OK);
    }
    int64_t lowest = offs[0];
    shuffle(offs, N, &seed);
    /* Begin order is offset order: recover it by marking offsets present. */
    int64_t *sorted = malloc(N * sizeof(*sorted));
    assert_non_null(sorted);
    int64_t lo = lowest, hi = o;
    char *present = calloc((size_t)(hi - lo + 1), 1);
    assert_non_null(present);
    for (size_t i = 0; i < N; i++) present[offs[i] - lo] = 1;
    size_t k = 0;
    for (int64_t x = lo; x <= hi; x++)
        if (present[x - lo]) sorted[k++] = x;
    assert_int_equal(k, N);
    memset(present, 0, (size_t)(hi - lo + 1)); /* now: finished */
    size_t prefix = 0;
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(sheaf_offwin_finish(w, 5, offs[i]), SHEAF_OK);
        present[offs[i] - lo] = 1;
        while (prefix < N && present[sorted[prefix] - lo]) prefix++;
        int64_t want = prefix ? sorted[prefix - 1] + 1 : -1;
        assert_int_equal(sheaf_offwin_committable(w, 5), want);
        if (prefix < N) assert_int_equal(sheaf_offwin_oldest(w, 5), sorted[prefix]);
    }
    assert_int_equal(sheaf_offwin_committable(w, 5), hi + 1);
    free(present);
    free(sorted);

    /* Sliding window: keep ~N in flight while 20 N more pass through,
     * finishing a random one of the oldest 64 each time. */
    int64_t next_off = 0, head = 0; /* partition 9 holds [head, next_off) minus finished */
    char *fin = calloc(22 * N, 1); /* head moves < 64 a step: next_off < 21 N + 64 */
    assert_non_null(fin);
    for (; next_off < N; next_off++) assert_int_equal(sheaf_offwin_begin(w, 9, next_off), SHEAF_OK);
    while (next_off < 21 * N) {
        int64_t pick = head + (int64_t)(rng_next(&seed) % 64);
        if (pick >= next_off) pick = head;
        if (!fin[pick]) {
            assert_int_equal(sheaf_offwin_finish(w, 9, pick), SHEAF_OK);
            fin[pick] = 1;
        } else {
            assert_int_equal(sheaf_offwin_finish(w, 9, pick), SHEAF_ERR_NOT_FOUND);
        }
        while (head < next_off && fin[head]) head++;
        assert_int_equal(sheaf_offwin_committable(w, 9), head ? head : -1);
        assert_true(sheaf_offwin_committable(w, 9) <= sheaf_offwin_oldest(w, 9));
        while (next_off - head < N) assert_int_equal(sheaf_offwin_begin(w, 9, next_off++), SHEAF_OK);
    }
    size_t inflight = 0;
    for (int64_t x = head; x < next_off; x++) inflight += !fin[x];
    assert_int_equal(sheaf_offwin_in_flight(w, 9), inflight);
    assert_int_equal(sheaf_offwin_forget(w, 9), inflight);
    free(fin);
    free(offs);
    sheaf_offwin_destroy(w);
}

/* Thousands of sparse partition ids; forgetting half must not disturb the
 * rest (hash table deletion). */
static void test_many_partitions(void **state)
{
    (void)state;
    enum { NP = 5000 };
    uint64_t seed = test_seed(12345);
    int32_t *ids = malloc(NP * sizeof(*ids));
    assert_non_null(ids);
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    size_t n = 0;
    while (n < NP) {
        /* Mostly small ids (dense clusters collide), some anywhere. */
        int32_t id = (int32_t)(rng_next(&seed) % (n % 3 ? 20000u : (uint64_t)INT32_MAX + 1));
        if (sheaf_offwin_in_flight(w, id)) continue; /* already used */
        assert_int_equal(sheaf_offwin_begin(w, id, id % 7), SHEAF_OK);
        assert_int_equal(sheaf_offwin_begin(w, id, id % 7 + 2), SHEAF_OK);
        ids[n++] = id;
    }
    assert_int_equal(sheaf_offwin_partitions(w), NP);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 2 * NP);
    for (size_t i = 0; i < NP; i++) assert_int_equal(sheaf_offwin_finish(w, ids[i], ids[i] % 7), SHEAF_OK);
    for (size_t i = 0; i < NP; i += 2) assert_int_equal(sheaf_offwin_forget(w, ids[i]), 1);
    assert_int_equal(sheaf_offwin_partitions(w), NP / 2);
    assert_int_equal(sheaf_offwin_in_flight_total(w), NP / 2);
    for (size_t i = 0; i < NP; i++) {
        int64_t want = i % 2 ? ids[i] % 7 + 1 : -1;
        assert_int_equal(sheaf_offwin_committable(w, ids[i]), want);
        assert_int_equal(sheaf_offwin_in_flight(w, ids[i]), i % 2);
    }
    size_t got = 0;
    int32_t p;
    int64_t o;
    while (sheaf_offwin_take_next(w, &p, &o)) {
        assert_int_equal(o, p % 7 + 1);
        got++;
    }
    assert_int_equal(got, NP / 2);
    for (size_t i = 1; i < NP; i += 2) assert_int_equal(sheaf_offwin_finish(w, ids[i], ids[i] % 7 + 2), SHEAF_OK);
    assert_int_equal(sheaf_offwin_in_flight_total(w), 0);
    for (size_t i = 1; i < NP; i += 2) assert_int_equal(sheaf_offwin_forget(w, ids[i]), 0);
    assert_int_equal(sheaf_offwin_partitions(w), 0);
    free(ids);
    sheaf_offwin_destroy(w);
}

/* ---- randomized test against a naive model -------------------------------- */

/* The model keeps every begun offset of a partition, in begin order, with a
 * done flag, and recomputes from scratch what it needs. */
typedef struct model_part {
    int32_t id;
    int64_t *off;
    char *done;
    size_t n, cap;
    int64_t last;     /* last begun, -1 */
    int64_t taken;    /* last take, -1 */
    size_t lo;        /* first index not known done (speed only; checked by full scans) */
    size_t pend;      /* entries not done (speed only; checked by full scans) */
} model_part;

static void model_reset(model_part *m)
{
    free(m->off);
    free(m->done);
    int32_t id = m->id;
    memset(m, 0, sizeof(*m));
    m->id = id;
    m->last = m->taken = -1;
}

static void model_begin(model_part *m, int64_t o)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->off = realloc(m->off, m->cap * sizeof(*m->off));
        m->done = realloc(m->done, m->cap);
        assert_non_null(m->off);
        assert_non_null(m->done);
    }
    m->off[m->n] = o;
    m->done[m->n] = 0;
    m->n++;
    m->pend++;
    m->last = o;
}

static size_t model_pending(const model_part *m)
{
    return m->pend;
}

/* One past the finished prefix, or -1. */
static int64_t model_committable(model_part *m)
{
    while (m->lo < m->n && m->done[m->lo]) m->lo++;
    return m->lo ? m->off[m->lo - 1] + 1 : -1;
}

static int64_t model_oldest(model_part *m)
{
    model_committable(m);
    return m->lo < m->n ? m->off[m->lo] : -1;
}

/* Index of a random unfinished entry, or n. */
static size_t model_pick_pending(const model_part *m, uint64_t *seed)
{
    size_t pend = model_pending(m);
    if (!pend) return m->n;
    size_t k = (size_t)(rng_next(seed) % pend);
    for (size_t i = m->lo; i < m->n; i++)
        if (!m->done[i] && k-- == 0) return i;
    return m->n;
}

/* The promise, checked by brute force over everything ever begun: every
 * offset below the committable one is finished (never past an unfinished
 * one), and it is exactly one past the finished prefix. */
static void check_full(const sheaf_offwin *w, const model_part *m)
{
    int64_t c = sheaf_offwin_committable(w, m->id);
    size_t i = 0;
    while (i < m->n && m->done[i]) i++;
    int64_t want = i ? m->off[i - 1] + 1 : -1;
    assert_int_equal(c, want);
    size_t pend = 0;
    for (size_t j = 0; j < m->n; j++) {
        if (m->done[j]) continue;
        assert_true(c <= m->off[j]);
        pend++;
    }
    assert_int_equal(pend, m->pend);
    assert_int_equal(sheaf_offwin_in_flight(w, m->id), pend);
}

static void check_part(const sheaf_offwin *w, model_part *m)
{
    int64_t c = sheaf_offwin_committable(w, m->id);
    assert_int_equal(c, model_committable(m));
    int64_t oldest = model_oldest(m);
    assert_int_equal(sheaf_offwin_oldest(w, m->id), oldest);
    if (oldest >= 0) assert_true(c <= oldest); /* never past the lowest unfinished */
    assert_int_equal(sheaf_offwin_in_flight(w, m->id), model_pending(m));
}

static void test_random_against_model(void **state)
{
    (void)state;
    enum { OPS = 100000, NPART = 7 };
    const int32_t ids[NPART] = {0, 1, 2, 17, 4096, 123456789, INT32_MAX};
    uint64_t seed = test_seed(0x5EAF0FF5E7ULL);
    print_message("seed 0x%llx\n", (unsigned long long)seed);
    model_part model[NPART];
    for (size_t i = 0; i < NPART; i++) {
        memset(&model[i], 0, sizeof(model[i]));
        model[i].id = ids[i];
        model_reset(&model[i]);
    }
    sheaf_offwin *w = sheaf_offwin_create();
    assert_non_null(w);
    size_t stats_begin = 0, stats_finish = 0, stats_forget = 0, max_window = 0;

    for (size_t step = 0; step < OPS; step++) {
        /* Alternate phases that grow windows to hundreds and drain them. */
        int grow = (step / 10000) % 2 == 0;
        model_part *m = &model[rng_next(&seed) % NPART];
        unsigned r = (unsigned)(rng_next(&seed) % 1000);
        unsigned begin_share = grow ? 620 : 300;
        if (r < begin_share) {
            int64_t o = m->last + 1;
            if (rng_next(&seed) % 4 == 0) o += (int64_t)(rng_next(&seed) % 6); /* a gap */
            if (m->last < 0) o = (int64_t)(rng_next(&seed) % 1000);
            assert_int_equal(sheaf_offwin_begin(w, m->id, o), SHEAF_OK);
            model_begin(m, o);
            stats_begin++;
        } else if (r < 900) {
            size_t i = model_pick_pending(m, &seed);
            if (i < m->n) {
                assert_int_equal(sheaf_offwin_finish(w, m->id, m->off[i]), SHEAF_OK);
                m->done[i] = 1;
                m->pend--;
                stats_finish++;
            }
        } else if (r < 930) {
            int64_t want = model_committable(m);
            if (want <= m->taken) want = -1;
            else m->taken = want;
            assert_int_equal(sheaf_offwin_take(w, m->id), want);
        } else if (r < 945) {
            /* Drain take_next: exactly the partitions that advanced, once. */
            int seen[NPART] = {0};
            int32_t p;
            int64_t o;
            while (sheaf_offwin_take_next(w, &p, &o)) {
                size_t i = 0;
                while (i < NPART && ids[i] != p) i++;
                assert_true(i < NPART);
                assert_int_equal(seen[i], 0);
                seen[i] = 1;
                assert_true(model_committable(&model[i]) > model[i].taken);
                assert_int_equal(o, model_committable(&model[i]));
                model[i].taken = o;
            }
            for (size_t i = 0; i < NPART; i++)
                assert_true(model_committable(&model[i]) <= model[i].taken);
        } else if (r < 985) {
            /* A finish that must be refused: finished, in a gap, or beyond. */
            int64_t bad;
            unsigned kind = (unsigned)(rng_next(&seed) % 3);
            if (kind == 0 && m->n) {
                size_t i = (size_t)(rng_next(&seed) % m->n);
                while (i < m->n && !m->done[i]) i++;
                bad = i < m->n ? m->off[i] : m->last + 1;
            } else if (kind == 1 && m->n > 1) {
                size_t i = 1 + (size_t)(rng_next(&seed) % (m->n - 1));
                bad = m->off[i] - 1;
                if (bad == m->off[i - 1]) bad = m->last + 7; /* no gap here */
            } else {
                bad = m->last + 1 + (int64_t)(rng_next(&seed) % 3);
            }
            size_t before = sheaf_offwin_in_flight_total(w);
            assert_int_equal(sheaf_offwin_finish(w, m->id, bad), SHEAF_ERR_NOT_FOUND);
            assert_int_equal(sheaf_offwin_in_flight_total(w), before);
        } else if (r < 995) {
            if (m->last >= 0) {
                int64_t bad = m->last - (int64_t)(rng_next(&seed) % 3);
                assert_int_equal(sheaf_offwin_begin(w, m->id, bad), SHEAF_ERR_INVALID);
            }
        } else if (rng_next(&seed) % 8 == 0) {
            assert_int_equal(sheaf_offwin_forget(w, m->id), model_pending(m));
            model_reset(m);
            stats_forget++;
        }
        check_part(w, m);
        size_t total = 0;
        for (size_t i = 0; i < NPART; i++) {
            size_t pend = model_pending(&model[i]);
            total += pend;
            if (pend > max_window) max_window = pend;
        }
        assert_int_equal(sheaf_offwin_in_flight_total(w), total);
        if (step % 1000 == 0)
            for (size_t i = 0; i < NPART; i++) check_full(w, &model[i]);
    }
    for (size_t i = 0; i < NPART; i++) check_full(w, &model[i]);
    print_message("begin %zu finish %zu forget %zu max window %zu\n", stats_begin, stats_finish,
                  stats_forget, max_window);
    assert_true(stats_forget > 0);
    assert_true(max_window >= 200);
    for (size_t i = 0; i < NPART; i++) {
        free(model[i].off);
        free(model[i].done);
    }
    sheaf_offwin_destroy(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_null),
        cmocka_unit_test(test_in_order),
        cmocka_unit_test(test_out_of_order),
        cmocka_unit_test(test_gaps),
        cmocka_unit_test(test_errors_leave_state),
        cmocka_unit_test(test_take),
        cmocka_unit_test(test_forget),
        cmocka_unit_test(test_forget_churn),
        cmocka_unit_test(test_large_window),
        cmocka_unit_test(test_many_partitions),
        cmocka_unit_test(test_random_against_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
