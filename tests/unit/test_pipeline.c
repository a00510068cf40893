/* test_pipeline.c - unit tests of templates, stage validation and pipeline
 * versions (common/pipeline.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sheaf/pipeline.h"
#include "sheaf/plan.h"
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
                               "{\"budget_tokens\":0,\"context_tokens\":8192,\"group_size\":8,"
                               "\"max_tokens\":512,\"model\":\"sim-model\",\"system\":";
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

/* ---- pipeline files --------------------------------------------------------- */

/* examples/pipelines/<name>, found from this file's path (CMake compiles
 * sources by absolute path). */
static void example_path(const char *name, char *out, size_t outlen)
{
    const char *file = __FILE__, *slash = strrchr(file, '/');
    snprintf(out, outlen, "%.*s/../../examples/pipelines/%s", slash ? (int)(slash - file) : 1,
             slash ? file : ".", name);
}

static const char *const example_names[] = {"map-reduce.json",       "postings-classify.json",
                                            "postings-hierarchy.json", "progressive.json",
                                            "refine.json",           "statements.json", NULL};

/* Writes text to a fresh "<tmp>/sheaf-pipeline-XXXXXX.json"; its path in path. */
static void write_temp(const char *text, size_t len, char *path, size_t pathlen)
{
    const char *dir = getenv("TMPDIR");
    int fd;
    FILE *f;
    snprintf(path, pathlen, "%s/sheaf-pipeline-XXXXXX.json", dir && *dir ? dir : "/tmp");
    fd = mkstemps(path, 5);
    if (fd < 0) fail_msg("mkstemps %s: %s", path, strerror(errno));
    f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* sheaf_pipeline_load of text written to a temporary file (removed again);
 * the file's path in path. */
static sheaf_pipeline *load_text_at(const char *text, const sheaf_config *c, char *path,
                                    size_t pathlen, char *err, size_t errlen)
{
    sheaf_pipeline *p;
    write_temp(text, strlen(text), path, pathlen);
    p = sheaf_pipeline_load(path, c, err, errlen);
    unlink(path);
    return p;
}

static sheaf_pipeline *load_text(const char *text)
{
    sheaf_config c;
    char path[512], err[SHEAF_ERRSTR_SIZE] = "";
    cfg_fill(&c);
    sheaf_pipeline *p = load_text_at(text, &c, path, sizeof(path), err, sizeof(err));
    if (!p) fail_msg("load %s: %s", text, err);
    return p;
}

/* Loading text from a file must fail with "pipeline <path>: " and the words. */
static void assert_load_fails(const char *text, const char *w1, const char *w2)
{
    sheaf_config c;
    char path[512], prefix[600], err[SHEAF_ERRSTR_SIZE] = "";
    cfg_fill(&c);
    sheaf_pipeline *p = load_text_at(text, &c, path, sizeof(path), err, sizeof(err));
    if (p) {
        sheaf_pipeline_destroy(p);
        fail_msg("load accepted %s", text);
    }
    snprintf(prefix, sizeof(prefix), "pipeline %s: ", path);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", err, prefix);
    if (!strstr(err, w1) || (w2 && !strstr(err, w2)))
        fail_msg("error \"%s\" lacks \"%s\" or \"%s\" (input %s)", err, w1, w2 ? w2 : "", text);
}

static sheaf_pipeline *load_example(const char *name, const sheaf_config *c)
{
    char path[1024], err[SHEAF_ERRSTR_SIZE] = "";
    example_path(name, path, sizeof(path));
    sheaf_pipeline *p = sheaf_pipeline_load(path, c, err, sizeof(err));
    if (!p) fail_msg("load %s: %s", path, err);
    return p;
}

static void assert_version_format(const sheaf_pipeline *p)
{
    assert_int_equal(strlen(p->version), 16);
    assert_int_equal(strspn(p->version, "0123456789abcdef"), 16);
}

/* Every present stage took the model and temperature of the config (no
 * example sets them). */
static void assert_stage_defaults(const sheaf_pipeline *p, const char *model, double temp)
{
    const sheaf_stage *st[] = {&p->map,    &p->combine, &p->critique,
                               &p->refine, &p->group,   &p->overview};
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        if (!st[i]->present) continue;
        assert_string_equal(st[i]->model, model);
        assert_true(st[i]->temperature == temp);
        assert_non_null(st[i]->system);
        assert_non_null(st[i]->user);
    }
}

/* Which stages are present, as a string of initials: "mcCrgo". */
static void assert_stages(const sheaf_pipeline *p, const char *want)
{
    char got[8];
    size_t n = 0;
    if (p->map.present) got[n++] = 'm';
    if (p->combine.present) got[n++] = 'c';
    if (p->critique.present) got[n++] = 'C';
    if (p->refine.present) got[n++] = 'r';
    if (p->group.present) got[n++] = 'g';
    if (p->overview.present) got[n++] = 'o';
    got[n] = '\0';
    assert_string_equal(got, want);
}

static void test_load_examples(void **state)
{
    (void)state;
    sheaf_config c;
    sheaf_pipeline *p;
    cfg_fill(&c);

    for (const char *const *n = example_names; *n; n++) {
        p = load_example(*n, &c);
        assert_version_format(p);
        assert_stage_defaults(p, "sim-model", 0.2);
        sheaf_pipeline_destroy(p);
    }

    p = load_example("map-reduce.json", &c);
    assert_string_equal(p->name, "reports-map-reduce");
    assert_stages(p, "mco");
    assert_null(p->schema);
    assert_null(p->merge);
    assert_int_equal(p->refine_rounds, 0);
    assert_int_equal(p->n_group_by, 0);
    assert_int_equal(p->map.max_tokens, 300);
    assert_int_equal(p->combine.max_tokens, 400);
    assert_int_equal(p->overview.max_tokens, 500);
    assert_int_equal(p->combine.budget_tokens, 0);
    assert_int_equal(p->combine.group_size, SHEAF_GROUP_SIZE_DEFAULT);
    assert_int_equal(p->pages_per_batch + p->chunk_max_tokens + p->chunk_overlap_tokens, 0);
    sheaf_pipeline_destroy(p);

    p = load_example("postings-classify.json", &c);
    assert_string_equal(p->name, "postings-classify");
    assert_stages(p, "m"); /* batch items */
    assert_non_null(p->schema);
    assert_non_null(json_object_get(json_object_get(p->schema, "properties"), "role"));
    assert_int_equal(p->json_retries, 2);
    assert_null(p->merge);
    assert_int_equal(p->n_group_by, 0);
    sheaf_pipeline_destroy(p);

    p = load_example("postings-hierarchy.json", &c);
    assert_string_equal(p->name, "postings-by-sector-and-role");
    assert_stages(p, "mgo");
    assert_int_equal(p->n_group_by, 2);
    assert_int_equal(p->n_meta_levels, 1);
    assert_string_equal(p->group_by[0], "meta.sector");
    assert_string_equal(p->group_by[1], "result.role");
    assert_non_null(p->schema);
    assert_int_equal(p->json_retries, 2); /* the default with a schema */
    assert_int_equal(p->group.max_tokens, 300);
    assert_int_equal(p->group.group_size, SHEAF_GROUP_SIZE_DEFAULT);
    assert_int_equal(p->overview.max_tokens, 400);
    assert_null(p->merge);
    sheaf_pipeline_destroy(p);

    p = load_example("progressive.json", &c);
    assert_string_equal(p->name, "long-document-progressive");
    assert_stages(p, "mc");
    assert_int_equal(p->chunk_max_tokens, 300);
    assert_int_equal(p->pages_per_batch, 0);
    assert_int_equal(p->chunk_overlap_tokens, 0);
    assert_int_equal(p->combine.budget_tokens, 900);
    assert_int_equal(p->combine.group_size, 4);
    assert_int_equal(p->combine.max_tokens, 200);
    sheaf_pipeline_destroy(p);

    p = load_example("refine.json", &c);
    assert_string_equal(p->name, "reports-refined");
    assert_stages(p, "mcCr");
    assert_int_equal(p->refine_rounds, 3);
    assert_string_equal(p->refine_stop, "DONE");
    assert_string_equal(p->map.system, ""); /* not given */
    assert_string_equal(p->combine.system, "");
    assert_int_equal(p->critique.max_tokens, 150);
    assert_int_equal(p->refine.max_tokens, 400);
    sheaf_pipeline_destroy(p);

    p = load_example("statements.json", &c);
    assert_string_equal(p->name, "statements-extract");
    assert_stages(p, "m");
    assert_non_null(p->schema);
    assert_non_null(p->merge);
    assert_string_equal(json_string_value(json_object_get(p->merge, "key")), "account_number");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(p->merge, "rules"), "fees")), "sum");
    assert_int_equal(p->pages_per_batch, 3);
    assert_int_equal(p->chunk_max_tokens, 0);
    assert_int_equal(p->json_retries, 2);
    assert_int_equal(p->map.max_tokens, 800);
    sheaf_pipeline_destroy(p);

    /* The defaults come from the config: another llm.* gives other stages
     * and so another version. */
    sheaf_pipeline *a = load_example("map-reduce.json", &c);
    c.llm_model = (char *)"other-model";
    c.llm_temperature = 0.7;
    p = load_example("map-reduce.json", &c);
    assert_stage_defaults(p, "other-model", 0.7);
    assert_string_not_equal(a->version, p->version);
    sheaf_pipeline_destroy(p);
    sheaf_pipeline_destroy(a);
}

