/* sheaf/cost.h - turning token counts into money with a price table.
 *
 * cost.prices lists "model=input/output" pairs separated by ';', prices per
 * million tokens in cost.currency, e.g.
 *   "gpt-4o-mini=0.15/0.60; gpt-4o=2.50/10.00"
 * A model with no price has no cost (reported as unknown, never as 0). */
#ifndef SHEAF_COST_H
#define SHEAF_COST_H

#include <stddef.h>
#include <stdint.h>
#include "sheaf/error.h"

#define SHEAF_MAX_PRICES 64

typedef struct sheaf_price {
    char model[128];
    double input_per_m, output_per_m;
} sheaf_price;

typedef struct sheaf_price_table {
    sheaf_price v[SHEAF_MAX_PRICES];
    size_t n;
} sheaf_price_table;

/* Parses spec ("" = no prices).  Errors name the entry:
 * "cost.prices: entry 2 (\"gpt-4o=abc\"): expected model=input/output". */
sheaf_err sheaf_price_table_parse(const char *spec, sheaf_price_table *t, char *errstr,
                                  size_t errlen);
/* The cost of the tokens with model's prices; 0 with *known = 0 when the
 * model has no price. */
double sheaf_cost_of(const sheaf_price_table *t, const char *model, uint64_t prompt_tokens,
                     uint64_t completion_tokens, int *known);

#endif
