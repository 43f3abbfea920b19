-- Take one token of a rate budget for a request made inside a running job (fetch admission
-- takes the first). ARGV: base, budget, then any pause budgets that must also be clear (the
-- account's throttle pause, the provider's breaker: set after this job was admitted, they
-- must still stop its next request). Returns 0 when taken, the ms to wait for the rate
-- budget (positive; nothing taken), or minus the ms left of a pause in force (the rate budget
-- itself or one named; the longest if several): a paused job should go back to its lane, which
-- sleeps on the pause and wakes when it is lifted, early or not.
local b = ARGV[2]
local now = now_ms()
local paused = 0
for i = 2, #ARGV do
  local untl = tonumber(redis.call('HGET', base .. 'paused', ARGV[i]) or '0')
  if untl - now > paused then paused = untl - now end
end
if paused > 0 then return -math.ceil(paused) end
local spec = lookup(b)
if not spec then return 0 end
local t, burst = gcra(spec)
if not t then return 0 end
local rk = base .. 'rate:' .. b
local tat = tonumber(redis.call('GET', rk) or '0')
if tat < now then tat = now end
local allow_at = tat + t - burst * t
if allow_at > now then return math.ceil(allow_at - now) end
-- Three decimals, as in the prelude's take(): tostring's 14 significant digits would hand
-- tokens out early.
redis.call('SET', rk, string.format('%.3f', tat + t), 'PX', math.ceil(burst * t + t) + 1000)
return 0
