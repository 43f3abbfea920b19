-- Renew leases (and the concurrency slots they hold) for a live worker. A lease is lost when its
-- token changed (reaped, leased again) or, once lapsed, when one of its slots was taken from it.
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
  if held and (tonumber(f[3]) or 0) <= now then
    -- Lapsed but not yet reaped. Admission trims a lapsed lease's concurrency slots and may
    -- have given one to another job (the renewal below cannot re-add it, `XX`): the lease is
    -- still this worker's only if every slot it held still is, or the job would run outside
    -- its budget.
    for _, b in ipairs(split(f[2])) do
      if not redis.call('ZSCORE', base .. 'slots:' .. b, id) then
        held = false
        break
      end
    end
  end
  if held then
    redis.call('ZADD', base .. 'leased', 'XX', exp, id)
    redis.call('HSET', jk, 'x', exp)
    for _, b in ipairs(split(f[2])) do
      redis.call('ZADD', base .. 'slots:' .. b, 'XX', exp, id)
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
