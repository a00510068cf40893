/* codec.c - the chunk message on the <prefix>.map topic, in msgpack.
 *
 * Encoding packs the fields in the fixed order of sheaf/codec.h straight
 * into the caller's sheaf_buf through a msgpack_packer write callback, so
 * there is no intermediate buffer; on any failure the buffer is put back to
 * its old length.  "meta" is always written, as a possibly empty map, so
 * consumers in other languages never see two shapes.
 *
 * Decoding is strict and must never crash or blow up on hostile bytes (a
 * message can come from anything that can write to the topic).  msgpack-c's
 * C unpacker has no limits: it allocates an array or map's claimed element
 * count before reading the elements, so five bytes claiming 2^32 entries
 * ask for 100+ GB, and nesting deeper than its fixed stack is reported as
 * an out-of-memory error.  So decoding runs in two steps:
 *
 *   1. scan_value() walks the bytes without allocating: it checks every
 *      length against the bytes that remain, caps nesting depth and the
 *      number of objects, and finds where the first value ends (anything
 *      after it is "trailing bytes").  After this, msgpack-c's allocations
 *      are proportional to what is really in the message.
 *   2. msgpack_unpack_next() builds the object tree, and the fields are
 *      checked one by one with errors naming the field.
 *
 * Both directions finish with check_msg(), so the encoder refuses exactly
 * what the decoder would refuse: a producer finds a bad message when it
 * builds it, not when a worker dead-letters it. */
#include "sheaf/error.h"
#include "sheaf/codec.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/util.h"

/* Limits.  A chunk holds at most chunk.max_tokens (<= 1e6) tokens, a few MB
 * of text; Kafka's own default message cap is 1 MB. */
#define CODEC_MAX_BYTES (16u * 1024 * 1024) /* whole encoded message */
#define CODEC_MAX_META 4096                 /* entries of "meta" */
#define CODEC_MAX_OBJECTS 16384             /* msgpack objects in one message */
#define CODEC_MAX_DEPTH 8                   /* container nesting; msgpack-c allows 32 */

/* The fields, in encoding order. */
enum {
    F_V, F_JOB, F_DOC, F_PV, F_IDX, F_N, F_TEXT, F_TOK, F_PF, F_PL, F_META, F_COUNT
};
static const char *const field_names[F_COUNT] = {
    "v", "job", "doc", "pv", "idx", "n", "text", "tok", "pf", "pl", "meta"
};

/* A byte string that is not necessarily NUL-terminated. */
typedef struct span {
    const char *p;
    size_t n;
} span;

/* Copies at most 48 bytes of s into out for an error message, replacing
 * anything that is not printable ASCII by '?' (keys from the wire may hold
 * any bytes, and error messages end up in logs and DLQ records). */
static const char *printable(const char *s, size_t n, char out[64])
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < 48; i++) {
        unsigned char c = (unsigned char)s[i];
        out[k++] = (c >= 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    if (n > 48) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
    return out;
}

/* ---- duplicate keys ---- */

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c) return c;
    return (x->n > y->n) - (x->n < y->n);
}

/* Sorts keys[0..n) and sets *dup to a key that occurs twice, if any.
 * Sorting keeps this O(n log n) even for a hostile map of many keys. */
static void find_duplicate(span *keys, size_t n, const span **dup)
{
    *dup = NULL;
    if (n < 2) return;
    qsort(keys, n, sizeof(*keys), span_cmp);
    for (size_t i = 1; i < n; i++) {
        if (span_cmp(&keys[i - 1], &keys[i]) == 0) {
            *dup = &keys[i];
            break;
        }
    }
}

/* ---- the checks shared by encoder and decoder ---- */

/* Checks a decoded or to-be-encoded message.  strings_checked is set by
 * the decoder, which has already checked every string's UTF-8 on the wire
 * (where embedded NULs are still visible). */
