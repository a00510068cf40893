/* producer/jsonl.c - one JSONL line to one item: id, text, metadata.
 *
 * Each line is parsed on its own with jansson, rejecting duplicate keys
 * (which value would win is not something to guess) and NUL characters
 * (JSON_ALLOW_NUL is not set; jansson also rejects invalid UTF-8), so the
 * text handed on is always clean UTF-8.  The id field may be a string or an
 * integer (written in decimal); the text field must be a non-blank string.
 * Messages say which field was wrong and how, e.g.
 *   corpus.jsonl:17: field "text": expected a string, got number
 *
 * Metadata is kept in two forms: the JSON object of the selected fields
 * with their original values (stored once per document in Redis, compact
 * with sorted keys), and a flat string->string list carried in every chunk
 * message (strings as they are, other values as compact JSON text, so a
 * prompt template can use {{meta.year}} whatever the field's type). */
#include "inputs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sheaf/jschema.h"
#include "sheaf/util.h"


int sheaf_jsonl_blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') return 0;
    return 1;
}

sheaf_err sheaf_jsonl_parse(const sheaf_input_opts *o, const char *path, uint64_t line_no,
                            const char *line, size_t len, sheaf_jsonl_item *it, char *msg,
                            size_t msglen)
{
    sheaf_err err = SHEAF_ERR_INVALID;
    unsigned long long ln = (unsigned long long)line_no;
    json_error_t jerr;
    json_t *v;

    memset(it, 0, sizeof(*it));
    /* A UTF-8 byte order mark before the first line is not JSON; forgive it. */
    if (line_no == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
        line += 3;
        len -= 3;
    }
    it->root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!it->root) {
        if (json_error_code(&jerr) == json_error_out_of_memory) {
            err = SHEAF_ERR_NOMEM;
            snprintf(msg, msglen, "%s:%llu: out of memory", path, ln);
        } else {
            snprintf(msg, msglen, "%s:%llu: invalid JSON at column %d: %s", path, ln,
                     jerr.column, jerr.text);
        }
        goto done;
    }
    if (!json_is_object(it->root)) {
        snprintf(msg, msglen, "%s:%llu: expected a JSON object, got %s", path, ln,
                 sheaf_json_type_name(it->root));
        goto done;
    }

    v = json_object_get(it->root, o->id_field);
    if (!v) {
        snprintf(msg, msglen, "%s:%llu: field \"%s\": missing", path, ln, o->id_field);
        goto done;
    } else if (json_is_string(v)) {
        it->id = json_string_value(v);
        it->id_len = json_string_length(v);
    } else if (json_is_integer(v)) {
        int n = snprintf(it->idbuf, sizeof(it->idbuf), "%" JSON_INTEGER_FORMAT,
                         json_integer_value(v));
        it->id = it->idbuf;
        it->id_len = n > 0 ? (size_t)n : 0;
    } else {
        snprintf(msg, msglen, "%s:%llu: field \"%s\": expected a string or integer, got %s",
                 path, ln, o->id_field,
                 json_is_real(v) ? "a non-integer number" : sheaf_json_type_name(v));
        goto done;
    }
    if (!sheaf_doc_id_valid(it->id, it->id_len)) {
        snprintf(msg, msglen,
                 "%s:%llu: field \"%s\": not a valid document id (1 to 512 bytes, no "
                 "control characters)",
                 path, ln, o->id_field);
        goto done;
    }

    v = json_object_get(it->root, o->text_field);
    if (!v) {
        snprintf(msg, msglen, "%s:%llu: field \"%s\": missing", path, ln, o->text_field);
        goto done;
    } else if (!json_is_string(v)) {
        snprintf(msg, msglen, "%s:%llu: field \"%s\": expected a string, got %s", path, ln,
                 o->text_field, sheaf_json_type_name(v));
        goto done;
    }
    it->text = json_string_value(v);
    it->text_len = json_string_length(v);
    if ((uint64_t)it->text_len > o->max_doc_bytes) {
        snprintf(msg, msglen, "%s:%llu: document larger than input.max_doc_bytes (%llu)", path,
                 ln, (unsigned long long)o->max_doc_bytes);
        goto done;
    }
    if (sheaf_text_blank(it->text, it->text_len)) {
        snprintf(msg, msglen, "%s:%llu: empty document", path, ln);
        goto done;
    }
    err = SHEAF_OK;
done:
    return err;
}

void sheaf_jsonl_item_clear(sheaf_jsonl_item *it)
{
    if (!it) return;
    json_decref(it->root); /* frees the strings id and text point into */
    memset(it, 0, sizeof(*it));
}

json_t *sheaf_jsonl_meta(const sheaf_input_opts *o, const sheaf_jsonl_item *it)
{
    json_t *meta = json_object();
    const char *key;
    json_t *v;

    if (!meta) goto fail;
    if (o->meta_all) {
        json_object_foreach(it->root, key, v) {
            if (strcmp(key, o->id_field) == 0 || strcmp(key, o->text_field) == 0) continue;
            if (json_object_set(meta, key, v) != 0) goto fail; /* meta takes a reference */
        }
    } else {
        for (size_t i = 0; i < o->n_meta; i++) {
            v = json_object_get(it->root, o->meta_names[i]);
            if (v && json_object_set(meta, o->meta_names[i], v) != 0) goto fail;
        }
    }
    return meta;
fail:
    json_decref(meta);
    return NULL;
}

char *sheaf_meta_to_json(const json_t *meta)
{
    if (!meta || json_object_size(meta) == 0) return strdup("{}");
    return json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(((const sheaf_kv *)a)->key, ((const sheaf_kv *)b)->key);
}

sheaf_err sheaf_meta_flatten(const json_t *meta, sheaf_kv **kv, size_t *n)
{
    sheaf_err err = SHEAF_ERR_NOMEM;
    size_t size = meta ? json_object_size(meta) : 0, used = 0;
    sheaf_kv *out = NULL;
    const char *key;
    json_t *v;

    *kv = NULL;
    *n = 0;
    if (size == 0) {
        err = SHEAF_OK;
        goto done;
    }
    out = calloc(size, sizeof(*out));
    if (!out) goto done;
    /* json_object_foreach wants a non-const object; it does not modify it. */
    json_object_foreach((json_t *)meta, key, v) {
        if (used == size) break;
        out[used].key = strdup(key);
        out[used].value = sheaf_json_text(v);
        used++;
        if (!out[used - 1].key || !out[used - 1].value) goto done;
    }
    qsort(out, used, sizeof(*out), cmp_key);
    *kv = out;
    *n = used;
    out = NULL; /* owned by the caller */
    err = SHEAF_OK;
done:
    sheaf_meta_kv_free(out, used);
    return err;
}

void sheaf_meta_kv_free(sheaf_kv *kv, size_t n)
{
    if (!kv) return;
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}
