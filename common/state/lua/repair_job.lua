-- `sheaf repair`, the job: docs_done, groups_done and every metadata
-- group's done count are recounted from the results present (a document or
-- group counts into its parent only when its result is first stored, so
-- that is what the counts mean); with apply set they are written, a done
-- job that lost results is running again and a missing overview whose
-- documents are all done is enqueued.
-- KEYS[1] job hash, KEYS[2] results hash, KEYS[3] ready stream,
-- KEYS[4] groups hash, KEYS[5] overview, KEYS[6] group results hash,
-- KEYS[7] innermost groups list; ARGV[1] key prefix sheaf:{J}:, ARGV[2]
-- apply, ARGV[3] since, ARGV[4] overview live (1).
-- Returns {state, docs, docs_done before, docs_done now, overview exists,
-- overview enqueued / needed, reopened / to reopen, group counts fixed,
-- {complete groups without a result}}.
--@include after
local apply = ARGV[2] == '1'
local state = redis.call('HGET', KEYS[1], 'state') or ''
local docs = tonumber(redis.call('HGET', KEYS[1], 'docs') or '0')
local done = redis.call('HLEN', KEYS[2])
local dold = tonumber(redis.call('HGET', KEYS[1], 'docs_done') or '0')
if apply and done ~= dold then redis.call('HSET', KEYS[1], 'docs_done', done) end
local groups, gfix, gmissing, root = {}, 0, 0, (done == docs)
local gd = redis.call('HLEN', KEYS[6])
if gd ~= tonumber(redis.call('HGET', KEYS[1], 'groups_done') or '0') then
  gfix = gfix + 1
  if apply then redis.call('HSET', KEYS[1], 'groups_done', gd) end
end
local inner = redis.call('LRANGE', KEYS[7], 0, -1)
if #inner > 0 then
  local isinner = {}
  for _, g in ipairs(inner) do isinner[g] = true end
  for _, k in ipairs(redis.call('HKEYS', KEYS[4])) do
    if string.sub(k, 1, 2) == 'n:' then
      local path = string.sub(k, 3)
      local src = KEYS[6]
      if isinner[path] then src = KEYS[2] end
      local d = 0
      for _, m in ipairs(redis.call('LRANGE', ARGV[1] .. 'gm:' .. path, 0, -1)) do
        d = d + redis.call('HEXISTS', src, m)
      end
      if d ~= tonumber(redis.call('HGET', KEYS[4], 'd:' .. path) or '0') then
        gfix = gfix + 1
        if apply then redis.call('HSET', KEYS[4], 'd:' .. path, d) end
      end
      local n = tonumber(redis.call('HGET', KEYS[4], k))
      if path == '[]' then root = (d == n)
      elseif redis.call('HEXISTS', KEYS[6], path) == 0 then
        gmissing = gmissing + 1
        if d == n then groups[#groups + 1] = path end
      end
    end
  end
end
local ov = redis.call('EXISTS', KEYS[5])
local needov = 0
if root and ov == 0 and ARGV[4] ~= '1' and
   not after(KEYS[3], ARGV[3], 'overview', '', '') then needov = 1 end
local reopen = 0
if state == 'done' and (ov == 0 or done < docs or gmissing > 0) then reopen = 1 end
if apply then
  if reopen == 1 then redis.call('HSET', KEYS[1], 'state', 'running') end
  if needov == 1 then redis.call('XADD', KEYS[3], '*', 'type', 'overview') end
end
return {state, docs, dold, done, ov, needov, reopen, gfix, groups}
