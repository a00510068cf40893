/* config.c - one configuration for every sheaf program.  See sheaf/config.h.
 *
 * Every key is declared once, in conf_keys[] below: its name, type, the
 * field of sheaf_config it fills (by offset), its default written the way
 * a config file would write it, its bounds and a line of documentation.
 * Everything else is driven by that table: defaults are applied by parsing
 * the default text through the same setter as any user value (so a default
 * can never be out of its own bounds without a test noticing), the
 * environment names are derived from the key names, and --help-config and
 * the dump print the table.  This is fluent-bit's config_map[] and Redis's
 * static_configs[] idea.
 *
 * Strength, weakest first: defaults, the file, the environment, -X flags;
 * then secrets are read from their *_file keys (only when the secret itself
 * is still unset), then cross-key rules are checked.  Every error names the
 * key and where the value came from ("file sheaf.conf line 3").  Secret
 * values never appear in an error or in the dump.
 *
 * Ownership: every char * field of sheaf_config and every kafka_props
 * string is owned by the config and freed by sheaf_config_clear(). */
#include "sheaf/error.h"
#include "sheaf/config.h"
#include "sheaf/kafka.h"
#include "sheaf/cost.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sheaf/buf.h"
#include "sheaf/util.h"

extern char **environ;

#define CONF_MAX_LINE (1024 * 1024)       /* one line of a config file */
#define CONF_MAX_SECRET (64 * 1024)       /* a secret file's first line */
#define CONF_MAX_KAFKA_PROPS 256

typedef enum conf_type {
    T_STRING,
    T_INT,    /* int field */
    T_LLONG,  /* long long field */
    T_DOUBLE,
    T_BOOL,   /* int field, 0 or 1 */
    T_ENUM    /* char * field holding one of choices */
} conf_type;

#define CONF_SECRET 1u /* never printed; "" means unset (NULL) */
#define CONF_TOPIC 2u  /* used in Kafka topic names: [A-Za-z0-9._-], 1..200 bytes */

typedef struct conf_key {
    const char *name;
    conf_type type;
    size_t offset;        /* of the field in sheaf_config */
    const char *def;      /* default as a file would write it; NULL = unset */
    long long min, max;   /* T_INT, T_LLONG */
    double dmin, dmax;    /* T_DOUBLE */
    const char *choices;  /* T_ENUM: "a|b|c" */
    unsigned flags;
    const char *doc;
} conf_key;

#define OFF(f) offsetof(sheaf_config, f)
#define K_STR(n_, f_, d_, h_) {.name = n_, .type = T_STRING, .offset = OFF(f_), .def = d_, .doc = h_}
#define K_SECRET(n_, f_, h_) \
    {.name = n_, .type = T_STRING, .offset = OFF(f_), .flags = CONF_SECRET, .doc = h_}
#define K_INT(n_, f_, d_, lo_, hi_, h_) \
    {.name = n_, .type = T_INT, .offset = OFF(f_), .def = d_, .min = lo_, .max = hi_, .doc = h_}
#define K_LLONG(n_, f_, d_, lo_, hi_, h_) \
    {.name = n_, .type = T_LLONG, .offset = OFF(f_), .def = d_, .min = lo_, .max = hi_, .doc = h_}
#define K_DOUBLE(n_, f_, d_, lo_, hi_, h_) \
    {.name = n_, .type = T_DOUBLE, .offset = OFF(f_), .def = d_, .dmin = lo_, .dmax = hi_, .doc = h_}
#define K_BOOL(n_, f_, d_, h_) {.name = n_, .type = T_BOOL, .offset = OFF(f_), .def = d_, .doc = h_}
#define K_ENUM(n_, f_, d_, c_, h_) \
    {.name = n_, .type = T_ENUM, .offset = OFF(f_), .def = d_, .choices = c_, .doc = h_}

#define KiB 1024LL
#define MiB (1024LL * 1024)
#define GiB (1024LL * 1024 * 1024)
#define HOUR_MS 3600000LL
#define DAY_MS 86400000LL