static sheaf_err check_msg(const sheaf_chunk_msg *m, int strings_checked, char *errstr,
                           size_t errlen)
{
    size_t bad = 0;
    if (m->version != SHEAF_SCHEMA_VERSION) {
        sheaf_set_err(errstr, errlen, "field \"v\": unsupported schema version %u (this build reads %d)",
                (unsigned)m->version, SHEAF_SCHEMA_VERSION);
        return SHEAF_ERR_VERSION;
    }
    if (!m->job || !sheaf_job_id_valid(m->job)) {
        sheaf_set_err(errstr, errlen,
                "field \"job\": %s (1..200 bytes of A-Z a-z 0-9 . _ : / @ + -)",
                m->job ? "not a valid job id" : "missing");
        return SHEAF_ERR_INVALID;
    }
    if (!m->doc || !sheaf_doc_id_valid(m->doc, strlen(m->doc))) {
        sheaf_set_err(errstr, errlen,
                "field \"doc\": %s (1..512 bytes of UTF-8 without control characters)",
                m->doc ? "not a valid document id" : "missing");
        return SHEAF_ERR_INVALID;
    }
    if (!m->pv || !sheaf_job_id_valid(m->pv)) {
        sheaf_set_err(errstr, errlen,
                "field \"pv\": %s (1..200 bytes of A-Z a-z 0-9 . _ : / @ + -)",
                m->pv ? "not a valid pipeline version" : "missing");
        return SHEAF_ERR_INVALID;
    }
    if (m->count == 0) {
        sheaf_set_err(errstr, errlen, "field \"n\": must be at least 1");
        return SHEAF_ERR_INVALID;
    }
    if (m->idx >= m->count) {
        sheaf_set_err(errstr, errlen, "field \"idx\": %u is not below \"n\" (%u)", (unsigned)m->idx,
                (unsigned)m->count);
        return SHEAF_ERR_INVALID;
    }
    if (!m->text && m->text_len > 0) {
        sheaf_set_err(errstr, errlen, "field \"text\": NULL with length %zu", m->text_len);
        return SHEAF_ERR_INVALID;
    }
    if (m->text_len > CODEC_MAX_BYTES) {
        sheaf_set_err(errstr, errlen, "field \"text\": %zu bytes exceeds the limit of %u",
                m->text_len, CODEC_MAX_BYTES);
        return SHEAF_ERR_TOO_LARGE;
    }
    if (!strings_checked && m->text && !sheaf_utf8_valid(m->text, m->text_len, &bad)) {
        sheaf_set_err(errstr, errlen, "field \"text\": invalid UTF-8 or NUL at byte %zu", bad);
        return SHEAF_ERR_INVALID;
    }
    if ((m->page_first == 0) != (m->page_last == 0) || m->page_first > m->page_last) {
        sheaf_set_err(errstr, errlen,
                "field \"pl\": pages %u..%u are not a range (both 0 when the input has no pages)",
                (unsigned)m->page_first, (unsigned)m->page_last);
        return SHEAF_ERR_INVALID;
    }
    if (m->meta_len > CODEC_MAX_META || (m->meta_len > 0 && !m->meta)) {
        sheaf_set_err(errstr, errlen, "field \"meta\": %zu entries (limit %d)", m->meta_len,
                CODEC_MAX_META);
        return m->meta_len > CODEC_MAX_META ? SHEAF_ERR_TOO_LARGE : SHEAF_ERR_INVALID;
    }
    if (!strings_checked) {
        for (size_t i = 0; i < m->meta_len; i++) {
            const sheaf_kv *kv = &m->meta[i];
            if (!kv->key || !kv->value) {
                sheaf_set_err(errstr, errlen, "field \"meta\": entry %zu has a NULL %s", i,
                        kv->key ? "value" : "key");
                return SHEAF_ERR_INVALID;
            }
            if (!sheaf_utf8_valid(kv->key, strlen(kv->key), &bad) ||
                !sheaf_utf8_valid(kv->value, strlen(kv->value), &bad)) {
                char pk[64];
                sheaf_set_err(errstr, errlen, "field \"meta\": entry \"%s\": invalid UTF-8",
                        printable(kv->key, strlen(kv->key), pk));
                return SHEAF_ERR_INVALID;
            }
        }
    }
    return SHEAF_OK;
}

