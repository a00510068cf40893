-- Trims a job's ready stream while the job runs: entries every consumer
-- group has acknowledged are dropped (the oldest entry kept is the oldest
-- pending one, or the last delivered), so a long job's stream stays as
-- short as its work in progress.  Entries a repair may look for (live ones,
-- and those appended since its scan) are never older than that.
-- KEYS[1] ready stream.  Returns how many entries were dropped.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local keep = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local p = redis.call('XPENDING', KEYS[1], name)
  local oldest = last
  if p[1] > 0 then oldest = p[2] end
  if not keep or older(oldest, keep) then keep = oldest end
end
if not keep or keep == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
