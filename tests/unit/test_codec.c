/* test_codec.c - unit tests of the chunk message codec (common/kafka/codec.c).
 *
 * Round trips, every malformed shape the decoder must refuse (each built
 * with msgpack-c so exactly one thing is wrong), hostile length headers and
 * nesting, and a fuzz pass: truncations of a valid message at every length,
 * random byte flips and random garbage must fail cleanly, never crash, and
 * leave the struct cleared. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "sheaf/codec.h"
#include "sheaf/util.h"

#define BUF_MAX (64u * 1024 * 1024)

static char s_job[] = "j-20260101-000000-abcdef";
static char s_doc[] = "docs/report é.txt";
static char s_pv[] = "3f2a9c";
static char s_text[] = "Hello, world. Ünïcödé text \xe2\x9c\x93 with \"quotes\"\nand lines.";
static char s_k1[] = "lang", s_v1[] = "en";
static char s_k2[] = "source", s_v2[] = "";

static void fill_valid(sheaf_chunk_msg *m, sheaf_kv meta[2])
{
    memset(m, 0, sizeof(*m));
    m->version = SHEAF_SCHEMA_VERSION;
    m->job = s_job;
    m->doc = s_doc;
    m->pv = s_pv;
    m->idx = 2;
    m->count = 5;
    m->text = s_text;
    m->text_len = strlen(s_text);
    m->tokens = 17;
    m->page_first = 3;
    m->page_last = 4;
    meta[0].key = s_k1;
    meta[0].value = s_v1;
    meta[1].key = s_k2;
    meta[1].value = s_v2;
    m->meta = meta;
    m->meta_len = 2;
}

static void encode_valid(sheaf_buf *out)
{
    sheaf_chunk_msg m;
    sheaf_kv meta[2];
    char err[SHEAF_ERRSTR_SIZE] = "";
    fill_valid(&m, meta);
    sheaf_buf_init(out, BUF_MAX);
    assert_int_equal(sheaf_chunk_encode(&m, out, err, sizeof(err)), SHEAF_OK);
}

/* Decodes data and expects failure with code want and errstr containing
 * needle (when not NULL); the struct must be left cleared. */
static void expect_fail(const void *data, size_t len, sheaf_err want, const char *needle)
{
    sheaf_chunk_msg m;
    char err[SHEAF_ERRSTR_SIZE] = "";
    memset(&m, 0xAB, sizeof(m)); /* decode must overwrite, not read, m */
    sheaf_err got = sheaf_chunk_decode(data, len, &m, err, sizeof(err));
    if (got != want || (needle && !strstr(err, needle)))
        fail_msg("decode: got %d \"%s\", want %d containing \"%s\"", got, err, want,
                 needle ? needle : "");
    assert_null(m.job);
    assert_null(m.text);
    assert_null(m.meta);
    assert_int_equal(m.meta_len, 0);
    sheaf_chunk_msg_clear(&m);
}

/* ---- building messages with exactly one defect ---- */

static const char *const std_keys[] = {"v",    "job", "doc", "pv", "idx", "n",
                                       "text", "tok", "pf",  "pl", "meta"};
#define N_STD 11

typedef void (*val_fn)(msgpack_packer *pk);

static void pack_s(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void pack_std(msgpack_packer *pk, const char *key)
{
    if (!strcmp(key, "v")) msgpack_pack_uint32(pk, 1);
    else if (!strcmp(key, "job")) pack_s(pk, "job-1");
    else if (!strcmp(key, "doc")) pack_s(pk, "doc-1");
    else if (!strcmp(key, "pv")) pack_s(pk, "pv1");
    else if (!strcmp(key, "idx")) msgpack_pack_uint32(pk, 0);
    else if (!strcmp(key, "n")) msgpack_pack_uint32(pk, 1);
    else if (!strcmp(key, "text")) pack_s(pk, "some text");
    else if (!strcmp(key, "tok")) msgpack_pack_uint32(pk, 3);
    else if (!strcmp(key, "pf")) msgpack_pack_uint32(pk, 0);
    else if (!strcmp(key, "pl")) msgpack_pack_uint32(pk, 0);
    else if (!strcmp(key, "meta")) {
        msgpack_pack_map(pk, 1);
        pack_s(pk, "a");
        pack_s(pk, "b");
    }
}

/* A message with the standard fields, except: target's value is written
 * by fn (or the key is left out when fn is NULL), and when extra_key is
 * given one more entry extra_key -> "x" is appended. */
static void build(msgpack_sbuffer *sb, const char *target, val_fn fn, const char *extra_key)
{
    msgpack_packer pk;
    size_t n = N_STD;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (target && !fn) n--;
    if (extra_key) n++;
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < N_STD; i++) {
        if (target && !strcmp(target, std_keys[i])) {
            if (!fn) continue;
            pack_s(&pk, std_keys[i]);
            fn(&pk);
        } else {
            pack_s(&pk, std_keys[i]);
            pack_std(&pk, std_keys[i]);
        }
    }
    if (extra_key) {
        pack_s(&pk, extra_key);
        pack_s(&pk, "x");
    }
}