/* Refuses duplicated meta keys in a struct about to be encoded. */
static sheaf_err check_meta_unique(const sheaf_chunk_msg *m, char *errstr, size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    const span *dup = NULL;
    span *keys = NULL;
    if (m->meta_len < 2) goto done;
    keys = malloc(m->meta_len * sizeof(*keys));
    if (!keys) {
        err = SHEAF_ERR_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < m->meta_len; i++) {
        keys[i].p = m->meta[i].key;
        keys[i].n = strlen(m->meta[i].key);
    }
    find_duplicate(keys, m->meta_len, &dup);
    if (dup) {
        char pk[64];
        sheaf_set_err(errstr, errlen, "field \"meta\": duplicated key \"%s\"",
                printable(dup->p, dup->n, pk));
        err = SHEAF_ERR_INVALID;
    }
done:
    free(keys);
    return err;
}

/* ---- encoding ---- */

/* Where the packer writes: the caller's buffer and the first failure. */
typedef struct pack_sink {
    sheaf_buf *out;
    size_t written;
    sheaf_err err;
} pack_sink;

static int sink_write(void *data, const char *p, size_t n)
{
    pack_sink *s = data;
    if (s->err != SHEAF_OK) return -1;
    if (n > CODEC_MAX_BYTES - s->written) {
        s->err = SHEAF_ERR_TOO_LARGE;
        return -1;
    }
    s->err = sheaf_buf_append(s->out, p, n);
    if (s->err != SHEAF_OK) return -1;
    s->written += n;
    return 0;
}

static int pack_cstr(msgpack_packer *pk, const char *s, size_t n)
{
    return msgpack_pack_str_with_body(pk, s ? s : "", s ? n : 0);
}

static int pack_key(msgpack_packer *pk, int field)
{
    return pack_cstr(pk, field_names[field], strlen(field_names[field]));
}

sheaf_err sheaf_chunk_encode(const sheaf_chunk_msg *m, sheaf_buf *out, char *errstr,
                             size_t errlen)
{
    sheaf_chunk_msg tmp;
    pack_sink sink = {.out = out, .written = 0, .err = SHEAF_OK};
    msgpack_packer pk;
    size_t start = out->len;
    sheaf_err err;
    int rc = 0;

    /* version 0 means "current": a zero-initialised struct encodes. */
    tmp = *m;
    if (tmp.version == 0) tmp.version = SHEAF_SCHEMA_VERSION;
    err = check_msg(&tmp, 0, errstr, errlen);
    if (err == SHEAF_OK) err = check_meta_unique(&tmp, errstr, errlen);
    if (err != SHEAF_OK) goto done;

    msgpack_packer_init(&pk, &sink, sink_write);
    rc |= msgpack_pack_map(&pk, F_COUNT);
    rc |= pack_key(&pk, F_V) | msgpack_pack_uint32(&pk, tmp.version);
    rc |= pack_key(&pk, F_JOB) | pack_cstr(&pk, tmp.job, strlen(tmp.job));
    rc |= pack_key(&pk, F_DOC) | pack_cstr(&pk, tmp.doc, strlen(tmp.doc));
    rc |= pack_key(&pk, F_PV) | pack_cstr(&pk, tmp.pv, strlen(tmp.pv));
    rc |= pack_key(&pk, F_IDX) | msgpack_pack_uint32(&pk, tmp.idx);
    rc |= pack_key(&pk, F_N) | msgpack_pack_uint32(&pk, tmp.count);
    rc |= pack_key(&pk, F_TEXT) | pack_cstr(&pk, tmp.text, tmp.text_len);
    rc |= pack_key(&pk, F_TOK) | msgpack_pack_uint32(&pk, tmp.tokens);
    rc |= pack_key(&pk, F_PF) | msgpack_pack_uint32(&pk, tmp.page_first);
    rc |= pack_key(&pk, F_PL) | msgpack_pack_uint32(&pk, tmp.page_last);
    rc |= pack_key(&pk, F_META) | msgpack_pack_map(&pk, tmp.meta_len);
    for (size_t i = 0; i < tmp.meta_len && rc == 0; i++) {
        rc |= pack_cstr(&pk, tmp.meta[i].key, strlen(tmp.meta[i].key));
        rc |= pack_cstr(&pk, tmp.meta[i].value, strlen(tmp.meta[i].value));
    }
    if (rc != 0) {
        err = sink.err != SHEAF_OK ? sink.err : SHEAF_ERR_INTERNAL;
        sheaf_set_err(errstr, errlen, "chunk message of doc \"%s\" index %u: %s", tmp.doc,
                (unsigned)tmp.idx,
                err == SHEAF_ERR_TOO_LARGE ? "too large for the message or buffer limit"
                                           : sheaf_strerror(err));
    }

done:
    if (err != SHEAF_OK && out->len > start) {
        /* Put the buffer back as it was. */
        out->len = start;
        out->data[start] = '\0';
    }
    return err;
}

