-- Take one token of a rate budget for a request made inside a running job (fetch admission
-- takes the first). ARGV: base, budget. Returns 0 when taken, else the ms to wait (nothing
-- taken). A paused budget answers the remaining pause.
local b = ARGV[2]
local now = now_ms()
local untl = tonumber(redis.call('HGET', base .. 'paused', b) or '0')
if untl > now then return untl - now end
local spec = lookup(b)
if not spec then return 0 end
local t, burst = gcra(spec)
if not t then return 0 end
local rk = base .. 'rate:' .. b
local tat = tonumber(redis.call('GET', rk) or '0')
if tat < now then tat = now end
local allow_at = tat + t - burst * t
if allow_at > now then return math.ceil(allow_at - now) end
redis.call('SET', rk, tostring(tat + t), 'PX', math.ceil(burst * t + t) + 1000)
return 0
