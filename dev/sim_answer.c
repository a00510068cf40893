/* sim_answer.c - the LLM simulator's answers.  See sim_answer.h for the
 * kinds; the rules of each are here.
 *
 * Label lines.  A property's label is its name with '_' read as ' '
 * ("total_amount" -> "total amount").  A label line of U starts, after
 * optional spaces, with the label or its singular (the label minus a final
 * 's'), case-insensitively, then optional spaces and ':'; its value is the
 * rest of the line, trimmed.  Per property type (a type array counts as
 * "string" when it holds it, else as its first type other than "null"):
 *   string   the first label line's value; else the enum value found
 *            earliest in U (case-insensitively; the first enum value if
 *            none is), else the summary of U when the name contains
 *            "summary", else null;
 *   number,  the first label line's value without ASCII letters, spaces,
 *   integer  commas, '$' and non-ASCII bytes (currency signs), which must
 *            then be a plain decimal ("EUR 1,234.50" -> 1234.5; "(12.00)"
 *            -> null); integer rounds; none or unparsable -> null;
 *   boolean  yes/true -> true, no/false -> false, else null;
 *   array    the values of all label lines, in order: strings when items
 *            are strings (or untyped), numbers when they are numbers or
 *            integers (unparsable values skipped); none -> [];
 *   other    null.
 * The object is dumped compactly, in the schema's property order.
 *
 * Refinement chain.  The draft is the text after U's first "Draft:" label
 * line (from the start of U when there is none) up to the next "Critique:"
 * label line or the end.  Sentences are sim_sentences()'s; the longest is
 * the one with most bytes, the first of equals.  A critique names it; a
 * refinement removes it (a draft of one sentence or none comes back as it
 * was, trimmed).  U's "Round: N" label line gives the round (none: 1). */
#include "sim_answer.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sheaf/buf.h"
#include "sheaf/util.h"
#include "sim_summary.h"

/* The largest integer a double holds exactly: bigger parsed numbers are
 * refused rather than rounded silently. */
#define EXACT_INT_MAX 9007199254740992.0
#define MAX_SCHEMA_NAME 64     /* OpenAI's limit on json_schema.name */

/* A piece of U. */
typedef struct text_span {
    const char *p;
    size_t len;
} text_span;

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c; }

/* Any whitespace: inside a line that leaves spaces, tabs and a CR. */
static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

static int is_letter(int c) { return lower(c) >= 'a' && lower(c) <= 'z'; }

static int same_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return 0;
    return 1;
}

/* The offset of the first case-insensitive occurrence of needle[0..n) in
 * s[0..len), or len when there is none (or needle is empty). */
static size_t find_ci(const char *s, size_t len, const char *needle, size_t n)
{
    if (n == 0) return len;
    for (size_t i = 0; i + n <= len; i++)
        if (same_ci(s + i, needle, n)) return i;
    return len;
}

static text_span trim(const char *p, size_t len)
{
    while (len > 0 && is_blank(*p)) p++, len--;
    while (len > 0 && is_blank(p[len - 1])) len--;
    return (text_span){p, len};
}

/* ---- label lines --------------------------------------------------------- */

/* If line starts with label[0..n) then optional spaces and ':', returns
 * where the value begins; else NULL. */
static const char *after_label(const char *line, const char *end, const char *label, size_t n)
{
    if (n == 0 || (size_t)(end - line) < n || !same_ci(line, label, n)) return NULL;
    line += n;
    while (line < end && is_blank(*line)) line++;
    return line < end && *line == ':' ? line + 1 : NULL;
}

/* Finds the next label line of label in text from *pos on, sets *value
 * (trimmed) and *line_start, and moves *pos to the next line; 0 when there
 * is no more. */