/* ---- decoding ---- */

static uint64_t be_read(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* Walks the msgpack value at p[0..len) without allocating; sets *end to the
 * offset just past it.  Every length is checked against the bytes left and
 * every container's element count against the bytes left (an element takes
 * at least one byte), so the walk is O(len). */
static sheaf_err scan_value(const unsigned char *p, size_t len, size_t *end, char *errstr,
                            size_t errlen)
{
    uint64_t left[CODEC_MAX_DEPTH + 1]; /* elements still to read per level */
    int depth = 0;
    uint64_t pending = 1;               /* sum of left[] */
    size_t off = 0, objects = 0;

    left[0] = 1;
    while (pending > 0) {
        while (left[depth] == 0) depth--;
        if (off >= len) goto truncated;
        if (++objects > CODEC_MAX_OBJECTS) {
            sheaf_set_err(errstr, errlen, "more than %d msgpack objects", CODEC_MAX_OBJECTS);
            return SHEAF_ERR_TOO_LARGE;
        }
        left[depth]--;
        pending--;

        unsigned c = p[off++];
        uint64_t skip = 0, children = 0;
        size_t lenbytes = 0; /* size of a length field that follows */
        int payload_extra = 0; /* ext: the type byte */
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            /* fixint, nil, bool */
        } else if (c <= 0x8f) {
            children = 2u * (c & 0x0f);
        } else if (c <= 0x9f) {
            children = c & 0x0f;
        } else if (c <= 0xbf) {
            skip = c & 0x1f;
        } else {
            switch (c) {
            case 0xc4: case 0xd9: lenbytes = 1; break;            /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;            /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;            /* bin32, str32 */
            case 0xc7: lenbytes = 1; payload_extra = 1; break;    /* ext8 */
            case 0xc8: lenbytes = 2; payload_extra = 1; break;    /* ext16 */
            case 0xc9: lenbytes = 4; payload_extra = 1; break;    /* ext32 */
            case 0xca: skip = 4; break;                           /* float32 */
            case 0xcb: skip = 8; break;                           /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                           /* fixext 1..16 */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xde: lenbytes = 2; break;            /* array16, map16 */
            case 0xdd: case 0xdf: lenbytes = 4; break;            /* array32, map32 */
            default: /* 0xc1 is never used */
                sheaf_set_err(errstr, errlen, "malformed msgpack: byte 0x%02x at offset %zu", c,
                        off - 1);
                return SHEAF_ERR_INVALID;
            }
        }
        if (lenbytes) {
            if (len - off < lenbytes) goto truncated;
            uint64_t n = be_read(p + off, lenbytes);
            off += lenbytes;
            if (c == 0xdc || c == 0xdd) children = n;
            else if (c == 0xde || c == 0xdf) children = 2 * n;
            else skip = n + (uint64_t)payload_extra;
        }
        if (skip > len - off) goto truncated;
        off += (size_t)skip;
        if (children > 0) {
            if (pending + children > len - off) goto truncated;
            if (depth + 1 > CODEC_MAX_DEPTH) {
                sheaf_set_err(errstr, errlen, "msgpack nested deeper than %d levels", CODEC_MAX_DEPTH);
                return SHEAF_ERR_INVALID;
            }
            left[++depth] = children;
            pending += children;
        }
    }
    *end = off;
    return SHEAF_OK;

