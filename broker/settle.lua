-- Settles messages in one atomic script: no longer pending, their dead letters stored,
-- and a confirmation `wait()` reads. Its first write (ZREM) frees memory, and a script that
-- has written may go on writing past `maxmemory` (scripts without flags, Redis 6 to 8): a
-- Redis full of queued messages under `noeviction` must still let workers drain it.
-- KEYS: pending, messages, out_since, dlq, dlq index, done, applied, tallies.
-- ARGV: n, now, confirm ttl, tally, tally ttl, n message ids, their n op counts, then key,
-- record, time per letter. Returns one character per message id: "1" if this is its first
-- settle (it was still pending, or was never confirmed), else "0" (settled before: a
-- redelivered copy). Its op count is added to `applied` only on its first settle, so no op
-- is counted twice; the batch's tally (its metrics, worker/tallies.py), if not empty, is
-- appended to the list `tallies` only if this settle is the first of every message.
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local first = {}
local firsts = 0
local applied = 0
for i = 6, 5 + n, 500 do
  local ids = {unpack(ARGV, i, math.min(i + 499, 5 + n))}
  local pending = redis.call('ZMSCORE', KEYS[1], unpack(ids))
  local done = redis.call('ZMSCORE', KEYS[6], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(ids))
  local scored = {}
  for j = 1, #ids do
    scored[2 * j - 1] = now
    scored[2 * j] = ids[j]
    if pending[j] or not done[j] then
      first[#first + 1] = '1'
      firsts = firsts + 1
      applied = applied + tonumber(ARGV[i + n + j - 1])
    else
      first[#first + 1] = '0'
    end
  end
  redis.call('ZADD', KEYS[6], unpack(scored))
end
for i = 6 + 2 * n, #ARGV, 3 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[5], ARGV[i + 2], ARGV[i])
end
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - tonumber(ARGV[3]))
end
if applied > 0 then
  redis.call('INCRBY', KEYS[7], applied)
end
if ARGV[4] ~= '' and firsts == n then
  redis.call('RPUSH', KEYS[8], ARGV[4])
  redis.call('EXPIRE', KEYS[8], ARGV[5])
end
return table.concat(first)
