/* kafka.c - librdkafka clients configured the sheaf way.  See sheaf/kafka.h.
 *
 * Delivery reports are counted in a small struct hung on the client as its
 * opaque, so sheaf_kafka_flush() can tell the caller that messages were
 * lost instead of pretending a flush means delivered.
 *
 * Broker reachability (for /health) is kept per process, not per client:
 * a process's clients all talk to one cluster.  librdkafka says when every
 * broker went down (the error callback, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
 * but never when one came back, so with metrics.port set clients also
 * emit statistics every 5 s, whose broker states do tell; the statistics
 * are served by the client's poll, so only clients that are polled
 * regularly may be made with metrics on (the worker polls both of its
 * clients, the reducer its producer).  The process counts as reachable
 * when any client recently saw a broker up. */
#include "sheaf/kafka.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/log.h"
#include "sheaf/util.h"

#define KAFKA_STATS_INTERVAL "5000"

/* Broker reachability: the latest news from each client (error callback
 * or statistics), under brokers_lock.  Clients are not told to forget
 * (callers destroy them with rd_kafka_destroy), so news older than
 * BROKERS_FRESH_MS is ignored: a live client with metrics on reports
 * every 5 s. */
#define BROKERS_CLIENTS 16
#define BROKERS_FRESH_MS 30000

typedef struct broker_news {
    const rd_kafka_t *rk;
    int64_t ms;                    /* when (0: free slot) */
    int up;                        /* a broker connection is up */
    char why[200];                 /* when not up */
} broker_news;

static pthread_mutex_t brokers_lock = PTHREAD_MUTEX_INITIALIZER;
static broker_news brokers[BROKERS_CLIENTS];
static char brokers_fatal[256];    /* a client hit a fatal error ("" none) */

/* Records news of rk's brokers: up, or not with why (fatal: for good). */
static void brokers_note(const rd_kafka_t *rk, int up, int fatal, const char *why)
{
    broker_news *slot = &brokers[0];
    pthread_mutex_lock(&brokers_lock);
    for (int i = 0; i < BROKERS_CLIENTS; i++) {
        if (brokers[i].rk == rk) {
            slot = &brokers[i];
            break;
        }
        if (brokers[i].ms < slot->ms) slot = &brokers[i]; /* else the oldest */
    }
    slot->rk = rk;
    slot->ms = sheaf_mono_ms();
    slot->up = up;
    snprintf(slot->why, sizeof(slot->why), "%s", up ? "" : why);
    if (fatal) snprintf(brokers_fatal, sizeof(brokers_fatal), "%s", why);
    pthread_mutex_unlock(&brokers_lock);
}

int sheaf_kafka_brokers_ok(char *reason, size_t len)
{
    const broker_news *down = NULL;
    int64_t now = sheaf_mono_ms();
    int up = 0, ok;
    pthread_mutex_lock(&brokers_lock);
    for (int i = 0; i < BROKERS_CLIENTS; i++) {
        const broker_news *n = &brokers[i];
        if (!n->ms || now - n->ms > BROKERS_FRESH_MS) continue;
        if (n->up) up = 1;
        else if (!down || n->ms > down->ms) down = n;
    }
    /* One client with a broker up is enough: another's idle connection may
     * have been closed by the broker. */
    ok = !brokers_fatal[0] && (up || !down);
    if (reason && len)
        snprintf(reason, len, "%s", ok ? "ok" : brokers_fatal[0] ? brokers_fatal : down->why);
    pthread_mutex_unlock(&brokers_lock);
    return ok;
}

typedef struct producer_stats {
    atomic_ulong delivered;
    atomic_ulong failed;
    atomic_ulong failed_seen;   /* failures already reported by a flush */
    char last_error[256];
    /* Offsets delivered per partition, for replay: written only by the
     * delivery callback, which runs in the thread that polls or flushes. */
    int64_t first[SHEAF_KAFKA_MAX_PARTITIONS], last[SHEAF_KAFKA_MAX_PARTITIONS];
} producer_stats;