truncated:
    sheaf_set_err(errstr, errlen, "malformed msgpack: truncated value (%zu bytes)", len);
    return SHEAF_ERR_INVALID;
}

static const char *type_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "unsigned integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "float";
    case MSGPACK_OBJECT_STR: return "string";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_BIN: return "binary";
    case MSGPACK_OBJECT_EXT: return "extension";
    }
    return "unknown";
}

static sheaf_err get_uint(const msgpack_object *o, int field, uint32_t *out, char *errstr,
                          size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        sheaf_set_err(errstr, errlen, "field \"%s\": expected unsigned integer, got %s",
                field_names[field], type_name(o->type));
        return SHEAF_ERR_INVALID;
    }
    if (o->via.u64 > UINT32_MAX) {
        sheaf_set_err(errstr, errlen, "field \"%s\": %llu is larger than %lu", field_names[field],
                (unsigned long long)o->via.u64, (unsigned long)UINT32_MAX);
        return SHEAF_ERR_INVALID;
    }
    *out = (uint32_t)o->via.u64;
    return SHEAF_OK;
}

/* Copies a msgpack string after checking it is UTF-8 without NULs.  what
 * names it in errors, e.g. "field \"job\"". */
/* A string value into *out.  Errors name it as what, or, when what is
 * NULL, as field "<field>" (made only then: this runs for every message). */
static sheaf_err get_str(const msgpack_object *o, const char *field, const char *what,
                         char **out, size_t *outlen, char *errstr, size_t errlen)
{
    char name[64];
    size_t bad = 0;
    int ok = o->type == MSGPACK_OBJECT_STR;
    /* The scan bounded size by the message length. */
    if (ok && sheaf_utf8_valid(o->via.str.ptr, o->via.str.size, &bad)) {
        *out = sheaf_strndup(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
        if (!*out) return SHEAF_ERR_NOMEM;
        if (outlen) *outlen = o->via.str.size;
        return SHEAF_OK;
    }
    if (!what) {
        snprintf(name, sizeof(name), "field \"%s\"", field);
        what = name;
    }
    if (!ok)
        sheaf_set_err(errstr, errlen, "%s: expected string, got %s", what, type_name(o->type));
    else
        sheaf_set_err(errstr, errlen, "%s: invalid UTF-8 or NUL at byte %zu", what, bad);
    return SHEAF_ERR_INVALID;
}

/* Checks that every key of map o is a string and none repeats.  field
 * names the map in errors ("meta"), NULL for the message itself. */
static sheaf_err check_keys(const msgpack_object *o, const char *field, char *errstr,
                            size_t errlen)
{
    sheaf_err err = SHEAF_OK;
    uint32_t n = o->via.map.size;
    const span *dup = NULL;
    span *keys = NULL;
    char pk[64];
    if (n == 0) goto done;
    keys = malloc(n * sizeof(*keys));
    if (!keys) {
        err = SHEAF_ERR_NOMEM;
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) {
            if (field)
                sheaf_set_err(errstr, errlen, "field \"%s\": key %u is a %s, expected string", field,
                        (unsigned)i, type_name(k->type));
            else
                sheaf_set_err(errstr, errlen, "message: key %u is a %s, expected string", (unsigned)i,
                        type_name(k->type));
            err = SHEAF_ERR_INVALID;
            goto done;
        }
        keys[i].p = k->via.str.ptr;
        keys[i].n = k->via.str.size;
    }
    find_duplicate(keys, n, &dup);
    if (dup) {
        if (field)
            sheaf_set_err(errstr, errlen, "field \"%s\": duplicated key \"%s\"", field,
                    printable(dup->p, dup->n, pk));
        else
            sheaf_set_err(errstr, errlen, "field \"%s\": duplicated key", printable(dup->p, dup->n, pk));
        err = SHEAF_ERR_INVALID;
    }
done:
    free(keys);
    return err;
}

