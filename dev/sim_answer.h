/* sim_answer.h - the LLM simulator's answers: which kind a request gets and
 * its deterministic content.
 *
 * Structured output (response_format) comes first: {"type":"json_object"}
 * answers {"summary": <extractive summary>}; {"type":"json_schema"} answers
 * an object with the schema's top-level properties, in their order, each
 * filled from "label lines" of the last user message U ("Total amount:
 * 1,234.50" for the property total_amount; see sim_answer.c for the rules
 * per type).  Otherwise the first system message picks a role of a
 * refinement chain: one containing "critic" or "critique" answers a
 * critique of the draft, or "DONE" once U's "Round: N" line reaches
 * critique_done_after; one containing "refine" or "editor" answers the
 * draft without its longest sentence.  Everything else gets the extractive
 * summary of U (sim_summary.h).  The content depends on the request alone.
 *
 * The invalid-JSON triggers of validate-and-retry tests live here too:
 * SHEAF_SIM_BAD_JSON in U makes every structured answer invalid JSON,
 * SHEAF_SIM_BAD_JSON_ONCE only the first of identical requests (a set of
 * seen request hashes). */
#ifndef SHEAF_SIM_ANSWER_H
#define SHEAF_SIM_ANSWER_H

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { SIM_FORMAT_TEXT, SIM_FORMAT_JSON_OBJECT, SIM_FORMAT_JSON_SCHEMA } sim_format_type;

/* A validated response_format. */
typedef struct sim_format {
    sim_format_type type;
    json_t *schema;            /* JSON_SCHEMA: json_schema.schema, borrowed */
} sim_format;

/* Validates a request's response_format (NULL or JSON null: plain text)
 * into *f.  On a bad shape writes a message naming the field into err and
 * returns it (for a 400); NULL when valid. */
const char *sim_format_parse(json_t *rf, sim_format *f, char *err, size_t errlen);

typedef enum { SIM_KIND_SUMMARY, SIM_KIND_JSON, SIM_KIND_CRITIQUE, SIM_KIND_REFINEMENT } sim_kind;

/* What the answer is made from. */
typedef struct sim_prompt {
    const char *user;          /* U, the last user message; NUL-terminated */
    size_t user_len;
    const char *system;        /* the first system message; NULL: none */
    size_t system_len;
    sim_format format;
    int summary_words;         /* word limit of extractive summaries */
    long long critique_done_after;
} sim_prompt;

/* Returns the malloc'd answer to p and sets *kind; NULL only when out of
 * memory.  The caller frees it. */
char *sim_answer(const sim_prompt *p, sim_kind *kind);

typedef enum { SIM_BAD_JSON_NONE, SIM_BAD_JSON_ONCE, SIM_BAD_JSON_ALWAYS } sim_bad_json;

/* Which invalid-JSON trigger text[0..len) holds: SHEAF_SIM_BAD_JSON
 * (always) wins over SHEAF_SIM_BAD_JSON_ONCE. */
sim_bad_json sim_bad_json_trigger(const char *text, size_t len);

/* The request hashes SHEAF_SIM_BAD_JSON_ONCE has answered badly: a ring of
 * SIM_SEEN_SLOTS, the oldest forgotten first, guarded by its own mutex. */
#define SIM_SEEN_SLOTS 4096
typedef struct sim_seen {
    pthread_mutex_t lock;
    uint64_t hash[SIM_SEEN_SLOTS];
    size_t used, next;
} sim_seen;

void sim_seen_init(sim_seen *seen);
void sim_seen_destroy(sim_seen *seen);
/* Forgets every hash. */
void sim_seen_clear(sim_seen *seen);
/* Remembers the FNV-1a 64 hash of the compact, key-sorted dump of messages;
 * returns 1 if it was not known before, 0 if it was, -1 when out of
 * memory. */
int sim_seen_first(sim_seen *seen, const json_t *messages);

#endif
