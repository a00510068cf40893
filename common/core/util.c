/* util.c - time, hashing, UTF-8 and identifier helpers.  See sheaf/util.h. */
#include "sheaf/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t sheaf_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sheaf_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sheaf_sleep_ms(int64_t ms)
{
    if (ms <= 0) return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

void sheaf_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    sheaf_sha256(data, len, md);
    sheaf_hex(md, sizeof(md), out);
}

/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) { n = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; cp = c & 0x07; }
    else return 0;
    if (avail < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

int sheaf_utf8_valid(const char *s, size_t len, size_t *bad_offset)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* Most text is ASCII: eight bytes at a time while none has its high
         * bit set and none is NUL. */
        if (len - i >= 8) {
            const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
            uint64_t v;
            memcpy(&v, p + i, 8);
            if (!(v & highs) && !((v - ones) & ~v & highs)) {
                i += 8;
                continue;
            }
        }
        size_t n = p[i] == 0 ? 0 : utf8_seq_len(p + i, len - i);
        if (n == 0) {
            if (bad_offset) *bad_offset = i;
            return 0;
        }
        i += n;
    }
    return 1;
}

size_t sheaf_utf8_boundary(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    if (len == 0) return 0;
    /* Walk back over at most 3 continuation bytes to the lead byte. */
    size_t i = len;
    size_t back = 0;
    while (i > 0 && back < 4 && (p[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0) return len; /* only continuation bytes: invalid, count as singles */
    size_t lead = i - 1;
    unsigned char c = p[lead];
    size_t need = c < 0x80 ? 1 : (c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1);
    if (need > 1 && len - lead < need) return lead; /* truncated sequence: cut before it */
    return len;
}

uint32_t sheaf_estimate_tokens(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    uint64_t ascii = 0, other = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x80) ascii++;
        else if ((p[i] & 0xC0) != 0x80) other++;
    }
    uint64_t t = (ascii + 3) / 4 + other;
    return t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

int sheaf_job_id_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 200) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._:/@+-", c)))
            return 0;
    }
    return 1;
}

int sheaf_doc_id_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > 512) return 0;
    if (!sheaf_utf8_valid(s, len, NULL)) return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
    return 1;
}

static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t rng_state;

uint64_t sheaf_fnv1a64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint64_t sheaf_random_u64(void)
{
    pthread_mutex_lock(&rng_lock);
    if (rng_state == 0) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, &rng_state, sizeof(rng_state)) != sizeof(rng_state))
            rng_state = (uint64_t)sheaf_wall_ms() ^ ((uint64_t)getpid() << 32);
        if (fd >= 0) close(fd);
        if (rng_state == 0) rng_state = 0x9E3779B97F4A7C15ULL;
    }
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    pthread_mutex_unlock(&rng_lock);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void sheaf_job_id_new(char out[40])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char ts[20];
    strftime(ts, sizeof(ts), "%Y%m%d-%H%M%S", &tm);
    snprintf(out, 40, "j-%s-%06x", ts, (unsigned)(sheaf_random_u64() & 0xFFFFFF));
}

char *sheaf_strdup(const char *s) { return s ? strdup(s) : NULL; }

char *sheaf_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

int sheaf_parse_int(const char *s, int min, int max, int *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max) return -1;
    *out = (int)v;
    return 0;
}