static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    /* syslog levels: 0-3 error, 4 warning, 5-6 info/notice, 7 debug.  Notices
     * from librdkafka are chatty, so they go to debug. */
    sheaf_log_level l = level <= 3 ? SHEAF_LOG_ERROR
                        : level == 4 ? SHEAF_LOG_WARN
                                     : SHEAF_LOG_DEBUG;
    SHEAF_LOG(l, "kafka", "%s: %s", fac, buf);
}

static void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    /* Transient broker errors are retried by librdkafka itself; fatal ones
     * (e.g. idempotence broken) are reported by the next call. */
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        sheaf_error("kafka", "fatal: %s", reason);
    else
        sheaf_debug("kafka", "%s: %s", rd_kafka_err2name(err), reason);
    if (err == RD_KAFKA_RESP_ERR__FATAL || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        char why[256];
        snprintf(why, sizeof(why), "%s: %s",
                 err == RD_KAFKA_RESP_ERR__FATAL ? "fatal error" : "all brokers down", reason);
        brokers_note(rk, 0, err == RD_KAFKA_RESP_ERR__FATAL, why);
    }
}

/* Statistics (with metrics on): is any real broker connection up?  The
 * internal pseudo-broker is always "UP" and does not count. */
static int kafka_stats_cb(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
    json_t *root = json_loadb(json, json_len, 0, NULL);
    json_t *list = json_object_get(root, "brokers"), *b;
    const char *name;
    int up = 0, known = 0;
    char why[96];
    (void)opaque;
    json_object_foreach(list, name, b) {
        const char *source = json_string_value(json_object_get(b, "source"));
        const char *state = json_string_value(json_object_get(b, "state"));
        if (source && strcmp(source, "internal") == 0) continue;
        known++;
        if (state && strcmp(state, "UP") == 0) up++;
    }
    if (up) {
        brokers_note(rk, 1, 0, "");
    } else if (known) {
        snprintf(why, sizeof(why), "no connection to any of %d broker(s)", known);
        brokers_note(rk, 0, 0, why);
    }
    json_decref(root);
    return 0; /* librdkafka frees json */
}

static void dlq_letter_end(sheaf_kafka_delivery *d, rd_kafka_resp_err_t err);
static int dlq_resend(rd_kafka_t *rk, const rd_kafka_message_t *m);

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    producer_stats *st = opaque;
    /* A message produced with a delivery hook as its opaque (sheaf/kafka.h);
     * a dead letter is one too, which may go out again without its value
     * (then its report is still to come). */
    sheaf_kafka_delivery *d = m->_private;
    if (d && d->done == dlq_letter_end && dlq_resend(rk, m)) return;
    if (d) d->done(d, m->err);
    if (!st) return;
    if (m->err) {
        atomic_fetch_add(&st->failed, 1);
        snprintf(st->last_error, sizeof(st->last_error), "%s", rd_kafka_err2str(m->err));
    } else {
        atomic_fetch_add(&st->delivered, 1);
        if (m->partition >= 0 && m->partition < SHEAF_KAFKA_MAX_PARTITIONS && m->offset >= 0) {
            int32_t p = m->partition;
            if (st->first[p] < 0 || m->offset < st->first[p]) st->first[p] = m->offset;
            if (m->offset > st->last[p]) st->last[p] = m->offset;
        }
    }
}

