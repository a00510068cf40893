/* test_metrics.c - unit tests of the metrics registry, its Prometheus
 * rendering (common/ops/metrics.c), the health checks (common/ops/health.c) and
 * the HTTP endpoint (common/ops/metrics_http.c).
 *
 * Rendering is compared byte for byte: counters, gauges, labels,
 * histograms (cumulative buckets, le inclusive, +Inf equal to _count, the
 * sum), the escapes of help text and label values.  Registration refuses
 * what the format cannot carry and returns the existing series for a
 * repeated name and label.  Threads count at once and lose nothing.  The
 * endpoint is served on a loopback port and asked with libcurl: /metrics,
 * /health 200 and 503, 404, 405, 413, 414; a second server on the same
 * port fails with an error naming metrics.port. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <pthread.h>

#include "sheaf/config.h"
#include "sheaf/health.h"
#include "sheaf/metrics.h"

/* Renders m into a malloc'd string. */
static char *render(sheaf_metrics *m)
{
    sheaf_buf b;
    sheaf_buf_init(&b, 1 << 20);
    assert_int_equal(sheaf_metrics_render(m, &b), SHEAF_OK);
    return sheaf_buf_steal(&b);
}

static sheaf_metric *add(sheaf_metrics *m, sheaf_metric_type t, const char *name,
                         const char *help, const char *label, const char *value)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_metric *s = sheaf_metrics_add(m, t, name, help, label, value, NULL, 0, errstr,
                                        sizeof(errstr));
    if (!s) fail_msg("%s", errstr);
    return s;
}

/* ---- rendering ---- */

static void test_empty(void **state)
{
    (void)state;
    sheaf_metrics *m = sheaf_metrics_create();
    char *text = render(m);
    assert_string_equal(text, "");
    free(text);
    sheaf_metrics_destroy(m);
    sheaf_metrics_destroy(NULL);
}

static void test_counter_and_gauge(void **state)
{
    (void)state;
    sheaf_metrics *m = sheaf_metrics_create();
    sheaf_metric *c = add(m, SHEAF_METRIC_COUNTER, "sheaf_things_total", "Things seen.", NULL,
                          NULL);
    sheaf_metric *g = add(m, SHEAF_METRIC_GAUGE, "sheaf_level", "A level.", NULL, NULL);
    sheaf_metric_inc(c);
    sheaf_metric_add(c, 41);
    sheaf_metric_set(g, 10);
    sheaf_metric_gauge_add(g, -13);
    /* Wrong-type updates are ignored. */
    sheaf_metric_set(c, 5);
    sheaf_metric_add(g, 5);
    sheaf_metric_observe(c, 1.0);
    assert_int_equal(sheaf_metric_value(c), 42);
    assert_int_equal(sheaf_metric_value(g), -3);
    char *text = render(m);
    assert_string_equal(text,
                        "# HELP sheaf_things_total Things seen.\n"
                        "# TYPE sheaf_things_total counter\n"
                        "sheaf_things_total 42\n"
                        "# HELP sheaf_level A level.\n"
                        "# TYPE sheaf_level gauge\n"
                        "sheaf_level -3\n");
    free(text);
    sheaf_metrics_destroy(m);
}

static void test_labels_and_escaping(void **state)
{
    (void)state;
    sheaf_metrics *m = sheaf_metrics_create();
    const char *help = "Tokens \"used\",\nby kind \\ provider.";
    sheaf_metric *p = add(m, SHEAF_METRIC_COUNTER, "sheaf_tokens_total", help, "kind", "prompt");
    sheaf_metric *c = add(m, SHEAF_METRIC_COUNTER, "sheaf_tokens_total", help, "kind",
                          "completion");
    sheaf_metric *odd = add(m, SHEAF_METRIC_COUNTER, "sheaf_tokens_total", help, "kind",
                            "a\"b\\c\nd");
    /* The same name and label value is the same series. */
    assert_ptr_equal(add(m, SHEAF_METRIC_COUNTER, "sheaf_tokens_total", help, "kind", "prompt"), p);
    sheaf_metric_add(p, 100);
    sheaf_metric_add(c, 7);
    sheaf_metric_inc(odd);
    char *text = render(m);
    assert_string_equal(text,
                        "# HELP sheaf_tokens_total Tokens \"used\",\\nby kind \\\\ provider.\n"
                        "# TYPE sheaf_tokens_total counter\n"
                        "sheaf_tokens_total{kind=\"prompt\"} 100\n"
                        "sheaf_tokens_total{kind=\"completion\"} 7\n"
                        "sheaf_tokens_total{kind=\"a\\\"b\\\\c\\nd\"} 1\n");
    free(text);
    sheaf_metrics_destroy(m);
}

