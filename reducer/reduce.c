/* reduce.c - the reducer's LLM reductions, as state machines on the loop:
 * rendering, the call cache, running several calls at once, and
 * progressive reduction under a token budget.
 *
 *   RENDER (everything under one prompt) --fits--> CALLING (one call) -> done
 *      | over the budget
 *      v
 *   LEVEL: pack into groups that fit, CALLING (all at once) -> RENDER again
 *   each call: cache lookup --hit--> its answer, zero usage
 *                  | miss
 *                  v
 *              the engine (retries, breaker, fleet limiter) -> cache store
 *
 * The next level starts when the whole level is in, because its groups are
 * made of the previous level's results in order; the calls of one level
 * run concurrently, and so do the reductions of every entry in flight.
 *
 * The budget is the stage's window less its answer, or budget_tokens when
 * smaller (sheaf_stage_prompt_budget), so every call fits the model; the
 * packing rule is sheaf/plan.h's, shared with the dry run's plan.  Budgets
 * are checked on the real rendered prompt (system plus user, each
 * estimated with sheaf_estimate_tokens, the estimate the LLM simulator also
 * reports), never on a guess: packing uses additive estimates to pick a
 * group, then the group's prompt is rendered and shrunk until it fits.
 *
 * The call cache (sheaf/cache.h): each call that may be cached is looked
 * up before it is submitted, under the hash of the very request the engine
 * would get; a hit fills its result with zero usage and costs no call, a
 * miss is submitted and its answer stored once it came back.  Hits and
 * misses are counted against the entry's job.
 *
 * Failures: a call refused for good (4xx, an unusable answer) is the
 * result's error, recorded with it; a transient one after every attempt
 * (SHEAF_ERR_LLM_RETRY), or a fleet condition (a refused key, an unknown
 * model: /health says what to fix), decides nothing and the entry is tried
 * again later; SHEAF_ERR_STOPPED at shutdown or once the entry's lease is
 * lost (no new level is started for an entry that is not ours). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reducer.h"
#include "sheaf/buf.h"
#include "sheaf/cache.h"
#include "sheaf/log.h"
#include "sheaf/plan.h"
#include "sheaf/util.h"

#define PROMPT_CAP ((size_t)64 << 20)

/* ---- variables ---- */

void rvars_set(rvars *v, const char *name, const char *value)
{
    for (size_t i = 0; i < v->n; i++) {
        if (strcmp(v->name[i], name) == 0) {
            v->value[i] = value;
            return;
        }
    }
    if (v->n < RVARS_MAX) {
        v->name[v->n] = name;
        v->value[v->n++] = value;
    }
}

static const char *rvars_lookup(const char *name, size_t len, void *ud, size_t *out_len)
{
    const rvars *v = ud;
    const char *s = NULL;
    for (size_t i = 0; i < v->n && !s; i++)
        if (strlen(v->name[i]) == len && memcmp(v->name[i], name, len) == 0) s = v->value[i];
    if (!s && len > 5 && memcmp(name, "meta.", 5) == 0) {
        /* Any key length validation accepts renders, as in the worker. */
        s = json_string_value(json_object_getn(v->meta, name + 5, len - 5));
        if (!s) s = ""; /* a missing metadata field renders empty */
    }
    if (s) *out_len = strlen(s);
    return s;
}

void stage_result_clear(stage_result *res)
{
    free(res->text);
    free(res->error);
    memset(res, 0, sizeof(*res));
}

/* ---- rendering ---- */

typedef struct prompt {
    sheaf_buf system, user;
    uint32_t tokens;             /* estimate of system + user */
} prompt;

static void prompt_free(prompt *p)
{
    sheaf_buf_free(&p->system);
    sheaf_buf_free(&p->user);
}

static sheaf_err render(const sheaf_stage *st, const rvars *vars, prompt *p, char *errstr,
                        size_t errlen)
{
    sheaf_err err;
    memset(p, 0, sizeof(*p));
    sheaf_buf_init(&p->system, PROMPT_CAP);
    sheaf_buf_init(&p->user, PROMPT_CAP);
    if ((err = sheaf_prompt_render(st->system, rvars_lookup, (void *)vars, &p->system, errstr,
                                   errlen)) ||
        (err = sheaf_prompt_render(st->user, rvars_lookup, (void *)vars, &p->user, errstr,
                                   errlen)))
        return err;
    p->tokens = sheaf_estimate_tokens(p->system.data ? p->system.data : "", p->system.len) +
                sheaf_estimate_tokens(p->user.data ? p->user.data : "", p->user.len);
    return SHEAF_OK;
}