static void test_load_defaults(void **state)
{
    (void)state;
    /* A stage with only "user": system "", the rest from llm.*. */
    sheaf_pipeline *p = load_text("{\"name\":\"d\",\"stages\":{\"map\":{\"user\":\"{{text}}\"}}}");
    assert_stages(p, "m");
    assert_string_equal(p->map.system, "");
    assert_string_equal(p->map.model, "sim-model");
    assert_true(p->map.temperature == 0.2);
    assert_int_equal(p->map.max_tokens, 512);
    assert_null(p->schema);
    assert_int_equal(p->json_retries, 0);
    /* Spelling the defaults out gives the same pipeline and version, as do
     * other whitespace and key order. */
    sheaf_pipeline *q = load_text(
        "{ \"stages\" : { \"map\" : { \"max_tokens\" : 512, \"temperature\" : 0.2,\n"
        "  \"model\" : \"sim-model\", \"system\" : \"\", \"user\" : \"{{text}}\" } },\n"
        "  \"name\" : \"d\" }\n");
    assert_string_equal(p->version, q->version);
    sheaf_pipeline_destroy(q);
    /* Given values win over the config; an integer temperature is fine. */
    q = load_text("{\"name\":\"d\",\"stages\":{\"map\":{\"user\":\"{{text}}\",\"model\":\"m2\","
                  "\"temperature\":1,\"max_tokens\":0,\"system\":\"S\"}}}");
    assert_string_equal(q->map.model, "m2");
    assert_true(q->map.temperature == 1.0);
    assert_int_equal(q->map.max_tokens, 0);
    assert_string_equal(q->map.system, "S");
    assert_string_not_equal(p->version, q->version);
    sheaf_pipeline_destroy(q);
    /* Refinement defaults in a user's file: 2 rounds, "DONE". */
    q = load_text("{\"name\":\"r\",\"stages\":{\"map\":{\"user\":\"{{text}}\"},"
                  "\"critique\":{\"user\":\"{{draft}}\"},\"refine\":{\"user\":\"{{critique}}\"}},"
                  "\"refinement\":{}}");
    assert_int_equal(q->refine_rounds, 2);
    assert_string_equal(q->refine_stop, "DONE");
    sheaf_pipeline_destroy(q);
    sheaf_pipeline_destroy(p);
}

static void test_load_builtins_and_errors(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE], want[SHEAF_ERRSTR_SIZE], path[1024];
    sheaf_pipeline *p, *b;
    cfg_fill(&c);

    b = builtin(&c);
    p = sheaf_pipeline_load("summarize", &c, err, sizeof(err));
    if (!p) fail_msg("summarize: %s", err);
    assert_string_equal(p->name, "summarize");
    assert_stages(p, "mco");
    assert_string_equal(p->version, b->version);
    sheaf_pipeline_destroy(p);
    /* No spec at all is "summarize". */
    p = sheaf_pipeline_load("", &c, err, sizeof(err));
    assert_non_null(p);
    assert_string_equal(p->version, b->version);
    sheaf_pipeline_destroy(p);
    p = sheaf_pipeline_load(NULL, &c, err, sizeof(err));
    assert_non_null(p);
    assert_string_equal(p->version, b->version);
    sheaf_pipeline_destroy(p);

    p = sheaf_pipeline_load("summarize-refine", &c, err, sizeof(err));
    if (!p) fail_msg("summarize-refine: %s", err);
    assert_string_equal(p->name, "summarize-refine");
    assert_stages(p, "mcCro");
    assert_int_equal(p->refine_rounds, 3);
    assert_string_equal(p->refine_stop, "DONE");
    assert_string_equal(p->critique.model, "sim-model");
    assert_int_equal(p->refine.max_tokens, 512);
    assert_version_format(p);
    assert_string_not_equal(p->version, b->version);
    sheaf_pipeline_destroy(p);

    p = sheaf_pipeline_load("batch", &c, err, sizeof(err));
    if (!p) fail_msg("batch: %s", err);
    assert_string_equal(p->name, "batch");
    assert_stages(p, "m");
    assert_string_equal(p->map.user, s_map);
    assert_version_format(p);
    assert_string_not_equal(p->version, b->version);
    sheaf_pipeline_destroy(p);
    /* batch needs neither prompt.combine nor prompt.overview ... */
    c.prompt_combine = NULL;
    c.prompt_overview = (char *)"";
    p = sheaf_pipeline_load("batch", &c, err, sizeof(err));
    if (!p) fail_msg("batch without combine: %s", err);
    sheaf_pipeline_destroy(p);
    /* ... while summarize does. */
    assert_null(sheaf_pipeline_load("summarize", &c, err, sizeof(err)));
    assert_string_equal(err, "prompt.combine is empty");
    cfg_fill(&c);
    sheaf_pipeline_destroy(b);

    /* A name that is neither a built-in nor a path. */
    assert_null(sheaf_pipeline_load("summarise", &c, err, sizeof(err)));
    assert_string_equal(err, "pipeline \"summarise\": not a built-in (summarize, "
                             "summarize-refine, batch) nor a file path");
    /* A missing file is named with the system's reason. */
    assert_null(sheaf_pipeline_load("/nonexistent-sheaf-dir/p.json", &c, err, sizeof(err)));
    snprintf(want, sizeof(want), "pipeline /nonexistent-sheaf-dir/p.json: %s", strerror(ENOENT));
    assert_string_equal(err, want);
    assert_null(sheaf_pipeline_load("missing.json", &c, err, sizeof(err)));
    assert_non_null(strstr(err, "pipeline missing.json: "));
    /* A directory cannot be read as a file. */
    example_path("", path, sizeof(path));
    assert_null(sheaf_pipeline_load(path, &c, err, sizeof(err)));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "read error"));
    /* JSON syntax errors give the file, line and column. */
    assert_load_fails("{\"name\":\"x\",\n\"stages\": {,}}", "line 2 column", NULL);
    assert_load_fails("", "line 1", NULL);
    assert_load_fails("{\"name\":\"x\",\"name\":\"y\",\"stages\":{}}", "line 1", "duplicate");
    /* A file over 4 MiB is refused before parsing. */
    {
        size_t big = ((size_t)4 << 20) + 1;
        char *text = malloc(big);
        assert_non_null(text);
        memset(text, ' ', big);
        write_temp(text, big, path, sizeof(path));
        free(text);
        p = sheaf_pipeline_load(path, &c, err, sizeof(err));
        unlink(path);
        assert_null(p);
        assert_non_null(strstr(err, path));
        assert_non_null(strstr(err, "larger than 4 MiB"));
    }
    /* Errors inside a file name the file, then the stage and key. */
    assert_load_fails("{\"name\":\"x\",\"stages\":{\"map\":{\"system\":\"s\"}}}",
                      "stage map: key \"user\" is missing", NULL);
    assert_load_fails("{\"name\":\"x\",\"stages\":{\"map\":{\"user\":\"{{text}}\"}},"
                      "\"description\":5}",
                      "pipeline: key \"description\" must be a string", NULL);
    assert_load_fails("{\"name\":\"x\",\"stages\":{\"map\":{\"user\":\"{{text}}\"}},"
                      "\"version\":\"0123456789abcdef\"}",
                      "key \"version\" does not match the content", NULL);
}

