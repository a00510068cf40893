/* lua_scripts.h - the Redis Lua scripts of common/state/lua/, built in by
 * common/state/lua/embed.cmake.  Only state code (and the rate limiter, for its
 * own keys) includes this: the key names and the scripts that touch them
 * have one owner (sheaf/state.h). */
#ifndef SHEAF_LUA_SCRIPTS_H
#define SHEAF_LUA_SCRIPTS_H

extern const char sheaf_lua_job_create[], sheaf_lua_doc_register[], sheaf_lua_job_resume[],
    sheaf_lua_job_beat[],
    sheaf_lua_job_running[], sheaf_lua_chunk_store[], sheaf_lua_job_dlq_incr[],
    sheaf_lua_doc_result_store[], sheaf_lua_group_result_store[], sheaf_lua_overview_store[],
    sheaf_lua_lease_renew[], sheaf_lua_emit_claim[], sheaf_lua_emit_done[], sheaf_lua_job_end[],
    sheaf_lua_chunk_check[], sheaf_lua_job_waiting[], sheaf_lua_doc_unfail[],
    sheaf_lua_job_unreduce[], sheaf_lua_job_cache_count[], sheaf_lua_repair_doc[],
    sheaf_lua_repair_job[], sheaf_lua_repair_group[], sheaf_lua_ready_trim[], sheaf_lua_ratelimit[];
/* Streams (state_stream.c). */
extern const char sheaf_lua_stream_open[], sheaf_lua_stream_doc[], sheaf_lua_stream_expire[];

#endif
