/* test_cache.c - unit tests of the LLM call cache (common/state/cache.c).
 *
 * The key and the temperature rule are pure and tested without a server:
 * the key must change with everything that is sent (model, temperature,
 * max_tokens, any message, the schema) and with the endpoint, and be the
 * same for identical requests built separately.
 *
 * Lookup, store, expiry and the per-job counters run against a real
 * redis-server started by the group setup, hiredis test.sh style (shared
 * with test_ratelimit.c in redis_server.h: a free loopback port, no
 * persistence, PING polled until a deadline, stopped by its PID).  When
 * redis-server is not on PATH those tests are skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/cache.h"
#include "sheaf/config.h"
#include "sheaf/state.h"
#include "sheaf/util.h"

/* ---- the redis-server of this test run (redis_server.h) --------------- */

#define REDIS_SERVER_TESTS "the cache's Redis tests"
#include "redis_server.h"

static char err[SHEAF_ERRSTR_SIZE];

static void cmd_ok(sheaf_redis *r, const char *fmt, const char *a, const char *b)
{
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), fmt, a, b);
    if (!rep) fail_msg("%s: %s", fmt, err);
    freeReplyObject(rep);
}

static long long cmd_int(sheaf_redis *r, const char *fmt, const char *a)
{
    redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), fmt, a);
    if (!rep) fail_msg("%s: %s", fmt, err);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

/* ---- requests ------------------------------------------------------------ */

#define URL "http://127.0.0.1:8080/v1"

typedef struct req_parts {
    sheaf_llm_message msgs[2];
    sheaf_llm_request req;
} req_parts;

/* A fresh request, built from scratch every time (no shared pointers). */
static void base_request(req_parts *p, const json_t *schema)
{
    p->msgs[0] = (sheaf_llm_message){"system", "You are careful."};
    p->msgs[1] = (sheaf_llm_message){"user", "Summarize: the cat sat on the mat."};
    p->req = (sheaf_llm_request){.model = "sheaf-sim", .temperature = 0.0, .max_tokens = 256,
                                 .messages = p->msgs, .n_messages = 2, .json_schema = schema};
}

static void key_of(const char *url, const sheaf_llm_request *req, char out[SHEAF_CACHE_KEY_SIZE])
{
    assert_int_equal(sheaf_cache_key(url, req, out), SHEAF_OK);
}

/* ---- key ----------------------------------------------------------------- */

