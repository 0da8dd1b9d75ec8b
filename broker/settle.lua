-- Settles messages in one atomic script: no longer pending, their dead letters stored,
-- and a confirmation `wait()` reads. Its first write (ZREM) frees memory, and a script that
-- has written may go on writing past `maxmemory` (scripts without flags, Redis 6 to 8): a
-- Redis full of queued messages under `noeviction` must still let workers drain it.
-- KEYS: pending, messages, out_since, dlq, dlq index, done, applied.
-- ARGV: n, now, confirm ttl, applied ops, n message ids, then key, record, time per letter.
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
for i = 5, 4 + n, 500 do
  local ids = {unpack(ARGV, i, math.min(i + 499, 4 + n))}
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(ids))
  local scored = {}
  for j = 1, #ids do
    scored[2 * j - 1] = now
    scored[2 * j] = ids[j]
  end
  redis.call('ZADD', KEYS[6], unpack(scored))
end
for i = 5 + n, #ARGV, 3 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[5], ARGV[i + 2], ARGV[i])
end
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(ARGV[3]))
end
if tonumber(ARGV[4]) > 0 then
  redis.call('INCRBY', KEYS[7], ARGV[4])
end
return n
