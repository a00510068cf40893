/* test_stream_record.c - unit tests of `sheaf stream`'s record reading
 * (producer/stream_record.c) and latency percentiles (common/state/state_stream.c),
 * without Kafka or Redis: ids from the body or the key, text or pages
 * joined by form feeds, metadata without the pages, plain-text records, and
 * the reasons a bad record goes to the DLQ with; chunking a record; the
 * quantile of a quarter-octave histogram. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "inputs.h"
#include "sheaf/state_stream.h"
#include "stream.h"

typedef struct fixture {
    sheaf_config cfg;
    sheaf_input_opts io;
    sheaf_stream_record rec;
    char msg[1024];
} fixture;

static int setup(void **state)
{
    char errstr[256];
    fixture *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    /* Only the fields the record reader uses; literals, never freed. */
    f->cfg.input_format = (char *)"auto";
    f->cfg.input_id_field = (char *)"id";
    f->cfg.input_text_field = (char *)"text";
    f->cfg.input_meta_fields = (char *)"*";
    f->cfg.input_max_line_bytes = 1 << 20;
    f->cfg.input_max_doc_bytes = 1 << 20;
    f->cfg.input_on_error = (char *)"refuse";
    f->cfg.chunk_max_tokens = 64;
    f->cfg.stream_format = (char *)"json";
    f->cfg.stream_pages_field = (char *)"pages";
    if (sheaf_input_opts_init(&f->io, &f->cfg, errstr, sizeof(errstr)) != SHEAF_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    sheaf_stream_record_clear(&f->rec);
    sheaf_input_opts_clear(&f->io);
    free(f);
    return 0;
}

static sheaf_err parse(fixture *f, const char *key, const char *value)
{
    sheaf_stream_record_clear(&f->rec);
    f->msg[0] = '\0';
    return sheaf_stream_record_parse(&f->cfg, &f->io, key, key ? strlen(key) : 0, value,
                                     value ? strlen(value) : 0, &f->rec, f->msg, sizeof(f->msg));
}

static void test_json_fields(void **state)
{
    fixture *f = *state;
    assert_int_equal(parse(f, "k", "{\"id\":\"a\",\"text\":\"Hello there.\",\"year\":2026}"),
                     SHEAF_OK);
    assert_string_equal(f->rec.id, "a");
    assert_string_equal(f->rec.text, "Hello there.");
    assert_string_equal(f->rec.meta_json, "{\"year\":2026}");
    assert_int_equal(f->rec.meta_len, 1);
    assert_string_equal(f->rec.meta[0].value, "2026");
    assert_int_equal(f->rec.has_pages, 0);
    /* An integer id, written in decimal. */
    assert_int_equal(parse(f, NULL, "{\"id\":42,\"text\":\"x\"}"), SHEAF_OK);
    assert_string_equal(f->rec.id, "42");
}

static void test_id_from_key(void **state)
{
    fixture *f = *state;
    assert_int_equal(parse(f, "from-key", "{\"text\":\"Body without an id.\"}"), SHEAF_OK);
    assert_string_equal(f->rec.id, "from-key");
    assert_int_equal(parse(f, NULL, "{\"text\":\"no id, no key\"}"), SHEAF_ERR_INVALID);
    assert_non_null(strstr(f->msg, "field \"id\": missing and the record has no key"));
    assert_int_equal(parse(f, "bad\001key", "{\"text\":\"t\"}"), SHEAF_ERR_INVALID);
    assert_non_null(strstr(f->msg, "record key is not a valid document id"));
}

static void test_pages(void **state)
{
    fixture *f = *state;
    assert_int_equal(parse(f, NULL, "{\"id\":\"p\",\"pages\":[\"one\",\"two\",\"three\"],\"k\":1}"),
                     SHEAF_OK);
    assert_int_equal(f->rec.text_len, strlen("one\ftwo\fthree"));
    assert_string_equal(f->rec.text, "one\ftwo\fthree");
    assert_int_equal(f->rec.has_pages, 1);
    assert_string_equal(f->rec.meta_json, "{\"k\":1}"); /* the pages are not metadata */
    assert_int_equal(parse(f, NULL, "{\"id\":\"p\",\"pages\":[\"one\",2]}"), SHEAF_ERR_INVALID);
    assert_string_equal(f->msg, "field \"pages\": page 2: expected a string, got number");
    assert_int_equal(parse(f, NULL, "{\"id\":\"p\",\"pages\":[]}"), SHEAF_ERR_INVALID);
    assert_non_null(strstr(f->msg, "an empty array"));
}

