-- Creates a job (state producing) unless its id exists, with its ready
-- stream and the reducers' consumer group, and records the run of its
-- pipeline version.
-- KEYS[1] job hash, KEYS[2] ready stream, KEYS[3] versions hash;
-- ARGV[1] job id, ARGV[2] pv, ARGV[3] topic, ARGV[4] now (ms),
-- ARGV[5] reducer group, ARGV[6] beat interval (ms).  Returns 1, or 0 when
-- the job exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'producing', 'pv', ARGV[2],
  'topic', ARGV[3], 'created_ms', ARGV[4],
  'beat_ms', ARGV[6], 'docs', 0, 'chunks', 0,
  'chunks_ok', 0, 'chunks_failed', 0, 'docs_ready', 0, 'docs_done', 0, 'dlq', 0,
  'tokens_prompt', 0, 'tokens_completion', 0)
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'producer_seen_ms', t[1] * 1000 + math.floor(t[2] / 1000))
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[5], '0', 'MKSTREAM')
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return 1
