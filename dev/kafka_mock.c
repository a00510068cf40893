/* kafka_mock.c - sheaf-kafka-mock: hosts librdkafka's mock cluster for the
 * dev stack and the integration tests.
 *
 * librdkafka (2.0.2) ships an in-process mock Kafka cluster
 * (<librdkafka/rdkafka_mock.h>).  This program keeps one alive in its own
 * process so that producers, workers and reducers in other processes can
 * talk to it like to a real cluster.  The mock API is experimental (not
 * ABI-stable), so ALL of sheaf's use of it lives in this one file.
 *
 * Start-up: a producer-type rd_kafka_t carries the cluster (the mock needs a
 * handle for its thread and logging; the handle itself never connects
 * anywhere and its logging is limited to warnings, routed into sheaf's
 * logger).  The topics <prefix>.map (--partitions), <prefix>.dlq and
 * <prefix>.results (4 each) are created up front because the mock
 * auto-creates topics with 4 partitions and supports no CreateTopics.  Then
 * the bootstrap list is written to --bootstrap-file atomically (PATH.tmp,
 * rename): scripts wait for the file to exist and read it.
 *
 * Control: with --control-fifo PATH, a FIFO is created and read line by
 * line ("broker-down ID", "broker-up ID", "rtt ID MS",
 * "topic-create NAME PARTITIONS"); each command and its outcome is logged at
 * info (the FIFO is one-way, so the log is the reply).  The FIFO is opened
 * O_RDWR|O_NONBLOCK: the open never blocks, we hold a writer ourselves so
 * read() never sees EOF when a test's writer closes, and the main loop polls
 * it.
 *
 * Listening off loopback: the mock brokers of librdkafka 2.0.2 always bind
 * 127.0.0.1 port 0 and advertise whatever getsockname() then reports; there
 * is no API to choose.  For clients on other hosts (the network-namespace
 * test, a dev stack shared on a LAN) --listen-addr ADDR makes this program
 * define bind(): the dynamic linker resolves librdkafka's call to the
 * executable's own definition first, which moves an IPv4 loopback bind to
 * ADDR and hands it to the C library's bind (dlsym RTLD_NEXT).  Brokers
 * then listen on, and advertise, ADDR.  Without the option bind() passes
 * every call through unchanged.
 *
 * Shutdown: SIGTERM/SIGINT only set a flag (blocked in librdkafka's threads,
 * which inherit the mask from before rd_kafka_new); the main loop wakes at
 * least every POLL_MS, destroys the cluster, removes the bootstrap file and
 * the FIFO, exits 0.  Everything is in memory: a restart loses all data. */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <syslog.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "sheaf/buf.h"
#include "sheaf/log.h"
#include "sheaf/util.h"

#define COMP "kafka-mock"
#define POLL_MS 250
#define CTL_LINE_MAX 1024       /* longest accepted control command */
#define MAX_BROKERS 64
#define MAX_PARTITIONS 10000
#define AUX_PARTITIONS 4        /* <prefix>.dlq and <prefix>.results */

typedef struct mock_opts {
    int brokers;
    int partitions;
    const char *prefix;
    const char *bootstrap_file;
    const char *control_fifo;
    const char *listen_addr; /* NULL: loopback, as librdkafka does */
} mock_opts;

typedef struct mock_host {
    rd_kafka_t *rk;                   /* owns nothing but the mock's thread context */
    rd_kafka_mock_cluster_t *cluster; /* destroyed before rk */
    int ctl_fd;                       /* -1 when no control FIFO */
    char ctl_line[CTL_LINE_MAX + 1];  /* partial line read so far */
    size_t ctl_len;
    int ctl_discarding;               /* inside an over-long line: drop until '\n' */
    int replication;
} mock_host;

static volatile sig_atomic_t stop_requested;

/* Set once by main before the cluster exists; read by bind() from the mock
 * thread afterwards. */
static int (*libc_bind)(int, const struct sockaddr *, socklen_t);
static struct in_addr listen_addr;
static int listen_addr_set;

/* See "Listening off loopback" above.  Only IPv4 binds to 127.0.0.1 move:
 * that is all the mock does; anything else passes through. */
