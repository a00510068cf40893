/* state_internal.h - what the synchronous state calls (state.c) and their
 * asynchronous twins (state_async.c) share, private to common/state/.
 *
 * A state call is the same keys, the same arguments and the same reading
 * of the reply whichever connection sends it: the builders and readers
 * below are the one place each is written.  A builder fills a struct that
 * owns its key buffers (args[] points into it); a reader turns a reply
 * into the call's result, with the same outcome mapping and errstr for
 * both.  Nothing here sends anything. */
#ifndef SHEAF_STATE_INTERNAL_H
#define SHEAF_STATE_INTERNAL_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "sheaf/state.h"

#define KEYLEN 1024

/* Key of a per-document (or per-group) structure: sheaf:{job}:<kind>:<doc>. */
void sheaf_doc_key(char *out, size_t outlen, const char *job, const char *kind, const char *doc);

/* The strings of an array reply into l (owned copies). */
sheaf_err sheaf_strlist_from(const redisReply *rep, sheaf_strlist *l);

/* ---- the scripts ---- */

extern const sheaf_lua_script sheaf_script_check, sheaf_script_store, sheaf_script_dlq_incr,
    sheaf_script_waiting, sheaf_script_cache_count, sheaf_script_doc_result_store,
    sheaf_script_group_result_store, sheaf_script_overview_store, sheaf_script_lease_renew,
    sheaf_script_emit_claim, sheaf_script_emit_done, sheaf_script_job_end,
    sheaf_script_ready_trim;

/* A script call: its keys (nkeys of them) then its arguments, in args. */
typedef struct sheaf_script_args {
    char k[8][KEYLEN];
    char v[6][32];
    const char *args[16];
    int nkeys, nargs;
} sheaf_script_args;

/* ---- worker side ---- */

/* The chunk scripts' calls for n chunks of one job (each ms[i]->job is
 * job): check (is each recorded, or the job cancelled?) and store (with
 * the lookups to count: hits, misses, tokens saved).  Own their strings
 * (sheaf_chunks_call_free); a store's documents and records are pointed
 * to, not copied.  SHEAF_ERR_NOMEM. */
typedef struct sheaf_chunks_call {
    int nkeys, nargs;
    const char **args;
    char *strs;                  /* the keys and numbers, NUL-separated */
} sheaf_chunks_call;
sheaf_err sheaf_chunks_check_build(sheaf_chunks_call *sc, const char *job,
                                   const sheaf_chunk_msg *const *ms, size_t n);
sheaf_err sheaf_chunks_store_build(sheaf_chunks_call *sc, const char *job,
                                   const sheaf_chunk_msg *const *ms,
                                   const sheaf_chunk_result *const *res, size_t n,
                                   uint64_t hits, uint64_t misses, uint64_t saved);
void sheaf_chunks_call_free(sheaf_chunks_call *sc);
/* The scripts' answers for n chunks into out[0..n): check 1 recorded (or
 * the job cancelled) / 0 to be done; store the sheaf_chunk_outcome. */
sheaf_err sheaf_check_reply(const redisReply *rep, const char *job, size_t n, long long *out,
                            char *errstr, size_t errlen);
sheaf_err sheaf_store_reply(const redisReply *rep, const char *job, size_t n, long long *out,
                            char *errstr, size_t errlen);
/* "sheaf:pipeline:<pv>" */
void sheaf_pipeline_key(char *out, size_t outlen, const char *pv);
sheaf_err sheaf_pipeline_reply(const redisReply *rep, const char *pv, char *errstr,
                               size_t errlen);
/* job: a valid job id (otherwise there is nothing to count). */
void sheaf_dlq_args(sheaf_script_args *a, const char *job);
void sheaf_waiting_args(sheaf_script_args *a, const char *job, const char *reason);
void sheaf_cache_count_args(sheaf_script_args *a, const char *job, int hit, uint64_t tokens_saved);

/* ---- reducer side ---- */

/* HGET sheaf:{job}:job pv: SHEAF_ERR_NOT_FOUND when the job has none. */
sheaf_err sheaf_pv_reply(const redisReply *rep, const char *job, char *errstr, size_t errlen);

/* HMGET of a document's registration: n and meta. */
sheaf_err sheaf_doc_info_reply(const redisReply *rep, const char *job, const char *doc,
                               char **meta_json, uint32_t *chunks, char *errstr, size_t errlen);
/* HGETALL of a document's partials into count entries in chunk order. */
sheaf_err sheaf_partials_reply(const redisReply *rep, uint32_t count, sheaf_partial **parts);

/* The key holding a group's members (path NULL: the job's documents). */
void sheaf_members_key(char *out, size_t outlen, const char *job, const char *path);

/* The one-result read: GET overview, or HGET of the results or groups hash.
 * argv points into the struct. */
typedef struct sheaf_result_args {
    char key[KEYLEN];
    const char *argv[3];
    int argc;
} sheaf_result_args;
void sheaf_result_args_build(sheaf_result_args *a, const char *job, sheaf_item_kind kind,
                             const char *id);

