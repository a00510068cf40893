/* producer/produce.c - one chunk to one message on <prefix>.map.
 *
 * The message key is "<job>/<doc>/<idx>": distinct per chunk, so the
 * partitioner spreads even one huge document over every partition (and so
 * over every worker), while a redelivered chunk keeps its key.  Headers
 * carry the schema version and the job, so tools can route or drop messages
 * without decoding them.
 *
 * Producing is asynchronous.  When librdkafka's queue is full we serve
 * delivery reports for 100 ms and try again (back-pressure, not failure);
 * after every message we poll without waiting so reports never pile up.  A
 * failed delivery stops production at once: the job will be failed anyway
 * and every further message would be wasted work for the fleet. */
#include "publish.h"

#include <stdio.h>
#include <string.h>
#include "sheaf/codec.h"
#include "sheaf/kafka.h"
#include "sheaf/program.h"

#define KEY_MAX 1024
#define VALUE_MAX ((size_t)1 << 30)
#define STR(x) #x
#define XSTR(x) STR(x)

sheaf_err sheaf_chunk_producer_init(sheaf_chunk_producer *cp, rd_kafka_t *rk, const char *topic,
                                    const char *job, const char *pv, char *errstr,
                                    size_t errlen)
{
    memset(cp, 0, sizeof(*cp));
    cp->rk = rk;
    cp->job = job;
    cp->pv = pv;
    sheaf_buf_init(&cp->key, KEY_MAX);
    sheaf_buf_init(&cp->value, VALUE_MAX);
    sheaf_buf_init(&cp->text, VALUE_MAX);
    cp->rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!cp->rkt) {
        snprintf(errstr, errlen, "topic %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
        return SHEAF_ERR_KAFKA;
    }
    return SHEAF_OK;
}

static sheaf_err check_deliveries(sheaf_chunk_producer *cp, char *errstr, size_t errlen)
{
    unsigned long failed = sheaf_kafka_delivery_failures(cp->rk);
    if (failed == 0) return SHEAF_OK;
    snprintf(errstr, errlen, "%lu message(s) to %s could not be delivered; production stopped",
             failed, rd_kafka_topic_name(cp->rkt));
    return SHEAF_ERR_KAFKA;
}

sheaf_err sheaf_chunk_producer_send(sheaf_chunk_producer *cp, const sheaf_doc_out *doc,
                                    const sheaf_chunk *ch, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_ERR_INTERNAL;
    rd_kafka_headers_t *hdrs = NULL;
    rd_kafka_resp_err_t kerr;
    sheaf_chunk_msg m;

    if (ch->idx >= doc->chunks) {
        snprintf(errstr, errlen,
                 "document \"%s\": chunk %u found, pass 1 counted %u chunks (did the input "
                 "change during the submit?)",
                 doc->id, ch->idx + 1, doc->chunks);
        goto done;
    }
    sheaf_buf_reset(&cp->key);
    sheaf_buf_reset(&cp->value);
    sheaf_buf_reset(&cp->text);
    err = sheaf_buf_appendf(&cp->key, "%s/%s/%u", cp->job, doc->id, ch->idx);
    if (err == SHEAF_OK) err = sheaf_buf_append(&cp->text, ch->text, ch->len);
    if (err != SHEAF_OK) {
        snprintf(errstr, errlen, "document \"%s\" chunk %u: %s", doc->id, ch->idx,
                 sheaf_strerror(err));
        goto done;
    }

    memset(&m, 0, sizeof(m));
    /* The message only borrows these strings: the codec reads, never frees. */
    m.version = SHEAF_SCHEMA_VERSION;
    m.job = (char *)cp->job;
    m.doc = (char *)doc->id;
    m.pv = (char *)cp->pv;
    m.idx = ch->idx;
    m.count = doc->chunks;
    m.text = cp->text.data ? cp->text.data : (char *)"";
    m.text_len = cp->text.len;
    m.tokens = ch->tokens;
    m.page_first = doc->has_pages ? ch->page_first : 0;
    m.page_last = doc->has_pages ? ch->page_last : 0;
    m.meta = doc->meta;
    m.meta_len = doc->meta_len;
    err = sheaf_chunk_encode(&m, &cp->value, errstr, errlen);
    if (err != SHEAF_OK) goto done;

    hdrs = rd_kafka_headers_new(2);
    rd_kafka_header_add(hdrs, "sheaf-schema", -1, XSTR(SHEAF_SCHEMA_VERSION), -1);
    rd_kafka_header_add(hdrs, "sheaf-job", -1, cp->job, -1);
    for (;;) {
        if (sheaf_stop) {
            err = SHEAF_ERR_STOPPED;
            snprintf(errstr, errlen, "interrupted while producing");
            goto done;
        }
        kerr = rd_kafka_producev(cp->rk, RD_KAFKA_V_RKT(cp->rkt),
                                 RD_KAFKA_V_KEY(cp->key.data, cp->key.len),
                                 RD_KAFKA_V_VALUE(cp->value.data, cp->value.len),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_OPAQUE(cp->delivery), RD_KAFKA_V_HEADERS(hdrs),
                                 RD_KAFKA_V_END);
        if (kerr == RD_KAFKA_RESP_ERR_NO_ERROR) {
            hdrs = NULL; /* producev took the headers */
            break;
        }
        if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            /* On failure the headers are still ours (freed below). */
            err = SHEAF_ERR_KAFKA;
            snprintf(errstr, errlen, "producing to %s: %s", rd_kafka_topic_name(cp->rkt),
                     rd_kafka_err2str(kerr));
            goto done;
        }
        rd_kafka_poll(cp->rk, 100); /* queue full: let deliveries drain it */
        err = check_deliveries(cp, errstr, errlen);
        if (err != SHEAF_OK) goto done;
    }
    cp->produced++;
    rd_kafka_poll(cp->rk, 0);
    err = check_deliveries(cp, errstr, errlen);
done:
    if (hdrs) rd_kafka_headers_destroy(hdrs);
    return err;
}

void sheaf_chunk_producer_clear(sheaf_chunk_producer *cp)
{
    if (!cp) return;
    if (cp->rkt) rd_kafka_topic_destroy(cp->rkt);
    cp->rkt = NULL;
    sheaf_buf_free(&cp->key);
    sheaf_buf_free(&cp->value);
    sheaf_buf_free(&cp->text);
}
