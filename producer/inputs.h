/* producer/inputs.h - the producer's input layer (internal to producer/).
 *
 * Everything between "paths on the command line" and "documents with text":
 *
 *   options.c  sheaf_input_opts: the input.* and chunk.* settings, checked
 *              and pre-parsed once (meta field list, format, caps).
 *   walk.c     expands the paths given into a list of input files, each with
 *              its format and, for text files, its document id.
 *   textdoc.c  streams one plain-text document in 64 KiB blocks, checking
 *              UTF-8 (NUL bytes included) as it goes.
 *   pdfdoc.c   streams the text of a PDF: runs pdftotext (poppler-utils)
 *              and feeds its output through textdoc.c's checks.
 *   lines.c    reads a file line by line with a hard cap on a line's length
 *              and remembers where each line starts (so pass 2 can come
 *              back to it).
 *   jsonl.c    turns one JSONL line into an item (id, text, metadata).
 *
 * A "problem" is a message about bad input, always beginning with the file
 * and, for JSONL, the line: "a.jsonl:12: field \"text\": missing",
 * "notes/b.txt: empty document".  Readers never log problems themselves;
 * they hand the message back and the caller (scan.c, publish.c) decides. */
#ifndef SHEAF_PRODUCER_INPUTS_H
#define SHEAF_PRODUCER_INPUTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "sheaf/buf.h"
#include "sheaf/chunker.h"
#include "sheaf/config.h"
#include "sheaf/error.h"

/* Size of a problem message buffer. */
#define SHEAF_PROBLEM_SIZE 1024

/* ---- options.c ---- */

typedef enum sheaf_format {
    SHEAF_FORMAT_AUTO = 0,
    SHEAF_FORMAT_TEXT = 1,
    SHEAF_FORMAT_JSONL = 2,
    SHEAF_FORMAT_PDF = 3      /* chosen by name (*.pdf), never by input.format */
} sheaf_format;

typedef struct sheaf_input_opts {
    sheaf_format format;       /* input.format */
    const char *id_field;      /* input.id_field; borrowed from the config */
    const char *text_field;    /* input.text_field; borrowed */
    int meta_all;              /* input.meta_fields = "*" */
    char **meta_names;         /* owned: the listed fields, sorted, unique */
    size_t n_meta;
    size_t max_line_bytes;     /* input.max_line_bytes */
    uint64_t max_doc_bytes;    /* input.max_doc_bytes */
    int skip;                  /* input.on_error = skip */
    sheaf_chunk_opts chunk;    /* chunk.*; checked by creating a chunker */
    /* The largest chunk the map stage's window can take with its prompt
     * and answer (0 = no bound), and what makes that limit, for the
     * message refusing a document with a larger chunk; set by the submit
     * from its pipeline (sheaf_input_opts_init leaves them 0). */
    uint32_t chunk_limit;
    char chunk_limit_why[200];
} sheaf_input_opts;

/* Fills o from cfg.  A bad value fails with SHEAF_ERR_CONFIG naming the key.
 * o borrows strings from cfg, which must outlive it. */
sheaf_err sheaf_input_opts_init(sheaf_input_opts *o, const sheaf_config *cfg, char *errstr,
                                size_t errlen);
void sheaf_input_opts_clear(sheaf_input_opts *o);

/* ---- walk.c ---- */

typedef struct sheaf_in_file {
    char *path;            /* owned: the path to open */
    char *id;              /* owned: the document id of a text or PDF file; NULL for JSONL */
    sheaf_format format;   /* TEXT, JSONL or PDF, never AUTO */
} sheaf_in_file;

/* A file a directory walk left out on purpose, and why. */
typedef struct sheaf_in_skip {
    char *path;            /* owned */
    const char *reason;    /* static text */
} sheaf_in_skip;

typedef struct sheaf_in_files {
    sheaf_in_file *v;
    size_t n;
    size_t cap;
    sheaf_in_skip *skips;  /* owned, in walk order */
    size_t n_skips;
    size_t cap_skips;
} sheaf_in_files;

typedef void (*sheaf_problem_fn)(void *ud, const char *msg);

