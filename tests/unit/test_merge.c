/* test_merge.c - unit tests of merging per-page-batch extraction records:
 * every rule, defaults, nesting, key grouping, page provenance and the exact
 * error messages (common/pipeline/merge.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/merge.h"

/* ---- helpers ------------------------------------------------------------ */

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!j) fail_msg("bad test JSON \"%s\": %s", text, jerr.text);
    return j;
}

/* Merges batches (JSON text) with key and rules (JSON text or NULL). */
static json_t *merge(const char *key, const char *rules, const char *batches, char *err)
{
    json_t *r = rules ? parse(rules) : NULL, *b = parse(batches), *out;
    sheaf_merge_spec spec = {key, r};
    out = sheaf_merge_records(&spec, b, err, SHEAF_ERRSTR_SIZE);
    json_decref(r);
    json_decref(b);
    return out;
}

/* Asserts the merge gives want, compared as compact text so that key order
 * counts too. */
static void assert_merges(const char *key, const char *rules, const char *batches,
                          const char *want)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *out = merge(key, rules, batches, err), *w = parse(want);
    char *got_s, *want_s;
    if (!out) fail_msg("merge %s: %s", batches, err);
    got_s = json_dumps(out, JSON_COMPACT);
    want_s = json_dumps(w, JSON_COMPACT);
    if (strcmp(got_s, want_s) != 0) fail_msg("merge %s\n got: %s\nwant: %s", batches, got_s, want_s);
    free(got_s);
    free(want_s);
    json_decref(out);
    json_decref(w);
}

static void assert_merge_fails(const char *key, const char *rules, const char *batches,
                               const char *want)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *out = merge(key, rules, batches, err);
    if (out) {
        char *s = json_dumps(out, JSON_COMPACT);
        fail_msg("merge %s: expected an error, got %s", batches, s);
    }
    assert_string_equal(err, want);
}

static void assert_check(const char *spec, sheaf_err want, const char *want_err)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *s = spec ? parse(spec) : NULL;
    assert_int_equal(sheaf_merge_check(s, err, sizeof(err)), want);
    assert_string_equal(err, want_err);
    json_decref(s);
}

/* ---- spec ----------------------------------------------------------------- */

#define RULES "(expected first, last, union, sum, max or min)"

static void test_check_spec(void **state)
{
    (void)state;
    assert_check(NULL, SHEAF_OK, "");
    assert_check("{}", SHEAF_OK, "");
    assert_check("{\"key\": null}", SHEAF_OK, "");
    assert_check("{\"key\": \"account_number\", \"rules\": {\"total\": \"sum\", \"a.b\": \"max\","
                 " \"x\": \"min\", \"y\": \"first\", \"z\": \"last\", \"u\": \"union\"}}",
                 SHEAF_OK, "");
    assert_check("[]", SHEAF_ERR_INVALID, "merge: must be an object");
    assert_check("{\"key\": \"k\", \"rule\": {}}", SHEAF_ERR_INVALID,
                 "merge: unknown key \"rule\" (expected key, rules)");
    assert_check("{\"key\": \"\"}", SHEAF_ERR_INVALID, "merge.key: must be a non-empty string");
    assert_check("{\"key\": 3}", SHEAF_ERR_INVALID, "merge.key: must be a non-empty string");
    assert_check("{\"rules\": [\"sum\"]}", SHEAF_ERR_INVALID,
                 "merge.rules: must be an object of field path -> rule");
    assert_check("{\"rules\": {\"total\": \"avg\"}}", SHEAF_ERR_INVALID,
                 "merge.rules.total: unknown rule \"avg\" " RULES);
    assert_check("{\"rules\": {\"total\": 1}}", SHEAF_ERR_INVALID,
                 "merge.rules.total: rule must be a string (first, last, union, sum, max or min)");
    assert_check("{\"rules\": {\"a..b\": \"sum\"}}", SHEAF_ERR_INVALID,
                 "merge.rules.a..b: empty segment in field path");
    assert_check("{\"rules\": {\"a.\": \"sum\"}}", SHEAF_ERR_INVALID,
                 "merge.rules.a.: empty segment in field path");
}

