-- Decides who writes an item's result (a document, a group, the overview)
-- to the outputs (reducer.output, the results topic): exactly one process,
-- the one holding the item's emission right, recorded in the job's emit
-- hash as "<consumer> <entry id>" and then "done".
-- The right goes to the caller when nobody holds it, or when its holder is
-- presumed dead: the entry it held is no longer pending under it (acked,
-- or claimed by another reducer after reducer.claim_idle_ms).  A caller
-- whose own entry is no longer its own gets nothing.
-- KEYS[1] emit hash, KEYS[2] stream, KEYS[3] job hash;
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] item field.
-- Returns 0 emit (the right is yours), 1 already emitted, 2 held by a live
-- holder (ack your entry: the holder's covers the item), 3 your entry is
-- not yours any more (leave it to its owner), -1 no such job.
local function owner(id)
  local p = redis.call('XPENDING', KEYS[2], ARGV[1], id, id, 1)
  if #p == 0 then return false end
  return p[1][2]
end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if owner(ARGV[3]) ~= ARGV[2] then return 3 end
local v = redis.call('HGET', KEYS[1], ARGV[4])
if v == 'done' then return 1 end
if v then
  local sp = string.find(v, ' ', 1, true)
  local c, id = string.sub(v, 1, sp - 1), string.sub(v, sp + 1)
  if not (c == ARGV[2] and id == ARGV[3]) and owner(id) == c then return 2 end
end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[2] .. ' ' .. ARGV[3])
local ttl = redis.call('PTTL', KEYS[3])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 0
