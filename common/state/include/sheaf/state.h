/* sheaf/state.h - the Redis state model of sheaf.
 *
 * Every key of a job shares the hash tag {J} so the Lua scripts below touch
 * one slot and keep working on Redis Cluster:
 *
 *   sheaf:{J}:job          hash    id, state, pv, topic, created_ms,
 *                                  finished_ms, docs, chunks, chunks_ok,
 *                                  chunks_failed, docs_ready, docs_done, dlq,
 *                                  tokens_prompt, tokens_completion, error,
 *                                  cache_hits, cache_misses, tokens_saved,
 *                                  tokens_{map,reduce,group,overview}_
 *                                  {prompt,completion}, groups_done,
 *                                  replays, repairs, prices and currency
 *                                  (cost.prices and cost.currency at submit)
 *   sheaf:{J}:docs         list    document ids in submit order
 *   sheaf:{J}:d:<doc>      hash    n (chunks), meta (JSON), ordinal
 *   sheaf:{J}:p:<doc>      hash    s:<idx> = ok|failed, r:<idx> = result
 *                                  JSON, done = chunks recorded, failed =
 *                                  of them failed (absent when none): the
 *                                  document's share of the job's counters
 *   sheaf:{J}:results      hash    <doc> = the document's result (JSON line)
 *   sheaf:{J}:done_ms      hash    <doc> = wall-clock ms its result was stored
 *                                  (kept apart so results stay deterministic)
 *   sheaf:{J}:overview     string  the overview result (JSON line)
 *   sheaf:{J}:g            hash    metadata groups, by path (a JSON array of
 *                                  values, root "[]"): n:<path> members,
 *                                  d:<path> members done, p:<path> parent
 *   sheaf:{J}:gm:<path>    list    a group's members in first-appearance
 *                                  order: documents (innermost) or paths
 *   sheaf:{J}:ginner       list    the innermost metadata groups
 *   sheaf:{J}:groups       hash    <path> = the group's result (JSON line)
 *   sheaf:{J}:doc_tokens   hash    <doc>:p, <doc>:c = prompt and completion
 *                                  tokens of the document's map calls,
 *                                  <doc>:rp, <doc>:rc of its reduce calls
 *   sheaf:{J}:offsets      hash    <partition> = "first-last": where the
 *                                  job's chunk messages are (for replay)
 *   sheaf:{J}:versions     hash    <pv> = the run holding that version's
 *                                  results: J itself, or a replay J@rN
 *   sheaf:{J}:ready        stream  entries {type=doc, doc=<id>},
 *                                  {type=group, g=<path>} and one
 *                                  {type=overview}; consumer group =
 *                                  reducer.group
 *   sheaf:{J}:emit         hash    <kind>:<item> = "<consumer> <entry id>"
 *                                  while a reducer holds the right to write
 *                                  that result to the outputs, "done" once
 *                                  written (doc:<id>, group:<path>, overview)
 *   sheaf:pipeline:<pv>    string  pipeline snapshot (canonical JSON)
 *   sheaf:jobs             zset    every job id, score = created_ms
 *   sheaf:jobs:active      set     jobs whose overview is not written yet
 *   sheaf:jobs:expiring    zset    ended jobs, score = when their keys expire
 *
 * Job states: producing -> running -> done, or failed / cancelled (with
 * the reason in error).  An ended job's keys expire job.retention_s later
 * (sheaf_state_job_retire); 0 keeps them.
 *
 * The Lua scripts are the .lua files of common/state/lua/, built in; this
 * file and state.c (with state_async.c, its asynchronous twin) are the
 * only code that knows key names, with state_repair.c and, for the keys a
 * stream adds to its job, sheaf/state_stream.h (state_stream.c).
 *
 * Idempotence: a chunk's result is written by a Lua script that does
 * nothing when the chunk already has one (first write wins), and the same
 * script increments the document's done count and, when it reaches n,
 * appends {type=doc} to the ready stream: redelivered chunks never double
 * count and no document is forgotten.  Likewise a document's result is
 * recorded once and the last one enqueues {type=overview}.
 *
 * Lost writes (Redis restarted from an AOF or RDB that misses the last
 * writes, or keys damaged by hand) are found and redone by `sheaf repair`
 * (producer/repair.c), which recounts these counters from the records. */
#ifndef SHEAF_STATE_H
#define SHEAF_STATE_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include "sheaf/codec.h"
#include "sheaf/config.h"
#include "sheaf/error.h"

typedef struct sheaf_redis sheaf_redis;

/* Where Redis is and how to log in, from redis.url, redis.password and
 * redis.timeout_ms; shared by the synchronous connection here and the
 * runtime's asynchronous one (sheaf/aredis.h).  password is a secret:
 * never logged; _clear wipes it. */
typedef struct sheaf_redis_addr {
    char host[256];
    int port;
    int db;
    char *user;       /* ACL user or NULL */
    char *password;   /* secret: never logged */
    int timeout_ms;
} sheaf_redis_addr;
sheaf_err sheaf_redis_addr_parse(const sheaf_config *cfg, sheaf_redis_addr *a, char *errstr,
                                 size_t errlen);
void sheaf_redis_addr_clear(sheaf_redis_addr *a);

/* A list of owned strings (ids, paths, results). */
typedef struct sheaf_strlist {
    char **v;
    size_t n;
} sheaf_strlist;
void sheaf_strlist_free(sheaf_strlist *l);