static void expect_built_fail(const char *target, val_fn fn, const char *extra_key,
                              sheaf_err want, const char *needle)
{
    msgpack_sbuffer sb;
    build(&sb, target, fn, extra_key);
    expect_fail(sb.data, sb.size, want, needle);
    msgpack_sbuffer_destroy(&sb);
}

static void v_str(msgpack_packer *pk) { pack_s(pk, "1"); }
static void v_uint0(msgpack_packer *pk) { msgpack_pack_uint32(pk, 0); }
static void v_uint1(msgpack_packer *pk) { msgpack_pack_uint32(pk, 1); }
static void v_uint2(msgpack_packer *pk) { msgpack_pack_uint32(pk, 2); }
static void v_uint7(msgpack_packer *pk) { msgpack_pack_uint32(pk, 7); }
static void v_neg(msgpack_packer *pk) { msgpack_pack_int32(pk, -1); }
static void v_float(msgpack_packer *pk) { msgpack_pack_double(pk, 1.0); }
static void v_big(msgpack_packer *pk) { msgpack_pack_uint64(pk, 4294967296ULL); }
static void v_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void v_true(msgpack_packer *pk) { msgpack_pack_true(pk); }
static void v_bin(msgpack_packer *pk)
{
    msgpack_pack_bin(pk, 3);
    msgpack_pack_bin_body(pk, "abc", 3);
}
static void v_array(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    pack_s(pk, "a");
}
static void v_bad_utf8(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "ab\xff" "cd", 5); }
static void v_overlong(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "\xc0\xaf", 2); }
static void v_nul(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "ab\0cd", 5); }
static void v_empty(msgpack_packer *pk) { pack_s(pk, ""); }
static void v_bad_job(msgpack_packer *pk) { pack_s(pk, "job with space"); }
static void v_meta_int_value(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pack_s(pk, "k");
    msgpack_pack_uint32(pk, 5);
}
static void v_meta_int_key(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_uint32(pk, 5);
    pack_s(pk, "v");
}
static void v_meta_dup(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    pack_s(pk, "k");
    pack_s(pk, "1");
    pack_s(pk, "other");
    pack_s(pk, "2");
    pack_s(pk, "k");
    pack_s(pk, "3");
}
static void v_meta_bad_utf8(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pack_s(pk, "k");
    msgpack_pack_str_with_body(pk, "\xed\xa0\x80", 3); /* a surrogate */
}
static void v_meta_nested(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pack_s(pk, "k");
    msgpack_pack_map(pk, 0);
}

/* ---- tests ---- */

