-- Renew leases (and the concurrency slots they hold) for a live worker. A lease is lost when its
-- token changed (reaped, leased again) or, once lapsed, when one of its slots was trimmed and
-- its budget is now full (the slot went to another job).
-- ARGV: base, worker, ttl ms, n, then n pairs (id, lease). Returns the ids whose lease was lost.
local worker, ttl, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
redis.call('ZADD', base .. 'workers', now, worker)
local exp = now + ttl
local lost = {}
for i = 0, n - 1 do
  local id, lease = ARGV[5 + i * 2], ARGV[6 + i * 2]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'k', 'hb', 'x')
  local held = f[1] == lease
  local budgets = split(f[2])
  local lapsed = held and (tonumber(f[3]) or 0) <= now
  if lapsed then
    -- Lapsed but not yet reaped. Admission (or the promoter) trims a lapsed lease's
    -- concurrency slots, and may have given one to another job: the lease is still this
    -- worker's only if each slot it held is still held, or can be taken back within its
    -- budget's limit. Otherwise the job would run outside its budget.
    for _, b in ipairs(budgets) do
      local sk = base .. 'slots:' .. b
      if not redis.call('ZSCORE', sk, id) then
        local lim = climit(b)
        if lim and redis.call('ZCARD', sk) >= lim then
          held = false
          break
        end
      end
    end
  end
  if held then
    redis.call('ZADD', base .. 'leased', 'XX', exp, id)
    redis.call('HSET', jk, 'x', exp)
    for _, b in ipairs(budgets) do
      if lapsed then
        -- Taken back where it was trimmed (checked above to fit).
        redis.call('ZADD', base .. 'slots:' .. b, exp, id)
      else
        redis.call('ZADD', base .. 'slots:' .. b, 'XX', exp, id)
      end
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
