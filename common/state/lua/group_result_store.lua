-- Records a group's result once and counts it into its parent.
-- KEYS[1] job hash, KEYS[2] group results hash, KEYS[3] groups hash,
-- KEYS[4] ready stream; ARGV[1] path, ARGV[2] result, ARGV[3] prompt
-- tokens, ARGV[4] completion tokens, ARGV[5] '1' when counted.
-- Returns -1 no such job, 0 stored before, 1 stored now, 2 and the
-- overview enqueued, 3 and the parent group enqueued.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'tokens_group_prompt', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'tokens_group_completion', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'groups_done', 1)
if ARGV[5] ~= '1' then return 1 end
local parent = redis.call('HGET', KEYS[3], 'p:' .. ARGV[1])
if not parent then return 1 end
local d = redis.call('HINCRBY', KEYS[3], 'd:' .. parent, 1)
if d ~= tonumber(redis.call('HGET', KEYS[3], 'n:' .. parent)) then return 1 end
if parent == '[]' then
  redis.call('XADD', KEYS[4], '*', 'type', 'overview')
  return 2
end
redis.call('XADD', KEYS[4], '*', 'type', 'group', 'g', parent)
return 3
