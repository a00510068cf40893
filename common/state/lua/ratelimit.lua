-- The fleet-wide GCRA limiter (common/state/ratelimit.c): one request and its
-- tokens are admitted against both limits at once, or the wait until they
-- would be is returned; 'p' records a penalty (a 429 or a reset hint) on
-- both.  Times are the server's (TIME), in microseconds.
-- KEYS[1] requests key, KEYS[2] tokens key; ARGV[1] 'a' (acquire) or 'p'
-- (penalty), ARGV[2] emission interval and ARGV[3] tolerance of requests,
-- ARGV[4], ARGV[5] the same of tokens, ARGV[6] tokens asked for, ARGV[7]
-- the penalty.  Returns {1, 0} admitted, {0, wait_us} not yet, 1 (penalty).
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function get_tat(k)
  local v = tonumber(redis.call('GET', k) or '')
  if v == nil or v < now then return now end
  return v
end
local function store(k, tat)
  if tat > now then
    redis.call('SET', k, string.format('%.0f', tat), 'PX',
               math.ceil((tat - now) / 1000) + 1)
  end
end
local T = {tonumber(ARGV[2]), tonumber(ARGV[4])}
local tau = {tonumber(ARGV[3]), tonumber(ARGV[5])}
if ARGV[1] == 'p' then
  local pen = tonumber(ARGV[7])
  for i = 1, 2 do
    store(KEYS[i], math.max(get_tat(KEYS[i]), now + pen + tau[i] - T[i]))
  end
  return 1
end
local n = {1, tonumber(ARGV[6])}
local base, inc, wait = {}, {}, 0
for i = 1, 2 do
  base[i] = get_tat(KEYS[i])
  inc[i] = n[i] * T[i]
  local w = base[i] - now + math.min(inc[i], tau[i]) - tau[i]
  if w > wait then wait = w end
end
if wait > 0 then return {0, math.max(1, math.ceil(wait))} end
for i = 1, 2 do store(KEYS[i], base[i] + inc[i]) end
return {1, 0}