static int next_label_line(text_span text, size_t *pos, const char *label, text_span *value,
                           size_t *line_start)
{
    size_t n = strlen(label);
    /* The singular: "items" -> "item". */
    size_t singular = n > 1 && lower((unsigned char)label[n - 1]) == 's' ? n - 1 : 0;

    while (*pos < text.len) {
        const char *line = text.p + *pos;
        const char *nl = memchr(line, '\n', text.len - *pos);
        const char *end = nl ? nl : text.p + text.len;
        const char *start = line, *v;

        *line_start = *pos;
        *pos = (size_t)(end - text.p) + (nl ? 1 : 0);
        while (start < end && is_blank(*start)) start++;
        v = after_label(start, end, label, n);
        if (!v && singular) v = after_label(start, end, label, singular);
        if (v) {
            *value = trim(v, (size_t)(end - v));
            return 1;
        }
    }
    return 0;
}

/* "total_amount" -> "total amount", malloc'd; NULL when out of memory. */
static char *label_of(const char *name)
{
    char *label = strdup(name);
    for (char *c = label; c && *c; c++)
        if (*c == '_') *c = ' ';
    return label;
}

/* ---- values -------------------------------------------------------------- */

/* Parses value as a number once currency signs, letters, spaces and
 * thousands commas are gone; 0 when what is left is not a plain decimal
 * (an optional sign, digits, at most one '.', some digit). */
static int parse_number(text_span value, double *out)
{
    char buf[64];
    size_t n = 0;
    int digits = 0, dots = 0;

    for (size_t i = 0; i < value.len; i++) {
        unsigned char c = (unsigned char)value.p[i];
        if (c >= 0x80 || c == '$' || c == ',' || is_blank((char)c) || is_letter(c)) continue;
        if (n + 1 >= sizeof(buf)) return 0;
        if (c >= '0' && c <= '9') digits++;
        else if (c == '.') dots++;
        else if (!((c == '-' || c == '+') && n == 0)) return 0;
        buf[n++] = (char)c;
    }
    buf[n] = '\0';
    if (!digits || dots > 1) return 0;
    *out = strtod(buf, NULL);
    return isfinite(*out) && fabs(*out) <= EXACT_INT_MAX;
}

/* A number as JSON: an integer when it is one (or integer is asked for,
 * rounded), so "12" reads 12, not 12.0. */
static json_t *number_json(double d, int integer)
{
    if (integer) d = round(d);
    if (d == floor(d)) return json_integer((json_int_t)d);
    return json_real(d);
}

/* The JSON Schema type of prop: see the top comment for type arrays. */
static const char *type_of(const json_t *prop)
{
    json_t *t = json_object_get(prop, "type"), *v;
    const char *first = NULL;
    size_t i;

    if (json_is_string(t)) return json_string_value(t);
    json_array_foreach(t, i, v) {
        const char *name = json_string_value(v);
        if (!name) continue;
        if (strcmp(name, "string") == 0) return name;
        if (!first && strcmp(name, "null") != 0) first = name;
    }
    return first;
}

static int is_type(const char *type, const char *want) { return type && strcmp(type, want) == 0; }

/* The enum value found earliest in U (the first of equals in enum order),
 * else the first one; NULL (JSON null) for an empty enum. */
static json_t *enum_choice(const json_t *values, text_span u)
{
    json_t *v, *best = json_array_get(values, 0);
    size_t i, best_at = u.len;

    json_array_foreach(values, i, v) {
        if (!json_is_string(v)) continue;
        size_t at = find_ci(u.p, u.len, json_string_value(v), json_string_length(v));
        if (at < best_at) {
            best_at = at;
            best = v;
        }
    }
    return best ? json_deep_copy(best) : json_null();
}

static json_t *string_field(const sim_prompt *p, const json_t *prop, const char *name,
                            const char *label)
{
    text_span u = {p->user, p->user_len}, value;
    size_t pos = 0, line;
    json_t *values = json_object_get(prop, "enum");

    if (next_label_line(u, &pos, label, &value, &line)) return json_stringn(value.p, value.len);
    if (json_is_array(values)) return enum_choice(values, u);
    if (find_ci(name, strlen(name), "summary", 7) < strlen(name)) {
        char *summary = sim_summary(p->user, p->user_len, p->summary_words);
        json_t *j = summary ? json_string(summary) : NULL;
        free(summary);
        return j;
    }
    return json_null();
}

