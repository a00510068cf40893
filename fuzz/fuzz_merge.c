/* fuzz_merge.c - merging page-batch extraction records
 * (sheaf_merge_check on a pipeline's "merge" object, sheaf_merge_records as
 * the reducer runs it over a document's batches).
 *
 * Input: "<merge spec JSON>\0<batches JSON>".  The spec is parsed as the
 * pipeline parser does (duplicates refused), the batches as an array of
 * {"pages": [first, last], "data": {...}} (what the reducer builds from the
 * workers' records, whose data came from an LLM).  The merge runs with the
 * spec whether it passed the check or not.  Checks: check and merge fail
 * only with a UTF-8 message; a merge result is an array of records
 * {"key", "data", "pages", "page_range"} with page_range inside the pages
 * of the batches and every per-field page list sorted, unique and in range;
 * merging is deterministic (same bytes twice); the result shares nothing
 * with its inputs (it is dumped after they are freed). */
#include "fuzz_common.h"

#include <jansson.h>

#include "sheaf/error.h"
#include "sheaf/merge.h"
#include "sheaf/util.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

static void check_page_list(const json_t *pages, json_int_t lo, json_int_t hi)
{
    size_t i;
    const json_t *p;
    json_int_t prev = 0;
    FUZZ_CHECK(json_is_array(pages), "a page list is an array");
    json_array_foreach(pages, i, p) {
        FUZZ_CHECK(json_is_integer(p), "pages are integers");
        FUZZ_CHECK(json_integer_value(p) > prev, "page list sorted and unique");
        FUZZ_CHECK(json_integer_value(p) >= lo && json_integer_value(p) <= hi,
                   "page within the record's range");
        prev = json_integer_value(p);
    }
}

static void check_records(const json_t *recs)
{
    size_t i;
    const json_t *r;
    FUZZ_CHECK(json_is_array(recs), "records are an array");
    json_array_foreach(recs, i, r) {
        const json_t *range = json_object_get(r, "page_range"), *pages = json_object_get(r, "pages");
        const char *name;
        const json_t *list;
        json_int_t lo, hi;
        FUZZ_CHECK(json_object_size(r) == 4 && json_object_get(r, "key") &&
                       json_is_object(json_object_get(r, "data")) && json_is_object(pages),
                   "record shape");
        FUZZ_CHECK(json_is_array(range) && json_array_size(range) == 2, "page_range shape");
        lo = json_integer_value(json_array_get(range, 0));
        hi = json_integer_value(json_array_get(range, 1));
        FUZZ_CHECK(lo >= 1 && lo <= hi && hi <= SHEAF_MERGE_MAX_PAGE, "page_range in range");
        json_object_foreach((json_t *)pages, name, list) check_page_list(list, lo, hi);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s_text, *b_text;
    size_t s_len, b_len;
    json_t *spec_json, *batches, *out = NULL, *out2 = NULL;
    char errstr[SHEAF_ERRSTR_SIZE] = "", errstr2[SHEAF_ERRSTR_SIZE] = "";
    char *dump = NULL, *dump2 = NULL;
    sheaf_merge_spec spec = {NULL, NULL};

    fuzz_split(data, size, &s_text, &s_len, &b_text, &b_len);
    spec_json = json_loadb(s_text, s_len, JSON_REJECT_DUPLICATES, NULL);
    batches = json_loadb(b_text, b_len, 0, NULL);
    if (spec_json) {
        sheaf_err err = sheaf_merge_check(spec_json, errstr, sizeof(errstr));
        FUZZ_CHECK(err == SHEAF_OK || (err == SHEAF_ERR_INVALID && errstr[0]),
                   "check says OK or why not");
        FUZZ_CHECK(sheaf_utf8_valid(errstr, strlen(errstr), NULL), "check message is UTF-8");
        /* The struct form borrows from the JSON form (as the reducer builds it). */
        spec.key = json_string_value(json_object_get(spec_json, "key"));
        spec.rules = json_object_get(spec_json, "rules");
    }
    if (batches) {
        errstr[0] = '\0';
        out = sheaf_merge_records(&spec, batches, errstr, sizeof(errstr));
        out2 = sheaf_merge_records(&spec, batches, errstr2, sizeof(errstr2));
        FUZZ_CHECK((out == NULL) == (out2 == NULL), "merging is deterministic");
        if (!out) {
            FUZZ_CHECK(errstr[0] != '\0' && strcmp(errstr, errstr2) == 0, "a failure says why");
            FUZZ_CHECK(sheaf_utf8_valid(errstr, strlen(errstr), NULL), "merge message is UTF-8");
        }
    }
    /* Free the inputs first: the records must not point into them. */
    json_decref(spec_json);
    json_decref(batches);
    if (out) {
        check_records(out);
        dump = json_dumps(out, DUMP_FLAGS);
        dump2 = json_dumps(out2, DUMP_FLAGS);
        FUZZ_CHECK(dump && dump2 && strcmp(dump, dump2) == 0, "same records, same bytes");
    }
    free(dump);
    free(dump2);
    json_decref(out);
    json_decref(out2);
    free(s_text);
    free(b_text);
    return 0;
}