/* Connects to redis.url (with redis.password when set; the password is
 * never logged).  Returns NULL with errstr on failure. */
sheaf_redis *sheaf_redis_connect(const sheaf_config *cfg, char *errstr, size_t errlen);
void sheaf_redis_destroy(sheaf_redis *r);

/* Runs one command (hiredis argv form).  On a lost connection it reconnects
 * once and retries.  Returns the reply (caller frees with freeReplyObject,
 * which frees nested replies) or NULL with errstr; a Redis error reply is
 * returned as NULL too, its message in errstr. */
redisReply *sheaf_redis_argv(sheaf_redis *r, int argc, const char **argv, const size_t *argvlen,
                             char *errstr, size_t errlen);
/* printf-style convenience over sheaf_redis_argv (hiredis format rules:
 * %s strings, %b binary with length). */
redisReply *sheaf_redis_cmd(sheaf_redis *r, char *errstr, size_t errlen, const char *fmt, ...);

/* What a failed Redis call means for an operator, to open a log line or a
 * health reason: "Redis is full (maxmemory; ...what frees it...)" when
 * errstr carries Redis's OOM refusal, otherwise "Redis unavailable".  Both
 * are waits, never failures: the caller holds its work and tries again. */
const char *sheaf_redis_trouble(const char *errstr);

/* Runs a command and drops its reply: SHEAF_OK, or SHEAF_ERR_REDIS with
 * errstr (a Redis error reply included). */
sheaf_err sheaf_redis_do(sheaf_redis *r, char *errstr, size_t errlen, const char *fmt, ...);

/* Runs a command whose reply is an integer, into *v (0 for another reply). */
sheaf_err sheaf_redis_integer(sheaf_redis *r, long long *v, char *errstr, size_t errlen,
                              const char *fmt, ...);

/* A Lua script run by sheaf_redis_script.  Its SHA-1 is computed per call
 * (a microsecond or two beside a Redis round trip), not cached in the
 * struct: scripts are shared by the reducer's threads, and a lazily filled
 * cache would be a data race. */
typedef struct sheaf_lua_script {
    const char *body;
} sheaf_lua_script;

/* The script's SHA-1 in hex, as EVALSHA wants it. */
#define SHEAF_LUA_SHA_SIZE 41
void sheaf_lua_sha(const sheaf_lua_script *s, char sha[SHEAF_LUA_SHA_SIZE]);

/* Runs a Lua script with EVALSHA, loading it with EVAL when Redis answers
 * NOSCRIPT (after a restart or SCRIPT FLUSH).  args holds nkeys keys then
 * the script arguments (nargs in all, at most 20); lens may be NULL for C
 * strings.  Returns the reply or NULL with errstr, like sheaf_redis_argv. */
redisReply *sheaf_redis_script(sheaf_redis *r, const sheaf_lua_script *s, int nkeys, int nargs,
                               const char **args, const size_t *lens, char *errstr,
                               size_t errlen);

/* sheaf_redis_script, the reply dropped. */
sheaf_err sheaf_redis_script_do(sheaf_redis *r, const sheaf_lua_script *s, int nkeys, int nargs,
                                const char **args, char *errstr, size_t errlen);

/* ---- producer side ---- */

/* Creates the job (state producing), stores the pipeline snapshot, adds the
 * job to sheaf:jobs and sheaf:jobs:active, creates the ready stream and its
 * consumer group.  Fails if the job id already exists. */
sheaf_err sheaf_state_job_create(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                                 const char *pipeline_json, const char *pv, const char *topic,
                                 char *errstr, size_t errlen);

/* Takes over a job whose submit died while producing (sheaf submit
 * --resume): the job must be producing, with pipeline version pv, and its
 * last beat older than SHEAF_STALL_BEATS * producer.heartbeat_ms (by Redis
 * TIME).  Chunk ids are deterministic and results first-write-wins, so the
 * resumed submit produces everything again without counting anything
 * twice.  SHEAF_ERR_INVALID with the reason when it may not be resumed. */
sheaf_err sheaf_state_job_resume(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                                 const char *pv, char *errstr, size_t errlen);

/* Marks a producing job alive (producer_seen_ms = now); does nothing once
 * the job left "producing".  See producer/beat.c. */
sheaf_err sheaf_state_job_beat(sheaf_redis *r, const char *job, char *errstr, size_t errlen);

/* Missed beats after which `sheaf status` calls a producing job stalled. */
#define SHEAF_STALL_BEATS 6

#define SHEAF_MAX_GROUP_PATHS 8

typedef struct sheaf_doc_reg {
    const char *id;
    uint32_t chunks;
    const char *meta_json;   /* "{}" when none */
    /* Metadata grouping: the document's group path at each level, outermost
     * first, each a compact JSON array of the values so far ("[\"finance\"]",
     * "[\"finance\",\"sales\"]"); none without metadata grouping. */
    const char *const *group_paths;
    size_t n_group_paths;
} sheaf_doc_reg;

/* Registers documents (appends to sheaf:{J}:docs in the order given, from
 * ordinal first_ordinal), each once: a document registered before is left
 * as it was (a resumed submit registers again what it finds).  Call in
 * batches before producing their chunks. */
sheaf_err sheaf_state_docs_add(sheaf_redis *r, const char *job, const sheaf_doc_reg *docs,
                               size_t n, uint64_t first_ordinal, char *errstr, size_t errlen);

