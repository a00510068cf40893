/* sheaf/kafka.h - creating librdkafka clients the sheaf way.
 *
 * Every client gets bootstrap.servers from `brokers`, a client.id naming the
 * program, the kafka.* passthrough properties (a property librdkafka
 * refuses is an error naming it, never just a log line), and a log
 * callback that routes librdkafka's logs into sheaf's logger.
 *
 * Producers are idempotent (enable.idempotence=true, acks=all) and compress
 * (lz4).  Delivery reports are counted per client; sheaf_kafka_flush()
 * reports any message that could not be delivered.
 *
 * Consumers are at-least-once: enable.auto.commit=true with
 * enable.auto.offset.store=false, so only offsets handed to
 * rd_kafka_offsets_store() (after the result is durable) are committed;
 * auto.offset.reset=earliest; cooperative-sticky assignment so a dead
 * member only moves its own partitions; session and heartbeat from
 * group.session_timeout_ms / group.heartbeat_ms. */
#ifndef SHEAF_KAFKA_H
#define SHEAF_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include "sheaf/config.h"
#include "sheaf/error.h"

/* A configuration with the common properties set.  The caller owns it until
 * it is handed to rd_kafka_new() (which takes it on success). */
rd_kafka_conf_t *sheaf_kafka_conf_new(const sheaf_config *cfg, const char *client_id,
                                      char *errstr, size_t errlen);

rd_kafka_t *sheaf_kafka_producer_new(const sheaf_config *cfg, const char *client_id,
                                     char *errstr, size_t errlen);

/* A consumer in group `group`, not yet subscribed.  rebalance_cb may be NULL
 * (librdkafka's default assignment handling is then used). */
rd_kafka_t *sheaf_kafka_consumer_new(const sheaf_config *cfg, const char *client_id,
                                     const char *group,
                                     void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t,
                                                          rd_kafka_topic_partition_list_t *,
                                                          void *),
                                     void *opaque, char *errstr, size_t errlen);

/* Destroys a producer made by sheaf_kafka_producer_new (and its delivery
 * counters).  Call sheaf_kafka_flush first: unflushed messages are lost.
 * NULL is a no-op. */
void sheaf_kafka_producer_destroy(rd_kafka_t *producer);

/* Waits up to timeout_ms for outstanding messages; fails when some are
 * still queued or any delivery report since the client was created (or the
 * last successful flush) was an error.  errstr says how many and why. */
sheaf_err sheaf_kafka_flush(rd_kafka_t *producer, int timeout_ms, char *errstr, size_t errlen);

/* Whether librdkafka takes property = value (a kafka.* key), with its
 * reason in why when it does not. */
sheaf_err sheaf_kafka_property_check(const char *property, const char *value, char *why,
                                     size_t whylen);

/* Asks the cluster for topic's metadata within timeout_ms: fails fast, with
 * what to check, when no broker answers or the topic does not exist (a
 * submit checks this before it creates anything). */
sheaf_err sheaf_kafka_check_topic(rd_kafka_t *rk, const char *topic, int timeout_ms, char *errstr,
                                  size_t errlen);

#define SHEAF_KAFKA_MAX_PARTITIONS 1024

/* The first and last offsets delivered to partition (any topic) since the
 * client was created; 0 when nothing was delivered there. */
int sheaf_kafka_delivered_range(rd_kafka_t *producer, int32_t partition, int64_t *first,
                                int64_t *last);

/* Number of messages whose delivery failed since the client was created. */
unsigned long sheaf_kafka_delivery_failures(rd_kafka_t *producer);

/* Broker reachability as this process's clients see it, for /health: 1
 * when fine, else 0 with why in reason: a client hit a fatal error, or in
 * the last 30 s no client saw a broker up and one reported all brokers
 * down (error callback) or no broker connection (statistics).  With
 * metrics.port set, clients emit librdkafka statistics every 5 s (unless
 * kafka.statistics.interval.ms says otherwise), served by their poll: a
 * client made then must be polled regularly.  Thread-safe. */
int sheaf_kafka_brokers_ok(char *reason, size_t len);

/* A delivery hook: a message produced with RD_KAFKA_V_OPAQUE(d) by a
 * producer of sheaf_kafka_producer_new has d->done called with its
 * delivery report's error (0: the broker has it), from the thread that
 * polls or flushes the producer, once per message. */
typedef struct sheaf_kafka_delivery {
    void (*done)(struct sheaf_kafka_delivery *d, rd_kafka_resp_err_t err);
} sheaf_kafka_delivery;

/* Sends a copy of orig (key, value, headers kept) to dlq_topic with headers
 * sheaf-dlq-reason, sheaf-dlq-topic, sheaf-dlq-partition, sheaf-dlq-offset
 * and, when known, sheaf-job.  A copy too large to go out - over the
 * producer's message.max.bytes (refused at once) or over what the broker
 * or the DLQ topic takes (refused in the delivery report) - is sent again
 * without its value, with headers sheaf-dlq-value-dropped (the value's
 * size) and sheaf-dlq-value-dropped-by (producer or broker, and why): the
 * original stays on its topic at the partition and offset named.  The
 * value is not kept elsewhere (docs/kafka.md says why).
 * Asynchronous and never waits: with a hook, its delivery report (after
 * any resend without the value) is told to hook->done from the producer's
 * poll; commit the offset of orig only after that (or flush).
 * SHEAF_ERR_KAFKA with errstr when it is refused at once (a full producer
 * queue among others): the caller tries again later. */
sheaf_err sheaf_kafka_dlq_send(rd_kafka_t *producer, const char *dlq_topic,
                               const rd_kafka_message_t *orig, const char *reason,
                               const char *job, sheaf_kafka_delivery *hook, char *errstr,
                               size_t errlen);

#endif
