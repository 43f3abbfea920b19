-- Queue depth and age. ARGV: base.
-- Returns {ready, delayed, leased, dying, oldest ready enqueue ms (or -1), active lanes,
-- blocked budgets, sleeping lanes, live workers, now}.
local now = now_ms()
local oldest = redis.call('ZRANGE', base .. 'readyz', 0, 0, 'WITHSCORES')
local o = -1
if #oldest > 0 then o = tonumber(oldest[2]) end
return {
  redis.call('ZCARD', base .. 'readyz'), redis.call('ZCARD', base .. 'delayed'),
  redis.call('ZCARD', base .. 'leased'), redis.call('ZCARD', base .. 'dying'), o,
  redis.call('ZCARD', base .. 'ready:0') + redis.call('ZCARD', base .. 'ready:1'),
  redis.call('SCARD', base .. 'blockedb'), redis.call('ZCARD', base .. 'sleeping'),
  redis.call('ZCARD', base .. 'workers'), now
}
