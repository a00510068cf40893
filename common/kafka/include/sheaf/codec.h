/* sheaf/codec.h - the chunk message on the <prefix>.map topic.
 *
 * A chunk message is one msgpack map (schema version SHEAF_SCHEMA_VERSION):
 *
 *   key    type          meaning
 *   "v"    uint          schema version, 1
 *   "job"  str           job id
 *   "doc"  str           document id (unique within the job)
 *   "pv"   str           pipeline version (hash) the job was submitted with
 *   "idx"  uint          chunk index within the document, from 0
 *   "n"    uint          number of chunks of the document
 *   "text" str           the chunk text, UTF-8
 *   "tok"  uint          estimated tokens of text
 *   "pf"   uint          first page (1-based), 0 when the input has no pages
 *   "pl"   uint          last page (1-based), 0 when the input has no pages
 *   "meta" map str->str  document metadata (optional; may be empty)
 *
 * Decoding is strict: not a map, a missing or wrongly typed field, a
 * version other than 1 (SHEAF_ERR_VERSION), n == 0, idx >= n, invalid UTF-8
 * or NUL in a string, a duplicated key (also inside "meta"), a meta value
 * that is not a string, or trailing bytes all fail with a message naming
 * the field, e.g. `field "idx": expected unsigned integer, got string`.
 * Unknown keys are ignored so a later minor addition does not break older
 * workers.  Also checked: "job" and "pv" pass sheaf_job_id_valid, "doc"
 * passes sheaf_doc_id_valid, and "pf".."pl" is a page range (both 0, or
 * 1 <= pf <= pl).  Limits: a message is at most 16 MiB, "meta" at most 4096
 * entries, nesting at most 8 levels, 16384 msgpack objects in all; lengths
 * are checked against the bytes present before anything is allocated, so
 * no input can crash the decoder or make it allocate much more than the
 * message size.
 *
 * The encoder refuses (with the same messages) whatever the decoder would
 * refuse, so a bad message is found by the producer, not by a worker. */
#ifndef SHEAF_CODEC_H
#define SHEAF_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/buf.h"
#include "sheaf/config.h"
#include "sheaf/error.h"

#define SHEAF_SCHEMA_VERSION 1

typedef struct sheaf_chunk_msg {
    uint32_t version;
    char *job;          /* owned, NUL-terminated */
    char *doc;          /* owned */
    char *pv;           /* owned */
    uint32_t idx;
    uint32_t count;
    char *text;         /* owned, NUL-terminated, text_len bytes */
    size_t text_len;
    uint32_t tokens;
    uint32_t page_first;
    uint32_t page_last;
    sheaf_kv *meta;     /* owned array of owned pairs */
    size_t meta_len;
} sheaf_chunk_msg;

/* Appends the encoding of m to out, keys in the order above, "meta"
 * always written (possibly empty).  m->version 0 means the current
 * version; any other version than 1 is SHEAF_ERR_VERSION.  text may be NULL
 * when text_len is 0.  On failure (SHEAF_ERR_INVALID, SHEAF_ERR_TOO_LARGE
 * when out's cap or the 16 MiB limit is reached) out is left as it was. */
sheaf_err sheaf_chunk_encode(const sheaf_chunk_msg *m, sheaf_buf *out, char *errstr,
                             size_t errlen);
/* Decodes data into m (which is overwritten without being freed; call
 * sheaf_chunk_msg_clear afterwards, also on failure - on failure m is
 * already cleared, so that is a no-op).  Strings in m are owned,
 * NUL-terminated copies; nothing points into data. */
sheaf_err sheaf_chunk_decode(const void *data, size_t len, sheaf_chunk_msg *m, char *errstr,
                             size_t errlen);
/* Frees everything m owns and zeroes it; safe on a zeroed, cleared or
 * partially filled struct, and on NULL. */
void sheaf_chunk_msg_clear(sheaf_chunk_msg *m);

/* Looks up a metadata value by key, NULL if absent. */
const char *sheaf_chunk_meta_get(const sheaf_chunk_msg *m, const char *key);

#endif