static int user_set(const sheaf_config *cfg, const char *prop);

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value, char *errstr,
                    size_t errlen)
{
    char err[512];
    if (rd_kafka_conf_set(conf, key, value, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        snprintf(errstr, errlen, "Kafka property %s: %s", key, err);
        return -1;
    }
    return 0;
}

rd_kafka_conf_t *sheaf_kafka_conf_new(const sheaf_config *cfg, const char *client_id,
                                      char *errstr, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();

    if (!cfg->brokers || !*cfg->brokers) {
        snprintf(errstr, errlen,
                 "brokers is not set: set SHEAF_BROKERS or -X brokers=HOST:PORT "
                 "(dev stack: eval \"$(dev/stack.sh env)\")");
        goto fail;
    }
    if (conf_set(conf, "bootstrap.servers", cfg->brokers, errstr, errlen) ||
        conf_set(conf, "client.id", client_id, errstr, errlen))
        goto fail;
    for (size_t i = 0; i < cfg->kafka_props_len; i++) {
        /* kafka.<property> is passed as <property>; a refused one is fatal. */
        const char *key = cfg->kafka_props[i].key;
        if (strncmp(key, "kafka.", 6) == 0) key += 6;
        if (conf_set(conf, key, cfg->kafka_props[i].value, errstr, errlen)) goto fail;
    }
    /* With metrics on, statistics tell when a broker is up again. */
    if (cfg->metrics_port > 0 && !user_set(cfg, "statistics.interval.ms") &&
        conf_set(conf, "statistics.interval.ms", KAFKA_STATS_INTERVAL, errstr, errlen))
        goto fail;
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    rd_kafka_conf_set_stats_cb(conf, kafka_stats_cb);
    return conf;

fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

rd_kafka_t *sheaf_kafka_producer_new(const sheaf_config *cfg, const char *client_id,
                                     char *errstr, size_t errlen)
{
    rd_kafka_t *rk = NULL;
    producer_stats *st = NULL;
    rd_kafka_conf_t *conf = sheaf_kafka_conf_new(cfg, client_id, errstr, errlen);
    char err[512];

    if (!conf) return NULL;
    if (conf_set(conf, "enable.idempotence", "true", errstr, errlen) ||
        conf_set(conf, "acks", "all", errstr, errlen) ||
        conf_set(conf, "compression.type", "lz4", errstr, errlen) ||
        conf_set(conf, "linger.ms", "10", errstr, errlen) ||
        conf_set(conf, "message.max.bytes", "4000000", errstr, errlen))
        goto fail;
    st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(errstr, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < SHEAF_KAFKA_MAX_PARTITIONS; i++) st->first[i] = st->last[i] = -1;
    rd_kafka_conf_set_opaque(conf, st);
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        snprintf(errstr, errlen, "cannot create Kafka producer: %s", err);
        goto fail;
    }
    return rk; /* rd_kafka_new took conf; st is freed by sheaf_kafka_producer_destroy */

fail:
    if (conf) rd_kafka_conf_destroy(conf);
    free(st);
    return NULL;
}

/* 1 when the user passed kafka.<prop> (or <prop>) themselves. */
static int user_set(const sheaf_config *cfg, const char *prop)
{
    for (size_t i = 0; i < cfg->kafka_props_len; i++) {
        const char *key = cfg->kafka_props[i].key;
        if (strncmp(key, "kafka.", 6) == 0) key += 6;
        if (strcmp(key, prop) == 0) return 1;
    }
    return 0;
}

rd_kafka_t *sheaf_kafka_consumer_new(const sheaf_config *cfg, const char *client_id,
                                     const char *group,
                                     void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t,
                                                          rd_kafka_topic_partition_list_t *,
                                                          void *),
                                     void *opaque, char *errstr, size_t errlen)
{
    rd_kafka_conf_t *conf = sheaf_kafka_conf_new(cfg, client_id, errstr, errlen);
    rd_kafka_t *rk;
    char err[512], session[32], heartbeat[32];

    if (!conf) return NULL;
    /* Defaults the user may override with kafka.*: answer idle fetches
     * within 100 ms (the mock cluster waits the full time even when data
     * arrives), and prefetch at most 8 MiB (librdkafka's 64 MiB default
     * dominates a worker's memory otherwise). */
    if ((!user_set(cfg, "fetch.wait.max.ms") &&
         conf_set(conf, "fetch.wait.max.ms", "100", errstr, errlen)) ||
        (!user_set(cfg, "queued.max.messages.kbytes") &&
         conf_set(conf, "queued.max.messages.kbytes", "8192", errstr, errlen))) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    snprintf(session, sizeof(session), "%d", cfg->session_timeout_ms);
    snprintf(heartbeat, sizeof(heartbeat), "%d", cfg->heartbeat_ms);
    if (conf_set(conf, "group.id", group, errstr, errlen) ||
        conf_set(conf, "session.timeout.ms", session, errstr, errlen) ||
        conf_set(conf, "heartbeat.interval.ms", heartbeat, errstr, errlen) ||
        conf_set(conf, "enable.auto.commit", "true", errstr, errlen) ||
        conf_set(conf, "enable.auto.offset.store", "false", errstr, errlen) ||
        conf_set(conf, "auto.commit.interval.ms", "1000", errstr, errlen) ||
        conf_set(conf, "auto.offset.reset", "earliest", errstr, errlen) ||
        conf_set(conf, "partition.assignment.strategy", "cooperative-sticky", errstr, errlen) ||
        conf_set(conf, "enable.partition.eof", "false", errstr, errlen)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    if (rebalance_cb) rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_opaque(conf, opaque);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!rk) {
        snprintf(errstr, errlen, "cannot create Kafka consumer: %s", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    /* conf is owned by rk now.  Route the main queue into the consumer queue
     * so one rd_kafka_consumer_poll() serves both. */
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

void sheaf_kafka_producer_destroy(rd_kafka_t *producer)
{
    if (!producer) return;
    producer_stats *st = rd_kafka_opaque(producer);
    rd_kafka_destroy(producer);
    free(st);
}

int sheaf_kafka_delivered_range(rd_kafka_t *producer, int32_t partition, int64_t *first,
                                int64_t *last)
{
    producer_stats *st = rd_kafka_opaque(producer);
    if (!st || partition < 0 || partition >= SHEAF_KAFKA_MAX_PARTITIONS || st->first[partition] < 0)
        return 0;
    *first = st->first[partition];
    *last = st->last[partition];
    return 1;
}

unsigned long sheaf_kafka_delivery_failures(rd_kafka_t *producer)
{
    producer_stats *st = rd_kafka_opaque(producer);
    return st ? atomic_load(&st->failed) : 0;
}

sheaf_err sheaf_kafka_flush(rd_kafka_t *producer, int timeout_ms, char *errstr, size_t errlen)
{
    producer_stats *st = rd_kafka_opaque(producer);
    rd_kafka_resp_err_t err = rd_kafka_flush(producer, timeout_ms);
    if (err) {
        snprintf(errstr, errlen, "%d message(s) not delivered within %d ms: %s",
                 rd_kafka_outq_len(producer), timeout_ms, rd_kafka_err2str(err));
        return SHEAF_ERR_KAFKA;
    }
    if (st) {
        unsigned long failed = atomic_load(&st->failed);
        unsigned long seen = atomic_exchange(&st->failed_seen, failed);
        if (failed > seen) {
            snprintf(errstr, errlen, "%lu message(s) could not be delivered: %s",
                     failed - seen, st->last_error);
            return SHEAF_ERR_KAFKA;
        }
    }
    return SHEAF_OK;
}

/* A dead letter in flight, the message opaque of its produce: what is
 * needed to send it again without its value when the broker refuses it as
 * too large (the DLQ topic's max.message.bytes, or the broker's
 * message.max.bytes, below our producer's 4 MB).  That refusal comes only
 * in the delivery report, which is why the copy is kept until then: left
 * as it was, the report failed the caller's flush, the caller sent the
 * same message again, the broker refused it again, and the worker stalled
 * on that one message for ever.  Owned by the produce until its delivery
 * report (dr_msg_cb frees it or sends it again); a producer destroyed with
 * letters still queued leaks them (only after a failed flush at exit). */
typedef struct dlq_letter {
    sheaf_kafka_delivery base;   /* first: the produce's opaque; done = dlq_letter_end */
    int dropped;                 /* the value was left out already */
    char *topic;
    void *key;
    size_t key_len, value_len;
    rd_kafka_headers_t *hdrs;    /* as first sent (without the dropped headers) */
    sheaf_kafka_delivery *hook;  /* the caller's delivery hook, or NULL: told the end */
} dlq_letter;

static void dlq_letter_free(dlq_letter *l)
{
    if (!l) return;
    free(l->topic);
    free(l->key);
    if (l->hdrs) rd_kafka_headers_destroy(l->hdrs);
    free(l);
}

static dlq_letter *dlq_letter_new(const char *topic, const rd_kafka_message_t *orig,
                                  const rd_kafka_headers_t *hdrs)
{
    dlq_letter *l = calloc(1, sizeof(*l));
    if (!l) return NULL;
    l->base.done = dlq_letter_end;
    l->value_len = orig->len;
    l->key_len = orig->key_len;
    l->topic = strdup(topic);
    l->key = orig->key_len ? malloc(orig->key_len) : NULL;
    l->hdrs = rd_kafka_headers_copy(hdrs);
    if (!l->topic || (orig->key_len && !l->key) || !l->hdrs) {
        dlq_letter_free(l);
        return NULL;
    }
    if (orig->key_len) memcpy(l->key, orig->key, orig->key_len);
    return l;
}

/* Produces a dead letter: with value (len bytes) or, with value NULL,
 * without it and with the headers saying so (size dropped, and by whom).
 * hdrs are taken on success only.  Never waits: a full local queue is
 * the caller's to retry (from a delivery callback, which must not poll, the
 * resend then fails and the letter ends with the broker's refusal). */
static rd_kafka_resp_err_t dlq_produce(rd_kafka_t *producer, dlq_letter *l,
                                       rd_kafka_headers_t *hdrs, const void *value, size_t len,
                                       const char *dropped_by)
{
    rd_kafka_resp_err_t err;
    if (!value && l->value_len) {
        char size[32];
        snprintf(size, sizeof(size), "%zu", l->value_len);
        rd_kafka_header_add(hdrs, "sheaf-dlq-value-dropped", -1, size, -1);
        rd_kafka_header_add(hdrs, "sheaf-dlq-value-dropped-by", -1, dropped_by, -1);
        l->dropped = 1;
    }
    err = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(l->topic),
                            RD_KAFKA_V_KEY(l->key, l->key_len),
                            /* Parenthesized: the macro casts its argument. */
                            RD_KAFKA_V_VALUE((void *)(value), (len)),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hdrs),
                            RD_KAFKA_V_OPAQUE(l), RD_KAFKA_V_END);
    return err;
}

/* From dr_msg_cb, for a dead letter: 1 when the broker refused it as too
 * large and it went out again without its value (the report is then not a
 * failure: the next one ends the letter); else 0. */
static int dlq_resend(rd_kafka_t *rk, const rd_kafka_message_t *m)
{
    dlq_letter *l = m->_private;
    /* MESSAGE_TOO_LARGE: over max.message.bytes; RECORD_LIST_TOO_LARGE:
     * over the topic's segment.bytes. */
    if ((m->err != RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE &&
         m->err != RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE) || l->dropped)
        return 0;
    char by[128];
    rd_kafka_headers_t *hdrs = rd_kafka_headers_copy(l->hdrs);
    snprintf(by, sizeof(by), "broker: %s", rd_kafka_err2str(m->err));
    sheaf_warn("kafka", "dead letter of %zu bytes refused by the broker (%s): sent again "
               "without its value", l->value_len, rd_kafka_err2str(m->err));
    if (hdrs && dlq_produce(rk, l, hdrs, NULL, 0, by) == RD_KAFKA_RESP_ERR_NO_ERROR) return 1;
    if (hdrs) rd_kafka_headers_destroy(hdrs);
    return 0;
}

/* A dead letter's last delivery report: the caller's hook is told, the
 * letter freed. */
static void dlq_letter_end(sheaf_kafka_delivery *d, rd_kafka_resp_err_t err)
{
    dlq_letter *l = (dlq_letter *)d;
    if (l->hook) l->hook->done(l->hook, err);
    dlq_letter_free(l);
}

sheaf_err sheaf_kafka_dlq_send(rd_kafka_t *producer, const char *dlq_topic,
                               const rd_kafka_message_t *orig, const char *reason,
                               const char *job, sheaf_kafka_delivery *hook, char *errstr,
                               size_t errlen)
{
    rd_kafka_headers_t *hdrs = NULL;
    rd_kafka_headers_t *orig_hdrs = NULL;
    dlq_letter *l = NULL;
    char part[16], off[32];
    rd_kafka_resp_err_t err;

    if (rd_kafka_message_headers(orig, &orig_hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && orig_hdrs)
        hdrs = rd_kafka_headers_copy(orig_hdrs);
    else
        hdrs = rd_kafka_headers_new(5);
    snprintf(part, sizeof(part), "%d", (int)orig->partition);
    snprintf(off, sizeof(off), "%lld", (long long)orig->offset);
    rd_kafka_header_add(hdrs, "sheaf-dlq-reason", -1, reason, -1);
    rd_kafka_header_add(hdrs, "sheaf-dlq-topic", -1, rd_kafka_topic_name(orig->rkt), -1);
    rd_kafka_header_add(hdrs, "sheaf-dlq-partition", -1, part, -1);
    rd_kafka_header_add(hdrs, "sheaf-dlq-offset", -1, off, -1);
    if (job) rd_kafka_header_add(hdrs, "sheaf-job", -1, job, -1);

    if (!(l = dlq_letter_new(dlq_topic, orig, hdrs))) {
        rd_kafka_headers_destroy(hdrs);
        snprintf(errstr, errlen, "cannot produce to %s: out of memory", dlq_topic);
        return SHEAF_ERR_NOMEM;
    }
    l->hook = hook;
    err = dlq_produce(producer, l, hdrs, orig->payload, orig->len, NULL);
    if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
        /* Over our own message.max.bytes (an oversized message some other
         * producer put on the topic): refused at once, for ever.  Without
         * its value; the headers say where the original still is. */
        rd_kafka_headers_destroy(hdrs);
        hdrs = rd_kafka_headers_copy(l->hdrs);
        err = hdrs ? dlq_produce(producer, l, hdrs, NULL, 0, "producer: over message.max.bytes")
                   : RD_KAFKA_RESP_ERR__FAIL;
    }
    if (err) {
        /* producev takes the headers and the letter only on success. */
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        dlq_letter_free(l);
        snprintf(errstr, errlen, "cannot produce to %s: %s", dlq_topic, rd_kafka_err2str(err));
        return SHEAF_ERR_KAFKA;
    }
    return SHEAF_OK;
}

sheaf_err sheaf_kafka_check_topic(rd_kafka_t *rk, const char *topic, int timeout_ms, char *errstr,
                                  size_t errlen)
{
    char servers[512] = "?";
    size_t size = sizeof(servers);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    sheaf_err ret = SHEAF_ERR_KAFKA;

    rd_kafka_conf_get(rd_kafka_conf(rk), "bootstrap.servers", servers, &size);
    if (!rkt) {
        snprintf(errstr, errlen, "topic %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
        return SHEAF_ERR_KAFKA;
    }
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
    if (err) {
        snprintf(errstr, errlen, "Kafka at %s did not answer within %d s (%s): check "
                 "kafka.bootstrap.servers (SHEAF_BROKERS) and that the brokers run",
                 servers, timeout_ms / 1000, rd_kafka_err2str(err));
    } else if (md->topic_cnt != 1 || md->topics[0].err) {
        snprintf(errstr, errlen, "topic %s on %s: %s: create it (deploy/README.md has the "
                 "command) or allow auto-creation", topic, servers,
                 rd_kafka_err2str(md->topic_cnt ? md->topics[0].err
                                                : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
    } else {
        ret = SHEAF_OK;
    }
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return ret;
}

sheaf_err sheaf_kafka_property_check(const char *property, const char *value, char *why,
                                     size_t whylen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_res_t res;
    if (!conf) {
        snprintf(why, whylen, "out of memory");
        return SHEAF_ERR_NOMEM;
    }
    res = rd_kafka_conf_set(conf, property, value, why, whylen);
    rd_kafka_conf_destroy(conf);
    return res == RD_KAFKA_CONF_OK ? SHEAF_OK : SHEAF_ERR_CONFIG;
}
