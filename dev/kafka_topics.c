/* kafka_topics.c - sheaf-kafka-topics: makes a real Kafka cluster ready for
 * sheaf in the dev stack and the real-broker tests.
 *
 * The mock cluster host (kafka_mock.c) creates sheaf's topics itself; a real
 * broker (dev/kafka-kraft.sh) starts empty.  This program, in order:
 *   1. waits until the cluster's metadata lists --brokers brokers (a real
 *      metadata request, so "the JVM logged it started" is confirmed by a
 *      client);
 *   2. creates <prefix>.map (--partitions), <prefix>.dlq and
 *      <prefix>.results (4 partitions each, like the mock) with the admin
 *      API (rd_kafka_CreateTopics: the mock does not support it, real
 *      brokers do), replication factor --replication, and the settings
 *      sheaf needs: the map topic is kept (retention.ms=-1,
 *      retention.bytes=-1: replay and repair read it again), every topic
 *      takes messages of 4 MiB like the mock (sheaf's producer allows 4 MB;
 *      a broker's default is 1 MB), and --map-config KEY=VALUE adds to or
 *      overrides the map topic's settings (a test of retention gives it a
 *      small retention.bytes), --dlq-config the DLQ's (a test of dead
 *      letters too large for the broker gives it a small max.message.bytes).  A topic that already exists is left as it
 *      is;
 *   3. waits until the metadata shows every topic with all its partitions
 *      led;
 *   4. waits until a consumer group coordinator answers (an OffsetFetch of
 *      a throw-away group): the broker creates __consumer_offsets on the
 *      first such request, so the fleet's first join does not wait for it.
 * --delete-records TOPIC:PARTITION:OFFSET does only that instead (the test
 * of a job partly gone from its topic).
 * Each wait has the one deadline --timeout-ms.  Exit 0 when all is done,
 * 1 with the reason on stderr otherwise.  Logs go to stderr. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include <librdkafka/rdkafka.h>

#include "sheaf/log.h"
#include "sheaf/util.h"

#define COMP "kafka-topics"
#define MAX_CONFIGS 16
#define MAX_PARTITIONS 10000
#define AUX_PARTITIONS 4            /* <prefix>.dlq and <prefix>.results, as the mock */
#define MAX_MESSAGE_BYTES "4194304" /* what the mock takes */
#define NTOPICS 3

typedef struct topics_opts {
    const char *bootstrap;
    const char *prefix;
    int partitions;
    int replication;
    int brokers;
    int timeout_ms;
    const char *config[MAX_CONFIGS]; /* "KEY=VALUE" */
    int config_topic[MAX_CONFIGS];   /* of topic 0 (map) or 1 (dlq) */
    int n_config;
    const char *delete_records[MAX_CONFIGS]; /* "TOPIC:PARTITION:OFFSET" */
    int n_delete;
} topics_opts;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sheaf-kafka-topics --bootstrap LIST [options]\n"
            "  Waits for a real Kafka cluster, creates sheaf's topics on it, waits for\n"
            "  their leaders and a group coordinator.\n"
            "  --bootstrap LIST       bootstrap servers (required)\n"
            "  --prefix PREFIX        topic prefix (default \"sheaf\")\n"
            "  --partitions P         partitions of <prefix>.map (default 8)\n"
            "  --replication R        replication factor of every topic (default 1)\n"
            "  --brokers N            wait until the metadata lists N brokers (default 1)\n"
            "  --map-config KEY=VALUE a setting of <prefix>.map (repeatable)\n"
            "  --dlq-config KEY=VALUE a setting of <prefix>.dlq (repeatable; up to %d in all)\n"
            "  --timeout-ms MS        deadline for everything (default 60000)\n"
            "  --delete-records TOPIC:PARTITION:OFFSET\n"
            "                         instead: delete the partition's records before OFFSET\n"
            "                         (the admin API's DeleteRecords, what retention does;\n"
            "                         repeatable)\n"
            "  -h, --help             this text\n",
            MAX_CONFIGS);
}


