-- `sheaf repair`, one document (see producer/repair.c): counts its chunk
-- records, compares them with its counters, and with apply set writes the
-- counts the records say (moving the job's counters by the same
-- difference) and enqueues {type=doc} when every chunk is recorded, no
-- result exists and no entry is live.  Lost chunks are reported (missing).
-- KEYS[1] job hash, KEYS[2] partials hash, KEYS[3] document hash,
-- KEYS[4] results hash, KEYS[5] ready stream, KEYS[6] done_ms hash;
-- ARGV[1] document, ARGV[2] apply (1: write), ARGV[3] live (1: a live entry
-- was seen by the scan), ARGV[4] since (the stream's last id at the scan).
-- Returns {-1} when the document is not registered, else {n, ok, failed,
-- done (before), has result, entry (enqueued / needed), fix (counters
-- differ), {missing chunk indexes}}.  No failed count (none failed, or
-- recorded by an older sheaf): the lost chunks are taken for ok ones.
--@include after
local n = tonumber(redis.call('HGET', KEYS[3], 'n') or '-1')
if n < 0 then return {-1} end
local ok, failed, missing, i = 0, 0, {}, 0
while i < n do
  local f, j = {}, i
  while j < n and j < i + 1000 do f[#f + 1] = 's:' .. j; j = j + 1 end
  local v = redis.call('HMGET', KEYS[2], unpack(f))
  for k = 1, #f do
    if v[k] == 'ok' then ok = ok + 1
    elseif v[k] then failed = failed + 1
    else missing[#missing + 1] = i + k - 1 end
  end
  i = j
end
local rec = ok + failed
local done = tonumber(redis.call('HGET', KEYS[2], 'done') or '0')
local fo = redis.call('HGET', KEYS[2], 'failed')
local fold = failed
if fo then fold = tonumber(fo) end
if fold > done then fold = done end
local okold = done - fold
local has = redis.call('HEXISTS', KEYS[4], ARGV[1])
local counted = redis.call('HEXISTS', KEYS[6], ARGV[1])
local entry = 0
if rec == n and has == 0 and ARGV[3] ~= '1' and
   not after(KEYS[5], ARGV[4], 'doc', 'doc', ARGV[1]) then entry = 1 end
local rold, rnew = 0, 0
if done == n then rold = 1 end
if rec == n then rnew = 1 end
local fix = 0
if done ~= rec or fold ~= failed or (fo and tonumber(fo) ~= failed) or
   (counted == 1 and has == 0) then fix = 1 end
if ARGV[2] == '1' then
  if done ~= rec then redis.call('HSET', KEYS[2], 'done', rec) end
  if failed > 0 and tonumber(fo or '-1') ~= failed then
    redis.call('HSET', KEYS[2], 'failed', failed)
  elseif failed == 0 and fo then redis.call('HDEL', KEYS[2], 'failed') end
  if ok ~= okold then redis.call('HINCRBY', KEYS[1], 'chunks_ok', ok - okold) end
  if failed ~= fold then redis.call('HINCRBY', KEYS[1], 'chunks_failed', failed - fold) end
  if rnew ~= rold then redis.call('HINCRBY', KEYS[1], 'docs_ready', rnew - rold) end
  if counted == 1 and has == 0 then redis.call('HDEL', KEYS[6], ARGV[1]) end
  if entry == 1 then redis.call('XADD', KEYS[5], '*', 'type', 'doc', 'doc', ARGV[1]) end
end
return {n, ok, failed, done, has, entry, fix, missing}