static const conf_key conf_keys[] = {
    /* Kafka */
    K_STR("brokers", brokers, "",
          "Kafka bootstrap servers, host:port[,host:port...]; required for Kafka use."),
    {.name = "topic.prefix", .type = T_STRING, .offset = OFF(topic_prefix), .def = "sheaf",
     .flags = CONF_TOPIC,
     .doc = "Prefix of the topics <prefix>.map, <prefix>.dlq and <prefix>.results."},
    K_INT("group.session_timeout_ms", session_timeout_ms, "45000", 1000, HOUR_MS,
          "Kafka consumer group session timeout (session.timeout.ms)."),
    K_INT("group.heartbeat_ms", heartbeat_ms, "3000", 1, HOUR_MS,
          "Kafka consumer group heartbeat interval (heartbeat.interval.ms); must be below "
          "group.session_timeout_ms."),

    /* Redis */
    K_STR("redis.url", redis_url, "redis://127.0.0.1:6379/0",
          "Redis server: redis://[user@]host:port[/db]."),
    K_SECRET("redis.password", redis_password,
             "Redis password (secret; better from SHEAF_REDIS_PASSWORD or redis.password_file)."),
    K_STR("redis.password_file", redis_password_file, "",
          "File whose first line is the Redis password, read when redis.password is unset."),
    K_INT("redis.timeout_ms", redis_timeout_ms, "5000", 1, HOUR_MS,
          "Redis connect and command timeout."),

    /* LLM */
    K_STR("llm.base_url", llm_base_url, "http://127.0.0.1:8080/v1",
          "Base URL of the OpenAI-compatible endpoint (/chat/completions is appended)."),
    K_STR("llm.model", llm_model, "sheaf-sim", "Model name sent with every request."),
    K_SECRET("llm.api_key", llm_api_key,
             "API key sent as a bearer token (secret; better from SHEAF_LLM_API_KEY or "
             "llm.api_key_file)."),
    K_SECRET("llm.headers", llm_headers,
             "Extra HTTP headers for the LLM endpoint, \"Name: value; Name2: value\" (e.g. "
             "Azure's \"api-key: ...\"); secret: never printed."),
    K_STR("llm.api_key_file", llm_api_key_file, "",
          "File whose first line is the API key, read when llm.api_key is unset."),
    K_DOUBLE("llm.temperature", llm_temperature, "0", 0.0, 2.0, "Sampling temperature."),
    K_INT("llm.max_output_tokens", llm_max_tokens, "512", 1, 1000000,
          "Completion token budget per call: sent as max_tokens and kept free in the model's "
          "window (llm.context_tokens) by every prompt."),
    K_INT("llm.max_tokens", llm_max_tokens, "512", 1, 1000000,
          "Older name of llm.max_output_tokens (the same setting)."),
    K_INT("llm.context_tokens", llm_context_tokens, "0", 0, 100000000,
          "The model's context window in tokens (prompt plus answer): every call is planned to "
          "fit it, reductions in as many levels as needed.  0 = the known window of the stage's "
          "model (gpt-4o 128000, claude-* 200000, ...; docs/window.md), else 8192."),
    K_INT("llm.timeout_ms", llm_timeout_ms, "60000", 1, DAY_MS, "Timeout of a whole request."),
    K_INT("llm.connect_timeout_ms", llm_connect_timeout_ms, "5000", 1, HOUR_MS,
          "Timeout of connection setup."),
    K_INT("llm.max_attempts", llm_max_attempts, "5", 1, 100,
          "Tries per call, the first included, for retryable failures (429, 5xx, timeouts)."),
    K_INT("llm.backoff_ms", llm_backoff_ms, "500", 0, HOUR_MS,
          "First retry delay, doubled per try (with jitter)."),
    K_INT("llm.retry_horizon_ms", llm_retry_horizon_ms, "86400000", 0, 2147483647,
          "How long a chunk whose call keeps failing for a transient cause (timeouts, resets, "
          "5xx, 429, open circuit) is retried after llm.max_attempts: parked and sent again "
          "after 1 s, doubling to 5 min, before it fails for good.  0 = fail at once."),
    K_ENUM("llm.structured_output", llm_structured_output, "json_schema", "json_schema|prompt",
           "How a map stage's json_schema reaches the model: as response_format (json_schema), "
           "or in the system prompt for endpoints without structured output (prompt); the "
           "answer is validated and retried either way."),
    K_INT("llm.max_response_bytes", llm_max_response_bytes, "8388608", KiB, GiB,
          "Cap on one HTTP response body."),
    K_INT("llm.breaker_threshold", llm_breaker_threshold, "10", 1, 1000000,
          "Transient failures in a row (connection errors, timeouts, 5xx) that open the "
          "circuit breaker: no new request until a cooldown is over, then one probe."),
    K_INT("llm.breaker_cooldown_ms", llm_breaker_cooldown_ms, "5000", 1, HOUR_MS,
          "First open period of the circuit breaker; doubled after each failed probe."),
    K_INT("llm.breaker_max_cooldown_ms", llm_breaker_max_cooldown_ms, "60000", 1, DAY_MS,
          "Longest open period of the circuit breaker (at least llm.breaker_cooldown_ms)."),

    /* LLM call cache */
    K_BOOL("cache.enabled", cache_enabled, "true",
           "Look every LLM call up in Redis (by a hash of the endpoint and the exact request) "
           "before sending it, and store its answer."),
    K_INT("cache.ttl_s", cache_ttl_s, "604800", 0, 315360000,
          "Expiry of a cache entry in seconds; 0 = never.  With a TTL, Redis maxmemory and "
          "maxmemory-policy volatile-lru evict cache entries and never job state."),
    K_BOOL("cache.nondeterministic", cache_nondeterministic, "false",
           "Cache calls with temperature > 0 too (otherwise only temperature 0 is cached)."),

    /* Chunking */
    K_INT("chunk.max_tokens", chunk_max_tokens, "800", 16, 1000000,
          "Estimated tokens per chunk at most."),
    K_INT("chunk.overlap_tokens", chunk_overlap_tokens, "0", 0, 1000000,
          "Tokens repeated from the end of one chunk at the start of the next; below half of "
          "chunk.max_tokens."),
    K_INT("chunk.pages_per_batch", chunk_pages_per_batch, "0", 0, 10000,
          "Pages per chunk for page-delimited input; 0 = chunk by tokens."),

    /* Producer input */
    K_INT("producer.heartbeat_ms", producer_heartbeat_ms, "5000", 100, 600000,
          "While a submit produces, it marks its job alive in Redis this often; `sheaf "
          "status` calls a producing job stalled after 6 missed beats (its submit died)."),
    K_ENUM("input.format", input_format, "auto", "auto|text|jsonl",
           "Input format; auto picks jsonl for *.jsonl files and text otherwise."),
    K_STR("input.id_field", input_id_field, "id", "JSONL: the field holding the document id."),
    K_STR("input.text_field", input_text_field, "text",
          "JSONL: the field holding the document text."),
    K_STR("input.meta_fields", input_meta_fields, "*",
          "JSONL: comma list of fields kept as metadata; \"\" = none, \"*\" = all others."),
    K_INT("input.max_line_bytes", input_max_line_bytes, "67108864", KiB, GiB,
          "Cap on one JSONL line."),
    K_LLONG("input.max_doc_bytes", input_max_doc_bytes, "268435456", KiB, 1024 * GiB,
            "Cap on one document."),
    K_ENUM("input.on_error", input_on_error, "refuse", "refuse|skip",
           "A bad input record: refuse stops the submission, skip logs and goes on."),
    K_ENUM("stream.format", stream_format, "json", "json|text",
           "sheaf stream: each input record is a JSON object (input.id_field, "
           "input.text_field or stream.pages_field, input.meta_fields; the record key is the "
           "id when the object has none) or plain text (the key is the id)."),
    K_STR("stream.pages_field", stream_pages_field, "pages",
          "sheaf stream: the field holding a document's pages (an array of strings) when it "
          "has no input.text_field."),
    K_STR("stream.group", stream_group, "",
          "sheaf stream: Kafka consumer group on the input topic; \"\" = sheaf-stream-<name>."),
    K_INT("stream.max_pending_chunks", stream_max_pending_chunks, "2000", 0, 1000000000,
          "sheaf stream: pause the input while more of the stream's chunks than this wait "
          "for the map stage (resume below half); 0 = never pause."),
    K_INT("stream.window_docs", stream_window_docs, "0", 0, 10000000,
          "sheaf stream: the pipeline's group and overview stages run per tumbling window of "
          "this many documents (each window a job NAME@w<k>); 0 = no windows."),
    K_LLONG("stream.window_ms", stream_window_ms, "0", 0, 365 * DAY_MS,
            "sheaf stream: the same per tumbling window of this many milliseconds (by "
            "Redis's clock at registration); 0 = no windows.  Set one of the two."),

    /* Worker and reducer */
    K_STR("worker.group", worker_group, "sheaf-workers", "Kafka consumer group of the workers."),
    K_INT("worker.max_in_flight", worker_max_in_flight, "64", 1, 100000,
          "LLM calls a worker keeps in flight at once (libcurl multi, one thread)."),
    K_INT("worker.drain_ms", worker_drain_ms, "10000", 0, HOUR_MS,
          "On SIGTERM, how long to let in-flight calls finish before abandoning them."),
    K_DOUBLE("llm.rpm", llm_rpm, "0", 0, 1e9,
             "Requests per minute allowed by the provider, shared by the whole fleet through Redis; 0 = no limit."),
    K_DOUBLE("llm.tpm", llm_tpm, "0", 0, 1e12,
             "Tokens per minute allowed by the provider (estimated prompt + max_tokens), fleet-wide; 0 = no limit."),
    K_STR("reducer.group", reducer_group, "sheaf-reducers",
          "Redis stream consumer group of the reducers."),
    K_INT("reducer.claim_idle_ms", reducer_claim_idle_ms, "30000", 1, DAY_MS,
          "Claim another reducer's pending documents after they were idle this long."),
    K_INT("reducer.window", reducer_window, "64", 1, 100000,
          "Reductions (documents, groups, overviews) a reducer process works on at once, and "
          "the LLM calls it keeps in flight; one event loop, one thread."),
    K_INT("reducer.threads", reducer_window, "64", 1, 100000,
          "Old name of reducer.window (the reducer runs one event loop, not threads)."),
    K_INT("reducer.drain_ms", reducer_drain_ms, "10000", 0, HOUR_MS,
          "On SIGTERM, how long to let reductions under way finish before leaving them "
          "pending for another reducer."),
    K_INT("job.retention_s", job_retention_s, "604800", 0, 315360000,
          "Seconds an ended job's state (results, counters, streams) stays in Redis after "
          "it is done, failed or cancelled; then it expires.  0 = kept for ever."),
    K_STR("reducer.output", reducer_output, "",
          "JSONL file the reducer appends results to; \"-\" = stdout, \"\" = none."),

    K_STR("cost.prices", cost_prices, "",
          "Prices per million tokens by model, \"model=input/output; ...\" (e.g. "
          "\"gpt-4o-mini=0.15/0.60\"); used by status and submit --dry-run."),
    K_STR("cost.currency", cost_currency, "USD", "Currency of cost.prices, for display."),
    K_STR("pipeline", pipeline, "summarize",
          "Pipeline of a submitted job: a built-in (summarize, summarize-refine, batch) or a "
          "pipeline JSON file."),

    /* Built-in pipeline prompts */
    K_STR("prompt.system", prompt_system,
          "You are a careful analyst. Answer concisely and only from the text given.",
          "System prompt of every call."),
    K_STR("prompt.map", prompt_map,
          "Summarize this part ({{chunk_index}} of {{chunk_count}}) of the document "
          "\"{{doc_id}}\" in a few sentences.\n\n<text>\n{{text}}\n</text>",
          "User prompt for each chunk."),
    K_STR("prompt.combine", prompt_combine,
          "Combine these partial summaries of the document \"{{doc_id}}\" into one "
          "summary.\n\n<text>\n{{partials}}\n</text>",
          "User prompt combining a document's partial results."),
    K_STR("prompt.overview", prompt_overview,
          "Write an overview of these {{doc_count}} document summaries.\n\n<text>\n"
          "{{results}}\n</text>",
          "User prompt over all document results of a job."),

    /* Metrics and health (sheaf/metrics.h) */
    K_INT("metrics.port", metrics_port, "0", 0, 65535,
          "Port of the HTTP endpoint serving Prometheus /metrics and /health (worker, "
          "reducer); 0 = off.  A port that cannot be bound stops the program."),
    K_STR("metrics.bind", metrics_bind, "127.0.0.1",
          "Numeric IPv4 or IPv6 address the metrics endpoint listens on (0.0.0.0 in a "
          "container)."),

    /* Logging */
    K_ENUM("log.level", log_level, "info", "error|warn|info|debug", "Least severe level logged."),
    K_BOOL("log.json", log_json, "false", "Log JSON lines instead of text."),
};