/* Sets state (and totals: docs, chunks) once every chunk is produced:
 * "running".  On failure use sheaf_state_job_fail. */
sheaf_err sheaf_state_job_running(sheaf_redis *r, const char *job, uint64_t docs,
                                  uint64_t chunks, char *errstr, size_t errlen);
sheaf_err sheaf_state_job_fail(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                               const char *reason, char *errstr, size_t errlen);

/* ---- job states and lifecycle ---- */

typedef enum sheaf_job_state {
    SHEAF_JOB_PRODUCING,
    SHEAF_JOB_RUNNING,
    SHEAF_JOB_DONE,
    SHEAF_JOB_FAILED,
    SHEAF_JOB_CANCELLED
} sheaf_job_state;

const char *sheaf_job_state_name(sheaf_job_state s);
/* 0 and *s set when name is a state's name, else -1. */
int sheaf_job_state_parse(const char *name, sheaf_job_state *s);
/* 1 for done, failed and cancelled. */
int sheaf_job_state_final(sheaf_job_state s);

/* Ends a job that has not ended (state failed or cancelled, the reason in
 * error, finished_ms), takes it out of the active set and starts its
 * retention.  *ended is 0 when it had ended before (nothing changed);
 * SHEAF_ERR_NOT_FOUND for an unknown job. */
sheaf_err sheaf_state_job_end(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                              sheaf_job_state state, const char *reason, int *ended,
                              char *errstr, size_t errlen);

/* Starts an ended job's retention: every key of the job expires in
 * job.retention_s (nothing with 0), the pipeline snapshot too, and the job
 * is listed in sheaf:jobs:expiring for sheaf_state_jobs_sweep. */
sheaf_err sheaf_state_job_retire(sheaf_redis *r, const sheaf_config *cfg, const char *job,
                                 char *errstr, size_t errlen);

/* Deletes every key of the job and its index entries at once. */
sheaf_err sheaf_state_job_delete(sheaf_redis *r, const char *job, char *errstr, size_t errlen);

/* Removes the index entries (sheaf:jobs) of jobs whose keys expired. */
sheaf_err sheaf_state_jobs_sweep(sheaf_redis *r, size_t *removed, char *errstr, size_t errlen);

/* Every job id in sheaf:jobs, newest first. */
sheaf_err sheaf_state_job_ids(sheaf_redis *r, sheaf_strlist *ids, char *errstr, size_t errlen);

/* ---- reading a job ---- */

/* The job's document ids in submit order. */
sheaf_err sheaf_state_doc_ids(sheaf_redis *r, const char *job, sheaf_strlist *ids, char *errstr,
                              size_t errlen);
/* A metadata group's members in first-appearance order (documents of an
 * innermost group, paths of child groups); path NULL: the documents. */
sheaf_err sheaf_state_group_member_ids(sheaf_redis *r, const char *job, const char *path,
                                       sheaf_strlist *ids, char *errstr, size_t errlen);
/* Every group result of the job, ordered by group path. */
sheaf_err sheaf_state_group_results(sheaf_redis *r, const char *job, sheaf_strlist *results,
                                    char *errstr, size_t errlen);
/* The run holding version pv of job (malloc'd); SHEAF_ERR_NOT_FOUND with
 * the job's versions in errstr. */
sheaf_err sheaf_state_version_run(sheaf_redis *r, const char *job, const char *pv, char **run,
                                  char *errstr, size_t errlen);
sheaf_err sheaf_state_version_set(sheaf_redis *r, const char *job, const char *pv,
                                  const char *run, char *errstr, size_t errlen);
/* Counts a replay of job: *n is its number (J@rN). */
sheaf_err sheaf_state_job_next_replay(sheaf_redis *r, const char *job, long long *n,
                                      char *errstr, size_t errlen);
/* A document's tokens: map prompt, map completion, reduce prompt, reduce
 * completion. */
sheaf_err sheaf_state_doc_tokens(sheaf_redis *r, const char *job, const char *doc,
                                 uint64_t tokens[4], char *errstr, size_t errlen);
/* The job's pipeline version (into pv) and snapshot JSON (malloc'd);
 * SHEAF_ERR_NOT_FOUND for an unknown job or a snapshot that is gone. */
sheaf_err sheaf_state_job_pipeline(sheaf_redis *r, const char *job, char *pv, size_t pvlen,
                                   char **json, char *errstr, size_t errlen);
/* The recorded offset ranges (sheaf_state_job_offsets_store): first[i] < 0
 * where none; *n is one past the highest partition recorded. */
sheaf_err sheaf_state_job_offsets_get(sheaf_redis *r, const char *job, int64_t *first,
                                      int64_t *last, int max, int *n, char *errstr,
                                      size_t errlen);

/* ---- the ready streams (reducers) ---- */

typedef struct sheaf_ready_entry {
    char *job;               /* owned */
    char id[48];
    char type[16];           /* "doc", "group", "overview" */
    char *item;              /* the document id or group path (owned); NULL otherwise */
    int deleted;             /* claimed after it was deleted: nothing to do but ack */
} sheaf_ready_entry;

typedef struct sheaf_ready_batch {
    sheaf_ready_entry *v;
    size_t n;
} sheaf_ready_batch;
void sheaf_ready_batch_free(sheaf_ready_batch *b);

/* The jobs whose overview is not written yet. */
sheaf_err sheaf_state_active_jobs(sheaf_redis *r, sheaf_strlist *jobs, char *errstr,
                                  size_t errlen);