static void test_key_format_and_stability(void **state)
{
    (void)state;
    req_parts a, b;
    char ka[SHEAF_CACHE_KEY_SIZE], kb[SHEAF_CACHE_KEY_SIZE];
    char user[64];

    base_request(&a, NULL);
    base_request(&b, NULL);
    /* Same text in another buffer: the key depends on content, not pointers. */
    snprintf(user, sizeof(user), "%s", a.msgs[1].content);
    b.msgs[1].content = user;
    key_of(URL, &a.req, ka);
    key_of(URL, &b.req, kb);
    assert_string_equal(ka, kb);
    assert_int_equal(strlen(ka), strlen(SHEAF_CACHE_PREFIX) + 64);
    assert_memory_equal(ka, SHEAF_CACHE_PREFIX, strlen(SHEAF_CACHE_PREFIX));
    for (const char *p = ka + strlen(SHEAF_CACHE_PREFIX); *p; p++)
        assert_true((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'));

    /* Identical schemas built apart, keys in another order: same key. */
    json_t *s1 = json_pack("{s:s, s:{s:{s:s}}}", "type", "object", "properties", "role", "type",
                           "string");
    json_t *s2 = json_loads("{\"properties\":{\"role\":{\"type\":\"string\"}},\"type\":\"object\"}",
                            0, NULL);
    base_request(&a, s1);
    base_request(&b, s2);
    key_of(URL, &a.req, ka);
    key_of(URL, &b.req, kb);
    assert_string_equal(ka, kb);
    json_decref(s1);
    json_decref(s2);
}

static void test_key_changes_with_each_part(void **state)
{
    (void)state;
    req_parts p;
    char base[SHEAF_CACHE_KEY_SIZE], k[SHEAF_CACHE_KEY_SIZE];
    json_t *schema = json_pack("{s:s, s:{s:{s:s}}}", "type", "object", "properties", "role",
                               "type", "string");
    json_t *schema2 = json_pack("{s:s, s:{s:{s:s}}}", "type", "object", "properties", "role",
                                "type", "number");

    base_request(&p, NULL);
    key_of(URL, &p.req, base);

#define CHANGED(what)                                               \
    do {                                                            \
        key_of(URL, &p.req, k);                                     \
        if (strcmp(k, base) == 0) fail_msg("key unchanged: %s", what); \
        base_request(&p, NULL);                                     \
    } while (0)

    p.req.model = "sheaf-sim-2";
    CHANGED("model");
    p.req.temperature = 0.2;
    CHANGED("temperature");
    p.req.max_tokens = 257;
    CHANGED("max_tokens");
    p.req.max_tokens = 0; /* not sent at all */
    CHANGED("max_tokens not sent");
    p.msgs[0].content = "You are very careful.";
    CHANGED("system message");
    p.msgs[1].content = "Summarize: the cat sat on the hat.";
    CHANGED("user message");
    p.msgs[1].role = "assistant";
    CHANGED("a message's role");
    p.req.n_messages = 1;
    CHANGED("number of messages");
    p.req.json_schema = schema;
    CHANGED("schema added");
#undef CHANGED

    /* One schema against another. */
    char ks1[SHEAF_CACHE_KEY_SIZE], ks2[SHEAF_CACHE_KEY_SIZE];
    p.req.json_schema = schema;
    key_of(URL, &p.req, ks1);
    p.req.json_schema = schema2;
    key_of(URL, &p.req, ks2);
    assert_string_not_equal(ks1, ks2);

    /* Same request, another endpoint serving a model of the same name. */
    base_request(&p, NULL);
    key_of("http://other.example/v1", &p.req, k);
    assert_string_not_equal(k, base);
    /* The URL and the body cannot run into each other. */
    key_of("http://127.0.0.1:8080/v", &p.req, k);
    assert_string_not_equal(k, base);
    key_of(NULL, &p.req, k);
    assert_string_not_equal(k, base);

    json_decref(schema);
    json_decref(schema2);
}

static void test_key_refuses_unsendable(void **state)
{
    (void)state;
    req_parts p;
    char k[SHEAF_CACHE_KEY_SIZE];
    base_request(&p, NULL);
    p.msgs[1].content = "bad \xff utf-8";
    assert_int_not_equal(sheaf_cache_key(URL, &p.req, k), SHEAF_OK);
    assert_string_equal(k, "");
}

/* ---- temperature rule and config ---------------------------------------- */

static void test_usable(void **state)
{
    (void)state;
    sheaf_config cfg;
    req_parts p;
    assert_int_equal(sheaf_config_init(&cfg), SHEAF_OK);
    assert_int_equal(cfg.cache_enabled, 1);
    assert_int_equal(cfg.cache_ttl_s, 604800);
    assert_int_equal(cfg.cache_nondeterministic, 0);

    base_request(&p, NULL);
    assert_true(sheaf_cache_usable(&cfg, &p.req));          /* temperature 0 */
    p.req.temperature = 0.7;
    assert_false(sheaf_cache_usable(&cfg, &p.req));         /* sampled: not by default */
    assert_int_equal(sheaf_config_set(&cfg, "cache.nondeterministic", "true", "test", err,
                                      sizeof(err)), SHEAF_OK);
    assert_true(sheaf_cache_usable(&cfg, &p.req));          /* asked for */
    p.req.temperature = 0.0;
    assert_true(sheaf_cache_usable(&cfg, &p.req));
    assert_int_equal(sheaf_config_set(&cfg, "cache.enabled", "off", "test", err, sizeof(err)),
                     SHEAF_OK);
    assert_false(sheaf_cache_usable(&cfg, &p.req));         /* disabled: never */
    p.req.temperature = 0.7;
    assert_false(sheaf_cache_usable(&cfg, &p.req));

    /* Bounds name the key. */
    assert_int_equal(sheaf_config_set(&cfg, "cache.ttl_s", "-1", "test", err, sizeof(err)),
                     SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "cache.ttl_s"));
    assert_int_equal(sheaf_config_set(&cfg, "cache.ttl_s", "0", "test", err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(cfg.cache_ttl_s, 0);
    sheaf_config_clear(&cfg);
}

/* ---- Redis: get, put, TTL, counters -------------------------------------- */

static void test_put_get_ttl(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    sheaf_config cfg;
    req_parts p;
    char key[SHEAF_CACHE_KEY_SIZE], *content = (char *)"x";
    const char *answer = "A \"quoted\" answer,\nover two lines: caf\xc3\xa9 \xe6\x97\xa5";
    sheaf_llm_usage u = {123, 45}, got = {9, 9};
    int hit = -1;

    assert_non_null(r);
    assert_int_equal(sheaf_config_init(&cfg), SHEAF_OK);
    base_request(&p, NULL);
    key_of(URL, &p.req, key);

    /* Nothing there yet: a miss. */
    assert_int_equal(sheaf_cache_get(r, key, &content, &got, &hit, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(hit, 0);
    assert_null(content);
    assert_int_equal(got.prompt_tokens + got.completion_tokens, 0);

    /* Stored, then found with its usage. */
    assert_int_equal(sheaf_cache_put(r, &cfg, key, answer, &u, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_cache_get(r, key, &content, &got, &hit, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(hit, 1);
    assert_string_equal(content, answer);
    assert_int_equal(got.prompt_tokens, 123);
    assert_int_equal(got.completion_tokens, 45);
    free(content);
    /* The stored bytes: what jansson's compact dump of {c, p, k} gave. */
    {
        json_t *v = json_pack("{s:s, s:I, s:I}", "c", answer, "p", (json_int_t)123, "k",
                              (json_int_t)45);
        char *want = json_dumps(v, JSON_COMPACT);
        redisReply *rep = sheaf_redis_cmd(r, err, sizeof(err), "GET %s", key);
        assert_non_null(rep);
        assert_int_equal(rep->type, REDIS_REPLY_STRING);
        assert_string_equal(rep->str, want);
        freeReplyObject(rep);
        free(want);
        json_decref(v);
    }

    /* The age bound: EX cache.ttl_s. */
    long long ttl = cmd_int(r, "TTL %s", key);
    assert_in_range(ttl, 604790, 604800);
    assert_int_equal(sheaf_config_set(&cfg, "cache.ttl_s", "2", "test", err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_cache_put(r, &cfg, key, answer, &u, err, sizeof(err)), SHEAF_OK);
    assert_in_range(cmd_int(r, "TTL %s", key), 1, 2);
    /* ttl 0: no expiry. */
    assert_int_equal(sheaf_config_set(&cfg, "cache.ttl_s", "0", "test", err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_cache_put(r, &cfg, key, answer, &u, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(cmd_int(r, "TTL %s", key), -1);

    /* An expired entry is a miss. */
    assert_int_equal(sheaf_config_set(&cfg, "cache.ttl_s", "1", "test", err, sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_cache_put(r, &cfg, key, answer, &u, err, sizeof(err)), SHEAF_OK);
    cmd_int(r, "PEXPIRE %s 50", key);
    sheaf_sleep_ms(120);
    assert_int_equal(sheaf_cache_get(r, key, &content, &got, &hit, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(hit, 0);
    assert_null(content);

    /* Content that is not UTF-8 is refused, naming the key. */
    assert_int_equal(sheaf_cache_put(r, &cfg, key, "bad \xff", &u, err, sizeof(err)),
                     SHEAF_ERR_INVALID);
    assert_non_null(strstr(err, key));

    sheaf_config_clear(&cfg);
    sheaf_redis_destroy(r);
}

/* A value that is not a cache value, and a Redis error, are misses. */
static void test_bad_values_and_errors_miss(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    char *content = NULL;
    sheaf_llm_usage got;
    int hit = -1;
    const char *bad[] = {"not json", "{\"c\":1,\"p\":1,\"k\":1}", "{\"c\":\"x\",\"p\":-1,\"k\":1}",
                         "{\"c\":\"x\",\"p\":1}", "[\"x\",1,1]"};
    assert_non_null(r);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cmd_ok(r, "SET %s %s", SHEAF_CACHE_PREFIX "bad", bad[i]);
        assert_int_equal(sheaf_cache_get(r, SHEAF_CACHE_PREFIX "bad", &content, &got, &hit, err,
                                         sizeof(err)), SHEAF_OK);
        assert_int_equal(hit, 0);
        assert_null(content);
    }
    /* A key of another type: Redis answers WRONGTYPE; a miss with the
     * error, naming the key. */
    cmd_ok(r, "HSET %s f %s", SHEAF_CACHE_PREFIX "hash", "v");
    assert_int_equal(sheaf_cache_get(r, SHEAF_CACHE_PREFIX "hash", &content, &got, &hit, err,
                                     sizeof(err)), SHEAF_ERR_REDIS);
    assert_int_equal(hit, 0);
    assert_null(content);
    assert_non_null(strstr(err, SHEAF_CACHE_PREFIX "hash"));
    sheaf_redis_destroy(r);
}

static void test_counters(void **state)
{
    (void)state;
    NEED_REDIS();
    sheaf_redis *r = conn();
    sheaf_job_status st;
    sheaf_llm_usage saved = {100, 20};
    assert_non_null(r);

    /* A job as sheaf_state_job_status knows it (its id and state). */
    cmd_ok(r, "HSET %s id %s", "sheaf:{cache-job}:job", "cache-job");
    cmd_ok(r, "HSET %s state %s", "sheaf:{cache-job}:job", "running");
    sheaf_cache_count(r, "cache-job", 1, &saved);
    sheaf_cache_count(r, "cache-job", 1, &saved);
    sheaf_cache_count(r, "cache-job", 0, &saved);  /* a miss saves nothing */
    sheaf_cache_count(r, "cache-job", 0, NULL);
    assert_int_equal(sheaf_state_job_status(r, "cache-job", &st, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(st.cache_hits, 2);
    assert_int_equal(st.cache_misses, 2);
    assert_int_equal(st.tokens_saved, 240);

    /* An unknown job is not created by counting; a bad id is ignored. */
    sheaf_cache_count(r, "no-such-job", 1, &saved);
    assert_int_equal(cmd_int(r, "EXISTS %s", "sheaf:{no-such-job}:job"), 0);
    sheaf_cache_count(r, "bad id with spaces", 0, NULL);
    sheaf_cache_count(r, NULL, 0, NULL);
    sheaf_redis_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_format_and_stability),
        cmocka_unit_test(test_key_changes_with_each_part),
        cmocka_unit_test(test_key_refuses_unsendable),
        cmocka_unit_test(test_usable),
        cmocka_unit_test(test_put_get_ttl),
        cmocka_unit_test(test_bad_values_and_errors_miss),
        cmocka_unit_test(test_counters),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
