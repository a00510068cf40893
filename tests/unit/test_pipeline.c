/* test_pipeline.c - unit tests of templates, stage validation and pipeline
 * versions (common/pipeline.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/pipeline.h"
#include "sheaf/util.h"

/* ---- helpers ------------------------------------------------------------ */

typedef struct var {
    const char *name;
    const char *value;
} var;

/* Looks name up in a NULL-terminated var array. */
static const char *lookup(const char *name, size_t n, void *ud, size_t *vlen)
{
    for (const var *v = ud; v->name; v++) {
        if (strlen(v->name) == n && memcmp(v->name, name, n) == 0) {
            *vlen = strlen(v->value);
            return v->value;
        }
    }
    return NULL;
}

static const var vars[] = {{"text", "TEXT"},     {"doc_id", "d1"},   {"job_id", "j1"},
                           {"meta.author", "Ann"}, {"empty", ""},     {"braces", "{{x}}"},
                           {NULL, NULL}};

/* Renders tmpl with vars into a fresh buffer capped at max. */
static sheaf_err render(const char *tmpl, size_t max, char **out, char *err)
{
    sheaf_buf b;
    sheaf_err e;
    sheaf_buf_init(&b, max);
    e = sheaf_prompt_render(tmpl, lookup, (void *)vars, &b, err, SHEAF_ERRSTR_SIZE);
    *out = sheaf_buf_steal(&b);
    return e;
}

