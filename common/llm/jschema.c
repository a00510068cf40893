/* jschema.c - checking a JSON Schema subset and validating values against
 * it.  See sheaf/jschema.h for the subset and the order of checks.
 *
 * Both walks carry the path to where they are as a chain of segments on the
 * C stack (seg: a parent pointer and a key or an index), so nothing is
 * allocated and nothing is formatted until an error happens; then the chain
 * is rendered once, as a JSON pointer into the schema ("/properties/a~1b",
 * RFC 6901 escapes) or as a JSONPath-like path into the value ("$.a[2]").
 * Both walks count levels and stop at SHEAF_JSCHEMA_MAX_DEPTH, so a hostile
 * schema is an error, not a stack overflow.
 *
 * Validation trusts the shape checked by sheaf_jschema_check but still reads
 * every keyword with typed accessors: on an unchecked schema a keyword of the
 * wrong shape is skipped, never dereferenced blindly.  Objects iterate in
 * insertion order (jansson >= 2.8), which makes "the first error" well
 * defined. */
#include "sheaf/jschema.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/error.h"
#include "sheaf/util.h"

#define NAME_SHOWN 64  /* bytes of a property name or keyword quoted in errors */
#define VALUE_SHOWN 64 /* bytes of a JSON value quoted in errors */

/* One step of the path from the root to where a walk is. */
typedef struct seg {
    const struct seg *up;
    const char *key; /* NULL: an array index */
    size_t index;
} seg;

/* A fixed buffer that is appended to and silently truncated. */
typedef struct text {
    char *p;
    size_t cap, len;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->cap == 0) return;
    if (t->len + 1 >= t->cap) return;
    if (n > t->cap - 1 - t->len) n = t->cap - 1 - t->len;
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void puts_(text *t, const char *s) { put(t, s, strlen(s)); }

/* ---- rendering paths ------------------------------------------------------ */

/* JSON pointer of the schema part at path (RFC 6901: "~" -> "~0", "/" -> "~1"). */
static void render_pointer(text *t, const seg *at)
{
    char num[32];
    if (!at) return;
    render_pointer(t, at->up);
    put(t, "/", 1);
    if (!at->key) {
        snprintf(num, sizeof(num), "%zu", at->index);
        puts_(t, num);
        return;
    }
    for (const char *c = at->key; *c; c++) {
        if (*c == '~') puts_(t, "~0");
        else if (*c == '/') puts_(t, "~1");
        else put(t, c, 1);
    }
}

static int is_ident(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_')) return 0;
    for (s++; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

/* Value path: "$", ".name" for identifiers, "[\"other name\"]", "[2]". */
static void render_value_path(text *t, const seg *at)
{
    char num[32];
    if (!at) {
        puts_(t, "$");
        return;
    }
    render_value_path(t, at->up);
    if (!at->key) {
        snprintf(num, sizeof(num), "[%zu]", at->index);
        puts_(t, num);
    } else if (is_ident(at->key)) {
        puts_(t, ".");
        puts_(t, at->key);
    } else {
        puts_(t, "[\"");
        for (const char *c = at->key; *c; c++) {
            if (*c == '"' || *c == '\\') {
                put(t, "\\", 1);
                put(t, c, 1);
            } else if ((unsigned char)*c < 0x20) {
                snprintf(num, sizeof(num), "\\u%04x", (unsigned)(unsigned char)*c);
                puts_(t, num);
            } else {
                put(t, c, 1);
            }
        }
        puts_(t, "\"]");
    }
}

/* Fills errstr with "<where>: <message>"; where is the schema pointer
 * ("schema /items") when in_schema, else the value path ("$.a[1]"). */
__attribute__((format(printf, 5, 6)))
static sheaf_err fail(char *errstr, size_t errlen, int in_schema, const seg *at,
                      const char *fmt, ...)
{
    char where[SHEAF_ERRSTR_SIZE] = "", msg[SHEAF_ERRSTR_SIZE];
    text t = {where, sizeof(where), 0};
    va_list ap;

    if (in_schema) {
        puts_(&t, "schema");
        if (at) puts_(&t, " ");
        render_pointer(&t, at);
    } else {
        render_value_path(&t, at);
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sheaf_set_err(errstr, errlen, "%s: %s", where, msg);
    return SHEAF_ERR_INVALID;
}

/* A name cut to NAME_SHOWN bytes on a character boundary, "..." if cut. */
static const char *shown_name(const char *name, char out[NAME_SHOWN + 4])
{
    size_t n = strlen(name);
    if (n <= NAME_SHOWN) return name;
    n = sheaf_utf8_boundary(name, NAME_SHOWN);
    memcpy(out, name, n);
    memcpy(out + n, "...", 4);
    return out;
}

/* A JSON value as compact text, cut to VALUE_SHOWN bytes ("..." if cut). */
static void shown_value(const json_t *v, char out[VALUE_SHOWN + 4])
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(15));
    size_t n;
    if (!s) {
        snprintf(out, VALUE_SHOWN + 4, "(value)");
        return;
    }
    n = strlen(s);
    if (n > VALUE_SHOWN) {
        n = sheaf_utf8_boundary(s, VALUE_SHOWN);
        memcpy(out, s, n);
        memcpy(out + n, "...", 4);
    } else {
        memcpy(out, s, n + 1);
    }
    free(s);
}

/* ---- types ---------------------------------------------------------------- */

static const char *const type_names[] = {"object", "array",   "string", "number",
                                         "integer", "boolean", "null"};
#define N_TYPES (sizeof(type_names) / sizeof(type_names[0]))

/* Bit of a type name, 0 when unknown. */
static unsigned type_bit(const char *name)
{
    for (size_t i = 0; i < N_TYPES; i++)
        if (strcmp(name, type_names[i]) == 0) return 1u << i;
    return 0;
}

/* Bits of the schema types a value satisfies. */
static unsigned value_bits(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return type_bit("object");
    case JSON_ARRAY: return type_bit("array");
    case JSON_STRING: return type_bit("string");
    case JSON_INTEGER: return type_bit("number") | type_bit("integer");
    case JSON_REAL: return type_bit("number");
    case JSON_TRUE:
    case JSON_FALSE: return type_bit("boolean");
    case JSON_NULL: return type_bit("null");
    }
    return 0;
}

