/* test_config.c - unit tests of the configuration (common/core/config.c).
 *
 * Defaults, the file format (quotes, escapes, comments, errors with file
 * and line), the environment (SHEAF_<KEY>, unknown variables, the ignore
 * list, kafka.*), the order file < environment < flags, bounds and types,
 * secrets from files and their absence from every dump, and kafka.*
 * passthrough.  Every test starts from an environment without SHEAF_
 * variables, so the machine running the tests cannot leak into them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "sheaf/config.h"

extern char **environ;

static char tmpdir[] = "/tmp/sheaf-test-config-XXXXXX";

/* Unsets every SHEAF_ variable (names copied first: unsetenv changes environ). */
static void clear_sheaf_env(void)
{
    char *names[256];
    size_t n = 0;
    for (char **e = environ; e && *e && n < 256; e++) {
        if (strncmp(*e, "SHEAF_", 6) != 0) continue;
        const char *eq = strchr(*e, '=');
        names[n++] = strndup(*e, eq ? (size_t)(eq - *e) : strlen(*e));
    }
    for (size_t i = 0; i < n; i++) {
        unsetenv(names[i]);
        free(names[i]);
    }
}

static int setup(void **state)
{
    (void)state;
    clear_sheaf_env();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    clear_sheaf_env();
    return 0;
}

/* Writes text to a file in tmpdir and returns its path (static buffer). */
static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* The dump of cfg as a malloc'd string. */
static char *dump_str(const sheaf_config *cfg)
{
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    assert_non_null(f);
    sheaf_config_dump(cfg, f);
    fclose(f);
    return s;
}

static void expect_set_fail(sheaf_config *cfg, const char *key, const char *value,
                            const char *needle)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err rc = sheaf_config_set(cfg, key, value, "flag -X", err, sizeof(err));
    if (rc != SHEAF_ERR_CONFIG || !strstr(err, needle) || !strstr(err, "flag -X"))
        fail_msg("set %s=%s: got %d \"%s\", want CONFIG containing \"%s\"", key, value, rc, err,
                 needle);
}

static void set_ok(sheaf_config *cfg, const char *key, const char *value)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err rc = sheaf_config_set(cfg, key, value, "test", err, sizeof(err));
    if (rc != SHEAF_OK) fail_msg("set %s=%s: %d %s", key, value, rc, err);
}

static void test_defaults(void **state)
{
    (void)state;
    sheaf_config c;
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    assert_string_equal(c.brokers, "");
    assert_string_equal(c.topic_prefix, "sheaf");
    assert_int_equal(c.session_timeout_ms, 45000);
    assert_int_equal(c.heartbeat_ms, 3000);
    assert_null(c.kafka_props);
    assert_int_equal(c.kafka_props_len, 0);
    assert_string_equal(c.redis_url, "redis://127.0.0.1:6379/0");
    assert_null(c.redis_password);
    assert_string_equal(c.redis_password_file, "");
    assert_int_equal(c.redis_timeout_ms, 5000);
    assert_string_equal(c.llm_base_url, "http://127.0.0.1:8080/v1");
    assert_string_equal(c.llm_model, "sheaf-sim");
    assert_null(c.llm_api_key);
    assert_string_equal(c.llm_api_key_file, "");
    assert_true(c.llm_temperature == 0.0);
    assert_int_equal(c.llm_max_tokens, 512);
    assert_int_equal(c.llm_timeout_ms, 60000);
    assert_int_equal(c.llm_connect_timeout_ms, 5000);
    assert_int_equal(c.llm_max_attempts, 5);
    assert_int_equal(c.llm_backoff_ms, 500);
    assert_int_equal(c.llm_max_response_bytes, 8 * 1024 * 1024);
    assert_int_equal(c.chunk_max_tokens, 800);
    assert_int_equal(c.chunk_overlap_tokens, 0);
    assert_int_equal(c.chunk_pages_per_batch, 0);
    assert_string_equal(c.input_format, "auto");
    assert_string_equal(c.input_id_field, "id");
    assert_string_equal(c.input_text_field, "text");
    assert_string_equal(c.input_meta_fields, "*");
    assert_int_equal(c.input_max_line_bytes, 64 * 1024 * 1024);
    assert_true(c.input_max_doc_bytes == 256LL * 1024 * 1024);
    assert_string_equal(c.input_on_error, "refuse");
    assert_string_equal(c.worker_group, "sheaf-workers");
    assert_string_equal(c.reducer_group, "sheaf-reducers");
    assert_int_equal(c.reducer_claim_idle_ms, 30000);
    assert_string_equal(c.reducer_output, "");
    assert_string_equal(c.prompt_system,
                        "You are a careful analyst. Answer concisely and only from the text "
                        "given.");
    assert_string_equal(c.prompt_map,
                        "Summarize this part ({{chunk_index}} of {{chunk_count}}) of the "
                        "document \"{{doc_id}}\" in a few sentences.\n\n<text>\n{{text}}\n"
                        "</text>");
    assert_string_equal(c.prompt_combine,
                        "Combine these partial summaries of the document \"{{doc_id}}\" into "
                        "one summary.\n\n<text>\n{{partials}}\n</text>");
    assert_string_equal(c.prompt_overview,
                        "Write an overview of these {{doc_count}} document summaries.\n\n"
                        "<text>\n{{results}}\n</text>");
    assert_string_equal(c.log_level, "info");
    assert_int_equal(c.log_json, 0);
    sheaf_config_clear(&c);
    sheaf_config_clear(&c); /* idempotent */
    assert_null(c.llm_model);
}