static void test_histogram(void **state)
{
    (void)state;
    static const double bounds[] = {0.1, 1, 2.5};
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_metrics *m = sheaf_metrics_create();
    sheaf_metric *h = sheaf_metrics_add(m, SHEAF_METRIC_HISTOGRAM, "sheaf_call_seconds",
                                        "Call time.", NULL, NULL, bounds, 3, errstr,
                                        sizeof(errstr));
    sheaf_metric *hl = sheaf_metrics_add(m, SHEAF_METRIC_HISTOGRAM, "sheaf_step_seconds",
                                         "Step time.", "stage", "map", bounds, 3, errstr,
                                         sizeof(errstr));
    assert_non_null(h);
    assert_non_null(hl);
    sheaf_metric_observe(h, 0.05);
    sheaf_metric_observe(h, 0.1);  /* le is inclusive */
    sheaf_metric_observe(h, 0.5);
    sheaf_metric_observe(h, 100);  /* only +Inf */
    sheaf_metric_observe(h, 0.0 / 0.0); /* NaN is dropped */
    sheaf_metric_observe(hl, 2);
    char *text = render(m);
    assert_string_equal(text,
                        "# HELP sheaf_call_seconds Call time.\n"
                        "# TYPE sheaf_call_seconds histogram\n"
                        "sheaf_call_seconds_bucket{le=\"0.1\"} 2\n"
                        "sheaf_call_seconds_bucket{le=\"1\"} 3\n"
                        "sheaf_call_seconds_bucket{le=\"2.5\"} 3\n"
                        "sheaf_call_seconds_bucket{le=\"+Inf\"} 4\n"
                        "sheaf_call_seconds_sum 100.65\n"
                        "sheaf_call_seconds_count 4\n"
                        "# HELP sheaf_step_seconds Step time.\n"
                        "# TYPE sheaf_step_seconds histogram\n"
                        "sheaf_step_seconds_bucket{stage=\"map\",le=\"0.1\"} 0\n"
                        "sheaf_step_seconds_bucket{stage=\"map\",le=\"1\"} 0\n"
                        "sheaf_step_seconds_bucket{stage=\"map\",le=\"2.5\"} 1\n"
                        "sheaf_step_seconds_bucket{stage=\"map\",le=\"+Inf\"} 1\n"
                        "sheaf_step_seconds_sum{stage=\"map\"} 2\n"
                        "sheaf_step_seconds_count{stage=\"map\"} 1\n");
    free(text);
    sheaf_metrics_destroy(m);
}