/* results_get's batches: HMGET of at most SHEAF_RESULTS_BATCH ids. */
#define SHEAF_RESULTS_BATCH 256
typedef struct sheaf_results_batch {
    const char *argv[2 + SHEAF_RESULTS_BATCH];
    size_t lens[2 + SHEAF_RESULTS_BATCH];
    int argc;
} sheaf_results_batch;
/* key: the results or groups hash (sheaf_results_key). */
void sheaf_results_key(char *out, size_t outlen, const char *job, sheaf_item_kind kind);
void sheaf_results_batch_build(sheaf_results_batch *b, const char *key, char *const *ids,
                               size_t m);
/* The m values of one batch into out[0..m) (NULL where none). */
sheaf_err sheaf_results_batch_reply(const redisReply *rep, char **out, size_t m);

void sheaf_doc_store_args(sheaf_script_args *a, const char *job, const char *doc,
                          const char *result_json, uint64_t prompt_tokens,
                          uint64_t completion_tokens);
void sheaf_group_store_args(sheaf_script_args *a, const char *job, const char *path, int counted,
                            const char *result_json, uint64_t prompt_tokens,
                            uint64_t completion_tokens);
void sheaf_overview_store_args(sheaf_script_args *a, const char *job, const char *overview_json,
                               uint64_t prompt_tokens, uint64_t completion_tokens);
sheaf_store_outcome sheaf_store_outcome_reply(const redisReply *rep);

void sheaf_lease_args(sheaf_script_args *a, const sheaf_entry_ref *e);
int sheaf_lease_reply_held(const redisReply *rep);
void sheaf_emit_claim_args(sheaf_script_args *a, const char *job, const sheaf_entry_ref *e,
                           const char *item);
sheaf_emit_right sheaf_emit_claim_reply(const redisReply *rep);
void sheaf_emit_done_args(sheaf_script_args *a, const char *job, const char *item);

/* ---- a job's end and retention ---- */

void sheaf_job_end_args(sheaf_script_args *a, const char *job, sheaf_job_state state,
                        const char *reason);
/* *ended; SHEAF_ERR_NOT_FOUND for no such job. */
sheaf_err sheaf_job_end_reply(const redisReply *rep, const char *job, int *ended, char *errstr,
                              size_t errlen);

/* The key walk of a job (job_keys_apply): each helper calls fn with every
 * key it names and returns how many. */
typedef void (*sheaf_key_fn)(void *ud, const char *key);
/* The docs list and the page of it to read (LRANGE key start start+999). */
#define SHEAF_KEYS_PAGE 1000
/* d: and p: of each document of an LRANGE page of the docs list. */
size_t sheaf_job_doc_keys(const char *job, const redisReply *page, sheaf_key_fn fn, void *ud);
/* wd: and wclose: of each open window (SMEMBERS of wopen). */
size_t sheaf_job_window_keys(const char *job, const redisReply *members, sheaf_key_fn fn,
                             void *ud);
/* gm: of each metadata group (HKEYS of g). */
size_t sheaf_job_group_keys(const char *job, const redisReply *fields, sheaf_key_fn fn, void *ud);
/* The fixed keys of a job other than the job hash. */
size_t sheaf_job_fixed_keys(const char *job, sheaf_key_fn fn, void *ud);
/* When a job retired now expires (ms, for sheaf:jobs:expiring). */
void sheaf_retire_until(char *out, size_t outlen, int retention_s);

/* ZRANGEBYSCORE sheaf:jobs:expiring -inf <now> LIMIT 0 1000 (argv into a). */
typedef struct sheaf_sweep_args {
    char now[24];
    const char *argv[8];
} sheaf_sweep_args;
void sheaf_sweep_args_build(sheaf_sweep_args *a);

/* ---- the ready streams ---- */

typedef struct sheaf_ready_args {
    char key[KEYLEN], a[2][24];
    const char *argv[10];
    int argc;
} sheaf_ready_args;
/* XGROUP CREATE key group from|0 MKSTREAM */
void sheaf_ready_group_args(sheaf_ready_args *a, const char *job, const char *group,
                            const char *from);
/* It exists: OK. */
sheaf_err sheaf_ready_group_failure(const char *errstr);
/* XAUTOCLAIM key group consumer idle 0-0 COUNT count */
void sheaf_ready_claim_args(sheaf_ready_args *a, const char *job, const char *group,
                            const char *consumer, int idle_ms, int count);
sheaf_err sheaf_ready_claim_reply(const redisReply *rep, const char *job, sheaf_ready_batch *out);
/* XACK key group id */
void sheaf_ready_ack_args(sheaf_ready_args *a, const char *job, const char *group,
                          const char *id);
void sheaf_ready_trim_args(sheaf_script_args *a, const char *job);

/* XREADGROUP over n jobs' streams (block_ms < 0: no BLOCK argument). */
typedef struct sheaf_read_args {
    const char **argv;
    char *keys;
    int argc;
    char cnt[16], blk[16];
} sheaf_read_args;
sheaf_err sheaf_read_args_build(sheaf_read_args *a, const char *group, const char *consumer,
                                char *const *jobs, size_t n, size_t first, int count,
                                int block_ms);
void sheaf_read_args_free(sheaf_read_args *a);
sheaf_err sheaf_read_reply(const redisReply *rep, sheaf_ready_batch *out);
/* NOGROUP (a job's stream vanished): SHEAF_ERR_NOT_FOUND. */
sheaf_err sheaf_read_failure(const char *errstr);

#endif