/* ---- rules ---------------------------------------------------------------- */

static void test_empty_input(void **state)
{
    (void)state;
    assert_merges(NULL, NULL, "[]", "[]");
    assert_merges("account_number", NULL, "[]", "[]");
}

static void test_default_first(void **state)
{
    (void)state;
    /* Empty values are skipped; the first non-empty value wins. */
    assert_merges(NULL, NULL,
                  "[{\"pages\": [1, 2], \"data\": {\"name\": null, \"bank\": \"\", \"n\": 0}},"
                  " {\"pages\": [3, 4], \"data\": {\"name\": \"Ann\", \"bank\": \"B1\","
                  "   \"n\": 5, \"ok\": false}},"
                  " {\"pages\": [5, 5], \"data\": {\"name\": \"Bob\", \"ok\": true}}]",
                  "[{\"key\": null,"
                  "  \"data\": {\"name\": \"Ann\", \"bank\": \"B1\", \"n\": 0, \"ok\": false},"
                  "  \"pages\": {\"name\": [3, 4], \"bank\": [3, 4], \"n\": [1, 2], \"ok\": [3, 4]},"
                  "  \"page_range\": [1, 5]}]");
}

static void test_rule_last(void **state)
{
    (void)state;
    assert_merges(NULL, "{\"balance\": \"last\", \"tags\": \"last\"}",
                  "[{\"pages\": [1, 1], \"data\": {\"balance\": 10, \"tags\": [\"a\"]}},"
                  " {\"pages\": [2, 2], \"data\": {\"balance\": 20.5, \"tags\": [\"b\"]}},"
                  " {\"pages\": [3, 3], \"data\": {\"balance\": null, \"tags\": []}}]",
                  "[{\"key\": null, \"data\": {\"balance\": 20.5, \"tags\": [\"b\"]},"
                  "  \"pages\": {\"balance\": [2], \"tags\": [2]}, \"page_range\": [1, 3]}]");
}

static void test_rule_first_takes_whole_values(void **state)
{
    (void)state;
    /* An explicit "first" takes arrays and objects whole, of any kind. */
    assert_merges(NULL, "{\"tags\": \"first\", \"addr\": \"first\"}",
                  "[{\"pages\": [1, 1], \"data\": {\"tags\": [\"a\"], \"addr\": {\"c\": \"X\"}}},"
                  " {\"pages\": [2, 2], \"data\": {\"tags\": [\"b\"], \"addr\": {\"d\": \"Y\"}}}]",
                  "[{\"key\": null, \"data\": {\"tags\": [\"a\"], \"addr\": {\"c\": \"X\"}},"
                  "  \"pages\": {\"tags\": [1], \"addr\": [1]}, \"page_range\": [1, 2]}]");
}

static void test_union_duplicates(void **state)
{
    (void)state;
    /* Duplicates within and across batches dropped; batch 3 only repeats,
     * so it is not a source; object elements compare by value. */
    assert_merges(NULL, NULL,
                  "[{\"pages\": [1, 2], \"data\": {\"tx\": [{\"a\": 1, \"b\": 2}, \"x\", \"x\"]}},"
                  " {\"pages\": [3, 4], \"data\": {\"tx\": [\"y\", {\"b\": 2, \"a\": 1}, 1]}},"
                  " {\"pages\": [5, 6], \"data\": {\"tx\": [\"x\", \"y\"]}},"
                  " {\"pages\": [7, 7], \"data\": {\"tx\": [1.0, null]}}]",
                  "[{\"key\": null, \"data\": {\"tx\": [{\"a\": 1, \"b\": 2}, \"x\", \"y\", 1,"
                  "   1.0, null]},"
                  "  \"pages\": {\"tx\": [1, 2, 3, 4, 7]}, \"page_range\": [1, 7]}]");
    assert_merge_fails(NULL, "{\"tx\": \"union\"}",
                       "[{\"pages\": [1, 1], \"data\": {\"tx\": [1]}},"
                       " {\"pages\": [2, 3], \"data\": {\"tx\": \"a\"}}]",
                       "batch 2 (pages 2-3): field \"tx\": union needs arrays, got string");
}

