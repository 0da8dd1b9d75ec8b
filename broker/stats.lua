-- The broker-level numbers `agentstore stats` prints and a worker's /metrics serves, in one
-- round trip. Ops are counted by each message's "<N ops>" header (`worker.apply` reads it
-- the same way), in at most ARGV[1] messages: beyond that the caller extrapolates.
-- KEYS: queue, pending, messages, unacked, dlq. ARGV: messages to count ops in.
local depth = redis.call('LLEN', KEYS[1])
local ops = 0
local counted = 0
local step = 1000
local cap = math.min(depth, tonumber(ARGV[1]))
while counted < cap do
  local slice = redis.call('LRANGE', KEYS[1], counted, math.min(counted + step, cap) - 1)
  if #slice == 0 then break end
  for _, m in ipairs(slice) do
    local at = string.find(m, '"argsrepr":"<', -2048, true)
    ops = ops + ((at and tonumber(string.match(m, '^(%d+) ops>', at + 13))) or 1)
  end
  counted = counted + #slice
end
-- The oldest unconfirmed message: `pending` is ordered by publish sequence.
local published = false
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
if #oldest > 0 then
  local m = redis.call('HGET', KEYS[3], oldest[1])
  if m then
    published = string.match(m, '"published":([%d%.]+)', -2048) or false
  end
end
return {
  depth, ops, counted, redis.call('ZCARD', KEYS[2]), redis.call('HLEN', KEYS[4]),
  redis.call('HLEN', KEYS[5]), published
}
