/* llm_wire.c - the wire format of OpenAI-compatible chat completions
 * over libcurl: what one HTTP attempt sends, receives and means.  See
 * sheaf/llm.h (request and response) and llm_internal.h (the rest).
 *
 * The request body and the response parsing are pure functions (no curl),
 * so they are unit-tested and fuzzed on their own.  The rest is what the
 * one LLM client, the asynchronous engine (llm_async.c), needs of an
 * attempt: endpoint and header setup, the receiving side (capped body, the
 * headers that steer retries and rate limits), classification of its
 * outcome, retry delays.  (A synchronous client lived here too; it was
 * deleted when the worker moved onto the runtime: one client, its tests
 * moved to the engine.)
 *
 * Secrets: the API key lives only in the Authorization header list and in
 * a private copy used to scrub error text; both are wiped on free.  It is
 * never formatted into errstr or a log line (curl's verbose mode, which would
 * print headers, is never turned on). */
#include "sheaf/error.h"
#include "sheaf/llm.h"

#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "llm_internal.h"
#include "sheaf/buf.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

#define LLM_SLEEP_SLICE_MS 100        /* how often a backoff wait looks at *stop */
#define LLM_SERVER_MSG_MAX 300        /* bytes of a server's error message kept */
#define LLM_MIN_REDACT_LEN 4          /* shorter keys are not scrubbed (too many false hits) */
#define LLM_HEADER_VALUE_MAX 128      /* longer values of the headers we read are ignored */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* Overwrites every occurrence of secret in s with '*'. */
static void redact(char *s, const char *secret)
{
    size_t n = secret ? strlen(secret) : 0;
    char *p;
    if (!s || n < LLM_MIN_REDACT_LEN) return;
    while ((p = strstr(s, secret)) != NULL) memset(p, '*', n);
}

