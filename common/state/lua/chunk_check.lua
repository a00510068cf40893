-- Whether a chunk still needs its map call: not when its result is
-- recorded (a redelivery), nor when its job was cancelled.
-- KEYS[1] partials hash, KEYS[2] job hash; ARGV[1] field s:<idx>.
-- Returns 1 recorded, 2 job cancelled, 0 to be done.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('HGET', KEYS[2], 'state') == 'cancelled' then return 2 end
return 0
