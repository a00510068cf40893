/* fuzz_codec.c - the chunk message decoder (sheaf_chunk_decode), as a
 * worker runs it on whatever bytes arrive on the <prefix>.map topic.
 *
 * Checks: decoding never crashes, leaks or over-allocates; a failure leaves
 * the message cleared with a reason; a decoded message satisfies the
 * contract of sheaf/codec.h (so the worker can rely on it); re-encoding it
 * succeeds (the encoder accepts what the decoder accepts), decodes to an
 * equal message, and is canonical (encoding that again gives the same
 * bytes). */
#include "fuzz_common.h"

#include "sheaf/buf.h"
#include "sheaf/codec.h"
#include "sheaf/error.h"
#include "sheaf/util.h"

#define ENC_MAX (32u * 1024 * 1024)

static int str_eq(const char *a, const char *b) { return strcmp(a, b) == 0; }

static void check_equal(const sheaf_chunk_msg *a, const sheaf_chunk_msg *b)
{
    FUZZ_CHECK(a->version == b->version, "version survives a round trip");
    FUZZ_CHECK(str_eq(a->job, b->job) && str_eq(a->doc, b->doc) && str_eq(a->pv, b->pv),
               "ids survive a round trip");
    FUZZ_CHECK(a->idx == b->idx && a->count == b->count && a->tokens == b->tokens &&
                   a->page_first == b->page_first && a->page_last == b->page_last,
               "numbers survive a round trip");
    FUZZ_CHECK(a->text_len == b->text_len && memcmp(a->text, b->text, a->text_len) == 0,
               "text survives a round trip");
    FUZZ_CHECK(a->meta_len == b->meta_len, "meta count survives a round trip");
    for (size_t i = 0; i < a->meta_len; i++)
        FUZZ_CHECK(str_eq(a->meta[i].key, b->meta[i].key) &&
                       str_eq(a->meta[i].value, b->meta[i].value),
                   "meta survives a round trip in order");
}

static void check_contract(const sheaf_chunk_msg *m)
{
    FUZZ_CHECK(m->version == SHEAF_SCHEMA_VERSION, "only version 1 decodes");
    FUZZ_CHECK(m->job && sheaf_job_id_valid(m->job), "job id valid");
    FUZZ_CHECK(m->pv && sheaf_job_id_valid(m->pv), "pipeline version valid");
    FUZZ_CHECK(m->doc && sheaf_doc_id_valid(m->doc, strlen(m->doc)), "doc id valid");
    FUZZ_CHECK(m->count > 0 && m->idx < m->count, "idx < n");
    FUZZ_CHECK(m->text && m->text[m->text_len] == '\0' && strlen(m->text) == m->text_len,
               "text NUL-terminated without inner NUL");
    FUZZ_CHECK(sheaf_utf8_valid(m->text, m->text_len, NULL), "text is UTF-8");
    FUZZ_CHECK((m->page_first == 0 && m->page_last == 0) ||
                   (m->page_first >= 1 && m->page_first <= m->page_last),
               "page range");
    FUZZ_CHECK(m->meta_len == 0 || m->meta, "meta array present");
    for (size_t i = 0; i < m->meta_len; i++) {
        const char *k = m->meta[i].key, *v = m->meta[i].value;
        FUZZ_CHECK(k && v, "meta pair set");
        FUZZ_CHECK(sheaf_utf8_valid(k, strlen(k), NULL) && sheaf_utf8_valid(v, strlen(v), NULL),
                   "meta is UTF-8");
        for (size_t j = 0; j < i; j++) FUZZ_CHECK(!str_eq(m->meta[j].key, k), "meta keys unique");
        FUZZ_CHECK(sheaf_chunk_meta_get(m, k) == v, "meta lookup finds the value");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sheaf_chunk_msg m, m2;
    sheaf_buf enc, enc2;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    sheaf_err err;

    memset(&m2, 0, sizeof(m2));
    sheaf_buf_init(&enc, ENC_MAX);
    sheaf_buf_init(&enc2, ENC_MAX);
    err = sheaf_chunk_decode(data, size, &m, errstr, sizeof(errstr));
    if (err != SHEAF_OK) {
        FUZZ_CHECK(m.job == NULL && m.doc == NULL && m.pv == NULL && m.text == NULL &&
                       m.meta == NULL,
                   "a failed decode leaves the message cleared");
        FUZZ_CHECK(errstr[0] != '\0', "a failed decode says why");
        FUZZ_CHECK(err == SHEAF_ERR_INVALID || err == SHEAF_ERR_VERSION ||
                       err == SHEAF_ERR_TOO_LARGE,
                   "decode fails with INVALID, VERSION or TOO_LARGE");
        /* The byte scan runs before msgpack-c; it must accept only what
         * msgpack-c can unpack ("malformed msgpack" means they disagree). */
        FUZZ_CHECK(strcmp(errstr, "malformed msgpack") != 0, "scan and msgpack-c agree");
        goto done;
    }
    check_contract(&m);

    err = sheaf_chunk_encode(&m, &enc, errstr, sizeof(errstr));
    if (err != SHEAF_OK) fprintf(stderr, "encode: %s\n", errstr);
    FUZZ_CHECK(err == SHEAF_OK, "what decodes re-encodes");
    err = sheaf_chunk_decode(enc.data, enc.len, &m2, errstr, sizeof(errstr));
    if (err != SHEAF_OK) fprintf(stderr, "decode of re-encoding: %s\n", errstr);
    FUZZ_CHECK(err == SHEAF_OK, "a re-encoded message decodes");
    check_equal(&m, &m2);
    FUZZ_CHECK(sheaf_chunk_encode(&m2, &enc2, errstr, sizeof(errstr)) == SHEAF_OK,
               "second encode");
    FUZZ_CHECK(enc.len == enc2.len && memcmp(enc.data, enc2.data, enc.len) == 0,
               "encoding is canonical");
done:
    sheaf_chunk_msg_clear(&m);
    sheaf_chunk_msg_clear(&m2);
    sheaf_buf_free(&enc);
    sheaf_buf_free(&enc2);
    return 0;
}
