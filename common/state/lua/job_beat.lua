-- Marks a producing job alive, stamped with the server's clock (status
-- judges staleness by the same clock, whatever the machines' clocks say).
-- KEYS[1] job hash.
if redis.call('HGET', KEYS[1], 'state') ~= 'producing' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'producer_seen_ms', t[1] * 1000 + math.floor(t[2] / 1000))
return 1