/* Appends the input files of each path to out, in order: a file is taken
 * as given (whatever its name) with its path as document id; a directory
 * is walked recursively and its *.txt, *.md, *.text, *.pdf and *.jsonl
 * files (case-insensitive) are taken in byte order of their path relative to the
 * directory, with ids "<dirname>/<relative path>" where <dirname> is the
 * directory's own name ("/data/reports/" gives "reports/q3.txt"; for "." or
 * ".." the name of the resolved directory; for "/" no prefix).  Inside a
 * walk, names starting with '.' are ignored and symbolic links to
 * directories are not followed (no cycles); links to files are.
 * Files a walk leaves out on purpose are listed in out->skips with the
 * reason: a name of another type (data.json, prog), a README file (it
 * describes the folder), and a *.pdf whose text version (same name with
 * .txt, .md or .text) is in the same directory (the same document twice;
 * the text is taken).  A file named on the command line is never skipped.
 * Unreadable paths and special files are reported through problem and left
 * out.  The format of a file is input.format, or with "auto" JSONL for
 * *.jsonl and TEXT otherwise; a *.pdf file is PDF unless input.format is
 * "jsonl" (input.format=text means "not JSONL", and the text of a PDF is
 * what pdftotext makes of it).  Fails only when out of memory. */
sheaf_err sheaf_walk_inputs(const sheaf_input_opts *o, char *const *paths, size_t n_paths,
                            sheaf_in_files *out, sheaf_problem_fn problem, void *ud);
void sheaf_in_files_clear(sheaf_in_files *f);

/* ---- textdoc.c ---- */

typedef sheaf_err (*sheaf_text_sink)(const char *data, size_t len, void *ud);

typedef struct sheaf_text_info {
    uint64_t bytes;   /* bytes of text read (for a PDF: the text pdftotext wrote) */
    int has_pages;    /* the text contains a form feed */
    int bad;          /* 1 when the document itself is bad (msg says why) */
    int eof;          /* the stream was read to its end (not stopped by an error) */
    int empty;        /* bad because empty or only whitespace */
} sheaf_text_info;

/* Where sheaf_text_stream gets its bytes: like read(2), up to len bytes
 * into buf, 0 at the end, -1 with errno set on failure. */
typedef ssize_t (*sheaf_text_source)(void *src, char *buf, size_t len);

/* Streams the file at path through sink in blocks (at most 64 KiB plus a
 * carried partial UTF-8 sequence), each piece well-formed UTF-8.  The
 * document is bad (info->bad = 1, SHEAF_ERR_INVALID, msg
 * "PATH: <reason>") when it cannot be read ("cannot read: <strerror>"), is
 * larger than max_bytes, holds a byte that is not UTF-8 or is NUL ("line L,
 * byte B: invalid UTF-8 (binary file?)", L and B counted from 1, B within
 * the line), or is empty or only whitespace ("empty document").  These are
 * found while streaming, so the sink may have seen part of a bad document.
 * Any error the sink returns stops the read and is returned as is. */
sheaf_err sheaf_text_read(const char *path, uint64_t max_bytes, sheaf_text_sink sink, void *ud,
                          sheaf_text_info *info, char *msg, size_t msglen);

/* The checking loop of sheaf_text_read over any source: the same blocks,
 * checks, messages ("PATH: ..." with path only used in them) and info,
 * except that the size is only known as the bytes go by.  Reads until the
 * end, a bad byte, the cap or a sink error; info->eof says whether the end
 * was reached. */
sheaf_err sheaf_text_stream(const char *path, sheaf_text_source source, void *src,
                            uint64_t max_bytes, sheaf_text_sink sink, void *ud,
                            sheaf_text_info *info, char *msg, size_t msglen);

/* Reads an input file of format TEXT (sheaf_text_read) or PDF
 * (sheaf_pdf_read), same contract.  Not for JSONL. */
sheaf_err sheaf_in_file_read(const sheaf_in_file *f, uint64_t max_bytes, sheaf_text_sink sink,
                             void *ud, sheaf_text_info *info, char *msg, size_t msglen);

/* 1 when s[0..len) holds nothing but ASCII whitespace. */
int sheaf_text_blank(const char *s, size_t len);

/* ---- pdfdoc.c ---- */

/* Name of the program that turns a PDF into text, looked up in PATH. */
#define SHEAF_PDFTOTEXT "pdftotext"

/* Streams the text of the PDF at path through sink, with the contract of
 * sheaf_text_read (same checks on the text, same info and messages; the cap
 * applies to the text, not to the PDF file).  The text is the output of
 * `pdftotext -enc UTF-8 PATH -`, run directly (no shell) with its output in
 * a pipe: each page followed by a form feed, so pages are numbered as in the
 * PDF (the form feed after the last page opens no new page).  Memory is one
 * text block and 512 bytes of pdftotext's stderr, whatever the PDF.  The
 * child is always waited for, and killed when reading stops early.  More
 * ways for the document to be bad (info->bad = 1, SHEAF_ERR_INVALID):
 *   "PATH: reading PDF needs pdftotext (Debian package poppler-utils): not found"
 *   "PATH: cannot run pdftotext: <strerror>"
 *   "PATH: pdftotext failed (exit N): <its first error line>"
 *   "PATH: pdftotext killed by signal N"
 *   "PATH: empty document (pdftotext found no text; scanned pages need OCR)"
 * where "its first error line" is the first line of its stderr naming an
 * error ("... Error: ..."), else its first line.  A failure of pdftotext
 * wins over what its (partial) output looked like.  On shutdown (sheaf_stop)
 * the child is killed and SHEAF_ERR_STOPPED returned, not a bad document. */
