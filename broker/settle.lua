-- Settles messages in one atomic script: no longer pending, their dead letters stored,
-- and a confirmation `wait()` reads. Its first write (ZREM) frees memory, and a script that
-- has written may go on writing past `maxmemory` (scripts without flags, Redis 6 to 8): a
-- Redis full of queued messages under `noeviction` must still let workers drain it.
-- KEYS: pending, messages, out_since, dlq, dlq index, done, applied, tallies.
-- ARGV: n, now, confirm ttl, applied ops, tally, tally ttl, n message ids, then key, record,
-- time per letter.
-- A message's first settle is the one that finds it pending (or, one never pending, from
-- another publisher, not yet confirmed); a redelivered copy of a settled message is not.
-- Returns 1 if this settle is the first of every message: then (only) it adds the applied
-- ops to `applied` and appends the batch's tally (its metrics, worker/tallies.py), if not
-- empty, to the list `tallies`. Otherwise returns one character per message id, "1" for
-- the messages settled first, and counts nothing: the caller counts those.
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local every = true
local flags = {}
for i = 7, 6 + n, 500 do
  local ids = {unpack(ARGV, i, math.min(i + 499, 6 + n))}
  -- Looked up only when some message was not pending: the common case costs nothing more.
  local done = nil
  if redis.call('ZREM', KEYS[1], unpack(ids)) < #ids then
    every = false
    done = redis.call('ZMSCORE', KEYS[6], unpack(ids))
  end
  redis.call('HDEL', KEYS[2], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(ids))
  local scored = {}
  for j = 1, #ids do
    scored[2 * j - 1] = now
    scored[2 * j] = ids[j]
    flags[#flags + 1] = (done == nil or not done[j]) and '1' or '0'
  end
  redis.call('ZADD', KEYS[6], unpack(scored))
end
for i = 7 + n, #ARGV, 3 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[5], ARGV[i + 2], ARGV[i])
end
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(ARGV[3]))
end
if not every then
  return table.concat(flags)
end
if tonumber(ARGV[4]) > 0 then
  redis.call('INCRBY', KEYS[7], ARGV[4])
end
if ARGV[5] ~= '' then
  redis.call('RPUSH', KEYS[8], ARGV[5])
  redis.call('EXPIRE', KEYS[8], ARGV[6])
end
return 1