int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    if (!libc_bind) {
        errno = ENOSYS;
        return -1;
    }
    if (listen_addr_set && addr && addr->sa_family == AF_INET &&
        len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, addr, sizeof(sin));
        if (sin.sin_addr.s_addr == htonl(INADDR_LOOPBACK)) {
            sin.sin_addr = listen_addr;
            return libc_bind(fd, (const struct sockaddr *)&sin, sizeof(sin));
        }
    }
    return libc_bind(fd, addr, len);
}

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: sheaf-kafka-mock --bootstrap-file PATH [options]\n"
            "  Hosts librdkafka's in-memory mock Kafka cluster on loopback.\n"
            "  --bootstrap-file PATH  write the bootstrap list here once up (required)\n"
            "  --brokers N            number of brokers (default 3)\n"
            "  --partitions P         partitions of <prefix>.map (default 8)\n"
            "  --prefix PREFIX        topic prefix (default \"sheaf\")\n"
            "  --listen-addr ADDR     IPv4 address the brokers listen on and advertise\n"
            "                         (default 127.0.0.1)\n"
            "  --control-fifo PATH    FIFO taking commands, one per line:\n"
            "                           broker-down ID | broker-up ID | rtt ID MS |\n"
            "                           topic-create NAME PARTITIONS\n"
            "  -h, --help             this text\n");
}


