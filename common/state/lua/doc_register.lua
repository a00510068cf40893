-- Registers one document of a job, once: its hash (chunks, metadata,
-- ordinal, innermost group), its place in the docs list (submit order) and
-- its metadata groups.  A document registered before (by a submit that
-- died and is resumed) is left exactly as it was.
-- Metadata groups: the innermost group gets the document as a member, and
-- each group that appears for the first time becomes a member of its
-- parent (the root "[]" being the job), all in first-appearance order so
-- results do not depend on timing.  Group list keys are built from the
-- job's prefix: they share the {J} hash tag, so this stays on one slot.
-- KEYS[1] document hash, KEYS[2] docs list, KEYS[3] groups hash;
-- ARGV[1] key prefix sheaf:{J}:, ARGV[2] document id, ARGV[3] chunks,
-- ARGV[4] metadata JSON, ARGV[5] ordinal, ARGV[6..] its group paths,
-- outermost first.  Returns 1 registered now, 0 registered before.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local L = #ARGV - 5
if L > 0 then
  redis.call('HSET', KEYS[1], 'n', ARGV[3], 'meta', ARGV[4], 'ordinal', ARGV[5],
             'g', ARGV[5 + L])
else
  redis.call('HSET', KEYS[1], 'n', ARGV[3], 'meta', ARGV[4], 'ordinal', ARGV[5])
end
redis.call('RPUSH', KEYS[2], ARGV[2])
if L == 0 then return 1 end
local pre, doc = ARGV[1], ARGV[2]
local inner = ARGV[5 + L]
if redis.call('HINCRBY', KEYS[3], 'n:' .. inner, 1) == 1 then
  redis.call('RPUSH', pre .. 'ginner', inner)
end
redis.call('RPUSH', pre .. 'gm:' .. inner, doc)
for k = L, 1, -1 do
  local parent = '[]'
  if k > 1 then parent = ARGV[5 + k - 1] end
  if redis.call('HSETNX', KEYS[3], 'p:' .. ARGV[5 + k], parent) == 0 then break end
  redis.call('HINCRBY', KEYS[3], 'n:' .. parent, 1)
  redis.call('RPUSH', pre .. 'gm:' .. parent, ARGV[5 + k])
end
return 1