/* ---- shape validation ---------------------------------------------------------- */

#define MAP_T "\"map\":{\"user\":\"{{text}}\"}"
#define SCHEMA_RS                                                                          \
    "{\"type\":\"object\",\"properties\":{\"role\":{\"type\":\"string\"},\"summary\":{\"type\":" \
    "\"string\"}}}"
#define MAP_S "\"map\":{\"user\":\"{{text}}\",\"json_schema\":" SCHEMA_RS "}"
#define COMBINE_T "\"combine\":{\"user\":\"{{partials}}\"}"
#define CRITIQUE_T "\"critique\":{\"user\":\"{{draft}}\"}"
#define REFINE_T "\"refine\":{\"user\":\"{{draft}} {{critique}}\"}"
#define GROUP_T "\"group\":{\"user\":\"{{results}}\"}"
#define OVERVIEW_T "\"overview\":{\"user\":\"{{results}}\"}"
#define DOC(stages, rest) "{\"name\":\"s\",\"stages\":{" stages "}" rest "}"

static void test_shape_merge(void **state)
{
    (void)state;
    sheaf_pipeline *p = load_text(DOC(MAP_S, ",\"merge\":{\"key\":\"role\"}"));
    assert_non_null(p->merge);
    sheaf_pipeline_destroy(p);
    /* An empty merge object merges everything of a document into one record. */
    p = load_text(DOC(MAP_S, ",\"merge\":{}"));
    sheaf_pipeline_destroy(p);

    assert_load_fails(DOC(MAP_T, ",\"merge\":{\"key\":\"role\"}"),
                      "merge: needs stages.map.json_schema", NULL);
    assert_load_fails(DOC(MAP_S, ",\"merge\":{\"key\":\"nope\"}"),
                      "merge.key: \"nope\" is not a property of stages.map.json_schema", NULL);
    assert_load_fails(DOC(MAP_S "," COMBINE_T, ",\"merge\":{}"),
                      "merge: a pipeline merges records or combines text, not both", NULL);
    assert_load_fails(DOC(MAP_S "," CRITIQUE_T "," REFINE_T, ",\"refinement\":{},\"merge\":{}"),
                      "merge: cannot be used with refinement", NULL);
    assert_load_fails(DOC(MAP_S, ",\"merge\":[]"), "merge: must be an object", NULL);
    assert_load_fails(DOC(MAP_S, ",\"merge\":{\"key\":\"\"}"),
                      "merge.key: must be a non-empty string", NULL);
    assert_load_fails(DOC(MAP_S, ",\"merge\":{\"keys\":\"role\"}"), "merge: unknown key \"keys\"",
                      NULL);
    assert_load_fails(DOC(MAP_S, ",\"merge\":{\"rules\":{\"fees\":\"avg\"}}"),
                      "merge.rules.fees: unknown rule \"avg\"", NULL);
}

static void test_shape_refinement(void **state)
{
    (void)state;
    static const char *const together =
        "refinement: needs stages.critique, stages.refine and refinement.max_rounds together";
    sheaf_pipeline *p =
        load_text(DOC(MAP_T "," CRITIQUE_T "," REFINE_T,
                      ",\"refinement\":{\"max_rounds\":20,\"stop_when\":\"OK\"}"));
    assert_int_equal(p->refine_rounds, 20);
    assert_string_equal(p->refine_stop, "OK");
    sheaf_pipeline_destroy(p);

    assert_load_fails(DOC(MAP_T "," CRITIQUE_T, ""), together, NULL);
    assert_load_fails(DOC(MAP_T "," REFINE_T, ""), together, NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T, ""), together, NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T, ",\"refinement\":{}"), together, NULL);
    assert_load_fails(DOC(MAP_T, ",\"refinement\":{\"max_rounds\":2}"), together, NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T, ",\"refinement\":{\"max_rounds\":0}"),
                      "refinement: key \"max_rounds\" must be an integer in 1..20", NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T,
                          ",\"refinement\":{\"max_rounds\":21}"),
                      "refinement: key \"max_rounds\" must be an integer in 1..20", NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T,
                          ",\"refinement\":{\"max_rounds\":\"3\"}"),
                      "refinement: key \"max_rounds\" must be an integer", NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T,
                          ",\"refinement\":{\"stop_when\":\"\"}"),
                      "refinement: stop_when must not be empty", NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T,
                          ",\"refinement\":{\"stop_when\":1}"),
                      "refinement: key \"stop_when\" must be a string", NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T,
                          ",\"refinement\":{\"rounds\":2}"),
                      "refinement: unknown key \"rounds\"", NULL);
    assert_load_fails(DOC(MAP_T "," CRITIQUE_T "," REFINE_T, ",\"refinement\":3"),
                      "refinement: must be an object", NULL);
}

