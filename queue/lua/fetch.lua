-- Lease up to k jobs for a worker, serving lanes in weighted round-robin (stride scheduling)
-- and admitting a job only if every budget its lane names has room.
-- ARGV: base, worker, lease ttl ms, k, sync aging ms, max lanes examined, request token
-- (optional).
-- A fetch is idempotent per request token: the leases it made are remembered under
-- `fr:<token>` for a lease's time, and the same token again (the client retrying a fetch whose
-- reply was lost: a dropped connection, a timeout) answers those leases again, still held and
-- now renewed as a heartbeat renews them (the retry may come late in the lease), and leases
-- nothing new. Without it the jobs leased by a lost reply waited for their lease to
-- expire and were reaped as orphans, a third time as poison.
-- Returns {jobs, next wake}: jobs is a list of {id, lease, payload, type, attempt, max attempts,
-- enqueued at, lane, meta, orphans, lease expiry}; next wake is the earliest time (ms) a sleeping
-- lane becomes admissible (-1 when none sleeps), so an idle worker can wait exactly that long.
local worker = ARGV[2]
local ttl = tonumber(ARGV[3])
local k = tonumber(ARGV[4])
local aging = tonumber(ARGV[5])
local max_scan = tonumber(ARGV[6])
local token = ARGV[7]
local now = now_ms()

-- When the caller may next find work without a push: the earliest sleeping lane or delayed job.
local function next_wake()
  local wake = redis.call('ZRANGE', base .. 'sleeping', 0, 0, 'WITHSCORES')
  local at = -1
  if #wake > 0 then at = tonumber(wake[2]) end
  local d = redis.call('ZRANGE', base .. 'delayed', 0, 0, 'WITHSCORES')
  if #d > 0 and (at < 0 or tonumber(d[2]) < at) then at = tonumber(d[2]) end
  return at
end

local made_key = nil
if token and token ~= '' then
  made_key = base .. 'fr:' .. token
  local made = redis.call('GET', made_key)
  if made then
    local again = {}
    local exp = now + ttl
    for id, lease in string.gmatch(made, '(%S+) (%S+)') do
      local jk = jkey(id)
      local f = redis.call('HMGET', jk, 'k', 's', 'p', 't', 'a', 'm', 'e', 'l', 'meta', 'o', 'x', 'hb')
      -- Only leases still held and not lapsed: one reaped meanwhile (or about to be, its slots
      -- perhaps already given to others) is not ours any more.
      if f[1] == lease and f[2] == 'l' and tonumber(f[11] or '0') > now then
        redis.call('ZADD', base .. 'leased', 'XX', exp, id)
        redis.call('HSET', jk, 'x', exp)
        for _, b in ipairs(split(f[12])) do
          redis.call('ZADD', base .. 'slots:' .. b, 'XX', exp, id)
        end
        again[#again + 1] = {id, lease, f[3], f[4], tonumber(f[5] or '0'), f[6], f[7], f[8], f[9] or '', f[10] or '0', exp}
      end
    end
    -- Kept for the renewed leases' time: this answer may be lost too.
    redis.call('PEXPIRE', made_key, ttl)
    return {again, next_wake(), now}
  end
end

promote_due(now, 200)
local out = {}
local scans = 0
while #out < k and scans < max_scan do
  scans = scans + 1
  local r0 = redis.call('ZRANGE', base .. 'ready:0', 0, 0, 'WITHSCORES')
  local r1 = redis.call('ZRANGE', base .. 'ready:1', 0, 0, 'WITHSCORES')
  if #r0 == 0 and #r1 == 0 then break end
  local c, pick
  if #r0 == 0 then
    c, pick = '1', r1
  elseif #r1 == 0 then
    c, pick = '0', r0
  else
    -- Class 0 (actions) goes first unless class 1 (syncs) has gone unserved for `aging` ms.
    local last1 = tonumber(redis.call('HGET', base .. 'vt', 'served1') or '0')
    if now - last1 >= aging then c, pick = '1', r1 else c, pick = '0', r0 end
  end
  local lane, pass = pick[1], tonumber(pick[2])
  local lm = lmeta(lane)
  local rk = base .. 'ready:' .. c
  local budgets = split(redis.call('HGET', lm, 'b'))
  local verdict, arg = admit(budgets, now)
  if verdict == 'blocked' then
    redis.call('ZREM', rk, lane)
    redis.call('HSET', lm, 'st', 'b')
    redis.call('SADD', base .. 'blocked:' .. arg, lane)
    redis.call('SADD', base .. 'blockedb', arg)
  elseif verdict == 'sleep' then
    redis.call('ZREM', rk, lane)
    redis.call('HSET', lm, 'st', 's')
    redis.call('ZADD', base .. 'sleeping', arg, lane)
  else
    local id = redis.call('LPOP', lqueue(lane))
    if not id then
      redis.call('ZREM', rk, lane)
      redis.call('HSET', lm, 'st', 'i')
    else
      local jk = jkey(id)
      redis.call('ZREM', base .. 'readyz', id)
      if redis.call('EXISTS', jk) == 1 then
        local exp = now + ttl
        local lease = tostring(redis.call('INCR', base .. 'seq'))
        local held = take(id, budgets, now, exp)
        local a = redis.call('HINCRBY', jk, 'a', 1)
        redis.call('HSET', jk, 's', 'l', 'k', lease, 'w', worker, 'x', exp, 'ls', now, 'hb', held)
        redis.call('ZADD', base .. 'leased', exp, id)
        local f = redis.call('HMGET', jk, 'p', 't', 'm', 'e', 'meta', 'o')
        out[#out + 1] = {id, lease, f[1], f[2], a, f[3], f[4], lane, f[5] or '', f[6] or '0', exp}
      end
      redis.call('HSET', base .. 'vt', c, tostring(pass))
      if c == '1' then redis.call('HSET', base .. 'vt', 'served1', now) end
      local wk = redis.call('HGET', lm, 'wk')
      local w = 1
      if wk and wk ~= '' then w = tonumber(lookup('w:' .. wk) or '1') or 1 end
      if w <= 0 then w = 1 end
      local np = pass + 1 / w
      if redis.call('LLEN', lqueue(lane)) == 0 then
        redis.call('ZREM', rk, lane)
        redis.call('HSET', lm, 'st', 'i', 'pass', tostring(np))
      else
        redis.call('ZADD', rk, np, lane)
        redis.call('HSET', lm, 'pass', tostring(np))
      end
    end
  end
end
if made_key and #out > 0 then
  local made = {}
  for i, row in ipairs(out) do made[i] = row[1] .. ' ' .. row[2] end
  redis.call('SET', made_key, table.concat(made, ' '), 'PX', ttl)
end
return {out, next_wake(), now}
