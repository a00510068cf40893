-- `sheaf dlq redrive`: forgets a document's failed chunks (all, or those
-- whose recorded error contains ARGV[2]) so that the fleet redoes them, and
-- the document's result and its emission mark, so that it is reduced and
-- written out again.  Counters are left to `sheaf repair`, which recounts
-- them from the records right after.
-- KEYS[1] partials hash, KEYS[2] results hash, KEYS[3] done_ms hash,
-- KEYS[4] emit hash; ARGV[1] document, ARGV[2] reason substring ('' = any).
-- Returns the number of chunks forgotten.
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 2) == 's:' and all[i + 1] == 'failed' then
    local idx = string.sub(f, 3)
    local rec = redis.call('HGET', KEYS[1], 'r:' .. idx) or ''
    if ARGV[2] == '' or string.find(rec, ARGV[2], 1, true) then
      redis.call('HDEL', KEYS[1], f, 'r:' .. idx)
      n = n + 1
    end
  end
end
if n > 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], 'doc:' .. ARGV[1])
end
return n