static void assert_renders(const char *tmpl, const char *want)
{
    char *out, err[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err e = render(tmpl, 1 << 20, &out, err);
    if (e != SHEAF_OK) fail_msg("render \"%s\": %s", tmpl, err);
    assert_string_equal(out, want);
    free(out);
}

static void assert_render_fails(const char *tmpl, sheaf_err want, const char *in_err)
{
    char *out, err[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err e = render(tmpl, 1 << 20, &out, err);
    assert_int_equal(e, want);
    if (!strstr(err, in_err))
        fail_msg("render \"%s\": error \"%s\" lacks \"%s\"", tmpl, err, in_err);
    free(out);
}

static char s_system[] = "You are a careful summarizer.";
static char s_map[] = "Summarize part {{chunk_index}}/{{chunk_count}} of {{doc_id}}:\n{{text}}";
static char s_combine[] = "Combine the partial summaries of {{ doc_id }}:\n\n{{partials}}";
static char s_overview[] = "Overview of {{doc_count}} documents:\n{{results}}";
static char s_model[] = "sim-model";

static void cfg_fill(sheaf_config *c)
{
    memset(c, 0, sizeof(*c));
    c->prompt_system = s_system;
    c->prompt_map = s_map;
    c->prompt_combine = s_combine;
    c->prompt_overview = s_overview;
    c->llm_model = s_model;
    c->llm_temperature = 0.2;
    c->llm_max_tokens = 512;
}

static sheaf_pipeline *builtin(const sheaf_config *c)
{
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_pipeline *p = sheaf_pipeline_builtin(c, err, sizeof(err));
    if (!p) fail_msg("builtin: %s", err);
    return p;
}

#define FIELD(name) offsetof(sheaf_config, name)

/* The builtin with one prompt replaced must fail with all of the words. */
static void assert_builtin_fails(size_t field, const char *value, const char *w1,
                                 const char *w2)
{
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    cfg_fill(&c);
    memcpy((char *)&c + field, &value, sizeof(value));
    assert_null(sheaf_pipeline_builtin(&c, err, sizeof(err)));
    if (!strstr(err, w1) || !strstr(err, w2))
        fail_msg("error \"%s\" lacks \"%s\" or \"%s\"", err, w1, w2);
}

/* ---- rendering ---------------------------------------------------------- */

static void test_render_vars(void **state)
{
    (void)state;
    assert_renders("", "");
    assert_renders("no variables here", "no variables here");
    assert_renders("{{text}}", "TEXT");
    assert_renders("a {{text}} b {{doc_id}} c", "a TEXT b d1 c");
    assert_renders("{{text}}{{text}}", "TEXTTEXT");
    assert_renders("by {{meta.author}}.", "by Ann.");
    assert_renders("[{{empty}}]", "[]");
    /* A value is not expanded again. */
    assert_renders("{{braces}}", "{{x}}");
}

static void test_render_spaces(void **state)
{
    (void)state;
    assert_renders("{{ text }}", "TEXT");
    assert_renders("{{   text}}", "TEXT");
    assert_renders("{{text   }}", "TEXT");
    assert_renders("{{\ttext\n}}", "TEXT");
}

static void test_render_literals(void **state)
{
    (void)state;
    assert_renders("{{{{", "{{");
    assert_renders("{{{{text}}", "{{text}}");
    assert_renders("a {{{{ b }} c", "a {{ b }} c");
    assert_renders("{{{{{{text}}", "{{TEXT");
    assert_renders("}}", "}}");
    assert_renders("{ single } {\"json\": {\"a\": 1}}", "{ single } {\"json\": {\"a\": 1}}");
    assert_renders("{", "{");
    assert_renders("trailing {", "trailing {");
    assert_renders("{{text}}}", "TEXT}");
}

static void test_render_errors(void **state)
{
    (void)state;
    assert_render_fails("{{", SHEAF_ERR_INVALID, "unterminated");
    assert_render_fails("abc {{text", SHEAF_ERR_INVALID, "offset 4");
    assert_render_fails("{{text} }", SHEAF_ERR_INVALID, "unterminated");
    assert_render_fails("{{nope}}", SHEAF_ERR_INVALID, "\"nope\"");
    assert_render_fails("{{ nope }}", SHEAF_ERR_INVALID, "unknown variable \"nope\"");
    assert_render_fails("{{meta.other}}", SHEAF_ERR_INVALID, "meta.other");
    assert_render_fails("{{}}", SHEAF_ERR_INVALID, "empty variable name");
    assert_render_fails("{{   }}", SHEAF_ERR_INVALID, "empty variable name");
    assert_render_fails("{{{text}}", SHEAF_ERR_INVALID, "invalid variable name");
    assert_render_fails("{{a\001b}}", SHEAF_ERR_INVALID, "invalid variable name");
}

static void test_render_appends_and_rolls_back(void **state)
{
    (void)state;
    sheaf_buf b;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_buf_init(&b, 1024);
    assert_int_equal(sheaf_buf_appends(&b, "head:"), SHEAF_OK);
    assert_int_equal(sheaf_prompt_render("{{text}}", lookup, (void *)vars, &b, err, sizeof(err)),
                     SHEAF_OK);
    assert_string_equal(b.data, "head:TEXT");
    /* A failure after some output leaves the buffer as it was. */
    assert_int_equal(
        sheaf_prompt_render("x {{text}} {{bad}}", lookup, (void *)vars, &b, err, sizeof(err)),
        SHEAF_ERR_INVALID);
    assert_string_equal(b.data, "head:TEXT");
    assert_int_equal(b.len, 9);
    sheaf_buf_free(&b);
}

static void test_render_cap(void **state)
{
    (void)state;
    char *out, err[SHEAF_ERRSTR_SIZE];
    /* Exactly at the cap is fine, one byte over is not. */
    assert_int_equal(render("ab{{text}}", 6, &out, err), SHEAF_OK);
    assert_string_equal(out, "abTEXT");
    free(out);
    assert_int_equal(render("abc{{text}}", 6, &out, err), SHEAF_ERR_TOO_LARGE);
    assert_non_null(strstr(err, "6 bytes"));
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(render("{{text}}abc", 6, &out, err), SHEAF_ERR_TOO_LARGE);
    free(out);
}

/* The value length given by the lookup is used, not strlen. */
static const char *lookup_len(const char *name, size_t n, void *ud, size_t *vlen)
{
    (void)name;
    (void)n;
    (void)ud;
    *vlen = 3;
    return "abcdef";
}

static void test_render_value_len(void **state)
{
    (void)state;
    sheaf_buf b;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_buf_init(&b, 100);
    assert_int_equal(sheaf_prompt_render("<{{x}}>", lookup_len, NULL, &b, err, sizeof(err)),
                     SHEAF_OK);
    assert_string_equal(b.data, "<abc>");
    sheaf_buf_free(&b);
}

/* ---- checking ------------------------------------------------------------- */

static void test_prompt_check(void **state)
{
    (void)state;
    static const char *const allowed[] = {"job_id", "text", "meta.", NULL};
    char err[SHEAF_ERRSTR_SIZE];
    assert_int_equal(sheaf_prompt_check("{{job_id}} {{ text }} {{meta.x}} {{{{z}}", allowed, err,
                                        sizeof(err)),
                     SHEAF_OK);
    assert_int_equal(sheaf_prompt_check("{{meta.}}", allowed, err, sizeof(err)),
                     SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_prompt_check("{{metadata}}", allowed, err, sizeof(err)),
                     SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_prompt_check("{{tex}}", allowed, err, sizeof(err)), SHEAF_ERR_INVALID);
    assert_non_null(strstr(err, "\"tex\""));
    assert_int_equal(sheaf_prompt_check("{{texts}}", allowed, err, sizeof(err)),
                     SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_prompt_check("{{text", allowed, err, sizeof(err)), SHEAF_ERR_INVALID);
    assert_non_null(strstr(err, "unterminated"));
}

/* Per-stage variables, through the built-in pipeline. */
static void test_stage_variables(void **state)
{
    (void)state;
    sheaf_config c;
    sheaf_pipeline *p;
    cfg_fill(&c);
    /* Everything each stage allows is accepted. */
    c.prompt_map = (char *)"{{job_id}}{{text}}{{doc_id}}{{chunk_index}}{{chunk_count}}"
                           "{{pages}}{{meta.title}}";
    c.prompt_combine = (char *)"{{job_id}}{{doc_id}}{{chunk_count}}{{partials}}{{meta.k}}";
    c.prompt_overview = (char *)"{{job_id}}{{doc_count}}{{results}}";
    c.prompt_system = (char *)"job {{ job_id }}";
    p = builtin(&c);
    sheaf_pipeline_destroy(p);

    /* Each stage refuses the others' variables, naming stage and variable. */
    assert_builtin_fails(FIELD(prompt_map), "{{partials}}", "stage map", "\"partials\"");
    assert_builtin_fails(FIELD(prompt_map), "{{results}}", "prompt.map", "\"results\"");
    assert_builtin_fails(FIELD(prompt_combine), "{{text}}", "stage combine", "\"text\"");
    assert_builtin_fails(FIELD(prompt_combine), "{{pages}}", "prompt.combine", "\"pages\"");
    assert_builtin_fails(FIELD(prompt_overview), "{{doc_id}}", "stage overview",
                         "\"doc_id\"");
    assert_builtin_fails(FIELD(prompt_overview), "{{meta.x}}", "stage overview",
                         "\"meta.x\"");
    assert_builtin_fails(FIELD(prompt_overview), "{{partials}}", "prompt.overview",
                         "\"partials\"");
    /* The system prompt is checked too: {{text}} is fine for map, not combine. */
    assert_builtin_fails(FIELD(prompt_system), "{{text}}", "stage combine", "prompt.system");
    /* Syntax errors and empty prompts. */
    assert_builtin_fails(FIELD(prompt_map), "{{text", "prompt.map", "unterminated");
    assert_builtin_fails(FIELD(prompt_map), "", "prompt.map", "empty");
    assert_builtin_fails(FIELD(prompt_combine), NULL, "prompt.combine", "empty");
    assert_builtin_fails(FIELD(llm_model), "", "llm.model", "empty");
    /* The message lists what is allowed. */
    assert_builtin_fails(FIELD(prompt_overview), "{{x}}", "allowed:", "doc_count");
}

/* ---- built-in and version --------------------------------------------------- */

static void test_builtin(void **state)
{
    (void)state;
    sheaf_config c;
    cfg_fill(&c);
    sheaf_pipeline *p = builtin(&c);
    assert_string_equal(p->name, "summarize");
    assert_string_equal(p->map.system, s_system);
    assert_string_equal(p->map.user, s_map);
    assert_string_equal(p->combine.user, s_combine);
    assert_string_equal(p->overview.user, s_overview);
    assert_string_equal(p->overview.model, "sim-model");
    assert_true(p->combine.temperature == 0.2);
    assert_int_equal(p->overview.max_tokens, 512);
    assert_int_equal(strlen(p->version), 16);
    assert_int_equal(strspn(p->version, "0123456789abcdef"), 16);
    /* A missing system prompt is an empty one. */
    c.prompt_system = NULL;
    sheaf_pipeline *q = builtin(&c);
    assert_string_equal(q->map.system, "");
    assert_string_not_equal(p->version, q->version);
    sheaf_pipeline_destroy(q);
    sheaf_pipeline_destroy(p);
    sheaf_pipeline_destroy(NULL);
}

static void test_version_is_hash_of_json(void **state)
{
    (void)state;
    sheaf_config c;
    char hex[65];
    cfg_fill(&c);
    sheaf_pipeline *p = builtin(&c);
    char *json = sheaf_pipeline_to_json(p);
    assert_non_null(json);
    sheaf_sha256_hex(json, strlen(json), hex);
    assert_memory_equal(p->version, hex, 16);
    /* Canonical: compact, keys sorted, no version inside. */
    static const char head[] = "{\"name\":\"summarize\",\"stages\":{\"combine\":"
                               "{\"budget_tokens\":0,\"group_size\":8,\"max_tokens\":512,"
                               "\"model\":\"sim-model\",\"system\":";
    assert_true(strncmp(json, head, sizeof(head) - 1) == 0);
    assert_non_null(strstr(json, "\"temperature\":0.2,"));
    assert_null(strstr(json, "version"));
    assert_null(strstr(json, "\": "));
    assert_null(strstr(json, ", \""));
    free(json);
    sheaf_pipeline_destroy(p);
}

static void test_version_stability(void **state)
{
    (void)state;
    sheaf_config c;
    cfg_fill(&c);
    sheaf_pipeline *a = builtin(&c), *b = builtin(&c), *d;
    assert_string_equal(a->version, b->version);
    sheaf_pipeline_destroy(b);

    /* Anything that changes what is sent changes the version. */
    c.prompt_combine = (char *)"Combine {{partials}}";
    d = builtin(&c);
    assert_string_not_equal(a->version, d->version);
    sheaf_pipeline_destroy(d);
    cfg_fill(&c);
    c.prompt_overview = (char *)"Overview of {{doc_count}} documents:\n{{results}} ";
    d = builtin(&c);
    assert_string_not_equal(a->version, d->version);
    sheaf_pipeline_destroy(d);
    cfg_fill(&c);
    c.llm_temperature = 0.3;
    d = builtin(&c);
    assert_string_not_equal(a->version, d->version);
    sheaf_pipeline_destroy(d);
    cfg_fill(&c);
    c.llm_model = (char *)"other-model";
    d = builtin(&c);
    assert_string_not_equal(a->version, d->version);
    sheaf_pipeline_destroy(d);
    cfg_fill(&c);
    c.llm_max_tokens = 513;
    d = builtin(&c);
    assert_string_not_equal(a->version, d->version);
    sheaf_pipeline_destroy(d);

    /* Changing one stage by hand and re-finalizing changes it as well. */
    char err[SHEAF_ERRSTR_SIZE], before[17];
    memcpy(before, a->version, sizeof(before));
    free(a->map.user);
    a->map.user = strdup("{{text}}");
    assert_int_equal(sheaf_pipeline_finalize(a, err, sizeof(err)), SHEAF_OK);
    assert_string_not_equal(before, a->version);
    sheaf_pipeline_destroy(a);
}

/* ---- JSON ------------------------------------------------------------------- */

static void test_json_round_trip(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE];
    cfg_fill(&c);
    c.llm_temperature = 0.1 + 0.2; /* 0.30000000000000004: not short in decimal */
    c.prompt_map = (char *)"Quote: \"{{text}}\" \\ \xc3\xa9\t{{{{literal";
    sheaf_pipeline *p = builtin(&c);
    char *json = sheaf_pipeline_to_json(p);
    assert_non_null(json);
    sheaf_pipeline *q = sheaf_pipeline_from_json(json, strlen(json), err, sizeof(err));
    if (!q) fail_msg("from_json: %s", err);
    assert_string_equal(p->version, q->version);
    assert_string_equal(q->map.user, c.prompt_map);
    assert_string_equal(q->name, "summarize");
    char *json2 = sheaf_pipeline_to_json(q);
    assert_string_equal(json, json2);
    /* And once more: the version is a fixed point of the round trip. */
    sheaf_pipeline *r = sheaf_pipeline_from_json(json2, strlen(json2), err, sizeof(err));
    assert_non_null(r);
    assert_string_equal(r->version, p->version);
    sheaf_pipeline_destroy(r);
    free(json2);
    sheaf_pipeline_destroy(q);
    free(json);
    sheaf_pipeline_destroy(p);
}

static void test_json_version_key(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE], buf[4096];
    cfg_fill(&c);
    sheaf_pipeline *p = builtin(&c);
    char *json = sheaf_pipeline_to_json(p);
    size_t n = strlen(json);
    /* {"name":...,"version":"<v>"}: a matching version is accepted. */
    snprintf(buf, sizeof(buf), "%.*s,\"version\":\"%s\"}", (int)(n - 1), json, p->version);
    sheaf_pipeline *q = sheaf_pipeline_from_json(buf, strlen(buf), err, sizeof(err));
    if (!q) fail_msg("from_json: %s", err);
    assert_string_equal(q->version, p->version);
    sheaf_pipeline_destroy(q);
    /* A stale one is refused. */
    snprintf(buf, sizeof(buf), "%.*s,\"version\":\"0000000000000000\"}", (int)(n - 1), json);
    assert_null(sheaf_pipeline_from_json(buf, strlen(buf), err, sizeof(err)));
    assert_non_null(strstr(err, "version"));
    free(json);
    sheaf_pipeline_destroy(p);
}

