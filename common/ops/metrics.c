/* metrics.c - the metrics registry and its Prometheus text rendering.  See
 * sheaf/metrics.h.
 *
 * Layout: a list of families in registration order, each with its list of
 * series.  The lists only grow while the registry lives, under the
 * registry's mutex, which rendering also takes (so it sees whole series);
 * values are C11 atomics updated without the lock.
 *
 * A histogram keeps one non-cumulative count per bucket (the last is
 * +Inf) and no separate total: rendering sums the buckets as it goes, so
 * the +Inf bucket always equals _count even while other threads observe.
 * The sum is a double kept as its bits in an atomic 64-bit word, added
 * with a compare-and-swap loop (C11 has no atomic double add). */
#include "sheaf/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/util.h"

struct sheaf_metric {
    struct family *fam;
    sheaf_metric *next;            /* in the family */
    char *value;                   /* the label value, NULL without a label */
    atomic_uint_fast64_t count;    /* counter */
    atomic_int_fast64_t gauge;     /* gauge */
    atomic_uint_fast64_t *buckets; /* histogram: n_bounds + 1, not cumulative */
    atomic_uint_fast64_t sum_bits; /* histogram: the sum, a double's bits */
};

typedef struct family {
    struct family *next;
    sheaf_metric_type type;
    char *name, *help, *label;     /* label: NULL when the family has none */
    double *bounds;
    size_t n_bounds;
    sheaf_metric *series, *last;
} family;

struct sheaf_metrics {
    pthread_mutex_t lock;
    family *head, *tail;
};

/* ---- lifecycle ---- */