static int parse_opts(int argc, char **argv, topics_opts *o)
{
    static const struct option longopts[] = {
        {"bootstrap", required_argument, NULL, 'b'},
        {"prefix", required_argument, NULL, 'P'},
        {"partitions", required_argument, NULL, 'p'},
        {"replication", required_argument, NULL, 'r'},
        {"brokers", required_argument, NULL, 'n'},
        {"map-config", required_argument, NULL, 'c'},
        {"dlq-config", required_argument, NULL, 'd'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"delete-records", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(o, 0, sizeof(*o));
    o->prefix = "sheaf";
    o->partitions = 8;
    o->replication = 1;
    o->brokers = 1;
    o->timeout_ms = 60000;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'b': o->bootstrap = optarg; break;
        case 'P':
            bad = optarg[0] == '\0';
            o->prefix = optarg;
            break;
        case 'p': bad = sheaf_parse_int(optarg, 1, MAX_PARTITIONS, &o->partitions) != 0; break;
        case 'r': bad = sheaf_parse_int(optarg, 1, 64, &o->replication) != 0; break;
        case 'n': bad = sheaf_parse_int(optarg, 1, 64, &o->brokers) != 0; break;
        case 't': bad = sheaf_parse_int(optarg, 1, INT_MAX, &o->timeout_ms) != 0; break;
        case 'c':
        case 'd':
            bad = o->n_config == MAX_CONFIGS || !strchr(optarg, '=') || optarg[0] == '=';
            if (!bad) {
                o->config_topic[o->n_config] = c == 'c' ? 0 : 1;
                o->config[o->n_config++] = optarg;
            }
            break;
        case 'D':
            bad = o->n_delete == MAX_CONFIGS || !strrchr(optarg, ':') ||
                  strrchr(optarg, ':') == strchr(optarg, ':');
            if (!bad) o->delete_records[o->n_delete++] = optarg;
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
        if (bad) {
            const char *name = "?";
            for (const struct option *lo = longopts; lo->name; lo++)
                if (lo->val == c) name = lo->name;
            fprintf(stderr, "sheaf-kafka-topics: --%s: bad value \"%s\"\n", name, optarg);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sheaf-kafka-topics: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    if (!o->bootstrap) {
        fprintf(stderr, "sheaf-kafka-topics: --bootstrap is required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= LOG_ERR)
        sheaf_error(COMP, "librdkafka %s: %s", fac, buf);
    else
        sheaf_warn(COMP, "librdkafka %s: %s", fac, buf);
}

/* A client of the given type; group may be NULL.  rd_kafka_new takes the
 * conf on success only. */
static rd_kafka_t *client_new(rd_kafka_type_t type, const char *bootstrap, const char *group)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;

    rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "client.id", "sheaf-kafka-topics", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) ||
        (group && rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)))) {
        sheaf_error(COMP, "librdkafka conf: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
    if (!rk) {
        sheaf_error(COMP, "rd_kafka_new: %s", errstr);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

static int remaining_ms(int64_t deadline)
{
    int64_t left = deadline - sheaf_mono_ms();
    return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

/* Step 1: the metadata lists at least want brokers. */
static int wait_brokers(rd_kafka_t *rk, int want, int64_t deadline)
{
    int seen = -1;
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        int left = remaining_ms(deadline);
        int wait = left < 2000 ? left : 2000;
        if (wait > 0 && rd_kafka_metadata(rk, 0, NULL, &md, wait) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            seen = md->broker_cnt;
            rd_kafka_metadata_destroy(md);
            if (seen >= want) {
                sheaf_info(COMP, "metadata lists %d broker(s)", seen);
                return 0;
            }
        }
        if (remaining_ms(deadline) == 0) {
            sheaf_error(COMP, "the cluster's metadata lists %d of %d broker(s) at the deadline",
                        seen < 0 ? 0 : seen, want);
            return -1;
        }
        sheaf_sleep_ms(100);
    }
}

/* Admin options for op with the deadline as operation and request
 * timeout; NULL (logged) on error. */
static rd_kafka_AdminOptions_t *admin_options(rd_kafka_t *rk, rd_kafka_admin_op_t op,
                                              int64_t deadline)
{
    char errstr[512];
    rd_kafka_AdminOptions_t *aopts = rd_kafka_AdminOptions_new(rk, op);
    if (rd_kafka_AdminOptions_set_operation_timeout(aopts, remaining_ms(deadline), errstr,
                                                    sizeof(errstr)) ||
        rd_kafka_AdminOptions_set_request_timeout(aopts, remaining_ms(deadline), errstr,
                                                  sizeof(errstr))) {
        sheaf_error(COMP, "admin options: %s", errstr);
        rd_kafka_AdminOptions_destroy(aopts);
        return NULL;
    }
    return aopts;
}

/* The result event of an admin request sent to q, or NULL (logged) when
 * none came before the deadline or the request as a whole failed. */
static rd_kafka_event_t *admin_result(rd_kafka_queue_t *q, const char *what, int64_t deadline)
{
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, remaining_ms(deadline) + 1000);
    if (!ev) {
        sheaf_error(COMP, "%s: no answer before the deadline", what);
        return NULL;
    }
    if (rd_kafka_event_error(ev)) {
        sheaf_error(COMP, "%s: %s", what, rd_kafka_event_error_string(ev));
        rd_kafka_event_destroy(ev);
        return NULL;
    }
    return ev;
}

/* Step 2: CreateTopics; an existing topic is fine. */
static int create_topics(rd_kafka_t *rk, const topics_opts *o, char names[NTOPICS][512],
                         const int *parts, int64_t deadline)
{
    rd_kafka_NewTopic_t *nt[NTOPICS] = {0};
    rd_kafka_AdminOptions_t *aopts = NULL;
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev = NULL;
    char errstr[512];
    int rc = -1;

    for (int i = 0; i < NTOPICS; i++) {
        nt[i] = rd_kafka_NewTopic_new(names[i], parts[i], o->replication, errstr, sizeof(errstr));
        if (!nt[i]) {
            sheaf_error(COMP, "topic %s: %s", names[i], errstr);
            goto out;
        }
        if (rd_kafka_NewTopic_set_config(nt[i], "max.message.bytes", MAX_MESSAGE_BYTES))
            goto out;
    }
    if (rd_kafka_NewTopic_set_config(nt[0], "retention.ms", "-1") ||
        rd_kafka_NewTopic_set_config(nt[0], "retention.bytes", "-1") ||
        rd_kafka_NewTopic_set_config(nt[0], "cleanup.policy", "delete"))
        goto out;
    for (int i = 0; i < o->n_config; i++) {
        char kv[512];
        char *eq;
        snprintf(kv, sizeof(kv), "%s", o->config[i]);
        eq = strchr(kv, '=');
        *eq = '\0';
        if (rd_kafka_NewTopic_set_config(nt[o->config_topic[i]], kv, eq + 1)) {
            sheaf_error(COMP, "--%s-config %s: refused", o->config_topic[i] ? "dlq" : "map",
                        o->config[i]);
            goto out;
        }
    }

    if (!(aopts = admin_options(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS, deadline))) goto out;
    rd_kafka_CreateTopics(rk, nt, NTOPICS, aopts, q);
    if (!(ev = admin_result(q, "CreateTopics", deadline))) goto out;
    size_t n = 0;
    const rd_kafka_topic_result_t **res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = rd_kafka_topic_result_name(res[i]);
        rd_kafka_resp_err_t err = rd_kafka_topic_result_error(res[i]);
        if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            sheaf_info(COMP, "topic %s exists already: left as it is", name);
        } else if (err) {
            const char *why = rd_kafka_topic_result_error_string(res[i]);
            sheaf_error(COMP, "cannot create topic %s: %s", name, why ? why : rd_kafka_err2str(err));
            rc = -1;
        } else {
            for (int k = 0; k < NTOPICS; k++)
                if (strcmp(names[k], name) == 0)
                    sheaf_info(COMP, "topic %s: %d partitions, replication factor %d", name,
                               parts[k], o->replication);
        }
    }

out:
    if (ev) rd_kafka_event_destroy(ev);
    if (aopts) rd_kafka_AdminOptions_destroy(aopts);
    for (int i = 0; i < NTOPICS; i++)
        if (nt[i]) rd_kafka_NewTopic_destroy(nt[i]);
    rd_kafka_queue_destroy(q);
    return rc;
}

/* 1 when md shows topic with at least one partition, each led. */
static int topic_led(const struct rd_kafka_metadata *md, const char *topic)
{
    for (int i = 0; i < md->topic_cnt; i++) {
        const rd_kafka_metadata_topic_t *t = &md->topics[i];
        if (strcmp(t->topic, topic) != 0) continue;
        if (t->err || t->partition_cnt == 0) return 0;
        for (int p = 0; p < t->partition_cnt; p++)
            if (t->partitions[p].err || t->partitions[p].leader < 0) return 0;
        return 1;
    }
    return 0;
}

/* Step 3: every topic's partitions have a leader. */
static int wait_leaders(rd_kafka_t *rk, char names[NTOPICS][512], int64_t deadline)
{
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        int left = remaining_ms(deadline), led = 0;
        if (left > 0 &&
            rd_kafka_metadata(rk, 1, NULL, &md, left < 2000 ? left : 2000) ==
                RD_KAFKA_RESP_ERR_NO_ERROR) {
            for (int i = 0; i < NTOPICS; i++) led += topic_led(md, names[i]);
            rd_kafka_metadata_destroy(md);
            if (led == NTOPICS) return 0;
        }
        if (remaining_ms(deadline) == 0) {
            sheaf_error(COMP, "%d of %d topics have leaders for every partition at the deadline",
                        led, NTOPICS);
            return -1;
        }
        sheaf_sleep_ms(100);
    }
}