/* Creates the reducers' consumer group on the job's stream, delivering
 * after entry from (NULL: from the start); it exists: OK. */
sheaf_err sheaf_state_ready_group(sheaf_redis *r, const char *job, const char *group,
                                  const char *from, char *errstr, size_t errlen);
/* New entries of the jobs' streams for consumer (XREADGROUP, up to count
 * per stream, blocking up to block_ms), asking from jobs[first] on.
 * SHEAF_ERR_NOT_FOUND when a stream has no group (recreate them). */
sheaf_err sheaf_state_ready_read(sheaf_redis *r, const char *group, const char *consumer,
                                 char *const *jobs, size_t n, size_t first, int count,
                                 int block_ms, sheaf_ready_batch *out, char *errstr,
                                 size_t errlen);
/* Entries of the job's stream pending longer than idle_ms, now consumer's. */
sheaf_err sheaf_state_ready_claim(sheaf_redis *r, const char *job, const char *group,
                                  const char *consumer, int idle_ms, int count,
                                  sheaf_ready_batch *out, char *errstr, size_t errlen);
sheaf_err sheaf_state_ready_ack(sheaf_redis *r, const char *job, const char *group,
                                const char *id, char *errstr, size_t errlen);
/* Drops the entries of a running job's stream that every group has
 * acknowledged (the job's stream expires whole when it ends). */
sheaf_err sheaf_state_ready_trim(sheaf_redis *r, const char *job, long long *dropped,
                                 char *errstr, size_t errlen);

/* ---- worker side ---- */

/* Fetches the pipeline snapshot JSON (malloc'd) of version pv. */
sheaf_err sheaf_state_pipeline_get(sheaf_redis *r, const char *pv, char **json, char *errstr,
                                   size_t errlen);

/* 1 in *exists when the chunk already has a recorded result. */
sheaf_err sheaf_state_chunk_exists(sheaf_redis *r, const sheaf_chunk_msg *m, int *exists,
                                   char *errstr, size_t errlen);

typedef enum { SHEAF_CHUNK_NEW = 1, SHEAF_CHUNK_DUPLICATE = 0, SHEAF_CHUNK_DOC_READY = 2 } sheaf_chunk_outcome;

/* Records the chunk's result: ok with result_json (the map output record),
 * or failed with result_json holding {"error": reason}.  Usage tokens are
 * added to the job's totals only on the first write.  (A worker records
 * through sheaf_chunk_stores, below: the same script for many chunks.) */
sheaf_err sheaf_state_chunk_store(sheaf_redis *r, const sheaf_chunk_msg *m, int ok,
                                  const char *result_json, uint64_t prompt_tokens,
                                  uint64_t completion_tokens, sheaf_chunk_outcome *outcome,
                                  char *errstr, size_t errlen);

/* Records what a job waits on (a worker parked a chunk: the provider keeps
 * failing): retry_reason and retry_ms (Redis TIME) in the job hash, shown
 * by `sheaf status` while recent.  Not a failure. */
sheaf_err sheaf_state_job_waiting(sheaf_redis *r, const char *job, const char *reason,
                                  char *errstr, size_t errlen);

/* Counts a call-cache lookup against the job, if it exists (sheaf/cache.h). */
sheaf_err sheaf_state_job_cache_count(sheaf_redis *r, const char *job, int hit,
                                      uint64_t tokens_saved, char *errstr, size_t errlen);

/* Counts a dead-lettered message against the job (if the job exists). */
sheaf_err sheaf_state_job_dlq_incr(sheaf_redis *r, const char *job, char *errstr,
                                   size_t errlen);

/* ---- reducer side ---- */

typedef struct sheaf_partial {
    int ok;          /* 1 ok, 0 failed, -1 missing */
    char *json;      /* the stored record (owned), NULL when missing */
} sheaf_partial;

/* Reads a document's n partial results in chunk order into *parts (n
 * entries, owned by the caller: sheaf_partials_free). */
sheaf_err sheaf_state_doc_partials(sheaf_redis *r, const char *job, const char *doc,
                                   uint32_t *n, sheaf_partial **parts, char *errstr,
                                   size_t errlen);
void sheaf_partials_free(sheaf_partial *parts, uint32_t n);

/* Document metadata JSON (malloc'd, "{}" when none) and chunk count. */
sheaf_err sheaf_state_doc_info(sheaf_redis *r, const char *job, const char *doc,
                               char **meta_json, uint32_t *chunks, char *errstr, size_t errlen);

/* What storing a result did.  Only the caller that got a NEW outcome
 * stored the result; whoever writes it to the outputs is decided apart
 * (sheaf_state_emit_claim). */
typedef enum sheaf_store_outcome {
    SHEAF_STORE_NO_JOB = -1,         /* the job is gone (deleted, expired, cancelled) */
    SHEAF_STORE_KEPT = 0,            /* a result was stored before: first write wins */
    SHEAF_STORE_NEW = 1,
    SHEAF_STORE_NEW_OVERVIEW = 2,    /* ... and {type=overview} was enqueued */
    SHEAF_STORE_NEW_GROUP = 3        /* ... and its group's {type=group} was enqueued */
} sheaf_store_outcome;

/* Records the document result once (see sheaf_store_outcome). */
sheaf_err sheaf_state_doc_result_store(sheaf_redis *r, const char *job, const char *doc,
                                       const char *result_json, uint64_t prompt_tokens,
                                       uint64_t completion_tokens, sheaf_store_outcome *out,
                                       char *errstr, size_t errlen);