static void test_refused(void **state)
{
    (void)state;
    static const double good[] = {1, 2}, bad[] = {2, 1}, inf[] = {1, 1.0 / 0.0};
    char errstr[SHEAF_ERRSTR_SIZE];
    sheaf_metrics *m = sheaf_metrics_create();
#define REFUSED(type, name, label, value, b, n, want)                                        \
    do {                                                                                     \
        errstr[0] = '\0';                                                                    \
        assert_null(sheaf_metrics_add(m, type, name, "help", label, value, b, n, errstr,     \
                                      sizeof(errstr)));                                      \
        if (!strstr(errstr, want)) fail_msg("error \"%s\" lacks \"%s\"", errstr, want);      \
    } while (0)
    REFUSED(SHEAF_METRIC_COUNTER, "sheaf_things", NULL, NULL, NULL, 0, "_total");
    REFUSED(SHEAF_METRIC_GAUGE, "9lives", NULL, NULL, NULL, 0, "not a valid metric name");
    REFUSED(SHEAF_METRIC_GAUGE, "has-dash", NULL, NULL, NULL, 0, "has-dash");
    REFUSED(SHEAF_METRIC_GAUGE, "", NULL, NULL, NULL, 0, "not a valid metric name");
    REFUSED(SHEAF_METRIC_GAUGE, "sheaf_g", "bad-label", "x", NULL, 0, "label name");
    REFUSED(SHEAF_METRIC_GAUGE, "sheaf_g", "__reserved", "x", NULL, 0, "label name");
    REFUSED(SHEAF_METRIC_GAUGE, "sheaf_g", "kind", NULL, NULL, 0, "both");
    REFUSED(SHEAF_METRIC_HISTOGRAM, "sheaf_h", "le", "x", good, 2, "label name");
    REFUSED(SHEAF_METRIC_HISTOGRAM, "sheaf_h", NULL, NULL, bad, 2, "increasing");
    REFUSED(SHEAF_METRIC_HISTOGRAM, "sheaf_h", NULL, NULL, inf, 2, "finite");
    REFUSED(SHEAF_METRIC_HISTOGRAM, "sheaf_h", NULL, NULL, NULL, 0, "bucket");
    REFUSED(SHEAF_METRIC_GAUGE, "sheaf_g", NULL, NULL, good, 2, "only a histogram");
    /* Clashes with a family registered before. */
    assert_non_null(add(m, SHEAF_METRIC_GAUGE, "sheaf_g", "help", "kind", "a"));
    assert_non_null(add(m, SHEAF_METRIC_GAUGE, "sheaf_g_total", "help", NULL, NULL));
    REFUSED(SHEAF_METRIC_COUNTER, "sheaf_g_total", NULL, NULL, NULL, 0, "registered before");
    REFUSED(SHEAF_METRIC_GAUGE, "sheaf_g", "other", "a", NULL, 0, "registered before");
    REFUSED(SHEAF_METRIC_GAUGE, "sheaf_g", NULL, NULL, NULL, 0, "registered before");
    assert_null(sheaf_metrics_add(NULL, SHEAF_METRIC_GAUGE, "sheaf_x", "h", NULL, NULL, NULL, 0,
                                  errstr, sizeof(errstr)));
#undef REFUSED
    /* NULL series: updates are no-ops. */
    sheaf_metric_inc(NULL);
    sheaf_metric_set(NULL, 1);
    sheaf_metric_gauge_add(NULL, 1);
    sheaf_metric_observe(NULL, 1);
    assert_int_equal(sheaf_metric_value(NULL), 0);
    sheaf_metrics_destroy(m);
}

/* ---- threads ---- */

typedef struct hammer {
    sheaf_metrics *m;
} hammer;

static void *hammer_run(void *arg)
{
    static const double bounds[] = {1, 10};
    hammer *hm = arg;
    char errstr[SHEAF_ERRSTR_SIZE];
    /* Every thread registers: all get the same series. */
    sheaf_metric *c = sheaf_metrics_add(hm->m, SHEAF_METRIC_COUNTER, "sheaf_hits_total", "Hits.",
                                        NULL, NULL, NULL, 0, errstr, sizeof(errstr));
    sheaf_metric *g = sheaf_metrics_add(hm->m, SHEAF_METRIC_GAUGE, "sheaf_level", "Level.", NULL,
                                        NULL, NULL, 0, errstr, sizeof(errstr));
    sheaf_metric *h = sheaf_metrics_add(hm->m, SHEAF_METRIC_HISTOGRAM, "sheaf_obs", "Obs.", NULL,
                                        NULL, bounds, 2, errstr, sizeof(errstr));
    for (int i = 0; i < 100000; i++) {
        sheaf_metric_inc(c);
        sheaf_metric_gauge_add(g, 1);
        sheaf_metric_gauge_add(g, -1);
        sheaf_metric_observe(h, 0.5);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    hammer hm = {sheaf_metrics_create()};
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, hammer_run, &hm), 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    char *text = render(hm.m);
    assert_non_null(strstr(text, "\nsheaf_hits_total 400000\n"));
    assert_non_null(strstr(text, "\nsheaf_level 0\n"));
    assert_non_null(strstr(text, "sheaf_obs_bucket{le=\"1\"} 400000\n"));
    assert_non_null(strstr(text, "sheaf_obs_sum 200000\n"));
    assert_non_null(strstr(text, "sheaf_obs_count 400000\n"));
    free(text);
    sheaf_metrics_destroy(hm.m);
}

