/* fuzz_common.h - what every fuzz target shares.
 *
 * Each fuzz_<name>.c defines LLVMFuzzerTestOneInput (and maybe
 * LLVMFuzzerInitialize).  It is linked either with libFuzzer (-DSHEAF_FUZZ=ON,
 * clang) or with replay_main.c, a plain main() that feeds it files, so the
 * corpus and the regression inputs run in every build.  Targets therefore
 * check with FUZZ_CHECK, never assert(): NDEBUG builds drop asserts, and a
 * broken invariant must crash in every build so libFuzzer records the input. */
#ifndef SHEAF_FUZZ_COMMON_H
#define SHEAF_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, what)                                                        \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: fuzz invariant broken: %s (%s)\n", __FILE__,       \
                    __LINE__, (what), #cond);                                         \
            abort();                                                                  \
        }                                                                             \
    } while (0)

/* A malloc'd, NUL-terminated copy of p[0..n) (exactly n + 1 bytes, so ASan
 * sees any read past the end). */
static inline char *fuzz_strndup(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) abort();
    if (n) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* Splits data at its first NUL byte into two NUL-terminated copies: the
 * part before it and the part after it ("" when there is no NUL).  JSON
 * and templates cannot hold a raw NUL, so corpus files stay readable:
 * "<first>\0<second>".  Free both. */
static inline void fuzz_split(const uint8_t *data, size_t size, char **a, size_t *alen, char **b,
                              size_t *blen)
{
    const uint8_t *nul = size ? memchr(data, '\0', size) : NULL;
    size_t n = nul ? (size_t)(nul - data) : size;
    *alen = n;
    *a = fuzz_strndup(data, n);
    *blen = nul ? size - n - 1 : 0;
    *b = fuzz_strndup(nul ? nul + 1 : data, *blen);
}

#endif
