/* fuzz_jsonl.c - the JSONL item parser (sheaf_jsonl_parse) and what the
 * producer builds from an item: its metadata (the JSON object stored in
 * Redis and the flat list carried in chunk messages), its chunks and the
 * chunk messages themselves.
 *
 * The input is a JSONL file: each line (split at '\n', numbered from 1, so
 * a byte order mark on line 1 is forgiven as the reader does; blank lines
 * skipped) is parsed with two fixed option sets:
 *   A  id "id", text "text", meta_fields "*", chunk.max_tokens 64 with
 *      overlap 8, the default document cap;
 *   B  id "id", text "text", meta_fields " company, sector ,year,,title",
 *      max_doc_bytes 1024, chunks of 2 pages.
 * Checks: a bad line fails with a "PATH:LINE: ..." message; an accepted
 * item has a valid document id and non-blank UTF-8 text without NUL; its
 * metadata JSON (compact, sorted) parses back to an equal object; the flat
 * metadata is sorted by unique key, one pair per field; every chunk message
 * of the item encodes (the producer must not find out at publish time what
 * it could have refused at scan time) and decodes back to the same text,
 * document id and metadata. */
#include "fuzz_common.h"

#include <jansson.h>

#include "inputs.h"
#include "sheaf/buf.h"
#include "sheaf/codec.h"
#include "sheaf/config.h"
#include "sheaf/error.h"
#include "sheaf/util.h"

#define CODEC_MAX_META 4096 /* sheaf/codec.h: "meta" at most 4096 entries */

static sheaf_config cfg_a, cfg_b;
static sheaf_input_opts opt_a, opt_b;

static void set(sheaf_config *cfg, const char *key, const char *value)
{
    char errstr[SHEAF_ERRSTR_SIZE];
    if (sheaf_config_set(cfg, key, value, "fuzz", errstr, sizeof(errstr)) != SHEAF_OK) {
        fprintf(stderr, "fuzz_jsonl: %s\n", errstr);
        abort();
    }
}

static void setup(void)
{
    static int done;
    char errstr[SHEAF_ERRSTR_SIZE];
    if (done) return;
    done = 1;
    if (sheaf_config_init(&cfg_a) != SHEAF_OK || sheaf_config_init(&cfg_b) != SHEAF_OK) abort();
    set(&cfg_a, "input.meta_fields", "*");
    set(&cfg_a, "chunk.max_tokens", "64");
    set(&cfg_a, "chunk.overlap_tokens", "8");
    set(&cfg_b, "input.meta_fields", " company, sector ,year,,title");
    set(&cfg_b, "input.max_doc_bytes", "1024");
    set(&cfg_b, "chunk.pages_per_batch", "2");
    if (sheaf_input_opts_init(&opt_a, &cfg_a, errstr, sizeof(errstr)) != SHEAF_OK ||
        sheaf_input_opts_init(&opt_b, &cfg_b, errstr, sizeof(errstr)) != SHEAF_OK) {
        fprintf(stderr, "fuzz_jsonl: %s\n", errstr);
        abort();
    }
}

typedef struct produce_ctx {
    const sheaf_jsonl_item *it;
    const char *id;
    sheaf_kv *meta;
    size_t meta_len;
    uint32_t count;     /* chunks counted in pass 1 */
    int has_pages;
    sheaf_buf enc;
} produce_ctx;

static sheaf_err count_cb(const sheaf_chunk *c, void *ud)
{
    (void)c;
    (void)ud;
    return SHEAF_OK;
}

/* Pass 2 of the producer: each chunk becomes a message (as produce.c
 * builds it), which must encode and decode back. */
static sheaf_err produce_cb(const sheaf_chunk *c, void *ud)
{
    produce_ctx *pc = ud;
    sheaf_chunk_msg m, back;
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    char *text = fuzz_strndup((const uint8_t *)c->text, c->len);
    sheaf_err err;

    memset(&m, 0, sizeof(m));
    m.version = SHEAF_SCHEMA_VERSION;
    m.job = (char *)"j-20260101-000000-fuzz";
    m.doc = (char *)pc->id;
    m.pv = (char *)"0123456789abcdef";
    m.idx = c->idx;
    m.count = pc->count;
    m.text = text;
    m.text_len = c->len;
    m.tokens = c->tokens;
    m.page_first = pc->has_pages ? c->page_first : 0;
    m.page_last = pc->has_pages ? c->page_last : 0;
    m.meta = pc->meta;
    m.meta_len = pc->meta_len;
    sheaf_buf_reset(&pc->enc);
    err = sheaf_chunk_encode(&m, &pc->enc, errstr, sizeof(errstr));
    if (pc->meta_len > CODEC_MAX_META) {
        FUZZ_CHECK(err != SHEAF_OK, "too much metadata is refused");
        free(text);
        return err;
    }
    if (err != SHEAF_OK) fprintf(stderr, "encode: %s\n", errstr);
    FUZZ_CHECK(err == SHEAF_OK, "a chunk of an accepted item encodes");
    err = sheaf_chunk_decode(pc->enc.data, pc->enc.len, &back, errstr, sizeof(errstr));
    if (err != SHEAF_OK) fprintf(stderr, "decode: %s\n", errstr);
    FUZZ_CHECK(err == SHEAF_OK, "a chunk message decodes");
    FUZZ_CHECK(strcmp(back.doc, pc->id) == 0, "doc id survives");
    FUZZ_CHECK(back.text_len == c->len && memcmp(back.text, c->text, c->len) == 0,
               "chunk text survives");
    FUZZ_CHECK(back.meta_len == pc->meta_len, "metadata survives");
    for (size_t i = 0; i < back.meta_len; i++)
        FUZZ_CHECK(strcmp(back.meta[i].key, pc->meta[i].key) == 0 &&
                       strcmp(back.meta[i].value, pc->meta[i].value) == 0,
                   "metadata survives in order");
    sheaf_chunk_msg_clear(&back);
    free(text);
    return SHEAF_OK;
}

