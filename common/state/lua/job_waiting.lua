-- Records what a job is waiting on (a worker parked a chunk whose calls
-- keep failing transiently), stamped with the server's clock so readers on
-- other machines judge its age the same way.  Nothing for a job that is
-- gone or has ended.
-- KEYS[1] job hash; ARGV[1] reason.
local s = redis.call('HGET', KEYS[1], 'state')
if s ~= 'running' and s ~= 'producing' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'retry_reason', ARGV[1],
           'retry_ms', t[1] * 1000 + math.floor(t[2] / 1000))
return 1