static void test_rule_sum(void **state)
{
    (void)state;
    /* integers stay integers */
    assert_merges(NULL, "{\"fees\": \"sum\"}",
                  "[{\"pages\": [1, 1], \"data\": {\"fees\": 2}},"
                  " {\"pages\": [2, 2], \"data\": {\"fees\": null}},"
                  " {\"pages\": [3, 3], \"data\": {\"fees\": 0}},"
                  " {\"pages\": [4, 4], \"data\": {\"fees\": -5}}]",
                  "[{\"key\": null, \"data\": {\"fees\": -3}, \"pages\": {\"fees\": [1, 3, 4]},"
                  "  \"page_range\": [1, 4]}]");
    /* one real makes it real */
    assert_merges(NULL, "{\"fees\": \"sum\"}",
                  "[{\"pages\": [1, 1], \"data\": {\"fees\": 2}},"
                  " {\"pages\": [2, 2], \"data\": {\"fees\": 0.5}},"
                  " {\"pages\": [3, 3], \"data\": {\"fees\": \"\"}},"
                  " {\"pages\": [4, 4], \"data\": {\"fees\": 1}}]",
                  "[{\"key\": null, \"data\": {\"fees\": 3.5}, \"pages\": {\"fees\": [1, 2, 4]},"
                  "  \"page_range\": [1, 4]}]");
    /* never a number: first seen empty value, no pages */
    assert_merges(NULL, "{\"fees\": \"sum\"}",
                  "[{\"pages\": [1, 1], \"data\": {\"fees\": null}},"
                  " {\"pages\": [2, 2], \"data\": {\"fees\": \"\"}}]",
                  "[{\"key\": null, \"data\": {\"fees\": null}, \"pages\": {\"fees\": []},"
                  "  \"page_range\": [1, 2]}]");
    assert_merge_fails(NULL, "{\"fees\": \"sum\"}",
                       "[{\"pages\": [1, 2], \"data\": {\"fees\": 1}},"
                       " {\"pages\": [3, 4], \"data\": {}},"
                       " {\"pages\": [5, 6], \"data\": {\"fees\": \"12.00\"}}]",
                       "batch 3 (pages 5-6): field \"fees\": sum needs numbers, got string");
    assert_merge_fails(NULL, "{\"fees\": \"sum\"}",
                       "[{\"pages\": [1, 1], \"data\": {\"fees\": 9223372036854775807}},"
                       " {\"pages\": [2, 2], \"data\": {\"fees\": 1}}]",
                       "batch 2 (page 2): field \"fees\": integer sum overflows");
}

static void test_rule_max_min(void **state)
{
    (void)state;
    assert_merges(NULL, "{\"hi\": \"max\", \"lo\": \"min\"}",
                  "[{\"pages\": [1, 1], \"data\": {\"hi\": 3, \"lo\": 3}},"
                  " {\"pages\": [2, 2], \"data\": {\"hi\": 7.5, \"lo\": -1}},"
                  " {\"pages\": [3, 3], \"data\": {\"hi\": null, \"lo\": 2}},"
                  " {\"pages\": [4, 4], \"data\": {\"hi\": 7.5, \"lo\": -1.0}}]",
                  "[{\"key\": null, \"data\": {\"hi\": 7.5, \"lo\": -1},"
                  "  \"pages\": {\"hi\": [2, 4], \"lo\": [2, 4]}, \"page_range\": [1, 4]}]");
    assert_merge_fails(NULL, "{\"lo\": \"min\"}",
                       "[{\"pages\": [1, 1], \"data\": {\"lo\": true}}]",
                       "batch 1 (page 1): field \"lo\": min needs numbers, got boolean");
    assert_merge_fails(NULL, "{\"hi\": \"max\"}",
                       "[{\"pages\": [1, 1], \"data\": {\"hi\": [1]}}]",
                       "batch 1 (page 1): field \"hi\": max needs numbers, got array");
}