#define N_KEYS (sizeof(conf_keys) / sizeof(conf_keys[0]))
_Static_assert(N_KEYS <= 8 * sizeof(((sheaf_config *)0)->set_explicitly), "set_explicitly is too small");

/* SHEAF_ variables that are not keys: set by tools and test scripts. */
static const char *const env_ignored[] = {
    "SHEAF_CONFIG", "SHEAF_BUILD_DIR", "SHEAF_SOURCE_DIR", "SHEAF_BIN_DIR",
};
/* SHEAF_DEV_: the dev stack's (SHEAF_DEV_DIR, SHEAF_DEV_KAFKA_VERSION, ...). */
static const char *const env_ignored_prefixes[] = {"SHEAF_TEST_", "SHEAF_SIM_", "SHEAF_DEV_"};

/* A value shortened for an error message (values can be whole prompts). */
static const char *shorten(const char *s, char out[80])
{
    size_t n = strlen(s);
    if (n <= 64) return s;
    size_t cut = sheaf_utf8_boundary(s, 60);
    memcpy(out, s, cut);
    memcpy(out + cut, "...", 4);
    return out;
}

static const conf_key *find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(conf_keys[i].name, name) == 0) return &conf_keys[i];
    return NULL;
}

static void *field_ptr(sheaf_config *cfg, const conf_key *k)
{
    return (char *)cfg + k->offset;
}

static const void *field_cptr(const sheaf_config *cfg, const conf_key *k)
{
    return (const char *)cfg + k->offset;
}

/* ---- parsing one value ---- */

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) { *out = 1; return 0; }
        if (strcasecmp(s, no[i]) == 0) { *out = 0; return 0; }
    }
    return -1;
}

