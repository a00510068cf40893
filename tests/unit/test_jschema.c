/* test_jschema.c - unit tests of the JSON Schema subset: checking schemas
 * and validating values, with the exact error messages (common/llm/jschema.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/jschema.h"

/* ---- helpers ------------------------------------------------------------ */

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!j) fail_msg("bad test JSON \"%s\": %s", text, jerr.text);
    return j;
}

static void assert_check_ok(const char *schema)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *s = parse(schema);
    sheaf_err e = sheaf_jschema_check(s, err, sizeof(err));
    if (e != SHEAF_OK) fail_msg("check %s: %s", schema, err);
    json_decref(s);
}

static void assert_check_fails(const char *schema, const char *want)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *s = parse(schema);
    assert_int_equal(sheaf_jschema_check(s, err, sizeof(err)), SHEAF_ERR_INVALID);
    assert_string_equal(err, want);
    json_decref(s);
}

/* Checks the schema (must pass) then validates value. */
static sheaf_err validate(const char *schema, const char *value, char *err)
{
    json_t *s = parse(schema), *v = parse(value);
    sheaf_err e = sheaf_jschema_check(s, err, SHEAF_ERRSTR_SIZE);
    if (e != SHEAF_OK) fail_msg("check %s: %s", schema, err);
    e = sheaf_jschema_validate(s, v, err, SHEAF_ERRSTR_SIZE);
    json_decref(s);
    json_decref(v);
    return e;
}

static void assert_valid(const char *schema, const char *value)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    if (validate(schema, value, err) != SHEAF_OK)
        fail_msg("validate %s against %s: %s", value, schema, err);
}

static void assert_invalid(const char *schema, const char *value, const char *want)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    assert_int_equal(validate(schema, value, err), SHEAF_ERR_INVALID);
    assert_string_equal(err, want);
}

#define TYPE_ERR                                                                             \
    "\"type\" must be one of object, array, string, number, integer, boolean, null, or a " \
    "non-empty array of distinct ones"

/* A statement schema as it would be sent to the provider. */
static const char statement_schema[] =
    "{\"type\": \"object\", \"title\": \"Statement\", \"description\": \"one statement\","
    " \"$comment\": \"v1\", \"additionalProperties\": false,"
    " \"required\": [\"account_number\", \"transactions\"],"
    " \"properties\": {"
    "  \"account_number\": {\"type\": \"string\", \"minLength\": 4, \"maxLength\": 34},"
    "  \"kind\": {\"type\": \"string\", \"enum\": [\"checking\", \"savings\"]},"
    "  \"total\": {\"type\": [\"number\", \"null\"], \"minimum\": 0, \"default\": null},"
    "  \"transactions\": {\"type\": \"array\", \"minItems\": 1, \"maxItems\": 3,"
    "   \"items\": {\"type\": \"string\"}}}}";

/* ---- check ---------------------------------------------------------------- */

static void test_check_accepts_subset(void **state)
{
    (void)state;
    assert_check_ok(statement_schema);
    assert_check_ok("{}");
    assert_check_ok("{\"type\": [\"integer\", \"boolean\", \"null\"]}");
    assert_check_ok("{\"enum\": [\"a\", 1, 2.5, true, null]}");
    assert_check_ok("{\"minimum\": 1, \"maximum\": 1.0, \"minLength\": 0, \"maxLength\": 0}");
    assert_check_ok("{\"default\": {\"anything\": [1, 2]}, \"additionalProperties\": true}");
    assert_check_ok("{\"properties\": {}, \"required\": []}");
}

static void test_check_unknown_keyword(void **state)
{
    (void)state;
    assert_check_fails("{\"format\": \"date\"}", "schema: unsupported keyword \"format\"");
    assert_check_fails("{\"properties\": {\"total\": {\"type\": \"number\", \"format\": \"x\"}}}",
                       "schema /properties/total: unsupported keyword \"format\"");
    assert_check_fails("{\"items\": {\"items\": {\"$ref\": \"#\"}}}",
                       "schema /items/items: unsupported keyword \"$ref\"");
    assert_check_fails("{\"properties\": {\"a/b~c\": {\"oneOf\": []}}}",
                       "schema /properties/a~1b~0c: unsupported keyword \"oneOf\"");
}