/* Step 4: an OffsetFetch answered by the group coordinator. */
static int wait_coordinator(const topics_opts *o, const char *topic, int64_t deadline)
{
    char group[64];
    rd_kafka_t *c;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;

    snprintf(group, sizeof(group), "sheaf-kafka-topics-%lld", (long long)sheaf_wall_ms());
    c = client_new(RD_KAFKA_CONSUMER, o->bootstrap, group);
    if (!c) return -1;
    while (remaining_ms(deadline) > 0) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        int left = remaining_ms(deadline);
        rd_kafka_topic_partition_list_add(l, topic, 0);
        err = rd_kafka_committed(c, l, left < 5000 ? left : 5000);
        if (!err) err = l->elems[0].err;
        rd_kafka_topic_partition_list_destroy(l);
        if (!err) break;
        sheaf_sleep_ms(100);
    }
    rd_kafka_destroy(c); /* never subscribed: nothing to close */
    if (err) {
        sheaf_error(COMP, "no group coordinator answered before the deadline: %s",
                    rd_kafka_err2str(err));
        return -1;
    }
    sheaf_info(COMP, "group coordinator ready");
    return 0;
}

/* --delete-records: DeleteRecords for each TOPIC:PARTITION:OFFSET (the
 * low watermark moves to OFFSET, as when retention deletes segments;
 * librdkafka's mock cluster does not answer it).  Prints each partition's
 * new low watermark. */