static void test_bad_records(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *value, *reason;
    } cases[] = {
        {"not json", "invalid JSON at column"},
        {"[1,2]", "expected a JSON object, got array"},
        {"{\"id\":\"a\",\"text\":5}", "field \"text\": expected a string, got number"},
        {"{\"id\":1.5,\"text\":\"t\"}", "field \"id\": expected a string or integer, got a non-integer number"},
        {"{\"id\":\"a\"}", "field \"text\": missing (and no \"pages\" either)"},
        {"{\"id\":\"a\",\"text\":\"   \"}", "empty document"},
        {"{\"id\":\"a\",\"id\":\"b\",\"text\":\"t\"}", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(parse(f, "k", cases[i].value), SHEAF_ERR_INVALID);
        if (!strstr(f->msg, cases[i].reason)) fail_msg("%s: got \"%s\"", cases[i].value, f->msg);
    }
    assert_int_equal(parse(f, "k", NULL), SHEAF_ERR_INVALID);
    assert_string_equal(f->msg, "empty record (no value)");
}

static void test_text_format(void **state)
{
    fixture *f = *state;
    f->cfg.stream_format = (char *)"text";
    assert_int_equal(parse(f, "t1", "Plain text.\fPage two."), SHEAF_OK);
    assert_string_equal(f->rec.id, "t1");
    assert_string_equal(f->rec.meta_json, "{}");
    assert_int_equal(f->rec.has_pages, 1);
    assert_int_equal(parse(f, NULL, "no key"), SHEAF_ERR_INVALID);
    assert_non_null(strstr(f->msg, "stream.format=text takes the id from the key"));
    assert_int_equal(parse(f, "t2", "bad \xff byte"), SHEAF_ERR_INVALID);
    assert_string_equal(f->msg, "byte 5: invalid UTF-8 or NUL (binary value?)");
}

static void test_chunking(void **state)
{
    fixture *f = *state;
    char big[4096];
    sheaf_chunk_vec cv;
    char errstr[256];
    size_t n = 0;
    for (int i = 0; n + 40 < sizeof(big) - 64; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "Sentence number %d is here. ", i);
    char *json = malloc(n + 64);
    snprintf(json, n + 64, "{\"id\":\"long\",\"text\":\"%s\"}", big);
    assert_int_equal(parse(f, NULL, json), SHEAF_OK);
    free(json);
    assert_int_equal(sheaf_stream_record_chunk(&f->io.chunk, &f->rec, &cv, errstr, sizeof(errstr)),
                     SHEAF_OK);
    assert_true(cv.n > 1); /* 64 tokens a chunk */
    for (size_t i = 0; i < cv.n; i++) {
        assert_int_equal(cv.v[i].idx, i);
        assert_true(cv.v[i].len > 0);
    }
    sheaf_chunk_vec_free(&cv);
}

static void test_quantile(void **state)
{
    uint64_t h[SHEAF_STREAM_LAT_BUCKETS] = {0};
    (void)state;
    assert_int_equal(sheaf_stream_quantile(h, SHEAF_STREAM_LAT_BUCKETS, 0.5), -1);
    /* 100 ms lands in bucket floor(4 log2 100) = 26, whose bound is 2^(27/4) = 108. */
    h[26] = 98;
    h[40] = 2; /* 2^(41/4) = 1218 */
    assert_int_equal(sheaf_stream_quantile(h, SHEAF_STREAM_LAT_BUCKETS, 0.5), 108);
    assert_int_equal(sheaf_stream_quantile(h, SHEAF_STREAM_LAT_BUCKETS, 0.98), 108);
    assert_int_equal(sheaf_stream_quantile(h, SHEAF_STREAM_LAT_BUCKETS, 0.99), 1218);
    h[0] = 1; /* 1 ms */
    assert_int_equal(sheaf_stream_quantile(h, SHEAF_STREAM_LAT_BUCKETS, 0.0), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_id_from_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunking, setup, teardown),
        cmocka_unit_test(test_quantile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