/* Records a group's result once, in sheaf:{J}:groups under its path.
 * counted (metadata groups): the group is counted into its parent, and
 * the parent's entry ({type=group} or, for the root, {type=overview}) is
 * enqueued when it was the last; *queued says so.  Groups by map results
 * live inside their metadata group and are not counted. */
sheaf_err sheaf_state_group_result_store(sheaf_redis *r, const char *job, const char *path,
                                         int counted, const char *result_json,
                                         uint64_t prompt_tokens, uint64_t completion_tokens,
                                         sheaf_store_outcome *out, char *errstr, size_t errlen);

/* Stores the overview (once), sets state done and finished_ms, removes the
 * job from sheaf:jobs:active.  NO_JOB for a cancelled or deleted job. */
sheaf_err sheaf_state_overview_store(sheaf_redis *r, const char *job, const char *overview_json,
                                     uint64_t prompt_tokens, uint64_t completion_tokens,
                                     sheaf_store_outcome *out, char *errstr, size_t errlen);

/* ---- dead letters: list and redrive ---- */

/* Called for each failed chunk: its document, index and recorded error
 * (the JSON record {"error": ...}). */
typedef void (*sheaf_failed_chunk_fn)(const char *doc, uint32_t idx, const char *record,
                                      void *ud);

/* Every failed chunk of the job, in submit order of their documents. */
sheaf_err sheaf_state_failed_chunks(sheaf_redis *r, const char *job, sheaf_failed_chunk_fn fn,
                                    void *ud, char *errstr, size_t errlen);

/* `sheaf dlq redrive`: forgets the job's failed chunks (those whose error
 * contains reason, or all when it is NULL or ""), the results of their
 * documents, every group result and the overview (with their emission
 * marks), and keeps the job's keys from expiring.  `sheaf repair` run
 * right after recounts the counters, produces the forgotten chunks again
 * from the topic and reopens the job.  *chunks and *docs: how many. */
sheaf_err sheaf_state_redrive(sheaf_redis *r, const char *job, const char *reason,
                              uint64_t *chunks, uint64_t *docs, char *errstr, size_t errlen);

/* ---- repair (producer/repair.c; common/state/state_repair.c) ---- */

/* Which ready entries are live (not yet delivered to the reducers' group,
 * or pending in it), and the stream's last id when scanned. */
typedef struct sheaf_ready_scan {
    char since[64];                      /* "0-0" when there is no stream */
    int group_exists;
    sheaf_strlist live_docs, live_groups;  /* sorted */
    int live_overview;
} sheaf_ready_scan;
sheaf_err sheaf_state_ready_scan(sheaf_redis *r, const char *job, const char *group,
                                 sheaf_ready_scan *s, char *errstr, size_t errlen);
void sheaf_ready_scan_free(sheaf_ready_scan *s);
/* 1 when item is in a sorted list of the scan. */
int sheaf_ready_scan_live(const sheaf_strlist *sorted, const char *item);

/* A document as the repair script sees it (common/state/lua/repair_doc.lua). */
typedef struct sheaf_repair_doc {
    int registered;          /* 0: listed, but its registration is gone */
    uint32_t n, ok, failed, done_old;
    int has_result, entry, fix;
    uint32_t *missing;       /* chunk indexes without a record, ascending (owned) */
    uint32_t n_missing;
} sheaf_repair_doc;
/* Inspects (apply 0) or repairs (apply 1) one document; d->missing is
 * replaced (free it when done). */
sheaf_err sheaf_state_repair_doc(sheaf_redis *r, const char *job, const char *doc, int apply,
                                 int live, const char *since, sheaf_repair_doc *d, char *errstr,
                                 size_t errlen);

typedef struct sheaf_repair_job {
    int docs_done_fixed, overview_missing, need_overview, reopened;
    uint64_t groups_counted;
    sheaf_strlist groups;    /* complete metadata groups without a result */
} sheaf_repair_job;
/* Inspects or repairs the job's counters (common/state/lua/repair_job.lua);
 * o->groups is replaced. */
sheaf_err sheaf_state_repair_job(sheaf_redis *r, const char *job, int apply, const char *since,
                                 int overview_live, sheaf_repair_job *o, char *errstr,
                                 size_t errlen);
/* Enqueues a complete group without a result unless a live entry exists. */
sheaf_err sheaf_state_repair_group(sheaf_redis *r, const char *job, const char *path,
                                   const char *since, int *enqueued, char *errstr, size_t errlen);
sheaf_err sheaf_state_pipeline_exists(sheaf_redis *r, const char *pv, int *exists, char *errstr,
                                      size_t errlen);
/* In sheaf:jobs:active (watched by the reducers), and setting it. */
sheaf_err sheaf_state_job_active(sheaf_redis *r, const char *job, int *active, char *errstr,
                                 size_t errlen);
sheaf_err sheaf_state_job_set_active(sheaf_redis *r, const char *job, int active, char *errstr,
                                     size_t errlen);
sheaf_err sheaf_state_job_count_repair(sheaf_redis *r, const char *job, char *errstr,
                                       size_t errlen);
/* An ended job runs again (repair, redrive): its keys stop expiring
 * (PERSIST) and it leaves sheaf:jobs:expiring; it retires again when it
 * ends. */
