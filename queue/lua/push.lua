-- Push n jobs. ARGV[2] = n, then 13 fields per job:
--   id, type, lane, budgets, weight key, class, payload, max attempts, unique key, delay ms, meta,
--   dedupe key, dedupe rule: a TTL in ms (`d:<key>` remembered that long) or `@<stamp>` (the key
--   names a series; `wm` keeps its highest stamp, and a stamp at or below it is a duplicate)
-- Returns, per job, its id (enqueued) or "dup:<existing id>" (id taken, dedupe key seen within
-- its TTL or series stamp already reached (the job's own id), or unique key held by a queued or
-- running job).
-- The dedupe is taken before the unique key is checked, on purpose: it records that this
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
-- Series stamps (`@<stamp>`) are read for the whole call with one HMGET and written back with
-- one HSET: a scheduler tick's jobs all carry one, so this is per call, not per job.
local stamps, series = {}, {}
for i = 0, n - 1 do
  local o = 3 + i * 13
  local delay, key, rule = tonumber(ARGV[o + 9]), ARGV[o + 11], ARGV[o + 12]
  local ok = delay ~= nil
  if ok and key ~= '' then
    -- Digits only (Redis refuses `PX 6e4`), at most 15 (exact in Lua's doubles).
    local stamp = string.match(rule, '^@(%-?%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?)$')
    if stamp then
      stamps[i] = tonumber(stamp)
      series[#series + 1] = key
    else
      local ttl = string.match(rule, '^%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$')
      ok = ttl ~= nil and tonumber(ttl) >= 1
    end
  end
  if not ok then
    return redis.error_reply('push: job ' .. (i + 1) .. ' has a malformed delay or dedupe rule')
  end
end
local marks, moved = {}, {}
for from = 1, #series, 1000 do
  local chunk = { unpack(series, from, math.min(from + 999, #series)) }
  local got = redis.call('HMGET', base .. 'wm', unpack(chunk))
  for j, key in ipairs(chunk) do
    marks[key] = tonumber(got[j])
  end
end
-- Takes job i's dedupe and answers false, or answers true with `seen` set to the id the push
-- duplicates (its own for a series stamp already reached).
local seen
local function seen_before(i, id, key)
  local stamp = stamps[i]
  if stamp then
    local mark = marks[key]
    if mark and stamp <= mark then
      seen = id
      return true
    end
    marks[key] = stamp
    moved[key] = true
    return false
  end
  if redis.call('SET', base .. 'd:' .. key, id, 'NX', 'PX', ARGV[3 + i * 13 + 12]) then
    return false
  end
  seen = redis.call('GET', base .. 'd:' .. key) or id
  return true
end
-- A new job's hash holds only what differs from the defaults: attempts (`a`) and orphanings
-- (`o`) start absent (every reader takes absent as 0, and HINCRBY starts from it), and the
-- unique key and meta only when set. A tick writes 100,000 of these, and each field costs.
-- (The four calls are written out so that no argument table is built per job.)
local function store(jk, payload, typ, lane, maxa, now, uniq, meta, st)
  if uniq ~= '' and meta ~= '' then
    redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'm', maxa, 'e', now, 's', st, 'u', uniq, 'meta', meta)
  elseif uniq ~= '' then
    redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'm', maxa, 'e', now, 's', st, 'u', uniq)
  elseif meta ~= '' then
    redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'm', maxa, 'e', now, 's', st, 'meta', meta)
  else
    redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'm', maxa, 'e', now, 's', st)
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
  local dedupe = ARGV[o + 11]
  local jk = jkey(id)
  if redis.call('EXISTS', jk) == 1 then
    out[#out + 1] = 'dup:' .. id
  elseif dedupe ~= '' and seen_before(i, id, dedupe) then
    out[#out + 1] = 'dup:' .. seen
  elseif uniq ~= '' and not redis.call('SET', base .. 'u:' .. uniq, id, 'NX') then
    out[#out + 1] = 'dup:' .. (redis.call('GET', base .. 'u:' .. uniq) or '')
  else
    local lm = lmeta(lane)
    if delay > 0 then
      store(jk, payload, typ, lane, maxa, now, uniq, meta, 'd')
      zadd(base .. 'delayed', now + delay, id)
      redis.call('HSET', lm, 'b', budgets, 'wk', wk, 'c', cls)
    else
      store(jk, payload, typ, lane, maxa, now, uniq, meta, 'r')
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
local hset = {}
for key in pairs(moved) do
  hset[#hset + 1] = key
  hset[#hset + 1] = string.format('%.0f', marks[key])
  if #hset >= 2000 then
    redis.call('HSET', base .. 'wm', unpack(hset))
    hset = {}
  end
end
if #hset > 0 then
  redis.call('HSET', base .. 'wm', unpack(hset))
end
signal(ready)
return out
