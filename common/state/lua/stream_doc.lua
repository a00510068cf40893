-- Registers the document of one input record of a stream, once per record.
-- The record's place (topic/partition/offset) decides: a record read again
-- (its offset was not committed before a crash or a rebalance) maps to the
-- document it registered the first time, so its chunks get the same ids
-- and count once.  A new record whose document id was seen before is a new
-- version of that document: its own document "<id>#v<N>" (N = 2, 3, ...;
-- a later free suffix should a document really be named so), with the id
-- and N kept in its hash.  The job's docs and chunks counters grow with
-- every new document; t0 (the record's timestamp) is the start of its
-- end-to-end latency (doc_result_store.lua).
-- Windows (stream.window_docs or stream.window_ms, tumbling): the
-- document joins window k = its ordinal / window_docs, or Redis TIME /
-- window_ms, listed in wd:<k> (registration order) and wopen.
-- KEYS[1] job hash, KEYS[2] src hash (place -> document), KEYS[3] docs
-- list, KEYS[4] id versions hash (id -> last N); ARGV[1] key prefix
-- sheaf:{J}:, ARGV[2] place, ARGV[3] document id, ARGV[4] chunks,
-- ARGV[5] metadata JSON, ARGV[6] t0 (ms), ARGV[7] window_docs,
-- ARGV[8] window_ms (0: no windows).
-- Returns {document, N, 1 registered now | 0 before}, or {'', 0, -1}
-- when the stream job is gone or ended.
if redis.call('HGET', KEYS[1], 'state') ~= 'producing' then return {'', 0, -1} end
local have = redis.call('HGET', KEYS[2], ARGV[2])
if have then
  local v = redis.call('HGET', ARGV[1] .. 'd:' .. have, 'v')
  return {have, tonumber(v or '1'), 0}
end
local v, id, dk
repeat
  v = redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
  id = ARGV[3]
  if v > 1 then id = ARGV[3] .. '#v' .. v end
  dk = ARGV[1] .. 'd:' .. id
until redis.call('EXISTS', dk) == 0
local ord = redis.call('HINCRBY', KEYS[1], 'docs', 1) - 1
redis.call('HINCRBY', KEYS[1], 'chunks', ARGV[4])
redis.call('HSET', dk, 'n', ARGV[4], 'meta', ARGV[5], 'ordinal', ord, 't0', ARGV[6],
  'src', ARGV[2], 'id', ARGV[3], 'v', v)
redis.call('RPUSH', KEYS[3], id)
redis.call('HSET', KEYS[2], ARGV[2], id)
local wdocs, wms, k = tonumber(ARGV[7]), tonumber(ARGV[8]), nil
if wdocs > 0 then k = math.floor(ord / wdocs)
elseif wms > 0 then
  local t = redis.call('TIME')
  k = math.floor((t[1] * 1000 + math.floor(t[2] / 1000)) / wms)
end
if k then
  redis.call('HSET', dk, 'w', k)
  redis.call('RPUSH', ARGV[1] .. 'wd:' .. k, id)
  redis.call('SADD', ARGV[1] .. 'wopen', k)
end
return {id, v, 1}
