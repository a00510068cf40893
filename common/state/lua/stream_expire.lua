-- Retention of a stream's finished documents: a stream job never ends, so
-- job.retention applies per document.  Documents whose result was stored
-- before ARGV[2] and written to the outputs lose every key and field they
-- had: registration, partials, result, emission mark, tokens, their place
-- in the docs list and the src map, and their version counter when they
-- were the last version (a later record with that id starts again at 1).
-- Latency histogram fields of minutes before ARGV[4] go too, and the
-- reports of stream processes silent since before ARGV[5].
-- KEYS[1] finished zset, KEYS[2] results, KEYS[3] done_ms, KEYS[4] emit,
-- KEYS[5] doc_tokens, KEYS[6] docs list, KEYS[7] src hash, KEYS[8] id
-- versions, KEYS[9] latency hash, KEYS[10] process reports hash;
-- ARGV[1] key prefix, ARGV[2] cutoff (ms), ARGV[3] at most this many
-- documents, ARGV[4] oldest minute kept, ARGV[5] oldest report kept (ms).
-- Returns the number of documents dropped.
local pre, n = ARGV[1], 0
local docs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, doc in ipairs(docs) do
  if redis.call('HGET', KEYS[4], 'doc:' .. doc) == 'done' then
    local dk = pre .. 'd:' .. doc
    local h = redis.call('HMGET', dk, 'src', 'id', 'v')
    if h[1] then redis.call('HDEL', KEYS[7], h[1]) end
    if h[2] and redis.call('HGET', KEYS[8], h[2]) == h[3] then redis.call('HDEL', KEYS[8], h[2]) end
    redis.call('DEL', dk, pre .. 'p:' .. doc)
    redis.call('HDEL', KEYS[2], doc)
    redis.call('HDEL', KEYS[3], doc)
    redis.call('HDEL', KEYS[4], 'doc:' .. doc)
    redis.call('HDEL', KEYS[5], doc .. ':p', doc .. ':c', doc .. ':rp', doc .. ':rc')
    if redis.call('LINDEX', KEYS[6], 0) == doc then redis.call('LPOP', KEYS[6])
    else redis.call('LREM', KEYS[6], 1, doc) end
    redis.call('ZREM', KEYS[1], doc)
    n = n + 1
  end
end
local old = tonumber(ARGV[4])
for _, f in ipairs(redis.call('HKEYS', KEYS[9])) do
  local m = tonumber(string.match(f, '^m(%d+):'))
  if m and m < old then redis.call('HDEL', KEYS[9], f) end
end
local h = redis.call('HGETALL', KEYS[10])
for i = 1, #h, 2 do
  local ms = tonumber(string.match(h[i + 1], ' (%d+)$'))
  if string.sub(h[i], 1, 7) == 'paused:' and ms and ms < tonumber(ARGV[5]) then
    redis.call('HDEL', KEYS[10], h[i])
  end
end
return n