/* ---- health ---- */

static char *render_health(sheaf_health *h, int *healthy)
{
    sheaf_buf b;
    sheaf_buf_init(&b, 1 << 16);
    assert_int_equal(sheaf_health_render(h, &b, healthy), SHEAF_OK);
    return sheaf_buf_steal(&b);
}

static void test_health(void **state)
{
    (void)state;
    int healthy = -1;
    sheaf_health *h = sheaf_health_create();
    char *text = render_health(h, &healthy);
    assert_string_equal(text, "{\"status\":\"ok\",\"checks\":{}}\n");
    assert_int_equal(healthy, 1);
    free(text);

    assert_int_equal(sheaf_health_add(h, "redis", 0), SHEAF_OK);
    assert_int_equal(sheaf_health_add(h, "llm", 0), SHEAF_OK);
    assert_int_equal(sheaf_health_add(h, "Bad Name", 0), SHEAF_ERR_INVALID);
    assert_int_equal(sheaf_health_add(h, "", 0), SHEAF_ERR_INVALID);
    text = render_health(h, &healthy);
    assert_string_equal(text, "{\"status\":\"ok\",\"checks\":{\"redis\":\"ok\",\"llm\":\"ok\"}}\n");
    assert_int_equal(healthy, 1);
    free(text);

    sheaf_health_set(h, "redis", 0, "Connection refused \"127.0.0.1:6379\"\n");
    sheaf_health_set(h, "nosuch", 0, "ignored");
    assert_int_equal(sheaf_health_ok(h, "redis"), 0);
    assert_int_equal(sheaf_health_ok(h, "llm"), 1);
    text = render_health(h, &healthy);
    assert_string_equal(text, "{\"status\":\"unhealthy\",\"checks\":{\"redis\":\"Connection "
                              "refused \\\"127.0.0.1:6379\\\"\\u000a\",\"llm\":\"ok\"}}\n");
    assert_int_equal(healthy, 0);
    free(text);

    sheaf_health_set(h, "redis", 1, "whatever");
    text = render_health(h, &healthy);
    assert_int_equal(healthy, 1);
    free(text);

    /* A check not published for its stale time is unhealthy. */
    assert_int_equal(sheaf_health_add(h, "kafka", 50), SHEAF_OK);
    assert_int_equal(sheaf_health_ok(h, "kafka"), 1);
    usleep(120 * 1000);
    assert_int_equal(sheaf_health_ok(h, "kafka"), 0);
    text = render_health(h, &healthy);
    assert_int_equal(healthy, 0);
    assert_non_null(strstr(text, "\"kafka\":\"no update for"));
    free(text);
    sheaf_health_set(h, "kafka", 1, NULL);
    assert_int_equal(sheaf_health_ok(h, "kafka"), 1);

    /* A long reason is cut, not overflowed. */
    char long_reason[1000];
    memset(long_reason, 'x', sizeof(long_reason) - 1);
    long_reason[sizeof(long_reason) - 1] = '\0';
    sheaf_health_set(h, "llm", 0, long_reason);
    text = render_health(h, &healthy);
    assert_true(strlen(text) < 600);
    free(text);
    sheaf_health_destroy(h);
    sheaf_health_destroy(NULL);
}

/* ---- the endpoint ---- */

typedef struct answer {
    long status;
    char body[8192];
    size_t len;
} answer;

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    answer *a = ud;
    size_t k = size * n;
    if (a->len + k < sizeof(a->body)) {
        memcpy(a->body + a->len, p, k);
        a->len += k;
        a->body[a->len] = '\0';
    }
    return k;
}

/* Asks the server; method NULL = GET; body NULL = none. */
static answer ask(int port, const char *path, const char *method, const char *body)
{
    answer a;
    char url[8192];
    memset(&a, 0, sizeof(a));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &a);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
    if (method && strcmp(method, "HEAD") == 0) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (method) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (body) curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    if (curl_easy_perform(e) == CURLE_OK) curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &a.status);
    curl_easy_cleanup(e);
    return a;
}