sheaf_err sheaf_state_job_keep(sheaf_redis *r, const char *job, char *errstr, size_t errlen);

/* ---- exactly-once outputs ----
 *
 * A reducer works on a ready-stream entry under a lease: the entry is
 * pending under its consumer, and sheaf_state_lease_renew (called while its
 * LLM calls run) keeps its idle time below reducer.claim_idle_ms so no
 * other reducer claims it.  A result is stored first-write-wins, then
 * written to the outputs by exactly one process: the one granted the
 * item's emission right by sheaf_state_emit_claim, which records
 * sheaf_state_emit_done once it wrote.  Only a SIGKILL between the write
 * and emit_done makes the item written again (by whoever claims the entry
 * next): the results topic is keyed by job, version and item for that. */

typedef struct sheaf_entry_ref {
    const char *job;         /* whose ready stream */
    const char *group;       /* reducer.group */
    const char *consumer;    /* this reducer thread's consumer name */
    const char *id;          /* the entry */
} sheaf_entry_ref;

typedef enum sheaf_item_kind { SHEAF_ITEM_DOC, SHEAF_ITEM_GROUP, SHEAF_ITEM_OVERVIEW } sheaf_item_kind;

/* *held = 1 when the entry is still pending under e->consumer (its idle
 * time is then reset), 0 when another reducer took it over. */
sheaf_err sheaf_state_lease_renew(sheaf_redis *r, const sheaf_entry_ref *e, int *held,
                                  char *errstr, size_t errlen);

typedef enum sheaf_emit_right {
    SHEAF_EMIT_NO_JOB = -1,  /* the job is gone: nothing to write */
    SHEAF_EMIT_YES = 0,      /* write it, then sheaf_state_emit_done */
    SHEAF_EMIT_DONE = 1,     /* written before */
    SHEAF_EMIT_HELD = 2,     /* a live reducer holds it through another entry */
    SHEAF_EMIT_LOST = 3      /* e is no longer this consumer's: leave it */
} sheaf_emit_right;

/* item: "doc:<id>", "group:<path>" or "overview". */
sheaf_err sheaf_state_emit_claim(sheaf_redis *r, const char *job, const sheaf_entry_ref *e,
                                 const char *item, sheaf_emit_right *right, char *errstr,
                                 size_t errlen);
sheaf_err sheaf_state_emit_done(sheaf_redis *r, const char *job, const char *item, char *errstr,
                                size_t errlen);

/* The stored results of n documents (ids) into out[0..n): a malloc'd JSON
 * line, or NULL for a document without a result yet.  On failure every
 * out[i] is NULL. */
sheaf_err sheaf_state_results_get(sheaf_redis *r, const char *job, char *const *ids, size_t n,
                                  char **out, char *errstr, size_t errlen);
/* The stored result of a document (id), group (path) or the overview;
 * *json NULL when none is stored. */
sheaf_err sheaf_state_result_get(sheaf_redis *r, const char *job, sheaf_item_kind kind,
                                 const char *id, char **json, char *errstr, size_t errlen);

/* ---- status ---- */

enum { SHEAF_STAGE_KIND_MAP, SHEAF_STAGE_KIND_REDUCE, SHEAF_STAGE_KIND_GROUP,
       SHEAF_STAGE_KIND_OVERVIEW, SHEAF_N_STAGE_KINDS };

typedef struct sheaf_job_status {
    sheaf_job_state state;
    char pv[32];
    char topic[256];             /* where its chunk messages are */
    char error[256];
    int64_t created_ms, finished_ms;
    uint64_t docs, chunks, chunks_ok, chunks_failed, docs_ready, docs_done, dlq;
    uint64_t tokens_prompt, tokens_completion;
    /* Tokens [prompt, completion] by stage kind: map, reduce (combine,
     * refinement), group, overview (SHEAF_STAGE_KIND_*). */
    uint64_t stage_tokens[4][2];
    uint64_t groups_done;
    uint64_t cache_hits, cache_misses, tokens_saved;   /* LLM call cache (sheaf/cache.h) */
    int overview_done;
    int64_t producer_seen_ms;    /* the submit's last beat (wall clock ms) */
    int64_t beat_ms;             /* its interval; 0 for jobs older than beats */
    /* What the job waits on (sheaf_state_job_waiting) when a worker said so
     * in the last SHEAF_WAITING_FRESH_MS, and since when (by Redis TIME);
     * "" otherwise. */
    char waiting[256];
    int64_t waiting_age_ms;
    int64_t server_now_ms;       /* Redis TIME when read (jobs not ended); 0 otherwise */
    uint64_t results;            /* document results stored (HLEN of sheaf:{J}:results) */
    char prices[1024];           /* cost.prices at submit ("" for jobs older than that) */
    char currency[16];           /* cost.currency at submit */
} sheaf_job_status;

#define SHEAF_WAITING_FRESH_MS 60000

/* Milliseconds since the submit of a job still "producing" last marked it
 * alive (both by Redis TIME: clocks of other machines do not matter), when
 * that is over SHEAF_STALL_BEATS intervals (its submit died or
 * lost Redis); else 0. */
int64_t sheaf_job_stalled_ms(const sheaf_job_status *st);

sheaf_err sheaf_state_job_status(sheaf_redis *r, const char *job, sheaf_job_status *st,
                                 char *errstr, size_t errlen);

/* ---- replay ---- */

