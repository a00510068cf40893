/* fuzz_llm_response.c - what comes back from an LLM provider: the
 * chat-completions body (sheaf_llm_parse_response), the classification of
 * an attempt by HTTP status (sheaf_llm_classify, which parses a 2xx body
 * and quotes the server's message of any other), and the response headers
 * that steer retries and the fleet's rate limiter (sheaf_llm_xfer_header,
 * sheaf_llm_parse_retry_after, sheaf_llm_parse_duration).
 *
 * Input: the response body.  Its first line (up to 200 bytes) is also used
 * as the value of the three headers sheaf reads, and as a raw header line.
 * Checks:
 *   - parsing returns OK with a NUL-terminated content and usage, RETRY only
 *     for a body that is not JSON, FATAL otherwise; never leaks;
 *   - classification agrees with the parser on a 200 and with the status
 *     table otherwise; its errstr never holds the API key, is valid UTF-8
 *     (it ends up in logs and in the JSON error record of a dead-lettered
 *     chunk, which jansson refuses to build from invalid UTF-8) and is one
 *     line (no control characters from the body);
 *   - header values parse to -1 or a bounded non-negative delay. */
#include "fuzz_common.h"

#include "llm_internal.h"
#include "sheaf/buf.h"
#include "sheaf/error.h"
#include "sheaf/llm.h"
#include "sheaf/util.h"

#define API_KEY "sk-fuzz-0123456789-secret"

/* redacted: errstr went through sheaf_llm_classify, which knows the key
 * (sheaf_llm_parse_response alone does not, and may quote a server that
 * echoes it). */
static void check_errstr(const char *errstr, int redacted)
{
    int printable = 1;
    for (const char *c = errstr; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) printable = 0;
    if (!printable || !sheaf_utf8_valid(errstr, strlen(errstr), NULL)) {
        fprintf(stderr, "errstr: ");
        for (const unsigned char *c = (const unsigned char *)errstr; *c; c++)
            fprintf(stderr, *c >= 0x20 && *c < 0x7f ? "%c" : "\\x%02x", *c);
        fputc('\n', stderr);
    }
    FUZZ_CHECK(!redacted || strstr(errstr, API_KEY) == NULL, "errstr never shows the API key");
    FUZZ_CHECK(sheaf_utf8_valid(errstr, strlen(errstr), NULL), "errstr is valid UTF-8");
    FUZZ_CHECK(printable, "errstr is one printable line");
}

static void check_parse(const uint8_t *data, size_t size)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    char *content = (char *)"unset";
    sheaf_llm_usage usage = {7, 7};
    sheaf_err err = sheaf_llm_parse_response((const char *)data, size, &content, &usage, errstr,
                                             sizeof(errstr));
    if (err == SHEAF_OK) {
        FUZZ_CHECK(content != NULL, "content on success");
        FUZZ_CHECK(sheaf_utf8_valid(content, strlen(content), NULL), "content is UTF-8");
        free(content);
    } else {
        FUZZ_CHECK(content == NULL, "no content on failure");
        FUZZ_CHECK(usage.prompt_tokens == 0 && usage.completion_tokens == 0, "usage cleared");
        FUZZ_CHECK(err == SHEAF_ERR_LLM_RETRY || err == SHEAF_ERR_LLM_FATAL,
                   "a bad body is RETRY or FATAL");
        FUZZ_CHECK(errstr[0] != '\0', "a bad body says why");
        check_errstr(errstr, 0);
    }
}

static void check_classify(const uint8_t *data, size_t size, long status)
{
    static char url[] = "http://127.0.0.1:8080/v1/chat/completions";
    static char key[] = API_KEY;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_llm_endpoint ep;
    sheaf_llm_xfer x;
    sheaf_llm_result res;
    sheaf_err err;

    memset(&ep, 0, sizeof(ep));
    ep.url = url;
    ep.api_key = key;
    ep.max_response_bytes = 1u << 20;
    memset(&res, 0, sizeof(res));
    res.retry_after_ms = -1;
    sheaf_llm_xfer_init(&x, ep.max_response_bytes);
    sheaf_llm_xfer_header(&x, "HTTP/1.1 429 Too Many Requests\r\n", 32);
    sheaf_llm_xfer_header(&x, "Retry-After: 2\r\n", 16);
    if (sheaf_buf_append(&x.body, data, size) != SHEAF_OK) x.body_overflow = 1;
    err = sheaf_llm_classify(&x, CURLE_OK, status, &ep, &res, errstr, sizeof(errstr));
    FUZZ_CHECK(res.http_status == status, "status recorded");
    if (status == 200) {
        FUZZ_CHECK((err == SHEAF_OK) == (res.content != NULL), "content iff OK");
    } else {
        FUZZ_CHECK(res.content == NULL, "no content from an error status");
        FUZZ_CHECK(err == (sheaf_llm_status_retryable(status) ? SHEAF_ERR_LLM_RETRY
                                                               : SHEAF_ERR_LLM_FATAL),
                   "error class follows the status");
        if (err == SHEAF_ERR_LLM_RETRY)
            FUZZ_CHECK(res.retry_after_ms == 2000, "Retry-After used on a retryable status");
    }
    if (err != SHEAF_OK) check_errstr(errstr, 1);
    sheaf_llm_result_clear(&res);
    sheaf_llm_xfer_free(&x);
}

static void check_headers(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"Retry-After: ", "x-ratelimit-remaining-requests: ",
                                        "X-RateLimit-Reset-Requests:", ""};
    const uint8_t *nl = size ? memchr(data, '\n', size) : NULL;
    size_t n = nl ? (size_t)(nl - data) : size;
    char line[256], *value;
    sheaf_llm_xfer x;
    int64_t ms;

    if (n > 200) n = 200;
    value = fuzz_strndup(data, n);
    ms = sheaf_llm_parse_retry_after(value);
    FUZZ_CHECK(ms >= -1, "Retry-After: -1 or a delay");
    ms = sheaf_llm_parse_duration(value);
    FUZZ_CHECK(ms >= -1 && ms <= 100000000000LL, "reset duration: -1 or at most ~3 years");
    free(value);

    sheaf_llm_xfer_init(&x, 1024);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t k = strlen(names[i]);
        memcpy(line, names[i], k);
        memcpy(line + k, data, n);
        memcpy(line + k + n, "\r\n", 2);
        /* Exactly the line's bytes, not NUL-terminated, as curl hands it. */
        char *exact = malloc(k + n + 2);
        if (!exact) abort();
        memcpy(exact, line, k + n + 2);
        sheaf_llm_xfer_header(&x, exact, k + n + 2);
        free(exact);
    }
    FUZZ_CHECK(x.hdr.retry_after_ms >= -1 && x.hdr.remaining_requests >= -1 &&
                   x.hdr.reset_requests_ms >= -1,
               "header values are -1 or non-negative");
    sheaf_llm_xfer_free(&x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Exactly size bytes, so an overread of the body is seen. */
    uint8_t *body = malloc(size ? size : 1);
    if (!body) abort();
    if (size) memcpy(body, data, size);
    check_parse(body, size);
    check_classify(body, size, 200);
    check_classify(body, size, 429);
    check_classify(body, size, 400);
    check_headers(body, size);
    free(body);
    return 0;
}
