/* sheaf/jschema.h - a small JSON Schema subset for checking LLM answers.
 *
 * The subset is the one OpenAI structured outputs accept, so one schema can
 * be sent to the provider and used to check what comes back:
 *   type                  "object", "array", "string", "number", "integer",
 *                         "boolean", "null", or a non-empty array of them
 *                         (no repeats).  "number" accepts any JSON number;
 *                         "integer" accepts only JSON integers (1.0 is a
 *                         real and is refused).
 *   properties            object: name -> schema
 *   required              array of distinct names
 *   additionalProperties  boolean only (false: names not in properties are
 *                         refused; absent or true: allowed, not checked)
 *   items                 one schema, for every element
 *   enum                  non-empty array of scalars (string, number,
 *                         boolean, null); equality is jansson's json_equal
 *   minItems, maxItems, minLength, maxLength
 *                         non-negative integers (lengths count Unicode
 *                         code points), min <= max
 *   minimum, maximum      numbers, inclusive, minimum <= maximum
 *   title, description, $comment (strings) and default (any): ignored.
 * Any other keyword, or a keyword of the wrong shape, fails the check naming
 * its JSON pointer in the schema:
 *   "schema /properties/total: unsupported keyword \"format\""
 * (the root schema is named "schema: ...").  Schemas nest at most
 * SHEAF_JSCHEMA_MAX_DEPTH levels (the root is level 1); deeper is an error
 * both when checking and when validating, never a crash.
 *
 * Validation is deterministic and reports the first error, by a fixed walk:
 * at each value type, enum, then the keywords of its type (for objects:
 * required in its order, additionalProperties in the value's key order, then
 * each property in the schema's order; for arrays: minItems, maxItems, then
 * each element in order).  Errors name the path in the value, JSONPath
 * style ("$", "$.name", "$.list[2]", "$[\"odd key\"]"):
 *   "$.transactions[2]: expected string, got number"
 *   "$: missing required property \"account_number\""
 *   "$.kind: \"x\" is not one of the allowed values"
 * Integers and reals are both "number" in "got ...". */
#ifndef SHEAF_JSCHEMA_H
#define SHEAF_JSCHEMA_H

#include <stddef.h>
#include <jansson.h>
#include "sheaf/error.h"

#define SHEAF_JSCHEMA_MAX_DEPTH 32

/* Checks that schema uses only the supported subset (SHEAF_OK or
 * SHEAF_ERR_INVALID with the JSON pointer of the bad part in errstr). */
sheaf_err sheaf_jschema_check(const json_t *schema, char *errstr, size_t errlen);

/* Validates value against a schema that passed sheaf_jschema_check.
 * Returns SHEAF_OK or SHEAF_ERR_INVALID with the value path in errstr.  An
 * unchecked schema never crashes it, but keywords of the wrong shape are
 * then ignored. */
sheaf_err sheaf_jschema_validate(const json_t *schema, const json_t *value, char *errstr,
                                 size_t errlen);

/* The JSON type of v as a schema names it: "object", "array", "string",
 * "number", "boolean" or "null"; integers and reals are both "number".
 * For error messages ("got ..."); never NULL. */
const char *sheaf_json_type_name(const json_t *v);

/* Compares two JSON numbers: -1, 0 or 1.  Two integers compare exactly;
 * otherwise both are compared as doubles. */
int sheaf_json_num_cmp(const json_t *a, const json_t *b);

/* A metadata value as text, the one form every stage shows it in (prompt
 * variables meta.<key> in the worker and the reducer, group keys): a string
 * as it is, anything else as compact JSON with sorted keys (42, true,
 * ["a","b"]).  malloc'd; NULL when out of memory. */
char *sheaf_json_text(const json_t *v);

/* Replaces every value of the object obj that is not a string with
 * sheaf_json_text of it, so lookups can use json_string_value.  Returns 0,
 * or -1 when out of memory (obj then holds a mix). */
int sheaf_json_object_texts(json_t *obj);

#endif