/* Strict base-10 integer: the whole string, no leading blanks. */
static int parse_ll(const char *s, long long *out)
{
    char *end = NULL;
    if (*s == '\0' || *s == ' ' || *s == '\t') return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE || *end != '\0') return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end = NULL;
    if (*s == '\0' || *s == ' ' || *s == '\t') return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (errno == ERANGE || *end != '\0' || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int enum_allows(const char *choices, const char *s)
{
    size_t n = strlen(s);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

static int topic_chars_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 200) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Replaces the string at *slot by a copy of value (NULL stays NULL). */
static sheaf_err replace_str(char **slot, const char *value)
{
    char *copy = NULL;
    if (value) {
        copy = strdup(value);
        if (!copy) return SHEAF_ERR_NOMEM;
    }
    free(*slot);
    *slot = copy;
    return SHEAF_OK;
}

/* Sets table key k from text.  The value is only quoted in errors for keys
 * that are not secret. */
static sheaf_err set_known(sheaf_config *cfg, const conf_key *k, const char *value,
                           const char *source, char *errstr, size_t errlen)
{
    char sv[80];
    const char *shown = (k->flags & CONF_SECRET) ? "(secret)" : shorten(value, sv);
    size_t bad = 0;
    long long ll = 0;
    double d = 0;
    int b = 0;

    switch (k->type) {
    case T_STRING:
    case T_ENUM:
        if (!sheaf_utf8_valid(value, strlen(value), &bad)) {
            sheaf_set_err(errstr, errlen, "%s: key \"%s\": value is not valid UTF-8 (byte %zu)", source,
                    k->name, bad);
            return SHEAF_ERR_CONFIG;
        }
        if (k->type == T_ENUM && !enum_allows(k->choices, value)) {
            sheaf_set_err(errstr, errlen, "%s: key \"%s\": \"%s\" is not one of %s", source, k->name,
                    shown, k->choices);
            return SHEAF_ERR_CONFIG;
        }
        if ((k->flags & CONF_TOPIC) && !topic_chars_ok(value)) {
            sheaf_set_err(errstr, errlen,
                    "%s: key \"%s\": \"%s\" is not usable in a topic name "
                    "(1..200 of A-Z a-z 0-9 . _ -)",
                    source, k->name, shown);
            return SHEAF_ERR_CONFIG;
        }
        /* An empty secret is no secret: leave it unset so its file is read. */
        return replace_str(field_ptr(cfg, k),
                           (k->flags & CONF_SECRET) && *value == '\0' ? NULL : value);
    case T_INT:
    case T_LLONG:
        if (parse_ll(value, &ll) != 0) {
            sheaf_set_err(errstr, errlen, "%s: key \"%s\": \"%s\" is not an integer", source, k->name,
                    shown);
            return SHEAF_ERR_CONFIG;
        }
        if (ll < k->min || ll > k->max) {
            sheaf_set_err(errstr, errlen, "%s: key \"%s\": %lld is out of range %lld..%lld", source,
                    k->name, ll, k->min, k->max);
            return SHEAF_ERR_CONFIG;
        }
        if (k->type == T_INT) *(int *)field_ptr(cfg, k) = (int)ll;
        else *(long long *)field_ptr(cfg, k) = ll;
        return SHEAF_OK;
    case T_DOUBLE:
        if (parse_double(value, &d) != 0) {
            sheaf_set_err(errstr, errlen, "%s: key \"%s\": \"%s\" is not a number", source, k->name,
                    shown);
            return SHEAF_ERR_CONFIG;
        }
        if (d < k->dmin || d > k->dmax) {
            sheaf_set_err(errstr, errlen, "%s: key \"%s\": %g is out of range %g..%g", source, k->name,
                    d, k->dmin, k->dmax);
            return SHEAF_ERR_CONFIG;
        }
        *(double *)field_ptr(cfg, k) = d;
        return SHEAF_OK;
    case T_BOOL:
        if (parse_bool(value, &b) != 0) {
            sheaf_set_err(errstr, errlen,
                    "%s: key \"%s\": \"%s\" is not a boolean (true/false, yes/no, on/off, 1/0)",
                    source, k->name, shown);
            return SHEAF_ERR_CONFIG;
        }
        *(int *)field_ptr(cfg, k) = b;
        return SHEAF_OK;
    }
    return SHEAF_ERR_INTERNAL;
}

/* kafka.<property>: stored with its full key, in first-set order; setting
 * it again replaces the value in place. */
static sheaf_err set_kafka(sheaf_config *cfg, const char *key, const char *value,
                           const char *source, char *errstr, size_t errlen)
{
    const char *prop = key + strlen("kafka.");
    size_t bad = 0;
    char *k = NULL, *v = NULL;
    sheaf_err err = SHEAF_OK;

    if (!topic_chars_ok(prop)) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\": not a Kafka property name", source, key);
        return SHEAF_ERR_CONFIG;
    }
    if (!sheaf_utf8_valid(value, strlen(value), &bad)) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\": value is not valid UTF-8 (byte %zu)", source,
                key, bad);
        return SHEAF_ERR_CONFIG;
    }
    /* Refused at load like any other key, not when a client is made. */
    char why[256];
    if (sheaf_kafka_property_check(prop, value, why, sizeof(why)) != SHEAF_OK) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\": %s", source, key, why);
        return SHEAF_ERR_CONFIG;
    }
    for (size_t i = 0; i < cfg->kafka_props_len; i++) {
        if (strcmp(cfg->kafka_props[i].key, key) == 0)
            return replace_str(&cfg->kafka_props[i].value, value);
    }
    if (cfg->kafka_props_len >= CONF_MAX_KAFKA_PROPS) {
        sheaf_set_err(errstr, errlen, "%s: key \"%s\": more than %d kafka.* properties", source, key,
                CONF_MAX_KAFKA_PROPS);
        return SHEAF_ERR_CONFIG;
    }
    k = strdup(key);
    v = strdup(value);
    sheaf_kv *grown = realloc(cfg->kafka_props, (cfg->kafka_props_len + 1) * sizeof(*grown));
    if (!k || !v || !grown) {
        if (grown) cfg->kafka_props = grown;
        err = SHEAF_ERR_NOMEM;
        goto done;
    }
    cfg->kafka_props = grown;
    /* The array takes k and v. */
    cfg->kafka_props[cfg->kafka_props_len].key = k;
    cfg->kafka_props[cfg->kafka_props_len].value = v;
    cfg->kafka_props_len++;
    k = v = NULL;
