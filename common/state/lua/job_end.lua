-- Ends a job that has not ended: state failed or cancelled, with the
-- reason and finished_ms.  A job that is done, failed or cancelled already
-- keeps its state.
-- KEYS[1] job hash; ARGV[1] state, ARGV[2] reason, ARGV[3] now (ms).
-- Returns 1 when ended now, 0 when it had ended already, -1 no such job.
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return -1 end
if s == 'done' or s == 'failed' or s == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'error', ARGV[2], 'finished_ms', ARGV[3])
return 1