/* Joins texts[from..to) with blank lines (malloc'd). */
static char *join(char *const *texts, size_t from, size_t to)
{
    sheaf_buf b;
    sheaf_buf_init(&b, PROMPT_CAP);
    for (size_t i = from; i < to; i++) {
        if (i > from && sheaf_buf_appends(&b, "\n\n") != SHEAF_OK) break;
        if (sheaf_buf_appends(&b, texts[i]) != SHEAF_OK) break;
    }
    if (!b.data) return strdup("");
    return b.data; /* the buffer's storage is handed over */
}

/* ---- the state machine ---- */

typedef struct rop rop;

typedef struct rcall {
    rop *op;
    prompt p;
    char *joined;                /* its inputs, joined (owned) */
    char cache_key[SHEAF_CACHE_KEY_SIZE]; /* "" when not cached or a hit */
    char *body;                  /* hashed for the key, sent on a miss (owned) */
    stage_result res;
    sheaf_err err;
    char errstr[SHEAF_ERRSTR_SIZE];
    long http_status;            /* the last one seen */
    sheaf_llm_usage usage;       /* of this call's answer (what the cache stores) */
} rcall;

struct rop {
    rentry *e;
    const char *name;
    sheaf_stage st;              /* borrows the strings; budget_tokens is what bounds calls */
    rvars vars;
    const char *input_var;       /* NULL: a single call (reduce_call) */
    char **cur;                  /* the texts of this level (owned) */
    size_t n;
    int level;
    char lvl[16];
    json_t *levels;
    stage_result res;
    rcall *calls;
    size_t n_calls, open;
    int final;                   /* the calls under way are the last */
    reduce_done_fn done;
    void *ud;
};

static void op_free(rop *op)
{
    for (size_t i = 0; i < op->n_calls; i++) {
        prompt_free(&op->calls[i].p);
        free(op->calls[i].joined);
        free(op->calls[i].body);
        stage_result_clear(&op->calls[i].res);
    }
    free(op->calls);
    op->calls = NULL;
    op->n_calls = 0;
}

static void op_end(rop *op, sheaf_err err)
{
    rentry *e = op->e;
    op_free(op);
    for (size_t i = 0; i < op->n; i++) free(op->cur[i]);
    free(op->cur);
    if (entry_back(e)) op->done(e, op->ud, err, &op->res, op->levels);
    stage_result_clear(&op->res);
    json_decref(op->levels);
    free(op);
}

/* A permanent failure of the reduction: its result's error, "<name><sep><what>". */
static void op_fail(rop *op, const char *sep, const char *what)
{
    char msg[SHEAF_ERRSTR_SIZE + 64];
    snprintf(msg, sizeof(msg), "%s%s%s", op->name, sep, what);
    if (!op->res.error) op->res.error = strdup(msg);
    op_end(op, SHEAF_OK);
}

static void op_next(rop *op);