static int delete_records(rd_kafka_t *rk, const topics_opts *o, int64_t deadline)
{
    rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(o->n_delete);
    rd_kafka_DeleteRecords_t *dr = NULL;
    rd_kafka_AdminOptions_t *aopts = NULL;
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev = NULL;
    int rc = -1;

    for (int i = 0; i < o->n_delete; i++) {
        /* TOPIC:PARTITION:OFFSET, split at the first and the last colon. */
        const char *arg = o->delete_records[i];
        const char *c1 = strchr(arg, ':'), *c2 = strrchr(arg, ':');
        char topic[512], pstr[32];
        int part, off;
        snprintf(topic, sizeof(topic), "%.*s", (int)(c1 - arg), arg);
        snprintf(pstr, sizeof(pstr), "%.*s", (int)(c2 - c1 - 1), c1 + 1);
        if (sheaf_parse_int(pstr, 0, MAX_PARTITIONS, &part) != 0 ||
            sheaf_parse_int(c2 + 1, 0, INT_MAX, &off) != 0) {
            sheaf_error(COMP, "--delete-records %s: expected TOPIC:PARTITION:OFFSET",
                        o->delete_records[i]);
            goto out;
        }
        rd_kafka_topic_partition_list_add(offs, topic, part)->offset = off;
    }
    dr = rd_kafka_DeleteRecords_new(offs);
    if (!(aopts = admin_options(rk, RD_KAFKA_ADMIN_OP_DELETERECORDS, deadline))) goto out;
    rd_kafka_DeleteRecords(rk, &dr, 1, aopts, q);
    if (!(ev = admin_result(q, "DeleteRecords", deadline))) goto out;
    const rd_kafka_topic_partition_list_t *res =
        rd_kafka_DeleteRecords_result_offsets(rd_kafka_event_DeleteRecords_result(ev));
    rc = 0;
    for (int i = 0; res && i < res->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &res->elems[i];
        if (tp->err) {
            sheaf_error(COMP, "DeleteRecords %s [%d]: %s", tp->topic, (int)tp->partition,
                        rd_kafka_err2str(tp->err));
            rc = -1;
        } else {
            printf("%s %d %lld\n", tp->topic, (int)tp->partition, (long long)tp->offset);
        }
    }

out:
    if (ev) rd_kafka_event_destroy(ev);
    if (aopts) rd_kafka_AdminOptions_destroy(aopts);
    if (dr) rd_kafka_DeleteRecords_destroy(dr);
    rd_kafka_topic_partition_list_destroy(offs);
    rd_kafka_queue_destroy(q);
    return rc;
}

