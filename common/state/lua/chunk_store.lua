-- Records a chunk's map result, first write wins, and enqueues the
-- document when it was its last chunk.
-- KEYS[1] job hash, KEYS[2] partials hash, KEYS[3] ready stream,
-- KEYS[4] document tokens hash, KEYS[5] results hash; ARGV[1] document,
-- ARGV[2] chunk index, ARGV[3] chunks of the document, ARGV[4] ok|failed,
-- ARGV[5] record, ARGV[6] prompt tokens, ARGV[7] completion tokens.
-- Returns -1 no such job (deleted, expired), -2 job cancelled, 0 a
-- duplicate, 1 new, 2 new and the document enqueued.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'state') == 'cancelled' then return -2 end
local f = 's:' .. ARGV[2]
if redis.call('HEXISTS', KEYS[2], f) == 1 then return 0 end
redis.call('HSET', KEYS[2], f, ARGV[4], 'r:' .. ARGV[2], ARGV[5])
if ARGV[4] == 'ok' then redis.call('HINCRBY', KEYS[1], 'chunks_ok', 1)
else redis.call('HINCRBY', KEYS[1], 'chunks_failed', 1)
  redis.call('HINCRBY', KEYS[2], 'failed', 1) end
redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'tokens_map_prompt', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'tokens_map_completion', ARGV[7])
redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':p', ARGV[6])
redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':c', ARGV[7])
local done = redis.call('HINCRBY', KEYS[2], 'done', 1)
if done == tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[1], 'docs_ready', 1)
  if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 1 end
  redis.call('XADD', KEYS[3], '*', 'type', 'doc', 'doc', ARGV[1])
  return 2
end
return 1