/* The first label line's value as a scalar of type (number, integer,
 * boolean); null when there is none or it does not read as one. */
static json_t *scalar_field(const sim_prompt *p, const char *type, const char *label)
{
    text_span u = {p->user, p->user_len}, value;
    size_t pos = 0, line;
    double d;

    if (!next_label_line(u, &pos, label, &value, &line)) return json_null();
    if (is_type(type, "boolean")) {
        if ((value.len == 3 && same_ci(value.p, "yes", 3)) ||
            (value.len == 4 && same_ci(value.p, "true", 4)))
            return json_true();
        if ((value.len == 2 && same_ci(value.p, "no", 2)) ||
            (value.len == 5 && same_ci(value.p, "false", 5)))
            return json_false();
        return json_null();
    }
    if (!parse_number(value, &d)) return json_null();
    return number_json(d, is_type(type, "integer"));
}

/* The values of all label lines, as strings or numbers by the items'
 * type; null for items of another type. */
static json_t *array_field(const sim_prompt *p, const json_t *prop, const char *label)
{
    text_span u = {p->user, p->user_len}, value;
    size_t pos = 0, line;
    const char *items = type_of(json_object_get(prop, "items"));
    int numbers = is_type(items, "number") || is_type(items, "integer");
    json_t *arr;

    if (items && !numbers && !is_type(items, "string")) return json_null();
    arr = json_array();
    while (arr && next_label_line(u, &pos, label, &value, &line)) {
        double d;
        json_t *item = NULL;
        if (!numbers) item = json_stringn(value.p, value.len);
        else if (parse_number(value, &d)) item = number_json(d, is_type(items, "integer"));
        else continue; /* an unparsable number is left out */
        if (json_array_append_new(arr, item) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

/* The value of one property; NULL when out of memory. */
static json_t *field_value(const sim_prompt *p, const char *name, const json_t *prop)
{
    const char *type = type_of(prop);
    char *label = label_of(name);
    json_t *v;

    if (!label) return NULL;
    if (is_type(type, "string")) v = string_field(p, prop, name, label);
    else if (is_type(type, "number") || is_type(type, "integer") || is_type(type, "boolean"))
        v = scalar_field(p, type, label);
    else if (is_type(type, "array")) v = array_field(p, prop, label);
    else v = json_null();
    free(label);
    return v;
}

/* Dumps j (a reference is stolen) compactly in its own key order;
 * 15 digits, so 1234.5 reads 1234.5. */
static char *dump_answer(json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15))
                   : NULL;
    json_decref(j);
    return text;
}

static char *structured_answer(const sim_prompt *p)
{
    json_t *obj = json_object(), *prop;
    const char *name;

    if (p->format.type == SIM_FORMAT_JSON_OBJECT) {
        char *summary = sim_summary(p->user, p->user_len, p->summary_words);
        if (!obj || !summary || json_object_set_new(obj, "summary", json_string(summary)) != 0) {
            json_decref(obj);
            obj = NULL;
        }
        free(summary);
        return dump_answer(obj);
    }
    json_object_foreach(json_object_get(p->format.schema, "properties"), name, prop) {
        if (!obj) break;
        if (json_object_set_new(obj, name, field_value(p, name, prop)) != 0) {
            json_decref(obj);
            obj = NULL;
        }
    }
    return dump_answer(obj);
}

/* ---- refinement chain ---------------------------------------------------- */

/* The draft: see the top comment. */
static text_span draft_of(text_span u)
{
    text_span value, rest = u;
    size_t pos = 0, line;

    if (next_label_line(u, &pos, "draft", &value, &line)) {
        /* The draft begins with what follows "Draft:" on its own line. */
        rest.p = value.p;
        rest.len = u.len - (size_t)(value.p - u.p);
    }
    pos = 0;
    if (next_label_line(rest, &pos, "critique", &value, &line)) rest.len = line;
    return rest;
}

/* The index of the longest sentence (most bytes, first of equals). */
static size_t longest(const sim_span *spans, size_t count)
{
    size_t best = 0;
    for (size_t i = 1; i < count; i++)
        if (spans[i].len > spans[best].len) best = i;
    return best;
}

/* U's round: the integer its "Round:" line begins with; 1 without one. */
static long long round_of(text_span u)
{
    text_span value;
    size_t pos = 0, line;
    char buf[32], *end;

    if (!next_label_line(u, &pos, "round", &value, &line) || value.len >= sizeof(buf)) return 1;
    memcpy(buf, value.p, value.len);
    buf[value.len] = '\0';
    long long n = strtoll(buf, &end, 10);
    return end == buf ? 1 : n;
}

static char *critique_answer(const sim_prompt *p)
{
    text_span u = {p->user, p->user_len}, draft = draft_of(u);
    long long round = round_of(u);
    sim_span *spans = NULL;
    size_t count = 0;
    char *joined = NULL, *text = NULL;
    sheaf_buf out;

    if (round >= p->critique_done_after) return strdup("DONE");
    if (sim_sentences(draft.p, draft.len, &joined, &spans, &count) != 0) return NULL;
    sheaf_buf_init(&out, p->user_len + 128);
    const sim_span *s = count ? &spans[longest(spans, count)] : NULL;
    if (sheaf_buf_appendf(&out, "Round %lld: shorten the longest sentence: \"%.*s\"", round,
                          s ? (int)s->len : 0, s ? joined + s->off : "") == SHEAF_OK)
        text = sheaf_buf_steal(&out);
    sheaf_buf_free(&out);
    free(joined);
    free(spans);
    return text;
}

static char *refine_answer(const sim_prompt *p)
{
    text_span draft = draft_of((text_span){p->user, p->user_len});
    sim_span *spans = NULL;
    size_t count = 0;
    char *joined = NULL, *text = NULL;
    sheaf_buf out;

    if (sim_sentences(draft.p, draft.len, &joined, &spans, &count) != 0) return NULL;
    if (count <= 1) {
        /* Nothing left to take out: the draft as it came. */
        draft = trim(draft.p, draft.len);
        text = strndup(draft.p, draft.len);
        goto out;
    }
    sheaf_buf_init(&out, p->user_len + 1);
    size_t drop = longest(spans, count);
    for (size_t i = 0; i < count; i++) {
        if (i == drop) continue;
        if ((out.len && sheaf_buf_append(&out, " ", 1) != SHEAF_OK) ||
            sheaf_buf_append(&out, joined + spans[i].off, spans[i].len) != SHEAF_OK)
            goto out_buf;
    }
    text = sheaf_buf_steal(&out);
out_buf:
    sheaf_buf_free(&out);
out:
    free(joined);
    free(spans);
    return text;
}

/* ---- entry points -------------------------------------------------------- */

/* FNV-1a, 64 bits, continued from h. */
static uint64_t fnv1a(uint64_t h, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* Appends " (sim:XXXXXX)" to a summary answer: 24 bits of a hash of the
 * instructions it was given, the system message and the user message's
 * text outside its <text> sections (the system message alone when there
 * are none: then the whole user message is the source).  A real model's
 * answer changes when its instructions do; so does this one's, and a
 * prompt change shows in `sheaf diff`.  Takes and returns answer (NULL
 * stays NULL; on no memory the answer is freed and NULL returned). */
static char *mark_instructions(char *answer, const sim_prompt *p)
{
    uint64_t h = 14695981039346656037ULL;
    const char *u = p->user;
    size_t len = p->user_len, pos = 0;
    if (!answer) return NULL;
    if (p->system) h = fnv1a(h, p->system, p->system_len);
    h = fnv1a(h, "\n", 1);
    while (find_ci(u, len, "<text>", 6) < len && pos < len) {
        size_t open = find_ci(u + pos, len - pos, "<text>", 6) + pos;
        h = fnv1a(h, u + pos, open - pos);
        if (open >= len) break;
        size_t after = open + 6;
        size_t close = find_ci(u + after, len - after, "</text>", 7) + after;
        if (close >= len) break; /* unclosed: the rest is text */
        pos = close + 7;
    }
    size_t n = strlen(answer);
    char *out = realloc(answer, n + SIM_TAG_LEN + 2);
    if (!out) {
        free(answer);
        return NULL;
    }
    snprintf(out + n, SIM_TAG_LEN + 2, "%s(sim:%06x)", n ? " " : "", (unsigned)(h & 0xffffff));
    return out;
}

/* What precedes a JSON schema in a system prompt that carries one. */
#define SCHEMA_MARKER "matches this JSON schema: "

char *sim_answer(const sim_prompt *p, sim_kind *kind)
{
    const char *sys = p->system ? p->system : "";

    if (p->format.type != SIM_FORMAT_TEXT) {
        *kind = SIM_KIND_JSON;
        return structured_answer(p);
    }
    /* A model told the schema in its instructions (sheaf's
     * llm.structured_output=prompt) answers as if it had been given
     * response_format. */
    size_t at = find_ci(sys, p->system_len, SCHEMA_MARKER, sizeof(SCHEMA_MARKER) - 1);
    if (at < p->system_len) {
        size_t from = at + sizeof(SCHEMA_MARKER) - 1;
        json_t *schema = json_loadb(sys + from, p->system_len - from, JSON_DISABLE_EOF_CHECK, NULL);
        if (json_is_object(json_object_get(schema, "properties"))) {
            sim_prompt q = *p;
            q.format.type = SIM_FORMAT_JSON_SCHEMA;
            q.format.schema = schema;
            char *answer = structured_answer(&q);
            json_decref(schema);
            *kind = SIM_KIND_JSON;
            return answer;
        }
        json_decref(schema);
    }
    /* The editor is looked for first: its prompt usually mentions "the
     * critique" it applies, while a critic's rarely says "editor".
     * ("critique" does not contain "critic": both are looked for.) */
    if (find_ci(sys, p->system_len, "refine", 6) < p->system_len ||
        find_ci(sys, p->system_len, "editor", 6) < p->system_len) {
        *kind = SIM_KIND_REFINEMENT;
        return refine_answer(p);
    }
    if (find_ci(sys, p->system_len, "critic", 6) < p->system_len ||
        find_ci(sys, p->system_len, "critique", 8) < p->system_len) {
        *kind = SIM_KIND_CRITIQUE;
        return critique_answer(p);
    }
    *kind = SIM_KIND_SUMMARY;
    return mark_instructions(sim_summary(p->user, p->user_len, p->summary_words), p);
}

/* Fills err and returns it: the error of sim_format_parse. */
static const char *format_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static const char *format_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return err;
}

/* OpenAI's rule for json_schema.name: 1..64 of [A-Za-z0-9_-]. */
static int schema_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > MAX_SCHEMA_NAME) return 0;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

