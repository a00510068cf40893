-- Marks a producing job alive.  KEYS[1] job hash; ARGV[1] now (ms).
if redis.call('HGET', KEYS[1], 'state') ~= 'producing' then return 0 end
redis.call('HSET', KEYS[1], 'producer_seen_ms', ARGV[1])
return 1
