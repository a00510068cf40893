/* llm_internal.h - what the LLM engine (llm_async.c) uses of the wire
 * format (llm_wire.c).  Not a public header: programs include sheaf/llm.h
 * or sheaf/llm_async.h; only common/llm*.c (and their unit tests and fuzz
 * targets) include this one.
 *
 * Everything about one HTTP attempt that does not depend on how it is
 * driven lives here, defined once in llm_wire.c: where requests go and how they
 * are authenticated (sheaf_llm_endpoint), the options every easy handle
 * carries, the receiving side of an attempt (capped body, the headers that
 * steer retries and rate limits), how an attempt's outcome is classified
 * (OK / RETRY / FATAL, errstr scrubbed of the API key), and the retry delay
 * (exponential backoff with full jitter, or the server's Retry-After). */
#ifndef SHEAF_LLM_INTERNAL_H
#define SHEAF_LLM_INTERNAL_H

#include <curl/curl.h>
#include <stddef.h>
#include <stdint.h>

#include "sheaf/buf.h"
#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/llm.h"

#define SHEAF_LLM_BACKOFF_CAP_MS 30000      /* ceiling of one backoff delay */
#define SHEAF_LLM_RETRY_AFTER_CAP_MS 300000 /* a longer Retry-After is cut to this */

/* Where requests go, how they are authenticated and bounded, from llm.*
 * settings (copied: the config need not outlive it). */
typedef struct sheaf_llm_endpoint {
    char *url;                  /* owned: base_url without trailing '/' + /chat/completions */
    struct curl_slist *headers; /* owned; may hold the Authorization line */
    char *api_key;              /* owned copy, only to scrub error text; NULL if unset */
    long timeout_ms;            /* llm.timeout_ms, whole request (0: none) */
    long connect_timeout_ms;    /* llm.connect_timeout_ms (0: curl's default) */
    size_t max_response_bytes;  /* llm.max_response_bytes, > 0 */
} sheaf_llm_endpoint;

/* Initializes libcurl once per process and fills ep (zeroed by the caller
 * or not: it is overwritten).  Checks llm.base_url and
 * llm.max_response_bytes; never echoes the API key.  On failure ep holds
 * nothing to free, though sheaf_llm_endpoint_free(ep) is still safe. */
sheaf_err sheaf_llm_endpoint_init(sheaf_llm_endpoint *ep, const sheaf_config *cfg, char *errstr,
                                  size_t errlen);
/* Wipes the key and the Authorization line, frees, zeroes ep. */
void sheaf_llm_endpoint_free(sheaf_llm_endpoint *ep);

/* Response headers that steer retries and the fleet's rate limiter. */
typedef struct sheaf_llm_resp_headers {
    int64_t retry_after_ms;     /* Retry-After, else -1 */
    int64_t remaining_requests; /* x-ratelimit-remaining-requests, else -1 */
    int64_t reset_requests_ms;  /* x-ratelimit-reset-requests, else -1 */
    int64_t limit_requests;     /* x-ratelimit-limit-requests (per minute), else -1 */
    int64_t limit_tokens;       /* x-ratelimit-limit-tokens (per minute), else -1 */
    int64_t remaining_tokens;   /* x-ratelimit-remaining-tokens, else -1 */
    int64_t reset_tokens_ms;    /* x-ratelimit-reset-tokens, else -1 */
} sheaf_llm_resp_headers;

/* The receiving side of one attempt; one per easy handle, reused. */
typedef struct sheaf_llm_xfer {
    sheaf_buf body;                   /* capped at llm.max_response_bytes */
    int body_overflow;                /* the cap was hit; curl stopped the transfer */
    sheaf_llm_resp_headers hdr;
    char errbuf[CURL_ERROR_SIZE];     /* curl's detail of a transport failure */
} sheaf_llm_xfer;

void sheaf_llm_xfer_init(sheaf_llm_xfer *x, size_t max_body);
/* Prepares x for the next attempt, keeping the body allocation. */
void sheaf_llm_xfer_reset(sheaf_llm_xfer *x);
void sheaf_llm_xfer_free(sheaf_llm_xfer *x);

/* Reads one response header line, as curl hands it to the header callback
 * (data[0..n), not NUL-terminated, line ending included), into x->hdr: a
 * status line resets it; Retry-After and x-ratelimit-{limit,remaining,
 * reset}-{requests,tokens} are parsed, anything else ignored.  The header
 * callback set by sheaf_llm_easy_setup is this function; it is here so the
 * parsing can be fuzzed without a network. */
void sheaf_llm_xfer_header(sheaf_llm_xfer *x, const char *data, size_t n);

/* Sets the options every LLM easy handle carries: URL and headers of ep
 * (borrowed: ep must outlive the handle), POST, the timeouts, keep-alive,
 * body and header callbacks writing into x (borrowed likewise), the error
 * buffer, http(s) only. */
CURLcode sheaf_llm_easy_setup(CURL *curl, const sheaf_llm_endpoint *ep, sheaf_llm_xfer *x);
/* Points the handle at a request body.  curl does not copy it: body must
 * stay alive until the transfer is over. */
CURLcode sheaf_llm_easy_body(CURL *curl, const char *body, size_t len);

/* Classifies a finished attempt (curl's rc, the HTTP status, what x
 * received).  Fills result->http_status, ->retry_after_ms (for a
 * retryable HTTP status) and, on SHEAF_OK, ->content (malloc'd, the
 * caller's) and ->usage.  errstr names the failure, never the API key. */
sheaf_err sheaf_llm_classify(const sheaf_llm_xfer *x, CURLcode rc, long status,
                             const sheaf_llm_endpoint *ep, sheaf_llm_result *result,
                             char *errstr, size_t errlen);

/* 1 when a curl failure is worth another try (network or server trouble). */
int sheaf_llm_curl_retryable(CURLcode rc);
/* 1 for the retryable HTTP statuses: 429, 408, 409, 5xx. */
int sheaf_llm_status_retryable(long status);

/* Checks what a request would send (model, temperature, messages, UTF-8);
 * SHEAF_ERR_LLM_FATAL with errstr because resending cannot help. */
sheaf_err sheaf_llm_check_request(const sheaf_llm_request *req, char *errstr, size_t errlen);

/* Upper bound of the backoff before retry number `attempt` (1 = after the
 * first attempt): base_ms * 2^(attempt-1), capped at 30 s. */
int64_t sheaf_llm_backoff_ceiling(int base_ms, int attempt);
/* The wait before the next attempt: full jitter, a random delay in
 * [0, sheaf_llm_backoff_ceiling()], or retry_after_ms (capped at 300 s)
 * when that is longer: the server knows its load better than our guess. */
int64_t sheaf_llm_retry_delay(int base_ms, int attempt, int64_t retry_after_ms);

/* Parses a duration as OpenAI's x-ratelimit-reset-* headers write it: Go
 * style units "1h", "6m0s", "1.5s", "250ms" (also "us"/"µs", "ns"), or bare
 * seconds ("2", "0.5").  Rounded up to whole milliseconds; -1 if
 * unparseable. */
int64_t sheaf_llm_parse_duration(const char *value);

#endif
