/* fuzz_jschema.c - the JSON Schema subset: sheaf_jschema_check (a
 * pipeline's map.json_schema, at submit and whenever a worker loads the
 * pipeline) and sheaf_jschema_validate (a worker checking an LLM answer).
 *
 * Input: "<schema JSON>\0<answer>".  The schema is parsed as the pipeline
 * parser does (duplicates refused), the answer as the worker does
 * (json_loads, flags 0).  The answer is validated against the schema
 * whether it passed the check or not (an unchecked schema must never crash
 * validation).  Checks: check and validate return OK or INVALID with a
 * message ("schema..." / "$..."); messages are valid UTF-8 (they become
 * the reason of a failed chunk, stored as a JSON string); validation is
 * deterministic; an object schema that passes the check can be sent as
 * response_format (sheaf_llm_request_json builds the body). */
#include "fuzz_common.h"

#include <jansson.h>

#include "sheaf/error.h"
#include "sheaf/jschema.h"
#include "sheaf/llm.h"
#include "sheaf/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s_text, *v_text;
    size_t s_len, v_len;
    json_t *schema, *value;
    char errstr[SHEAF_ERRSTR_SIZE], errstr2[SHEAF_ERRSTR_SIZE];
    sheaf_err checked = SHEAF_ERR_INVALID, err, err2;

    fuzz_split(data, size, &s_text, &s_len, &v_text, &v_len);
    schema = json_loadb(s_text, s_len, JSON_REJECT_DUPLICATES, NULL);
    value = json_loads(v_text, 0, NULL);

    if (schema) {
        errstr[0] = '\0';
        checked = sheaf_jschema_check(schema, errstr, sizeof(errstr));
        FUZZ_CHECK(checked == SHEAF_OK ||
                       (checked == SHEAF_ERR_INVALID && strncmp(errstr, "schema", 6) == 0),
                   "check says OK or where the schema is wrong");
        FUZZ_CHECK(sheaf_utf8_valid(errstr, strlen(errstr), NULL), "check message is UTF-8");
        if (checked == SHEAF_OK && json_is_object(schema)) {
            sheaf_llm_message msg = {"user", "hello"};
            sheaf_llm_request req = {"sheaf-sim", 0.0, 100, &msg, 1, schema};
            char *body = sheaf_llm_request_json(&req);
            FUZZ_CHECK(body != NULL, "a checked schema can be sent as response_format");
            free(body);
        }
    }
    if (schema && value) {
        errstr[0] = errstr2[0] = '\0';
        err = sheaf_jschema_validate(schema, value, errstr, sizeof(errstr));
        FUZZ_CHECK(err == SHEAF_OK || (err == SHEAF_ERR_INVALID && errstr[0] == '$'),
                   "validate says OK or where the value is wrong");
        FUZZ_CHECK(sheaf_utf8_valid(errstr, strlen(errstr), NULL), "validate message is UTF-8");
        err2 = sheaf_jschema_validate(schema, value, errstr2, sizeof(errstr2));
        FUZZ_CHECK(err == err2 && strcmp(errstr, errstr2) == 0, "validation is deterministic");
        (void)sheaf_json_type_name(value);
    }
    json_decref(schema);
    json_decref(value);
    free(s_text);
    free(v_text);
    return 0;
}