static void test_round_trip(void **state)
{
    (void)state;
    sheaf_chunk_msg in, out;
    sheaf_kv meta[2];
    sheaf_buf buf;
    char err[SHEAF_ERRSTR_SIZE] = "";

    fill_valid(&in, meta);
    sheaf_buf_init(&buf, BUF_MAX);
    assert_int_equal(sheaf_chunk_encode(&in, &buf, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_chunk_decode(buf.data, buf.len, &out, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(out.version, 1);
    assert_string_equal(out.job, s_job);
    assert_string_equal(out.doc, s_doc);
    assert_string_equal(out.pv, s_pv);
    assert_int_equal(out.idx, 2);
    assert_int_equal(out.count, 5);
    assert_int_equal(out.text_len, strlen(s_text));
    assert_memory_equal(out.text, s_text, out.text_len);
    assert_int_equal(out.text[out.text_len], '\0');
    assert_int_equal(out.tokens, 17);
    assert_int_equal(out.page_first, 3);
    assert_int_equal(out.page_last, 4);
    assert_int_equal(out.meta_len, 2);
    assert_string_equal(out.meta[0].key, "lang");
    assert_string_equal(out.meta[0].value, "en");
    assert_string_equal(out.meta[1].key, "source");
    assert_string_equal(out.meta[1].value, "");
    assert_string_equal(sheaf_chunk_meta_get(&out, "lang"), "en");
    assert_string_equal(sheaf_chunk_meta_get(&out, "source"), "");
    assert_null(sheaf_chunk_meta_get(&out, "missing"));
    assert_null(sheaf_chunk_meta_get(&out, NULL));
    assert_null(sheaf_chunk_meta_get(NULL, "lang"));

    /* Encoding the decoded struct gives the same bytes. */
    sheaf_buf again;
    sheaf_buf_init(&again, BUF_MAX);
    assert_int_equal(sheaf_chunk_encode(&out, &again, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(again.len, buf.len);
    assert_memory_equal(again.data, buf.data, buf.len);

    sheaf_chunk_msg_clear(&out);
    sheaf_chunk_msg_clear(&out); /* idempotent */
    sheaf_buf_free(&buf);
    sheaf_buf_free(&again);
}

static void test_key_order_and_empty_meta(void **state)
{
    (void)state;
    sheaf_chunk_msg in, out;
    sheaf_kv meta[2];
    sheaf_buf buf;
    char err[SHEAF_ERRSTR_SIZE] = "";
    msgpack_unpacked up;
    size_t off = 0;

    fill_valid(&in, meta);
    in.meta = NULL;
    in.meta_len = 0;
    in.page_first = in.page_last = 0;
    in.text = NULL; /* NULL with length 0 is an empty text */
    in.text_len = 0;
    in.version = 0; /* 0 means the current version */
    sheaf_buf_init(&buf, BUF_MAX);
    assert_int_equal(sheaf_chunk_encode(&in, &buf, err, sizeof(err)), SHEAF_OK);

    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, buf.data, buf.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(up.data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(up.data.via.map.size, N_STD);
    for (size_t i = 0; i < N_STD; i++) {
        const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
        assert_int_equal(kv->key.type, MSGPACK_OBJECT_STR);
        assert_int_equal(kv->key.via.str.size, strlen(std_keys[i]));
        assert_memory_equal(kv->key.via.str.ptr, std_keys[i], kv->key.via.str.size);
        if (i == N_STD - 1) {
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_MAP); /* meta always written */
            assert_int_equal(kv->val.via.map.size, 0);
        } else if (i != 1 && i != 2 && i != 3 && i != 6) {
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        }
    }
    msgpack_unpacked_destroy(&up);

    assert_int_equal(sheaf_chunk_decode(buf.data, buf.len, &out, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(out.version, 1);
    assert_non_null(out.text);
    assert_string_equal(out.text, "");
    assert_int_equal(out.meta_len, 0);
    assert_null(sheaf_chunk_meta_get(&out, "lang"));
    sheaf_chunk_msg_clear(&out);
    sheaf_buf_free(&buf);
}

static void test_meta_optional_and_unknown_keys(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    sheaf_chunk_msg m;
    char err[SHEAF_ERRSTR_SIZE] = "";

    build(&sb, "meta", NULL, NULL);
    assert_int_equal(sheaf_chunk_decode(sb.data, sb.size, &m, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(m.meta_len, 0);
    sheaf_chunk_msg_clear(&m);
    msgpack_sbuffer_destroy(&sb);

    build(&sb, NULL, NULL, "future_field");
    assert_int_equal(sheaf_chunk_decode(sb.data, sb.size, &m, err, sizeof(err)), SHEAF_OK);
    assert_string_equal(m.job, "job-1");
    assert_string_equal(sheaf_chunk_meta_get(&m, "a"), "b");
    sheaf_chunk_msg_clear(&m);
    msgpack_sbuffer_destroy(&sb);
}

static void test_encode_appends_and_restores(void **state)
{
    (void)state;
    sheaf_chunk_msg m;
    sheaf_kv meta[2];
    sheaf_buf buf, alone;
    char err[SHEAF_ERRSTR_SIZE] = "";

    fill_valid(&m, meta);
    encode_valid(&alone);
    sheaf_buf_init(&buf, BUF_MAX);
    assert_int_equal(sheaf_buf_appends(&buf, "prefix"), SHEAF_OK);
    assert_int_equal(sheaf_chunk_encode(&m, &buf, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(buf.len, 6 + alone.len);
    assert_memory_equal(buf.data, "prefix", 6);
    assert_memory_equal(buf.data + 6, alone.data, alone.len);

    /* A buffer cap too small: TOO_LARGE and the buffer as it was. */
    sheaf_buf small;
    sheaf_buf_init(&small, 40);
    assert_int_equal(sheaf_buf_appends(&small, "keep"), SHEAF_OK);
    assert_int_equal(sheaf_chunk_encode(&m, &small, err, sizeof(err)), SHEAF_ERR_TOO_LARGE);
    assert_int_equal(small.len, 4);
    assert_string_equal(small.data, "keep");

    sheaf_buf_free(&buf);
    sheaf_buf_free(&alone);
    sheaf_buf_free(&small);
}

/* Encoding refuses what decoding would refuse. */
static void expect_encode_fail(const sheaf_chunk_msg *m, sheaf_err want, const char *needle)
{
    sheaf_buf buf;
    char err[SHEAF_ERRSTR_SIZE] = "";
    sheaf_buf_init(&buf, BUF_MAX);
    sheaf_err got = sheaf_chunk_encode(m, &buf, err, sizeof(err));
    if (got != want || !strstr(err, needle))
        fail_msg("encode: got %d \"%s\", want %d containing \"%s\"", got, err, want, needle);
    assert_int_equal(buf.len, 0);
    sheaf_buf_free(&buf);
}

static void test_encode_refuses_invalid(void **state)
{
    (void)state;
    sheaf_chunk_msg m;
    sheaf_kv meta[2];
    char bad[] = "bad\xff";
    char nul_text[] = "a\0b";
    char spaced[] = "has space";
    char empty[] = "";

    fill_valid(&m, meta);
    m.idx = 5;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"idx\"");
    fill_valid(&m, meta);
    m.count = 0;
    m.idx = 0;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"n\"");
    fill_valid(&m, meta);
    m.version = 2;
    expect_encode_fail(&m, SHEAF_ERR_VERSION, "\"v\"");
    fill_valid(&m, meta);
    m.job = NULL;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"job\"");
    fill_valid(&m, meta);
    m.job = spaced;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"job\"");
    fill_valid(&m, meta);
    m.doc = empty;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"doc\"");
    fill_valid(&m, meta);
    m.pv = NULL;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"pv\"");
    fill_valid(&m, meta);
    m.text = bad;
    m.text_len = 4;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"text\"");
    fill_valid(&m, meta);
    m.text = nul_text;
    m.text_len = 3;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"text\"");
    fill_valid(&m, meta);
    m.page_first = 5;
    m.page_last = 4;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"pl\"");
    fill_valid(&m, meta);
    m.page_first = 0;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"pl\"");
    fill_valid(&m, meta);
    meta[1].key = s_k1;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "duplicated key \"lang\"");
    fill_valid(&m, meta);
    meta[1].value = NULL;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"meta\"");
    fill_valid(&m, meta);
    meta[0].value = bad;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"meta\"");
    fill_valid(&m, meta);
    m.meta = NULL;
    expect_encode_fail(&m, SHEAF_ERR_INVALID, "\"meta\"");
}

