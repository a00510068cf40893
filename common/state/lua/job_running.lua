-- Production ended: totals and state running, and whatever is already
-- complete enqueued (exactly one of this and the last document result
-- enqueues the overview).
-- KEYS[1] job hash, KEYS[2] ready stream, KEYS[3] innermost groups list,
-- KEYS[4] groups hash; ARGV[1] documents, ARGV[2] chunks.
redis.call('HSET', KEYS[1], 'state', 'running', 'docs', ARGV[1], 'chunks', ARGV[2])
local inner = redis.call('LRANGE', KEYS[3], 0, -1)
if #inner > 0 then
  local n = 0
  for _, g in ipairs(inner) do
    local want = redis.call('HGET', KEYS[4], 'n:' .. g)
    if redis.call('HGET', KEYS[4], 'd:' .. g) == want then
      redis.call('XADD', KEYS[2], '*', 'type', 'group', 'g', g)
      n = n + 1
    end
  end
  return 3
end
local done = tonumber(redis.call('HGET', KEYS[1], 'docs_done') or '0')
if done == tonumber(ARGV[1]) then
  redis.call('XADD', KEYS[2], '*', 'type', 'overview')
  return 2
end
return 1
