-- Shared prelude for every crm-fleet queue script. Concatenated in front of each script body.
--
-- Conventions:
--   KEYS[1]  a key inside the queue's hash slot (routing only; every key below shares the tag).
--   ARGV[1]  the queue's key base, e.g. "crm-fleet:{crm}:"; every key is base .. suffix.
--   Times are milliseconds from the Redis server clock (TIME), never from a client, so
--   workers with skewed clocks agree on lease expiry and due times.
-- Invariants kept by all scripts:
--   * a job id is in exactly one of: a lane list (state r), `delayed` (d), `leased` (l),
--     `dying` (z); `readyz` mirrors the ready set for depth and age.
--   * a lane is in exactly one of: ready:<class> (st r), blocked:<budget> (st b),
--     `sleeping` (st s), or none (st i) -- and it is never in ready/blocked/sleeping while empty
--     for long: fetch drops empty lanes as it meets them.
--   * concurrency slots are held by job id in slots:<budget> with the lease expiry as score;
--     the budgets a job holds are recorded on the job (`hb`) so release is exact.
local base = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function jkey(id) return base .. 'job:' .. id end
local function hkey(id) return base .. 'h:' .. id end
local function lmeta(lane) return base .. 'lane:' .. lane end
local function lqueue(lane) return base .. 'q:' .. lane end