/* from_json on text must fail with an error holding all of the words. */
static void assert_from_json_fails(const char *json, const char *w1, const char *w2)
{
    char err[SHEAF_ERRSTR_SIZE] = "";
    sheaf_pipeline *p = sheaf_pipeline_from_json(json, strlen(json), err, sizeof(err));
    if (p) {
        sheaf_pipeline_destroy(p);
        fail_msg("from_json accepted %s", json);
    }
    if (!strstr(err, w1) || (w2 && !strstr(err, w2)))
        fail_msg("error \"%s\" lacks \"%s\" or \"%s\"", err, w1, w2 ? w2 : "");
}

#define STAGE_OK                                                                \
    "{\"system\":\"\",\"user\":\"{{job_id}}\",\"model\":\"m\",\"temperature\":0," \
    "\"max_tokens\":0}"
#define PIPELINE_FMT "{\"name\":\"%s\",\"stages\":{\"map\":%s,\"combine\":%s,\"overview\":%s}}"

static void test_json_errors(void **state)
{
    (void)state;
    char buf[2048];
    /* A minimal valid document first, with integer temperature allowed. */
    snprintf(buf, sizeof(buf), PIPELINE_FMT, "n", STAGE_OK, STAGE_OK, STAGE_OK);
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_pipeline *p = sheaf_pipeline_from_json(buf, strlen(buf), err, sizeof(err));
    if (!p) fail_msg("from_json: %s", err);
    sheaf_pipeline_destroy(p);

    assert_from_json_fails("", "pipeline JSON", NULL);
    assert_from_json_fails("{\"name\":", "pipeline JSON", "line 1");
    assert_from_json_fails("[]", "not an object", NULL);
    assert_from_json_fails("{\"stages\":{}}", "key \"name\"", "missing");
    assert_from_json_fails("{\"name\":5,\"stages\":{}}", "key \"name\"", "string");
    assert_from_json_fails("{\"name\":\"n\"}", "key \"stages\"", "missing");
    assert_from_json_fails("{\"name\":\"n\",\"stages\":[]}", "key \"stages\"", "object");
    assert_from_json_fails("{\"name\":\"n\",\"extra\":1,\"stages\":{}}", "unknown key",
                           "\"extra\"");
    assert_from_json_fails("{\"name\":\"n\",\"name\":\"m\",\"stages\":{}}", "duplicate", NULL);

    snprintf(buf, sizeof(buf), "{\"name\":\"n\",\"stages\":{\"combine\":%s,\"overview\":%s}}",
             STAGE_OK, STAGE_OK);
    assert_from_json_fails(buf, "\"map\"", "missing");
    snprintf(buf, sizeof(buf),
             "{\"name\":\"n\",\"stages\":{\"map\":%s,\"combine\":%s,\"overview\":%s,\"x\":{}}}",
             STAGE_OK, STAGE_OK, STAGE_OK);
    assert_from_json_fails(buf, "stages", "unknown stage \"x\"");
    snprintf(buf, sizeof(buf),
             "{\"name\":\"n\",\"stages\":{\"map\":%s,\"combine\":\"text\",\"overview\":%s}}",
             STAGE_OK, STAGE_OK);
    assert_from_json_fails(buf, "\"combine\"", "object");

    /* Stage-level problems name the stage and the key. */
    static const struct {
        const char *stage_json;
        const char *w1, *w2;
    } cases[] = {
        {"{\"system\":\"\",\"model\":\"m\",\"temperature\":0,\"max_tokens\":0}",
         "stage combine: key \"user\"", "missing"},
        {"{\"system\":\"\",\"user\":7,\"model\":\"m\",\"temperature\":0,\"max_tokens\":0}",
         "stage combine: key \"user\"", "string"},
        {"{\"system\":null,\"user\":\"u\",\"model\":\"m\",\"temperature\":0,\"max_tokens\":0}",
         "stage combine: key \"system\"", "string"},
        {"{\"system\":\"\",\"user\":\"u\",\"temperature\":0,\"max_tokens\":0}",
         "stage combine: key \"model\"", "missing"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"max_tokens\":0}",
         "stage combine: key \"temperature\"", "missing"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"temperature\":\"0.2\","
         "\"max_tokens\":0}",
         "stage combine: key \"temperature\"", "number"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"temperature\":0}",
         "stage combine: key \"max_tokens\"", "missing"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"temperature\":0,\"max_tokens\":1.5}",
         "stage combine: key \"max_tokens\"", "integer"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"temperature\":0,\"max_tokens\":-1}",
         "stage combine: key \"max_tokens\"", "integer"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"temperature\":0,\"max_tokens\":"
         "99999999999}",
         "stage combine: key \"max_tokens\"", "integer"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"temperature\":0,\"max_tokens\":0,"
         "\"top_p\":1}",
         "stage combine", "unknown key \"top_p\""},
        {"{\"system\":\"\",\"user\":\"{{text}}\",\"model\":\"m\",\"temperature\":0,"
         "\"max_tokens\":0}",
         "stage combine", "unknown variable \"text\""},
        {"{\"system\":\"{{results}}\",\"user\":\"u\",\"model\":\"m\",\"temperature\":0,"
         "\"max_tokens\":0}",
         "stage combine: system prompt", "\"results\""},
        {"{\"system\":\"\",\"user\":\"\",\"model\":\"m\",\"temperature\":0,\"max_tokens\":0}",
         "stage combine", "empty"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"\",\"temperature\":0,\"max_tokens\":0}",
         "stage combine: model", "empty"},
        {"{\"system\":\"\",\"user\":\"u\",\"model\":\"m\",\"temperature\":-1,\"max_tokens\":0}",
         "stage combine: temperature", ">= 0"},
        {"{\"system\":\"\",\"user\":\"u\\u0000\",\"model\":\"m\",\"temperature\":0,"
         "\"max_tokens\":0}",
         "pipeline JSON", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(buf, sizeof(buf), PIPELINE_FMT, "n", STAGE_OK, cases[i].stage_json, STAGE_OK);
        assert_from_json_fails(buf, cases[i].w1, cases[i].w2);
    }
    snprintf(buf, sizeof(buf), PIPELINE_FMT, "", STAGE_OK, STAGE_OK, STAGE_OK);
    assert_from_json_fails(buf, "name", "empty");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_vars),
        cmocka_unit_test(test_render_spaces),
        cmocka_unit_test(test_render_literals),
        cmocka_unit_test(test_render_errors),
        cmocka_unit_test(test_render_appends_and_rolls_back),
        cmocka_unit_test(test_render_cap),
        cmocka_unit_test(test_render_value_len),
        cmocka_unit_test(test_prompt_check),
        cmocka_unit_test(test_stage_variables),
        cmocka_unit_test(test_builtin),
        cmocka_unit_test(test_version_is_hash_of_json),
        cmocka_unit_test(test_version_stability),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_json_version_key),
        cmocka_unit_test(test_json_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
