/* producer/stream_record.c - one input record of `sheaf stream` to one
 * document: id, text, metadata.
 *
 * stream.format=json: the value is a JSON object (duplicate keys and NUL
 * characters refused, as for JSONL).  The id is input.id_field (a string
 * or an integer) or, when the object has none, the record key; the text
 * is input.text_field (a non-blank string) or else stream.pages_field (an
 * array of strings, one per page, joined by form feeds so the chunker
 * numbers pages as it does for a PDF); metadata as input.meta_fields
 * says, the pages field left out.  stream.format=text: the value is the
 * text (UTF-8, no NUL), the key the id.  Whatever fails names the field
 * and how, and the record goes to the DLQ with that reason. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inputs.h"
#include "sheaf/jschema.h"
#include "sheaf/util.h"
#include "stream.h"

/* The record key as the id; msg says why not. */
static int id_from_key(sheaf_stream_record *rec, const void *key, size_t key_len,
                       const char *missing, char *msg, size_t msglen)
{
    if (!key || key_len == 0) {
        snprintf(msg, msglen, "%s and the record has no key to take as the id", missing);
        return -1;
    }
    if (!sheaf_doc_id_valid(key, key_len)) {
        snprintf(msg, msglen, "%s and the record key is not a valid document id (1 to 512 "
                 "bytes of UTF-8, no control characters)", missing);
        return -1;
    }
    rec->id = sheaf_strndup(key, key_len);
    return rec->id ? 0 : -1;
}

/* The text of a JSON record: the text field, or the pages joined by '\f'. */
static int text_from_json(const sheaf_config *cfg, const sheaf_input_opts *io, json_t *root,
                          sheaf_stream_record *rec, char *msg, size_t msglen)
{
    json_t *v = json_object_get(root, io->text_field), *page;
    size_t i, len = 0;
    if (v) {
        if (!json_is_string(v)) {
            snprintf(msg, msglen, "field \"%s\": expected a string, got %s", io->text_field,
                     sheaf_json_type_name(v));
            return -1;
        }
        rec->text = sheaf_strndup(json_string_value(v), json_string_length(v));
        rec->text_len = json_string_length(v);
        rec->has_pages = memchr(json_string_value(v), '\f', rec->text_len) != NULL;
        return rec->text ? 0 : -1;
    }
    v = json_object_get(root, cfg->stream_pages_field);
    if (!v) {
        snprintf(msg, msglen, "field \"%s\": missing (and no \"%s\" either)", io->text_field,
                 cfg->stream_pages_field);
        return -1;
    }
    if (!json_is_array(v) || json_array_size(v) == 0) {
        snprintf(msg, msglen, "field \"%s\": expected a non-empty array of strings, got %s",
                 cfg->stream_pages_field, json_is_array(v) ? "an empty array"
                                                           : sheaf_json_type_name(v));
        return -1;
    }
    json_array_foreach(v, i, page) {
        if (!json_is_string(page)) {
            snprintf(msg, msglen, "field \"%s\": page %zu: expected a string, got %s",
                     cfg->stream_pages_field, i + 1, sheaf_json_type_name(page));
            return -1;
        }
        len += json_string_length(page) + 1;
    }
    if (!(rec->text = malloc(len))) return -1;
    json_array_foreach(v, i, page) {
        memcpy(rec->text + rec->text_len, json_string_value(page), json_string_length(page));
        rec->text_len += json_string_length(page);
        rec->text[rec->text_len++] = '\f';
    }
    rec->text[--rec->text_len] = '\0'; /* no page break after the last page */
    rec->has_pages = 1;
    return 0;
}

static sheaf_err parse_json(const sheaf_config *cfg, const sheaf_input_opts *io, const void *key,
                            size_t key_len, const void *value, size_t len,
                            sheaf_stream_record *rec, char *msg, size_t msglen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    json_error_t jerr;
    json_t *root = json_loadb(value, len, JSON_REJECT_DUPLICATES, &jerr), *v, *meta = NULL;
    char missing[300];

    if (!root) {
        snprintf(msg, msglen, "invalid JSON at column %d: %s (stream.format=json)", jerr.column,
                 jerr.text);
        goto done;
    }
    if (!json_is_object(root)) {
        snprintf(msg, msglen, "expected a JSON object, got %s", sheaf_json_type_name(root));
        goto done;
    }
    v = json_object_get(root, io->id_field);
    if (json_is_string(v) || json_is_integer(v)) {
        char buf[32];
        const char *id = buf;
        size_t id_len;
        if (json_is_string(v)) {
            id = json_string_value(v);
            id_len = json_string_length(v);
        } else {
            int n = snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            id_len = n > 0 ? (size_t)n : 0;
        }
        if (!sheaf_doc_id_valid(id, id_len)) {
            snprintf(msg, msglen, "field \"%s\": not a valid document id (1 to 512 bytes, no "
                     "control characters)", io->id_field);
            goto done;
        }
        if (!(rec->id = sheaf_strndup(id, id_len))) goto nomem;
    } else if (v) {
        snprintf(msg, msglen, "field \"%s\": expected a string or integer, got %s", io->id_field,
                 json_is_real(v) ? "a non-integer number" : sheaf_json_type_name(v));
        goto done;
    } else {
        snprintf(missing, sizeof(missing), "field \"%s\": missing", io->id_field);
        if (id_from_key(rec, key, key_len, missing, msg, msglen) != 0) goto done;
    }
    if (text_from_json(cfg, io, root, rec, msg, msglen) != 0) {
        if (!rec->text && !msg[0]) goto nomem;
        goto done;
    }
    sheaf_jsonl_item it = {.root = root};
    if (!(meta = sheaf_jsonl_meta(io, &it))) goto nomem;
    if (io->meta_all) json_object_del(meta, cfg->stream_pages_field);
    if (!(rec->meta_json = sheaf_meta_to_json(meta)) ||
        sheaf_meta_flatten(meta, &rec->meta, &rec->meta_len) != SHEAF_OK)
        goto nomem;
    err = SHEAF_OK;
    goto done;
nomem:
    err = SHEAF_ERR_NOMEM;
    snprintf(msg, msglen, "out of memory");
done:
    json_decref(meta);
    json_decref(root);
    return err;
}