static void test_decode_not_a_map(void **state)
{
    (void)state;
    static const unsigned char arr[] = {0x91, 0x01};
    static const unsigned char num[] = {0x05};
    static const unsigned char str[] = {0xa2, 'h', 'i'};
    static const unsigned char nil[] = {0xc0};
    expect_fail(arr, sizeof(arr), SHEAF_ERR_INVALID, "expected map");
    expect_fail(num, sizeof(num), SHEAF_ERR_INVALID, "expected map");
    expect_fail(str, sizeof(str), SHEAF_ERR_INVALID, "expected map");
    expect_fail(nil, sizeof(nil), SHEAF_ERR_INVALID, "expected map");
    /* JSON or text from another producer: named, not "trailing bytes". */
    expect_fail("{\"v\":1,\"job\":\"j\"}", 17, SHEAF_ERR_INVALID, "JSON, not msgpack");
    expect_fail("plain text", 10, SHEAF_ERR_INVALID, "expected map, got text");
    expect_fail("", 0, SHEAF_ERR_INVALID, "empty");
    expect_fail(NULL, 0, SHEAF_ERR_INVALID, "empty");
    expect_fail(NULL, 10, SHEAF_ERR_INVALID, "empty");
}

static void test_decode_missing_fields(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_STD - 1; i++) {
        char needle[32];
        snprintf(needle, sizeof(needle), "field \"%s\": missing", std_keys[i]);
        expect_built_fail(std_keys[i], NULL, NULL, SHEAF_ERR_INVALID, needle);
    }
}