/* Every call of the batch is in. */
static void calls_in(rop *op)
{
    sheaf_runtime *rt = op->e->r->rt;
    sheaf_err ret = SHEAF_OK;
    char cause[384];

    for (size_t i = 0; i < op->n_calls; i++) {
        rcall *c = &op->calls[i];
        if (c->err == SHEAF_OK) {
            if (rt->fleet_cause[0]) {
                sheaf_info("reducer", "the LLM endpoint answers again (%s)", rt->fleet_cause);
                rt->fleet_cause[0] = '\0';
            }
        } else if (c->err == SHEAF_ERR_STOPPED) {
            ret = SHEAF_ERR_STOPPED;
        } else if (c->err == SHEAF_ERR_LLM_RETRY) {
            /* Transient (429 storm, 5xx, timeouts) even after every
             * attempt: not the item's fault, so nothing is recorded; the
             * entry stays pending and is claimed again later. */
            sheaf_warn("reducer", "job %s: %s call failed, will retry later: %s", op->e->job,
                       op->name, c->errstr);
            if (ret == SHEAF_OK) ret = SHEAF_ERR_LLM_RETRY;
        } else if (c->err == SHEAF_ERR_LLM_FATAL &&
                   sheaf_llm_fleet_cause(c->http_status, c->errstr, cause, sizeof(cause))) {
            /* Not the item's fault either: /health says what to fix. */
            if (strcmp(rt->fleet_cause, cause) != 0)
                sheaf_error("reducer", "%s call: %s", op->name, cause);
            snprintf(rt->fleet_cause, sizeof(rt->fleet_cause), "%s", cause);
            if (ret == SHEAF_OK) ret = SHEAF_ERR_LLM_RETRY;
        } else {
            char msg[SHEAF_ERRSTR_SIZE + 64];
            snprintf(msg, sizeof(msg), "%s call failed: %s", op->name, c->errstr);
            c->res.error = strdup(msg);
        }
    }
    if (ret != SHEAF_OK) {
        op_end(op, ret);
        return;
    }
    if (op->final) {
        rcall *c = &op->calls[0];
        op->res.usage.prompt_tokens += c->res.usage.prompt_tokens;
        op->res.usage.completion_tokens += c->res.usage.completion_tokens;
        op->res.text = c->res.text;
        c->res.text = NULL;
        if (!op->res.error) {
            op->res.error = c->res.error;
            c->res.error = NULL;
        }
        op_end(op, SHEAF_OK);
        return;
    }
    json_t *lv = json_array();
    for (size_t g = 0; g < op->n_calls; g++) {
        rcall *c = &op->calls[g];
        op->res.usage.prompt_tokens += c->res.usage.prompt_tokens;
        op->res.usage.completion_tokens += c->res.usage.completion_tokens;
        if (c->res.error && !op->res.error) op->res.error = strdup(c->res.error);
        json_array_append_new(lv, json_string(c->res.text ? c->res.text : ""));
    }
    json_array_append_new(op->levels, lv);
    if (op->res.error) {
        op_end(op, SHEAF_OK);
        return;
    }
    for (size_t k = 0; k < op->n; k++) free(op->cur[k]);
    for (size_t g = 0; g < op->n_calls; g++) {
        op->cur[g] = op->calls[g].res.text;
        op->calls[g].res.text = NULL;
    }
    op->n = op->n_calls;
    op_free(op);
    op_next(op);
}

static void call_in(rcall *c)
{
    rop *op = c->op;
    if (--op->open == 0) calls_in(op);
}

static void on_answer(void *ud, sheaf_err err, sheaf_llm_result *llm, const char *errstr)
{
    rcall *c = ud;
    rop *op = c->op;
    c->err = err;
    c->http_status = llm ? llm->http_status : 0;
    snprintf(c->errstr, sizeof(c->errstr), "%s", errstr);
    if (err == SHEAF_OK) {
        c->res.text = llm->content; /* taken from the engine */
        llm->content = NULL;
        c->res.usage.prompt_tokens += llm->usage.prompt_tokens;
        c->res.usage.completion_tokens += llm->usage.completion_tokens;
        c->usage = llm->usage;
        /* An answer from the provider: kept for the next identical call. */
        if (c->cache_key[0] && c->res.text)
            sheaf_cache_put_async(op->e->r->rt->redis, &op->e->r->cfg, c->cache_key, c->res.text,
                                  &c->usage);
    }
    call_in(c);
}

static sheaf_llm_request call_request(rcall *c, sheaf_llm_message msgs[2])
{
    const sheaf_stage *st = &c->op->st;
    size_t m = 0;
    if (c->p.system.len) msgs[m++] = (sheaf_llm_message){"system", c->p.system.data};
    msgs[m++] = (sheaf_llm_message){"user", c->p.user.data ? c->p.user.data : ""};
    return (sheaf_llm_request){.model = st->model, .temperature = st->temperature,
                               .max_tokens = st->max_tokens, .messages = msgs, .n_messages = m};
}

static void call_submit(rcall *c)
{
    const sheaf_stage *st = &c->op->st;
    sheaf_llm_message msgs[2];
    sheaf_llm_request req = call_request(c, msgs);
    uint64_t est = (uint64_t)c->p.tokens + (uint64_t)(st->max_tokens > 0 ? st->max_tokens : 0);
    char *body = c->body; /* the engine's from here */
    c->body = NULL;
    if (sheaf_llm_async_submit_body(c->op->e->r->rt->llm, &req, body,
                                    est > UINT32_MAX ? UINT32_MAX : (uint32_t)est, on_answer,
                                    c) != SHEAF_OK) {
        c->err = SHEAF_ERR_LLM_RETRY;
        snprintf(c->errstr, sizeof(c->errstr), "out of memory submitting the call");
        call_in(c);
    }
}