sheaf_metrics *sheaf_metrics_create(void)
{
    sheaf_metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

static void series_free(sheaf_metric *s)
{
    if (!s) return;
    free(s->value);
    free(s->buckets);
    free(s);
}

static void family_free(family *f)
{
    if (!f) return;
    for (sheaf_metric *s = f->series, *next; s; s = next) {
        next = s->next;
        series_free(s);
    }
    free(f->name);
    free(f->help);
    free(f->label);
    free(f->bounds);
    free(f);
}

void sheaf_metrics_destroy(sheaf_metrics *m)
{
    if (!m) return;
    for (family *f = m->head, *next; f; f = next) {
        next = f->next;
        family_free(f);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---- registration ---- */

static int name_ok(const char *s, int colon)
{
    if (!s || !*s) return 0;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (colon && c == ':');
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return 0;
    }
    return 1;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Checks the arguments of sheaf_metrics_add that do not depend on the
 * registry.  0 or -1 with errstr. */
static int check_args(sheaf_metric_type type, const char *name, const char *help,
                      const char *label, const char *value, const double *bounds,
                      size_t n_bounds, char *errstr, size_t errlen)
{
    size_t bad = 0;
    if (!name_ok(name, 1)) {
        sheaf_set_err(errstr, errlen, "metric \"%s\": not a valid metric name", name ? name : "");
        return -1;
    }
    if (type != SHEAF_METRIC_COUNTER && type != SHEAF_METRIC_GAUGE &&
        type != SHEAF_METRIC_HISTOGRAM) {
        sheaf_set_err(errstr, errlen, "metric %s: unknown type", name);
        return -1;
    }
    if (type == SHEAF_METRIC_COUNTER && !ends_with(name, "_total")) {
        sheaf_set_err(errstr, errlen, "metric %s: a counter's name must end in _total", name);
        return -1;
    }
    if (!help || !sheaf_utf8_valid(help, strlen(help), &bad)) {
        sheaf_set_err(errstr, errlen, "metric %s: help text missing or not UTF-8", name);
        return -1;
    }
    if (!label != !value) {
        sheaf_set_err(errstr, errlen, "metric %s: a label needs both a name and a value", name);
        return -1;
    }
    if (label && (!name_ok(label, 0) || strncmp(label, "__", 2) == 0 ||
                  (type == SHEAF_METRIC_HISTOGRAM && strcmp(label, "le") == 0))) {
        sheaf_set_err(errstr, errlen, "metric %s: \"%s\" is not a usable label name", name, label);
        return -1;
    }
    if (value && !sheaf_utf8_valid(value, strlen(value), &bad)) {
        sheaf_set_err(errstr, errlen, "metric %s: label value is not UTF-8", name);
        return -1;
    }
    if (type != SHEAF_METRIC_HISTOGRAM && n_bounds) {
        sheaf_set_err(errstr, errlen, "metric %s: only a histogram has buckets", name);
        return -1;
    }
    if (type == SHEAF_METRIC_HISTOGRAM) {
        if (n_bounds == 0 || !bounds || n_bounds > SHEAF_METRICS_MAX_BUCKETS) {
            sheaf_set_err(errstr, errlen, "metric %s: a histogram needs 1..%d bucket bounds", name,
                          SHEAF_METRICS_MAX_BUCKETS);
            return -1;
        }
        for (size_t i = 0; i < n_bounds; i++) {
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
                sheaf_set_err(errstr, errlen, "metric %s: bucket bounds must be finite and "
                              "strictly increasing", name);
                return -1;
            }
        }
    }
    return 0;
}

/* A new series of family f, appended to it; NULL when out of memory. */
static sheaf_metric *series_new(family *f, const char *value)
{
    sheaf_metric *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->fam = f;
    atomic_init(&s->count, 0);
    atomic_init(&s->gauge, 0);
    atomic_init(&s->sum_bits, 0); /* the bits of +0.0 */
    if ((value && !(s->value = strdup(value))) ||
        (f->type == SHEAF_METRIC_HISTOGRAM &&
         !(s->buckets = calloc(f->n_bounds + 1, sizeof(*s->buckets))))) {
        series_free(s);
        return NULL;
    }
    for (size_t i = 0; s->buckets && i <= f->n_bounds; i++) atomic_init(&s->buckets[i], 0);
    if (f->last) f->last->next = s;
    else f->series = s;
    f->last = s;
    return s;
}

static family *family_new(sheaf_metric_type type, const char *name, const char *help,
                          const char *label, const double *bounds, size_t n_bounds)
{
    family *f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->type = type;
    f->n_bounds = n_bounds;
    if (!(f->name = strdup(name)) || !(f->help = strdup(help)) ||
        (label && !(f->label = strdup(label))) ||
        (n_bounds && !(f->bounds = malloc(n_bounds * sizeof(*f->bounds))))) {
        family_free(f);
        return NULL;
    }
    if (n_bounds) memcpy(f->bounds, bounds, n_bounds * sizeof(*f->bounds));
    return f;
}

sheaf_metric *sheaf_metrics_add(sheaf_metrics *m, sheaf_metric_type type, const char *name,
                                const char *help, const char *label, const char *value,
                                const double *bounds, size_t n_bounds, char *errstr,
                                size_t errlen)
{
    sheaf_metric *s = NULL;
    family *f;
    int fresh = 0;

    if (!m) {
        sheaf_set_err(errstr, errlen, "metric %s: no registry", name ? name : "");
        return NULL;
    }
    if (check_args(type, name, help, label, value, bounds, n_bounds, errstr, errlen) != 0)
        return NULL;
    pthread_mutex_lock(&m->lock);
    for (f = m->head; f && strcmp(f->name, name) != 0; f = f->next) {}
    if (f) {
        if (f->type != type || strcmp(f->help, help) != 0 || !same_str(f->label, label) ||
            f->n_bounds != n_bounds ||
            (n_bounds && memcmp(f->bounds, bounds, n_bounds * sizeof(*bounds)) != 0)) {
            sheaf_set_err(errstr, errlen, "metric %s: registered before with another type, help, "
                          "label name or buckets", name);
            goto done;
        }
        for (s = f->series; s && !same_str(s->value, value); s = s->next) {}
        if (s) goto done;
    } else {
        if (!(f = family_new(type, name, help, label, bounds, n_bounds))) goto nomem;
        fresh = 1;
    }
    if (!(s = series_new(f, value))) {
        if (fresh) family_free(f);
        goto nomem;
    }
    if (fresh) {
        if (m->tail) m->tail->next = f;
        else m->head = f;
        m->tail = f;
    }
    goto done;
nomem:
    sheaf_set_err(errstr, errlen, "metric %s: out of memory", name);
    s = NULL;
done:
    pthread_mutex_unlock(&m->lock);
    return s;
}

/* ---- updates ---- */

void sheaf_metric_add(sheaf_metric *c, uint64_t n)
{
    if (c && c->fam->type == SHEAF_METRIC_COUNTER)
        atomic_fetch_add_explicit(&c->count, n, memory_order_relaxed);
}

void sheaf_metric_inc(sheaf_metric *c)
{
    sheaf_metric_add(c, 1);
}

void sheaf_metric_set(sheaf_metric *g, int64_t v)
{
    if (g && g->fam->type == SHEAF_METRIC_GAUGE)
        atomic_store_explicit(&g->gauge, v, memory_order_relaxed);
}

void sheaf_metric_gauge_add(sheaf_metric *g, int64_t delta)
{
    if (g && g->fam->type == SHEAF_METRIC_GAUGE)
        atomic_fetch_add_explicit(&g->gauge, delta, memory_order_relaxed);
}

static double bits_double(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof(d));
    return d;
}

static uint64_t double_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof(b));
    return b;
}

