-- Records the overview once and marks the job done.
-- KEYS[1] job hash, KEYS[2] overview; ARGV[1] overview, ARGV[2] prompt
-- tokens, ARGV[3] completion tokens, ARGV[4] now (ms).
-- Returns -1 no such job (or cancelled), 0 stored before, 1 stored now.
local s = redis.call('HGET', KEYS[1], 'state')
if not s or s == 'cancelled' then return -1 end
local stored = 0
if redis.call('SETNX', KEYS[2], ARGV[1]) == 1 then
  stored = 1
  redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'tokens_overview_prompt', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'tokens_overview_completion', ARGV[3])
end
redis.call('HSET', KEYS[1], 'state', 'done')
if redis.call('HEXISTS', KEYS[1], 'finished_ms') == 0 then
  redis.call('HSET', KEYS[1], 'finished_ms', ARGV[4]) end
return stored