done:
    free(k);
    free(v);
    return err;
}

/* Names of kafka.* properties whose values must not be printed. */
static int kafka_prop_secret(const char *key)
{
    return strstr(key, "password") || strstr(key, "secret") || strstr(key, ".pem") ||
           strstr(key, "oauthbearer.config") || strstr(key, "sasl.jaas");
}

sheaf_err sheaf_config_set(sheaf_config *cfg, const char *key, const char *value,
                           const char *source, char *errstr, size_t errlen)
{
    const conf_key *k;
    if (!source) source = "set";
    if (!key || !value) {
        sheaf_set_err(errstr, errlen, "%s: %s is NULL", source, key ? "value" : "key");
        return SHEAF_ERR_INVALID;
    }
    if (strncmp(key, "kafka.", 6) == 0) return set_kafka(cfg, key, value, source, errstr, errlen);
    k = find_key(key);
    if (!k) {
        char sk[80];
        sheaf_set_err(errstr, errlen, "%s: unknown key \"%s\" (see --help-config)", source,
                shorten(key, sk));
        return SHEAF_ERR_CONFIG;
    }
    sheaf_err err = set_known(cfg, k, value, source, errstr, errlen);
    if (err == SHEAF_OK) {
        size_t i = (size_t)(k - conf_keys);
        cfg->set_explicitly[i / 8] |= (unsigned char)(1u << (i % 8));
    }
    return err;
}

int sheaf_config_is_set(const sheaf_config *cfg, const char *key)
{
    const conf_key *k = find_key(key);
    size_t i;
    if (!k) return 0;
    i = (size_t)(k - conf_keys);
    return (cfg->set_explicitly[i / 8] >> (i % 8)) & 1;
}

/* ---- lifecycle ---- */

sheaf_err sheaf_config_init(sheaf_config *cfg)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &conf_keys[i];
        if (!k->def) continue;
        sheaf_err err = set_known(cfg, k, k->def, "default", errstr, sizeof(errstr));
        if (err != SHEAF_OK) return err == SHEAF_ERR_NOMEM ? err : SHEAF_ERR_INTERNAL;
    }
    return SHEAF_OK;
}

void sheaf_config_clear(sheaf_config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &conf_keys[i];
        if (k->type == T_STRING || k->type == T_ENUM) {
            char **slot = field_ptr(cfg, k);
            free(*slot);
            *slot = NULL;
        }
    }
    for (size_t i = 0; i < cfg->kafka_props_len; i++) {
        free(cfg->kafka_props[i].key);
        free(cfg->kafka_props[i].value);
    }
    free(cfg->kafka_props);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- the config file ---- */

/* Reads one line (without its '\n') into line, capped at CONF_MAX_LINE.
 * *got is 0 at end of file. */
static sheaf_err read_line(FILE *f, sheaf_buf *line, int *got)
{
    int c;
    sheaf_buf_reset(line);
    *got = 0;
    while ((c = getc(f)) != EOF) {
        *got = 1;
        if (c == '\n') break;
        char ch = (char)c;
        sheaf_err err = sheaf_buf_append(line, &ch, 1);
        if (err != SHEAF_OK) return err;
    }
    if (ferror(f)) return SHEAF_ERR_IO;
    if (*got && !line->data) return sheaf_buf_append(line, "", 0);
    return SHEAF_OK;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

/* Parses a double-quoted value starting at s (just after the opening
 * quote) into out.  Returns NULL on success or a description of the
 * problem. */
static const char *unquote(const char *s, sheaf_buf *out, sheaf_err *err)
{
    *err = SHEAF_OK;
    for (;;) {
        char c = *s++;
        if (c == '\0') return "unterminated quoted value";
        if (c == '"') break;
        if (c == '\\') {
            char e = *s++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case '\\': c = '\\'; break;
            case '"': c = '"'; break;
            case '\0': return "unterminated quoted value";
            default: return "unknown escape (use \\n, \\t, \\\\ or \\\")";
            }
        }
        *err = sheaf_buf_append(out, &c, 1);
        if (*err != SHEAF_OK) return "value too long";
    }
    while (is_blank(*s)) s++;
    if (*s != '\0') return "text after the closing quote";
    if (!out->data) *err = sheaf_buf_append(out, "", 0);
    return NULL;
}

