-- Queues messages and records them for recovery, atomically: a message is never queued
-- without its recovery record (or the reverse). The sequence orders `pending` like the
-- queue itself, which is what the reaper relies on.
-- KEYS: seq, queue, pending, messages. ARGV: message id, message, message id, message, ...
local n = 0
for i = 1, #ARGV, 2 do
  local seq = redis.call('INCR', KEYS[1])
  redis.call('LPUSH', KEYS[2], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], seq, ARGV[i])
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  n = n + 1
end
return n
