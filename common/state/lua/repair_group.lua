-- `sheaf repair`, a complete metadata group without a result: enqueues its
-- {type=group} unless a result or a live entry exists.
-- KEYS[1] ready stream, KEYS[2] group results hash, KEYS[3] groups hash;
-- ARGV[1] path, ARGV[2] since.  Returns 1 when enqueued.
--@include after
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
if redis.call('HGET', KEYS[3], 'd:' .. ARGV[1]) ~=
   redis.call('HGET', KEYS[3], 'n:' .. ARGV[1]) then return 0 end
if after(KEYS[1], ARGV[2], 'group', 'g', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'type', 'group', 'g', ARGV[1])
return 1
