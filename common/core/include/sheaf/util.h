/* sheaf/util.h - small helpers shared by every program: time, hashing,
 * UTF-8 validation, token estimates, identifiers. */
#ifndef SHEAF_UTIL_H
#define SHEAF_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/error.h"

/* Monotonic milliseconds, for timeouts and latencies. */
int64_t sheaf_mono_ms(void);
/* Wall-clock milliseconds since the epoch, for records shown to people. */
int64_t sheaf_wall_ms(void);
/* Sleeps ms milliseconds (interrupted early by signals). */
void sheaf_sleep_ms(int64_t ms);

/* Digests of data (sha.c, not OpenSSL's: see there why): SHA-256 into 32
 * bytes, SHA-1 (Redis names a script by it) into 20. */
void sheaf_sha256(const void *data, size_t len, unsigned char out[32]);
void sheaf_sha1(const void *data, size_t len, unsigned char out[20]);
/* md[0..n) as lowercase hex into out (2n + 1 bytes including NUL). */
void sheaf_hex(const unsigned char *md, size_t n, char *out);
/* Lowercase hex SHA-256 of data into out (65 bytes including NUL). */
void sheaf_sha256_hex(const void *data, size_t len, char out[65]);

/* Checks that s[0..len) is well-formed UTF-8 without NUL bytes.  On failure
 * returns 0 and, when bad_offset is not NULL, stores the offset of the first
 * bad byte. */
int sheaf_utf8_valid(const char *s, size_t len, size_t *bad_offset);

/* Length of the longest prefix of s[0..len) that ends on a UTF-8 character
 * boundary (never cuts a multi-byte sequence; invalid bytes count as one). */
size_t sheaf_utf8_boundary(const char *s, size_t len);

/* Estimated tokens of s[0..len): one token per 4 ASCII bytes (rounded up)
 * plus one per non-ASCII code point.  Over-estimates rather than under:
 * budgets stay safe for Latin scripts and CJK alike. */
uint32_t sheaf_estimate_tokens(const char *s, size_t len);

/* 1 if s is a usable identifier for jobs and documents in Redis keys:
 * 1..200 bytes of [A-Za-z0-9._:/@+-] ... documents may use more, see
 * sheaf_doc_id_valid. */
int sheaf_job_id_valid(const char *s);
/* Document ids: 1..512 bytes, valid UTF-8, no control characters. */
int sheaf_doc_id_valid(const char *s, size_t len);
/* A new job id "j-YYYYMMDD-HHMMSS-xxxxxx" (hex random) into out (40 bytes). */
void sheaf_job_id_new(char out[40]);

/* strdup that returns NULL on NULL input. */
char *sheaf_strdup(const char *s);
char *sheaf_strndup(const char *s, size_t n);

/* A well-mixed random 64-bit value (seeded from /dev/urandom once). */
uint64_t sheaf_random_u64(void);

/* FNV-1a, 64 bits, of len bytes: for hash tables and fingerprints, never
 * for anything an attacker could aim at. */
uint64_t sheaf_fnv1a64(const void *data, size_t len);

/* Parses a whole decimal int in [min, max] into *out; 0 on success, -1 for
 * anything else (empty, trailing text, out of range). */
int sheaf_parse_int(const char *s, int min, int max, int *out);

#endif