static void test_decode_wrong_types(void **state)
{
    (void)state;
    static const char *const uint_fields[] = {"v", "idx", "n", "tok", "pf", "pl"};
    static const char *const str_fields[] = {"job", "doc", "pv", "text"};
    char needle[64];
    for (size_t i = 0; i < 6; i++) {
        snprintf(needle, sizeof(needle), "field \"%s\": expected unsigned integer",
                 uint_fields[i]);
        expect_built_fail(uint_fields[i], v_str, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(uint_fields[i], v_neg, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(uint_fields[i], v_float, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(uint_fields[i], v_nil, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(uint_fields[i], v_true, NULL, SHEAF_ERR_INVALID, needle);
        snprintf(needle, sizeof(needle), "field \"%s\"", uint_fields[i]);
        expect_built_fail(uint_fields[i], v_big, NULL, SHEAF_ERR_INVALID, needle);
    }
    for (size_t i = 0; i < 4; i++) {
        snprintf(needle, sizeof(needle), "field \"%s\": expected string", str_fields[i]);
        expect_built_fail(str_fields[i], v_uint1, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(str_fields[i], v_bin, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(str_fields[i], v_array, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(str_fields[i], v_nil, NULL, SHEAF_ERR_INVALID, needle);
    }
    expect_built_fail("meta", v_array, NULL, SHEAF_ERR_INVALID, "field \"meta\": expected map");
    expect_built_fail("meta", v_str, NULL, SHEAF_ERR_INVALID, "field \"meta\": expected map");
    expect_built_fail("meta", v_meta_int_value, NULL, SHEAF_ERR_INVALID,
                      "field \"meta\": value of \"k\": expected string");
    expect_built_fail("meta", v_meta_nested, NULL, SHEAF_ERR_INVALID,
                      "field \"meta\": value of \"k\": expected string");
    expect_built_fail("meta", v_meta_int_key, NULL, SHEAF_ERR_INVALID,
                      "field \"meta\": key 0");
}

static void test_decode_version(void **state)
{
    (void)state;
    expect_built_fail("v", v_uint2, NULL, SHEAF_ERR_VERSION, "field \"v\"");
    expect_built_fail("v", v_uint0, NULL, SHEAF_ERR_VERSION, "field \"v\"");
    expect_built_fail("v", v_str, NULL, SHEAF_ERR_INVALID, "field \"v\"");

    /* A newer version with a different shape still says "version". */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    pack_s(&pk, "v");
    msgpack_pack_uint32(&pk, 2);
    pack_s(&pk, "payload");
    pack_s(&pk, "x");
    expect_fail(sb.data, sb.size, SHEAF_ERR_VERSION, "version 2");
    msgpack_sbuffer_destroy(&sb);
}

static void test_decode_bad_values(void **state)
{
    (void)state;
    expect_built_fail("idx", v_uint1, NULL, SHEAF_ERR_INVALID, "field \"idx\""); /* idx == n */
    expect_built_fail("idx", v_uint7, NULL, SHEAF_ERR_INVALID, "field \"idx\"");
    expect_built_fail("n", v_uint0, NULL, SHEAF_ERR_INVALID, "field \"n\"");
    expect_built_fail("pl", v_uint2, NULL, SHEAF_ERR_INVALID, "field \"pl\""); /* pf 0, pl 2 */
    expect_built_fail("job", v_empty, NULL, SHEAF_ERR_INVALID, "field \"job\"");
    expect_built_fail("job", v_bad_job, NULL, SHEAF_ERR_INVALID, "field \"job\"");
    expect_built_fail("doc", v_empty, NULL, SHEAF_ERR_INVALID, "field \"doc\"");
    expect_built_fail("pv", v_empty, NULL, SHEAF_ERR_INVALID, "field \"pv\"");
}

/* sheaf_utf8_valid reads ASCII eight bytes at a time: the same verdict and
 * the same first bad offset as a walk one sequence at a time, for a bad
 * byte or a NUL at every offset of blocks of every alignment. */
static int utf8_ref(const unsigned char *p, size_t len, size_t *bad)
{
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        size_t n = c == 0 ? 0 : c < 0x80 ? 1 : 0;
        if (c >= 0xC2 && c <= 0xDF && i + 1 < len && (p[i + 1] & 0xC0) == 0x80) n = 2;
        if (c == 0xE2 && i + 2 < len && p[i + 1] == 0x82 && p[i + 2] == 0xAC) n = 3; /* euro */
        if (n == 0) {
            *bad = i;
            return 0;
        }
        i += n;
    }
    return 1;
}

static void test_utf8_valid_fast_path(void **state)
{
    (void)state;
    static const char *const inserts[] = {"\xff", "", "\xc3\xa9", "\xe2\x82\xac", "\xc3", "\x80"};
    unsigned char buf[64];
    for (size_t len = 0; len <= 40; len++)
        for (size_t at = 0; at < len; at++)
            for (size_t k = 0; k < sizeof(inserts) / sizeof(*inserts); k++) {
                memset(buf, 'a', sizeof(buf));
                size_t n = strlen(inserts[k]);
                if (n == 0) buf[at] = 0; /* a NUL */
                else if (at + n <= len) memcpy(buf + at, inserts[k], n);
                size_t bad_ref = SIZE_MAX, bad = SIZE_MAX;
                int ok_ref = utf8_ref(buf, len, &bad_ref);
                int ok = sheaf_utf8_valid((const char *)buf, len, &bad);
                if (ok != ok_ref || (!ok && bad != bad_ref))
                    fail_msg("len %zu insert %zu at %zu: %d/%zu, expected %d/%zu", len, k, at, ok,
                             bad, ok_ref, bad_ref);
            }
}

static void test_decode_invalid_utf8(void **state)
{
    (void)state;
    static const char *const fields[] = {"job", "doc", "pv", "text"};
    for (size_t i = 0; i < 4; i++) {
        char needle[64];
        snprintf(needle, sizeof(needle), "field \"%s\": invalid UTF-8", fields[i]);
        expect_built_fail(fields[i], v_bad_utf8, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(fields[i], v_overlong, NULL, SHEAF_ERR_INVALID, needle);
        expect_built_fail(fields[i], v_nul, NULL, SHEAF_ERR_INVALID, needle);
    }
    expect_built_fail("meta", v_meta_bad_utf8, NULL, SHEAF_ERR_INVALID,
                      "field \"meta\": value of \"k\": invalid UTF-8");
}

static void test_decode_duplicates(void **state)
{
    (void)state;
    expect_built_fail(NULL, NULL, "idx", SHEAF_ERR_INVALID, "field \"idx\": duplicated key");
    expect_built_fail(NULL, NULL, "text", SHEAF_ERR_INVALID, "field \"text\": duplicated key");
    expect_built_fail("meta", v_meta_dup, NULL, SHEAF_ERR_INVALID,
                      "field \"meta\": duplicated key \"k\"");

    /* An unknown key twice is a duplicate too. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    build(&sb, NULL, NULL, "zz");
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    /* Rewrite the map header: fixmap of 13 entries, then append "zz" again. */
    ((unsigned char *)sb.data)[0] = 0x80 | 13;
    pack_s(&pk, "zz");
    pack_s(&pk, "y");
    expect_fail(sb.data, sb.size, SHEAF_ERR_INVALID, "duplicated key");
    msgpack_sbuffer_destroy(&sb);

    /* A non-string top-level key. */
    build(&sb, NULL, NULL, NULL);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    ((unsigned char *)sb.data)[0] = 0x80 | 12;
    msgpack_pack_uint32(&pk, 9);
    pack_s(&pk, "y");
    expect_fail(sb.data, sb.size, SHEAF_ERR_INVALID, "key 11");
    msgpack_sbuffer_destroy(&sb);
}

static void test_decode_trailing_bytes(void **state)
{
    (void)state;
    sheaf_buf buf;
    encode_valid(&buf);
    assert_int_equal(sheaf_buf_append(&buf, "\xc0", 1), SHEAF_OK);
    expect_fail(buf.data, buf.len, SHEAF_ERR_INVALID, "trailing");
    assert_int_equal(sheaf_buf_append(&buf, "\x81\xa1x\x01", 4), SHEAF_OK);
    expect_fail(buf.data, buf.len, SHEAF_ERR_INVALID, "trailing");
    sheaf_buf_free(&buf);
}

static void test_decode_hostile_headers(void **state)
{
    (void)state;
    /* Containers and strings claiming far more than the message holds:
     * refused before msgpack-c allocates for them. */
    static const unsigned char big_array[] = {0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff};
    static const unsigned char big_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v'};
    static const unsigned char big_str[] = {0x81, 0xa1, 'x', 0xdb, 0x7f, 0xff, 0xff, 0xff, 'a'};
    static const unsigned char big_ext[] = {0x81, 0xa1, 'x', 0xc9, 0xff, 0xff, 0xff, 0xff, 1};
    static const unsigned char never_used[] = {0x81, 0xa1, 'x', 0xc1};
    expect_fail(big_array, sizeof(big_array), SHEAF_ERR_INVALID, "malformed");
    expect_fail(big_map, sizeof(big_map), SHEAF_ERR_INVALID, "malformed");
    expect_fail(big_str, sizeof(big_str), SHEAF_ERR_INVALID, "malformed");
    expect_fail(big_ext, sizeof(big_ext), SHEAF_ERR_INVALID, "malformed");
    expect_fail(never_used, sizeof(never_used), SHEAF_ERR_INVALID, "0xc1");

    /* Deep nesting: refused as malformed, never as out of memory. */
    unsigned char deep[200];
    memset(deep, 0x91, sizeof(deep) - 1);
    deep[sizeof(deep) - 1] = 0xc0;
    expect_fail(deep, sizeof(deep), SHEAF_ERR_INVALID, "nested");
    deep[0] = 0x81;
    deep[1] = 0xa1;
    deep[2] = 'x';
    expect_fail(deep, sizeof(deep), SHEAF_ERR_INVALID, "nested");

    /* Many tiny objects: a map with 40000 unknown keys. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 40000);
    for (unsigned i = 0; i < 40000; i++) {
        msgpack_pack_uint32(&pk, i); /* also a non-string key, but the scan refuses first */
        msgpack_pack_nil(&pk);
    }
    expect_fail(sb.data, sb.size, SHEAF_ERR_TOO_LARGE, "objects");
    msgpack_sbuffer_destroy(&sb);

    /* Longer than the message limit. */
    size_t huge = 17u * 1024 * 1024;
    char *p = calloc(1, huge);
    assert_non_null(p);
    expect_fail(p, huge, SHEAF_ERR_TOO_LARGE, "limit");
    free(p);
}

static void test_decode_large_text(void **state)
{
    (void)state;
    /* A 4 MB chunk (chunk.max_tokens at its maximum) passes both ways. */
    size_t n = 4u * 1024 * 1024;
    char *text = malloc(n + 1);
    assert_non_null(text);
    for (size_t i = 0; i < n; i++) text[i] = (char)('a' + i % 26);
    text[n] = '\0';
    sheaf_chunk_msg m, out;
    sheaf_kv meta[2];
    sheaf_buf buf;
    char err[SHEAF_ERRSTR_SIZE] = "";
    fill_valid(&m, meta);
    m.text = text;
    m.text_len = n;
    sheaf_buf_init(&buf, BUF_MAX);
    assert_int_equal(sheaf_chunk_encode(&m, &buf, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(sheaf_chunk_decode(buf.data, buf.len, &out, err, sizeof(err)), SHEAF_OK);
    assert_int_equal(out.text_len, n);
    assert_memory_equal(out.text, text, n);
    sheaf_chunk_msg_clear(&out);
    sheaf_buf_free(&buf);
    free(text);
}

/* Decodes anything; on failure the struct must be cleared. */
static sheaf_err decode_any(const void *data, size_t len, int errbuf)
{
    sheaf_chunk_msg m;
    char err[SHEAF_ERRSTR_SIZE];
    sheaf_err rc = errbuf ? sheaf_chunk_decode(data, len, &m, err, sizeof(err))
                          : sheaf_chunk_decode(data, len, &m, NULL, 0);
    if (rc != SHEAF_OK) {
        assert_null(m.job);
        assert_null(m.doc);
        assert_null(m.pv);
        assert_null(m.text);
        assert_null(m.meta);
        assert_int_equal(m.meta_len, 0);
        if (errbuf) assert_true(strlen(err) > 0);
    }
    sheaf_chunk_msg_clear(&m);
    return rc;
}

static void test_truncations(void **state)
{
    (void)state;
    sheaf_buf buf;
    encode_valid(&buf);
    for (size_t len = 0; len < buf.len; len++) {
        /* A copy of exactly len bytes, so a read past the end is caught by ASan. */
        char *p = malloc(len ? len : 1);
        assert_non_null(p);
        memcpy(p, buf.data, len);
        assert_int_not_equal(decode_any(p, len, 1), SHEAF_OK);
        assert_int_not_equal(decode_any(p, len, 0), SHEAF_OK);
        free(p);
    }
    assert_int_equal(decode_any(buf.data, buf.len, 1), SHEAF_OK);
    sheaf_buf_free(&buf);
}

static void test_mutations_and_garbage(void **state)
{
    (void)state;
    sheaf_buf buf;
    unsigned seed = 12345;
    encode_valid(&buf);
    char *p = malloc(buf.len);
    assert_non_null(p);
    /* Every byte set to a few interesting values, then random multi-byte flips. */
    static const unsigned char probes[] = {0x00, 0x7f, 0x80, 0x9f, 0xc0, 0xc1, 0xcc, 0xd9,
                                           0xdb, 0xdd, 0xdf, 0xff};
    for (size_t i = 0; i < buf.len; i++) {
        for (size_t j = 0; j < sizeof(probes); j++) {
            memcpy(p, buf.data, buf.len);
            p[i] = (char)probes[j];
            (void)decode_any(p, buf.len, 1);
        }
    }
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(p, buf.data, buf.len);
        int flips = 1 + rand_r(&seed) % 4;
        for (int f = 0; f < flips; f++) p[rand_r(&seed) % buf.len] = (char)rand_r(&seed);
        size_t len = rand_r(&seed) % 8 ? buf.len : (size_t)rand_r(&seed) % buf.len;
        (void)decode_any(p, len, iter % 2);
    }
    free(p);
    sheaf_buf_free(&buf);

    unsigned char g[256];
    for (int iter = 0; iter < 50000; iter++) {
        size_t len = (size_t)rand_r(&seed) % sizeof(g);
        for (size_t i = 0; i < len; i++) g[i] = (unsigned char)rand_r(&seed);
        if (iter % 3 == 0 && len > 0) g[0] = (unsigned char)(0x80 | (rand_r(&seed) % 16));
        unsigned char *copy = malloc(len ? len : 1);
        assert_non_null(copy);
        memcpy(copy, g, len);
        assert_int_not_equal(decode_any(copy, len, 1), SHEAF_OK);
        free(copy);
    }
}

static void test_clear_zeroed_and_partial(void **state)
{
    (void)state;
    sheaf_chunk_msg m;
    memset(&m, 0, sizeof(m));
    sheaf_chunk_msg_clear(&m);
    sheaf_chunk_msg_clear(NULL);

    /* A partially filled struct: meta with the last value missing. */
    m.job = strdup("j");
    m.meta = calloc(2, sizeof(*m.meta));
    assert_non_null(m.meta);
    m.meta[0].key = strdup("k");
    m.meta[0].value = strdup("v");
    m.meta[1].key = strdup("k2");
    m.meta_len = 2;
    sheaf_chunk_msg_clear(&m);
    assert_null(m.job);
    assert_null(m.meta);
    assert_int_equal(m.meta_len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_key_order_and_empty_meta),
        cmocka_unit_test(test_meta_optional_and_unknown_keys),
        cmocka_unit_test(test_encode_appends_and_restores),
        cmocka_unit_test(test_encode_refuses_invalid),
        cmocka_unit_test(test_decode_not_a_map),
        cmocka_unit_test(test_decode_missing_fields),
        cmocka_unit_test(test_decode_wrong_types),
        cmocka_unit_test(test_decode_version),
        cmocka_unit_test(test_decode_bad_values),
        cmocka_unit_test(test_decode_invalid_utf8),
        cmocka_unit_test(test_utf8_valid_fast_path),
        cmocka_unit_test(test_decode_duplicates),
        cmocka_unit_test(test_decode_trailing_bytes),
        cmocka_unit_test(test_decode_hostile_headers),
        cmocka_unit_test(test_decode_large_text),
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_mutations_and_garbage),
        cmocka_unit_test(test_clear_zeroed_and_partial),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
