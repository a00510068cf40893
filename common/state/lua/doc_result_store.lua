-- Records a document's result once (first write wins) and enqueues its
-- metadata group or the overview when it was the last.
-- KEYS[1] job hash, KEYS[2] results hash, KEYS[3] ready stream,
-- KEYS[4] done_ms hash, KEYS[5] document hash, KEYS[6] groups hash,
-- KEYS[7] document tokens hash; ARGV[1] document, ARGV[2] result,
-- ARGV[3] prompt tokens, ARGV[4] completion tokens, ARGV[5] now (ms).
-- Returns -1 no such job, 0 stored before, 1 stored now, 2 and the
-- overview enqueued, 3 and its group enqueued.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
local t0 = redis.call('HGET', KEYS[5], 't0')
if t0 then
  -- A stream's document (stream_doc.lua): its end-to-end latency (from the
  -- input record's timestamp) into the stream's histogram, quarter-octave
  -- buckets since the start and per minute, and its finish time for the
  -- stream's retention (stream_expire.lua).
  local pre = string.sub(KEYS[1], 1, -4)
  local lat = math.max(1, tonumber(ARGV[5]) - tonumber(t0))
  local b = math.floor(math.log(lat) / math.log(2) * 4)
  redis.call('HINCRBY', pre .. 'lat', 'all:' .. b, 1)
  redis.call('HINCRBY', pre .. 'lat', 'm' .. math.floor(tonumber(ARGV[5]) / 60000) .. ':' .. b, 1)
  redis.call('ZADD', pre .. 'finished', ARGV[5], ARGV[1])
end
redis.call('HINCRBY', KEYS[1], 'tokens_prompt', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'tokens_completion', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'tokens_reduce_prompt', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'tokens_reduce_completion', ARGV[4])
redis.call('HINCRBY', KEYS[7], ARGV[1] .. ':rp', ARGV[3])
redis.call('HINCRBY', KEYS[7], ARGV[1] .. ':rc', ARGV[4])
local d = redis.call('HINCRBY', KEYS[1], 'docs_done', 1)
local total = tonumber(redis.call('HGET', KEYS[1], 'docs') or '-1')
local running = redis.call('HGET', KEYS[1], 'state') == 'running'
local g = redis.call('HGET', KEYS[5], 'g')
if g then
  local gd = redis.call('HINCRBY', KEYS[6], 'd:' .. g, 1)
  if running and gd == tonumber(redis.call('HGET', KEYS[6], 'n:' .. g)) then
    redis.call('XADD', KEYS[3], '*', 'type', 'group', 'g', g)
    return 3
  end
  return 1
end
if running and d == total then
  redis.call('XADD', KEYS[3], '*', 'type', 'overview')
  return 2
end
return 1
