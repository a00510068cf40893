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
 * version other than 1, idx >= n, invalid UTF-8 in a string, or trailing
 * bytes all fail with a message naming the field.  Unknown keys are
 * ignored so a later minor addition does not break older workers. */
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

/* Appends the encoding of m to out. */
sheaf_err sheaf_chunk_encode(const sheaf_chunk_msg *m, sheaf_buf *out, char *errstr,
                             size_t errlen);
/* Decodes data into m (which is overwritten; call sheaf_chunk_msg_clear
 * afterwards, also on failure). */
sheaf_err sheaf_chunk_decode(const void *data, size_t len, sheaf_chunk_msg *m, char *errstr,
                             size_t errlen);
void sheaf_chunk_msg_clear(sheaf_chunk_msg *m);

/* Looks up a metadata value by key, NULL if absent. */
const char *sheaf_chunk_meta_get(const sheaf_chunk_msg *m, const char *key);

#endif