/* Zeroes and frees a string holding a secret. */
static void free_secret(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

/* ---- request body ---------------------------------------------------- */

/* OpenAI's structured-output object around schema (a copy: the caller's
 * schema is const and outlives nothing of ours).  strict is false because
 * strict mode requires every property listed in "required" and
 * additionalProperties false at every level, which sheaf's schemas need not
 * meet; the caller validates the answer itself.  NULL on a schema that is
 * not an object or no memory. */
static json_t *response_format(const json_t *schema)
{
    json_t *copy = json_is_object(schema) ? json_deep_copy(schema) : NULL, *rf;
    if (!copy) return NULL;
    /* "O" adds a reference (rf holds its own), so copy is ours to drop
     * whether packing worked or not. */
    rf = json_pack("{s:s, s:{s:s, s:b, s:O}}", "type", "json_schema", "json_schema", "name",
                   "sheaf_map", "strict", 0, "schema", copy);
    json_decref(copy);
    return rf;
}

/* The body is written here, not built as a jansson object and dumped:
 * json_dumps cost ~60,000 instructions for a body of a few hundred bytes
 * (20 % of a worker's at zero latency, callgrind).  The bytes are exactly
 * what json_dumps(JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15))
 * gave for the object the earlier code built (the LLM cache hashes them;
 * tests/unit/test_llm.c compares both on many inputs): keys in sorted
 * order, strings escaped as jansson does (", \, control characters; no
 * '/' and no non-ASCII escaped, \u00XX in upper case), the temperature as
 * jansson's real.  Only response_format is still dumped by jansson. */

/* Appends s as a JSON string; -1 when it is not valid UTF-8 (jansson's
 * json_string refused those) or no memory. */
static int body_string(sheaf_buf *b, const char *s)
{
    return sheaf_buf_json_string(b, s, strlen(s)) == SHEAF_OK ? 0 : -1;
}

/* Appends v as jansson writes a real at precision 15 (jsonp_dtostr): %.15g
 * in the C locale's notation, ".0" when neither '.' nor 'e' came out, no
 * '+' and no leading zeros in the exponent.  -1 when v is not finite
 * (json_real refused those). */
static int body_real(sheaf_buf *b, double v)
{
    char buf[64], *start, *end;
    const char *point = localeconv()->decimal_point;
    int ret;
    size_t length;
    if (!isfinite(v)) return -1;
    ret = snprintf(buf, sizeof(buf), "%.15g", v);
    if (ret < 0 || (size_t)ret >= sizeof(buf) - 3) return -1;
    length = (size_t)ret;
    if (*point != '.' && (start = strchr(buf, *point)) != NULL) *start = '.';
    if (!strchr(buf, '.') && !strchr(buf, 'e')) {
        memcpy(buf + length, ".0", 3);
        length += 2;
    }
    if ((start = strchr(buf, 'e')) != NULL) {
        start++;
        end = start + 1;
        if (*start == '-') start++;
        while (*end == '0') end++;
        if (end != start) {
            memmove(start, end, length - (size_t)(end - buf) + 1);
            length -= (size_t)(end - start);
        }
    }
    return sheaf_buf_append(b, buf, length) == SHEAF_OK ? 0 : -1;
}

char *sheaf_llm_request_json(const sheaf_llm_request *req)
{
    sheaf_buf b;
    char *rf_text = NULL, *out = NULL;
    int bad = 0;

    if (!req) return NULL;
    /* response_format first: a schema that is not an object fails the
     * whole body, as it did. */
    if (req->json_schema) {
        json_t *rf = response_format(req->json_schema);
        if (!rf) return NULL;
        rf_text = json_dumps(rf, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
        json_decref(rf);
        if (!rf_text) return NULL;
    }
    sheaf_buf_init(&b, (size_t)-1);
    bad |= sheaf_buf_append(&b, "{", 1) != SHEAF_OK;
    if (req->max_tokens > 0)
        bad |= sheaf_buf_appendf(&b, "\"max_tokens\":%d,", req->max_tokens) != SHEAF_OK;
    bad |= sheaf_buf_appends(&b, "\"messages\":[") != SHEAF_OK;
    for (size_t i = 0; i < req->n_messages && !bad; i++) {
        const sheaf_llm_message *m = &req->messages[i];
        bad |= sheaf_buf_appends(&b, i ? ",{\"content\":" : "{\"content\":") != SHEAF_OK ||
               body_string(&b, m->content ? m->content : "") != 0 ||
               sheaf_buf_appends(&b, ",\"role\":") != SHEAF_OK ||
               body_string(&b, m->role ? m->role : "user") != 0 ||
               sheaf_buf_append(&b, "}", 1) != SHEAF_OK;
    }
    bad |= bad || sheaf_buf_appends(&b, "],\"model\":") != SHEAF_OK ||
           body_string(&b, req->model ? req->model : "") != 0;
    if (rf_text)
        bad |= bad || sheaf_buf_appends(&b, ",\"response_format\":") != SHEAF_OK ||
               sheaf_buf_appends(&b, rf_text) != SHEAF_OK;
    bad |= bad || sheaf_buf_appends(&b, ",\"temperature\":") != SHEAF_OK ||
           body_real(&b, req->temperature) != 0 || sheaf_buf_append(&b, "}", 1) != SHEAF_OK;
    if (!bad) {
        size_t len = b.len;
        /* To its size: the buffer grew by doubling, and a body lives as
         * long as its call (two windows of them in a worker). */
        char *shrunk;
        if ((out = sheaf_buf_steal(&b)) && (shrunk = realloc(out, len + 1))) out = shrunk;
    }
    sheaf_buf_free(&b);
    free(rf_text);
    return out;
}

/* ---- response parsing -------------------------------------------------- */

/* Copies s[0..n) into out, cut to LLM_SERVER_MSG_MAX on a UTF-8 boundary,
 * control characters turned into spaces so it stays one log line.  A byte
 * that does not begin a valid UTF-8 sequence becomes '?': the text comes
 * from the server (an HTML error page, a cut body) and ends up in errstr,
 * hence in logs and in a failed chunk's JSON error record, which jansson
 * refuses to build from invalid UTF-8 (the reason was silently lost). */
static void copy_message(const char *s, size_t n, char *out, size_t outlen)
{
    size_t i = 0;
    if (outlen == 0) return;
    if (n > LLM_SERVER_MSG_MAX) n = sheaf_utf8_boundary(s, LLM_SERVER_MSG_MAX);
    if (n > outlen - 1) n = sheaf_utf8_boundary(s, outlen - 1);
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
        if (len > 1 && len <= n - i && sheaf_utf8_valid(s + i, len, NULL)) {
            memcpy(out + i, s + i, len);
            i += len;
            continue;
        }
        out[i++] = len == 0 || len > 1 ? '?' : (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[i] = '\0';
}

/* The human-readable error of a JSON error body: error.message, error (a
 * string), message or detail; NULL when none is there. */
static const char *json_error_message(json_t *root, size_t *len)
{
    json_t *e = json_object_get(root, "error");
    json_t *m = NULL;
    if (json_is_object(e)) m = json_object_get(e, "message");
    else if (json_is_string(e)) m = e;
    if (!json_is_string(m)) m = json_object_get(root, "message");
    if (!json_is_string(m)) m = json_object_get(root, "detail");
    if (!json_is_string(m)) return NULL;
    *len = json_string_length(m);
    return json_string_value(m);
}

/* The server's explanation of a failed request, for errstr: the message
 * of a JSON error body, else the start of the body itself. */
static void server_message(const char *body, size_t len, char *out, size_t outlen)
{
    json_t *root = NULL;
    const char *msg = NULL;
    size_t mlen = 0;

    if (!body || len == 0) {
        copy_message("(empty body)", 12, out, outlen);
        goto done;
    }
    root = json_loadb(body, len, 0, NULL);
    if (json_is_object(root)) msg = json_error_message(root, &mlen);
    if (msg) copy_message(msg, mlen, out, outlen);
    else copy_message(body, len, out, outlen);
done:
    json_decref(root);
}

static uint64_t usage_field(json_t *usage, const char *key)
{
    json_t *v = json_object_get(usage, key);
    if (json_is_integer(v) && json_integer_value(v) > 0) return (uint64_t)json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) > 0 && json_real_value(v) < 1e18)
        return (uint64_t)json_real_value(v);
    return 0;
}

/* ---- the answer's fast path ----
 *
 * jansson's json_loadb built a tree of every field of the answer to read
 * three of them: ~60,000 instructions per answer, a fifth of a worker's at
 * zero latency.  fast_parse reads the usual answer in one pass without a
 * tree, and answers only when it is sure to give what jansson's path gives:
 * it accepts a strict subset of JSON (an object at the top; strings of
 * valid UTF-8 without control characters, \uXXXX escapes but \u0000 and
 * lone surrogate halves, keys without escapes; integers of at most 18
 * digits; at most FAST_DEPTH levels), with no "error" key, no repeated
 * key among those it reads, choices[0].message.content a string and
 * usage's counts integers.  Anything else, valid or not, goes to jansson's
 * path, which also words every error.  tests/unit/test_llm.c compares both
 * paths on answers, their prefixes and mutations. */

#define FAST_DEPTH 32

typedef struct fast_ctx {
    const char *p, *end;
    int depth;
} fast_ctx;

static void fast_ws(fast_ctx *x)
{
    while (x->p < x->end && (*x->p == ' ' || *x->p == '\t' || *x->p == '\n' || *x->p == '\r'))
        x->p++;
}

static int fast_hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : 16u;
        if (d > 15) return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

/* A string at x->p (at its opening quote).  out: its decoded bytes (NULL:
 * only checked); *raw, *raw_len: its bytes between the quotes when it has
 * no escape (keys), else *raw is NULL.  -1: not in the subset. */
static int fast_string(fast_ctx *x, sheaf_buf *out, const char **raw, size_t *raw_len)
{
    const char *run, *q;
    int escaped = 0;
    if (x->p >= x->end || *x->p != '"') return -1;
    run = ++x->p;
    for (q = run; q < x->end; q++) {
        unsigned char c = (unsigned char)*q;
        if (c == '"' || c == '\\') {
            if (!sheaf_utf8_valid(run, (size_t)(q - run), NULL) ||
                (out && sheaf_buf_append(out, run, (size_t)(q - run)) != SHEAF_OK))
                return -1;
            if (c == '"') break;
            if (q + 1 >= x->end) return -1;
            escaped = 1;
            char e = q[1], one = 0;
            unsigned v;
            switch (e) {
            case '"': one = '"'; break;
            case '\\': one = '\\'; break;
            case '/': one = '/'; break;
            case 'b': one = '\b'; break;
            case 'f': one = '\f'; break;
            case 'n': one = '\n'; break;
            case 'r': one = '\r'; break;
            case 't': one = '\t'; break;
            case 'u': break;
            default: return -1;
            }
            if (e != 'u') {
                if (out && sheaf_buf_append(out, &one, 1) != SHEAF_OK) return -1;
                q += 1;
            } else {
                char u8[4];
                size_t n;
                unsigned lo;
                if (x->end - q < 6 || fast_hex4(q + 2, &v) != 0 || v == 0 ||
                    (v >= 0xDC00 && v <= 0xDFFF))
                    return -1;
                if (v >= 0xD800 && v <= 0xDBFF) {
                    /* A pair: the low half must follow at once. */
                    if (x->end - q < 12 || q[6] != '\\' || q[7] != 'u' ||
                        fast_hex4(q + 8, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return -1;
                    v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
                    q += 6;
                }
                if (v < 0x80) {
                    u8[0] = (char)v;
                    n = 1;
                } else if (v < 0x800) {
                    u8[0] = (char)(0xC0 | v >> 6);
                    u8[1] = (char)(0x80 | (v & 0x3F));
                    n = 2;
                } else if (v < 0x10000) {
                    u8[0] = (char)(0xE0 | v >> 12);
                    u8[1] = (char)(0x80 | ((v >> 6) & 0x3F));
                    u8[2] = (char)(0x80 | (v & 0x3F));
                    n = 3;
                } else {
                    u8[0] = (char)(0xF0 | v >> 18);
                    u8[1] = (char)(0x80 | ((v >> 12) & 0x3F));
                    u8[2] = (char)(0x80 | ((v >> 6) & 0x3F));
                    u8[3] = (char)(0x80 | (v & 0x3F));
                    n = 4;
                }
                if (out && sheaf_buf_append(out, u8, n) != SHEAF_OK) return -1;
                q += 5;
            }
            run = q + 1;
        } else if (c < 0x20) {
            return -1;
        }
    }
    if (q >= x->end) return -1;
    if (raw) {
        *raw = escaped ? NULL : x->p;
        *raw_len = (size_t)(q - x->p);
    }
    x->p = q + 1;
    return 0;
}

/* A number: *integer 1 with *value when it has no fraction or exponent
 * (at most 18 digits), 0 for a real.  -1: not in the subset. */
static int fast_number(fast_ctx *x, int *integer, long long *value)
{
    const char *p = x->p, *digits;
    int neg = 0;
    *integer = 1;
    *value = 0;
    if (p < x->end && *p == '-') {
        neg = 1;
        p++;
    }
    digits = p;
    if (p < x->end && *p == '0') p++;
    else if (p < x->end && *p >= '1' && *p <= '9')
        while (p < x->end && *p >= '0' && *p <= '9') p++;
    else return -1;
    if (p - digits > 18) return -1;
    for (const char *d = digits; d < p; d++) *value = *value * 10 + (*d - '0');
    if (neg) *value = -*value;
    if (p < x->end && *p == '.') {
        *integer = 0;
        const char *f = ++p;
        while (p < x->end && *p >= '0' && *p <= '9') p++;
        if (p == f || p - f > 18) return -1;
    }
    if (p < x->end && (*p == 'e' || *p == 'E')) {
        *integer = 0;
        p++;
        if (p < x->end && (*p == '+' || *p == '-')) p++;
        const char *e = p;
        while (p < x->end && *p >= '0' && *p <= '9') p++;
        if (p == e || p - e > 2) return -1;
    }
    x->p = p;
    return 0;
}

static int fast_value(fast_ctx *x);

/* An object or array to skip, at its opening bracket. */
static int fast_container(fast_ctx *x)
{
    char close = *x->p == '{' ? '}' : ']';
    int object = close == '}';
    if (++x->depth > FAST_DEPTH) return -1;
    x->p++;
    fast_ws(x);
    if (x->p < x->end && *x->p == close) {
        x->p++;
        x->depth--;
        return 0;
    }
    for (;;) {
        if (object) {
            if (fast_string(x, NULL, NULL, NULL) != 0) return -1;
            fast_ws(x);
            if (x->p >= x->end || *x->p != ':') return -1;
            x->p++;
            fast_ws(x);
        }
        if (fast_value(x) != 0) return -1;
        fast_ws(x);
        if (x->p < x->end && *x->p == ',') {
            x->p++;
            fast_ws(x);
            continue;
        }
        if (x->p < x->end && *x->p == close) {
            x->p++;
            x->depth--;
            return 0;
        }
        return -1;
    }
}

/* Any value, checked and skipped. */
static int fast_value(fast_ctx *x)
{
    int integer;
    long long v;
    size_t left;
    if (x->p >= x->end) return -1;
    left = (size_t)(x->end - x->p);
    switch (*x->p) {
    case '"': return fast_string(x, NULL, NULL, NULL);
    case '{':
    case '[': return fast_container(x);
    case 't': if (left >= 4 && memcmp(x->p, "true", 4) == 0) { x->p += 4; return 0; } return -1;
    case 'f': if (left >= 5 && memcmp(x->p, "false", 5) == 0) { x->p += 5; return 0; } return -1;
    case 'n': if (left >= 4 && memcmp(x->p, "null", 4) == 0) { x->p += 4; return 0; } return -1;
    default: return fast_number(x, &integer, &v);
    }
}

/* Walks the object at x->p, calling on_key for each key (its raw bytes;
 * NULL when escaped) with x->p at the value; on_key consumes the value and
 * returns 0, or -1 to give up. */
typedef int (*fast_key_fn)(fast_ctx *x, const char *key, size_t klen, void *ud);

static int fast_object(fast_ctx *x, fast_key_fn on_key, void *ud)
{
    const char *key;
    size_t klen;
    if (x->p >= x->end || *x->p != '{' || ++x->depth > FAST_DEPTH) return -1;
    x->p++;
    fast_ws(x);
    if (x->p < x->end && *x->p == '}') {
        x->p++;
        x->depth--;
        return 0;
    }
    for (;;) {
        if (fast_string(x, NULL, &key, &klen) != 0 || !key) return -1;
        fast_ws(x);
        if (x->p >= x->end || *x->p != ':') return -1;
        x->p++;
        fast_ws(x);
        if (on_key(x, key, klen, ud) != 0) return -1;
        fast_ws(x);
        if (x->p < x->end && *x->p == ',') {
            x->p++;
            fast_ws(x);
            continue;
        }
        if (x->p < x->end && *x->p == '}') {
            x->p++;
            x->depth--;
            return 0;
        }
        return -1;
    }
}

#define FAST_KEY(lit) (klen == sizeof(lit) - 1 && memcmp(key, lit, klen) == 0)

typedef struct fast_answer {
    sheaf_buf content;
    int seen_choices, seen_usage, seen_message, seen_content, seen_prompt, seen_completion;
    uint64_t prompt_tokens, completion_tokens;
} fast_answer;

static int fast_message_key(fast_ctx *x, const char *key, size_t klen, void *ud)
{
    fast_answer *a = ud;
    if (!FAST_KEY("content")) return fast_value(x);
    if (a->seen_content++) return -1;
    return fast_string(x, &a->content, NULL, NULL);
}

static int fast_choice_key(fast_ctx *x, const char *key, size_t klen, void *ud)
{
    fast_answer *a = ud;
    if (!FAST_KEY("message")) return fast_value(x);
    if (a->seen_message++) return -1;
    return fast_object(x, fast_message_key, a);
}

static int fast_usage_key(fast_ctx *x, const char *key, size_t klen, void *ud)
{
    fast_answer *a = ud;
    uint64_t *field;
    int integer;
    long long v;
    if (FAST_KEY("prompt_tokens")) {
        if (a->seen_prompt++) return -1;
        field = &a->prompt_tokens;
    } else if (FAST_KEY("completion_tokens")) {
        if (a->seen_completion++) return -1;
        field = &a->completion_tokens;
    } else {
        return fast_value(x);
    }
    if (x->p < x->end && (*x->p == '-' || (*x->p >= '0' && *x->p <= '9'))) {
        if (fast_number(x, &integer, &v) != 0 || !integer) return -1; /* a real: jansson's rule */
        *field = v > 0 ? (uint64_t)v : 0;
        return 0;
    }
    return fast_value(x); /* not a number: 0, as usage_field says */
}

static int fast_root_key(fast_ctx *x, const char *key, size_t klen, void *ud)
{
    fast_answer *a = ud;
    if (FAST_KEY("error")) return -1;
    if (FAST_KEY("usage")) {
        if (a->seen_usage++) return -1;
        if (x->p < x->end && *x->p == '{') return fast_object(x, fast_usage_key, a);
        return fast_value(x);
    }
    if (!FAST_KEY("choices")) return fast_value(x);
    if (a->seen_choices++ || x->p >= x->end || *x->p != '[' || ++x->depth > FAST_DEPTH)
        return -1;
    x->p++;
    fast_ws(x);
    /* The first element is the choice; the others are only checked. */
    if (fast_object(x, fast_choice_key, a) != 0) return -1;
    for (;;) {
        fast_ws(x);
        if (x->p < x->end && *x->p == ']') {
            x->p++;
            x->depth--;
            return 0;
        }
        if (x->p >= x->end || *x->p != ',') return -1;
        x->p++;
        fast_ws(x);
        if (fast_value(x) != 0) return -1;
    }
}

/* 1 with *content (owned) and usage when the answer is the usual kind;
 * 0 when jansson's path must decide. */
static int fast_parse(const char *body, size_t len, char **content, sheaf_llm_usage *usage)
{
    fast_answer a;
    fast_ctx x = {body, body + len, 0};
    memset(&a, 0, sizeof(a));
    sheaf_buf_init(&a.content, (size_t)-1);
    fast_ws(&x);
    if (fast_object(&x, fast_root_key, &a) != 0 || (fast_ws(&x), x.p != x.end) ||
        !a.seen_choices || !a.seen_message || !a.seen_content ||
        !(*content = sheaf_buf_steal(&a.content))) {
        sheaf_buf_free(&a.content);
        return 0;
    }
    if (usage) {
        usage->prompt_tokens = a.prompt_tokens;
        usage->completion_tokens = a.completion_tokens;
    }
    return 1;
}

sheaf_err sheaf_llm_parse_response(const char *body, size_t len, char **content,
                                   sheaf_llm_usage *usage, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_ERR_LLM_FATAL;
    json_error_t jerr;
    json_t *root = NULL, *choices, *choice, *message, *text;
    char msg[LLM_SERVER_MSG_MAX + 1];
    const char *emsg;
    size_t elen = 0;

    *content = NULL;
    if (usage) usage->prompt_tokens = usage->completion_tokens = 0;
    if (!body || len == 0) {
        err = SHEAF_ERR_LLM_RETRY;
        sheaf_set_err(errstr, errlen, "empty response body");
        goto done;
    }
    /* Any valid JSON must parse (JSON_DECODE_ANY: a bare "null" is not a
     * truncated body), including a "\u0000" in the content (JSON_ALLOW_NUL):
     * only broken JSON is retried. */
    if (fast_parse(body, len, content, usage)) return SHEAF_OK;
    root = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        err = SHEAF_ERR_LLM_RETRY;
        /* jansson quotes the bytes near the error ("near '<byte>'"), which
         * may be control characters: through copy_message like all text
         * that comes from the server. */
        copy_message(jerr.text, strlen(jerr.text), msg, sizeof(msg));
        sheaf_set_err(errstr, errlen, "response is not valid JSON (%zu bytes): %s at offset %d", len,
                msg, jerr.position);
        goto done;
    }
    if (!json_is_object(root)) {
        sheaf_set_err(errstr, errlen, "response is JSON but not an object");
        goto done;
    }
    if (json_object_get(root, "error") && !json_is_null(json_object_get(root, "error"))) {
        emsg = json_error_message(root, &elen);
        if (emsg) copy_message(emsg, elen, msg, sizeof(msg));
        else copy_message("(no message)", 12, msg, sizeof(msg));
        sheaf_set_err(errstr, errlen, "response carries an error: %s", msg);
        goto done;
    }
    choices = json_object_get(root, "choices");
    if (!json_is_array(choices) || json_array_size(choices) == 0) {
        sheaf_set_err(errstr, errlen, "response has no \"choices\" array with an element");
        goto done;
    }
    choice = json_array_get(choices, 0);
    message = json_object_get(choice, "message");
    if (!json_is_object(message)) {
        sheaf_set_err(errstr, errlen, "response has no choices[0].message object");
        goto done;
    }
    text = json_object_get(message, "content");
    if (!json_is_string(text)) {
        json_t *reason = json_object_get(choice, "finish_reason");
        /* The server's text: through copy_message, so a newline or a huge
         * value in finish_reason cannot break the log line or errstr. */
        if (json_is_string(reason))
            copy_message(json_string_value(reason), json_string_length(reason), msg, sizeof(msg));
        else
            copy_message("unknown", 7, msg, sizeof(msg));
        sheaf_set_err(errstr, errlen, "choices[0].message.content is %s (finish_reason %s)",
                !text ? "missing" : json_is_null(text) ? "null" : "not a string", msg);
        goto done;
    }
    if (strlen(json_string_value(text)) != json_string_length(text)) {
        sheaf_set_err(errstr, errlen, "choices[0].message.content contains a NUL character");
        goto done;
    }
    *content = sheaf_strndup(json_string_value(text), json_string_length(text));
    if (!*content) {
        err = SHEAF_ERR_NOMEM;
        sheaf_set_err(errstr, errlen, "out of memory copying the response content");
        goto done;
    }
    if (usage) {
        json_t *u = json_object_get(root, "usage");
        usage->prompt_tokens = usage_field(u, "prompt_tokens");
        usage->completion_tokens = usage_field(u, "completion_tokens");
    }
    err = SHEAF_OK;
done:
    json_decref(root);
    return err;
}

/* ---- Retry-After --------------------------------------------------------- */

int64_t sheaf_llm_parse_retry_after(const char *value)
{
    char buf[128];
    size_t n;
    int64_t ms = -1;
    const char *p;

    if (!value) goto done;
    while (*value == ' ' || *value == '\t') value++;
    n = strlen(value);
    while (n > 0 && strchr(" \t\r\n", value[n - 1])) n--;
    if (n == 0 || n >= sizeof(buf)) goto done;
    memcpy(buf, value, n);
    buf[n] = '\0';

    if ((buf[0] >= '0' && buf[0] <= '9') || buf[0] == '.') {
        /* delta-seconds, parsed by hand (strtod would follow the locale);
         * fractions are rounded up so we never come back early. */
        int64_t secs = 0, frac = 0, scale = 100;
        int digits = 0, round_up = 0;
        for (p = buf; *p >= '0' && *p <= '9'; p++, digits++)
            if (secs < 1000000000) secs = secs * 10 + (*p - '0');
        if (*p == '.') {
            for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
                if (scale > 0) frac += (*p - '0') * scale;
                else if (*p != '0') round_up = 1;
                scale /= 10;
            }
        }
        if (*p != '\0' || digits == 0) goto done;
        ms = secs * 1000 + frac + round_up;
    } else {
        /* HTTP-date; a date in the past means "now". */
        time_t t = curl_getdate(buf, NULL);
        if (t == (time_t)-1) goto done;
        /* curl accepts absurd years ("Oct 422552552"): clamp to the year
         * 9999 before converting, or t * 1000 overflows (found by
         * fuzz/fuzz_llm_response under UBSan).  Callers cap the delay. */
        if (t > (time_t)253402300799LL) t = (time_t)253402300799LL;
        if (t < 0) t = 0;
        ms = (int64_t)t * 1000 - sheaf_wall_ms();
        if (ms < 0) ms = 0;
    }
done:
    return ms;
}

/* ---- durations of x-ratelimit-reset-* --------------------------------------- */

int64_t sheaf_llm_parse_duration(const char *value)
{
    /* Nanoseconds per unit; longer names first so "ms" is not read as "m". */
    static const struct { const char *name; int64_t ns; } units[] = {
        {"ms", 1000000}, {"us", 1000}, {"\xc2\xb5s", 1000}, {"ns", 1},
        {"h", 3600000000000LL}, {"m", 60000000000LL}, {"s", 1000000000LL},
    };
    static const size_t n_units = sizeof(units) / sizeof(units[0]);
    const char *p = value;
    int64_t total_ns = 0;
    int groups = 0;

    if (!p) return -1;
    while (*p == ' ' || *p == '\t') p++;
    /* One or more "<number><unit>" groups ("6m0s"), numbers parsed by hand
     * (strtod would follow the locale), fractions rounded up. */
    while (*p && !strchr(" \t\r\n", *p)) {
        int64_t whole = 0, frac = 0, frac_scale = 1, unit_ns;
        int digits = 0, round_up = 0;
        size_t u, ulen = 0;
        for (; *p >= '0' && *p <= '9'; p++, digits++) {
            if (whole >= 100000000000000LL) return -1; /* absurd in any unit */
            whole = whole * 10 + (*p - '0');
        }
        if (*p == '.') {
            for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
                if (frac_scale < 1000000) {
                    frac = frac * 10 + (*p - '0');
                    frac_scale *= 10;
                } else if (*p != '0') {
                    round_up = 1;
                }
            }
        }
        if (digits == 0) return -1;
        for (u = 0; u < n_units; u++) {
            ulen = strlen(units[u].name);
            if (strncmp(p, units[u].name, ulen) == 0) break;
        }
        if (u < n_units) {
            unit_ns = units[u].ns;
            p += ulen;
        } else if (groups == 0 && (!*p || strchr(" \t\r\n", *p))) {
            unit_ns = 1000000000LL; /* bare seconds, only as the whole value */
        } else {
            return -1;
        }
        /* Over three years is absurd; checked before anything can overflow
         * (frac < 10^6 and unit_ns <= 3.6 * 10^12 keep frac * unit_ns small). */
        if (whole > 100000000000000000LL / unit_ns) return -1;
        total_ns += whole * unit_ns + (frac * unit_ns + frac_scale - 1) / frac_scale + round_up;
        if (total_ns > 100000000000000000LL) return -1;
        groups++;
    }
    while (*p && strchr(" \t\r\n", *p)) p++;
    if (groups == 0 || *p) return -1;
    return (total_ns + 999999) / 1000000;
}

