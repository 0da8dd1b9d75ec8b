-- Removes dead letters only if each is still the record replayed: the replayed op may
-- already have failed again and been dead-lettered anew, and that newer record must stay.
-- KEYS: dlq, dlq index. ARGV: id, record, id, record, ...
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
