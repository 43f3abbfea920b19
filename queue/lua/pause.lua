-- Pause a budget for `ms` from now (0 lifts the pause and wakes sleeping lanes).
-- ARGV: base, budget, ms. Returns the pause end (ms) or 0.
local b, ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
if ms <= 0 then
  redis.call('HDEL', base .. 'paused', b)
  local lanes = redis.call('ZRANGE', base .. 'sleeping', 0, -1)
  for _, lane in ipairs(lanes) do
    redis.call('ZREM', base .. 'sleeping', lane)
    redis.call('HSET', lmeta(lane), 'st', 'i')
    activate(lane)
  end
  signal(#lanes)
  return 0
end
local untl = now + ms
local cur = tonumber(redis.call('HGET', base .. 'paused', b) or '0')
if cur > untl then untl = cur end
redis.call('HSET', base .. 'paused', b, untl)
return untl