/* ---- one attempt: endpoint, handle setup, receiving, classification ------- */

/* llm.headers: "Name: value" pairs separated by ';' (Azure's api-key, a
 * proxy's auth, an organisation id).  Values may be secrets: errors name
 * the header by position and name, never its value. */
static sheaf_err add_custom_headers(sheaf_llm_endpoint *ep, const char *spec, char *errstr,
                                    size_t errlen)
{
    char *copy = strdup(spec), *save = NULL, *item;
    int i = 0;
    sheaf_err err = SHEAF_OK;
    if (!copy) return SHEAF_ERR_NOMEM;
    for (item = strtok_r(copy, ";", &save); item && err == SHEAF_OK;
         item = strtok_r(NULL, ";", &save)) {
        char *colon = strchr(item, ':'), *name = item;
        i++;
        while (*name == ' ' || *name == '\t') name++;
        if (!*name) continue;
        size_t nlen = colon ? (size_t)(colon - name) : 0;
        int bad = !colon || nlen == 0;
        for (const char *c = name; !bad && c < colon; c++)
            bad = !(isalnum((unsigned char)*c) || *c == '-' || *c == '_');
        for (const char *c = colon ? colon + 1 : ""; !bad && *c; c++)
            bad = (unsigned char)*c < 0x20 && *c != '\t';
        if (bad) {
            sheaf_set_err(errstr, errlen, "llm.headers: entry %d: expected \"Name: value\" with a "
                          "name of letters, digits, '-' or '_' and no control characters", i);
            err = SHEAF_ERR_CONFIG;
        } else {
            struct curl_slist *h = curl_slist_append(ep->headers, name); /* copies */
            if (!h) err = SHEAF_ERR_NOMEM;
        }
    }
    explicit_bzero(copy, strlen(spec));
    free(copy);
    return err;
}