sheaf_err sheaf_config_load_file(sheaf_config *cfg, const char *path, char *errstr,
                                 size_t errlen)
{
    sheaf_buf line, value;
    sheaf_err err = SHEAF_OK;
    unsigned lineno = 0;
    int got = 0;
    FILE *f = NULL;

    sheaf_buf_init(&line, CONF_MAX_LINE);
    sheaf_buf_init(&value, CONF_MAX_LINE);
    f = fopen(path, "r");
    if (!f) {
        sheaf_set_err(errstr, errlen, "config file %s: %s", path, strerror(errno));
        err = SHEAF_ERR_CONFIG;
        goto done;
    }
    for (;;) {
        char source[1024];
        err = read_line(f, &line, &got);
        lineno++;
        if (err != SHEAF_OK) {
            sheaf_set_err(errstr, errlen, "file %s line %u: %s", path, lineno,
                    err == SHEAF_ERR_TOO_LARGE ? "line too long" : strerror(errno));
            if (err != SHEAF_ERR_NOMEM) err = SHEAF_ERR_CONFIG;
            goto done;
        }
        if (!got) break;
        char *s = line.data;
        if (lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3; /* UTF-8 BOM */
        while (is_blank(*s)) s++;
        if (*s == '\0' || *s == '#') continue;
        if (strlen(s) != line.len - (size_t)(s - line.data)) {
            sheaf_set_err(errstr, errlen, "file %s line %u: NUL byte", path, lineno);
            err = SHEAF_ERR_CONFIG;
            goto done;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            sheaf_set_err(errstr, errlen, "file %s line %u: expected key = value", path, lineno);
            err = SHEAF_ERR_CONFIG;
            goto done;
        }
        char *kend = eq;
        while (kend > s && is_blank(kend[-1])) kend--;
        *kend = '\0';
        if (*s == '\0') {
            sheaf_set_err(errstr, errlen, "file %s line %u: missing key before '='", path, lineno);
            err = SHEAF_ERR_CONFIG;
            goto done;
        }
        char *v = eq + 1;
        while (is_blank(*v)) v++;
        char *vend = v + strlen(v);
        while (vend > v && is_blank(vend[-1])) vend--;
        *vend = '\0';
        sheaf_buf_reset(&value);
        if (*v == '"') {
            const char *why = unquote(v + 1, &value, &err);
            if (err == SHEAF_ERR_NOMEM) goto done;
            if (why) {
                sheaf_set_err(errstr, errlen, "file %s line %u: key \"%s\": %s", path, lineno, s, why);
                err = SHEAF_ERR_CONFIG;
                goto done;
            }
            v = value.data;
        }
        snprintf(source, sizeof(source), "file %s line %u", path, lineno);
        err = sheaf_config_set(cfg, s, v, source, errstr, errlen);
        if (err != SHEAF_OK) goto done;
    }

done:
    if (f) fclose(f);
    sheaf_buf_free(&line);
    sheaf_buf_free(&value);
    return err;
}

/* ---- the environment ---- */

/* SHEAF_<KEY>: the key upper-cased, '.' and '-' turned into '_'. */
static void env_name(const char *key, char *out, size_t outlen)
{
    size_t n = (size_t)snprintf(out, outlen, "SHEAF_");
    for (const char *p = key; *p && n + 1 < outlen; p++) {
        char c = *p;
        if (c == '.' || c == '-') c = '_';
        else if (c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
        out[n++] = c;
    }
    out[n] = '\0';
}

static int env_is_ignored(const char *name)
{
    for (size_t i = 0; i < sizeof(env_ignored) / sizeof(env_ignored[0]); i++)
        if (strcmp(name, env_ignored[i]) == 0) return 1;
    for (size_t i = 0; i < sizeof(env_ignored_prefixes) / sizeof(env_ignored_prefixes[0]); i++)
        if (strncmp(name, env_ignored_prefixes[i], strlen(env_ignored_prefixes[i])) == 0)
            return 1;
    return 0;
}

/* Applies one SHEAF_ variable NAME=value. */
static sheaf_err apply_env(sheaf_config *cfg, const char *entry, char *errstr, size_t errlen)
{
    char name[256], key[256], source[300];
    const char *eq = strchr(entry, '=');
    size_t nlen = eq ? (size_t)(eq - entry) : strlen(entry);
    const char *value = eq ? eq + 1 : "";

    if (nlen >= sizeof(name)) {
        sheaf_set_err(errstr, errlen, "environment variable %.64s...: matches no configuration key",
                entry);
        return SHEAF_ERR_CONFIG;
    }
    memcpy(name, entry, nlen);
    name[nlen] = '\0';
    if (env_is_ignored(name)) return SHEAF_OK;
    snprintf(source, sizeof(source), "environment %s", name);

    /* SHEAF_KAFKA_SECURITY_PROTOCOL -> kafka.security.protocol: librdkafka
     * property names are lower case with dots. */
    if (strncmp(name, "SHEAF_KAFKA_", 12) == 0 && name[12] != '\0') {
        size_t n = (size_t)snprintf(key, sizeof(key), "kafka.");
        for (const char *p = name + 12; *p; p++) {
            char c = *p;
            if (c == '_') c = '.';
            else if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
            key[n++] = c;
        }
        key[n] = '\0';
        return sheaf_config_set(cfg, key, value, source, errstr, errlen);
    }
    for (size_t i = 0; i < N_KEYS; i++) {
        char want[256];
        env_name(conf_keys[i].name, want, sizeof(want));
        if (strcmp(want, name) == 0)
            return set_known(cfg, &conf_keys[i], value, source, errstr, errlen);
    }
    sheaf_set_err(errstr, errlen,
            "environment variable %s matches no configuration key (see --help-config)", name);
    return SHEAF_ERR_CONFIG;
}

sheaf_err sheaf_config_load_env(sheaf_config *cfg, char *errstr, size_t errlen)
{
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "SHEAF_", 6) != 0) continue;
        sheaf_err err = apply_env(cfg, *e, errstr, errlen);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

/* ---- the whole sequence ---- */

/* Reads the first line of a secret file, without its line ending. */
static sheaf_err read_secret(const char *file_key, const char *path, char **out, char *errstr,
                             size_t errlen)
{
    sheaf_buf line;
    sheaf_err err = SHEAF_OK;
    int got = 0;
    FILE *f = fopen(path, "r");

    sheaf_buf_init(&line, CONF_MAX_SECRET);
    if (!f) {
        sheaf_set_err(errstr, errlen, "key \"%s\": cannot read %s: %s", file_key, path,
                strerror(errno));
        err = SHEAF_ERR_CONFIG;
        goto done;
    }
    err = read_line(f, &line, &got);
    if (err != SHEAF_OK) {
        sheaf_set_err(errstr, errlen, "key \"%s\": cannot read %s: %s", file_key, path,
                err == SHEAF_ERR_TOO_LARGE ? "first line too long" : "read error");
        if (err != SHEAF_ERR_NOMEM) err = SHEAF_ERR_CONFIG;
        goto done;
    }
    if (line.len > 0 && line.data[line.len - 1] == '\r') line.data[--line.len] = '\0';
    if (!got || line.len == 0 || strlen(line.data) != line.len) {
        sheaf_set_err(errstr, errlen, "key \"%s\": %s: %s", file_key, path,
                line.len == 0 ? "the first line is empty" : "NUL byte in the first line");
        err = SHEAF_ERR_CONFIG;
        goto done;
    }
    /* The caller takes the line. */
    *out = sheaf_buf_steal(&line);
    if (!*out) err = SHEAF_ERR_NOMEM;

done:
    if (f) fclose(f);
    sheaf_buf_free(&line);
    return err;
}

/* Reads each secret from its *_file key when the secret is still unset. */
static sheaf_err load_secrets(sheaf_config *cfg, char *errstr, size_t errlen)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &conf_keys[i];
        char file_key[128];
        if (!(k->flags & CONF_SECRET)) continue;
        char **secret = field_ptr(cfg, k);
        snprintf(file_key, sizeof(file_key), "%s_file", k->name);
        const conf_key *fk = find_key(file_key);
        if (!fk || *secret) continue;
        const char *path = *(char *const *)field_ptr(cfg, fk);
        if (!path || !*path) continue;
        sheaf_err err = read_secret(fk->name, path, secret, errstr, errlen);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

/* Rules between keys, checked once everything is set. */
static sheaf_err validate(const sheaf_config *cfg, char *errstr, size_t errlen)
{
    if (cfg->chunk_overlap_tokens >= cfg->chunk_max_tokens / 2) {
        sheaf_set_err(errstr, errlen,
                "key \"chunk.overlap_tokens\": %d must be below half of chunk.max_tokens (%d)",
                cfg->chunk_overlap_tokens, cfg->chunk_max_tokens);
        return SHEAF_ERR_CONFIG;
    }
    if (cfg->llm_breaker_max_cooldown_ms < cfg->llm_breaker_cooldown_ms) {
        sheaf_set_err(errstr, errlen,
                "key \"llm.breaker_max_cooldown_ms\": %d must be at least "
                "llm.breaker_cooldown_ms (%d)",
                cfg->llm_breaker_max_cooldown_ms, cfg->llm_breaker_cooldown_ms);
        return SHEAF_ERR_CONFIG;
    }
    if (cfg->heartbeat_ms >= cfg->session_timeout_ms) {
        sheaf_set_err(errstr, errlen,
                "key \"group.heartbeat_ms\": %d must be below group.session_timeout_ms (%d)",
                cfg->heartbeat_ms, cfg->session_timeout_ms);
        return SHEAF_ERR_CONFIG;
    }
    sheaf_price_table prices;
    return sheaf_price_table_parse(cfg->cost_prices, &prices, errstr, errlen);
}

sheaf_err sheaf_config_load(sheaf_config *cfg, const char *config_path,
                            char *const *overrides, size_t n_overrides, char *errstr,
                            size_t errlen)
{
    sheaf_err err = sheaf_config_init(cfg);
    if (err != SHEAF_OK) {
        sheaf_set_err(errstr, errlen, "configuration defaults: %s", sheaf_strerror(err));
        goto done;
    }
    if (!config_path) config_path = getenv("SHEAF_CONFIG");
    if (config_path && *config_path) {
        err = sheaf_config_load_file(cfg, config_path, errstr, errlen);
        if (err != SHEAF_OK) goto done;
    }
    err = sheaf_config_load_env(cfg, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    for (size_t i = 0; i < n_overrides; i++) {
        const char *kv = overrides[i];
        const char *eq = kv ? strchr(kv, '=') : NULL;
        char key[256], sk[80];
        if (!eq || eq == kv || (size_t)(eq - kv) >= sizeof(key)) {
            sheaf_set_err(errstr, errlen, "flag -X \"%s\": expected key=value",
                    kv ? shorten(kv, sk) : "(null)");
            err = SHEAF_ERR_CONFIG;
            goto done;
        }
        memcpy(key, kv, (size_t)(eq - kv));
        key[eq - kv] = '\0';
        err = sheaf_config_set(cfg, key, eq + 1, "flag -X", errstr, errlen);
        if (err != SHEAF_OK) goto done;
    }
    err = load_secrets(cfg, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    err = validate(cfg, errstr, errlen);

done:
    return err;
}

/* ---- printing ---- */

/* Writes s as a double-quoted config file value. */
/* s double-quoted with \n \t \\ \" escapes, as a config file reads it;
 * with md also '|' escaped (inside a Markdown table). */
static void quote_value(FILE *out, const char *s, int md)
{
    fputc('"', out);
    for (; *s; s++) {
        switch (*s) {
        case '\n': fputs("\\n", out); break;
        case '\t': fputs("\\t", out); break;
        case '\\': fputs("\\\\", out); break;
        case '"': fputs("\\\"", out); break;
        case '|': fputs(md ? "\\|" : "|", out); break;
        default: fputc(*s, out);
        }
    }
    fputc('"', out);
}

static void print_quoted(FILE *out, const char *s) { quote_value(out, s, 0); }

/* The shortest text that reads back as the same double. */
static void print_double(FILE *out, double d)
{
    char s[64];
    snprintf(s, sizeof(s), "%.15g", d);
    if (strtod(s, NULL) != d) snprintf(s, sizeof(s), "%.17g", d);
    fputs(s, out);
}

void sheaf_config_dump(const sheaf_config *cfg, FILE *out)
{
    /* Secret lines are comments, so a dump can be loaded back as a config
     * file without setting a key to the text "(set)". */
    fputs("# sheaf configuration; secrets are shown as (set) or (unset)\n", out);
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &conf_keys[i];
        const void *p = field_cptr(cfg, k);
        fprintf(out, "%s%s = ", (k->flags & CONF_SECRET) ? "# " : "", k->name);
        switch (k->type) {
        case T_STRING:
        case T_ENUM: {
            const char *s = *(char *const *)p;
            if (k->flags & CONF_SECRET) fputs(s ? "(set)" : "(unset)", out);
            else print_quoted(out, s ? s : "");
            break;
        }
        case T_INT: fprintf(out, "%d", *(const int *)p); break;
        case T_LLONG: fprintf(out, "%lld", *(const long long *)p); break;
        case T_DOUBLE: print_double(out, *(const double *)p); break;
        case T_BOOL: fputs(*(const int *)p ? "true" : "false", out); break;
        }
        fputc('\n', out);
    }
    for (size_t i = 0; i < cfg->kafka_props_len; i++) {
        const sheaf_kv *kv = &cfg->kafka_props[i];
        if (kafka_prop_secret(kv->key)) {
            fprintf(out, "# %s = (set)", kv->key);
        } else {
            fprintf(out, "%s = ", kv->key);
            print_quoted(out, kv->value);
        }
        fputc('\n', out);
    }
}

/* Markdown table cell text: '|' escaped, '<' and '>' as entities (a
 * renderer would take "<prefix>" for an HTML tag), the rest as is. */
static void md_cell(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", out);
        else if (*s == '>') fputs("&gt;", out);
        else if (*s == '|') fputs("\\|", out);
        else fputc(*s, out);
    }
}

/* A key's type and bounds ("integer 1..64", "one of a|b"); with md the
 * choices go in a code span, '|' escaped for a Markdown table. */
static void print_type(FILE *out, const conf_key *k, int md)
{
    switch (k->type) {
    case T_STRING: fputs(k->flags & CONF_SECRET ? "secret string" : "string", out); break;
    case T_ENUM:
        fputs(md ? "one of `" : "one of ", out);
        if (md) md_cell(out, k->choices);
        else fputs(k->choices, out);
        if (md) fputs("`", out);
        break;
    case T_INT:
    case T_LLONG: fprintf(out, "integer %lld..%lld", k->min, k->max); break;
    case T_DOUBLE: fprintf(out, "number %g..%g", k->dmin, k->dmax); break;
    case T_BOOL: fputs("boolean", out); break;
    }
}

void sheaf_config_print_help(FILE *out)
{
    fputs("Configuration keys.  Set them in the config file (--config FILE or SHEAF_CONFIG;\n"
          "one `key = value` per line, '#' comment lines, values may be double-quoted with\n"
          "\\n \\t \\\\ \\\" escapes), in the environment as SHEAF_<KEY> (upper case, '.' and\n"
          "'-' as '_', e.g. SHEAF_LLM_BASE_URL), or with -X key=value; later sources win.\n\n",
          out);
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &conf_keys[i];
        fprintf(out, "  %s  (", k->name);
        print_type(out, k, 0);
        fputs(", default ", out);
        if (!k->def) fputs("unset", out);
        else if (k->type == T_STRING || k->type == T_ENUM) print_quoted(out, k->def);
        else fputs(k->def, out);
        fprintf(out, ")\n      %s\n", k->doc);
    }
    fputs("\n  kafka.<property>\n"
          "      Passed to librdkafka as <property> (e.g. kafka.security.protocol=SASL_SSL);\n"
          "      librdkafka refusing one is an error.  From the environment:\n"
          "      SHEAF_KAFKA_SECURITY_PROTOCOL ('_' becomes '.', lower case).\n"
          "\nThese SHEAF_ variables are not keys and are ignored: SHEAF_CONFIG, SHEAF_BUILD_DIR,\n"
          "SHEAF_SOURCE_DIR, SHEAF_BIN_DIR, SHEAF_DEV_*, SHEAF_TEST_*, SHEAF_SIM_*.  Any\n"
          "other SHEAF_ variable that names no key is an error.\n",
          out);
}

