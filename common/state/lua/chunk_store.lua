-- Records the map results of one or more chunks of a job, first write
-- wins for each, and enqueues every document whose last chunk this was.
-- A worker sends the chunks that finished while its previous store of the
-- job was on its way in one call: the job's counters are added once per
-- call, not once per chunk (Redis' CPU per chunk is the fleet's ceiling).
-- KEYS[1] job hash, KEYS[2] ready stream, KEYS[3] document tokens hash,
-- KEYS[4] results hash, KEYS[4+i] partials hash of chunk i (i = 1..n);
-- ARGV[1] cache hits, ARGV[2] cache misses, ARGV[3] tokens the hits saved
-- (the lookups of these chunks, counted against the job), then 7 per
-- chunk i from ARGV[4+7(i-1)]: document, chunk index, chunks of the
-- document, ok|failed, record, prompt tokens, completion tokens.
-- Returns -1 no such job (deleted, expired), -2 job cancelled, else one
-- outcome per chunk: 0 a duplicate, 1 new, 2 new and the document
-- enqueued.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '0' then redis.call('HINCRBY', KEYS[1], 'cache_hits', ARGV[1]) end
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'cache_misses', ARGV[2]) end
if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'tokens_saved', ARGV[3]) end
if redis.call('HGET', KEYS[1], 'state') == 'cancelled' then return -2 end
local out = {}
local ok_n, failed_n, new_n, ready_n, tp, tc = 0, 0, 0, 0, 0, 0
-- Documents' tokens, added once per document, in the order first met.
local dtok, dorder = {}, {}
for i = 1, #KEYS - 4 do
  local b = 4 + 7 * (i - 1)
  local doc, idx, st = ARGV[b], ARGV[b + 1], ARGV[b + 3]
  local pk = KEYS[4 + i]
  local f = 's:' .. idx
  if redis.call('HEXISTS', pk, f) == 1 then
    out[i] = 0
  else
    redis.call('HSET', pk, f, st, 'r:' .. idx, ARGV[b + 4])
    new_n = new_n + 1
    if st == 'ok' then ok_n = ok_n + 1
    else failed_n = failed_n + 1
      redis.call('HINCRBY', pk, 'failed', 1) end
    local p, c = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
    tp, tc = tp + p, tc + c
    local d = dtok[doc]
    if d then d[1], d[2] = d[1] + p, d[2] + c
    else dtok[doc] = {p, c}; dorder[#dorder + 1] = doc end
    out[i] = 1
    if redis.call('HINCRBY', pk, 'done', 1) == tonumber(ARGV[b + 2]) then
      ready_n = ready_n + 1
      if redis.call('HEXISTS', KEYS[4], doc) == 0 then
        redis.call('XADD', KEYS[2], '*', 'type', 'doc', 'doc', doc)
        out[i] = 2
      end
    end
  end
end
if ok_n > 0 then redis.call('HINCRBY', KEYS[1], 'chunks_ok', ok_n) end
if failed_n > 0 then redis.call('HINCRBY', KEYS[1], 'chunks_failed', failed_n) end
if new_n > 0 then
  local p, c = string.format('%d', tp), string.format('%d', tc)
  redis.call('HINCRBY', KEYS[1], 'tokens_prompt', p)
  redis.call('HINCRBY', KEYS[1], 'tokens_completion', c)
  redis.call('HINCRBY', KEYS[1], 'tokens_map_prompt', p)
  redis.call('HINCRBY', KEYS[1], 'tokens_map_completion', c)
  for _, doc in ipairs(dorder) do
    local d = dtok[doc]
    redis.call('HINCRBY', KEYS[3], doc .. ':p', string.format('%d', d[1]))
    redis.call('HINCRBY', KEYS[3], doc .. ':c', string.format('%d', d[2]))
  end
end
if ready_n > 0 then redis.call('HINCRBY', KEYS[1], 'docs_ready', ready_n) end
return out