static void test_shape_grouping(void **state)
{
    (void)state;
    static const char *const together = "grouping: stages.group and grouping.by go together";
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":[\"meta.a\",\"meta.a\"]}"),
                      "grouping.by[1]: \"meta.a\" is already level 0", NULL);
    sheaf_pipeline *p = load_text(DOC(MAP_S "," GROUP_T "," OVERVIEW_T,
                                      ",\"grouping\":{\"by\":[\"meta.a\",\"meta.b\",\"result.role\","
                                      "\"result.summary\"]}"));
    assert_int_equal(p->n_group_by, 4);
    assert_int_equal(p->n_meta_levels, 2);
    assert_string_equal(p->group_by[3], "result.summary");
    sheaf_pipeline_destroy(p);
    /* Metadata levels need no schema; eight levels are the most. */
    p = load_text(DOC(MAP_T "," GROUP_T,
                      ",\"grouping\":{\"by\":[\"meta.1\",\"meta.2\",\"meta.3\",\"meta.4\","
                      "\"meta.5\",\"meta.6\",\"meta.7\",\"meta.8\"]}"));
    assert_int_equal(p->n_group_by, SHEAF_MAX_GROUP_LEVELS);
    assert_int_equal(p->n_meta_levels, SHEAF_MAX_GROUP_LEVELS);
    sheaf_pipeline_destroy(p);

    assert_load_fails(DOC(MAP_T "," GROUP_T "," OVERVIEW_T, ""), together, NULL);
    assert_load_fails(DOC(MAP_T "," OVERVIEW_T, ",\"grouping\":{\"by\":[\"meta.a\"]}"), together,
                      NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":[\"result.role\"]}"),
                      "grouping.by[0]: \"result.role\" needs stages.map.json_schema with "
                      "property \"role\"",
                      NULL);
    assert_load_fails(DOC(MAP_S "," GROUP_T, ",\"grouping\":{\"by\":[\"meta.a\",\"result.x\"]}"),
                      "grouping.by[1]: \"result.x\" needs stages.map.json_schema with property "
                      "\"x\"",
                      NULL);
    assert_load_fails(DOC(MAP_S "," GROUP_T,
                          ",\"grouping\":{\"by\":[\"result.role\",\"meta.sector\"]}"),
                      "grouping.by[1]: \"meta.sector\" must come before every \"result.\" level",
                      NULL);
    assert_load_fails(DOC(MAP_S "," GROUP_T,
                          ",\"grouping\":{\"by\":[\"meta.a\",\"result.role\",\"meta.b\"]}"),
                      "grouping.by[2]: \"meta.b\" must come before", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":[\"foo\"]}"),
                      "grouping.by[0]: \"foo\" must be \"meta.<key>\" or \"result.<key>\"", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":[\"meta.a\",\"meta.\"]}"),
                      "grouping.by[1]: \"meta.\" must be \"meta.<key>\" or \"result.<key>\"",
                      NULL);
    assert_load_fails(DOC(MAP_S "," GROUP_T, ",\"grouping\":{\"by\":[\"result.\"]}"),
                      "grouping.by[0]: \"result.\" must be", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":[\"meta.a\",7]}"),
                      "grouping.by[1]: must be a string", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":[]}"),
                      "grouping: key \"by\" must be an array of 1..8 field names", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":\"meta.a\"}"),
                      "grouping: key \"by\" must be an array of 1..8 field names", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T,
                          ",\"grouping\":{\"by\":[\"meta.1\",\"meta.2\",\"meta.3\",\"meta.4\","
                          "\"meta.5\",\"meta.6\",\"meta.7\",\"meta.8\",\"meta.9\"]}"),
                      "grouping: key \"by\" must be an array of 1..8 field names", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":{\"by\":[\"meta.a\"],\"order\":1}"),
                      "grouping: unknown key \"order\"", NULL);
    assert_load_fails(DOC(MAP_T "," GROUP_T, ",\"grouping\":[\"meta.a\"]"),
                      "grouping: must be an object", NULL);
}

static void test_shape_schema(void **state)
{
    (void)state;
    static const char *const not_object =
        "stage map: json_schema must be an object schema ({\"type\": \"object\", ...})";
    sheaf_pipeline *p = load_text(
        DOC("\"map\":{\"user\":\"{{text}}\",\"json_schema\":{\"type\":\"object\"},"
            "\"json_retries\":0}", ""));
    assert_int_equal(p->json_retries, 0);
    sheaf_pipeline_destroy(p);

    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_schema\":{\"type\":\"array\"}}", ""),
                      not_object, NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_schema\":{\"properties\":{}}}", ""),
                      not_object, NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_schema\":{\"type\":[\"object\"]}}", ""),
                      not_object, NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_schema\":\"object\"}", ""), not_object,
                      NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_schema\":null}", ""), not_object, NULL);
    assert_load_fails(
        DOC("\"map\":{\"user\":\"u\",\"json_schema\":{\"type\":\"object\",\"oneOf\":[]}}", ""),
        "stage map: json_schema: ", "unsupported keyword \"oneOf\"");
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_schema\":{\"type\":\"object\","
                          "\"properties\":{\"a\":{\"type\":\"string\",\"format\":\"date\"}}}}",
                          ""),
                      "stage map: json_schema: ", "unsupported keyword \"format\"");
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_retries\":1}", ""),
                      "stage map: json_retries needs json_schema", NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"json_schema\":{\"type\":\"object\"},"
                          "\"json_retries\":11}",
                          ""),
                      "stage map: key \"json_retries\" must be an integer in 0..10", NULL);
    assert_load_fails(DOC(MAP_T ",\"combine\":{\"user\":\"u\",\"json_schema\":{\"type\":\"object\"}}",
                          ""),
                      "stage combine: json_schema and json_retries belong to map", NULL);
    assert_load_fails(DOC(MAP_T ",\"overview\":{\"user\":\"u\",\"json_retries\":1}", ""),
                      "stage overview: json_schema and json_retries belong to map", NULL);
}

static void test_shape_stage_keys(void **state)
{
    (void)state;
    static const char *const belong =
        "budget_tokens and group_size belong to combine, group and overview";
    sheaf_pipeline *p = load_text(
        DOC(MAP_T ",\"combine\":{\"user\":\"{{partials}}\",\"budget_tokens\":0,\"group_size\":2},"
            "\"overview\":{\"user\":\"{{results}}\",\"budget_tokens\":2147483647,"
            "\"group_size\":100000}", ""));
    assert_int_equal(p->combine.group_size, 2);
    assert_int_equal(p->overview.budget_tokens, 2147483647);
    assert_int_equal(p->overview.group_size, 100000);
    sheaf_pipeline_destroy(p);

    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"budget_tokens\":100}", ""), "stage map: ",
                      belong);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"group_size\":4}", ""), "stage map: ",
                      belong);
    assert_load_fails(DOC(MAP_T ",\"critique\":{\"user\":\"u\",\"group_size\":4}," REFINE_T,
                          ",\"refinement\":{}"),
                      "stage critique: ", belong);
    assert_load_fails(DOC(MAP_T ",\"combine\":{\"user\":\"u\",\"group_size\":1}", ""),
                      "stage combine: key \"group_size\" must be an integer in 2..100000", NULL);
    assert_load_fails(DOC(MAP_T ",\"group\":{\"user\":\"u\",\"group_size\":100001}",
                          ",\"grouping\":{\"by\":[\"meta.a\"]}"),
                      "stage group: key \"group_size\" must be an integer in 2..100000", NULL);
    assert_load_fails(DOC(MAP_T ",\"overview\":{\"user\":\"u\",\"budget_tokens\":-1}", ""),
                      "stage overview: key \"budget_tokens\" must be an integer in 0..", NULL);
    assert_load_fails(DOC(MAP_T ",\"combine\":{\"user\":\"u\",\"budget_tokens\":1.5}", ""),
                      "stage combine: key \"budget_tokens\" must be an integer", NULL);
    assert_load_fails(DOC(MAP_T ",\"reduce\":{\"user\":\"u\"}", ""),
                      "stages: unknown stage \"reduce\" (stages are map, combine, critique, "
                      "refine, group, overview)",
                      NULL);
    assert_load_fails(DOC(MAP_T ",\"combine\":[]", ""), "stages: key \"combine\" must be an object",
                      NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"stop\":[]}", ""),
                      "stage map: unknown key \"stop\"", NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"temperature\":-0.5}", ""),
                      "stage map: temperature must be a number >= 0", NULL);
    assert_load_fails(DOC(COMBINE_T, ""), "stages: key \"map\" is missing", NULL);
}