void sheaf_metric_observe(sheaf_metric *h, double v)
{
    size_t i = 0;
    if (!h || h->fam->type != SHEAF_METRIC_HISTOGRAM || isnan(v)) return;
    /* The first bucket whose upper bound holds v (le is "less or equal"). */
    while (i < h->fam->n_bounds && v > h->fam->bounds[i]) i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    uint_fast64_t old = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&h->sum_bits, &old,
                                                  double_bits(bits_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed)) {
    }
}

int64_t sheaf_metric_value(const sheaf_metric *s)
{
    if (!s) return 0;
    if (s->fam->type == SHEAF_METRIC_COUNTER)
        return (int64_t)atomic_load_explicit(&((sheaf_metric *)s)->count, memory_order_relaxed);
    if (s->fam->type == SHEAF_METRIC_GAUGE)
        return (int64_t)atomic_load_explicit(&((sheaf_metric *)s)->gauge, memory_order_relaxed);
    return 0;
}

/* ---- rendering ---- */

/* A double as Prometheus reads it: the shortest of %.15g/%.17g that reads
 * back the same, +Inf, -Inf or NaN. */
static void format_double(double d, char out[32])
{
    if (isnan(d)) {
        snprintf(out, 32, "NaN");
    } else if (isinf(d)) {
        snprintf(out, 32, "%sInf", d > 0 ? "+" : "-");
    } else {
        snprintf(out, 32, "%.15g", d);
        if (strtod(out, NULL) != d) snprintf(out, 32, "%.17g", d);
    }
}

/* Appends s with the escapes of a HELP line (quote 0: \\ and newline) or a
 * label value (quote 1: also "). */
static sheaf_err append_escaped(sheaf_buf *out, const char *s, int quote)
{
    sheaf_err err = SHEAF_OK;
    const char *run = s;
    for (; *s && err == SHEAF_OK; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n"
                          : (quote && *s == '"') ? "\\\"" : NULL;
        if (!esc) continue;
        err = sheaf_buf_append(out, run, (size_t)(s - run));
        if (err == SHEAF_OK) err = sheaf_buf_appends(out, esc);
        run = s + 1;
    }
    if (err == SHEAF_OK) err = sheaf_buf_append(out, run, (size_t)(s - run));
    return err;
}