static const char *parse_json_schema(json_t *js, sim_format *f, char *err, size_t errlen)
{
    json_t *name = json_object_get(js, "name"), *strict = json_object_get(js, "strict");
    json_t *schema = json_object_get(js, "schema"), *props, *prop;
    const char *key;

    if (!json_is_object(js))
        return format_error(err, errlen, "response_format.json_schema must be an object");
    if (!json_is_string(name) || !schema_name_valid(json_string_value(name)))
        return format_error(err, errlen,
                            "response_format.json_schema.name must be a string of 1 to 64 "
                            "letters, digits, '_' or '-'");
    if (strict && !json_is_boolean(strict) && !json_is_null(strict))
        return format_error(err, errlen, "response_format.json_schema.strict must be a boolean");
    if (!json_is_object(schema))
        return format_error(err, errlen, "response_format.json_schema.schema must be an object");
    if (!is_type(json_string_value(json_object_get(schema, "type")), "object"))
        return format_error(err, errlen,
                            "response_format.json_schema.schema.type must be \"object\"");
    props = json_object_get(schema, "properties");
    if (props && !json_is_object(props))
        return format_error(err, errlen,
                            "response_format.json_schema.schema.properties must be an object");
    json_object_foreach(props, key, prop) {
        if (!json_is_object(prop))
            return format_error(err, errlen,
                                "response_format.json_schema.schema.properties.%s must be an "
                                "object (a schema)",
                                key);
    }
    f->type = SIM_FORMAT_JSON_SCHEMA;
    f->schema = schema;
    return NULL;
}

