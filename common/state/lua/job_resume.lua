-- Takes a job over for a resumed submit (`sheaf submit --resume`): only a
-- job still producing, under the same pipeline version.  Its beat is
-- renewed at once, so two resumes cannot both pass the stalled check.
-- KEYS[1] job hash; ARGV[1] pipeline version, ARGV[2] the beat age (ms)
-- above which the old submit counts as dead.
-- Returns 1 taken over, -1 no such job, -2 not producing, -3 another
-- pipeline version, -4 its submit is alive (beat younger than ARGV[2]).
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return -1 end
if s ~= 'producing' then return -2 end
if redis.call('HGET', KEYS[1], 'pv') ~= ARGV[1] then return -3 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local seen = tonumber(redis.call('HGET', KEYS[1], 'producer_seen_ms') or '0')
if now - seen < tonumber(ARGV[2]) then return -4 end
redis.call('HSET', KEYS[1], 'producer_seen_ms', now)
redis.call('HINCRBY', KEYS[1], 'resumes', 1)
return 1