static void test_nested_objects(void **state)
{
    (void)state;
    /* Objects merge field by field; rules by dotted path; an object's pages
     * are those of its fields; the field that stays empty keeps its value. */
    assert_merges(NULL, "{\"totals.fees\": \"sum\", \"totals.inner.max\": \"max\"}",
                  "[{\"pages\": [1, 1], \"data\": {\"totals\": {\"fees\": 1, \"cur\": \"EUR\","
                  "   \"note\": null}, \"empty\": {}}},"
                  " {\"pages\": [2, 2], \"data\": {\"totals\": {}}},"
                  " {\"pages\": [3, 3], \"data\": {\"totals\": {\"fees\": 2, \"cur\": \"USD\","
                  "   \"inner\": {\"max\": 4}}}},"
                  " {\"pages\": [4, 4], \"data\": {\"totals\": {\"inner\": {\"max\": 9}}}}]",
                  "[{\"key\": null,"
                  "  \"data\": {\"totals\": {\"fees\": 3, \"cur\": \"EUR\", \"note\": null,"
                  "   \"inner\": {\"max\": 9}}, \"empty\": {}},"
                  "  \"pages\": {\"totals\": [1, 3, 4], \"empty\": []}, \"page_range\": [1, 4]}]");
    assert_merge_fails(NULL, "{\"a.b.fees\": \"sum\"}",
                       "[{\"pages\": [1, 1], \"data\": {\"a\": {\"b\": {\"fees\": 1}}}},"
                       " {\"pages\": [2, 2], \"data\": {\"a\": {\"b\": {\"fees\": [2]}}}}]",
                       "batch 2 (page 2): field \"a.b.fees\": sum needs numbers, got array");
}

static void test_kind_conflicts(void **state)
{
    (void)state;
    assert_merge_fails(NULL, NULL,
                       "[{\"pages\": [1, 1], \"data\": {\"t\": {\"a\": 1}}},"
                       " {\"pages\": [2, 3], \"data\": {\"t\": \"x\"}}]",
                       "batch 2 (pages 2-3): field \"t\": expected an object as in earlier "
                       "batches, got string");
    assert_merge_fails(NULL, NULL,
                       "[{\"pages\": [1, 1], \"data\": {\"t\": [1]}},"
                       " {\"pages\": [2, 2], \"data\": {\"t\": {\"a\": 1}}}]",
                       "batch 2 (page 2): field \"t\": expected an array as in earlier "
                       "batches, got object");
    assert_merge_fails(NULL, NULL,
                       "[{\"pages\": [1, 1], \"data\": {\"t\": \"s\"}},"
                       " {\"pages\": [2, 2], \"data\": {\"t\": [1]}}]",
                       "batch 2 (page 2): field \"t\": expected a string, number or boolean "
                       "as in earlier batches, got array");
    /* scalars of different types are one kind */
    assert_merges(NULL, NULL,
                  "[{\"pages\": [1, 1], \"data\": {\"t\": \"s\"}},"
                  " {\"pages\": [2, 2], \"data\": {\"t\": 2}}]",
                  "[{\"key\": null, \"data\": {\"t\": \"s\"}, \"pages\": {\"t\": [1]},"
                  "  \"page_range\": [1, 2]}]");
}

/* ---- records -------------------------------------------------------------- */

