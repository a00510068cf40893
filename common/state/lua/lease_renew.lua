-- Renews a reducer's lease on a ready-stream entry while it works on it:
-- resets the entry's idle time (XCLAIM ... JUSTID by its own consumer) so
-- no other reducer's XAUTOCLAIM takes it over, but only while the entry is
-- still pending under this consumer: a lease lost (the process stalled past
-- reducer.claim_idle_ms and another reducer claimed the entry) is never
-- taken back.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id.
-- Returns 1 when the lease is held (and renewed), 0 when it is lost.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
