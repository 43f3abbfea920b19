-- Reclaim jobs whose lease expired (their worker died or stalled). The attempt stays counted
-- and the orphaning is recorded; a job orphaned `poison` times, or out of attempts, starts
-- dying. ARGV: base, reaper worker id, poison limit, max jobs, worker-registry horizon ms.
-- Returns {requeued count, dying ids...}.
local reaper, poison, limit, horizon = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', base .. 'leased', '-inf', now, 'LIMIT', 0, limit)
local requeued = 0
local dying = {}
for _, id in ipairs(ids) do
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'a', 'm', 'w', 'ls', 'hb', 'l')
  redis.call('ZREM', base .. 'leased', id)
  if f[6] then
    local o = redis.call('HINCRBY', jk, 'o', 1)
    local a, m = tonumber(f[1] or '0'), tonumber(f[2] or '1')
    local entry = cjson.encode({
      attempt = a, started_at = tonumber(f[4] or '0'), finished_at = now, worker = f[3] or '',
      outcome = 'orphaned', error_class = 'lease_expired',
      message = 'lease expired without ack; worker presumed dead (reclaimed by ' .. reaper .. ')'
    })
    redis.call('RPUSH', hkey(id), entry)
    release(id, f[5])
    redis.call('HDEL', jk, 'k', 'w', 'x', 'hb')
    if o >= poison then
      begin_dying(id, 'poison', now)
      dying[#dying + 1] = id
    elseif a >= m then
      begin_dying(id, 'max_attempts', now)
      dying[#dying + 1] = id
    else
      make_ready(id, f[6], now, true)
      requeued = requeued + 1
    end
  end
end
if requeued > 0 then signal(requeued) end
redis.call('ZREMRANGEBYSCORE', base .. 'workers', '-inf', now - horizon)
local out = {requeued}
for _, id in ipairs(dying) do out[#out + 1] = id end
return out