const char *sim_format_parse(json_t *rf, sim_format *f, char *err, size_t errlen)
{
    const char *type;

    f->type = SIM_FORMAT_TEXT;
    f->schema = NULL;
    if (!rf || json_is_null(rf)) return NULL;
    if (!json_is_object(rf)) return format_error(err, errlen, "response_format must be an object");
    type = json_string_value(json_object_get(rf, "type"));
    if (is_type(type, "text")) return NULL;
    if (is_type(type, "json_object")) {
        f->type = SIM_FORMAT_JSON_OBJECT;
        return NULL;
    }
    if (is_type(type, "json_schema"))
        return parse_json_schema(json_object_get(rf, "json_schema"), f, err, errlen);
    return format_error(err, errlen,
                        "response_format.type must be one of \"text\", \"json_object\", "
                        "\"json_schema\"");
}

sim_bad_json sim_bad_json_trigger(const char *text, size_t len)
{
    static const char trigger[] = "SHEAF_SIM_BAD_JSON", once[] = "_ONCE";
    const size_t n = sizeof(trigger) - 1, m = sizeof(once) - 1;
    sim_bad_json found = SIM_BAD_JSON_NONE;

    /* Case-sensitive, like the other SHEAF_SIM_ triggers. */
    for (size_t i = 0; i + n <= len; i++) {
        if (text[i] != 'S' || memcmp(text + i, trigger, n) != 0) continue;
        if (len - (i + n) < m || memcmp(text + i + n, once, m) != 0) return SIM_BAD_JSON_ALWAYS;
        found = SIM_BAD_JSON_ONCE;
    }
    return found;
}