/* A default in a code span: quoted like print_quoted for strings ('|'
 * escaped for the table; a backtick cannot occur in a default). */
static void md_default(FILE *out, const conf_key *k)
{
    if (!k->def) {
        fputs("unset", out);
        return;
    }
    fputs("`", out);
    if (k->type == T_STRING || k->type == T_ENUM) {
        quote_value(out, k->def, 1);
    } else {
        fputs(k->def, out);
    }
    fputs("`", out);
}

void sheaf_config_print_markdown(FILE *out)
{
    char section[64] = "";
    fputs("<!-- Generated by `sheaf --help-config --markdown` from the key table in\n"
          "     common/core/config.c: do not edit. After adding or changing a key run\n"
          "     `cmake --build build --target docs-config` (the test docs.configuration\n"
          "     fails while this file is stale). -->\n"
          "# Configuration reference\n\n"
          "Every sheaf program (`sheaf`, `sheaf-worker`, `sheaf-reducer`) reads the same keys.\n"
          "Sources, weakest first: the defaults below, a config file (`-c FILE` or\n"
          "`SHEAF_CONFIG`; one `key = value` per line, `#` comment lines, values may be\n"
          "double-quoted with `\\n \\t \\\\ \\\"` escapes), the environment as\n"
          "`SHEAF_<KEY>` (upper case, `.` and `-` as `_`: `llm.base_url` is\n"
          "`SHEAF_LLM_BASE_URL`), then `-X key=value` flags. An unknown key, an unknown\n"
          "`SHEAF_*` variable or a value out of bounds stops the program with a message\n"
          "naming the key and where the value came from. Secrets are never printed\n"
          "(`sheaf config` shows them as `(set)`); read them from files (`*_file` keys) or the\n"
          "environment.\n",
          out);
    for (size_t i = 0; i < N_KEYS; i++) {
        const conf_key *k = &conf_keys[i];
        const char *dot = strchr(k->name, '.');
        char sec[64];
        snprintf(sec, sizeof(sec), "%.*s", dot ? (int)(dot - k->name) : (int)strlen(k->name),
                 k->name);
        if (!dot) snprintf(sec, sizeof(sec), "general");
        if (strcmp(sec, section) != 0) {
            snprintf(section, sizeof(section), "%s", sec);
            fprintf(out, "\n## %s\n\n| key | type | default | description |\n|---|---|---|---|\n",
                    section);
        }
        fprintf(out, "| `%s` | ", k->name);
        print_type(out, k, 1);
        fputs(" | ", out);
        md_default(out, k);
        fputs(" | ", out);
        md_cell(out, k->doc);
        fputs(" |\n", out);
    }
    fputs("\n## kafka.*\n\n"
          "`kafka.<property>` is passed to librdkafka as `<property>` (any property: TLS, SASL,\n"
          "tuning), e.g. `kafka.security.protocol=SASL_SSL`; a property librdkafka refuses is\n"
          "an error naming it, and properties holding passwords, secrets or keys are never\n"
          "printed. From the environment: `SHEAF_KAFKA_SECURITY_PROTOCOL` (`_` becomes `.`,\n"
          "lower case).\n\n"
          "## Not keys\n\n"
          "These `SHEAF_` variables are not keys and are ignored: `SHEAF_CONFIG`,\n"
          "`SHEAF_BUILD_DIR`, `SHEAF_SOURCE_DIR`, `SHEAF_BIN_DIR`, `SHEAF_DEV_*`, `SHEAF_TEST_*`,\n"
          "`SHEAF_SIM_*`. Any other `SHEAF_` variable that names no key is an error.\n",
          out);
}

void sheaf_topic_name(const sheaf_config *cfg, const char *suffix, char *out, size_t outlen)
{
    if (!out || outlen == 0) return;
    snprintf(out, outlen, "%s.%s", cfg->topic_prefix ? cfg->topic_prefix : "sheaf",
             suffix ? suffix : "");
}