static void test_shape_chunking(void **state)
{
    (void)state;
    sheaf_pipeline *p = load_text(
        DOC(MAP_T, ",\"chunking\":{\"pages_per_batch\":2,\"max_tokens\":16,\"overlap_tokens\":1}"));
    assert_int_equal(p->pages_per_batch, 2);
    assert_int_equal(p->chunk_max_tokens, 16);
    assert_int_equal(p->chunk_overlap_tokens, 1);
    sheaf_pipeline_destroy(p);

    assert_load_fails(DOC(MAP_T, ",\"chunking\":{\"pages\":2}"), "chunking: unknown key \"pages\"",
                      NULL);
    assert_load_fails(DOC(MAP_T, ",\"chunking\":2"), "chunking: must be an object", NULL);
    assert_load_fails(DOC(MAP_T, ",\"chunking\":{\"max_tokens\":16,\"overlap_tokens\":1000}"),
                      "chunking: overlap_tokens (1000) must be below half of max_tokens (16)", NULL);
    assert_load_fails(DOC(MAP_T, ",\"chunking\":{\"pages_per_batch\":0}"),
                      "chunking: key \"pages_per_batch\" must be an integer in 1..10000", NULL);
    assert_load_fails(DOC(MAP_T, ",\"chunking\":{\"max_tokens\":15}"),
                      "chunking: key \"max_tokens\" must be an integer in 16..1000000", NULL);
    assert_load_fails(DOC(MAP_T, ",\"chunking\":{\"overlap_tokens\":0}"),
                      "chunking: key \"overlap_tokens\" must be an integer in 1..1000000", NULL);
}

/* The same shape errors in the strict stored form: from_json of a canonical
 * document with one part removed. */
static char *canonical_of(const char *example)
{
    sheaf_config c;
    cfg_fill(&c);
    sheaf_pipeline *p = load_example(example, &c);
    char *json = sheaf_pipeline_to_json(p);
    assert_non_null(json);
    sheaf_pipeline_destroy(p);
    return json;
}

/* from_json of canonical with root[key1][key2]... removed (path of object keys,
 * the last is deleted) must fail with the words. */
static void assert_strict_without(const char *canonical, const char *k1, const char *k2,
                                  const char *k3, const char *w1, const char *w2)
{
    json_t *root = json_loads(canonical, 0, NULL), *o = root;
    const char *keys[] = {k1, k2, k3};
    size_t n = k3 ? 3 : k2 ? 2 : 1;
    assert_non_null(root);
    for (size_t i = 0; i + 1 < n; i++) o = json_object_get(o, keys[i]);
    assert_int_equal(json_object_del(o, keys[n - 1]), 0);
    char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    assert_from_json_fails(text, w1, w2);
    free(text);
}

static void test_shape_strict_form(void **state)
{
    (void)state;
    char *st = canonical_of("statements.json"), *rf = canonical_of("refine.json"),
         *hi = canonical_of("postings-hierarchy.json");
    assert_strict_without(st, "stages", "map", "json_schema", "pipeline JSON: stage map: ",
                          "json_retries needs json_schema");
    assert_strict_without(st, "stages", "map", "json_retries", "pipeline JSON: stage map: ",
                          "key \"json_retries\" is missing");
    assert_strict_without(rf, "refinement", NULL, NULL,
                          "pipeline JSON: refinement: needs stages.critique", NULL);
    assert_strict_without(rf, "stages", "critique", NULL,
                          "pipeline JSON: refinement: needs stages.critique", NULL);
    assert_strict_without(rf, "refinement", "stop_when", NULL,
                          "pipeline JSON: refinement: key \"stop_when\" is missing", NULL);
    assert_strict_without(rf, "refinement", "max_rounds", NULL,
                          "pipeline JSON: refinement: key \"max_rounds\" is missing", NULL);
    assert_strict_without(hi, "grouping", NULL, NULL,
                          "pipeline JSON: grouping: stages.group and grouping.by go together",
                          NULL);
    assert_strict_without(hi, "stages", "map", "json_schema",
                          "pipeline JSON: stage map: json_retries needs json_schema", NULL);
    assert_strict_without(hi, "stages", "group", "system",
                          "pipeline JSON: stage group: key \"system\" is missing", NULL);
    /* Without the schema (and its json_retries) the merge has nothing to merge. */
    {
        json_t *root = json_loads(st, 0, NULL);
        json_t *map = json_object_get(json_object_get(root, "stages"), "map");
        json_object_del(map, "json_schema");
        json_object_del(map, "json_retries");
        char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(root);
        assert_from_json_fails(text, "pipeline JSON: merge: needs stages.map.json_schema", NULL);
        free(text);
    }
    /* budget_tokens and group_size may be left out of the stored form. */
    {
        char err[SHEAF_ERRSTR_SIZE];
        json_t *root = json_loads(hi, 0, NULL);
        json_object_del(json_object_get(json_object_get(root, "stages"), "group"),
                        "budget_tokens");
        json_object_del(json_object_get(json_object_get(root, "stages"), "overview"),
                        "group_size");
        char *text = json_dumps(root, JSON_COMPACT);
        json_decref(root);
        sheaf_pipeline *p = sheaf_pipeline_from_json(text, strlen(text), err, sizeof(err));
        if (!p) fail_msg("from_json: %s", err);
        char *again = sheaf_pipeline_to_json(p);
        assert_string_equal(again, hi);
        free(again);
        free(text);
        sheaf_pipeline_destroy(p);
    }
    free(st);
    free(rf);
    free(hi);
}

/* Finalize by hand: what no JSON can reach is still checked, and a failed
 * finalize leaves no version behind. */
