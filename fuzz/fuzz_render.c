/* fuzz_render.c - prompt templates: sheaf_prompt_check (pipeline
 * validation) and sheaf_prompt_render (a worker or reducer building a
 * prompt).
 *
 * Input: "<template>\0<value>".  The template is checked against the
 * variables of each stage (the lists of sheaf/pipeline.h) and rendered with
 * a fixed variable set in which the big variables (text, partials, draft,
 * critique, results) hold the value, the others fixed strings, and
 * meta.<key> a value for "sector" and "year" and "" for any other key (as
 * the worker renders a missing metadata field).  Checks:
 *   - a template that passes the check of a stage renders with that stage's
 *     variables (validation accepts only what rendering can do);
 *   - a failed render leaves the output buffer as it was, with a reason;
 *   - messages are valid UTF-8 when the template is (they end up in JSON
 *     error records);
 *   - with a small cap, rendering either gives the same text or fails with
 *     SHEAF_ERR_TOO_LARGE, leaving the buffer as it was;
 *   - a template without "{{" renders to itself;
 *   - a UTF-8 template and value give a UTF-8 prompt. */
#include "fuzz_common.h"

#include "sheaf/buf.h"
#include "sheaf/error.h"
#include "sheaf/pipeline.h"
#include "sheaf/util.h"

static const char *const stage_names[] = {"map", "combine", "critique", "refine", "group",
                                          "overview"};

typedef struct vars {
    const char *const *allowed; /* the stage's variables */
    const char *value;
    size_t value_len;
} vars;

static const char *lookup(const char *name, size_t len, void *ud, size_t *out_len)
{
    static const struct { const char *name, *value; } fixed[] = {
        {"job_id", "j-20260101-000000-abcdef"}, {"doc_id", "reports/q3.txt"},
        {"chunk_index", "2"}, {"chunk_count", "5"}, {"pages", "3-4"}, {"page_first", "3"},
        {"page_last", "4"}, {"level", "0"}, {"round", "1"}, {"group", "finance"},
        {"group_key", "meta.sector"}, {"group_path", "finance / engineering"},
        {"count", "12"}, {"doc_count", "24"}, {"group_count", "3"},
        {"meta.sector", "finance"}, {"meta.year", "2026"},
    };
    static const char *const big[] = {"text", "partials", "draft", "critique", "results"};
    const vars *v = ud;
    int allowed = 0;

    for (const char *const *a = v->allowed; *a && !allowed; a++) {
        size_t alen = strlen(*a);
        if ((*a)[alen - 1] == '.') allowed = len > alen && memcmp(name, *a, alen) == 0;
        else allowed = len == alen && memcmp(name, *a, alen) == 0;
    }
    if (!allowed) return NULL;
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        if (strlen(big[i]) == len && memcmp(big[i], name, len) == 0) {
            *out_len = v->value_len;
            return v->value;
        }
    }
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (strlen(fixed[i].name) == len && memcmp(fixed[i].name, name, len) == 0) {
            *out_len = strlen(fixed[i].value);
            return fixed[i].value;
        }
    }
    if (len > 5 && memcmp(name, "meta.", 5) == 0) { /* a missing field renders empty */
        *out_len = 0;
        return "";
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *tmpl, *value;
    size_t tlen, vlen;
    int utf8, tmpl_utf8;

    fuzz_split(data, size, &tmpl, &tlen, &value, &vlen);
    tmpl_utf8 = sheaf_utf8_valid(tmpl, tlen, NULL);
    utf8 = tmpl_utf8 && sheaf_utf8_valid(value, vlen, NULL);
    for (size_t s = 0; s < sizeof(stage_names) / sizeof(stage_names[0]); s++) {
        char errstr[SHEAF_ERRSTR_SIZE] = "";
        vars v = {sheaf_stage_vars(stage_names[s]), value, vlen};
        sheaf_buf out, small;
        sheaf_err checked, rendered, capped;

        checked = sheaf_prompt_check(tmpl, v.allowed, errstr, sizeof(errstr));
        FUZZ_CHECK(checked == SHEAF_OK || (checked == SHEAF_ERR_INVALID && errstr[0]),
                   "check says OK or why not");
        FUZZ_CHECK(!tmpl_utf8 || sheaf_utf8_valid(errstr, strlen(errstr), NULL),
                   "check message is UTF-8");

        sheaf_buf_init(&out, 64u * 1024 * 1024);
        FUZZ_CHECK(sheaf_buf_appends(&out, "KEEP") == SHEAF_OK, "prefix");
        errstr[0] = '\0';
        rendered = sheaf_prompt_render(tmpl, lookup, &v, &out, errstr, sizeof(errstr));
        if (checked == SHEAF_OK && rendered != SHEAF_OK)
            fprintf(stderr, "stage %zu: checked but not rendered: %s\n", s, errstr);
        FUZZ_CHECK(checked != SHEAF_OK || rendered == SHEAF_OK,
                   "a template that passes the check renders");
        FUZZ_CHECK(out.len >= 4 && memcmp(out.data, "KEEP", 4) == 0, "output appended");
        if (rendered != SHEAF_OK) {
            FUZZ_CHECK(out.len == 4 && out.data[4] == '\0', "a failed render leaves out as it was");
            FUZZ_CHECK(errstr[0] != '\0', "a failed render says why");
            /* It becomes the reason of a dead-lettered chunk and its JSON record. */
            FUZZ_CHECK(!tmpl_utf8 || sheaf_utf8_valid(errstr, strlen(errstr), NULL),
                       "render message is UTF-8");
        } else {
            if (!strstr(tmpl, "{{"))
                FUZZ_CHECK(out.len - 4 == tlen && memcmp(out.data + 4, tmpl, tlen) == 0,
                           "a template without {{ renders to itself");
            if (utf8)
                FUZZ_CHECK(sheaf_utf8_valid(out.data + 4, out.len - 4, NULL),
                           "UTF-8 in, UTF-8 out");

            /* The same render under a small cap. */
            sheaf_buf_init(&small, 68);
            FUZZ_CHECK(sheaf_buf_appends(&small, "KEEP") == SHEAF_OK, "prefix");
            capped = sheaf_prompt_render(tmpl, lookup, &v, &small, errstr, sizeof(errstr));
            if (out.len <= 68) {
                FUZZ_CHECK(capped == SHEAF_OK && small.len == out.len &&
                               memcmp(small.data, out.data, out.len) == 0,
                           "a render that fits the cap is the same");
            } else {
                FUZZ_CHECK(capped == SHEAF_ERR_TOO_LARGE, "over the cap is TOO_LARGE");
                FUZZ_CHECK(small.len == 4 && small.data[4] == '\0',
                           "a capped render leaves out as it was");
            }
            sheaf_buf_free(&small);
        }
        sheaf_buf_free(&out);
    }
    free(tmpl);
    free(value);
    return 0;
}