const char *sheaf_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER:
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "value";
}

char *sheaf_json_text(const json_t *v)
{
    if (json_is_string(v)) return sheaf_strndup(json_string_value(v), json_string_length(v));
    return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

int sheaf_json_object_texts(json_t *obj)
{
    for (void *it = json_object_iter(obj); it; it = json_object_iter_next(obj, it)) {
        json_t *v = json_object_iter_value(it);
        if (json_is_string(v)) continue;
        char *shown = sheaf_json_text(v);
        json_t *s = shown ? json_string(shown) : NULL;
        free(shown);
        if (!s || json_object_iter_set_new(obj, it, s) != 0) return -1; /* takes s */
    }
    return 0;
}

/* ---- check ---------------------------------------------------------------- */

static sheaf_err check_schema(const json_t *s, const seg *at, int depth, char *errstr,
                              size_t errlen);

static sheaf_err check_type(const json_t *v, const seg *at, char *errstr, size_t errlen)
{
    unsigned seen = 0;
    size_t i;
    const json_t *t;

    if (json_is_string(v) && type_bit(json_string_value(v))) return SHEAF_OK;
    if (json_is_array(v) && json_array_size(v) > 0) {
        json_array_foreach(v, i, t) {
            unsigned bit = json_is_string(t) ? type_bit(json_string_value(t)) : 0;
            if (!bit || (seen & bit)) goto bad;
            seen |= bit;
        }
        return SHEAF_OK;
    }
bad:
    return fail(errstr, errlen, 1, at,
                "\"type\" must be one of object, array, string, number, integer, boolean, "
                "null, or a non-empty array of distinct ones");
}

static sheaf_err check_properties(const json_t *v, const seg *at, int depth, char *errstr,
                                  size_t errlen)
{
    seg props = {at, "properties", 0};
    const char *name;
    const json_t *sub;
    sheaf_err err;

    if (!json_is_object(v))
        return fail(errstr, errlen, 1, at, "\"properties\" must be an object of schemas");
    json_object_foreach((json_t *)v, name, sub) {
        seg prop = {&props, name, 0};
        err = check_schema(sub, &prop, depth + 1, errstr, errlen);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

static sheaf_err check_required(const json_t *v, const seg *at, char *errstr, size_t errlen)
{
    size_t i, j;
    const json_t *name;

    if (!json_is_array(v))
        return fail(errstr, errlen, 1, at, "\"required\" must be an array of property names");
    json_array_foreach(v, i, name) {
        if (!json_is_string(name))
            return fail(errstr, errlen, 1, at, "\"required\" must be an array of property names");
        for (j = 0; j < i; j++) {
            if (json_equal(name, json_array_get(v, j))) {
                char buf[NAME_SHOWN + 4];
                return fail(errstr, errlen, 1, at, "\"required\" names \"%s\" twice",
                            shown_name(json_string_value(name), buf));
            }
        }
    }
    return SHEAF_OK;
}

static sheaf_err check_enum(const json_t *v, const seg *at, char *errstr, size_t errlen)
{
    size_t i;
    const json_t *e;

    if (!json_is_array(v) || json_array_size(v) == 0) goto bad;
    json_array_foreach(v, i, e) {
        if (json_is_object(e) || json_is_array(e)) goto bad;
    }
    return SHEAF_OK;
bad:
    return fail(errstr, errlen, 1, at,
                "\"enum\" must be a non-empty array of strings, numbers, booleans or null");
}

/* Compares two JSON numbers: <0, 0, >0.  Integers compare exactly. */
int sheaf_json_num_cmp(const json_t *a, const json_t *b)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        return x < y ? -1 : x > y;
    } else {
        double x = json_number_value(a), y = json_number_value(b);
        return x < y ? -1 : x > y;
    }
}

/* Checks that lo <= hi when both are present and well-formed. */
static sheaf_err check_bounds(const json_t *s, const char *lo_key, const char *hi_key,
                              const seg *at, char *errstr, size_t errlen)
{
    const json_t *lo = json_object_get(s, lo_key), *hi = json_object_get(s, hi_key);
    if (json_is_number(lo) && json_is_number(hi) && sheaf_json_num_cmp(lo, hi) > 0)
        return fail(errstr, errlen, 1, at, "\"%s\" is greater than \"%s\"", lo_key, hi_key);
    return SHEAF_OK;
}

typedef enum kw_shape {
    KW_TYPE,
    KW_PROPERTIES,
    KW_REQUIRED,
    KW_BOOLEAN,
    KW_ITEMS,
    KW_ENUM,
    KW_COUNT,  /* non-negative integer */
    KW_NUMBER,
    KW_STRING,
    KW_ANY
} kw_shape;

static const struct keyword {
    const char *name;
    kw_shape shape;
} keywords[] = {
    {"type", KW_TYPE},          {"properties", KW_PROPERTIES},
    {"required", KW_REQUIRED},  {"additionalProperties", KW_BOOLEAN},
    {"items", KW_ITEMS},        {"enum", KW_ENUM},
    {"minItems", KW_COUNT},     {"maxItems", KW_COUNT},
    {"minLength", KW_COUNT},    {"maxLength", KW_COUNT},
    {"minimum", KW_NUMBER},     {"maximum", KW_NUMBER},
    {"title", KW_STRING},       {"description", KW_STRING},
    {"$comment", KW_STRING},    {"default", KW_ANY},
};
#define N_KEYWORDS (sizeof(keywords) / sizeof(keywords[0]))

static const struct keyword *find_keyword(const char *name)
{
    for (size_t i = 0; i < N_KEYWORDS; i++)
        if (strcmp(name, keywords[i].name) == 0) return &keywords[i];
    return NULL;
}

static sheaf_err check_keyword(const struct keyword *kw, const json_t *v, const seg *at,
                               int depth, char *errstr, size_t errlen)
{
    switch (kw->shape) {
    case KW_TYPE: return check_type(v, at, errstr, errlen);
    case KW_PROPERTIES: return check_properties(v, at, depth, errstr, errlen);
    case KW_REQUIRED: return check_required(v, at, errstr, errlen);
    case KW_ENUM: return check_enum(v, at, errstr, errlen);
    case KW_ITEMS: {
        seg items = {at, "items", 0};
        return check_schema(v, &items, depth + 1, errstr, errlen);
    }
    case KW_BOOLEAN:
        if (!json_is_boolean(v))
            return fail(errstr, errlen, 1, at, "\"%s\" must be true or false", kw->name);
        return SHEAF_OK;
    case KW_COUNT:
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return fail(errstr, errlen, 1, at, "\"%s\" must be a non-negative integer",
                        kw->name);
        return SHEAF_OK;
    case KW_NUMBER:
        if (!json_is_number(v))
            return fail(errstr, errlen, 1, at, "\"%s\" must be a number", kw->name);
        return SHEAF_OK;
    case KW_STRING:
        if (!json_is_string(v))
            return fail(errstr, errlen, 1, at, "\"%s\" must be a string", kw->name);
        return SHEAF_OK;
    case KW_ANY: return SHEAF_OK;
    }
    return SHEAF_OK;
}

static sheaf_err check_schema(const json_t *s, const seg *at, int depth, char *errstr,
                              size_t errlen)
{
    const char *key;
    const json_t *v;
    sheaf_err err;

    if (depth > SHEAF_JSCHEMA_MAX_DEPTH)
        return fail(errstr, errlen, 1, at, "nested deeper than %d levels",
                    SHEAF_JSCHEMA_MAX_DEPTH);
    if (!json_is_object(s)) return fail(errstr, errlen, 1, at, "must be an object");
    json_object_foreach((json_t *)s, key, v) {
        const struct keyword *kw = find_keyword(key);
        if (!kw) {
            char buf[NAME_SHOWN + 4];
            return fail(errstr, errlen, 1, at, "unsupported keyword \"%s\"",
                        shown_name(key, buf));
        }
        err = check_keyword(kw, v, at, depth, errstr, errlen);
        if (err != SHEAF_OK) return err;
    }
    err = check_bounds(s, "minItems", "maxItems", at, errstr, errlen);
    if (err == SHEAF_OK) err = check_bounds(s, "minLength", "maxLength", at, errstr, errlen);
    if (err == SHEAF_OK) err = check_bounds(s, "minimum", "maximum", at, errstr, errlen);
    return err;
}

sheaf_err sheaf_jschema_check(const json_t *schema, char *errstr, size_t errlen)
{
    return check_schema(schema, NULL, 1, errstr, errlen);
}

/* ---- validate ------------------------------------------------------------- */

static sheaf_err validate_node(const json_t *s, const json_t *v, const seg *at, int depth,
                               char *errstr, size_t errlen);

/* Unicode code points in a UTF-8 string: bytes that do not continue one. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) count++;
    return count;
}

/* A count keyword's value, or -1 when absent or malformed. */
static json_int_t count_kw(const json_t *s, const char *name)
{
    const json_t *v = json_object_get(s, name);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? json_integer_value(v) : -1;
}

static sheaf_err validate_type(const json_t *t, const json_t *v, const seg *at, char *errstr,
                               size_t errlen)
{
    char want[128] = "";
    text w = {want, sizeof(want), 0};
    unsigned allowed = 0;
    size_t i;
    const json_t *e;

    if (json_is_string(t)) {
        allowed = type_bit(json_string_value(t));
        puts_(&w, json_string_value(t));
    } else if (json_is_array(t)) {
        json_array_foreach(t, i, e) {
            unsigned bit = json_is_string(e) ? type_bit(json_string_value(e)) : 0;
            if (!bit) continue;
            if (allowed) puts_(&w, " or ");
            puts_(&w, json_string_value(e));
            allowed |= bit;
        }
    }
    if (!allowed || (allowed & value_bits(v))) return SHEAF_OK; /* malformed: ignored */
    return fail(errstr, errlen, 0, at, "expected %s, got %s", want, sheaf_json_type_name(v));
}

static sheaf_err validate_enum(const json_t *en, const json_t *v, const seg *at, char *errstr,
                               size_t errlen)
{
    size_t i;
    const json_t *e;
    char buf[VALUE_SHOWN + 4];

    if (!json_is_array(en)) return SHEAF_OK;
    json_array_foreach(en, i, e) {
        if (json_equal(e, v)) return SHEAF_OK;
    }
    shown_value(v, buf);
    return fail(errstr, errlen, 0, at, "%s is not one of the allowed values", buf);
}

static sheaf_err validate_string(const json_t *s, const json_t *v, const seg *at,
                                 char *errstr, size_t errlen)
{
    size_t len = utf8_chars(json_string_value(v), json_string_length(v));
    json_int_t lo = count_kw(s, "minLength"), hi = count_kw(s, "maxLength");

    if (lo >= 0 && (json_int_t)len < lo)
        return fail(errstr, errlen, 0, at, "length %zu is less than minLength %" JSON_INTEGER_FORMAT,
                    len, lo);
    if (hi >= 0 && (json_int_t)len > hi)
        return fail(errstr, errlen, 0, at, "length %zu is more than maxLength %" JSON_INTEGER_FORMAT,
                    len, hi);
    return SHEAF_OK;
}

static sheaf_err validate_number(const json_t *s, const json_t *v, const seg *at,
                                 char *errstr, size_t errlen)
{
    const json_t *lo = json_object_get(s, "minimum"), *hi = json_object_get(s, "maximum");
    char vbuf[VALUE_SHOWN + 4], bbuf[VALUE_SHOWN + 4];

    if (json_is_number(lo) && sheaf_json_num_cmp(v, lo) < 0) {
        shown_value(v, vbuf);
        shown_value(lo, bbuf);
        return fail(errstr, errlen, 0, at, "%s is less than minimum %s", vbuf, bbuf);
    }
    if (json_is_number(hi) && sheaf_json_num_cmp(v, hi) > 0) {
        shown_value(v, vbuf);
        shown_value(hi, bbuf);
        return fail(errstr, errlen, 0, at, "%s is more than maximum %s", vbuf, bbuf);
    }
    return SHEAF_OK;
}

static sheaf_err validate_array(const json_t *s, const json_t *v, const seg *at, int depth,
                                char *errstr, size_t errlen)
{
    size_t n = json_array_size(v), i;
    json_int_t lo = count_kw(s, "minItems"), hi = count_kw(s, "maxItems");
    const json_t *items = json_object_get(s, "items"), *e;
    sheaf_err err;

    if (lo >= 0 && (json_int_t)n < lo)
        return fail(errstr, errlen, 0, at,
                    "%zu items, fewer than minItems %" JSON_INTEGER_FORMAT, n, lo);
    if (hi >= 0 && (json_int_t)n > hi)
        return fail(errstr, errlen, 0, at,
                    "%zu items, more than maxItems %" JSON_INTEGER_FORMAT, n, hi);
    if (!json_is_object(items)) return SHEAF_OK;
    json_array_foreach(v, i, e) {
        seg elem = {at, NULL, i};
        err = validate_node(items, e, &elem, depth + 1, errstr, errlen);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

static sheaf_err validate_object(const json_t *s, const json_t *v, const seg *at, int depth,
                                 char *errstr, size_t errlen)
{
    const json_t *req = json_object_get(s, "required");
    const json_t *props = json_object_get(s, "properties");
    const json_t *sub, *e;
    const char *name;
    char buf[NAME_SHOWN + 4];
    size_t i;
    sheaf_err err;

    if (json_is_array(req)) {
        json_array_foreach(req, i, e) {
            if (json_is_string(e) && !json_object_get(v, json_string_value(e)))
                return fail(errstr, errlen, 0, at, "missing required property \"%s\"",
                            shown_name(json_string_value(e), buf));
        }
    }
    if (json_is_false(json_object_get(s, "additionalProperties"))) {
        json_object_foreach((json_t *)v, name, sub) {
            if (!json_is_object(props) || !json_object_get(props, name))
                return fail(errstr, errlen, 0, at, "unexpected property \"%s\"",
                            shown_name(name, buf));
        }
    }
    if (!json_is_object(props)) return SHEAF_OK;
    json_object_foreach((json_t *)props, name, sub) {
        const json_t *pv = json_object_get(v, name);
        seg prop = {at, name, 0};
        if (!pv || !json_is_object(sub)) continue;
        err = validate_node(sub, pv, &prop, depth + 1, errstr, errlen);
        if (err != SHEAF_OK) return err;
    }
    return SHEAF_OK;
}

static sheaf_err validate_node(const json_t *s, const json_t *v, const seg *at, int depth,
                               char *errstr, size_t errlen)
{
    sheaf_err err;

    if (depth > SHEAF_JSCHEMA_MAX_DEPTH)
        return fail(errstr, errlen, 0, at, "nested deeper than %d levels",
                    SHEAF_JSCHEMA_MAX_DEPTH);
    if (!json_is_object(s)) return SHEAF_OK;
    err = validate_type(json_object_get(s, "type"), v, at, errstr, errlen);
    if (err == SHEAF_OK && json_object_get(s, "enum"))
        err = validate_enum(json_object_get(s, "enum"), v, at, errstr, errlen);
    if (err != SHEAF_OK) return err;
    switch (json_typeof(v)) {
    case JSON_STRING: return validate_string(s, v, at, errstr, errlen);
    case JSON_INTEGER:
    case JSON_REAL: return validate_number(s, v, at, errstr, errlen);
    case JSON_ARRAY: return validate_array(s, v, at, depth, errstr, errlen);
    case JSON_OBJECT: return validate_object(s, v, at, depth, errstr, errlen);
    default: return SHEAF_OK;
    }
}

sheaf_err sheaf_jschema_validate(const json_t *schema, const json_t *value, char *errstr,
                                 size_t errlen)
{
    if (!schema || !value) {
        sheaf_set_err(errstr, errlen, "%s", !schema ? "no schema" : "$: no value");
        return SHEAF_ERR_INVALID;
    }
    return validate_node(schema, value, NULL, 1, errstr, errlen);
}