static int parse_opts(int argc, char **argv, mock_opts *o)
{
    static const struct option longopts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"partitions", required_argument, NULL, 'p'},
        {"prefix", required_argument, NULL, 'P'},
        {"bootstrap-file", required_argument, NULL, 'f'},
        {"control-fifo", required_argument, NULL, 'c'},
        {"listen-addr", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    o->brokers = 3;
    o->partitions = 8;
    o->prefix = "sheaf";
    o->bootstrap_file = NULL;
    o->control_fifo = NULL;
    o->listen_addr = NULL;

    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (sheaf_parse_int(optarg, 1, MAX_BROKERS, &o->brokers) != 0) {
                fprintf(stderr, "sheaf-kafka-mock: --brokers: expected 1..%d, got \"%s\"\n",
                        MAX_BROKERS, optarg);
                return -1;
            }
            break;
        case 'p':
            if (sheaf_parse_int(optarg, 1, MAX_PARTITIONS, &o->partitions) != 0) {
                fprintf(stderr, "sheaf-kafka-mock: --partitions: expected 1..%d, got \"%s\"\n",
                        MAX_PARTITIONS, optarg);
                return -1;
            }
            break;
        case 'P':
            if (optarg[0] == '\0') {
                fprintf(stderr, "sheaf-kafka-mock: --prefix must not be empty\n");
                return -1;
            }
            o->prefix = optarg;
            break;
        case 'f': o->bootstrap_file = optarg; break;
        case 'c': o->control_fifo = optarg; break;
        case 'l':
            if (inet_pton(AF_INET, optarg, &listen_addr) != 1) {
                fprintf(stderr,
                        "sheaf-kafka-mock: --listen-addr: expected an IPv4 address such as "
                        "10.0.0.5, got \"%s\"\n",
                        optarg);
                return -1;
            }
            o->listen_addr = optarg;
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sheaf-kafka-mock: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    if (!o->bootstrap_file) {
        fprintf(stderr, "sheaf-kafka-mock: --bootstrap-file is required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

/* librdkafka's log callback: the carrier handle and the mock cluster log
 * through it; only warnings and worse reach us (log_level is 4). */
static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= LOG_ERR)
        sheaf_error(COMP, "librdkafka %s: %s", fac, buf);
    else
        sheaf_warn(COMP, "librdkafka %s: %s", fac, buf);
}

/* Writes text + "\n" to path atomically: path.tmp is written, then renamed. */
static int write_file_atomic(const char *path, const char *text)
{
    char tmp[PATH_MAX];
    FILE *f;
    int ok;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        sheaf_error(COMP, "path too long: %s", path);
        return -1;
    }
    f = fopen(tmp, "w");
    if (!f) {
        sheaf_error(COMP, "cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    ok = fprintf(f, "%s\n", text) >= 0;
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        sheaf_error(COMP, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Creates the FIFO (replacing a stale FIFO left by an earlier run, refusing
 * anything else at that path) and opens it without blocking. */
static int control_open(mock_host *h, const char *path)
{
    struct stat st;

    if (lstat(path, &st) == 0) {
        if (!S_ISFIFO(st.st_mode)) {
            sheaf_error(COMP, "--control-fifo %s exists and is not a FIFO; remove it", path);
            return -1;
        }
        unlink(path);
    }
    if (mkfifo(path, 0600) != 0) {
        sheaf_error(COMP, "mkfifo %s: %s", path, strerror(errno));
        return -1;
    }
    /* O_RDWR: we are a writer too, so reads never return EOF when a client
     * closes its end, and the open does not wait for a writer. */
    h->ctl_fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (h->ctl_fd < 0) {
        sheaf_error(COMP, "open %s: %s", path, strerror(errno));
        unlink(path);
        return -1;
    }
    return 0;
}

static int create_topic(mock_host *h, const char *name, int partitions)
{
    rd_kafka_resp_err_t err =
        rd_kafka_mock_topic_create(h->cluster, name, partitions, h->replication);
    if (err) {
        sheaf_error(COMP, "cannot create topic %s: %s", name, rd_kafka_err2str(err));
        return -1;
    }
    sheaf_info(COMP, "topic %s: %d partitions, replication factor %d", name, partitions,
               h->replication);
    return 0;
}

/* Splits line into at most max whitespace-separated words (in place). */
static int split_words(char *line, char **words, int max)
{
    int n = 0;
    char *save = NULL;
    for (char *w = strtok_r(line, " \t\r", &save); w; w = strtok_r(NULL, " \t\r", &save)) {
        if (n == max) return max + 1;
        words[n++] = w;
    }
    return n;
}

/* Runs one control command and logs what happened. */
static void control_command(mock_host *h, char *line)
{
    char copy[CTL_LINE_MAX + 1];
    char *w[4];
    int n, id, val;
    rd_kafka_resp_err_t err;

    snprintf(copy, sizeof(copy), "%s", line);
    n = split_words(line, w, 3);
    if (n == 0) return;

    if (strcmp(w[0], "broker-down") == 0 || strcmp(w[0], "broker-up") == 0) {
        int down = strcmp(w[0], "broker-down") == 0;
        if (n != 2 || sheaf_parse_int(w[1], 0, INT_MAX, &id) != 0) goto usage;
        err = down ? rd_kafka_mock_broker_set_down(h->cluster, id)
                   : rd_kafka_mock_broker_set_up(h->cluster, id);
    } else if (strcmp(w[0], "rtt") == 0) {
        if (n != 3 || sheaf_parse_int(w[1], 0, INT_MAX, &id) != 0 ||
            sheaf_parse_int(w[2], 0, INT_MAX, &val) != 0)
            goto usage;
        err = rd_kafka_mock_broker_set_rtt(h->cluster, id, val);
    } else if (strcmp(w[0], "topic-create") == 0) {
        if (n != 3 || sheaf_parse_int(w[2], 1, MAX_PARTITIONS, &val) != 0) goto usage;
        err = rd_kafka_mock_topic_create(h->cluster, w[1], val, h->replication);
    } else {
        goto usage;
    }
    if (err)
        sheaf_info(COMP, "control \"%s\": failed: %s", copy, rd_kafka_err2str(err));
    else
        sheaf_info(COMP, "control \"%s\": ok", copy);
    return;

usage:
    sheaf_info(COMP,
               "control \"%s\": not understood; commands: broker-down ID, broker-up ID, "
               "rtt ID MS, topic-create NAME PARTITIONS",
               copy);
}

/* Reads what the FIFO holds and runs every complete line. */
static void control_read(mock_host *h)
{
    char chunk[4096];
    ssize_t got;

    while ((got = read(h->ctl_fd, chunk, sizeof(chunk))) > 0) {
        for (ssize_t i = 0; i < got; i++) {
            char c = chunk[i];
            if (c == '\n') {
                if (h->ctl_discarding)
                    sheaf_info(COMP, "control: line over %d bytes ignored", CTL_LINE_MAX);
                else {
                    h->ctl_line[h->ctl_len] = '\0';
                    control_command(h, h->ctl_line);
                }
                h->ctl_len = 0;
                h->ctl_discarding = 0;
            } else if (!h->ctl_discarding) {
                if (h->ctl_len == CTL_LINE_MAX)
                    h->ctl_discarding = 1;
                else
                    h->ctl_line[h->ctl_len++] = c;
            }
        }
    }
    if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        sheaf_warn(COMP, "control FIFO read: %s", strerror(errno));
}

/* Creates the carrier handle and the cluster.  rd_kafka_new takes the conf
 * on success only. */
static int cluster_start(mock_host *h, const mock_opts *o)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();

    rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
    if (rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "client.id", "sheaf-kafka-mock", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK) {
        sheaf_error(COMP, "librdkafka conf: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    h->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!h->rk) {
        sheaf_error(COMP, "rd_kafka_new: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    conf = NULL; /* owned by h->rk now */

    h->cluster = rd_kafka_mock_cluster_new(h->rk, o->brokers);
    if (!h->cluster) {
        sheaf_error(COMP, "rd_kafka_mock_cluster_new failed");
        return -1;
    }
    h->replication = o->brokers < 3 ? o->brokers : 3;
    return 0;
}

static int topics_create(mock_host *h, const mock_opts *o)
{
    static const struct {
        const char *suffix;
        int partitions; /* 0: --partitions */
    } topics[] = {{"map", 0}, {"dlq", AUX_PARTITIONS}, {"results", AUX_PARTITIONS}};
    sheaf_buf name;
    int rc = 0;

    sheaf_buf_init(&name, 512);
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]) && rc == 0; i++) {
        sheaf_buf_reset(&name);
        if (sheaf_buf_appendf(&name, "%s.%s", o->prefix, topics[i].suffix) != SHEAF_OK) {
            sheaf_error(COMP, "--prefix too long");
            rc = -1;
            break;
        }
        rc = create_topic(h, name.data, topics[i].partitions ? topics[i].partitions
                                                             : o->partitions);
    }
    sheaf_buf_free(&name);
    return rc;
}

static void host_destroy(mock_host *h)
{
    if (h->ctl_fd >= 0) close(h->ctl_fd);
    h->ctl_fd = -1;
    if (h->cluster) rd_kafka_mock_cluster_destroy(h->cluster);
    h->cluster = NULL;
    if (h->rk) rd_kafka_destroy(h->rk);
    h->rk = NULL;
}

int main(int argc, char **argv)
{
    mock_opts o;
    mock_host h = {.ctl_fd = -1};
    sigset_t block;
    struct sigaction sa;
    int rc = 1, published = 0, fifo_made = 0;

    if (parse_opts(argc, argv, &o) != 0) return 2;
    libc_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (!libc_bind) {
        fprintf(stderr, "sheaf-kafka-mock: cannot find the C library's bind(): %s\n", dlerror());
        return 1;
    }
    listen_addr_set = o.listen_addr != NULL;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* librdkafka's threads inherit this mask: signals reach the main thread. */
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    rc = cluster_start(&h, &o) == 0 ? 0 : 1;
    pthread_sigmask(SIG_UNBLOCK, &block, NULL);
    if (rc != 0) goto out;

    rc = 1;
    if (topics_create(&h, &o) != 0) goto out;
    if (o.control_fifo) {
        if (control_open(&h, o.control_fifo) != 0) goto out;
        fifo_made = 1;
    }
    const char *bootstraps = rd_kafka_mock_cluster_bootstraps(h.cluster);
    if (write_file_atomic(o.bootstrap_file, bootstraps) != 0) goto out;
    published = 1;
    sheaf_info(COMP, "mock cluster up: %d brokers, bootstrap %s (written to %s)%s%s", o.brokers,
               bootstraps, o.bootstrap_file, o.control_fifo ? ", control FIFO " : "",
               o.control_fifo ? o.control_fifo : "");

    while (!stop_requested) {
        struct pollfd pfd = {.fd = h.ctl_fd, .events = POLLIN};
        int n = poll(&pfd, h.ctl_fd >= 0 ? 1 : 0, POLL_MS);
        if (n > 0 && (pfd.revents & POLLIN)) control_read(&h);
    }
    sheaf_info(COMP, "stopping");
    rc = 0;

out:
    host_destroy(&h);
    if (published) unlink(o.bootstrap_file);
    if (fifo_made) unlink(o.control_fifo);
    if (rc == 0) sheaf_info(COMP, "stopped");
    return rc;
}
