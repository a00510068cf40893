/* sheaf/config.h - one configuration for every sheaf program.
 *
 * Sources, weakest first: built-in defaults, a config file (`--config FILE`
 * or SHEAF_CONFIG), environment variables SHEAF_<KEY> (the key upper-cased,
 * '.' and '-' turned into '_', e.g. llm.base_url -> SHEAF_LLM_BASE_URL),
 * then command-line `-X key=value` flags.  The keys are declared once in a
 * table (config.c: name, type, default, bounds, field offset, doc); unknown
 * keys and bad values stop the program with a message naming the key and
 * where it came from.  Keys starting with "kafka." are passed through to
 * librdkafka (e.g. kafka.security.protocol); librdkafka itself validates
 * them when the client is created, and a refused property is an error.
 *
 * File format: one `key = value` per line; '#' starts a comment line;
 * blank lines ignored; values may be wrapped in double quotes, inside
 * which \n, \t, \\ and \" are escapes (for multi-line prompts).
 *
 * Values: integers are strict base 10 (the whole value, bounds checked);
 * booleans are true/false/1/0/yes/no/on/off; enumerations must be one of
 * their listed values; strings must be valid UTF-8.
 *
 * Environment: every variable starting with SHEAF_ must name a key, except
 * these, which are not keys and are skipped: SHEAF_CONFIG, SHEAF_DEV_DIR,
 * SHEAF_BUILD_DIR, SHEAF_SOURCE_DIR, SHEAF_BIN_DIR and any name starting
 * with SHEAF_TEST_ or SHEAF_SIM_.  SHEAF_KAFKA_<NAME> sets kafka.<name>
 * (lower-cased, '_' turned into '.'), e.g. SHEAF_KAFKA_SECURITY_PROTOCOL.
 *
 * Secrets (llm.api_key, redis.password) may come from files
 * (llm.api_key_file, redis.password_file: the first line, line ending
 * stripped; read only when the secret itself is unset) or the environment;
 * an empty secret counts as unset (NULL).  They are never printed:
 * sheaf_config_dump() shows them as "(set)" or "(unset)", and errors never
 * quote them. */
#ifndef SHEAF_CONFIG_H
#define SHEAF_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include "sheaf/error.h"

typedef struct sheaf_kv {
    char *key;
    char *value;
} sheaf_kv;

typedef struct sheaf_config {
    /* Kafka */
    char *brokers;               /* brokers: bootstrap.servers (required for Kafka use) */
    char *topic_prefix;          /* topic.prefix: topics are <prefix>.map/.dlq/.results */
    int session_timeout_ms;      /* group.session_timeout_ms: session.timeout.ms */
    int heartbeat_ms;            /* group.heartbeat_ms: heartbeat.interval.ms (< session) */
    sheaf_kv *kafka_props;       /* kafka.* passthrough in first-set order; key is the full
                                    "kafka.<property>", a later set replaces the value */
    size_t kafka_props_len;

    /* Redis */
    char *redis_url;             /* redis.url: redis://[user@]host:port[/db] */
    char *redis_password;        /* secret: SHEAF_REDIS_PASSWORD or redis.password_file */
    char *redis_password_file;
    int redis_timeout_ms;

    /* LLM endpoint (OpenAI-compatible) */
    char *llm_base_url;          /* llm.base_url, e.g. http://127.0.0.1:8080/v1 */
    char *llm_model;             /* llm.model */
    char *llm_api_key;           /* secret: SHEAF_LLM_API_KEY or llm.api_key_file */
    char *llm_api_key_file;
    double llm_temperature;      /* llm.temperature */
    int llm_max_tokens;          /* llm.max_output_tokens (or llm.max_tokens): completion budget per call */
    int llm_context_tokens;      /* llm.context_tokens: the model's window; 0 = by model name */
    int llm_timeout_ms;          /* llm.timeout_ms: whole request */
    int llm_connect_timeout_ms;  /* llm.connect_timeout_ms */
    int llm_max_attempts;        /* llm.max_attempts: tries per call incl. the first */
    int llm_backoff_ms;
    int llm_retry_horizon_ms;    /* llm.retry_horizon_ms: transient failures retried this long */          /* llm.backoff_ms: first retry delay, doubled per try */
    int llm_max_response_bytes;  /* llm.max_response_bytes: cap on an HTTP body */
    int llm_breaker_threshold;   /* llm.breaker_threshold: failures in a row that open it */
    int llm_breaker_cooldown_ms; /* llm.breaker_cooldown_ms: first open period */
    int llm_breaker_max_cooldown_ms; /* llm.breaker_max_cooldown_ms: doubling stops here */

    /* LLM call cache (sheaf/cache.h) */
    int cache_enabled;           /* cache.enabled: look calls up in Redis before sending */
    int cache_ttl_s;             /* cache.ttl_s: expiry of cache entries, 0 = none */
    int cache_nondeterministic;  /* cache.nondeterministic: cache temperature > 0 calls too */

    /* Submit */
    int producer_heartbeat_ms;   /* producer.heartbeat_ms: job alive marks while producing */

    /* Chunking */
    int chunk_max_tokens;        /* chunk.max_tokens */
    int chunk_overlap_tokens;    /* chunk.overlap_tokens */
    int chunk_pages_per_batch;   /* chunk.pages_per_batch: 0 = token mode */

    /* Producer input */
    char *input_format;          /* input.format: auto|text|jsonl */
    char *input_id_field;        /* input.id_field (JSONL) */
    char *input_text_field;      /* input.text_field (JSONL) */
    char *input_meta_fields;     /* input.meta_fields: comma list, "" = none, "*" = all others */
    int input_max_line_bytes;    /* input.max_line_bytes: cap on one JSONL line */
    long long input_max_doc_bytes; /* input.max_doc_bytes: cap on one document */
    char *input_on_error;        /* input.on_error: refuse|skip */
    /* `sheaf stream` (producer/stream.c; ids, texts and metadata by input.*) */
    char *stream_format;         /* stream.format: json|text */
    char *stream_pages_field;    /* stream.pages_field: JSON array of page texts */
    char *stream_group;          /* stream.group: "" = sheaf-stream-<name> */
    int stream_max_pending_chunks; /* stream.max_pending_chunks: pause above, 0 = never */
    int stream_window_docs;      /* stream.window_docs: tumbling windows of N documents */
    long long stream_window_ms;  /* stream.window_ms: tumbling windows of T ms */

    /* Worker and reducer */
    char *worker_group;          /* worker.group: Kafka consumer group id */
    int worker_max_in_flight;    /* worker.max_in_flight: LLM calls in flight per worker */
    int worker_drain_ms;         /* worker.drain_ms: SIGTERM drain deadline */
    double llm_rpm;              /* llm.rpm: fleet-wide requests/min, 0 = unlimited */
    double llm_tpm;              /* llm.tpm: fleet-wide tokens/min, 0 = unlimited */
    char *reducer_group;         /* reducer.group: Redis stream consumer group */
    int job_retention_s;         /* job.retention_s: ended jobs' keys expire after, 0 = never */
    int reducer_claim_idle_ms;   /* reducer.claim_idle_ms: claim a dead reducer's entries after */
    char *reducer_output;        /* reducer.output: JSONL file path, "-" = stdout, "" = none */

    /* Built-in pipeline prompts */
    char *prompt_system;         /* prompt.system */
    char *prompt_map;            /* prompt.map: user template for each chunk */
    char *prompt_combine;        /* prompt.combine: user template per document */
    char *prompt_overview;       /* prompt.overview: user template over document results */

    char *log_level;             /* log.level: error|warn|info|debug */
    int log_json;                /* log.json: JSON-lines logs */
    char *pipeline;              /* pipeline: built-in name or JSON file */
    char *llm_headers;           /* llm.headers (secret) */
    char *cost_prices;           /* cost.prices: "model=in/out; ..." per 1M tokens */
    char *cost_currency;         /* cost.currency */
    char *llm_structured_output; /* llm.structured_output: json_schema|prompt */
    int reducer_window;          /* reducer.window (alias reducer.threads) */
    int reducer_drain_ms;        /* reducer.drain_ms: SIGTERM drain deadline */
    int metrics_port;            /* metrics.port: /metrics and /health, 0 = off */
    char *metrics_bind;          /* metrics.bind: address the metrics endpoint listens on */
    unsigned char set_explicitly[32]; /* bit per key: set by file, env or flag */
} sheaf_config;