static void test_finalize_by_hand(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE], before[17];
    cfg_fill(&c);
    sheaf_pipeline *p = load_example("statements.json", &c);
    memcpy(before, p->version, sizeof(before));
    p->json_retries = 11;
    assert_int_equal(sheaf_pipeline_finalize(p, err, sizeof(err)), SHEAF_ERR_INVALID);
    assert_string_equal(err, "stage map: json_retries must be in 0..10");
    assert_string_equal(p->version, "");
    p->json_retries = 2;
    assert_int_equal(sheaf_pipeline_finalize(p, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(p->version, before);
    p->map.budget_tokens = 5; /* not part of a map stage: not stored, not hashed */
    assert_int_equal(sheaf_pipeline_finalize(p, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(p->version, before);
    p->name[0] = '\0';
    assert_int_equal(sheaf_pipeline_finalize(p, err, sizeof(err)), SHEAF_ERR_INVALID);
    assert_string_equal(err, "pipeline name is empty or not valid UTF-8");
    sheaf_pipeline_destroy(p);
}

/* ---- per-stage template variables ---------------------------------------------- */

static const char *const stage_names[] = {"map", "combine", "critique", "refine", "group",
                                          "overview"};

/* A document with every stage; stage i's user template is tmpl, the others
 * "{{job_id}}" (allowed everywhere). */
static void all_stages_doc(size_t i, const char *tmpl, char *buf, size_t len)
{
    const char *t[6];
    for (size_t k = 0; k < 6; k++) t[k] = k == i ? tmpl : "{{job_id}}";
    snprintf(buf, len,
             "{\"name\":\"v\",\"stages\":{\"map\":{\"user\":\"%s\"},\"combine\":{\"user\":\"%s\"},"
             "\"critique\":{\"user\":\"%s\"},\"refine\":{\"user\":\"%s\"},"
             "\"group\":{\"user\":\"%s\"},\"overview\":{\"user\":\"%s\"}},"
             "\"refinement\":{},\"grouping\":{\"by\":[\"meta.a\"]}}",
             t[0], t[1], t[2], t[3], t[4], t[5]);
}

static void assert_stage_var_ok(size_t i, const char *tmpl)
{
    char buf[2048];
    all_stages_doc(i, tmpl, buf, sizeof(buf));
    sheaf_pipeline *p = load_text(buf);
    sheaf_pipeline_destroy(p);
}

static void assert_stage_var_refused(size_t i, const char *name)
{
    char buf[2048], tmpl[128], want[256];
    snprintf(tmpl, sizeof(tmpl), "x {{%s}}", name);
    snprintf(want, sizeof(want), "stage %s: user template: unknown variable \"%s\"",
             stage_names[i], name);
    all_stages_doc(i, tmpl, buf, sizeof(buf));
    assert_load_fails(buf, want, "(allowed: job_id, ");
}

static void test_stage_templates(void **state)
{
    (void)state;
    enum { MAP, COMBINE, CRITIQUE, REFINE, GROUP, OVERVIEW };
    /* Everything the header lists, per stage. */
    assert_stage_var_ok(MAP, "{{job_id}}{{text}}{{doc_id}}{{chunk_index}}{{chunk_count}}"
                             "{{pages}}{{page_first}}{{page_last}}{{meta.k}}");
    assert_stage_var_ok(COMBINE,
                        "{{job_id}}{{doc_id}}{{chunk_count}}{{partials}}{{level}}{{meta.k}}");
    assert_stage_var_ok(CRITIQUE, "{{job_id}}{{doc_id}}{{draft}}{{round}}{{partials}}{{meta.k}}");
    assert_stage_var_ok(REFINE, "{{job_id}}{{doc_id}}{{draft}}{{critique}}{{round}}"
                                "{{partials}}{{meta.k}}");
    assert_stage_var_ok(GROUP, "{{job_id}}{{group}}{{group_key}}{{group_path}}{{count}}"
                               "{{results}}{{level}}");
    assert_stage_var_ok(OVERVIEW, "{{job_id}}{{doc_count}}{{group_count}}{{count}}{{results}}"
                                  "{{level}}");

    /* And nothing else. */
    assert_stage_var_refused(MAP, "level");
    assert_stage_var_refused(MAP, "draft");
    assert_stage_var_refused(MAP, "results");
    assert_stage_var_refused(COMBINE, "draft");
    assert_stage_var_refused(COMBINE, "text");
    assert_stage_var_refused(COMBINE, "results");
    assert_stage_var_refused(COMBINE, "round");
    assert_stage_var_refused(CRITIQUE, "critique");
    assert_stage_var_refused(CRITIQUE, "text");
    assert_stage_var_refused(CRITIQUE, "level");
    assert_stage_var_refused(REFINE, "results");
    assert_stage_var_refused(REFINE, "chunk_count");
    assert_stage_var_refused(GROUP, "meta.k");
    assert_stage_var_refused(GROUP, "doc_id");
    assert_stage_var_refused(GROUP, "doc_count");
    assert_stage_var_refused(GROUP, "partials");
    assert_stage_var_refused(OVERVIEW, "group_path");
    assert_stage_var_refused(OVERVIEW, "meta.k");
    assert_stage_var_refused(OVERVIEW, "draft");

    /* The allowed list in the message is the stage's own. */
    char buf[2048];
    all_stages_doc(GROUP, "{{x}}", buf, sizeof(buf));
    assert_load_fails(buf, "stage group: user template: unknown variable \"x\"",
                      "(allowed: job_id, group, group_key, group_path, count, results, level)");
    all_stages_doc(MAP, "{{x}}", buf, sizeof(buf));
    assert_load_fails(buf, "stage map: user template", "page_last, meta.<key>)");
    /* System prompts are checked against the same lists. */
    assert_load_fails(DOC(MAP_T ",\"combine\":{\"system\":\"{{draft}}\",\"user\":\"u\"}", ""),
                      "stage combine: system prompt: unknown variable \"draft\"", NULL);
    assert_load_fails(DOC(MAP_T ",\"critique\":{\"system\":\"{{ critique }}\",\"user\":\"u\"},"
                          REFINE_T, ",\"refinement\":{}"),
                      "stage critique: system prompt: unknown variable \"critique\"", NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"{{text\"}", ""), "stage map: user template: ",
                      "unterminated");
}

/* ---- versions ------------------------------------------------------------------- */

static void version_of(const char *text, char out[17])
{
    sheaf_pipeline *p = load_text(text);
    assert_version_format(p);
    memcpy(out, p->version, 17);
    sheaf_pipeline_destroy(p);
}

/* Refinement, progressive combine and chunking. */
#define DOC_A(budget, gsize, rounds, stop, chunking, extra)                                   \
    "{\"name\":\"v\"," extra "\"chunking\":{" chunking "},\"stages\":{" MAP_T ","             \
    "\"combine\":{\"user\":\"{{partials}}\",\"budget_tokens\":" budget ",\"group_size\":" gsize \
    "}," CRITIQUE_T "," REFINE_T "},\"refinement\":{\"max_rounds\":" rounds                   \
    ",\"stop_when\":\"" stop "\"}}"
/* Extraction: schema and merge. */
#define DOC_B(props, retries, merge)                                                        \
    "{\"name\":\"v\",\"stages\":{\"map\":{\"user\":\"{{text}}\",\"json_retries\":" retries     \
    ",\"json_schema\":{\"type\":\"object\",\"properties\":{" props "}}}},\"merge\":" merge "}"
/* Hierarchy: grouping, group and overview. */
#define DOC_C(by, gbudget, osize)                                                           \
    "{\"name\":\"v\",\"stages\":{" MAP_S ",\"group\":{\"user\":\"{{results}}\","               \
    "\"budget_tokens\":" gbudget "},\"overview\":{\"user\":\"{{results}}\",\"group_size\":"     \
    osize "}},\"grouping\":{\"by\":[" by "]}}"
#define PROPS_B "\"a\":{\"type\":\"string\"},\"fees\":{\"type\":\"number\"}"
#define MERGE_B "{\"key\":\"a\",\"rules\":{\"fees\":\"sum\"}}"
#define BY_C "\"meta.a\",\"meta.b\",\"result.role\""

static void test_version_changes(void **state)
{
    (void)state;
    static const char *const docs[] = {
        DOC_A("0", "8", "3", "DONE", "\"max_tokens\":300", ""),
        DOC_A("100", "8", "3", "DONE", "\"max_tokens\":300", ""),    /* budget_tokens */
        DOC_A("0", "4", "3", "DONE", "\"max_tokens\":300", ""),      /* group_size */
        DOC_A("0", "8", "2", "DONE", "\"max_tokens\":300", ""),      /* max_rounds */
        DOC_A("0", "8", "3", "STOP", "\"max_tokens\":300", ""),      /* stop_when */
        DOC_A("0", "8", "3", "DONE", "\"max_tokens\":400", ""),      /* chunking */
        DOC_A("0", "8", "3", "DONE", "", ""),                        /* no chunking */
        DOC_A("0", "8", "3", "DONE", "\"max_tokens\":300,\"overlap_tokens\":10", ""),
        DOC_A("0", "8", "3", "DONE", "\"max_tokens\":300,\"pages_per_batch\":2", ""),
        DOC_B(PROPS_B, "2", MERGE_B),
        DOC_B(PROPS_B, "2", "{\"key\":\"a\",\"rules\":{\"fees\":\"max\"}}"), /* merge rule */
        DOC_B(PROPS_B, "2", "{\"key\":\"a\",\"rules\":{\"a\":\"sum\"}}"),    /* rule's field */
        DOC_B(PROPS_B, "2", "{\"key\":\"fees\",\"rules\":{\"fees\":\"sum\"}}"), /* merge key */
        DOC_B(PROPS_B, "2", "{\"rules\":{\"fees\":\"sum\"}}"),
        DOC_B(PROPS_B, "3", MERGE_B),                                /* json_retries */
        DOC_B("\"a\":{\"type\":\"string\"},\"fees\":{\"type\":\"integer\"}", "2",
              MERGE_B),                                              /* schema */
        DOC_B(PROPS_B ",\"b\":{\"type\":\"string\"}", "2", MERGE_B), /* schema */
        DOC_C(BY_C, "0", "8"),
        DOC_C("\"meta.b\",\"meta.a\",\"result.role\"", "0", "8"),    /* grouping order */
        DOC_C("\"meta.a\",\"result.role\"", "0", "8"),               /* fewer levels */
        DOC_C(BY_C ",\"result.summary\"", "0", "8"),                 /* more levels */
        DOC_C(BY_C, "500", "8"),                                     /* group budget */
        DOC_C(BY_C, "0", "3"),                                       /* overview group_size */
    };
    enum { N = sizeof(docs) / sizeof(docs[0]) };
    char v[N][17];
    for (size_t i = 0; i < N; i++) version_of(docs[i], v[i]);
    for (size_t i = 0; i < N; i++)
        for (size_t j = i + 1; j < N; j++)
            if (strcmp(v[i], v[j]) == 0)
                fail_msg("same version %s for\n%s\nand\n%s", v[i], docs[i], docs[j]);

    /* What is not sent does not change it.  "description" is accepted but
     * not stored (nor in the canonical JSON): a description does not change
     * what is sent, so the version stays. */
    char same[17];
    version_of(DOC_A("0", "8", "3", "DONE", "\"max_tokens\":300", "\"description\":\"one\","),
               same);
    assert_string_equal(same, v[0]);
    version_of(DOC_A("0", "8", "3", "DONE", "\"max_tokens\":300", "\"description\":\"two\","),
               same);
    assert_string_equal(same, v[0]);
    {
        sheaf_pipeline *p =
            load_text(DOC_A("0", "8", "3", "DONE", "\"max_tokens\":300", "\"description\":\"d\","));
        char *json = sheaf_pipeline_to_json(p);
        assert_null(strstr(json, "description"));
        free(json);
        sheaf_pipeline_destroy(p);
    }
    /* json_retries 2 is the default with a schema. */
    version_of("{\"name\":\"v\",\"stages\":{\"map\":{\"user\":\"{{text}}\",\"json_schema\":"
               "{\"type\":\"object\",\"properties\":{" PROPS_B "}}}},\"merge\":" MERGE_B "}",
               same);
    assert_string_equal(same, v[9]);
    /* An empty chunking object is no chunking. */
    version_of(DOC_A("0", "8", "3", "DONE", "", ""), same);
    assert_string_equal(same, v[6]);
    {
        char none[17];
        version_of("{\"name\":\"v\",\"stages\":{" MAP_T "," COMBINE_T "," CRITIQUE_T "," REFINE_T
                   "},\"refinement\":{\"max_rounds\":3,\"stop_when\":\"DONE\"}}",
                   none);
        assert_string_equal(none, v[6]);
    }
    /* A merge rule order inside the object is canonicalized. */
    version_of(DOC_B(PROPS_B, "2", "{\"rules\":{\"fees\":\"sum\"},\"key\":\"a\"}"), same);
    assert_string_equal(same, v[9]);
}

/* ---- JSON round trip of the examples ------------------------------------------- */

static void test_examples_round_trip(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE], hex[65], path[512];
    cfg_fill(&c);
    for (const char *const *n = example_names; *n; n++) {
        sheaf_pipeline *p = load_example(*n, &c);
        char *j1 = sheaf_pipeline_to_json(p);
        assert_non_null(j1);
        sheaf_sha256_hex(j1, strlen(j1), hex);
        assert_memory_equal(p->version, hex, 16);
        sheaf_pipeline *q = sheaf_pipeline_from_json(j1, strlen(j1), err, sizeof(err));
        if (!q) fail_msg("%s: from_json: %s", *n, err);
        assert_string_equal(q->version, p->version);
        char *j2 = sheaf_pipeline_to_json(q);
        if (strcmp(j1, j2) != 0) fail_msg("%s: round trip differs:\n%s\n%s", *n, j1, j2);
        /* The canonical form is also a valid pipeline file, same version. */
        sheaf_pipeline *r = load_text_at(j1, &c, path, sizeof(path), err, sizeof(err));
        if (!r) fail_msg("%s: load of canonical: %s", *n, err);
        assert_string_equal(r->version, p->version);
        /* And with its version key, too. */
        {
            char *withv = malloc(strlen(j1) + 40);
            assert_non_null(withv);
            sprintf(withv, "%.*s,\"version\":\"%s\"}", (int)strlen(j1) - 1, j1, p->version);
            sheaf_pipeline *s = sheaf_pipeline_from_json(withv, strlen(withv), err, sizeof(err));
            if (!s) fail_msg("%s: from_json with version: %s", *n, err);
            assert_string_equal(s->version, p->version);
            sheaf_pipeline_destroy(s);
            free(withv);
        }
        sheaf_pipeline_destroy(r);
        free(j2);
        free(j1);
        sheaf_pipeline_destroy(q);
        sheaf_pipeline_destroy(p);
    }
}

/* ---- result text ------------------------------------------------------------------ */

static void assert_result_text(const char *rec_json, const char *want)
{
    json_error_t jerr;
    json_t *rec = json_loads(rec_json, JSON_DECODE_ANY, &jerr);
    if (!rec) fail_msg("%s: %s", rec_json, jerr.text);
    char *got = sheaf_pipeline_result_text(rec);
    if (!want) {
        if (got) fail_msg("result_text(%s) = \"%s\", want NULL", rec_json, got);
    } else {
        if (!got) fail_msg("result_text(%s) = NULL, want \"%s\"", rec_json, want);
        assert_string_equal(got, want);
    }
    free(got);
    json_decref(rec);
}

/* Windows: llm.context_tokens, else the model's known window, else 8192;
 * the prompt budget is the window less max_tokens, or budget_tokens when
 * smaller; a stored snapshot without a window stays unbounded. */
static void test_windows(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    cfg_fill(&c);

    assert_int_equal(sheaf_model_context_tokens("gpt-4o-mini"), 128000);
    assert_int_equal(sheaf_model_context_tokens("openai/gpt-4o"), 128000);
    assert_int_equal(sheaf_model_context_tokens("gpt-4"), 8192);
    assert_int_equal(sheaf_model_context_tokens("gpt-4.1-mini"), 1047576);
    assert_int_equal(sheaf_model_context_tokens("claude-sonnet-4"), 200000);
    assert_int_equal(sheaf_model_context_tokens("sheaf-sim"), SHEAF_CONTEXT_TOKENS_DEFAULT);
    assert_int_equal(sheaf_model_context_tokens(""), SHEAF_CONTEXT_TOKENS_DEFAULT);

    sheaf_pipeline *p = builtin(&c);
    assert_int_equal(p->combine.context_tokens, 8192);
    assert_int_equal(sheaf_stage_prompt_budget(&p->combine), 8192 - 512);
    assert_int_equal(sheaf_pipeline_combine_budget(p), 8192 - 512);
    sheaf_pipeline_destroy(p);

    c.llm_context_tokens = 8000;
    c.llm_model = "gpt-4o";
    p = builtin(&c);
    assert_int_equal(p->overview.context_tokens, 8000);
    assert_int_equal(sheaf_stage_prompt_budget(&p->overview), 8000 - 512);
    /* The window is part of the version: a job keeps the one it had. */
    char *json = sheaf_pipeline_to_json(p);
    sheaf_pipeline *q = sheaf_pipeline_from_json(json, strlen(json), err, sizeof(err));
    assert_non_null(q);
    assert_string_equal(q->version, p->version);
    assert_int_equal(q->map.context_tokens, 8000);
    free(json);
    sheaf_pipeline_destroy(q);
    sheaf_pipeline_destroy(p);

    /* A file's stage: its own window and model, budget_tokens bounded. */
    p = load_text(DOC("\"map\":{\"user\":\"{{text}}\",\"model\":\"claude-x\"},"
                      "\"combine\":{\"user\":\"{{partials}}\",\"budget_tokens\":900},"
                      "\"overview\":{\"user\":\"{{results}}\",\"context_tokens\":4096,"
                      "\"budget_tokens\":100000,\"max_tokens\":96}", ""));
    assert_int_equal(p->map.context_tokens, 200000);
    assert_int_equal(p->combine.context_tokens, 8192);
    assert_int_equal(sheaf_stage_prompt_budget(&p->combine), 900);
    assert_int_equal(sheaf_stage_prompt_budget(&p->overview), 4096 - 96);
    sheaf_pipeline_destroy(p);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"context_tokens\":500}", ""),
                      "stage map: the window context_tokens (500; by default llm.context_tokens) must "
                      "leave at least", NULL);
    assert_load_fails(DOC("\"map\":{\"user\":\"u\",\"context_tokens\":0}", ""),
                      "stage map: key \"context_tokens\" must be an integer", NULL);

    /* A snapshot stored before windows: no bound, as it ran then. */
    static const char old[] =
        "{\"name\":\"s\",\"stages\":{\"map\":{\"system\":\"\",\"user\":\"{{text}}\","
        "\"model\":\"m\",\"temperature\":0,\"max_tokens\":512}}}";
    p = sheaf_pipeline_from_json(old, sizeof(old) - 1, err, sizeof(err));
    assert_non_null(p);
    assert_int_equal(p->map.context_tokens, 0);
    assert_int_equal(sheaf_stage_prompt_budget(&p->map), 0);
    sheaf_pipeline_destroy(p);
}

