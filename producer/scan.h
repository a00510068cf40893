/* producer/scan.h - pass 1 of a submit (internal to producer/).
 *
 *   doclist.c  the table of accepted documents: per document only its id,
 *              where it is (file, line, offset) and its chunk count; ids
 *              are unique, found through a hash index.
 *   scan.c     pass 1: walks the inputs, checks every document, counts its
 *              chunks, and collects the problems.
 *
 * Pass 2 (publish.c) works from the result: it re-reads exactly the
 * accepted documents, so a document left out in pass 1 (on_error=skip) is
 * left out again without being looked at. */
#ifndef SHEAF_PRODUCER_SCAN_H
#define SHEAF_PRODUCER_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include "inputs.h"

/* ---- doclist.c ---- */

typedef struct sheaf_in_doc {
    const char *id;      /* NUL-terminated, in the list's arena */
    uint64_t line;       /* JSONL: 1-based line number; text file: 0 */
    uint64_t offset;     /* JSONL: file offset of the line; text file: 0 */
    uint32_t file;       /* index into the scan's file list */
    uint32_t chunks;     /* chunk count found in pass 1 */
    int has_pages;       /* the text contains a form feed */
} sheaf_in_doc;

typedef struct sheaf_id_block sheaf_id_block;

typedef struct sheaf_doclist {
    sheaf_in_doc *v;     /* owned, in input order */
    size_t n;
    size_t cap;
    size_t *slots;       /* owned hash index: doc index + 1, 0 = empty */
    size_t n_slots;      /* a power of two, at least 2 * n */
    sheaf_id_block *ids; /* owned arena holding the ids */
} sheaf_doclist;

/* The document with this id, or NULL. */
const sheaf_in_doc *sheaf_doclist_find(const sheaf_doclist *dl, const char *id, size_t len);
/* Appends d with a copy of id[0..len) (d->id is ignored).  The caller has
 * checked that the id is new. */
sheaf_err sheaf_doclist_add(sheaf_doclist *dl, const char *id, size_t len,
                            const sheaf_in_doc *d);
void sheaf_doclist_clear(sheaf_doclist *dl);

/* ---- scan.c ---- */

/* How many problem messages a scan keeps (all are counted and logged). */
#define SHEAF_SCAN_KEEP_PROBLEMS 1000

typedef struct sheaf_scan {
    sheaf_in_files files;   /* every input file found */
    sheaf_doclist docs;     /* the accepted documents, in submit order */
    char **problems;        /* the first SHEAF_SCAN_KEEP_PROBLEMS messages (owned) */
    size_t n_kept;
    uint64_t n_problems;    /* problems found; each left out one document or file */
    uint64_t bytes;         /* input bytes read */
    uint64_t chunks;        /* chunks of the accepted documents */
    uint64_t tokens;        /* estimated tokens of those chunks */
    uint32_t max_chunk_tokens; /* the largest of those chunks */
} sheaf_scan;

/* Pass 1 over the paths.  Every problem is logged as it is found (error
 * level, or warn when o->skip) and recorded; the documents with problems
 * are not in s->docs, whatever o->skip says (the caller refuses or goes on).
 * Returns SHEAF_OK however many problems there were; other errors only for
 * what is not the input's fault (out of memory).  s must be zeroed or
 * cleared before, and cleared after with sheaf_scan_clear. */
sheaf_err sheaf_scan_run(const sheaf_input_opts *o, char *const *paths, size_t n_paths,
                         sheaf_scan *s, char *errstr, size_t errlen);
void sheaf_scan_clear(sheaf_scan *s);

/* "PATH" for a text document, "PATH:LINE" for a JSONL item, into out. */
void sheaf_scan_where(const sheaf_scan *s, const sheaf_in_doc *d, char *out, size_t outlen);

#endif