sheaf_err sheaf_llm_endpoint_init(sheaf_llm_endpoint *ep, const sheaf_config *cfg, char *errstr,
                                  size_t errlen)
{
    sheaf_err err = SHEAF_ERR_CONFIG;
    char *auth = NULL;
    struct curl_slist *h;
    const char *base = cfg->llm_base_url;
    size_t blen;

    memset(ep, 0, sizeof(*ep));
    if (!base || !*base) {
        sheaf_set_err(errstr, errlen, "llm.base_url is empty");
        goto done;
    }
    if (cfg->llm_max_response_bytes <= 0) {
        sheaf_set_err(errstr, errlen, "llm.max_response_bytes must be > 0 (got %d)",
                cfg->llm_max_response_bytes);
        goto done;
    }
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        err = SHEAF_ERR_INTERNAL;
        sheaf_set_err(errstr, errlen, "curl_global_init failed: %s", curl_easy_strerror(curl_init_rc));
        goto done;
    }
    err = SHEAF_ERR_NOMEM;
    blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/') blen--;
    ep->url = malloc(blen + sizeof("/chat/completions"));
    if (!ep->url) {
        sheaf_set_err(errstr, errlen, "out of memory");
        goto done;
    }
    memcpy(ep->url, base, blen);
    memcpy(ep->url + blen, "/chat/completions", sizeof("/chat/completions"));
    ep->timeout_ms = cfg->llm_timeout_ms > 0 ? cfg->llm_timeout_ms : 0;
    ep->connect_timeout_ms = cfg->llm_connect_timeout_ms > 0 ? cfg->llm_connect_timeout_ms : 0;
    ep->max_response_bytes = (size_t)cfg->llm_max_response_bytes;

    h = curl_slist_append(NULL, "Content-Type: application/json");
    if (h) ep->headers = h;
    /* An empty Expect disables "100-continue": one round trip less. */
    if (h) h = curl_slist_append(ep->headers, "Expect:");
    if (h && cfg->llm_api_key && *cfg->llm_api_key) {
        const char *k = cfg->llm_api_key;
        size_t alen = strlen("Authorization: Bearer ") + strlen(k) + 1;
        for (; *k; k++) {
            if ((unsigned char)*k < 0x20 || *k == 0x7f) {
                /* Never echo the key: only say it is malformed. */
                err = SHEAF_ERR_CONFIG;
                sheaf_set_err(errstr, errlen, "llm.api_key contains a control character");
                goto done;
            }
        }
        ep->api_key = strdup(cfg->llm_api_key);
        auth = malloc(alen);
        if (!ep->api_key || !auth) {
            sheaf_set_err(errstr, errlen, "out of memory");
            goto done;
        }
        snprintf(auth, alen, "Authorization: Bearer %s", cfg->llm_api_key);
        h = curl_slist_append(ep->headers, auth); /* copies auth */
    }
    if (h && cfg->llm_headers && *cfg->llm_headers &&
        (err = add_custom_headers(ep, cfg->llm_headers, errstr, errlen)) != SHEAF_OK)
        goto done;
    if (!h) {
        sheaf_set_err(errstr, errlen, "out of memory");
        err = SHEAF_ERR_NOMEM;
        goto done;
    }
    err = SHEAF_OK;
