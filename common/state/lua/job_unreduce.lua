-- `sheaf dlq redrive`, after documents were forgotten (doc_unfail.lua):
-- the group results and the overview depend on them, so they go too (with
-- their emission marks) and are computed and written out again.
-- KEYS[1] groups results hash, KEYS[2] overview, KEYS[3] emit hash.
redis.call('DEL', KEYS[1], KEYS[2])
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[3])) do
  if f == 'overview' or string.sub(f, 1, 6) == 'group:' then
    redis.call('HDEL', KEYS[3], f)
    n = n + 1
  end
end
return n