static void test_check_type(void **state)
{
    (void)state;
    assert_check_fails("{\"type\": \"float\"}", "schema: " TYPE_ERR);
    assert_check_fails("{\"type\": 3}", "schema: " TYPE_ERR);
    assert_check_fails("{\"type\": []}", "schema: " TYPE_ERR);
    assert_check_fails("{\"type\": [\"string\", \"string\"]}", "schema: " TYPE_ERR);
    assert_check_fails("{\"properties\": {\"a\": {\"type\": [\"string\", 1]}}}",
                       "schema /properties/a: " TYPE_ERR);
}

static void test_check_keyword_shapes(void **state)
{
    (void)state;
    assert_check_fails("[]", "schema: must be an object");
    assert_check_fails("{\"properties\": []}",
                       "schema: \"properties\" must be an object of schemas");
    assert_check_fails("{\"properties\": {\"a\": true}}", "schema /properties/a: must be an object");
    assert_check_fails("{\"required\": \"a\"}",
                       "schema: \"required\" must be an array of property names");
    assert_check_fails("{\"required\": [\"a\", 1]}",
                       "schema: \"required\" must be an array of property names");
    assert_check_fails("{\"required\": [\"a\", \"b\", \"a\"]}",
                       "schema: \"required\" names \"a\" twice");
    assert_check_fails("{\"additionalProperties\": {\"type\": \"string\"}}",
                       "schema: \"additionalProperties\" must be true or false");
    assert_check_fails("{\"items\": [{\"type\": \"string\"}]}", "schema /items: must be an object");
    assert_check_fails("{\"enum\": []}",
                       "schema: \"enum\" must be a non-empty array of strings, numbers, booleans "
                       "or null");
    assert_check_fails("{\"enum\": [\"a\", [1]]}",
                       "schema: \"enum\" must be a non-empty array of strings, numbers, booleans "
                       "or null");
    assert_check_fails("{\"enum\": \"a\"}",
                       "schema: \"enum\" must be a non-empty array of strings, numbers, booleans "
                       "or null");
    assert_check_fails("{\"minItems\": -1}", "schema: \"minItems\" must be a non-negative integer");
    assert_check_fails("{\"maxItems\": 1.0}", "schema: \"maxItems\" must be a non-negative integer");
    assert_check_fails("{\"minLength\": \"1\"}",
                       "schema: \"minLength\" must be a non-negative integer");
    assert_check_fails("{\"maxLength\": null}",
                       "schema: \"maxLength\" must be a non-negative integer");
    assert_check_fails("{\"minimum\": \"0\"}", "schema: \"minimum\" must be a number");
    assert_check_fails("{\"maximum\": true}", "schema: \"maximum\" must be a number");
    assert_check_fails("{\"title\": 1}", "schema: \"title\" must be a string");
    assert_check_fails("{\"description\": null}", "schema: \"description\" must be a string");
    assert_check_fails("{\"$comment\": []}", "schema: \"$comment\" must be a string");
    assert_check_fails("{\"minItems\": 3, \"maxItems\": 2}",
                       "schema: \"minItems\" is greater than \"maxItems\"");
    assert_check_fails("{\"items\": {\"minLength\": 3, \"maxLength\": 2}}",
                       "schema /items: \"minLength\" is greater than \"maxLength\"");
    assert_check_fails("{\"minimum\": 2.5, \"maximum\": 2}",
                       "schema: \"minimum\" is greater than \"maximum\"");
    assert_int_equal(sheaf_jschema_check(NULL, NULL, 0), SHEAF_ERR_INVALID);
}

/* {"items": {"items": ... {}}} with levels schemas in all. */
static json_t *nested_items(int levels)
{
    json_t *s = json_object();
    for (int i = 1; i < levels; i++) {
        json_t *up = json_object();
        json_object_set_new(up, "items", s);
        s = up;
    }
    return s;
}

/* [[[...]]] with levels arrays. */
static json_t *nested_arrays(int levels)
{
    json_t *v = json_array();
    for (int i = 1; i < levels; i++) {
        json_t *up = json_array();
        json_array_append_new(up, v);
        v = up;
    }
    return v;
}