static void test_load_defaults_only(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    assert_int_equal(sheaf_config_load(&c, NULL, NULL, 0, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(c.llm_model, "sheaf-sim");
    sheaf_config_clear(&c);
}

static void test_types_and_bounds(void **state)
{
    (void)state;
    sheaf_config c;
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);

    set_ok(&c, "llm.max_tokens", "1000000");
    assert_int_equal(c.llm_max_tokens, 1000000);
    set_ok(&c, "llm.max_tokens", "+7");
    assert_int_equal(c.llm_max_tokens, 7);
    expect_set_fail(&c, "llm.max_tokens", "0", "out of range 1..1000000");
    expect_set_fail(&c, "llm.max_tokens", "1000001", "out of range");
    expect_set_fail(&c, "llm.max_tokens", "12abc", "\"12abc\" is not an integer");
    expect_set_fail(&c, "llm.max_tokens", "", "is not an integer");
    expect_set_fail(&c, "llm.max_tokens", " 12", "is not an integer");
    expect_set_fail(&c, "llm.max_tokens", "0x10", "is not an integer");
    expect_set_fail(&c, "llm.max_tokens", "1.5", "is not an integer");
    expect_set_fail(&c, "llm.max_tokens", "99999999999999999999999", "is not an integer");
    assert_int_equal(c.llm_max_tokens, 7); /* failures leave the value */
    expect_set_fail(&c, "group.session_timeout_ms", "999", "group.session_timeout_ms");
    set_ok(&c, "group.session_timeout_ms", "3600000");
    expect_set_fail(&c, "chunk.max_tokens", "15", "chunk.max_tokens");
    expect_set_fail(&c, "llm.max_response_bytes", "1023", "llm.max_response_bytes");
    set_ok(&c, "llm.max_response_bytes", "1073741824");
    expect_set_fail(&c, "llm.max_attempts", "101", "llm.max_attempts");
    expect_set_fail(&c, "chunk.pages_per_batch", "-1", "chunk.pages_per_batch");

    set_ok(&c, "input.max_doc_bytes", "1099511627776");
    assert_true(c.input_max_doc_bytes == 1099511627776LL);
    expect_set_fail(&c, "input.max_doc_bytes", "1099511627777", "input.max_doc_bytes");

    set_ok(&c, "llm.temperature", "0.7");
    assert_true(c.llm_temperature == 0.7);
    set_ok(&c, "llm.temperature", "2");
    expect_set_fail(&c, "llm.temperature", "2.01", "out of range");
    expect_set_fail(&c, "llm.temperature", "-0.1", "out of range");
    expect_set_fail(&c, "llm.temperature", "nan", "is not a number");
    expect_set_fail(&c, "llm.temperature", "warm", "is not a number");

    static const char *const yes[] = {"true", "1", "yes", "on", "TRUE", "On"};
    static const char *const no[] = {"false", "0", "no", "off", "False", "OFF"};
    for (size_t i = 0; i < 6; i++) {
        set_ok(&c, "log.json", yes[i]);
        assert_int_equal(c.log_json, 1);
        set_ok(&c, "log.json", no[i]);
        assert_int_equal(c.log_json, 0);
    }
    expect_set_fail(&c, "log.json", "maybe", "is not a boolean");
    expect_set_fail(&c, "log.json", "", "is not a boolean");

    set_ok(&c, "input.format", "jsonl");
    assert_string_equal(c.input_format, "jsonl");
    expect_set_fail(&c, "input.format", "xml", "\"xml\" is not one of auto|text|jsonl");
    expect_set_fail(&c, "input.format", "JSONL", "input.format");
    expect_set_fail(&c, "input.on_error", "ignore", "refuse|skip");
    set_ok(&c, "log.level", "debug");
    expect_set_fail(&c, "log.level", "trace", "error|warn|info|debug");

    set_ok(&c, "topic.prefix", "team-a.prod_1");
    expect_set_fail(&c, "topic.prefix", "", "topic.prefix");
    expect_set_fail(&c, "topic.prefix", "has space", "topic name");
    expect_set_fail(&c, "topic.prefix", "a/b", "topic name");

    expect_set_fail(&c, "llm.model", "bad\xff", "not valid UTF-8");
    expect_set_fail(&c, "llm.modle", "x", "unknown key \"llm.modle\"");
    expect_set_fail(&c, "", "x", "unknown key");
    expect_set_fail(&c, "kafka.", "x", "kafka.");
    expect_set_fail(&c, "kafka.bad name", "x", "kafka.bad name");

    /* A long bad value is shortened in the message. */
    char longv[300];
    memset(longv, 'z', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    char err[SHEAF_ERRSTR_SIZE] = "";
    assert_int_equal(sheaf_config_set(&c, "llm.max_tokens", longv, "x", err, sizeof(err)),
                     SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "..."));
    assert_true(strlen(err) < 200);

    /* NULL arguments and a NULL errstr do not crash. */
    assert_int_equal(sheaf_config_set(&c, NULL, "x", NULL, NULL, 0), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_config_set(&c, "llm.model", NULL, NULL, NULL, 0), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_config_set(&c, "nope", "x", NULL, NULL, 0), SHEAF_ERR_CONFIG);
    sheaf_config_clear(&c);
}

static void test_kafka_passthrough(void **state)
{
    (void)state;
    sheaf_config c;
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    set_ok(&c, "kafka.security.protocol", "SASL_SSL");
    set_ok(&c, "kafka.sasl.mechanisms", "PLAIN");
    set_ok(&c, "kafka.security.protocol", "SSL"); /* replaces in place */
    assert_int_equal(c.kafka_props_len, 2);
    assert_string_equal(c.kafka_props[0].key, "kafka.security.protocol");
    assert_string_equal(c.kafka_props[0].value, "SSL");
    assert_string_equal(c.kafka_props[1].key, "kafka.sasl.mechanisms");
    assert_string_equal(c.kafka_props[1].value, "PLAIN");
    set_ok(&c, "kafka.sasl.password", "hunter2-kafka");
    char *d = dump_str(&c);
    assert_non_null(strstr(d, "kafka.security.protocol = \"SSL\"\n"));
    assert_non_null(strstr(d, "kafka.sasl.password = (set)"));
    assert_null(strstr(d, "hunter2-kafka"));
    free(d);
    sheaf_config_clear(&c);
    assert_null(c.kafka_props);
}

static void test_file_parsing(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    const char *path = write_file(
        "good.conf",
        "\xEF\xBB\xBF# a comment\n"
        "\n"
        "   # an indented comment\n"
        "llm.model = my-model\n"
        "llm.base_url=http://example.com/v1#frag\n"
        "  llm.max_tokens   =   100   \r\n"
        "prompt.system = \"Line one\\nLine \\\"two\\\"\\tTabbed \\\\ done\"  \n"
        "prompt.map = \"  padded  \"\n"
        "reducer.output = \"\"\n"
        "reducer.group =\n"
        "kafka.client.rack = rack-1\n"
        "llm.model = later-wins\n"
        "log.json = yes");
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    assert_int_equal(sheaf_config_load_file(&c, path, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(c.llm_model, "later-wins");
    assert_string_equal(c.llm_base_url, "http://example.com/v1#frag");
    assert_int_equal(c.llm_max_tokens, 100);
    assert_string_equal(c.prompt_system, "Line one\nLine \"two\"\tTabbed \\ done");
    assert_string_equal(c.prompt_map, "  padded  ");
    assert_string_equal(c.reducer_output, "");
    assert_string_equal(c.reducer_group, "");
    assert_int_equal(c.kafka_props_len, 1);
    assert_string_equal(c.kafka_props[0].key, "kafka.client.rack");
    assert_int_equal(c.log_json, 1);
    sheaf_config_clear(&c);
}

static void expect_file_fail(const char *text, const char *needle)
{
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    const char *path = write_file("bad.conf", text);
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    sheaf_err rc = sheaf_config_load_file(&c, path, err, sizeof(err));
    if (rc != SHEAF_ERR_CONFIG || !strstr(err, needle) || !strstr(err, path))
        fail_msg("file \"%s\": got %d \"%s\", want CONFIG containing \"%s\" and the path", text,
                 rc, err, needle);
    sheaf_config_clear(&c);
}

static void test_file_errors(void **state)
{
    (void)state;
    expect_file_fail("# ok\nllm.model = a\nllm.modle = b\n", "line 3: unknown key \"llm.modle\"");
    expect_file_fail("llm.model\n", "line 1: expected key = value");
    expect_file_fail("= value\n", "line 1: missing key");
    expect_file_fail("prompt.map = \"open\n", "line 1: key \"prompt.map\": unterminated");
    expect_file_fail("prompt.map = \"ends in \\\"\n", "unterminated");
    expect_file_fail("prompt.map = \"bad \\q escape\"\n", "unknown escape");
    expect_file_fail("prompt.map = \"a\" b\n", "text after the closing quote");
    expect_file_fail("\n\nllm.max_tokens = lots\n", "line 3: key \"llm.max_tokens\"");
    expect_file_fail("llm.temperature = 3\n", "llm.temperature");

    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    char missing[600];
    snprintf(missing, sizeof(missing), "%s/does-not-exist.conf", tmpdir);
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    assert_int_equal(sheaf_config_load_file(&c, missing, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, missing));
    sheaf_config_clear(&c);
}

static void test_env(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    setenv("SHEAF_LLM_BASE_URL", "http://env:1/v1", 1);
    setenv("SHEAF_TOPIC_PREFIX", "envpfx", 1);
    setenv("SHEAF_BROKERS", "b1:9092,b2:9092", 1);
    setenv("SHEAF_GROUP_SESSION_TIMEOUT_MS", "6000", 1);
    setenv("SHEAF_KAFKA_SECURITY_PROTOCOL", "SSL", 1);
    /* Not keys, and ignored. */
    setenv("SHEAF_CONFIG", "", 1);
    setenv("SHEAF_DEV_DIR", "/x", 1);
    setenv("SHEAF_DEV_KAFKA", "kraft", 1);
    setenv("SHEAF_DEV_KAFKA_VERSION", "3.9.1", 1);
    setenv("SHEAF_BUILD_DIR", "/x", 1);
    setenv("SHEAF_SOURCE_DIR", "/x", 1);
    setenv("SHEAF_BIN_DIR", "/x", 1);
    setenv("SHEAF_TEST_ANYTHING", "1", 1);
    setenv("SHEAF_SIM_LATENCY_MS", "5", 1);
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    assert_int_equal(sheaf_config_load_env(&c, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(c.llm_base_url, "http://env:1/v1");
    assert_string_equal(c.topic_prefix, "envpfx");
    assert_string_equal(c.brokers, "b1:9092,b2:9092");
    assert_int_equal(c.session_timeout_ms, 6000);
    assert_int_equal(c.kafka_props_len, 1);
    assert_string_equal(c.kafka_props[0].key, "kafka.security.protocol");
    assert_string_equal(c.kafka_props[0].value, "SSL");

    /* An unknown SHEAF_ variable is named. */
    setenv("SHEAF_LLM_MODLE", "x", 1);
    assert_int_equal(sheaf_config_load_env(&c, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "SHEAF_LLM_MODLE"));
    unsetenv("SHEAF_LLM_MODLE");

    /* A bad value names the variable and the key. */
    setenv("SHEAF_LLM_MAX_TOKENS", "many", 1);
    assert_int_equal(sheaf_config_load_env(&c, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "environment SHEAF_LLM_MAX_TOKENS"));
    assert_non_null(strstr(err, "llm.max_tokens"));
    assert_non_null(strstr(err, "many"));
    unsetenv("SHEAF_LLM_MAX_TOKENS");

    /* The lower-case spelling is not a key. */
    setenv("SHEAF_llm_model", "x", 1);
    assert_int_equal(sheaf_config_load_env(&c, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "SHEAF_llm_model"));
    unsetenv("SHEAF_llm_model");
    sheaf_config_clear(&c);
}

static void test_load_order(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    const char *path = write_file("order.conf",
                                  "llm.model = from-file\n"
                                  "llm.max_tokens = 100\n"
                                  "redis.url = redis://file:1/0\n"
                                  "kafka.acks = 1\n");
    char path_copy[512];
    snprintf(path_copy, sizeof(path_copy), "%s", path);
    setenv("SHEAF_LLM_MODEL", "from-env", 1);
    setenv("SHEAF_REDIS_URL", "redis://env:2/0", 1);
    char *overrides[] = {"llm.model=from-flag", "kafka.acks=all", "prompt.system=a=b"};

    assert_int_equal(sheaf_config_load(&c, path_copy, overrides, 3, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(c.llm_model, "from-flag");       /* flag > env > file */
    assert_string_equal(c.redis_url, "redis://env:2/0"); /* env > file */
    assert_int_equal(c.llm_max_tokens, 100);             /* file > default */
    assert_string_equal(c.prompt_system, "a=b");         /* split at the first '=' */
    assert_int_equal(c.kafka_props_len, 1);
    assert_string_equal(c.kafka_props[0].value, "all");
    sheaf_config_clear(&c);

    /* SHEAF_CONFIG names the file when no path is given. */
    setenv("SHEAF_CONFIG", path_copy, 1);
    unsetenv("SHEAF_LLM_MODEL");
    assert_int_equal(sheaf_config_load(&c, NULL, NULL, 0, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(c.llm_model, "from-file");
    sheaf_config_clear(&c);

    /* Bad flags. */
    char *bad1[] = {"noequals"};
    assert_int_equal(sheaf_config_load(&c, NULL, bad1, 1, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "flag -X \"noequals\""));
    sheaf_config_clear(&c);
    char *bad2[] = {"llm.nope=1"};
    assert_int_equal(sheaf_config_load(&c, NULL, bad2, 1, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "flag -X"));
    assert_non_null(strstr(err, "\"llm.nope\""));
    sheaf_config_clear(&c);

    /* A missing named file, and a bad environment, fail the load. */
    char missing[600];
    snprintf(missing, sizeof(missing), "%s/none.conf", tmpdir);
    assert_int_equal(sheaf_config_load(&c, missing, NULL, 0, err, sizeof(err)),
                     SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, missing));
    sheaf_config_clear(&c);
    unsetenv("SHEAF_CONFIG");
    setenv("SHEAF_NOT_A_KEY", "1", 1);
    assert_int_equal(sheaf_config_load(&c, NULL, NULL, 0, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "SHEAF_NOT_A_KEY"));
    sheaf_config_clear(&c);
}

static void test_cross_key_rules(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    char *ok[] = {"chunk.max_tokens=800", "chunk.overlap_tokens=399"};
    assert_int_equal(sheaf_config_load(&c, NULL, ok, 2, err, sizeof(err)), SHEAF_OK);
    sheaf_config_clear(&c);
    char *bad[] = {"chunk.max_tokens=800", "chunk.overlap_tokens=400"};
    assert_int_equal(sheaf_config_load(&c, NULL, bad, 2, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "chunk.overlap_tokens"));
    assert_non_null(strstr(err, "chunk.max_tokens"));
    sheaf_config_clear(&c);
    char *hb[] = {"group.session_timeout_ms=3000"};
    assert_int_equal(sheaf_config_load(&c, NULL, hb, 1, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "group.heartbeat_ms"));
    sheaf_config_clear(&c);
    char *brk[] = {"llm.breaker_cooldown_ms=9000", "llm.breaker_max_cooldown_ms=1000"};
    assert_int_equal(sheaf_config_load(&c, NULL, brk, 2, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_string_equal(err, "key \"llm.breaker_max_cooldown_ms\": 1000 must be at least "
                             "llm.breaker_cooldown_ms (9000)");
    sheaf_config_clear(&c);
}

static void test_secrets(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    char keyfile[600], pwfile[600], flag1[700], flag2[700];
    snprintf(keyfile, sizeof(keyfile), "%s", write_file("api.key", "sk-FILE-SECRET-1\nsecond\n"));
    snprintf(pwfile, sizeof(pwfile), "%s", write_file("redis.pw", "pw-FILE-SECRET-2\r\n"));
    snprintf(flag1, sizeof(flag1), "llm.api_key_file=%s", keyfile);
    snprintf(flag2, sizeof(flag2), "redis.password_file=%s", pwfile);
    char *overrides[] = {flag1, flag2};

    assert_int_equal(sheaf_config_load(&c, NULL, overrides, 2, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(c.llm_api_key, "sk-FILE-SECRET-1");
    assert_string_equal(c.redis_password, "pw-FILE-SECRET-2");
    char *d = dump_str(&c);
    assert_null(strstr(d, "FILE-SECRET"));
    assert_non_null(strstr(d, "llm.api_key = (set)"));
    assert_non_null(strstr(d, "redis.password = (set)"));
    free(d);
    sheaf_config_clear(&c);

    /* A secret already set (here from the environment) wins over its file. */
    setenv("SHEAF_LLM_API_KEY", "sk-ENV-SECRET-3", 1);
    assert_int_equal(sheaf_config_load(&c, NULL, overrides, 2, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(c.llm_api_key, "sk-ENV-SECRET-3");
    d = dump_str(&c);
    assert_null(strstr(d, "ENV-SECRET"));
    free(d);
    sheaf_config_clear(&c);
    unsetenv("SHEAF_LLM_API_KEY");

    /* Unset secrets show as (unset). */
    assert_int_equal(sheaf_config_load(&c, NULL, NULL, 0, err, sizeof(err)), SHEAF_OK);
    d = dump_str(&c);
    assert_non_null(strstr(d, "llm.api_key = (unset)"));
    assert_non_null(strstr(d, "redis.password = (unset)"));
    free(d);
    sheaf_config_clear(&c);

    /* An unreadable secret file names the file; an empty one is refused. */
    char flag3[700];
    snprintf(flag3, sizeof(flag3), "llm.api_key_file=%s/no-such-key", tmpdir);
    char *bad[] = {flag3};
    assert_int_equal(sheaf_config_load(&c, NULL, bad, 1, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "no-such-key"));
    assert_non_null(strstr(err, "llm.api_key_file"));
    sheaf_config_clear(&c);
    snprintf(flag3, sizeof(flag3), "llm.api_key_file=%s", write_file("empty.key", "\n"));
    assert_int_equal(sheaf_config_load(&c, NULL, bad, 1, err, sizeof(err)), SHEAF_ERR_CONFIG);
    assert_non_null(strstr(err, "empty"));
    sheaf_config_clear(&c);

    /* A bad secret value is never echoed in an error. */
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    assert_int_equal(sheaf_config_set(&c, "llm.api_key", "SECRET-\xff", "flag -X", err,
                                      sizeof(err)),
                     SHEAF_ERR_CONFIG);
    assert_null(strstr(err, "SECRET-"));
    /* Set directly, it is still not dumped; "" means unset. */
    set_ok(&c, "llm.api_key", "sk-DIRECT-SECRET-4");
    d = dump_str(&c);
    assert_null(strstr(d, "DIRECT-SECRET"));
    free(d);
    set_ok(&c, "llm.api_key", "");
    assert_null(c.llm_api_key);
    sheaf_config_clear(&c);
}

static void test_dump_reloads(void **state)
{
    (void)state;
    sheaf_config a, b;
    char err[SHEAF_ERRSTR_SIZE] = "";
    char *overrides[] = {"prompt.map=Tab\there \"quoted\" back\\slash\nnew line",
                         "llm.temperature=0.7", "input.max_doc_bytes=123456789012",
                         "log.json=on", "kafka.linger.ms=5", "llm.api_key=sk-x"};
    assert_int_equal(sheaf_config_load(&a, NULL, overrides, 6, err, sizeof(err)), SHEAF_OK);
    char *d1 = dump_str(&a);
    const char *path = write_file("dump.conf", d1);
    assert_int_equal(sheaf_config_init(&b), SHEAF_OK);
    if (sheaf_config_load_file(&b, path, err, sizeof(err)) != SHEAF_OK)
        fail_msg("reloading the dump: %s", err);
    assert_string_equal(b.prompt_map, a.prompt_map);
    assert_true(b.llm_temperature == 0.7);
    assert_true(b.input_max_doc_bytes == 123456789012LL);
    assert_int_equal(b.log_json, 1);
    assert_null(b.llm_api_key); /* secret lines are comments */
    set_ok(&b, "llm.api_key", "sk-y");
    char *d2 = dump_str(&b);
    assert_string_equal(d1, d2);
    free(d1);
    free(d2);
    sheaf_config_clear(&a);
    sheaf_config_clear(&b);
}

static void test_help_and_topics(void **state)
{
    (void)state;
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    assert_non_null(f);
    sheaf_config_print_help(f);
    fclose(f);
    static const char *const keys[] = {"brokers", "topic.prefix", "group.session_timeout_ms",
                                       "llm.api_key_file", "input.max_doc_bytes", "log.json",
                                       "kafka.<property>", "SHEAF_TEST_", "auto|text|jsonl"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (!strstr(s, keys[i])) fail_msg("help lacks %s", keys[i]);
    free(s);

    sheaf_config c;
    char out[64];
    assert_int_equal(sheaf_config_init(&c), SHEAF_OK);
    sheaf_topic_name(&c, "map", out, sizeof(out));
    assert_string_equal(out, "sheaf.map");
    set_ok(&c, "topic.prefix", "prod");
    sheaf_topic_name(&c, "dlq", out, sizeof(out));
    assert_string_equal(out, "prod.dlq");
    sheaf_topic_name(&c, "results", out, 6);
    assert_string_equal(out, "prod.");
    sheaf_config_clear(&c);
}

static int group_setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_defaults_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_types_and_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kafka_passthrough, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_parsing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cross_key_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump_reloads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_and_topics, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