/* Refinement: the critique sees the final combine call's inputs next to
 * the draft, so the combine budget leaves room for the draft. */
static void test_combine_budget_with_refinement(void **state)
{
    (void)state;
    sheaf_config c;
    char err[SHEAF_ERRSTR_SIZE] = "";
    cfg_fill(&c);
    sheaf_pipeline *p = sheaf_pipeline_load("summarize-refine", &c, err, sizeof(err));
    assert_non_null(p);
    int b = sheaf_pipeline_combine_budget(p);
    assert_true(b < 8192 - 512);
    assert_true(b - (int)sheaf_stage_overhead(&p->combine) + 512 +
                    (int)sheaf_stage_overhead(&p->critique) <= 8192 - 512);
    sheaf_pipeline_destroy(p);
}

/* The packing rule and the plan built on it (sheaf/plan.h). */
static void test_reduce_plan(void **state)
{
    (void)state;
    uint32_t sizes[5000];
    sheaf_reduce_plan pl = {0};

    /* Everything fits: one call, exactly today's single reduction. */
    for (size_t i = 0; i < 10; i++) sizes[i] = 100;
    sheaf_reduce_plan_add(sizes, 10, 50, 7680, 8, 512, &pl);
    assert_int_equal(pl.levels, 1);
    assert_int_equal(pl.calls, 1);
    assert_int_equal(pl.largest, 50 + 10 * 101);

    /* 5,000 answers of 512 tokens at a 7,680-token budget, 8 per call:
     * 625 + 79 + 10 calls, then one over the last 10. */
    memset(&pl, 0, sizeof(pl));
    for (size_t i = 0; i < 5000; i++) sizes[i] = 517;
    sheaf_reduce_plan_add(sizes, 5000, 41, 7680, 8, 512, &pl);
    assert_int_equal(pl.levels, 4);
    assert_int_equal(pl.calls, 625 + 79 + 10 + 1);
    assert_true(pl.largest <= 7680);
    assert_false(pl.stuck);

    /* The budget, not group_size, closes a call; at least one input. */
    for (size_t i = 0; i < 6; i++) sizes[i] = 300;
    assert_int_equal(sheaf_pack_next(sizes, 0, 6, 100, 800, 8), 2);
    assert_int_equal(sheaf_pack_next(sizes, 4, 6, 100, 800, 8), 6);
    sizes[0] = 5000;
    assert_int_equal(sheaf_pack_next(sizes, 0, 6, 100, 800, 8), 1);

    /* One input alone over the budget: stuck, never an endless loop. */
    memset(&pl, 0, sizeof(pl));
    sizes[0] = 5000;
    sizes[1] = 5000;
    sheaf_reduce_plan_add(sizes, 2, 10, 800, 8, 100, &pl);
    assert_true(pl.stuck);
}

