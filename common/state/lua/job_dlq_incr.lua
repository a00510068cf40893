-- Counts a dead letter against its job, if the job exists.  KEYS[1] job hash.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'dlq', 1)
