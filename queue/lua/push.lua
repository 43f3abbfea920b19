-- Push n jobs. ARGV[2] = n, then 13 fields per job:
--   id, type, lane, budgets, weight key, class, payload, max attempts, unique key, delay ms, meta,
--   dedupe key, dedupe ttl ms
-- Returns, per job, its id (enqueued) or "dup:<existing id>" (id taken, dedupe key seen within
-- its TTL, or unique key held by a queued or running job).
-- The dedupe key is taken before the unique key is checked, on purpose: it records that this
-- push was *decided*, so a retried push of a refused job (a scheduled tick that overlapped a
-- running sync) is again refused, as a duplicate of itself, instead of running late.
-- Cost matters here: a scheduler tick pushes one job per tenant, so this loop runs 100,000
-- times per tick (issue 5's target is 2 s). The lane is activated inline rather than with
-- `activate` from the prelude: we know the lane now has work and what its class is, so its
-- meta is read once (HMGET) and written once, and each class's virtual time is read once per
-- call. The resulting state is exactly what `activate` would leave.
local n = tonumber(ARGV[2])
-- Every job's arguments are checked before anything is written: a script that fails half-way
-- keeps what it wrote, and the sorted-set additions below are sent at the end, so a late
-- failure would leave lanes marked ready but absent from their ready set. (The client checks
-- the same; this keeps the invariant whoever calls.)
if not n or #ARGV ~= 2 + n * 13 then
  return redis.error_reply('push: expected ' .. tostring(ARGV[2]) .. ' jobs of 13 arguments')
end
for i = 0, n - 1 do
  local o = 3 + i * 13
  local delay, ttl = tonumber(ARGV[o + 9]), tonumber(ARGV[o + 12])
  if not delay or (ARGV[o + 11] ~= '' and (not ttl or ttl < 1 or ttl ~= math.floor(ttl))) then
    return redis.error_reply('push: job ' .. (i + 1) .. ' has a malformed delay or dedupe TTL')
  end
end
local now = now_ms()
local out = {}
local ready = 0
local vts = {}
-- Sorted-set additions are gathered and sent in chunks (one ZADD per chunk instead of one per
-- job: the per-call cost of redis.call dominates this loop). Each chunk stays far below Lua's
-- limit on unpack (8,000 values).
local zadds = {}
local function zadd(key, score, member)
  local z = zadds[key]
  if not z then
    z = {}
    zadds[key] = z
  end
  z[#z + 1] = score
  z[#z + 1] = member
  if #z >= 2000 then
    redis.call('ZADD', key, unpack(z))
    zadds[key] = nil
  end
end
for i = 0, n - 1 do
  local o = 3 + i * 13
  local id, typ, lane, budgets, wk, cls = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4], ARGV[o + 5]
  local payload, maxa, uniq, delay, meta = ARGV[o + 6], ARGV[o + 7], ARGV[o + 8], tonumber(ARGV[o + 9]), ARGV[o + 10]
  local dedupe, dedupe_ttl = ARGV[o + 11], tonumber(ARGV[o + 12])
  local jk = jkey(id)
  if redis.call('EXISTS', jk) == 1 then
    out[#out + 1] = 'dup:' .. id
  elseif dedupe ~= '' and not redis.call('SET', base .. 'd:' .. dedupe, id, 'NX', 'PX', dedupe_ttl) then
    out[#out + 1] = 'dup:' .. (redis.call('GET', base .. 'd:' .. dedupe) or id)
  elseif uniq ~= '' and not redis.call('SET', base .. 'u:' .. uniq, id, 'NX') then
    out[#out + 1] = 'dup:' .. (redis.call('GET', base .. 'u:' .. uniq) or '')
  else
    local lm = lmeta(lane)
    if delay > 0 then
      redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'a', 0, 'm', maxa, 'o', 0, 'e', now,
        'u', uniq, 'meta', meta, 's', 'd')
      zadd(base .. 'delayed', now + delay, id)
      redis.call('HSET', lm, 'b', budgets, 'wk', wk, 'c', cls)
    else
      redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'a', 0, 'm', maxa, 'o', 0, 'e', now,
        'u', uniq, 'meta', meta, 's', 'r')
      redis.call('RPUSH', lqueue(lane), id)
      zadd(base .. 'readyz', now, id)
      local m = redis.call('HMGET', lm, 'st', 'pass')
      local st = m[1]
      if st == 'r' or st == 'b' or st == 's' then
        redis.call('HSET', lm, 'b', budgets, 'wk', wk, 'c', cls)
      else
        local vt = vts[cls]
        if not vt then
          vt = tonumber(redis.call('HGET', base .. 'vt', cls) or '0')
          vts[cls] = vt
        end
        local pass = tonumber(m[2] or '0')
        if pass < vt then pass = vt end
        zadd(base .. 'ready:' .. cls, pass, lane)
        redis.call('HSET', lm, 'b', budgets, 'wk', wk, 'c', cls, 'st', 'r', 'pass', tostring(pass))
      end
      ready = ready + 1
    end
    out[#out + 1] = id
  end
end
for key, z in pairs(zadds) do
  redis.call('ZADD', key, unpack(z))
end
signal(ready)
return out