/* Appends name[suffix]{label="value"[,le="le"]} (braces only when there is
 * a label or le). */
static sheaf_err append_series_name(sheaf_buf *out, const family *f, const sheaf_metric *s,
                                    const char *suffix, const char *le)
{
    sheaf_err err = sheaf_buf_appendf(out, "%s%s", f->name, suffix);
    if (err != SHEAF_OK || (!f->label && !le)) return err;
    err = sheaf_buf_appends(out, "{");
    if (err == SHEAF_OK && f->label) {
        err = sheaf_buf_appendf(out, "%s=\"", f->label);
        if (err == SHEAF_OK) err = append_escaped(out, s->value, 1);
        if (err == SHEAF_OK) err = sheaf_buf_appends(out, le ? "\"," : "\"");
    }
    if (err == SHEAF_OK && le) err = sheaf_buf_appendf(out, "le=\"%s\"", le);
    if (err == SHEAF_OK) err = sheaf_buf_appends(out, "}");
    return err;
}

static sheaf_err render_histogram(sheaf_buf *out, const family *f, sheaf_metric *s)
{
    char le[32], sum[32];
    uint64_t cumulative = 0;
    sheaf_err err = SHEAF_OK;
    for (size_t i = 0; i <= f->n_bounds && err == SHEAF_OK; i++) {
        cumulative += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < f->n_bounds) format_double(f->bounds[i], le);
        else snprintf(le, sizeof(le), "+Inf");
        err = append_series_name(out, f, s, "_bucket", le);
        if (err == SHEAF_OK) err = sheaf_buf_appendf(out, " %llu\n", (unsigned long long)cumulative);
    }
    format_double(bits_double(atomic_load_explicit(&s->sum_bits, memory_order_relaxed)), sum);
    if (err == SHEAF_OK) err = append_series_name(out, f, s, "_sum", NULL);
    if (err == SHEAF_OK) err = sheaf_buf_appendf(out, " %s\n", sum);
    if (err == SHEAF_OK) err = append_series_name(out, f, s, "_count", NULL);
    if (err == SHEAF_OK) err = sheaf_buf_appendf(out, " %llu\n", (unsigned long long)cumulative);
    return err;
}

static sheaf_err render_family(sheaf_buf *out, const family *f)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    sheaf_err err = sheaf_buf_appendf(out, "# HELP %s ", f->name);
    if (err == SHEAF_OK) err = append_escaped(out, f->help, 0);
    if (err == SHEAF_OK)
        err = sheaf_buf_appendf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
    for (sheaf_metric *s = f->series; s && err == SHEAF_OK; s = s->next) {
        if (f->type == SHEAF_METRIC_HISTOGRAM) {
            err = render_histogram(out, f, s);
            continue;
        }
        err = append_series_name(out, f, s, "", NULL);
        if (err != SHEAF_OK) break;
        if (f->type == SHEAF_METRIC_COUNTER)
            err = sheaf_buf_appendf(out, " %llu\n", (unsigned long long)atomic_load_explicit(
                                                        &s->count, memory_order_relaxed));
        else
            err = sheaf_buf_appendf(out, " %lld\n", (long long)atomic_load_explicit(
                                                        &s->gauge, memory_order_relaxed));
    }
    return err;
}

sheaf_err sheaf_metrics_render(sheaf_metrics *m, sheaf_buf *out)
{
    sheaf_err err = SHEAF_OK;
    if (!m || !out) return SHEAF_ERR_INVALID;
    pthread_mutex_lock(&m->lock);
    for (family *f = m->head; f && err == SHEAF_OK; f = f->next) err = render_family(out, f);
    pthread_mutex_unlock(&m->lock);
    /* An empty registry still gives a valid (empty) body. */
    if (err == SHEAF_OK && !out->data) err = sheaf_buf_append(out, "", 0);
    return err;
}