done:
    free_secret(auth);
    if (err != SHEAF_OK) sheaf_llm_endpoint_free(ep);
    return err;
}

void sheaf_llm_endpoint_free(sheaf_llm_endpoint *ep)
{
    if (!ep) return;
    /* Wipe the Authorization line (and llm.headers) before the list is freed. */
    for (struct curl_slist *h = ep->headers; h; h = h->next)
        if (h->data) explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(ep->headers);
    free_secret(ep->api_key);
    free(ep->url);
    memset(ep, 0, sizeof(*ep));
}

static void resp_headers_reset(sheaf_llm_resp_headers *h)
{
    h->retry_after_ms = h->remaining_requests = h->reset_requests_ms = -1;
    h->limit_requests = h->limit_tokens = h->remaining_tokens = h->reset_tokens_ms = -1;
}

void sheaf_llm_xfer_init(sheaf_llm_xfer *x, size_t max_body)
{
    sheaf_buf_init(&x->body, max_body);
    sheaf_llm_xfer_reset(x);
}

void sheaf_llm_xfer_reset(sheaf_llm_xfer *x)
{
    sheaf_buf_reset(&x->body);
    x->body_overflow = 0;
    resp_headers_reset(&x->hdr);
    x->errbuf[0] = '\0';
}

void sheaf_llm_xfer_free(sheaf_llm_xfer *x)
{
    sheaf_buf_free(&x->body);
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *ud)
{
    sheaf_llm_xfer *x = ud;
    size_t n = size * nmemb;
    if (sheaf_buf_append(&x->body, data, n) != SHEAF_OK) {
        x->body_overflow = 1;
        return 0; /* curl stops with CURLE_WRITE_ERROR */
    }
    return n;
}

