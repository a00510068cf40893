/* test_state.c - unit tests of the job state model (common/state/state.c and the
 * Lua scripts of common/state/lua/) against a real redis-server (redis_server.h).
 *
 * What the rest of sheaf relies on, each checked by a test that fails when
 * the script is wrong:
 *   - a chunk's result is first-write-wins and completes its document once;
 *   - a result store says whether it took effect (only then is it counted);
 *   - a job ends once (job_end refuses an ended job) and a cancelled job
 *     takes no more chunk results, document results or overview;
 *   - a lease is renewed only by the consumer that holds the entry, and a
 *     lease lost to another reducer's claim stays lost;
 *   - the emission right goes to exactly one holder at a time, passes on
 *     only when its holder's entry is no longer its own, and is refused for
 *     good once the item is marked emitted;
 *   - retention puts a TTL on every key of the job (found by SCAN), delete
 *     leaves none, and the sweep drops the index entry of an expired job;
 *   - documents register once (a resumed submit changes nothing), metadata
 *     groups complete with their last member and count into their parent
 *     once;
 *   - beats, stalls, resume and what a job waits on go by the server's
 *     clock; dead letters count against existing jobs only;
 *   - a redrive forgets exactly the chosen failed chunks and what depends
 *     on them, and repair's scripts see what was forgotten and recount. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "sheaf/aredis.h"
#include "sheaf/config.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

#define REDIS_SERVER_TESTS "the job state tests"
#include "redis_server.h"

static char err[SHEAF_ERRSTR_SIZE];

static redisReply *cmd(sheaf_redis *r, const char *fmt, const char *a, const char *b)
{
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), fmt, a, b);
    if (!rep) fail_msg("%s: %s", fmt, err);
    return rep;
}

static long long cmd_int(sheaf_redis *r, const char *fmt, const char *a, const char *b)
{
    redisReply *rep = cmd(r, fmt, a, b);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

static void test_config(sheaf_config *cfg, int retention_s)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->reducer_group = "g";
    cfg->producer_heartbeat_ms = 5000;
    cfg->job_retention_s = retention_s;
}

/* A running job of two documents: a (2 chunks) and b (1 chunk). */
static void make_job(sheaf_redis *r, const sheaf_config *cfg, const char *job)
{
    sheaf_doc_reg docs[] = {{"a", 2, "{}", NULL, 0}, {"b", 1, "{}", NULL, 0}};
    cmd_int(r, "FLUSHALL", NULL, NULL);
    assert_int_equal(sheaf_state_job_create(r, cfg, job, "{}", "pv1", "t", err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_state_docs_add(r, job, docs, 2, 0, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_state_job_running(r, job, 2, 3, err, sizeof(err)), SHEAF_OK);
}

static sheaf_chunk_outcome store_chunk_as(sheaf_redis *r, const char *job, const char *doc,
                                          uint32_t idx, uint32_t n, int ok, const char *json)
{
    sheaf_chunk_msg m;
    sheaf_chunk_outcome out = SHEAF_CHUNK_DUPLICATE;
    memset(&m, 0, sizeof(m));
    m.job = (char *)job;
    m.doc = (char *)doc;
    m.idx = idx;
    m.count = n;
    assert_int_equal(sheaf_state_chunk_store(r, &m, ok, json, 10, 5, &out, err, sizeof(err)),
                     SHEAF_OK);
    return out;
}

static sheaf_chunk_outcome store_chunk(sheaf_redis *r, const char *job, const char *doc,
                                       uint32_t idx, uint32_t n, const char *json)
{
    return store_chunk_as(r, job, doc, idx, n, 1, json);
}

static int chunk_needed(sheaf_redis *r, const char *job, const char *doc, uint32_t idx)
{
    sheaf_chunk_msg m;
    int exists = -1;
    memset(&m, 0, sizeof(m));
    m.job = (char *)job;
    m.doc = (char *)doc;
    m.idx = idx;
    assert_int_equal(sheaf_state_chunk_exists(r, &m, &exists, err, sizeof(err)), SHEAF_OK);
    return !exists;
}

static void test_chunks_and_results_first_write_wins(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_store_outcome out;
    sheaf_job_status st;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    make_job(r, &cfg, "j1");

    assert_true(chunk_needed(r, "j1", "a", 0));
    assert_int_equal(store_chunk(r, "j1", "a", 0, 2, "{\"t\":1}"), SHEAF_CHUNK_NEW);
    assert_int_equal(store_chunk(r, "j1", "a", 0, 2, "{\"t\":2}"), SHEAF_CHUNK_DUPLICATE);
    assert_false(chunk_needed(r, "j1", "a", 0));
    assert_int_equal(store_chunk(r, "j1", "a", 1, 2, "{}"), SHEAF_CHUNK_DOC_READY);
    assert_int_equal(cmd_int(r, "XLEN %s", "sheaf:{j1}:ready", NULL), 1);

    assert_int_equal(sheaf_state_doc_result_store(r, "j1", "a", "{\"doc\":\"a\"}", 1, 1, &out,
                                                  err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW);
    assert_int_equal(sheaf_state_doc_result_store(r, "j1", "a", "{\"doc\":\"x\"}", 1, 1, &out,
                                                  err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_KEPT);
    char *json = NULL;
    assert_int_equal(sheaf_state_result_get(r, "j1", SHEAF_ITEM_DOC, "a", &json, err,
                                            sizeof(err)),
                     SHEAF_OK);
    assert_string_equal(json, "{\"doc\":\"a\"}");
    free(json);
    /* The last document enqueues the overview; the overview ends the job. */
    assert_int_equal(sheaf_state_doc_result_store(r, "j1", "b", "{}", 0, 0, &out, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW_OVERVIEW);
    assert_int_equal(sheaf_state_overview_store(r, "j1", "{\"o\":1}", 0, 0, &out, err,
                                                sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW);
    assert_int_equal(sheaf_state_overview_store(r, "j1", "{\"o\":2}", 0, 0, &out, err,
                                                sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_KEPT);
    assert_int_equal(sheaf_state_job_status(r, "j1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.state, SHEAF_JOB_DONE);
    assert_int_equal(st.docs_done, 2);
    assert_int_equal(st.chunks_ok, 2);
    assert_int_equal(cmd_int(r, "SISMEMBER sheaf:jobs:active %s", "j1", NULL), 0);
    sheaf_redis_destroy(r);
}

static void test_end_and_cancel(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_store_outcome out;
    sheaf_job_status st;
    int ended = -1;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    make_job(r, &cfg, "j2");

    assert_int_equal(sheaf_state_job_end(r, &cfg, "j2", SHEAF_JOB_CANCELLED, "by test", &ended,
                                         err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(ended, 1);
    assert_int_equal(sheaf_state_job_status(r, "j2", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.state, SHEAF_JOB_CANCELLED);
    assert_string_equal(st.error, "by test");
    assert_true(st.finished_ms > 0);
    assert_int_equal(cmd_int(r, "SISMEMBER sheaf:jobs:active %s", "j2", NULL), 0);
    /* Ended once: a second end (cancel, or a failing producer) changes nothing. */
    assert_int_equal(sheaf_state_job_end(r, &cfg, "j2", SHEAF_JOB_FAILED, "late", &ended, err,
                                         sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(ended, 0);
    assert_int_equal(sheaf_state_job_status(r, "j2", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.state, SHEAF_JOB_CANCELLED);
    /* A cancelled job takes nothing more: its chunks need no call and are
     * not recorded, its overview is refused. */
    assert_false(chunk_needed(r, "j2", "a", 0));
    assert_int_equal(store_chunk(r, "j2", "a", 0, 2, "{}"), SHEAF_CHUNK_DUPLICATE);
    assert_int_equal(cmd_int(r, "EXISTS %s", "sheaf:{j2}:p:a", NULL), 0);
    assert_int_equal(sheaf_state_overview_store(r, "j2", "{}", 0, 0, &out, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NO_JOB);
    assert_int_equal(sheaf_state_job_status(r, "j2", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.state, SHEAF_JOB_CANCELLED);
    /* Unknown jobs. */
    assert_int_equal(sheaf_state_job_end(r, &cfg, "nope", SHEAF_JOB_CANCELLED, "x", &ended, err,
                                         sizeof(err)),
                     SHEAF_ERR_NOT_FOUND);
    sheaf_redis_destroy(r);
}

/* Reads one new entry of the job's ready stream as consumer c; its id. */
static void read_entry(sheaf_redis *r, const char *job, const char *c, char *id, size_t idlen)
{
    char key[256];
    sheaf_key(key, sizeof(key), job, "ready");
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err),
                                      "XREADGROUP GROUP g %s COUNT 1 STREAMS %s >", c, key);
    if (!rep) fail_msg("XREADGROUP: %s", err);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    snprintf(id, idlen, "%s", rep->element[0]->element[1]->element[0]->element[0]->str);
    freeReplyObject(rep);
}

static void claim(sheaf_redis *r, const char *c, const char *id)
{
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err),
                                      "XCLAIM sheaf:{j3}:ready g %s 0 %s JUSTID", c, id);
    if (!rep) fail_msg("XCLAIM: %s", err);
    freeReplyObject(rep);
}

static sheaf_emit_right right_of(sheaf_redis *r, const char *c, const char *id)
{
    sheaf_entry_ref e = {"j3", "g", c, id};
    sheaf_emit_right right = SHEAF_EMIT_NO_JOB;
    assert_int_equal(sheaf_state_emit_claim(r, "j3", &e, "doc:a", &right, err, sizeof(err)),
                     SHEAF_OK);
    return right;
}

static void test_lease_and_emission_right(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    char e1[64], e2[64];
    int held = -1;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    make_job(r, &cfg, "j3");
    /* Two entries for the same document (a redelivery made it ready twice). */
    cmd_int(r, "XADD %s * type doc doc a", "sheaf:{j3}:ready", NULL);
    cmd_int(r, "XADD %s * type doc doc a", "sheaf:{j3}:ready", NULL);
    read_entry(r, "j3", "A", e1, sizeof(e1));
    read_entry(r, "j3", "B", e2, sizeof(e2));

    sheaf_entry_ref la = {"j3", "g", "A", e1};
    assert_int_equal(sheaf_state_lease_renew(r, &la, &held, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(held, 1);

    /* A holds the right; B's entry is covered by A's while A is alive. */
    assert_int_equal(right_of(r, "A", e1), SHEAF_EMIT_YES);
    assert_int_equal(right_of(r, "B", e2), SHEAF_EMIT_HELD);
    assert_int_equal(right_of(r, "A", e1), SHEAF_EMIT_YES); /* A again: still A's */

    /* A stalls; C claims A's entry: A's lease and A's right are gone for good. */
    claim(r, "C", e1);
    assert_int_equal(sheaf_state_lease_renew(r, &la, &held, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(held, 0);
    assert_int_equal(right_of(r, "A", e1), SHEAF_EMIT_LOST);
    /* The holder is presumed dead: the first to ask takes the right over. */
    assert_int_equal(right_of(r, "B", e2), SHEAF_EMIT_YES);
    assert_int_equal(right_of(r, "C", e1), SHEAF_EMIT_HELD);

    /* Written: nobody writes it again. */
    assert_int_equal(sheaf_state_emit_done(r, "j3", "doc:a", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(right_of(r, "C", e1), SHEAF_EMIT_DONE);
    assert_int_equal(right_of(r, "B", e2), SHEAF_EMIT_DONE);

    /* A deleted job grants nothing and gets no emit hash back. */
    assert_int_equal(sheaf_state_job_delete(r, "j3", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(right_of(r, "B", e2), SHEAF_EMIT_NO_JOB);
    assert_int_equal(sheaf_state_emit_done(r, "j3", "doc:a", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(cmd_int(r, "EXISTS %s", "sheaf:{j3}:emit", NULL), 0);
    sheaf_redis_destroy(r);
}

/* Counts the job's keys (SCAN), and those without a TTL. */
static void count_keys(sheaf_redis *r, const char *job, int *n, int *persistent)
{
    char pattern[256], cursor[32] = "0";
    snprintf(pattern, sizeof(pattern), "sheaf:{%s}:*", job);
    *n = *persistent = 0;
    do {
        redisReply *rep = cmd(r, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
        for (size_t i = 0; i < rep->element[1]->elements; i++) {
            (*n)++;
            if (cmd_int(r, "TTL %s", rep->element[1]->element[i]->str, NULL) < 0) (*persistent)++;
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);
}

static void test_retention_and_delete(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_store_outcome out;
    const char *paths[] = {"[\"x\"]"};
    sheaf_doc_reg grouped = {"c", 1, "{\"k\":\"x\"}", paths, 1};
    sheaf_entry_ref e;
    sheaf_emit_right right;
    char id[64];
    int n, persistent, ended;
    size_t gone = 0;
    sheaf_redis *r = conn();
    test_config(&cfg, 100);
    make_job(r, &cfg, "j4");
    /* Something in every kind of key: documents, partials, groups, tokens,
     * results, the ready stream, the emit hash, offsets. */
    assert_int_equal(sheaf_state_docs_add(r, "j4", &grouped, 1, 2, err, sizeof(err)), SHEAF_OK);
    store_chunk(r, "j4", "a", 0, 2, "{}");
    store_chunk(r, "j4", "b", 0, 1, "{}");
    assert_int_equal(sheaf_state_doc_result_store(r, "j4", "b", "{}", 1, 1, &out, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    int64_t first = 0, last = 5;
    assert_int_equal(sheaf_state_job_offsets_store(r, "j4", &first, &last, 1, err, sizeof(err)),
                     SHEAF_OK);
    read_entry(r, "j4", "A", id, sizeof(id));
    e = (sheaf_entry_ref){"j4", "g", "A", id};
    assert_int_equal(sheaf_state_emit_claim(r, "j4", &e, "doc:b", &right, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(right, SHEAF_EMIT_YES);
    count_keys(r, "j4", &n, &persistent);
    assert_true(n >= 14);
    assert_int_equal(persistent, n);

    assert_int_equal(sheaf_state_job_end(r, &cfg, "j4", SHEAF_JOB_FAILED, "test", &ended, err,
                                         sizeof(err)),
                     SHEAF_OK);
    count_keys(r, "j4", &n, &persistent);
    assert_true(n >= 14);
    assert_int_equal(persistent, 0); /* every key of the job expires */
    assert_true(cmd_int(r, "TTL %s", "sheaf:pipeline:pv1", NULL) > 0);
    assert_int_equal(cmd_int(r, "ZCARD %s", "sheaf:jobs:expiring", NULL), 1);

    /* The sweep drops index entries whose time has come (and only those). */
    cmd_int(r, "ZADD sheaf:jobs:expiring 1 %s", "old", NULL);
    cmd_int(r, "ZADD sheaf:jobs 1 %s", "old", NULL);
    assert_int_equal(sheaf_state_jobs_sweep(r, &gone, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(gone, 1);
    assert_int_equal(cmd_int(r, "ZCARD %s", "sheaf:jobs", NULL), 1); /* j4 stays */

    sheaf_strlist ids;
    assert_int_equal(sheaf_state_job_ids(r, &ids, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.v[0], "j4");
    sheaf_strlist_free(&ids);

    assert_int_equal(sheaf_state_job_delete(r, "j4", err, sizeof(err)), SHEAF_OK);
    count_keys(r, "j4", &n, &persistent);
    assert_int_equal(n, 0);
    assert_int_equal(cmd_int(r, "ZCARD %s", "sheaf:jobs", NULL), 0);
    assert_int_equal(cmd_int(r, "ZCARD %s", "sheaf:jobs:expiring", NULL), 0);
    sheaf_redis_destroy(r);
}

static void test_retention_zero_keeps(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    int n, persistent, ended;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    make_job(r, &cfg, "j5");
    assert_int_equal(sheaf_state_job_end(r, &cfg, "j5", SHEAF_JOB_FAILED, "test", &ended, err,
                                         sizeof(err)),
                     SHEAF_OK);
    count_keys(r, "j5", &n, &persistent);
    assert_true(n > 0);
    assert_int_equal(persistent, n);
    sheaf_redis_destroy(r);
}


static void test_docs_register_once_and_groups(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    const char *pa[] = {"[\"eu\"]", "[\"eu\",\"de\"]"}, *pb[] = {"[\"eu\"]", "[\"eu\",\"fr\"]"};
    sheaf_doc_reg docs[] = {{"a", 1, "{}", pa, 2}, {"b", 1, "{}", pb, 2}, {"c", 1, "{}", pa, 2}};
    sheaf_store_outcome out;
    sheaf_strlist ids;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    cmd_int(r, "FLUSHALL", NULL, NULL);
    assert_int_equal(sheaf_state_job_create(r, &cfg, "g1", "{}", "pv1", "t", err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_state_docs_add(r, "g1", docs, 3, 0, err, sizeof(err)), SHEAF_OK);
    /* A resumed submit registers everything again: nothing changes. */
    assert_int_equal(sheaf_state_docs_add(r, "g1", docs, 3, 0, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_state_doc_ids(r, "g1", &ids, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(ids.n, 3);
    sheaf_strlist_free(&ids);
    assert_int_equal(sheaf_state_group_member_ids(r, "g1", "[\"eu\",\"de\"]", &ids, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(ids.n, 2); /* a, c */
    assert_string_equal(ids.v[1], "c");
    sheaf_strlist_free(&ids);
    assert_int_equal(sheaf_state_group_member_ids(r, "g1", "[\"eu\"]", &ids, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(ids.n, 2); /* de, fr: first-appearance order */
    assert_string_equal(ids.v[0], "[\"eu\",\"de\"]");
    sheaf_strlist_free(&ids);
    assert_int_equal(sheaf_state_job_running(r, "g1", 3, 3, err, sizeof(err)), SHEAF_OK);
    /* The innermost group completes with its last document... */
    assert_int_equal(sheaf_state_doc_result_store(r, "g1", "a", "{}", 0, 0, &out, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW);
    assert_int_equal(sheaf_state_doc_result_store(r, "g1", "c", "{}", 0, 0, &out, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW_GROUP);
    /* ...and a group counts into its parent once. */
    assert_int_equal(sheaf_state_group_result_store(r, "g1", "[\"eu\",\"de\"]", 1, "{}", 0, 0,
                                                    &out, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW);
    assert_int_equal(sheaf_state_group_result_store(r, "g1", "[\"eu\",\"de\"]", 1, "{}", 0, 0,
                                                    &out, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_KEPT);
    assert_int_equal(sheaf_state_doc_result_store(r, "g1", "b", "{}", 0, 0, &out, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW_GROUP);
    assert_int_equal(sheaf_state_group_result_store(r, "g1", "[\"eu\",\"fr\"]", 1, "{}", 0, 0,
                                                    &out, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NEW_GROUP); /* the parent [eu] is complete */
    sheaf_redis_destroy(r);
}

static void test_beat_resume_waiting(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_job_status st;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    cfg.producer_heartbeat_ms = 100;
    cmd_int(r, "FLUSHALL", NULL, NULL);
    assert_int_equal(sheaf_state_job_create(r, &cfg, "b1", "{}", "pv1", "t", err, sizeof(err)),
                     SHEAF_OK);
    /* Alive (just created): no resume, not stalled. */
    assert_int_equal(sheaf_state_job_resume(r, &cfg, "b1", "pv1", err, sizeof(err)),
                     SHEAF_ERR_INVALID);
    assert_non_null(strstr(err, "live submit"));
    assert_int_equal(sheaf_state_job_status(r, "b1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_job_stalled_ms(&st), 0);
    /* Its last beat long ago (by the server's clock). */
    cmd_int(r, "HSET %s producer_seen_ms %s", "sheaf:{b1}:job", "1000");
    assert_int_equal(sheaf_state_job_status(r, "b1", &st, err, sizeof(err)), SHEAF_OK);
    assert_true(sheaf_job_stalled_ms(&st) > 0);
    assert_int_equal(sheaf_state_job_resume(r, &cfg, "b1", "pv2", err, sizeof(err)),
                     SHEAF_ERR_INVALID); /* another pipeline */
    assert_int_equal(sheaf_state_job_resume(r, &cfg, "b1", "pv1", err, sizeof(err)), SHEAF_OK);
    /* Taken over: it beats now, so a second resume is refused. */
    assert_int_equal(sheaf_state_job_resume(r, &cfg, "b1", "pv1", err, sizeof(err)),
                     SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_state_job_beat(r, "b1", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_state_job_status(r, "b1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_job_stalled_ms(&st), 0);
    /* What the job waits on shows while fresh. */
    assert_int_equal(sheaf_state_job_waiting(r, "b1", "HTTP 503", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_state_job_status(r, "b1", &st, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(st.waiting, "HTTP 503");
    cmd_int(r, "HSET %s retry_ms %s", "sheaf:{b1}:job", "1000");
    assert_int_equal(sheaf_state_job_status(r, "b1", &st, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(st.waiting, "");
    /* Dead letters count against an existing job only. */
    assert_int_equal(sheaf_state_job_dlq_incr(r, "b1", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_state_job_dlq_incr(r, "nope", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(cmd_int(r, "EXISTS %s", "sheaf:{nope}:job", NULL), 0);
    assert_int_equal(sheaf_state_job_status(r, "b1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.dlq, 1);
    sheaf_redis_destroy(r);
}

static sheaf_chunk_outcome store_failed(sheaf_redis *r, const char *job, const char *doc,
                                        uint32_t idx, uint32_t n, const char *json)
{
    return store_chunk_as(r, job, doc, idx, n, 0, json);
}

static void count_failed(const char *doc, uint32_t idx, const char *record, void *ud)
{
    (void)doc;
    (void)idx;
    (void)record;
    (*(int *)ud)++;
}

static void test_redrive_and_repair_invariants(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_store_outcome out;
    sheaf_repair_doc d;
    sheaf_repair_job j;
    uint64_t chunks = 0, docs = 0;
    int failed = 0;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    make_job(r, &cfg, "r1");
    store_chunk(r, "r1", "a", 0, 2, "{}");
    store_failed(r, "r1", "a", 1, 2, "{\"error\":\"HTTP 400 refused\"}");
    store_failed(r, "r1", "b", 0, 1, "{\"error\":\"HTTP 500 gone\"}");
    assert_int_equal(sheaf_state_doc_result_store(r, "r1", "a", "{}", 0, 0, &out, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_state_failed_chunks(r, "r1", count_failed, &failed, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(failed, 2);
    /* Redrive those refused (400): one chunk of one document forgotten, with
     * its result and every group and overview result. */
    cmd_int(r, "SET %s %s", "sheaf:{r1}:overview", "{}");
    assert_int_equal(sheaf_state_redrive(r, "r1", "400", &chunks, &docs, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(chunks, 1);
    assert_int_equal(docs, 1);
    assert_int_equal(cmd_int(r, "HEXISTS sheaf:{r1}:results %s", "a", NULL), 0);
    assert_int_equal(cmd_int(r, "EXISTS %s", "sheaf:{r1}:overview", NULL), 0);
    assert_int_equal(cmd_int(r, "HEXISTS sheaf:{r1}:p:a %s", "s:1", NULL), 0);
    assert_int_equal(cmd_int(r, "HEXISTS sheaf:{r1}:p:b %s", "s:0", NULL), 1);
    /* Repair's document script sees the forgotten chunk as missing and the
     * counters off; applied, the counters are what the records say. */
    memset(&d, 0, sizeof(d));
    assert_int_equal(sheaf_state_repair_doc(r, "r1", "a", 0, 0, "0-0", &d, err, sizeof(err)),
                     SHEAF_OK);
    assert_true(d.registered);
    assert_int_equal(d.n_missing, 1);
    assert_int_equal(d.missing[0], 1);
    assert_int_equal(d.fix, 1);
    assert_int_equal(sheaf_state_repair_doc(r, "r1", "a", 1, 0, "0-0", &d, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_state_repair_doc(r, "r1", "a", 0, 0, "0-0", &d, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(d.fix, 0); /* consistent now */
    free(d.missing);
    sheaf_job_status st;
    assert_int_equal(sheaf_state_job_status(r, "r1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.chunks_ok, 1);
    assert_int_equal(st.chunks_failed, 1); /* b's */
    /* The job script recounts docs_done from the results present. */
    memset(&j, 0, sizeof(j));
    assert_int_equal(sheaf_state_repair_job(r, "r1", 1, "0-0", 0, &j, err, sizeof(err)),
                     SHEAF_OK);
    assert_true(j.docs_done_fixed);
    assert_true(j.overview_missing);
    assert_int_equal(sheaf_state_job_status(r, "r1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.docs_done, 0);
    sheaf_strlist_free(&j.groups);
    sheaf_redis_destroy(r);
}

static void test_ready_trim(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    char ids[3][64];
    long long dropped = -1;
    sheaf_redis *r = conn();
    test_config(&cfg, 0);
    make_job(r, &cfg, "t1");
    for (int i = 0; i < 3; i++) cmd_int(r, "XADD %s * type doc doc %s", "sheaf:{t1}:ready", "a");
    for (int i = 0; i < 3; i++) read_entry(r, "t1", "A", ids[i], sizeof(ids[i]));
    assert_int_equal(sheaf_state_ready_ack(r, "t1", "g", ids[0], err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_state_ready_ack(r, "t1", "g", ids[2], err, sizeof(err)), SHEAF_OK);
    /* The oldest pending entry (the second) and what follows stay. */
    assert_int_equal(sheaf_state_ready_trim(r, "t1", &dropped, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(dropped, 1);
    assert_int_equal(cmd_int(r, "XLEN %s", "sheaf:{t1}:ready", NULL), 2);
    assert_int_equal(sheaf_state_ready_ack(r, "t1", "g", ids[1], err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_state_ready_trim(r, "t1", &dropped, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(cmd_int(r, "XLEN %s", "sheaf:{t1}:ready", NULL), 1); /* the last delivered */
    /* An entry not yet delivered is never dropped. */
    cmd_int(r, "XADD %s * type overview x %s", "sheaf:{t1}:ready", "y");
    assert_int_equal(sheaf_state_ready_trim(r, "t1", &dropped, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(cmd_int(r, "XLEN %s", "sheaf:{t1}:ready", NULL), 2);
    sheaf_redis_destroy(r);
}

/* ---- the asynchronous calls (state_async.c) ----
 *
 * Each is checked against its synchronous twin on the same data, on a
 * libevent loop with the runtime's connection (sheaf/aredis.h).  Every
 * callback must fire exactly once, from the loop (never inside the call
 * that asked). */

typedef struct got {
    int fired, in_call, inside;   /* inside: fired from within the call */
    sheaf_err err;
    long long n;
    char *str;
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_strlist list;
    sheaf_ready_batch batch;
    sheaf_doc_read doc;
    int has_doc;
    char **strs;                  /* the caller's array of nstrs */
    size_t nstrs;
} got;

static struct event_base *base;
static sheaf_aredis *ar;

static void on_got(void *ud, const sheaf_state_reply *r)
{
    got *g = ud;
    if (g->in_call) g->inside = 1;
    g->fired++;
    g->err = r->err;
    g->n = r->n;
    snprintf(g->errstr, sizeof(g->errstr), "%s", r->errstr);
    if (r->str) g->str = sheaf_strndup(r->str, r->len);
    /* Take what the reply holds (the rest is freed after this returns). */
    if (r->list) {
        g->list = *r->list;
        r->list->v = NULL;
        r->list->n = 0;
    }
    if (r->batch) {
        g->batch = *r->batch;
        r->batch->v = NULL;
        r->batch->n = 0;
    }
    if (r->doc) {
        g->doc = *r->doc;
        g->has_doc = 1;
        r->doc->meta = NULL;
        r->doc->parts = NULL;
    }
    for (size_t i = 0; r->strs && i < g->nstrs; i++) {
        g->strs[i] = r->strs[i];
        r->strs[i] = NULL;
    }
}

static void got_clear(got *g)
{
    free(g->str);
    sheaf_strlist_free(&g->list);
    sheaf_ready_batch_free(&g->batch);
    free(g->doc.meta);
    sheaf_partials_free(g->doc.parts, g->doc.n);
    memset(g, 0, sizeof(*g));
}

/* Runs the loop until g fired (5 s at most), then a little more: it must
 * not fire again. */
static void wait_fired(got *g)
{
    int64_t deadline = sheaf_mono_ms() + 5000;
    while (!g->fired && sheaf_mono_ms() < deadline) event_base_loop(base, EVLOOP_ONCE);
    for (int i = 0; i < 5; i++) event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(g->fired, 1);
    assert_false(g->inside);
}

/* Sends call with its reply going to g, and waits for it. */
#define ASYNC(g, call)            \
    do {                          \
        got_clear(g);             \
        (g)->in_call = 1;         \
        call;                     \
        (g)->in_call = 0;         \
        wait_fired(g);            \
    } while (0)

static void async_open(int timeout_ms)
{
    sheaf_config cfg;
    char e[SHEAF_ERRSTR_SIZE];
    memset(&cfg, 0, sizeof(cfg));
    cfg.redis_url = srv.url;
    cfg.redis_timeout_ms = timeout_ms;
    base = event_base_new();
    assert_non_null(base);
    ar = sheaf_aredis_create(base, &cfg, e, sizeof(e));
    if (!ar) fail_msg("sheaf_aredis_create: %s", e);
}

static void async_close(got *g)
{
    got_clear(g);
    sheaf_aredis_destroy(ar);
    event_base_free(base);
    ar = NULL;
    base = NULL;
}

/* A synchronous connection, a fresh job (make_job) and the asynchronous
 * connection beside it. */
static sheaf_redis *async_begin(sheaf_config *cfg, int retention_s, const char *job)
{
    sheaf_redis *r = conn();
    test_config(cfg, retention_s);
    make_job(r, cfg, job);
    async_open(2000);
    return r;
}

static void async_end(got *g, sheaf_redis *r)
{
    async_close(g);
    sheaf_redis_destroy(r);
}

static void test_async_worker_side(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_chunk_msg m;
    got g = {0};
    sheaf_redis *r = async_begin(&cfg, 0, "w1");
    memset(&m, 0, sizeof(m));
    m.job = (char *)"w1";
    m.doc = (char *)"a";
    m.idx = 0;
    m.count = 2;
    sheaf_chunk_stores *stores = sheaf_chunk_stores_new(ar);
    ASYNC(&g, sheaf_chunk_stores_check(stores, &m, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.n, 0);
    sheaf_chunk_result res = {.ok = 1, .record = "{\"x\":1}", .prompt_tokens = 3,
                              .completion_tokens = 4, .cache = SHEAF_LOOKUP_HIT,
                              .tokens_saved = 7};
    ASYNC(&g, sheaf_chunk_stores_put(stores, &m, &res, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.n, SHEAF_CHUNK_NEW);
    res.record = "{\"x\":2}";
    res.cache = SHEAF_LOOKUP_NONE;
    ASYNC(&g, sheaf_chunk_stores_put(stores, &m, &res, on_got, &g));
    assert_int_equal(g.n, SHEAF_CHUNK_DUPLICATE);
    assert_int_equal(store_chunk(r, "w1", "a", 0, 2, "{}"), SHEAF_CHUNK_DUPLICATE);
    ASYNC(&g, sheaf_chunk_stores_check(stores, &m, on_got, &g));
    assert_int_equal(g.n, 1);
    assert_false(chunk_needed(r, "w1", "a", 0));
    ASYNC(&g, sheaf_state_pipeline_get_async(ar, "pv1", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_string_equal(g.str, "{}");
    ASYNC(&g, sheaf_state_pipeline_get_async(ar, "nope", on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_NOT_FOUND);
    assert_non_null(strstr(g.errstr, "nope"));
    ASYNC(&g, sheaf_state_job_dlq_incr_async(ar, "w1", on_got, &g));
    ASYNC(&g, sheaf_state_job_dlq_incr_async(ar, "bad id!", on_got, &g)); /* nothing to count */
    assert_int_equal(g.err, SHEAF_OK);
    ASYNC(&g, sheaf_state_job_waiting_async(ar, "w1", "HTTP 503", on_got, &g));
    ASYNC(&g, sheaf_state_job_cache_count_async(ar, "w1", 1, 7, on_got, &g));
    sheaf_job_status st;
    assert_int_equal(sheaf_state_job_status(r, "w1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.dlq, 1);
    assert_string_equal(st.waiting, "HTTP 503");
    /* One hit counted with the store, one by the reducer's count. */
    assert_int_equal(st.cache_hits, 2);
    assert_int_equal(st.tokens_saved, 14);
    /* A job that is not registered: every chunk says so. */
    m.job = (char *)"nojob";
    ASYNC(&g, sheaf_chunk_stores_put(stores, &m, &res, on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_NOT_FOUND);
    assert_non_null(strstr(g.errstr, "nojob"));
    sheaf_chunk_stores_destroy(stores);
    async_end(&g, r);
}

/* Many chunks of a job stored at once through the batching stores leave
 * Redis exactly as the same chunks stored one by one: the same partials,
 * counters, document tokens and ready entries, each document ready once,
 * every chunk answered once. */
typedef struct many {
    int answered, doc_ready, dup;
    sheaf_err err;
} many;

static void on_many(void *ud, const sheaf_state_reply *r)
{
    many *m = ud;
    m->answered++;
    if (r->err != SHEAF_OK) m->err = r->err;
    if (r->n == SHEAF_CHUNK_DOC_READY) m->doc_ready++;
    if (r->n == SHEAF_CHUNK_DUPLICATE) m->dup++;
}

static char *hash_dump(sheaf_redis *r, const char *key, int skip_times)
{
    redisReply *rep = cmd(r, "HGETALL %s", key, NULL);
    sheaf_buf b;
    sheaf_buf_init(&b, 1 << 20);
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        const char *f = rep->element[i]->str;
        if (skip_times && (!strcmp(f, "id") || strstr(f, "_ms"))) continue;
        sheaf_buf_appendf(&b, "%s=%s;", f, rep->element[i + 1]->str);
    }
    freeReplyObject(rep);
    return sheaf_buf_steal(&b);
}

static void test_async_stores_batch(void **state)
{
    (void)state;
    NEED_REDIS();
    enum { DOCS = 3, PER = 40 };
    static const char *docs[DOCS] = {"d0", "d1", "d2"};
    sheaf_config cfg;
    got g = {0};
    many mb = {0};
    sheaf_redis *r = async_begin(&cfg, 0, "bs");
    sheaf_doc_reg reg[DOCS];
    char rec[64], key_a[128], key_b[128];
    const char *jobs[2] = {"sone", "sbat"};
    for (int j = 0; j < 2; j++) {
        for (int d = 0; d < DOCS; d++) reg[d] = (sheaf_doc_reg){docs[d], PER, "{}", NULL, 0};
        assert_int_equal(sheaf_state_job_create(r, &cfg, jobs[j], "{}", "pv1", "t", err,
                                                sizeof(err)),
                         SHEAF_OK);
        assert_int_equal(sheaf_state_docs_add(r, jobs[j], reg, DOCS, 0, err, sizeof(err)),
                         SHEAF_OK);
        assert_int_equal(sheaf_state_job_running(r, jobs[j], DOCS, DOCS * PER, err, sizeof(err)),
                         SHEAF_OK);
    }
    sheaf_chunk_stores *stores = sheaf_chunk_stores_new(ar);
    /* Interleaved documents, one failure, one chunk twice: one by one into
     * sone, then all at once into sbat. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass) cmd_int(r, "CONFIG RESETSTAT", NULL, NULL);
        for (int i = 0; i <= DOCS * PER; i++) {
            int k = i == DOCS * PER ? 5 : i;
            sheaf_chunk_msg m = {.doc = (char *)docs[k % DOCS], .idx = (uint32_t)(k / DOCS),
                                 .count = PER, .job = (char *)jobs[pass]};
            snprintf(rec, sizeof(rec), "{\"k\":%d}", k);
            int ok = k != 7;
            sheaf_chunk_result res = {.ok = ok, .record = rec, .prompt_tokens = 10,
                                      .completion_tokens = 5};
            if (pass) {
                sheaf_chunk_stores_put(stores, &m, &res, on_many, &mb);
                continue;
            }
            assert_int_equal(store_chunk_as(r, "sone", m.doc, m.idx, PER, ok, rec),
                             i == DOCS * PER ? SHEAF_CHUNK_DUPLICATE
                             : m.idx == PER - 1 ? SHEAF_CHUNK_DOC_READY : SHEAF_CHUNK_NEW);
        }
    }
    int64_t deadline = sheaf_mono_ms() + 5000;
    while (mb.answered < DOCS * PER + 1 && sheaf_mono_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(mb.err, SHEAF_OK);
    assert_int_equal(mb.answered, DOCS * PER + 1);
    assert_int_equal(mb.doc_ready, DOCS);
    assert_int_equal(mb.dup, 1);
    /* The stores went together: the first alone, the rest after it. */
    redisReply *info = cmd(r, "INFO commandstats", NULL, NULL);
    const char *ev = strstr(info->str, "cmdstat_evalsha:calls=");
    assert_non_null(ev);
    long calls = strtol(ev + strlen("cmdstat_evalsha:calls="), NULL, 10);
    freeReplyObject(info);
    assert_true(calls >= 2 && calls <= 1 + (DOCS * PER + SHEAF_STORE_BATCH) / SHEAF_STORE_BATCH);
    /* The job hashes (but for their ids and times), the documents' tokens
     * and every document's partials. */
    const char *suffixes[2 + DOCS] = {"job", "doc_tokens", "p:d0", "p:d1", "p:d2"};
    for (int i = 0; i < 2 + DOCS; i++) {
        snprintf(key_a, sizeof(key_a), "sheaf:{sone}:%s", suffixes[i]);
        snprintf(key_b, sizeof(key_b), "sheaf:{sbat}:%s", suffixes[i]);
        char *a = hash_dump(r, key_a, i == 0), *b = hash_dump(r, key_b, i == 0);
        assert_string_equal(a, b);
        free(a);
        free(b);
    }
    assert_int_equal(cmd_int(r, "XLEN %s", "sheaf:{sbat}:ready", NULL), DOCS);
    assert_int_equal(cmd_int(r, "XLEN %s", "sheaf:{sone}:ready", NULL), DOCS);
    /* Checks at once: every stored chunk is recorded, one never stored is
     * not; each answered once, as the one-by-one check answers. */
    memset(&mb, 0, sizeof(mb));
    for (int i = 0; i <= DOCS * PER; i++) {
        sheaf_chunk_msg m = {.doc = (char *)docs[i % DOCS], .idx = (uint32_t)(i / DOCS),
                             .count = PER, .job = (char *)"sbat"};
        if (i == DOCS * PER) m.idx = PER + 3;
        sheaf_chunk_stores_check(stores, &m, on_many, &mb);
    }
    deadline = sheaf_mono_ms() + 5000;
    while (mb.answered < DOCS * PER + 1 && sheaf_mono_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    assert_int_equal(mb.err, SHEAF_OK);
    assert_int_equal(mb.answered, DOCS * PER + 1);
    assert_int_equal(mb.dup, 1); /* n == 0: to be done */
    assert_true(chunk_needed(r, "sbat", "d0", PER + 3));
    assert_false(chunk_needed(r, "sbat", "d1", 0));
    sheaf_chunk_stores_destroy(stores);
    async_end(&g, r);
}

static void test_async_reads_match_sync(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_store_outcome out;
    got g = {0};
    char *json = NULL, pv[32], *pipe = NULL;
    enum { N = 300 };
    char *ids[N], *want[N], *have[N];
    sheaf_redis *r = async_begin(&cfg, 0, "a1");
    store_chunk(r, "a1", "a", 0, 2, "{\"c\":0}"); /* chunk 1 of a missing */
    store_chunk(r, "a1", "b", 0, 1, "{\"c\":1}");
    assert_int_equal(sheaf_state_doc_result_store(r, "a1", "b", "{\"doc\":\"b\"}", 1, 1, &out,
                                                  err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_state_group_result_store(r, "a1", "[\"x\"]", 0, "{\"g\":1}", 0, 0,
                                                    &out, err, sizeof(err)),
                     SHEAF_OK);

    /* The pipeline version, as job_pipeline reads it. */
    ASYNC(&g, sheaf_state_job_pv_async(ar, "a1", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(sheaf_state_job_pipeline(r, "a1", pv, sizeof(pv), &pipe, err, sizeof(err)),
                     SHEAF_OK);
    free(pipe);
    assert_string_equal(g.str, pv);
    ASYNC(&g, sheaf_state_job_pv_async(ar, "nope", on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_NOT_FOUND);

    /* One result of each kind, stored or not. */
    const struct { sheaf_item_kind kind; const char *id; } items[] = {
        {SHEAF_ITEM_DOC, "b"}, {SHEAF_ITEM_DOC, "a"}, {SHEAF_ITEM_GROUP, "[\"x\"]"},
        {SHEAF_ITEM_GROUP, "[\"y\"]"}, {SHEAF_ITEM_OVERVIEW, NULL}};
    for (size_t i = 0; i < sizeof(items) / sizeof(*items); i++) {
        ASYNC(&g, sheaf_state_result_get_async(ar, "a1", items[i].kind, items[i].id, on_got, &g));
        assert_int_equal(g.err, SHEAF_OK);
        assert_int_equal(sheaf_state_result_get(r, "a1", items[i].kind, items[i].id, &json, err,
                                                sizeof(err)),
                         SHEAF_OK);
        if (json) assert_string_equal(g.str, json);
        else assert_null(g.str);
        free(json);
    }
    assert_null(g.str); /* the overview: none stored */

    /* More ids than one HMGET batch, most of them without a result. */
    for (size_t i = 0; i < N; i++) {
        char id[24];
        if (i % 100 == 7) snprintf(id, sizeof(id), "b");
        else snprintf(id, sizeof(id), "x%zu", i);
        ids[i] = strdup(id);
    }
    assert_int_equal(sheaf_state_results_get(r, "a1", ids, N, want, err, sizeof(err)), SHEAF_OK);
    ASYNC(&g, (g.strs = have, g.nstrs = N,
               sheaf_state_results_get_async(ar, "a1", SHEAF_ITEM_DOC, ids, N, on_got, &g)));
    assert_int_equal(g.err, SHEAF_OK);
    for (size_t i = 0; i < N; i++) {
        if (want[i]) assert_string_equal(have[i], want[i]);
        else assert_null(have[i]);
        assert_int_equal(have[i] != NULL, i % 100 == 7);
        free(want[i]);
        free(have[i]);
    }
    /* Groups: the same on the groups hash. */
    char *paths[] = {"[\"y\"]", "[\"x\"]"};
    ASYNC(&g, (g.strs = have, g.nstrs = 2,
               sheaf_state_results_get_async(ar, "a1", SHEAF_ITEM_GROUP, paths, 2, on_got, &g)));
    assert_null(have[0]);
    assert_string_equal(have[1], "{\"g\":1}");
    free(have[1]);
    ASYNC(&g, sheaf_state_results_get_async(ar, "a1", SHEAF_ITEM_DOC, ids, 0, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    for (size_t i = 0; i < N; i++) free(ids[i]);

    /* A document: chunk count, metadata, partials in chunk order. */
    uint32_t n = 0;
    sheaf_partial *parts = NULL;
    ASYNC(&g, sheaf_state_doc_read_async(ar, "a1", "a", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_true(g.has_doc);
    assert_int_equal(sheaf_state_doc_partials(r, "a1", "a", &n, &parts, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(g.doc.n, n);
    assert_int_equal(n, 2);
    assert_string_equal(g.doc.meta, "{}");
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(g.doc.parts[i].ok, parts[i].ok);
        if (parts[i].json) assert_string_equal(g.doc.parts[i].json, parts[i].json);
        else assert_null(g.doc.parts[i].json);
    }
    assert_int_equal(g.doc.parts[0].ok, 1);
    assert_string_equal(g.doc.parts[0].json, "{\"c\":0}");
    assert_int_equal(g.doc.parts[1].ok, -1); /* missing */
    sheaf_partials_free(parts, n);
    ASYNC(&g, sheaf_state_doc_read_async(ar, "a1", "zz", on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_NOT_FOUND);
    assert_false(g.has_doc);

    /* Lists: the documents, a group's members, the active jobs. */
    sheaf_strlist l;
    ASYNC(&g, sheaf_state_group_member_ids_async(ar, "a1", NULL, on_got, &g));
    assert_int_equal(sheaf_state_group_member_ids(r, "a1", NULL, &l, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(g.list.n, l.n);
    assert_int_equal(l.n, 2);
    for (size_t i = 0; i < l.n; i++) assert_string_equal(g.list.v[i], l.v[i]);
    sheaf_strlist_free(&l);
    ASYNC(&g, sheaf_state_active_jobs_async(ar, on_got, &g));
    assert_int_equal(g.list.n, 1);
    assert_string_equal(g.list.v[0], "a1");
    async_end(&g, r);
}

static void test_async_stores_match_sync(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_store_outcome out;
    got g = {0};
    sheaf_redis *r = async_begin(&cfg, 0, "s1");
    ASYNC(&g, sheaf_state_doc_result_store_async(ar, "s1", "a", "{\"r\":1}", 2, 3, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.n, SHEAF_STORE_NEW);
    ASYNC(&g, sheaf_state_doc_result_store_async(ar, "s1", "a", "{\"r\":2}", 2, 3, on_got, &g));
    assert_int_equal(g.n, SHEAF_STORE_KEPT);
    assert_int_equal(sheaf_state_doc_result_store(r, "s1", "a", "{}", 0, 0, &out, err,
                                                  sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_KEPT);
    /* The last document enqueues the overview. */
    ASYNC(&g, sheaf_state_doc_result_store_async(ar, "s1", "b", "{}", 0, 0, on_got, &g));
    assert_int_equal(g.n, SHEAF_STORE_NEW_OVERVIEW);
    ASYNC(&g, sheaf_state_group_result_store_async(ar, "s1", "[\"x\"]", 0, "{}", 1, 1, on_got,
                                                   &g));
    assert_int_equal(g.n, SHEAF_STORE_NEW);
    assert_int_equal(sheaf_state_group_result_store(r, "s1", "[\"x\"]", 0, "{}", 1, 1, &out, err,
                                                    sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_KEPT);
    /* The overview: stored once, and the job leaves the active set. */
    assert_int_equal(cmd_int(r, "SISMEMBER sheaf:jobs:active %s", "s1", NULL), 1);
    ASYNC(&g, sheaf_state_overview_store_async(ar, "s1", "{\"o\":1}", 5, 6, on_got, &g));
    assert_int_equal(g.n, SHEAF_STORE_NEW);
    assert_int_equal(cmd_int(r, "SISMEMBER sheaf:jobs:active %s", "s1", NULL), 0);
    ASYNC(&g, sheaf_state_overview_store_async(ar, "s1", "{\"o\":2}", 5, 6, on_got, &g));
    assert_int_equal(g.n, SHEAF_STORE_KEPT);
    char *json = NULL;
    assert_int_equal(sheaf_state_result_get(r, "s1", SHEAF_ITEM_OVERVIEW, NULL, &json, err,
                                            sizeof(err)),
                     SHEAF_OK);
    assert_string_equal(json, "{\"o\":1}");
    free(json);
    sheaf_job_status st;
    assert_int_equal(sheaf_state_job_status(r, "s1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.state, SHEAF_JOB_DONE);
    /* A deleted job: NO_JOB, and its (stale) active entry is left alone,
     * as the synchronous call leaves it. */
    assert_int_equal(sheaf_state_job_delete(r, "s1", err, sizeof(err)), SHEAF_OK);
    cmd_int(r, "SADD sheaf:jobs:active %s", "s1", NULL);
    ASYNC(&g, sheaf_state_overview_store_async(ar, "s1", "{}", 0, 0, on_got, &g));
    assert_int_equal(g.n, SHEAF_STORE_NO_JOB);
    assert_int_equal(sheaf_state_overview_store(r, "s1", "{}", 0, 0, &out, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(out, SHEAF_STORE_NO_JOB);
    assert_int_equal(cmd_int(r, "SISMEMBER sheaf:jobs:active %s", "s1", NULL), 1);
    async_end(&g, r);
}

static sheaf_emit_right right_async(got *g, const char *c, const char *id)
{
    sheaf_entry_ref e = {"j3", "g", c, id};
    ASYNC(g, sheaf_state_emit_claim_async(ar, "j3", &e, "doc:a", on_got, g));
    assert_int_equal(g->err, SHEAF_OK);
    return (sheaf_emit_right)g->n;
}

static void test_async_lease_and_emission_right(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    char e1[64], e2[64];
    got g = {0};
    sheaf_redis *r = async_begin(&cfg, 0, "j3");
    cmd_int(r, "XADD %s * type doc doc a", "sheaf:{j3}:ready", NULL);
    cmd_int(r, "XADD %s * type doc doc a", "sheaf:{j3}:ready", NULL);
    read_entry(r, "j3", "A", e1, sizeof(e1));
    read_entry(r, "j3", "B", e2, sizeof(e2));
    sheaf_entry_ref la = {"j3", "g", "A", e1};
    ASYNC(&g, sheaf_state_lease_renew_async(ar, &la, on_got, &g));
    assert_int_equal(g.n, 1);
    assert_int_equal(right_async(&g, "A", e1), SHEAF_EMIT_YES);
    assert_int_equal(right_async(&g, "B", e2), SHEAF_EMIT_HELD);
    assert_int_equal(right_of(r, "B", e2), SHEAF_EMIT_HELD);
    claim(r, "C", e1);
    ASYNC(&g, sheaf_state_lease_renew_async(ar, &la, on_got, &g));
    assert_int_equal(g.n, 0);
    assert_int_equal(right_async(&g, "A", e1), SHEAF_EMIT_LOST);
    assert_int_equal(right_async(&g, "B", e2), SHEAF_EMIT_YES);
    ASYNC(&g, sheaf_state_emit_done_async(ar, "j3", "doc:a", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(right_async(&g, "C", e1), SHEAF_EMIT_DONE);
    assert_int_equal(right_of(r, "C", e1), SHEAF_EMIT_DONE);
    assert_int_equal(sheaf_state_job_delete(r, "j3", err, sizeof(err)), SHEAF_OK);
    assert_int_equal(right_async(&g, "B", e2), SHEAF_EMIT_NO_JOB);
    async_end(&g, r);
}

static void test_async_ready_streams(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    sheaf_ready_batch b;
    got g = {0};
    char *jobs[] = {"q1"};
    sheaf_redis *r = async_begin(&cfg, 0, "q1");
    /* The group exists (job_create made it): OK, as the synchronous call. */
    ASYNC(&g, sheaf_state_ready_group_async(ar, "q1", "g", NULL, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    ASYNC(&g, sheaf_state_ready_group_async(ar, "q1", "h", "$", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(sheaf_state_ready_group(r, "q1", "h", "$", err, sizeof(err)), SHEAF_OK);
    for (int i = 0; i < 3; i++) cmd_int(r, "XADD %s * type doc doc %s", "sheaf:{q1}:ready", "a");
    /* New entries, up to count per stream. */
    ASYNC(&g, sheaf_state_ready_read_async(ar, "g", "A", jobs, 1, 0, 2, -1, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.batch.n, 2);
    assert_string_equal(g.batch.v[0].job, "q1");
    assert_string_equal(g.batch.v[0].type, "doc");
    assert_string_equal(g.batch.v[0].item, "a");
    char first[48];
    snprintf(first, sizeof(first), "%s", g.batch.v[0].id);
    assert_int_equal(sheaf_state_ready_read(r, "g", "A", jobs, 1, 0, 2, 0, &b, err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(b.n, 1); /* the third */
    sheaf_ready_batch_free(&b);
    ASYNC(&g, sheaf_state_ready_read_async(ar, "g", "A", jobs, 1, 0, 2, -1, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.batch.n, 0); /* nothing new, and no wait */
    /* Claimed by B after idling (0 ms here), acked, trimmed. */
    ASYNC(&g, sheaf_state_ready_claim_async(ar, "q1", "g", "B", 0, 10, on_got, &g));
    assert_int_equal(g.batch.n, 3);
    assert_string_equal(g.batch.v[0].id, first);
    ASYNC(&g, sheaf_state_ready_ack_async(ar, "q1", "g", first, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    /* Group h never read anything; without it, the entry acked above goes. */
    cmd_int(r, "XGROUP DESTROY %s %s", "sheaf:{q1}:ready", "h");
    ASYNC(&g, sheaf_state_ready_trim_async(ar, "q1", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.n, 1);
    assert_int_equal(cmd_int(r, "XLEN %s", "sheaf:{q1}:ready", NULL), 2);
    /* The stream deleted by hand: NOT_FOUND (recreate the groups). */
    cmd_int(r, "DEL %s", "sheaf:{q1}:ready", NULL);
    ASYNC(&g, sheaf_state_ready_read_async(ar, "g", "A", jobs, 1, 0, 2, -1, on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_NOT_FOUND);
    assert_null(g.batch.v);
    assert_int_equal(sheaf_state_ready_read(r, "g", "A", jobs, 1, 0, 2, 0, &b, err, sizeof(err)),
                     SHEAF_ERR_NOT_FOUND);
    async_end(&g, r);
}

/* Registers n more documents of one chunk (x0, x1, ...) in job. */
static void add_docs(sheaf_redis *r, const char *job, size_t n)
{
    sheaf_doc_reg *d = calloc(n, sizeof(*d));
    char (*names)[24] = calloc(n, sizeof(*names));
    assert_non_null(d);
    assert_non_null(names);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "x%zu", i);
        d[i] = (sheaf_doc_reg){names[i], 1, "{}", NULL, 0};
    }
    assert_int_equal(sheaf_state_docs_add(r, job, d, n, 2, err, sizeof(err)), SHEAF_OK);
    free(d);
    free(names);
}

static void test_async_end_and_retire(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    const char *paths[] = {"[\"x\"]"};
    sheaf_doc_reg grouped = {"c", 1, "{\"k\":\"x\"}", paths, 1};
    got g = {0};
    int n, persistent;
    sheaf_redis *r = async_begin(&cfg, 100, "e1");
    assert_int_equal(sheaf_state_docs_add(r, "e1", &grouped, 1, 2, err, sizeof(err)), SHEAF_OK);
    add_docs(r, "e1", 1100); /* more than one page of the docs list */
    store_chunk(r, "e1", "a", 0, 2, "{}");
    store_chunk(r, "e1", "x1099", 0, 1, "{}");
    ASYNC(&g, sheaf_state_job_end_async(ar, &cfg, "e1", SHEAF_JOB_FAILED, "test", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.n, 1);
    count_keys(r, "e1", &n, &persistent);
    assert_true(n >= 1100);
    assert_int_equal(persistent, 0); /* d:, p:, gm:, the job hash: everything */
    assert_true(cmd_int(r, "TTL %s", "sheaf:{e1}:d:x1099", NULL) > 0);
    assert_true(cmd_int(r, "TTL %s", "sheaf:{e1}:p:x1099", NULL) > 0);
    assert_true(cmd_int(r, "TTL %s", "sheaf:{e1}:gm:[\"x\"]", NULL) > 0);
    assert_true(cmd_int(r, "TTL %s", "sheaf:{e1}:job", NULL) > 0);
    assert_true(cmd_int(r, "TTL %s", "sheaf:pipeline:pv1", NULL) > 0);
    assert_int_equal(cmd_int(r, "ZCARD %s", "sheaf:jobs:expiring", NULL), 1);
    assert_int_equal(cmd_int(r, "SISMEMBER sheaf:jobs:active %s", "e1", NULL), 0);
    /* Ended before: nothing changes. */
    ASYNC(&g, sheaf_state_job_end_async(ar, &cfg, "e1", SHEAF_JOB_CANCELLED, "late", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.n, 0);
    sheaf_job_status st;
    assert_int_equal(sheaf_state_job_status(r, "e1", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.state, SHEAF_JOB_FAILED);
    ASYNC(&g, sheaf_state_job_end_async(ar, &cfg, "nope", SHEAF_JOB_CANCELLED, "x", on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_NOT_FOUND);

    /* Retire alone: as the synchronous one (which job_end above used). */
    assert_int_equal(sheaf_state_job_keep(r, "e1", err, sizeof(err)), SHEAF_OK);
    count_keys(r, "e1", &n, &persistent);
    assert_int_equal(persistent, n);
    ASYNC(&g, sheaf_state_job_retire_async(ar, &cfg, "e1", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    count_keys(r, "e1", &n, &persistent);
    assert_int_equal(persistent, 0);
    /* Retention 0 keeps everything, and still answers from the loop. */
    sheaf_config keep;
    test_config(&keep, 0);
    assert_int_equal(sheaf_state_job_keep(r, "e1", err, sizeof(err)), SHEAF_OK);
    ASYNC(&g, sheaf_state_job_retire_async(ar, &keep, "e1", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    count_keys(r, "e1", &n, &persistent);
    assert_int_equal(persistent, n);

    /* The sweep drops index entries whose time has come. */
    cmd_int(r, "ZADD sheaf:jobs:expiring 1 %s", "old", NULL);
    cmd_int(r, "ZADD sheaf:jobs 1 %s", "old", NULL);
    ASYNC(&g, sheaf_state_jobs_sweep_async(ar, on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    assert_int_equal(g.n, 1);
    assert_int_equal(cmd_int(r, "ZSCORE sheaf:jobs %s", "old", NULL), 0);
    assert_int_equal(cmd_int(r, "ZCARD %s", "sheaf:jobs", NULL), 1); /* e1 stays */
    async_end(&g, r);
}

/* Redis stops answering in the middle of a many-step call (SIGSTOP: the
 * connection stays open, nothing comes back): done fires once, with
 * SHEAF_ERR_REDIS, when the connection's timeout drops it. */
static void test_async_redis_stopped(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_config cfg;
    got g = {0};
    sheaf_redis *r = conn();
    test_config(&cfg, 100);
    make_job(r, &cfg, "k1");
    add_docs(r, "k1", 3000);
    async_open(300);
    got_clear(&g);
    g.in_call = 1;
    sheaf_state_job_retire_async(ar, &cfg, "k1", on_got, &g);
    g.in_call = 0;
    /* The first page read and its EXPIREs sent: stop Redis there. */
    int64_t deadline = sheaf_mono_ms() + 5000;
    while (!g.fired && sheaf_aredis_pending(ar) < 1000 && sheaf_mono_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    kill(srv.pid, SIGSTOP);
    int fired_before = g.fired;
    deadline = sheaf_mono_ms() + 5000;
    while (!g.fired && sheaf_mono_ms() < deadline) event_base_loop(base, EVLOOP_ONCE);
    kill(srv.pid, SIGCONT);
    assert_int_equal(fired_before, 0);
    wait_fired(&g);
    assert_int_equal(g.err, SHEAF_ERR_REDIS);
    assert_true(g.errstr[0] != '\0');
    /* Redis back: the connection is made again and the call goes through. */
    deadline = sheaf_mono_ms() + 5000;
    while (!sheaf_aredis_connected(ar) && sheaf_mono_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    ASYNC(&g, sheaf_state_job_retire_async(ar, &cfg, "k1", on_got, &g));
    assert_int_equal(g.err, SHEAF_OK);
    int n, persistent;
    count_keys(r, "k1", &n, &persistent);
    assert_int_equal(persistent, 0);
    async_close(&g);

    /* No Redis at all (nothing listens there): each call fails from the loop. */
    sheaf_config none;
    char e[SHEAF_ERRSTR_SIZE];
    memset(&none, 0, sizeof(none));
    none.redis_url = "redis://127.0.0.1:1";
    none.redis_timeout_ms = 300;
    base = event_base_new();
    ar = sheaf_aredis_create(base, &none, e, sizeof(e));
    assert_non_null(ar);
    char *ids[] = {"a", "b"}, *have[2] = {NULL, NULL};
    ASYNC(&g, sheaf_state_doc_read_async(ar, "k1", "a", on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_REDIS);
    ASYNC(&g, (g.strs = have, g.nstrs = 2,
               sheaf_state_results_get_async(ar, "k1", SHEAF_ITEM_DOC, ids, 2, on_got, &g)));
    assert_int_equal(g.err, SHEAF_ERR_REDIS);
    assert_null(have[0]);
    ASYNC(&g, sheaf_state_job_end_async(ar, &cfg, "k1", SHEAF_JOB_FAILED, "x", on_got, &g));
    assert_int_equal(g.err, SHEAF_ERR_REDIS);
    async_end(&g, r);
}

static void test_state_names(void **state)
{
    (void)state;
    sheaf_job_state s;
    for (int i = SHEAF_JOB_PRODUCING; i <= SHEAF_JOB_CANCELLED; i++) {
        assert_int_equal(sheaf_job_state_parse(sheaf_job_state_name((sheaf_job_state)i), &s), 0);
        assert_int_equal(s, i);
    }
    assert_int_equal(sheaf_job_state_parse("finished", &s), -1);
    assert_false(sheaf_job_state_final(SHEAF_JOB_RUNNING));
    assert_true(sheaf_job_state_final(SHEAF_JOB_CANCELLED));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_chunks_and_results_first_write_wins),
        cmocka_unit_test(test_end_and_cancel),
        cmocka_unit_test(test_lease_and_emission_right),
        cmocka_unit_test(test_retention_and_delete),
        cmocka_unit_test(test_retention_zero_keeps),
        cmocka_unit_test(test_docs_register_once_and_groups),
        cmocka_unit_test(test_beat_resume_waiting),
        cmocka_unit_test(test_redrive_and_repair_invariants),
        cmocka_unit_test(test_ready_trim),
        cmocka_unit_test(test_async_worker_side),
        cmocka_unit_test(test_async_stores_batch),
        cmocka_unit_test(test_async_reads_match_sync),
        cmocka_unit_test(test_async_stores_match_sync),
        cmocka_unit_test(test_async_lease_and_emission_right),
        cmocka_unit_test(test_async_ready_streams),
        cmocka_unit_test(test_async_end_and_retire),
        cmocka_unit_test(test_async_redis_stopped),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
