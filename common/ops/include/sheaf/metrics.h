/* sheaf/metrics.h - Prometheus metrics: a small thread-safe registry and
 * the HTTP endpoint that serves it with /health.
 *
 * The registry holds families (a name, a help line, a type) of series.  A
 * series is a counter (monotonic, unsigned), a gauge (signed integer) or a
 * histogram with fixed bucket bounds; it may carry one label pair (e.g.
 * kind="prompt"), the same label name for every series of a family.
 * Updates are lock-free atomics, so any thread may count; registering
 * takes the registry's lock, and registering a series that exists returns
 * it (several threads of a reducer each ask for the same counter and share
 * it).
 *
 * Rendering writes the Prometheus text exposition format 0.0.4: per family
 * "# HELP" (\\ and newline escaped) and "# TYPE", then its samples; label
 * values escape \\, " and newline; a histogram's buckets are cumulative
 * (name_bucket{le="..."}), end with le="+Inf", and are followed by
 * name_sum and name_count (equal to the +Inf bucket).  Counter names must
 * end in _total.  Families come out in registration order.
 *
 * The server (libevent's evhttp, on the caller's loop or a thread of its
 * own) answers
 *   GET /metrics   200, the registry rendered
 *   GET /health    200 {"status":"ok","checks":{...}} or 503
 *                  {"status":"unhealthy","checks":{...}} (sheaf/health.h)
 * and 404 for other paths, 405 for methods other than GET and HEAD, 413
 * for a request body over SHEAF_METRICS_MAX_BODY, 414 for a URL over
 * SHEAF_METRICS_MAX_URL.  The handler only reads atomics and the health
 * checks' published state: it never touches a Kafka, Redis or LLM handle. */
#ifndef SHEAF_METRICS_H
#define SHEAF_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/buf.h"
#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/health.h"

#define SHEAF_METRICS_MAX_BUCKETS 32
#define SHEAF_METRICS_MAX_BODY 1024          /* a request body over this is refused (413) */
#define SHEAF_METRICS_MAX_URL 256            /* a URL over this is refused (414) */
#define SHEAF_METRICS_MAX_OUTPUT (16u << 20) /* cap on one rendering */

typedef enum sheaf_metric_type {
    SHEAF_METRIC_COUNTER = 0,
    SHEAF_METRIC_GAUGE = 1,
    SHEAF_METRIC_HISTOGRAM = 2
} sheaf_metric_type;

typedef struct sheaf_metrics sheaf_metrics;  /* the registry */
typedef struct sheaf_metric sheaf_metric;    /* one series */

/* An empty registry, or NULL when out of memory. */
sheaf_metrics *sheaf_metrics_create(void);
/* Frees the registry and every series in it (their pointers become
 * invalid).  NULL is a no-op. */
void sheaf_metrics_destroy(sheaf_metrics *m);

/* Registers (or finds) a series.  name: [a-zA-Z_:][a-zA-Z0-9_:]*, ending in
 * _total for a counter; help: one line of text (escaped on output);
 * label/value: NULL for none, else a label name [a-zA-Z_][a-zA-Z0-9_]*
 * (not "le", not starting with "__") and any UTF-8 value; bounds: the
 * histogram's upper bounds, finite and strictly increasing, at most
 * SHEAF_METRICS_MAX_BUCKETS (+Inf is implied), else NULL/0.  A series with
 * the same name and label value is returned as is.  NULL with errstr naming
 * the metric on a bad argument, a clash with an existing family (another
 * type, help, label name or bounds) or no memory. */
sheaf_metric *sheaf_metrics_add(sheaf_metrics *m, sheaf_metric_type type, const char *name,
                                const char *help, const char *label, const char *value,
                                const double *bounds, size_t n_bounds, char *errstr,
                                size_t errlen);

/* Updates; each is a no-op on NULL or on a series of another type. */
void sheaf_metric_add(sheaf_metric *counter, uint64_t n);
void sheaf_metric_inc(sheaf_metric *counter);
void sheaf_metric_set(sheaf_metric *gauge, int64_t v);
void sheaf_metric_gauge_add(sheaf_metric *gauge, int64_t delta);
void sheaf_metric_observe(sheaf_metric *histogram, double v);

/* Reads a counter or gauge (0 for NULL or a histogram); for tests. */
int64_t sheaf_metric_value(const sheaf_metric *s);

/* Appends the exposition of every family to out.  SHEAF_ERR_TOO_LARGE or
 * SHEAF_ERR_NOMEM when out refused the text (out then holds a prefix). */
sheaf_err sheaf_metrics_render(sheaf_metrics *m, sheaf_buf *out);

/* ---- the HTTP endpoint (metrics_http.c) ---- */

typedef struct sheaf_metrics_server sheaf_metrics_server;
struct event_base;

/* Serves m and h (both borrowed: they must outlive the server) on
 * metrics.bind port metrics.port, from a thread of its own (m and h are
 * then read from that thread).  Call only when metrics.port > 0.  NULL
 * with errstr naming the key when the address does not parse or the port
 * cannot be bound. */
sheaf_metrics_server *sheaf_metrics_server_create(const sheaf_config *cfg, sheaf_metrics *m,
                                                  sheaf_health *h, char *errstr,
                                                  size_t errlen);
/* The same, served by base (borrowed; it must outlive the server) from the
 * thread that turns it: no thread of its own. */
sheaf_metrics_server *sheaf_metrics_server_create_on(struct event_base *base,
                                                     const sheaf_config *cfg, sheaf_metrics *m,
                                                     sheaf_health *h, char *errstr,
                                                     size_t errlen);
/* Stops the server (and waits for its thread, if it has one).  NULL is a
 * no-op. */
void sheaf_metrics_server_destroy(sheaf_metrics_server *s);

#endif