local function split(s)
  local out = {}
  if not s or s == '' then return out end
  for w in string.gmatch(s, '%S+') do out[#out + 1] = w end
  return out
end

-- A limit for `name`, or the closest wildcard: "c:t:hubspot:t1" tries itself, then
-- "c:t:hubspot:*", "c:t:*", "c:*".
local function lookup(name)
  local h = base .. 'limits'
  local v = redis.call('HGET', h, name)
  if v then return v end
  local n = name
  while true do
    local i = string.find(n, ':[^:]*$')
    if not i or i <= 1 then return false end
    n = string.sub(n, 1, i - 1)
    v = redis.call('HGET', h, n .. ':*')
    if v then return v end
  end
end

local function signal(n)
  if n <= 0 then return end
  local key = base .. 'signal'
  for _ = 1, math.min(n, 16) do redis.call('LPUSH', key, '1') end
  redis.call('LTRIM', key, 0, 63)
end

-- Put a lane with work into its class's ready set at max(own pass, class virtual time),
-- so a lane that was idle neither starves others nor is starved.
local function activate(lane)
  local lm = lmeta(lane)
  local st = redis.call('HGET', lm, 'st')
  if st == 'r' or st == 'b' or st == 's' then return end
  if redis.call('LLEN', lqueue(lane)) == 0 then
    redis.call('HSET', lm, 'st', 'i')
    return
  end
  local c = redis.call('HGET', lm, 'c') or '1'
  local pass = tonumber(redis.call('HGET', lm, 'pass') or '0')
  local vt = tonumber(redis.call('HGET', base .. 'vt', c) or '0')
  if pass < vt then pass = vt end
  redis.call('ZADD', base .. 'ready:' .. c, pass, lane)
  redis.call('HSET', lm, 'st', 'r', 'pass', tostring(pass))
end

local function wake_blocked(b, n)
  local key = base .. 'blocked:' .. b
  local lanes = redis.call('SPOP', key, n)
  for _, lane in ipairs(lanes) do
    redis.call('HSET', lmeta(lane), 'st', 'i')
    activate(lane)
  end
  if redis.call('SCARD', key) == 0 then redis.call('SREM', base .. 'blockedb', b) end
  if #lanes > 0 then signal(#lanes) end
  return #lanes
end

-- A concurrency limit, or nil when there is none or it is not a number (a limit of another
-- kind set under a `c:` name by hand): such a budget is not enforced, rather than failing
-- every script that meets it (fetch, ack, retry) and so stopping the whole queue.
local function climit(b)
  local lim = lookup(b)
  return lim and tonumber(lim)
end

local function spare(b)
  local lim = climit(b)
  if not lim then return 32 end
  return lim - redis.call('ZCARD', base .. 'slots:' .. b)
end

-- Give back the concurrency slots a job holds and wake as many blocked lanes as now fit.
local function release(id, hb)
  for _, b in ipairs(split(hb)) do
    if string.sub(b, 1, 2) == 'c:' then
      if redis.call('ZREM', base .. 'slots:' .. b, id) == 1 then
        local s = spare(b)
        if s > 0 then wake_blocked(b, math.min(s, 32)) end
      end
    end
  end
end

local function gcra(spec)
  local count, period, burst = string.match(spec, '^(%d+)/(%d+)/(%d+)$')
  if not count then return nil end
  count = tonumber(count); period = tonumber(period); burst = tonumber(burst)
  if count <= 0 then return nil end
  if burst < 1 then burst = 1 end
  return period / count, burst
end

-- Admission: 'ok', or 'blocked' + budget (concurrency full: wait for a release), or
-- 'sleep' + time (paused or out of rate tokens: wait for the clock).
local function admit(budgets, now)
  for _, b in ipairs(budgets) do
    local untl = redis.call('HGET', base .. 'paused', b)
    if untl then
      untl = tonumber(untl)
      if untl > now then return 'sleep', untl end
      redis.call('HDEL', base .. 'paused', b)
    end
    local kind = string.sub(b, 1, 2)
    if kind == 'c:' then
      local lim = climit(b)
      if lim then
        local sk = base .. 'slots:' .. b
        redis.call('ZREMRANGEBYSCORE', sk, '-inf', now)
        if redis.call('ZCARD', sk) >= lim then return 'blocked', b end
      end
    elseif kind == 'r:' then
      local spec = lookup(b)
      if spec then
        local t, burst = gcra(spec)
        if t then
          local tat = tonumber(redis.call('GET', base .. 'rate:' .. b) or '0')
          if tat < now then tat = now end
          local allow_at = tat + t - burst * t
          if allow_at > now then return 'sleep', math.ceil(allow_at) end
        end
      end
    end
  end
  return 'ok'
end

-- Take what admission allowed; returns the concurrency budgets now held (space-separated).
local function take(id, budgets, now, exp)
  local held = {}
  for _, b in ipairs(budgets) do
    local kind = string.sub(b, 1, 2)
    if kind == 'c:' then
      redis.call('ZADD', base .. 'slots:' .. b, exp, id)
      held[#held + 1] = b
    elseif kind == 'r:' then
      local spec = lookup(b)
      if spec then
        local t, burst = gcra(spec)
        if t then
          local rk = base .. 'rate:' .. b
          local tat = tonumber(redis.call('GET', rk) or '0')
          if tat < now then tat = now end
          tat = tat + t
          -- Three decimals: tostring keeps 14 significant digits, which at epoch milliseconds
          -- rounds each token ~0.04 ms early and lets a window admit one more than its bound.
          redis.call('SET', rk, string.format('%.3f', tat), 'PX', math.ceil(burst * t + t) + 1000)
        end
      end
    end
  end
  return table.concat(held, ' ')
end

local function make_ready(id, lane, now, front)
  redis.call('HSET', jkey(id), 's', 'r')
  if front then
    redis.call('LPUSH', lqueue(lane), id)
  else
    redis.call('RPUSH', lqueue(lane), id)
  end
  redis.call('ZADD', base .. 'readyz', now, id)
  activate(lane)
end

-- Move due delayed jobs to their lanes and wake lanes whose sleep is over; bounded per call.
local function promote_due(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', base .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
  local moved = 0
  for _, id in ipairs(ids) do
    redis.call('ZREM', base .. 'delayed', id)
    local lane = redis.call('HGET', jkey(id), 'l')
    if lane then
      make_ready(id, lane, now, false)
      moved = moved + 1
    end
  end
  local lanes = redis.call('ZRANGEBYSCORE', base .. 'sleeping', '-inf', now, 'LIMIT', 0, limit)
  for _, lane in ipairs(lanes) do
    redis.call('ZREM', base .. 'sleeping', lane)
    redis.call('HSET', lmeta(lane), 'st', 'i')
    activate(lane)
  end
  return moved, #lanes, #ids == limit
end

-- The full record of a job, for dead-lettering: fields then history entries.
local function job_record(id)
  local f = redis.call('HMGET', jkey(id), 'p', 't', 'l', 'a', 'm', 'o', 'e', 'u', 'meta', 'dr', 'dt')
  local rec = {id}
  for i = 1, 11 do rec[#rec + 1] = f[i] or '' end
  local hist = redis.call('LRANGE', hkey(id), 0, -1)
  for _, h in ipairs(hist) do rec[#rec + 1] = h end
  return rec
end

local function drop_unique(id, u)
  if u and u ~= '' then
    local uk = base .. 'u:' .. u
    if redis.call('GET', uk) == id then redis.call('DEL', uk) end
  end
end

-- A dying job will not run again, so its unique key is given up here, not at finalize: a
-- replay or a scheduled push in the outbox window (up to the dying grace when the writer
-- died) must not be merged into a job that is only waiting to be written down.
local function begin_dying(id, reason, now)
  drop_unique(id, redis.call('HGET', jkey(id), 'u'))
  redis.call('HSET', jkey(id), 's', 'z', 'dr', reason, 'dt', now)
  redis.call('HDEL', jkey(id), 'k', 'w', 'x', 'hb')
  redis.call('ZADD', base .. 'dying', now, id)
end
