/* test_sha.c - sheaf_sha256 and sheaf_sha1 (common/core/sha.c): the
 * FIPS 180 example vectors, every padding boundary against OpenSSL, and the
 * hex form used for pipeline versions, cache keys and script names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/sha.h>

#include "sheaf/util.h"

static void test_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *sha256, *sha1;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
         "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
         "a9993e364706816aba3e25717850c26c9cd0d89d"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
         "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
    };
    char hex[65];
    unsigned char md[32];
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        sheaf_sha256_hex(v[i].in, strlen(v[i].in), hex);
        assert_string_equal(hex, v[i].sha256);
        sheaf_sha1(v[i].in, strlen(v[i].in), md);
        sheaf_hex(md, 20, hex);
        assert_string_equal(hex, v[i].sha1);
    }
    /* One million 'a' (FIPS 180-2, appendix B.3 / A.3). */
    char *a = malloc(1000000);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    sheaf_sha256_hex(a, 1000000, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    sheaf_sha1(a, 1000000, md);
    sheaf_hex(md, 20, hex);
    assert_string_equal(hex, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    free(a);
}

/* Every length from 0 to 300 bytes (each padding case: < 56 bytes left in
 * the last block, 56..63, whole blocks) agrees with OpenSSL. */
static void test_against_openssl(void **state)
{
    (void)state;
    unsigned char buf[300], ours[32], theirs[32];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(buf); i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)(x >> 16);
    }
    for (size_t len = 0; len <= sizeof(buf); len++) {
        sheaf_sha256(buf, len, ours);
        SHA256(buf, len, theirs);
        assert_memory_equal(ours, theirs, 32);
        sheaf_sha1(buf, len, ours);
        SHA1(buf, len, theirs);
        assert_memory_equal(ours, theirs, 20);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_against_openssl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