void sim_seen_init(sim_seen *seen)
{
    memset(seen, 0, sizeof(*seen));
    pthread_mutex_init(&seen->lock, NULL);
}

void sim_seen_destroy(sim_seen *seen) { pthread_mutex_destroy(&seen->lock); }

void sim_seen_clear(sim_seen *seen)
{
    pthread_mutex_lock(&seen->lock);
    seen->used = seen->next = 0;
    pthread_mutex_unlock(&seen->lock);
}

int sim_seen_first(sim_seen *seen, const json_t *messages)
{
    /* Sorted keys: the same messages are the same request whatever order
     * a client writes their fields in. */
    char *dump = json_dumps(messages, JSON_COMPACT | JSON_SORT_KEYS);
    int first = 1;

    if (!dump) return -1;
    uint64_t h = sheaf_fnv1a64(dump, strlen(dump));
    free(dump);
    pthread_mutex_lock(&seen->lock);
    for (size_t i = 0; i < seen->used && first; i++) first = seen->hash[i] != h;
    if (first) {
        seen->hash[seen->next] = h;
        seen->next = (seen->next + 1) % SIM_SEEN_SLOTS;
        if (seen->used < SIM_SEEN_SLOTS) seen->used++;
    }
    pthread_mutex_unlock(&seen->lock);
    return first;
}
