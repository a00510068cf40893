/* sheaf/llm.h - OpenAI-compatible chat completions: the request, the
 * answer, and their wire format (common/llm/llm_wire.c).  The client is the
 * asynchronous engine, sheaf/llm_async.h.
 *
 * POST {llm.base_url}/chat/completions with a JSON body
 * {"model","messages":[{"role","content"}],"temperature","max_tokens"},
 * plus, when the request has a JSON schema, OpenAI's structured output
 * "response_format": {"type": "json_schema", "json_schema": {"name":
 * "sheaf_map", "strict": false, "schema": <schema>}} (strict false: strict
 * mode demands every property required and additionalProperties false,
 * which sheaf's schema subset does not; the answer is checked by the caller
 * with sheaf_jschema_validate instead);
 * reads choices[0].message.content and usage.{prompt,completion}_tokens.
 * The API key is sent as "Authorization: Bearer ..." and never logged.
 *
 * Building the body and parsing the answer are separate pure functions so
 * they can be unit-tested and fuzzed without a network.
 *
 * Error classes (what a caller does next):
 *   SHEAF_ERR_LLM_RETRY  429, 408, 409, 5xx, timeout, connection failure or
 *                        reset, an empty or truncated body: try again later
 *                        (retry_after_ms set from Retry-After when given);
 *   SHEAF_ERR_LLM_FATAL  other 4xx (bad request, auth, not found, context too
 *                        long), a 2xx whose body is not a valid completion:
 *                        retrying the same request will not help.  Note a
 *                        malformed 2xx body is treated as RETRY once the
 *                        parser says the JSON itself is broken (servers
 *                        under load do cut bodies), FATAL when the JSON is
 *                        valid but has no content. */
#ifndef SHEAF_LLM_H
#define SHEAF_LLM_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "sheaf/config.h"
#include "sheaf/error.h"

typedef struct sheaf_llm_message {
    const char *role;     /* "system", "user", "assistant" */
    const char *content;
} sheaf_llm_message;

typedef struct sheaf_llm_request {
    const char *model;
    double temperature;
    int max_tokens;                  /* <= 0: not sent */
    const sheaf_llm_message *messages;
    size_t n_messages;
    const json_t *json_schema;       /* NULL: free text; else an object schema,
                                      * sent as response_format (copied into
                                      * the body: not kept after the call) */
} sheaf_llm_request;

typedef struct sheaf_llm_usage {
    uint64_t prompt_tokens;
    uint64_t completion_tokens;
} sheaf_llm_usage;

typedef struct sheaf_llm_result {
    char *content;          /* owned by the caller after success: free() */
    sheaf_llm_usage usage;
    long http_status;       /* last HTTP status seen (0: none) */
    int64_t retry_after_ms; /* from Retry-After on 429/503, else -1 */
    int attempts;           /* HTTP attempts made */
} sheaf_llm_result;

/* Returns a malloc'd JSON body for req (compact, keys sorted, reals with 15
 * significant digits: the same request always gives the same bytes; keys
 * inside json_schema are sorted too), or NULL on allocation failure, a
 * string that is not valid UTF-8, a temperature that is not finite or a
 * json_schema that is not a JSON object.  Without json_schema the body has
 * no "response_format" key. */
char *sheaf_llm_request_json(const sheaf_llm_request *req);

/* Parses a chat-completion response body.  On success *content is a
 * malloc'd NUL-terminated string.  Errors: SHEAF_ERR_LLM_RETRY when the body
 * is not valid JSON (truncated), SHEAF_ERR_LLM_FATAL when it is JSON without
 * choices[0].message.content as a string, or carries an "error" object. */
sheaf_err sheaf_llm_parse_response(const char *body, size_t len, char **content,
                                   sheaf_llm_usage *usage, char *errstr, size_t errlen);

/* Parses a Retry-After header value (delta seconds, possibly fractional and
 * rounded up to the next millisecond, or an HTTP date; a date in the past
 * gives 0) into milliseconds from now; -1 if unparseable. */
int64_t sheaf_llm_parse_retry_after(const char *value);

/* Frees result->content and zeroes the result. */
void sheaf_llm_result_clear(sheaf_llm_result *result);

#endif