static void test_depth_limit(void **state)
{
    char err[SHEAF_ERRSTR_SIZE] = "", want[SHEAF_ERRSTR_SIZE];
    json_t *ok = nested_items(SHEAF_JSCHEMA_MAX_DEPTH);
    json_t *deep = nested_items(SHEAF_JSCHEMA_MAX_DEPTH + 1);
    json_t *huge = nested_items(10000);
    json_t *value = nested_arrays(SHEAF_JSCHEMA_MAX_DEPTH + 2);
    (void)state;

    assert_int_equal(sheaf_jschema_check(ok, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_jschema_check(deep, err, sizeof(err)), SHEAF_ERR_INVALID);
    snprintf(want, sizeof(want), "schema ");
    for (int i = 1; i <= SHEAF_JSCHEMA_MAX_DEPTH; i++) strcat(want, "/items");
    strcat(want, ": nested deeper than 32 levels");
    assert_string_equal(err, want);
    assert_int_equal(sheaf_jschema_check(huge, err, sizeof(err)), SHEAF_ERR_INVALID);

    /* Within the limit a deep value is validated; an unchecked deeper
     * schema is refused while validating, not a crash. */
    assert_int_equal(sheaf_jschema_validate(ok, value, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_jschema_validate(huge, value, err, sizeof(err)), SHEAF_ERR_INVALID);
    snprintf(want, sizeof(want), "$");
    for (int i = 1; i <= SHEAF_JSCHEMA_MAX_DEPTH; i++) strcat(want, "[0]");
    strcat(want, ": nested deeper than 32 levels");
    assert_string_equal(err, want);

    json_decref(ok);
    json_decref(deep);
    json_decref(huge);
    json_decref(value);
}

/* ---- validate ------------------------------------------------------------- */

static void test_validate_statement(void **state)
{
    (void)state;
    assert_valid(statement_schema,
                 "{\"account_number\": \"DE12\", \"kind\": \"savings\", \"total\": 12.5,"
                 " \"transactions\": [\"a\", \"b\"]}");
    assert_valid(statement_schema,
                 "{\"account_number\": \"DE12\", \"total\": null, \"transactions\": [\"a\"]}");
    assert_invalid(statement_schema, "{\"transactions\": [\"a\"]}",
                   "$: missing required property \"account_number\"");
    assert_invalid(statement_schema,
                   "{\"account_number\": \"DE12\", \"transactions\": [\"a\", \"b\", 3]}",
                   "$.transactions[2]: expected string, got number");
    assert_invalid(statement_schema,
                   "{\"account_number\": \"DE12\", \"kind\": \"x\", \"transactions\": [\"a\"]}",
                   "$.kind: \"x\" is not one of the allowed values");
    assert_invalid(statement_schema,
                   "{\"account_number\": \"DE12\", \"transactions\": [\"a\"], \"extra\": 1}",
                   "$: unexpected property \"extra\"");
    assert_invalid(statement_schema,
                   "{\"account_number\": \"DE12\", \"total\": \"12\", \"transactions\": [\"a\"]}",
                   "$.total: expected number or null, got string");
    assert_invalid(statement_schema, "[]", "$: expected object, got array");
}

static void test_validate_types(void **state)
{
    (void)state;
    assert_valid("{\"type\": \"object\"}", "{}");
    assert_valid("{\"type\": \"array\"}", "[]");
    assert_valid("{\"type\": \"string\"}", "\"\"");
    assert_valid("{\"type\": \"number\"}", "1");
    assert_valid("{\"type\": \"number\"}", "1.5");
    assert_valid("{\"type\": \"integer\"}", "-7");
    assert_valid("{\"type\": \"boolean\"}", "false");
    assert_valid("{\"type\": \"null\"}", "null");
    assert_valid("{}", "{\"anything\": [1]}");
    assert_invalid("{\"type\": \"integer\"}", "1.0", "$: expected integer, got number");
    assert_invalid("{\"type\": \"integer\"}", "\"1\"", "$: expected integer, got string");
    assert_invalid("{\"type\": \"boolean\"}", "0", "$: expected boolean, got number");
    assert_invalid("{\"type\": \"null\"}", "false", "$: expected null, got boolean");
    assert_invalid("{\"type\": \"string\"}", "null", "$: expected string, got null");
    assert_invalid("{\"type\": \"object\"}", "\"x\"", "$: expected object, got string");
    assert_invalid("{\"type\": \"array\"}", "{}", "$: expected array, got object");
    /* type arrays */
    assert_valid("{\"type\": [\"string\", \"null\"]}", "null");
    assert_valid("{\"type\": [\"string\", \"integer\"]}", "3");
    assert_invalid("{\"type\": [\"string\", \"integer\", \"null\"]}", "3.5",
                   "$: expected string or integer or null, got number");
}

static void test_validate_enum(void **state)
{
    (void)state;
    assert_valid("{\"enum\": [\"a\", 1, null]}", "1");
    assert_valid("{\"enum\": [\"a\", 1, null]}", "null");
    assert_invalid("{\"enum\": [\"a\", 1, null]}", "2", "$: 2 is not one of the allowed values");
    assert_invalid("{\"enum\": [1]}", "1.0", "$: 1.0 is not one of the allowed values");
    assert_invalid("{\"enum\": [\"a\"]}", "{\"k\": [1, 2]}",
                   "$: {\"k\":[1,2]} is not one of the allowed values");
    assert_invalid("{\"enum\": [\"a\"]}",
                   "\"0123456789012345678901234567890123456789012345678901234567890123456789\"",
                   "$: \"012345678901234567890123456789012345678901234567890123456789012... is "
                   "not one of the allowed values");
}

static void test_validate_strings(void **state)
{
    (void)state;
    /* Lengths count code points: "héé" is 3 characters, 5 bytes. */
    assert_valid("{\"minLength\": 3, \"maxLength\": 3}", "\"h\\u00e9\\u00e9\"");
    assert_invalid("{\"minLength\": 4}", "\"h\\u00e9\\u00e9\"",
                   "$: length 3 is less than minLength 4");
    assert_invalid("{\"maxLength\": 2}", "\"h\\u00e9\\u00e9\"",
                   "$: length 3 is more than maxLength 2");
    assert_valid("{\"maxLength\": 0}", "5"); /* applies to strings only */
}

static void test_validate_numbers(void **state)
{
    (void)state;
    assert_valid("{\"minimum\": 0, \"maximum\": 10}", "0");
    assert_valid("{\"minimum\": 0, \"maximum\": 10}", "10.0");
    assert_invalid("{\"minimum\": 0}", "-1", "$: -1 is less than minimum 0");
    assert_invalid("{\"minimum\": 0.5}", "0.25", "$: 0.25 is less than minimum 0.5");
    assert_invalid("{\"maximum\": 10}", "10.5", "$: 10.5 is more than maximum 10");
    assert_invalid("{\"maximum\": 9007199254740992}", "9007199254740993",
                   "$: 9007199254740993 is more than maximum 9007199254740992");
    assert_valid("{\"minimum\": 5}", "\"1\""); /* applies to numbers only */
}

static void test_validate_arrays(void **state)
{
    (void)state;
    assert_valid("{\"minItems\": 1, \"maxItems\": 2}", "[1, 2]");
    assert_invalid("{\"minItems\": 2}", "[1]", "$: 1 items, fewer than minItems 2");
    assert_invalid("{\"maxItems\": 2}", "[1, 2, 3]", "$: 3 items, more than maxItems 2");
    assert_invalid("{\"items\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}}}",
                   "[[1], [2, 3.5]]", "$[1][1]: expected integer, got number");
    /* size limits come before the elements */
    assert_invalid("{\"maxItems\": 1, \"items\": {\"type\": \"string\"}}", "[1, 2]",
                   "$: 2 items, more than maxItems 1");
}

static void test_validate_objects(void **state)
{
    const char *schema =
        "{\"properties\": {\"b\": {\"type\": \"string\"}, \"a\": {\"type\": \"string\"},"
        " \"odd key\": {\"type\": \"string\"}, \"q\\\"\": {\"type\": \"string\"},"
        " \"deep\": {\"properties\": {\"list\": {\"items\": {\"properties\": {\"x\":"
        " {\"type\": \"integer\"}}}}}}}, \"required\": [\"a\", \"b\"]}";
    (void)state;
    assert_valid(schema, "{\"a\": \"1\", \"b\": \"2\", \"other\": 3}");
    /* required in its order, before any property */
    assert_invalid(schema, "{\"c\": 1}", "$: missing required property \"a\"");
    assert_invalid(schema, "{\"a\": 1}", "$: missing required property \"b\"");
    /* properties in schema order, not the value's */
    assert_invalid(schema, "{\"a\": 1, \"b\": 2}", "$.b: expected string, got number");
    assert_invalid(schema, "{\"a\": \"\", \"b\": \"\", \"odd key\": 1}",
                   "$[\"odd key\"]: expected string, got number");
    assert_invalid(schema, "{\"a\": \"\", \"b\": \"\", \"q\\\"\": 1}",
                   "$[\"q\\\"\"]: expected string, got number");
    assert_invalid(schema,
                   "{\"a\": \"\", \"b\": \"\", \"deep\": {\"list\": [{\"x\": 1}, {\"x\": true}]}}",
                   "$.deep.list[1].x: expected integer, got boolean");
    /* additionalProperties false: names not in properties, in the value's order */
    assert_invalid("{\"additionalProperties\": false, \"properties\": {\"a\": {}}}",
                   "{\"a\": 1, \"z\": 1, \"y\": 2}", "$: unexpected property \"z\"");
    assert_invalid("{\"additionalProperties\": false}", "{\"a\": 1}",
                   "$: unexpected property \"a\"");
    assert_valid("{\"additionalProperties\": true}", "{\"a\": 1}");
}

static void test_validate_args(void **state)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    json_t *s = parse("{}");
    /* An unchecked schema with keywords of the wrong shape: ignored. */
    json_t *bad = parse("{\"type\": 3, \"minLength\": \"x\", \"items\": 1, \"enum\": 2,"
                        " \"properties\": [], \"required\": {}}");
    json_t *v = parse("[\"abc\"]");
    (void)state;
    assert_int_equal(sheaf_jschema_validate(NULL, s, err, sizeof(err)), SHEAF_ERR_INVALID);
    assert_string_equal(err, "no schema");
    assert_int_equal(sheaf_jschema_validate(s, NULL, err, sizeof(err)), SHEAF_ERR_INVALID);
    assert_string_equal(err, "$: no value");
    assert_int_equal(sheaf_jschema_validate(bad, v, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_jschema_validate(bad, s, NULL, 0), SHEAF_OK);
    json_decref(s);
    json_decref(bad);
    json_decref(v);
}

/* Metadata values as text: strings as they are (embedded NUL kept),
 * everything else compact JSON with sorted keys; object values converted
 * in place, strings untouched. */
static void test_json_text(void **state)
{
    (void)state;
    json_t *obj = json_loads("{\"s\": \"a\\u0000b\", \"i\": 2021, \"r\": 1.5, \"t\": true, "
                             "\"n\": null, \"a\": [1, \"x\"], \"o\": {\"z\": 1, \"b\": 2}}",
                             JSON_ALLOW_NUL, NULL);
    assert_non_null(obj);
    char *s = sheaf_json_text(json_object_get(obj, "s"));
    assert_non_null(s);
    assert_memory_equal(s, "a\0b", 4);
    free(s);
    static const struct { const char *key, *text; } want[] = {
        {"i", "2021"}, {"r", "1.5"}, {"t", "true"}, {"n", "null"},
        {"a", "[1,\"x\"]"}, {"o", "{\"b\":2,\"z\":1}"}};
    for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
        s = sheaf_json_text(json_object_get(obj, want[k].key));
        assert_string_equal(s, want[k].text);
        free(s);
    }
    assert_int_equal(sheaf_json_object_texts(obj), 0);
    assert_int_equal(json_object_size(obj), 7);
    for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++)
        assert_string_equal(json_string_value(json_object_get(obj, want[k].key)), want[k].text);
    assert_int_equal(json_string_length(json_object_get(obj, "s")), 3);
    json_decref(obj);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_accepts_subset),
        cmocka_unit_test(test_check_unknown_keyword),
        cmocka_unit_test(test_check_type),
        cmocka_unit_test(test_check_keyword_shapes),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_validate_statement),
        cmocka_unit_test(test_validate_types),
        cmocka_unit_test(test_validate_enum),
        cmocka_unit_test(test_validate_strings),
        cmocka_unit_test(test_validate_numbers),
        cmocka_unit_test(test_validate_arrays),
        cmocka_unit_test(test_validate_objects),
        cmocka_unit_test(test_validate_args),
        cmocka_unit_test(test_json_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