static sheaf_err get_meta(const msgpack_object *o, sheaf_chunk_msg *m, char *errstr,
                          size_t errlen)
{
    sheaf_err err;
    if (o->type != MSGPACK_OBJECT_MAP) {
        sheaf_set_err(errstr, errlen, "field \"meta\": expected map, got %s", type_name(o->type));
        return SHEAF_ERR_INVALID;
    }
    if (o->via.map.size > CODEC_MAX_META) {
        sheaf_set_err(errstr, errlen, "field \"meta\": %u entries (limit %d)",
                (unsigned)o->via.map.size, CODEC_MAX_META);
        return SHEAF_ERR_TOO_LARGE;
    }
    err = check_keys(o, "meta", errstr, errlen);
    if (err != SHEAF_OK || o->via.map.size == 0) return err;
    /* m owns the array from here, so a failure below leaves m clearable. */
    m->meta = calloc(o->via.map.size, sizeof(*m->meta));
    if (!m->meta) return SHEAF_ERR_NOMEM;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        char what[128], pk[64];
        snprintf(what, sizeof(what), "field \"meta\": key %u", (unsigned)i);
        err = get_str(&kv->key, NULL, what, &m->meta[i].key, NULL, errstr, errlen);
        if (err != SHEAF_OK) return err;
        m->meta_len = i + 1;
        snprintf(what, sizeof(what), "field \"meta\": value of \"%s\"",
                 printable(kv->key.via.str.ptr, kv->key.via.str.size, pk));
        err = get_str(&kv->val, NULL, what, &m->meta[i].value, NULL, errstr, errlen);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

/* Fills m from the top-level map o. */
static sheaf_err decode_map(const msgpack_object *o, sheaf_chunk_msg *m, char *errstr,
                            size_t errlen)
{
    const msgpack_object *found[F_COUNT] = {0};
    sheaf_err err;

    if (o->type != MSGPACK_OBJECT_MAP) {
        sheaf_set_err(errstr, errlen, "message: expected map, got %s", type_name(o->type));
        return SHEAF_ERR_INVALID;
    }
    err = check_keys(o, NULL, errstr, errlen);
    if (err != SHEAF_OK) return err;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_str *k = &o->via.map.ptr[i].key.via.str;
        for (int f = 0; f < F_COUNT; f++) {
            if (k->size == strlen(field_names[f]) &&
                memcmp(k->ptr, field_names[f], k->size) == 0)
                found[f] = &o->via.map.ptr[i].val;
        }
        /* Unknown keys are ignored: a later minor addition must not break
         * older workers. */
    }
    /* The version first: a newer message may differ in any other field. */
    if (!found[F_V]) {
        sheaf_set_err(errstr, errlen, "field \"v\": missing");
        return SHEAF_ERR_INVALID;
    }
    err = get_uint(found[F_V], F_V, &m->version, errstr, errlen);
    if (err != SHEAF_OK) return err;
    if (m->version != SHEAF_SCHEMA_VERSION) {
        sheaf_set_err(errstr, errlen, "field \"v\": unsupported schema version %u (this build reads %d)",
                (unsigned)m->version, SHEAF_SCHEMA_VERSION);
        return SHEAF_ERR_VERSION;
    }
    for (int f = 0; f < F_COUNT; f++) {
        if (!found[f] && f != F_META) {
            sheaf_set_err(errstr, errlen, "field \"%s\": missing", field_names[f]);
            return SHEAF_ERR_INVALID;
        }
    }
#define STR_FIELD(f, dst, lenp) \
    if (err == SHEAF_OK)        \
    err = get_str(found[f], field_names[f], NULL, (dst), (lenp), errstr, errlen)
    err = SHEAF_OK;
    STR_FIELD(F_JOB, &m->job, NULL);
    STR_FIELD(F_DOC, &m->doc, NULL);
    STR_FIELD(F_PV, &m->pv, NULL);
    STR_FIELD(F_TEXT, &m->text, &m->text_len);
#undef STR_FIELD
    if (err == SHEAF_OK) err = get_uint(found[F_IDX], F_IDX, &m->idx, errstr, errlen);
    if (err == SHEAF_OK) err = get_uint(found[F_N], F_N, &m->count, errstr, errlen);
    if (err == SHEAF_OK) err = get_uint(found[F_TOK], F_TOK, &m->tokens, errstr, errlen);
    if (err == SHEAF_OK) err = get_uint(found[F_PF], F_PF, &m->page_first, errstr, errlen);
    if (err == SHEAF_OK) err = get_uint(found[F_PL], F_PL, &m->page_last, errstr, errlen);
    if (err == SHEAF_OK && found[F_META]) err = get_meta(found[F_META], m, errstr, errlen);
    return err;
}