static void on_cached(void *ud, int hit, char **content, const sheaf_llm_usage *saved,
                      const char *errstr)
{
    rcall *c = ud;
    rop *op = c->op;
    sheaf_runtime *rt = op->e->r->rt;
    if (errstr && errstr[0])
        sheaf_warn("reducer", "%s call: %s; calling the LLM", op->name, errstr);
    sheaf_cache_count_async(rt->redis, op->e->job, hit, saved);
    sheaf_metric_inc(hit ? rt->llm_met.cache_hits : rt->llm_met.cache_misses);
    if (!hit) {
        call_submit(c); /* cache_key stays set: the answer is stored */
        return;
    }
    c->cache_key[0] = '\0'; /* nothing to store */
    free(c->body);
    c->body = NULL;
    c->res.text = *content; /* handed over to the result */
    *content = NULL;
    c->err = SHEAF_OK;
    call_in(c);
}

/* Starts the batch of calls in op->calls (rendered). */
static void calls_start(rop *op)
{
    sheaf_runtime *rt = op->e->r->rt;
    /* The last call may end (a failed submit) and op with it: n is ours. */
    size_t n = op->n_calls;
    op->open = n;
    for (size_t i = 0; i < n; i++) {
        rcall *c = &op->calls[i];
        sheaf_llm_message msgs[2];
        c->op = op;
        sheaf_llm_request req = call_request(c, msgs);
        /* The key hashes the body that is sent: made once. */
        if (sheaf_cache_usable(&op->e->r->cfg, &req) && (c->body = sheaf_llm_request_json(&req)) &&
            sheaf_cache_key_body(op->e->r->cfg.llm_base_url, c->body, strlen(c->body),
                                 c->cache_key) == SHEAF_OK) {
            sheaf_cache_get_async(rt->redis, c->cache_key, on_cached, c);
        } else {
            c->cache_key[0] = '\0';
            call_submit(c);
        }
    }
}

/* Renders texts[from..to) joined under the input variable into c. */
static sheaf_err render_group(rop *op, size_t from, size_t to, rcall *c, char *errstr,
                              size_t errlen)
{
    if (!(c->joined = join(op->cur, from, to))) return SHEAF_ERR_NOMEM;
    rvars_set(&op->vars, op->input_var, c->joined);
    return render(&op->st, &op->vars, &c->p, errstr, errlen);
}

static int calls_alloc(rop *op, size_t n)
{
    if (!(op->calls = calloc(n ? n : 1, sizeof(*op->calls)))) return -1;
    op->n_calls = 0;
    return 0;
}

/* One level: packs the texts into groups that fit and starts them. */
static void level_start(rop *op)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    const sheaf_stage *st = &op->st;
    uint32_t *sizes = calloc(op->n, sizeof(*sizes));
    size_t i = 0, overhead;
    rcall empty;

    memset(&empty, 0, sizeof(empty));
    if (!sizes || calls_alloc(op, op->n) != 0) {
        free(sizes);
        op_fail(op, ": ", "out of memory");
        return;
    }
    for (size_t k = 0; k < op->n; k++) sizes[k] = sheaf_estimate_tokens(op->cur[k], strlen(op->cur[k]));
    snprintf(op->lvl, sizeof(op->lvl), "%d", ++op->level);
    rvars_set(&op->vars, "level", op->lvl);
    /* The prompt with no input at all: what every group pays. */
    sheaf_err err = render_group(op, 0, 0, &empty, errstr, sizeof(errstr));
    overhead = empty.p.tokens;
    prompt_free(&empty.p);
    free(empty.joined);
    if (err != SHEAF_OK) goto fail;
    while (i < op->n) {
        /* Additive estimate first (sheaf/plan.h)... */
        size_t j = sheaf_pack_next(sizes, i, op->n, overhead, (uint64_t)st->budget_tokens,
                                   (size_t)st->group_size);
        rcall *c = &op->calls[op->n_calls];
        /* ...then the real prompt, shrunk until it fits. */
        for (;;) {
            err = render_group(op, i, j, c, errstr, sizeof(errstr));
            op->n_calls++; /* owns what render_group made, for op_free */
            if (err != SHEAF_OK) goto fail;
            if (c->p.tokens <= (uint32_t)st->budget_tokens) break;
            if (j - i == 1) {
                snprintf(errstr, sizeof(errstr), "input %zu alone makes a %u-token prompt, over "
                         "the prompt budget %d", i + 1, c->p.tokens, st->budget_tokens);
                goto fail;
            }
            op->n_calls--;
            prompt_free(&c->p);
            free(c->joined);
            memset(c, 0, sizeof(*c));
            j--;
        }
        i = j;
    }
    free(sizes);
    sizes = NULL;
    if (op->n_calls == op->n) {
        snprintf(errstr, sizeof(errstr), "no two inputs fit the prompt budget %d together: "
                 "the reduction cannot make progress", st->budget_tokens);
        goto fail;
    }
    sheaf_info("reducer", "job %s: %s: level %d reduces %zu inputs in %zu calls", op->e->job,
               op->name, op->level, op->n, op->n_calls);
    op->final = 0;
    calls_start(op);
    return;
