-- Counts a call-cache lookup against its job: cache_hits (and the tokens
-- a hit saved) or cache_misses.  Only an existing job is counted: a job
-- deleted meanwhile is not brought back as a hash of counters.
-- KEYS[1] job hash; ARGV[1] cache_hits|cache_misses, ARGV[2] tokens saved.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'tokens_saved', ARGV[2]) end
return 1