sheaf_err sheaf_pdf_read(const char *path, uint64_t max_bytes, sheaf_text_sink sink, void *ud,
                         sheaf_text_info *info, char *msg, size_t msglen);

/* ---- lines.c ---- */

typedef enum sheaf_line_status {
    SHEAF_LINE_OK = 0,        /* a line is in lr->line (without its '\n') */
    SHEAF_LINE_EOF = 1,       /* no more lines */
    SHEAF_LINE_TOO_LONG = 2,  /* a line longer than the cap was skipped (line_no is set) */
    SHEAF_LINE_ERROR = 3      /* read error: errno value in lr->err */
} sheaf_line_status;

typedef struct sheaf_lines {
    int fd;               /* owned */
    char *blk;            /* owned read-ahead block */
    size_t blk_len;       /* bytes in blk */
    size_t blk_pos;       /* next unread byte in blk */
    uint64_t blk_off;     /* file offset of blk[0] */
    int eof;
    int err;              /* errno of the last failure */
    sheaf_buf line;       /* the current line, capped at max_line bytes */
    uint64_t line_no;     /* 1-based number of the current line */
    uint64_t line_off;    /* file offset where the current line starts */
    uint64_t bytes;       /* bytes read from the file so far */
} sheaf_lines;

/* Opens path for line reading.  On failure returns SHEAF_ERR_IO with errno
 * in lr->err; lr may be closed either way. */
sheaf_err sheaf_lines_open(sheaf_lines *lr, const char *path, size_t max_line);
sheaf_line_status sheaf_lines_next(sheaf_lines *lr);
/* Positions the reader so that the next line read starts at offset and is
 * numbered line_no. */
sheaf_err sheaf_lines_seek(sheaf_lines *lr, uint64_t offset, uint64_t line_no);
/* Closes the file; a no-op on a reader never opened (zeroed). */
void sheaf_lines_close(sheaf_lines *lr);

/* ---- jsonl.c ---- */

typedef struct sheaf_jsonl_item {
    json_t *root;          /* owned: the parsed object */
    const char *id;        /* into root, or into idbuf for an integer id */
    size_t id_len;
    char idbuf[32];
    const char *text;      /* into root */
    size_t text_len;
} sheaf_jsonl_item;

/* 1 when line is blank (only spaces, tabs, CR): such lines are skipped. */
int sheaf_jsonl_blank(const char *line, size_t len);

/* Parses one JSONL line into it.  A bad line fails with SHEAF_ERR_INVALID
 * and msg "PATH:LINE: <reason>" (invalid JSON, not an object, id or text
 * field missing or of the wrong type, invalid document id, empty text, text
 * over max_doc_bytes); SHEAF_ERR_NOMEM otherwise.  Call
 * sheaf_jsonl_item_clear afterwards in every case. */
sheaf_err sheaf_jsonl_parse(const sheaf_input_opts *o, const char *path, uint64_t line_no,
                            const char *line, size_t len, sheaf_jsonl_item *it, char *msg,
                            size_t msglen);
void sheaf_jsonl_item_clear(sheaf_jsonl_item *it);

/* The metadata of an item as a new object holding the selected fields with
 * their JSON values (input.meta_fields: "*" every field but the id and text
 * fields, "" none, else the listed fields that are present).  NULL only
 * when out of memory. */
json_t *sheaf_jsonl_meta(const sheaf_input_opts *o, const sheaf_jsonl_item *it);

/* The metadata stored in Redis: compact JSON with sorted keys (malloc'd;
 * "{}" for an empty object).  NULL when out of memory. */
char *sheaf_meta_to_json(const json_t *meta);

/* The metadata of a chunk message: one pair per field, sorted by key,
 * string values as they are, other values as compact JSON text (keys
 * sorted).  *kv is owned by the caller (sheaf_meta_kv_free). */
sheaf_err sheaf_meta_flatten(const json_t *meta, sheaf_kv **kv, size_t *n);
void sheaf_meta_kv_free(sheaf_kv *kv, size_t n);

#endif