static void test_key_grouping(void **state)
{
    (void)state;
    /* A cover page before any key, account A over pages 2-5 (4-5 lack the
     * header), account B, then A again and a continuation of it. */
    assert_merges(
        "account_number", "{\"fees\": \"sum\"}",
        "[{\"pages\": [1, 1], \"data\": {\"bank\": \"Big Bank\"}},"
        " {\"pages\": [2, 3], \"data\": {\"account_number\": \"A\", \"tx\": [1, 2], \"fees\": 1}},"
        " {\"pages\": [4, 5], \"data\": {\"account_number\": null, \"tx\": [3]}},"
        " {\"pages\": [6, 7], \"data\": {\"account_number\": \"B\", \"tx\": [1], \"fees\": 2}},"
        " {\"pages\": [8, 8], \"data\": {\"account_number\": \"A\", \"tx\": [4], \"fees\": 3}},"
        " {\"pages\": [9, 9], \"data\": {\"tx\": [5, 4]}}]",
        "[{\"key\": null, \"data\": {\"bank\": \"Big Bank\"}, \"pages\": {\"bank\": [1]},"
        "  \"page_range\": [1, 1]},"
        " {\"key\": \"A\", \"data\": {\"account_number\": \"A\", \"tx\": [1, 2, 3, 4, 5],"
        "   \"fees\": 4},"
        "  \"pages\": {\"account_number\": [2, 3], \"tx\": [2, 3, 4, 5, 8, 9],"
        "   \"fees\": [2, 3, 8]},"
        "  \"page_range\": [2, 9]},"
        " {\"key\": \"B\", \"data\": {\"account_number\": \"B\", \"tx\": [1], \"fees\": 2},"
        "  \"pages\": {\"account_number\": [6, 7], \"tx\": [6, 7], \"fees\": [6, 7]},"
        "  \"page_range\": [6, 7]}]");
}

static void test_key_values(void **state)
{
    (void)state;
    /* Keys compare with json_equal: 12 and "12" are different records. */
    assert_merges("id", NULL,
                  "[{\"pages\": [1, 1], \"data\": {\"id\": 12, \"v\": \"a\"}},"
                  " {\"pages\": [2, 2], \"data\": {\"id\": \"12\", \"v\": \"b\"}},"
                  " {\"pages\": [3, 3], \"data\": {\"id\": 12, \"w\": \"c\"}}]",
                  "[{\"key\": 12, \"data\": {\"id\": 12, \"v\": \"a\", \"w\": \"c\"},"
                  "  \"pages\": {\"id\": [1], \"v\": [1], \"w\": [3]}, \"page_range\": [1, 3]},"
                  " {\"key\": \"12\", \"data\": {\"id\": \"12\", \"v\": \"b\"},"
                  "  \"pages\": {\"id\": [2], \"v\": [2]}, \"page_range\": [2, 2]}]");
    /* no key value anywhere: one keyless record */
    assert_merges("id", NULL,
                  "[{\"pages\": [1, 1], \"data\": {\"v\": \"a\"}},"
                  " {\"pages\": [2, 2], \"data\": {\"id\": \"\"}}]",
                  "[{\"key\": null, \"data\": {\"v\": \"a\", \"id\": \"\"},"
                  "  \"pages\": {\"v\": [1], \"id\": []}, \"page_range\": [1, 2]}]");
}

static void test_no_key_one_record(void **state)
{
    (void)state;
    /* Without a key, batches with different ids share one record; batches
     * may overlap and come with extra keys, which are ignored. */
    assert_merges(NULL, NULL,
                  "[{\"pages\": [1, 3], \"data\": {\"id\": \"A\"}, \"chunk\": 1},"
                  " {\"pages\": [3, 4], \"data\": {\"id\": \"B\", \"x\": [1]}}]",
                  "[{\"key\": null, \"data\": {\"id\": \"A\", \"x\": [1]},"
                  "  \"pages\": {\"id\": [1, 2, 3], \"x\": [3, 4]}, \"page_range\": [1, 4]}]");
}

