-- Which chunks of a job still need their map call: not one whose result is
-- recorded (a redelivery), nor any when the job was cancelled.  A worker
-- asks for the chunks it took while its previous check of the job was on
-- its way in one call.
-- KEYS[1] job hash, KEYS[1+i] partials hash of chunk i; ARGV[i] its field
-- s:<idx> (i = 1..n).
-- Returns 2 when the job is cancelled, else one per chunk: 1 recorded, 0 to
-- be done.
if redis.call('HGET', KEYS[1], 'state') == 'cancelled' then return 2 end
local out = {}
for i = 1, #ARGV do out[i] = redis.call('HEXISTS', KEYS[1 + i], ARGV[i]) end
return out