/* Records the first and last offset of the job's chunk messages in each
 * partition (first[i] < 0: none there) in sheaf:{J}:offsets. */
sheaf_err sheaf_state_job_offsets_store(sheaf_redis *r, const char *job, const int64_t *first,
                                        const int64_t *last, int n, char *errstr, size_t errlen);

/* Key helpers: "sheaf:{<job>}:<suffix>" into out. */
void sheaf_key(char *out, size_t outlen, const char *job, const char *suffix);


/* ---- asynchronous variants, for the runtime's event loop ----
 *
 * The same keys and scripts as the synchronous functions of the same name,
 * sent on the runtime's asynchronous connection (sheaf/aredis.h).  Each
 * returns at once; done (may be NULL: fire and forget) fires exactly once,
 * later, from the loop, never from inside the call.  r is valid only
 * during the callback:
 *   err     SHEAF_OK, or as the synchronous function (SHEAF_ERR_REDIS for
 *           a lost connection, an error reply or no connection at all:
 *           retryable; SHEAF_ERR_NOT_FOUND for an unknown job or pipeline)
 *   n       (see each function)
 *   str/len pipeline_get: the pipeline's JSON (not NUL-terminated)
 *   errstr  "" on success, else why */
typedef struct sheaf_aredis sheaf_aredis;
/* A document's chunk count, metadata and partials, as read at once
 * (sheaf_state_doc_read_async). */
typedef struct sheaf_doc_read {
    uint32_t n;                  /* chunks */
    char *meta;                  /* metadata JSON (malloc'd, "{}" when none) */
    sheaf_partial *parts;        /* n entries in chunk order (sheaf_partials_free) */
} sheaf_doc_read;

typedef struct sheaf_state_reply {
    sheaf_err err;
    long long n;
    const char *str;
    size_t len;
    const char *errstr;
    /* Structured results (NULL unless the function says so).  The callback
     * may take what they hold (move the contents out and leave them empty
     * or NULL); whatever is left is freed after the callback returns. */
    sheaf_strlist *list;         /* active_jobs, group_member_ids */
    sheaf_ready_batch *batch;    /* ready_read, ready_claim */
    sheaf_doc_read *doc;         /* doc_read */
    char **strs;                 /* results_get: one per id asked, NULL where none */
} sheaf_state_reply;
typedef void (*sheaf_state_fn)(void *ud, const sheaf_state_reply *r);

void sheaf_state_pipeline_get_async(sheaf_aredis *ar, const char *pv, sheaf_state_fn done,
                                    void *ud);

/* ---- a worker's chunk checks and stores, sent together per job ----
 *
 * A worker asks Redis about each chunk twice: is it recorded already (the
 * check), and record its result (the store): the scripts of
 * sheaf_state_chunk_exists and sheaf_state_chunk_store, for many chunks at
 * once.  The first check (or store) of a job is sent at once; those of the
 * same job and kind that come while it is on its way wait, and go together
 * in one call when it returns (at most SHEAF_STORE_BATCH per call).  So a
 * lone chunk waits for nothing, and under load Redis runs one script per
 * batch and adds the job's counters once per call instead of once per
 * chunk (Redis' CPU per chunk caps a fleet).  done fires once per chunk,
 * from the loop, as sheaf_state_reply:
 *   err  SHEAF_OK; SHEAF_ERR_NOT_FOUND (store) when the job is not
 *        registered; SHEAF_ERR_REDIS (retryable) when the call failed: then
 *        every request of the job waiting behind it fails too, so each
 *        chunk's own retry decides when to try again (none is dropped);
 *        SHEAF_ERR_NOMEM
 *   n    check: 1 recorded (or the job cancelled), 0 to be done;
 *        store: the chunk's sheaf_chunk_outcome (a cancelled job: DUPLICATE) */
#define SHEAF_STORE_BATCH 64
typedef struct sheaf_chunk_stores sheaf_chunk_stores;

/* A chunk's result to record.  cache: its call-cache lookup, counted
 * against the job with the store (SHEAF_LOOKUP_NONE when the cache was not
 * asked; tokens_saved: what a hit saved). */
typedef enum { SHEAF_LOOKUP_NONE = 0, SHEAF_LOOKUP_HIT, SHEAF_LOOKUP_MISS } sheaf_lookup;
typedef struct sheaf_chunk_result {
    int ok;                      /* 1 ok, 0 failed */
    const char *record;          /* the result record JSON; copied */
    uint64_t prompt_tokens, completion_tokens;
    sheaf_lookup cache;
    uint64_t tokens_saved;
} sheaf_chunk_result;

sheaf_chunk_stores *sheaf_chunk_stores_new(sheaf_aredis *ar);
/* Every store must have been answered (the connection destroyed first
 * answers those on their way, and so those waiting). */
void sheaf_chunk_stores_destroy(sheaf_chunk_stores *st);
void sheaf_chunk_stores_check(sheaf_chunk_stores *st, const sheaf_chunk_msg *m,
                              sheaf_state_fn done, void *ud);
void sheaf_chunk_stores_put(sheaf_chunk_stores *st, const sheaf_chunk_msg *m,
                            const sheaf_chunk_result *res, sheaf_state_fn done, void *ud);
void sheaf_state_job_dlq_incr_async(sheaf_aredis *ar, const char *job, sheaf_state_fn done,
                                    void *ud);
void sheaf_state_job_waiting_async(sheaf_aredis *ar, const char *job, const char *reason,
                                   sheaf_state_fn done, void *ud);
