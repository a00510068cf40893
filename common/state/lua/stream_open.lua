-- Opens a stream (`sheaf stream --name NAME`): creates the long-lived job
-- NAME the first time, the way job_create does (state producing: it never
-- turns running, so nothing ever counts it done or queues an overview),
-- marked as a stream of topic ARGV[7] read by consumer group ARGV[8]; a
-- later stream process of the same name attaches to it.
-- KEYS[1] job hash, KEYS[2] ready stream, KEYS[3] versions hash;
-- ARGV[1] name, ARGV[2] pv, ARGV[3] map topic, ARGV[4] now (ms),
-- ARGV[5] reducer group, ARGV[6] beat interval (ms), ARGV[7] input topic,
-- ARGV[8] consumer group.
-- Returns {2} created, {1} attached, {-1} a job that is not a stream,
-- {-2, pv} another pipeline version, {-3, topic} another input topic,
-- {-4, state} the stream job ended (cancelled).
if redis.call('EXISTS', KEYS[1]) == 1 then
  local h = redis.call('HMGET', KEYS[1], 'stream_from', 'pv', 'state')
  if not h[1] then return {-1} end
  if h[3] ~= 'producing' then return {-4, h[3]} end
  if h[2] ~= ARGV[2] then return {-2, h[2]} end
  if h[1] ~= ARGV[7] then return {-3, h[1]} end
  redis.call('HSET', KEYS[1], 'stream_group', ARGV[8])
  return {1}
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'producing', 'pv', ARGV[2],
  'topic', ARGV[3], 'created_ms', ARGV[4],
  'beat_ms', ARGV[6], 'docs', 0, 'chunks', 0,
  'chunks_ok', 0, 'chunks_failed', 0, 'docs_ready', 0, 'docs_done', 0, 'dlq', 0,
  'tokens_prompt', 0, 'tokens_completion', 0,
  'stream_from', ARGV[7], 'stream_group', ARGV[8])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'producer_seen_ms', t[1] * 1000 + math.floor(t[2] / 1000))
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[5], '0', 'MKSTREAM')
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return {2}
