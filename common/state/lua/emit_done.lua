-- Records that an item's result was written to the outputs (see
-- emit_claim.lua), so nobody writes it again.  A job deleted meanwhile is
-- not brought back, and an expiring job's emit hash expires with it.
-- KEYS[1] emit hash, KEYS[2] job hash; ARGV[1] item field.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'done')
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