static void chunk_item(const sheaf_input_opts *o, const sheaf_jsonl_item *it, const char *id,
                       sheaf_kv *kv, size_t n_kv)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    produce_ctx pc = {it, id, kv, n_kv, 0, 0, {0}};
    sheaf_chunker *ch = sheaf_chunker_create(&o->chunk, count_cb, NULL, errstr, sizeof(errstr));
    sheaf_err err;

    FUZZ_CHECK(ch != NULL, "chunker options accepted");
    err = sheaf_chunker_feed(ch, it->text, it->text_len);
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    FUZZ_CHECK(err == SHEAF_OK, "an accepted item chunks");
    pc.count = sheaf_chunker_count(ch);
    sheaf_chunker_destroy(ch);
    if (pc.count == 0) return; /* "empty document": a problem, not produced */

    pc.has_pages = memchr(it->text, '\f', it->text_len) != NULL;
    sheaf_buf_init(&pc.enc, 64u * 1024 * 1024);
    ch = sheaf_chunker_create(&o->chunk, produce_cb, &pc, errstr, sizeof(errstr));
    FUZZ_CHECK(ch != NULL, "chunker options accepted");
    err = sheaf_chunker_feed(ch, it->text, it->text_len);
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    FUZZ_CHECK(err == SHEAF_OK || pc.meta_len > CODEC_MAX_META, "an accepted item produces");
    FUZZ_CHECK(err != SHEAF_OK || sheaf_chunker_count(ch) == pc.count, "pass 2 counts as pass 1");
    sheaf_chunker_destroy(ch);
    sheaf_buf_free(&pc.enc);
}

static void one_line(const sheaf_input_opts *o, uint64_t line_no, const char *line, size_t len)
{
    sheaf_jsonl_item it;
    char msg[SHEAF_PROBLEM_SIZE] = "";
    json_t *meta = NULL, *back = NULL;
    char *meta_json = NULL, *id = NULL;
    sheaf_kv *kv = NULL;
    size_t n_kv = 0;
    sheaf_err err;

    err = sheaf_jsonl_parse(o, "in.jsonl", line_no, line, len, &it, msg, sizeof(msg));
    if (err != SHEAF_OK) {
        FUZZ_CHECK(err == SHEAF_ERR_INVALID, "a bad line is INVALID");
        FUZZ_CHECK(strncmp(msg, "in.jsonl:", 9) == 0, "the problem names file and line");
        goto done;
    }
    FUZZ_CHECK(json_is_object(it.root), "an item is an object");
    FUZZ_CHECK(it.id && sheaf_doc_id_valid(it.id, it.id_len), "the id is a document id");
    FUZZ_CHECK(it.text && it.text_len > 0 && strlen(it.text) == it.text_len, "text without NUL");
    FUZZ_CHECK(sheaf_utf8_valid(it.text, it.text_len, NULL), "text is UTF-8");
    FUZZ_CHECK(!sheaf_text_blank(it.text, it.text_len), "text is not blank");
    FUZZ_CHECK((uint64_t)it.text_len <= o->max_doc_bytes, "text within the cap");
    /* The producer keeps the id as a C string (sheaf_strndup). */
    id = sheaf_strndup(it.id, it.id_len);
    FUZZ_CHECK(id && strlen(id) == it.id_len, "id without NUL");

    meta = sheaf_jsonl_meta(o, &it);
    FUZZ_CHECK(meta != NULL, "metadata built");
    if (o->meta_all) {
        FUZZ_CHECK(!json_object_get(meta, o->id_field) && !json_object_get(meta, o->text_field),
                   "id and text are not metadata");
        FUZZ_CHECK(json_object_size(meta) + 2 == json_object_size(it.root),
                   "every other field is metadata");
    }
    meta_json = sheaf_meta_to_json(meta);
    FUZZ_CHECK(meta_json != NULL, "metadata JSON built");
    back = json_loads(meta_json, JSON_REJECT_DUPLICATES, NULL);
    FUZZ_CHECK(back && json_equal(back, meta), "metadata JSON reads back equal");
    FUZZ_CHECK(sheaf_meta_flatten(meta, &kv, &n_kv) == SHEAF_OK, "metadata flattened");
    FUZZ_CHECK(n_kv == json_object_size(meta), "one pair per field");
    for (size_t i = 0; i < n_kv; i++) {
        FUZZ_CHECK(kv[i].key && kv[i].value, "pair set");
        FUZZ_CHECK(i == 0 || strcmp(kv[i - 1].key, kv[i].key) < 0, "pairs sorted, keys unique");
        FUZZ_CHECK(sheaf_utf8_valid(kv[i].value, strlen(kv[i].value), NULL), "value is UTF-8");
    }
    chunk_item(o, &it, id, kv, n_kv);
done:
    sheaf_meta_kv_free(kv, n_kv);
    json_decref(back);
    free(meta_json);
    json_decref(meta);
    free(id);
    sheaf_jsonl_item_clear(&it);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    uint64_t line_no = 0;

    setup();
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        /* A copy of exactly the line, so an overread is seen. */
        char *line = fuzz_strndup((const uint8_t *)p, len);
        line_no++;
        if (!sheaf_jsonl_blank(line, len)) {
            one_line(&opt_a, line_no, line, len);
            one_line(&opt_b, line_no, line, len);
        }
        free(line);
        p += len + (nl != NULL);
    }
    return 0;
}