static void test_result_text(void **state)
{
    (void)state;
    assert_result_text("{\"text\":\"a\"}", "a");
    assert_result_text("{\"summary\":\"s\"}", "s");
    assert_result_text("{\"text\":\"\"}", "");
    assert_result_text("{\"text\":\"t\",\"data\":{\"summary\":\"d\"}}", "d");
    assert_result_text("{\"text\":\"t\",\"data\":{\"x\":1}}", "{\"x\":1}");
    /* Compact, in the record's key order; a non-string summary is data. */
    assert_result_text("{\"data\":{\"b\":[1,2],\"a\":\"\\u00e9\"}}", "{\"b\":[1,2],\"a\":\"é\"}");
    assert_result_text("{\"data\":{\"summary\":5}}", "{\"summary\":5}");
    assert_result_text("{\"data\":{}}", "{}");
    /* data that is not an object is not used. */
    assert_result_text("{\"text\":\"t\",\"data\":[1]}", "t");
    assert_result_text("{\"text\":\"t\",\"data\":null}", "t");
    assert_result_text("{}", NULL);
    assert_result_text("{\"text\":5}", NULL);
    assert_result_text("[\"text\"]", NULL);
    assert_null(sheaf_pipeline_result_text(NULL));
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
        cmocka_unit_test(test_load_examples),
        cmocka_unit_test(test_load_defaults),
        cmocka_unit_test(test_load_builtins_and_errors),
        cmocka_unit_test(test_shape_merge),
        cmocka_unit_test(test_shape_refinement),
        cmocka_unit_test(test_shape_grouping),
        cmocka_unit_test(test_shape_schema),
        cmocka_unit_test(test_shape_stage_keys),
        cmocka_unit_test(test_shape_chunking),
        cmocka_unit_test(test_shape_strict_form),
        cmocka_unit_test(test_finalize_by_hand),
        cmocka_unit_test(test_stage_templates),
        cmocka_unit_test(test_version_changes),
        cmocka_unit_test(test_examples_round_trip),
        cmocka_unit_test(test_result_text),
        cmocka_unit_test(test_windows),
        cmocka_unit_test(test_combine_budget_with_refinement),
        cmocka_unit_test(test_reduce_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