static void test_batch_errors(void **state)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    sheaf_merge_spec empty_key = {"", NULL};
    json_t *none = json_array();
    (void)state;
    assert_merge_fails(NULL, NULL, "{}", "batches: must be an array");
    assert_merge_fails(NULL, NULL, "[{\"pages\": [1, 1], \"data\": {}}, 3]",
                       "batch 2: must be an object with \"pages\" and \"data\"");
    assert_merge_fails(NULL, NULL, "[{\"data\": {}}]",
                       "batch 1: \"pages\" must be [first, last] with 1 <= first <= last <= "
                       "1000000");
    assert_merge_fails(NULL, NULL, "[{\"pages\": [2, 1], \"data\": {}}]",
                       "batch 1: \"pages\" must be [first, last] with 1 <= first <= last <= "
                       "1000000");
    assert_merge_fails(NULL, NULL, "[{\"pages\": [0, 1], \"data\": {}}]",
                       "batch 1: \"pages\" must be [first, last] with 1 <= first <= last <= "
                       "1000000");
    assert_merge_fails(NULL, NULL, "[{\"pages\": [1, 2, 3], \"data\": {}}]",
                       "batch 1: \"pages\" must be [first, last] with 1 <= first <= last <= "
                       "1000000");
    assert_merge_fails(NULL, NULL, "[{\"pages\": [1.0, 2], \"data\": {}}]",
                       "batch 1: \"pages\" must be [first, last] with 1 <= first <= last <= "
                       "1000000");
    assert_merge_fails(NULL, NULL, "[{\"pages\": [1, 1], \"data\": {}},"
                       " {\"pages\": [5, 6], \"data\": [1]}]",
                       "batch 2 (pages 5-6): \"data\" must be an object");
    assert_merge_fails(NULL, NULL, "[{\"pages\": [5, 6]}]",
                       "batch 1 (pages 5-6): \"data\" must be an object");
    /* bad rules are caught here too */
    assert_merge_fails(NULL, "{\"total\": \"avg\"}", "[]",
                       "merge.rules.total: unknown rule \"avg\" " RULES);
    assert_null(sheaf_merge_records(&empty_key, none, err, sizeof(err)));
    assert_string_equal(err, "merge.key: must be a non-empty string");
    /* NULL spec: one record, default rules */
    json_t *out = sheaf_merge_records(NULL, none, err, sizeof(err));
    assert_non_null(out);
    assert_int_equal(json_array_size(out), 0);
    json_decref(out);
    json_decref(none);
}

static void test_depth_limit(void **state)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *data = json_object(), *batches;
    (void)state;
    for (int i = 0; i < 100; i++) {
        json_t *up = json_object();
        json_object_set_new(up, "a", data);
        data = up;
    }
    batches = json_pack("[{s:[ii], s:o}]", "pages", 1, 1, "data", data);
    assert_null(sheaf_merge_records(NULL, batches, err, sizeof(err)));
    assert_non_null(strstr(err, "batch 1: field \"a.a.a."));
    assert_non_null(strstr(err, "\": objects nested deeper than 64 levels"));
    json_decref(batches);
}

static void test_output_is_independent(void **state)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *b = parse("[{\"pages\": [1, 1], \"data\": {\"s\": \"x\", \"tx\": [{\"a\": 1}]}}]");
    json_t *out = sheaf_merge_records(NULL, b, err, sizeof(err));
    (void)state;
    assert_non_null(out);
    json_decref(b); /* the records share nothing with the batches */
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(json_array_get(out, 0), "data"), "s")),
        "x");
    json_decref(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_spec),
        cmocka_unit_test(test_empty_input),
        cmocka_unit_test(test_default_first),
        cmocka_unit_test(test_rule_last),
        cmocka_unit_test(test_rule_first_takes_whole_values),
        cmocka_unit_test(test_union_duplicates),
        cmocka_unit_test(test_rule_sum),
        cmocka_unit_test(test_rule_max_min),
        cmocka_unit_test(test_nested_objects),
        cmocka_unit_test(test_kind_conflicts),
        cmocka_unit_test(test_key_grouping),
        cmocka_unit_test(test_key_values),
        cmocka_unit_test(test_no_key_one_record),
        cmocka_unit_test(test_batch_errors),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_output_is_independent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