/* The value of header line data[0..n) when its name is name (with the
 * colon, lower case), trimmed, into value; 0 when it is another header or
 * the value does not fit. */
static int header_value(const char *data, size_t n, const char *name, char *value)
{
    size_t nlen = strlen(name), vlen;
    if (n <= nlen || strncasecmp(data, name, nlen) != 0) return 0;
    data += nlen;
    vlen = n - nlen;
    while (vlen > 0 && (*data == ' ' || *data == '\t')) data++, vlen--;
    while (vlen > 0 && strchr(" \t\r\n", data[vlen - 1])) vlen--;
    if (vlen >= LLM_HEADER_VALUE_MAX) return 0;
    memcpy(value, data, vlen);
    value[vlen] = '\0';
    return 1;
}

/* curl's header callback: each line goes to sheaf_llm_xfer_header. */
static size_t header_cb(char *data, size_t size, size_t nmemb, void *ud)
{
    sheaf_llm_xfer_header(ud, data, size * nmemb);
    return size * nmemb;
}

/* A count header (x-ratelimit-limit-*, -remaining-*): -1 unless a whole
 * number >= 0. */
static int64_t header_count(const char *value)
{
    char *end;
    long long v = strtoll(value, &end, 10);
    return (end != value && *end == '\0' && v >= 0) ? v : -1;
}