int main(int argc, char **argv)
{
    topics_opts o;
    char names[NTOPICS][512];
    static const char *suffix[NTOPICS] = {"map", "dlq", "results"};
    int parts[NTOPICS];
    rd_kafka_t *rk = NULL;
    int64_t deadline;
    int rc = 1;

    if (parse_opts(argc, argv, &o) != 0) return 2;
    deadline = sheaf_mono_ms() + o.timeout_ms;
    for (int i = 0; i < NTOPICS; i++) {
        if ((size_t)snprintf(names[i], sizeof(names[i]), "%s.%s", o.prefix, suffix[i]) >=
            sizeof(names[i])) {
            fprintf(stderr, "sheaf-kafka-topics: --prefix too long\n");
            return 2;
        }
        parts[i] = i == 0 ? o.partitions : AUX_PARTITIONS;
    }

    rk = client_new(RD_KAFKA_PRODUCER, o.bootstrap, NULL);
    if (!rk) return 1;
    if (o.n_delete) {
        rc = delete_records(rk, &o, deadline) == 0 ? 0 : 1;
        rd_kafka_destroy(rk);
        return rc;
    }
    if (wait_brokers(rk, o.brokers, deadline) == 0 &&
        create_topics(rk, &o, names, parts, deadline) == 0 &&
        wait_leaders(rk, names, deadline) == 0 && wait_coordinator(&o, names[0], deadline) == 0)
        rc = 0;
    rd_kafka_destroy(rk);
    if (rc == 0) sheaf_info(COMP, "cluster ready for sheaf at %s", o.bootstrap);
    return rc;
}
