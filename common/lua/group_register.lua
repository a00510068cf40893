-- Counts a document into its metadata groups (see state.c group_register).
-- KEYS[1] groups hash; ARGV[1] key prefix sheaf:{J}:, ARGV[2] document id,
-- ARGV[3..] its group paths, outermost first.
local L = #ARGV - 2
local pre, doc = ARGV[1], ARGV[2]
local inner = ARGV[L + 2]
if redis.call('HINCRBY', KEYS[1], 'n:' .. inner, 1) == 1 then
  redis.call('RPUSH', pre .. 'ginner', inner)
end
redis.call('RPUSH', pre .. 'gm:' .. inner, doc)
for k = L, 1, -1 do
  local parent = '[]'
  if k > 1 then parent = ARGV[k + 1] end
  if redis.call('HSETNX', KEYS[1], 'p:' .. ARGV[k + 2], parent) == 0 then break end
  redis.call('HINCRBY', KEYS[1], 'n:' .. parent, 1)
  redis.call('RPUSH', pre .. 'gm:' .. parent, ARGV[k + 2])
end
return 1