void sheaf_llm_xfer_header(sheaf_llm_xfer *x, const char *data, size_t n)
{
    char value[LLM_HEADER_VALUE_MAX];

    /* A new status line (after a 100 Continue, say) starts a new response. */
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) resp_headers_reset(&x->hdr);
    if (header_value(data, n, "retry-after:", value)) {
        x->hdr.retry_after_ms = sheaf_llm_parse_retry_after(value);
    } else if (header_value(data, n, "x-ratelimit-remaining-requests:", value)) {
        x->hdr.remaining_requests = header_count(value);
    } else if (header_value(data, n, "x-ratelimit-reset-requests:", value)) {
        x->hdr.reset_requests_ms = sheaf_llm_parse_duration(value);
    } else if (header_value(data, n, "x-ratelimit-limit-requests:", value)) {
        x->hdr.limit_requests = header_count(value);
    } else if (header_value(data, n, "x-ratelimit-limit-tokens:", value)) {
        x->hdr.limit_tokens = header_count(value);
    } else if (header_value(data, n, "x-ratelimit-remaining-tokens:", value)) {
        x->hdr.remaining_tokens = header_count(value);
    } else if (header_value(data, n, "x-ratelimit-reset-tokens:", value)) {
        x->hdr.reset_tokens_ms = sheaf_llm_parse_duration(value);
    }
}