sheaf_err sheaf_stream_record_parse(const sheaf_config *cfg, const sheaf_input_opts *io,
                                    const void *key, size_t key_len, const void *value,
                                    size_t len, sheaf_stream_record *rec, char *msg,
                                    size_t msglen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    size_t bad = 0;
    memset(rec, 0, sizeof(*rec));
    msg[0] = '\0';
    if (!value || len == 0) {
        snprintf(msg, msglen, "empty record (no value)");
        return SHEAF_ERR_INVALID;
    }
    if (strcmp(cfg->stream_format, "text") == 0) {
        if (id_from_key(rec, key, key_len, "stream.format=text takes the id from the key",
                        msg, msglen) != 0)
            return SHEAF_ERR_INVALID;
        if (!sheaf_utf8_valid(value, len, &bad)) {
            snprintf(msg, msglen, "byte %zu: invalid UTF-8 or NUL (binary value?)", bad + 1);
            return SHEAF_ERR_INVALID;
        }
        if (!(rec->text = sheaf_strndup(value, len)) || !(rec->meta_json = strdup("{}"))) {
            snprintf(msg, msglen, "out of memory");
            return SHEAF_ERR_NOMEM;
        }
        rec->text_len = len;
        rec->has_pages = memchr(value, '\f', len) != NULL;
    } else if ((err = parse_json(cfg, io, key, key_len, value, len, rec, msg, msglen)) !=
               SHEAF_OK) {
        return err;
    }
    if ((uint64_t)rec->text_len > io->max_doc_bytes) {
        snprintf(msg, msglen, "document larger than input.max_doc_bytes (%llu)",
                 (unsigned long long)io->max_doc_bytes);
        return SHEAF_ERR_INVALID;
    }
    if (sheaf_text_blank(rec->text, rec->text_len)) {
        snprintf(msg, msglen, "empty document");
        return SHEAF_ERR_INVALID;
    }
    return SHEAF_OK;
}

void sheaf_stream_record_clear(sheaf_stream_record *rec)
{
    if (!rec) return;
    free(rec->id);
    free(rec->text);
    free(rec->meta_json);
    sheaf_meta_kv_free(rec->meta, rec->meta_len);
    memset(rec, 0, sizeof(*rec));
}

static sheaf_err collect_chunk(const sheaf_chunk *ch, void *ud)
{
    sheaf_chunk_vec *cv = ud;
    if (cv->n == cv->cap) {
        size_t cap = cv->cap ? 2 * cv->cap : 8;
        sheaf_chunk *v = realloc(cv->v, cap * sizeof(*v));
        if (!v) return SHEAF_ERR_NOMEM;
        cv->v = v;
        cv->cap = cap;
    }
    char *text = sheaf_strndup(ch->text, ch->len);
    if (!text) return SHEAF_ERR_NOMEM;
    cv->v[cv->n] = *ch;
    cv->v[cv->n++].text = text;
    return SHEAF_OK;
}

sheaf_err sheaf_stream_record_chunk(const sheaf_chunk_opts *o, const sheaf_stream_record *rec,
                                    sheaf_chunk_vec *cv, char *errstr, size_t errlen)
{
    sheaf_chunker *ch = sheaf_chunker_create(o, collect_chunk, cv, errstr, errlen);
    sheaf_err err = SHEAF_ERR_NOMEM;
    memset(cv, 0, sizeof(*cv));
    if (!ch) return SHEAF_ERR_INVALID;
    err = sheaf_chunker_feed(ch, rec->text, rec->text_len);
    if (err == SHEAF_OK) err = sheaf_chunker_finish(ch);
    sheaf_chunker_destroy(ch);
    if (err != SHEAF_OK) snprintf(errstr, errlen, "chunking: %s", sheaf_strerror(err));
    return err;
}

void sheaf_chunk_vec_free(sheaf_chunk_vec *cv)
{
    for (size_t i = 0; cv && i < cv->n; i++) free((char *)cv->v[i].text);
    if (cv) free(cv->v);
    if (cv) memset(cv, 0, sizeof(*cv));
}