fail:
    free(sizes);
    op_fail(op, ": ", errstr);
}

/* Everything under one prompt: the last call when it fits, else a level. */
static void op_next(rop *op)
{
    char errstr[SHEAF_ERRSTR_SIZE] = "";
    const sheaf_stage *st = &op->st;
    sheaf_err err;
    rcall *c;

    if (entry_stopped(op->e)) {
        op_end(op, SHEAF_ERR_STOPPED);
        return;
    }
    if (calls_alloc(op, 1) != 0) {
        op_fail(op, ": ", "out of memory");
        return;
    }
    c = &op->calls[0];
    op->n_calls = 1;
    if (op->input_var) {
        rvars_set(&op->vars, "level", "0");
        err = render_group(op, 0, op->n, c, errstr, sizeof(errstr));
    } else {
        err = render(st, &op->vars, &c->p, errstr, sizeof(errstr));
    }
    if (err != SHEAF_OK) {
        op_fail(op, " prompt: ", errstr);
        return;
    }
    if (op->input_var && st->budget_tokens && c->p.tokens > (uint32_t)st->budget_tokens) {
        if (op->n > 1) {
            op_free(op);
            level_start(op);
            return;
        }
        snprintf(errstr, sizeof(errstr), "a single input makes a %u-token prompt, over the "
                 "prompt budget %d", c->p.tokens, st->budget_tokens);
        op_fail(op, ": ", errstr);
        return;
    }
    op->final = 1;
    calls_start(op);
}

static rop *op_new(rentry *e, const char *name, const sheaf_stage *st, const rvars *vars,
                   reduce_done_fn done, void *ud)
{
    rop *op = calloc(1, sizeof(*op));
    if (!op) return NULL;
    op->e = e;
    op->name = name;
    op->st = *st;
    op->vars = *vars;
    op->done = done;
    op->ud = ud;
    op->levels = json_array();
    entry_sent(e); /* op_end gives it back */
    return op;
}

void reduce_call(rentry *e, const char *name, const sheaf_stage *st, const rvars *vars,
                 reduce_done_fn done, void *ud)
{
    rop *op = op_new(e, name, st, vars, done, ud);
    if (!op) {
        entry_finish(e, ENTRY_RETRY);
        return;
    }
    op->st.budget_tokens = 0;
    op_next(op);
}

void reduce_run(rentry *e, const char *name, const sheaf_stage *st, int budget,
                const rvars *vars, const char *input_var, char *const *texts, size_t n,
                reduce_done_fn done, void *ud)
{
    rop *op = op_new(e, name, st, vars, done, ud);
    if (!op || !(op->cur = calloc(n ? n : 1, sizeof(char *)))) {
        if (op) op_end(op, SHEAF_ERR_NOMEM);
        else entry_finish(e, ENTRY_RETRY);
        return;
    }
    op->st.budget_tokens = budget;
    op->input_var = input_var;
    for (size_t i = 0; i < n; i++) {
        if (!(op->cur[i] = strdup(texts[i]))) {
            op_end(op, SHEAF_ERR_NOMEM);
            return;
        }
        op->n++;
    }
    op_next(op);
}
