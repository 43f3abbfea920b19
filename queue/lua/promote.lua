-- Move due delayed jobs to their lanes and wake lanes whose sleep ended, then give blocked
-- lanes of budgets with spare capacity another chance. ARGV: base, limit.
-- Returns {jobs promoted, lanes woken, 1 if more may be due else 0}.
local limit = tonumber(ARGV[2])
local now = now_ms()
local moved, woken, more = promote_due(now, limit)
if moved > 0 then signal(moved) end
if woken > 0 then signal(woken) end
local budgets = redis.call('SRANDMEMBER', base .. 'blockedb', 16)
for _, b in ipairs(budgets) do
  redis.call('ZREMRANGEBYSCORE', base .. 'slots:' .. b, '-inf', now)
  local s = spare(b)
  if s > 0 then woken = woken + wake_blocked(b, math.min(s, 32)) end
end
local m = 0
if more then m = 1 end
return {moved, woken, m}