CURLcode sheaf_llm_easy_setup(CURL *curl, const sheaf_llm_endpoint *ep, sheaf_llm_xfer *x)
{
    CURLcode rc = CURLE_OK;
#define SETOPT(opt, val) \
    do { if (rc == CURLE_OK) rc = curl_easy_setopt(curl, (opt), (val)); } while (0)
    SETOPT(CURLOPT_URL, ep->url);
    SETOPT(CURLOPT_HTTPHEADER, ep->headers);
    SETOPT(CURLOPT_POST, 1L);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_TIMEOUT_MS, ep->timeout_ms);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, ep->connect_timeout_ms);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(CURLOPT_USERAGENT, "sheaf/0.1");
    SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
    SETOPT(CURLOPT_WRITEDATA, x);
    SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
    SETOPT(CURLOPT_HEADERDATA, x);
    SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
#if LIBCURL_VERSION_NUM >= 0x075500
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
#endif
#undef SETOPT
    return rc;
}

CURLcode sheaf_llm_easy_body(CURL *curl, const char *body, size_t len)
{
    CURLcode rc = curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    if (rc == CURLE_OK) rc = curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    return rc;
}

int sheaf_llm_curl_retryable(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
        return 1;
    default:
        return 0;
    }
}

int sheaf_llm_status_retryable(long status)
{
    return status == 429 || status == 408 || status == 409 || (status >= 500 && status <= 599);
}

sheaf_err sheaf_llm_classify(const sheaf_llm_xfer *x, CURLcode rc, long status,
                             const sheaf_llm_endpoint *ep, sheaf_llm_result *result,
                             char *errstr, size_t errlen)
{
    sheaf_err err;
    char msg[LLM_SERVER_MSG_MAX + 1];

    result->http_status = status;
    if (x->body_overflow) {
        err = SHEAF_ERR_LLM_FATAL;
        sheaf_set_err(errstr, errlen, "response larger than llm.max_response_bytes (%zu)",
                x->body.max);
        goto done;
    }
    if (rc != CURLE_OK) {
        err = sheaf_llm_curl_retryable(rc) ? SHEAF_ERR_LLM_RETRY : SHEAF_ERR_LLM_FATAL;
        sheaf_set_err(errstr, errlen, "POST %s: %s", ep->url,
                x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
        goto done;
    }
    if (status >= 200 && status <= 299) {
        err = sheaf_llm_parse_response(x->body.data, x->body.len, &result->content,
                                       &result->usage, errstr, errlen);
        goto done;
    }
    err = sheaf_llm_status_retryable(status) ? SHEAF_ERR_LLM_RETRY : SHEAF_ERR_LLM_FATAL;
    if (err == SHEAF_ERR_LLM_RETRY) result->retry_after_ms = x->hdr.retry_after_ms;
    server_message(x->body.data, x->body.len, msg, sizeof(msg));
    sheaf_set_err(errstr, errlen, "HTTP %ld from %s: %s", status, ep->url, msg);
done:
    if (errstr && errlen) redact(errstr, ep->api_key);
    return err;
}

sheaf_err sheaf_llm_check_request(const sheaf_llm_request *req, char *errstr, size_t errlen)
{
    size_t bad = 0;
    if (!req->model || !*req->model) {
        sheaf_set_err(errstr, errlen, "request: model is empty");
        return SHEAF_ERR_LLM_FATAL;
    }
    if (!isfinite(req->temperature)) {
        sheaf_set_err(errstr, errlen, "request: temperature is not a finite number");
        return SHEAF_ERR_LLM_FATAL;
    }
    if (req->n_messages == 0 || !req->messages) {
        sheaf_set_err(errstr, errlen, "request: no messages");
        return SHEAF_ERR_LLM_FATAL;
    }
    for (size_t i = 0; i < req->n_messages; i++) {
        const char *c = req->messages[i].content ? req->messages[i].content : "";
        if (!sheaf_utf8_valid(c, strlen(c), &bad)) {
            sheaf_set_err(errstr, errlen, "request: message %zu content is not valid UTF-8 (byte %zu)",
                    i, bad);
            return SHEAF_ERR_LLM_FATAL;
        }
    }
    if (req->json_schema && !json_is_object(req->json_schema)) {
        sheaf_set_err(errstr, errlen, "request: json_schema is not a JSON object");
        return SHEAF_ERR_LLM_FATAL;
    }
    return SHEAF_OK;
}

int64_t sheaf_llm_backoff_ceiling(int base_ms, int attempt)
{
    int64_t ceil_ms = base_ms;
    for (int i = 1; i < attempt && ceil_ms < SHEAF_LLM_BACKOFF_CAP_MS; i++) ceil_ms *= 2;
    if (ceil_ms > SHEAF_LLM_BACKOFF_CAP_MS) ceil_ms = SHEAF_LLM_BACKOFF_CAP_MS;
    return ceil_ms > 0 ? ceil_ms : 0;
}

int64_t sheaf_llm_retry_delay(int base_ms, int attempt, int64_t retry_after_ms)
{
    int64_t ceil_ms = sheaf_llm_backoff_ceiling(base_ms, attempt);
    /* Full jitter: a random delay in [0, ceiling]. */
    int64_t delay = ceil_ms > 0 ? (int64_t)(sheaf_random_u64() % (uint64_t)(ceil_ms + 1)) : 0;
    /* The server knows its own load better than our guess. */
    if (retry_after_ms > delay)
        delay = retry_after_ms < SHEAF_LLM_RETRY_AFTER_CAP_MS ? retry_after_ms
                                                             : SHEAF_LLM_RETRY_AFTER_CAP_MS;
    return delay;
}

void sheaf_llm_result_clear(sheaf_llm_result *result)
{
    if (!result) return;
    free(result->content);
    memset(result, 0, sizeof(*result));
}