void sheaf_state_job_cache_count_async(sheaf_aredis *ar, const char *job, int hit,
                                       uint64_t tokens_saved, sheaf_state_fn done, void *ud);

/* ---- reducer side, asynchronous ----
 *
 * The reducer's steps on the runtime's loop: the same keys, scripts and
 * outcomes as the synchronous functions named alike; every string argument
 * is copied before the call returns.  What each reply carries: */

/* str: the job's pipeline version (HGET pv); SHEAF_ERR_NOT_FOUND when the
 * job has none (no such job). */
void sheaf_state_job_pv_async(sheaf_aredis *ar, const char *job, sheaf_state_fn done, void *ud);
/* str/len: the stored result of a document (id), group (path) or the
 * overview (id unused); str NULL when none is stored. */
void sheaf_state_result_get_async(sheaf_aredis *ar, const char *job, sheaf_item_kind kind,
                                  const char *id, sheaf_state_fn done, void *ud);
/* strs: the stored results of n documents (kind DOC) or groups (kind
 * GROUP: ids are paths), one per id, NULL where none. */
void sheaf_state_results_get_async(sheaf_aredis *ar, const char *job, sheaf_item_kind kind,
                                   char *const *ids, size_t n, sheaf_state_fn done, void *ud);
/* doc: chunk count, metadata and partials of a document (HMGET and
 * HGETALL pipelined); SHEAF_ERR_NOT_FOUND when it is not registered. */
void sheaf_state_doc_read_async(sheaf_aredis *ar, const char *job, const char *doc,
                                sheaf_state_fn done, void *ud);
/* list: the job's documents (path NULL) or a metadata group's members. */
void sheaf_state_group_member_ids_async(sheaf_aredis *ar, const char *job, const char *path,
                                        sheaf_state_fn done, void *ud);
/* n: the sheaf_store_outcome. */
void sheaf_state_doc_result_store_async(sheaf_aredis *ar, const char *job, const char *doc,
                                        const char *result_json, uint64_t prompt_tokens,
                                        uint64_t completion_tokens, sheaf_state_fn done,
                                        void *ud);
void sheaf_state_group_result_store_async(sheaf_aredis *ar, const char *job, const char *path,
                                          int counted, const char *result_json,
                                          uint64_t prompt_tokens, uint64_t completion_tokens,
                                          sheaf_state_fn done, void *ud);
/* n: the outcome; the job leaves sheaf:jobs:active (unless NO_JOB) before
 * done fires. */
void sheaf_state_overview_store_async(sheaf_aredis *ar, const char *job,
                                      const char *overview_json, uint64_t prompt_tokens,
                                      uint64_t completion_tokens, sheaf_state_fn done, void *ud);
/* n: 1 held, 0 lost. */
void sheaf_state_lease_renew_async(sheaf_aredis *ar, const sheaf_entry_ref *e,
                                   sheaf_state_fn done, void *ud);
/* n: the sheaf_emit_right. */
void sheaf_state_emit_claim_async(sheaf_aredis *ar, const char *job, const sheaf_entry_ref *e,
                                  const char *item, sheaf_state_fn done, void *ud);
void sheaf_state_emit_done_async(sheaf_aredis *ar, const char *job, const char *item,
                                 sheaf_state_fn done, void *ud);
/* Every step of sheaf_state_job_retire (the key walk pages through the
 * document list); done after the last. */
void sheaf_state_job_retire_async(sheaf_aredis *ar, const sheaf_config *cfg, const char *job,
                                  sheaf_state_fn done, void *ud);
/* n: 1 when this call ended the job (then retired as the synchronous one
 * does); SHEAF_ERR_NOT_FOUND for no such job. */
void sheaf_state_job_end_async(sheaf_aredis *ar, const sheaf_config *cfg, const char *job,
                               sheaf_job_state state, const char *reason, sheaf_state_fn done,
                               void *ud);
/* n: how many index entries were removed. */
void sheaf_state_jobs_sweep_async(sheaf_aredis *ar, sheaf_state_fn done, void *ud);
/* list: the active jobs. */
void sheaf_state_active_jobs_async(sheaf_aredis *ar, sheaf_state_fn done, void *ud);
void sheaf_state_ready_group_async(sheaf_aredis *ar, const char *job, const char *group,
                                   const char *from, sheaf_state_fn done, void *ud);
/* batch: new entries, waiting up to block_ms for some (< 0: no BLOCK; a
 * blocked read holds its connection: give it one of its own);
 * SHEAF_ERR_NOT_FOUND when a stream has no group. */
void sheaf_state_ready_read_async(sheaf_aredis *ar, const char *group, const char *consumer,
                                  char *const *jobs, size_t n, size_t first, int count,
                                  int block_ms, sheaf_state_fn done, void *ud);
/* batch: entries pending longer than idle_ms, now consumer's. */
void sheaf_state_ready_claim_async(sheaf_aredis *ar, const char *job, const char *group,
                                   const char *consumer, int idle_ms, int count,
                                   sheaf_state_fn done, void *ud);
void sheaf_state_ready_ack_async(sheaf_aredis *ar, const char *job, const char *group,
                                 const char *id, sheaf_state_fn done, void *ud);
/* n: entries dropped. */
void sheaf_state_ready_trim_async(sheaf_aredis *ar, const char *job, sheaf_state_fn done,
                                  void *ud);

#endif