static void test_server(void **state)
{
    (void)state;
    char errstr[SHEAF_ERRSTR_SIZE] = "", portv[16];
    sheaf_config cfg;
    sheaf_metrics *m = sheaf_metrics_create();
    sheaf_health *h = sheaf_health_create();
    sheaf_metrics_server *s = NULL, *again;
    int port = 0;

    assert_int_equal(sheaf_config_init(&cfg), SHEAF_OK);
    assert_int_equal(cfg.metrics_port, 0);
    assert_string_equal(cfg.metrics_bind, "127.0.0.1");
    sheaf_metric_add(add(m, SHEAF_METRIC_COUNTER, "sheaf_served_total", "Served.", NULL, NULL), 3);
    assert_int_equal(sheaf_health_add(h, "redis", 0), SHEAF_OK);
    /* A free port in a range tied to the pid (tests may run in parallel). */
    for (int i = 0; i < 200 && !s; i++) {
        port = 20000 + (int)((getpid() * 7 + i * 13) % 20000);
        snprintf(portv, sizeof(portv), "%d", port);
        assert_int_equal(sheaf_config_set(&cfg, "metrics.port", portv, "test", errstr,
                                          sizeof(errstr)), SHEAF_OK);
        s = sheaf_metrics_server_create(&cfg, m, h, errstr, sizeof(errstr));
    }
    if (!s) fail_msg("no server: %s", errstr);

    answer a = ask(port, "/metrics", NULL, NULL);
    assert_int_equal(a.status, 200);
    assert_non_null(strstr(a.body, "# TYPE sheaf_served_total counter\nsheaf_served_total 3\n"));
    a = ask(port, "/metrics?x=1", "HEAD", NULL);
    assert_int_equal(a.status, 200);
    a = ask(port, "/health", NULL, NULL);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.body, "{\"status\":\"ok\",\"checks\":{\"redis\":\"ok\"}}\n");
    sheaf_health_set(h, "redis", 0, "down");
    a = ask(port, "/health", NULL, NULL);
    assert_int_equal(a.status, 503);
    assert_string_equal(a.body, "{\"status\":\"unhealthy\",\"checks\":{\"redis\":\"down\"}}\n");
    assert_int_equal(ask(port, "/nope", NULL, NULL).status, 404);
    assert_int_equal(ask(port, "/", NULL, NULL).status, 404);
    assert_int_equal(ask(port, "/metrics", "POST", "x=1").status, 405);
    assert_int_equal(ask(port, "/metrics", "DELETE", NULL).status, 405);
    {
        static char big[64 * 1024], path[4096];
        memset(big, 'a', sizeof(big) - 1);
        a = ask(port, "/metrics", "POST", big);
        assert_int_equal(a.status, 413);
        path[0] = '/';
        memset(path + 1, 'p', sizeof(path) - 2);
        a = ask(port, path, NULL, NULL);
        assert_true(a.status == 414 || a.status == 431);
    }
    /* Still serving. */
    assert_int_equal(ask(port, "/metrics", NULL, NULL).status, 200);

    /* The same port again: an error naming the key. */
    again = sheaf_metrics_server_create(&cfg, m, h, errstr, sizeof(errstr));
    assert_null(again);
    if (!strstr(errstr, "metrics.port")) fail_msg("error lacks the key: %s", errstr);
    assert_int_equal(sheaf_config_set(&cfg, "metrics.bind", "not-an-address", "test", errstr,
                                      sizeof(errstr)), SHEAF_OK);
    assert_null(sheaf_metrics_server_create(&cfg, m, h, errstr, sizeof(errstr)));
    if (!strstr(errstr, "metrics.bind")) fail_msg("error lacks the key: %s", errstr);
    assert_int_not_equal(sheaf_config_set(&cfg, "metrics.port", "70000", "test", errstr,
                                          sizeof(errstr)), SHEAF_OK);

    sheaf_metrics_server_destroy(s);
    sheaf_metrics_server_destroy(NULL);
    sheaf_metrics_destroy(m);
    sheaf_health_destroy(h);
    sheaf_config_clear(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_counter_and_gauge),
        cmocka_unit_test(test_labels_and_escaping),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_server),
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
