/* sheaf/merge.h - merging per-page-batch extraction records into one record
 * per document or per key.
 *
 * The map stage of a page-batch extraction pipeline returns one JSON object
 * per batch of pages.  The merge takes them in batch (page) order,
 *   [{"pages": [first, last], "data": {...}}, ...]
 * and returns records
 *   {"key": <key value or null>,
 *    "data": {merged fields, in first-seen order},
 *    "pages": {"<top-level field>": [sorted unique page numbers], ...},
 *    "page_range": [first, last]}
 * with deterministic rules, so the same batches always give byte-identical
 * records.  Batches are numbered from 1 in errors; pages are numbered from 1
 * (1 <= first <= last <= SHEAF_MERGE_MAX_PAGE).  Keys of a batch entry other
 * than "pages" and "data" are ignored.
 *
 * Empty values: null, "", [] and {} are empty; an empty value never changes
 * a field and never counts as a contribution.  A field that stays empty in
 * every batch keeps its first seen (empty) value and an empty pages list.
 *
 * Rules, looked up by dotted path ("totals.fees" for field "fees" inside
 * the object field "totals"):
 *   first  the first non-empty value (any type, taken whole); pages: the
 *          batch it came from.
 *   last   the last non-empty value; pages: the batch it came from.
 *   union  arrays concatenated in order, dropping elements equal (jansson
 *          json_equal) to one already kept, also within one batch; pages:
 *          every batch that added at least one new element.  A non-empty
 *          value that is not an array is an error.
 *   sum    the sum of the numbers; an integer while every value is an
 *          integer, else a real (an integer sum that would overflow is an
 *          error); pages: every batch holding a number.
 *   max, min  the greatest / least number (the first one seen keeps its
 *          form on a tie between 2 and 2.0); pages: every batch holding the
 *          winning value.
 * A non-number for sum/max/min is an error naming the batch, its pages and
 * the field: "batch 3 (pages 5-6): field \"fees\": sum needs numbers, got
 * string".
 * Without a rule, the first non-empty value of a field decides: a scalar
 * (string, number, boolean) is "first", an array is "union", an object is
 * merged field by field with the same defaults (its pages are those of its
 * fields).  A later non-empty value of another kind (say an array where
 * earlier batches had a string) is an error naming the field.
 * A rule whose path never occurs, or lies inside a field whose own rule
 * takes it whole, has no effect.
 *
 * Records: with spec->key NULL, one record holds every batch (none for no
 * batches).  Otherwise a batch whose data has a non-empty key value joins
 * the record of that value (json_equal), made on its first appearance;
 * records are in order of first appearance.  A batch without a key value
 * joins the record of the most recent batch that had one (continuation
 * pages of a statement often lack the account header); batches before any
 * key value form a record with "key": null, placed first.  page_range is
 * the least first page and the greatest last page of the record's batches. */
#ifndef SHEAF_MERGE_H
#define SHEAF_MERGE_H

#include <stddef.h>
#include <jansson.h>
#include "sheaf/error.h"

#define SHEAF_MERGE_MAX_PAGE 1000000

typedef struct sheaf_merge_spec {
    const char *key;     /* top-level field that identifies a record (e.g.
                          * "account_number"), or NULL: one record */
    const json_t *rules; /* object: field path -> "first" | "last" | "union" |
                          * "sum" | "max" | "min"; may be NULL */
} sheaf_merge_spec;

/* Checks the JSON form of a spec, {"key": "name", "rules": {"path": "rule"}}
 * (both optional; NULL is the empty spec).  Unknown keys, a key that is not
 * a non-empty string, rules that are not an object, a path with an empty
 * segment and unknown rule names fail naming the field:
 *   "merge.rules.total: unknown rule \"avg\" (expected first, last, union,
 *    sum, max or min)".
 * The struct form borrows from it: key = the "key" string, rules = the
 * "rules" object.  Returns SHEAF_OK or SHEAF_ERR_INVALID. */
sheaf_err sheaf_merge_check(const json_t *spec_json, char *errstr, size_t errlen);

/* Merges batches (see above).  Returns a new array of records (the caller
 * json_decrefs it; it shares nothing with batches) or NULL with errstr:
 * batches not an array, an entry that is not an object with "pages"
 * [first, last] and an object "data" (naming its number), bad rules in spec,
 * or a value a rule cannot take. */
json_t *sheaf_merge_records(const sheaf_merge_spec *spec, const json_t *batches, char *errstr,
                            size_t errlen);

#endif