sheaf_err sheaf_chunk_decode(const void *data, size_t len, sheaf_chunk_msg *m, char *errstr,
                             size_t errlen)
{
    msgpack_unpacked up;
    size_t end = 0, off = 0;
    sheaf_err err;

    memset(m, 0, sizeof(*m));
    msgpack_unpacked_init(&up);
    if (!data || len == 0) {
        sheaf_set_err(errstr, errlen, "empty message");
        err = SHEAF_ERR_INVALID;
        goto done;
    }
    if (len > CODEC_MAX_BYTES) {
        sheaf_set_err(errstr, errlen, "message of %zu bytes exceeds the limit of %u", len,
                CODEC_MAX_BYTES);
        err = SHEAF_ERR_TOO_LARGE;
        goto done;
    }
    err = scan_value(data, len, &end, errstr, errlen);
    if (err != SHEAF_OK) goto done;
    /* A payload that does not start with a map (JSON or text from another
     * producer: '{' reads as the integer 123) is named as such, not as
     * "trailing bytes after the map" it never had. */
    unsigned char b0 = *(const unsigned char *)data;
    if (end != len && !((b0 & 0xF0) == 0x80 || b0 == 0xDE || b0 == 0xDF)) {
        sheaf_set_err(errstr, errlen, "message: expected map, got %s (first byte 0x%02x%s)",
                      b0 >= 0x20 && b0 < 0x7F ? "text" : "other msgpack", b0,
                      b0 == '{' || b0 == '[' ? ": JSON, not msgpack?" : "");
        err = SHEAF_ERR_INVALID;
        goto done;
    }
    if (end != len) {
        sheaf_set_err(errstr, errlen, "%zu trailing bytes after the map", len - end);
        err = SHEAF_ERR_INVALID;
        goto done;
    }
    switch (msgpack_unpack_next(&up, data, end, &off)) {
    case MSGPACK_UNPACK_SUCCESS:
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        err = SHEAF_ERR_NOMEM;
        sheaf_set_err(errstr, errlen, "msgpack: out of memory");
        goto done;
    default: /* the scan accepted it, so this would be a disagreement */
        err = SHEAF_ERR_INVALID;
        sheaf_set_err(errstr, errlen, "malformed msgpack");
        goto done;
    }
    err = decode_map(&up.data, m, errstr, errlen);
    if (err == SHEAF_OK) err = check_msg(m, 1, errstr, errlen);

done:
    msgpack_unpacked_destroy(&up);
    if (err != SHEAF_OK) sheaf_chunk_msg_clear(m);
    return err;
}

void sheaf_chunk_msg_clear(sheaf_chunk_msg *m)
{
    if (!m) return;
    free(m->job);
    free(m->doc);
    free(m->pv);
    free(m->text);
    if (m->meta) {
        for (size_t i = 0; i < m->meta_len; i++) {
            free(m->meta[i].key);
            free(m->meta[i].value);
        }
        free(m->meta);
    }
    memset(m, 0, sizeof(*m));
}

const char *sheaf_chunk_meta_get(const sheaf_chunk_msg *m, const char *key)
{
    if (!m || !m->meta || !key) return NULL;
    for (size_t i = 0; i < m->meta_len; i++)
        if (m->meta[i].key && strcmp(m->meta[i].key, key) == 0) return m->meta[i].value;
    return NULL;
}