/* Fills cfg with the defaults (cfg need not be initialised; its old
 * contents are not freed).  Always succeeds unless out of memory. */
sheaf_err sheaf_config_init(sheaf_config *cfg);
/* Frees everything cfg owns and zeroes it; safe after a failed init or
 * load, twice, and on NULL. */
void sheaf_config_clear(sheaf_config *cfg);

/* Sets one key from a given source (source is used in error messages, e.g.
 * "file sheaf.conf line 3", "environment SHEAF_LLM_MODEL", "flag -X").
 * Unknown keys and out-of-range values fail with SHEAF_ERR_CONFIG. */
sheaf_err sheaf_config_set(sheaf_config *cfg, const char *key, const char *value,
                           const char *source, char *errstr, size_t errlen);

/* 1 when key was set by sheaf_config_set (file, environment or flag),
 * not left at its default. */
int sheaf_config_is_set(const sheaf_config *cfg, const char *key);

sheaf_err sheaf_config_load_file(sheaf_config *cfg, const char *path, char *errstr,
                                 size_t errlen);
/* Applies every SHEAF_* environment variable; an unknown SHEAF_ variable is
 * an error naming it (the names listed at the top of this file are not keys
 * and are skipped). */
sheaf_err sheaf_config_load_env(sheaf_config *cfg, char *errstr, size_t errlen);

/* The usual sequence for a program: defaults, the file named by
 * config_path (or SHEAF_CONFIG when NULL; none when both are unset or
 * empty), the environment, then each "key=value" of overrides (from -X
 * flags, split at the first '='), then secrets from their files.  Finally
 * validates cross-key rules: chunk.overlap_tokens < chunk.max_tokens / 2
 * and group.heartbeat_ms < group.session_timeout_ms.  cfg is initialised
 * here (do not call sheaf_config_init first); call sheaf_config_clear
 * afterwards, also on failure. */
sheaf_err sheaf_config_load(sheaf_config *cfg, const char *config_path,
                            char *const *overrides, size_t n_overrides, char *errstr,
                            size_t errlen);

/* Prints every key and its current value as a config file would hold it,
 * secrets shown as "(set)" or "(unset)" on comment lines ("# llm.api_key =
 * (set)") so the dump loads back as a config file.  kafka.* properties whose
 * names suggest a secret (password, secret, .pem, sasl.jaas, ...) are shown
 * the same way. */
void sheaf_config_dump(const sheaf_config *cfg, FILE *out);
/* Prints the key table with types, defaults and docs (for --help-config). */
void sheaf_config_print_help(FILE *out);
/* The same table as docs/configuration.md: Markdown, one section per key
 * prefix (`sheaf --help-config --markdown`). */
void sheaf_config_print_markdown(FILE *out);

/* Topic names: <topic.prefix>.<suffix> into out (truncated to outlen). */
void sheaf_topic_name(const sheaf_config *cfg, const char *suffix, char *out, size_t outlen);

#endif
