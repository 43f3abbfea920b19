-- Push n jobs. ARGV[2] = n, then 13 fields per job:
--   id, type, lane, budgets, weight key, class, payload, max attempts, unique key, delay ms, meta,
--   dedupe key, dedupe ttl ms
-- Returns, per job, its id (enqueued) or "dup:<existing id>" (id taken, dedupe key seen within
-- its TTL, or unique key held by a queued or running job).
-- The dedupe key is taken before the unique key is checked, on purpose: it records that this
-- push was *decided*, so a retried push of a refused job (a scheduled tick that overlapped a
-- running sync) is again refused, as a duplicate of itself, instead of running late.
local n = tonumber(ARGV[2])
local now = now_ms()
local out = {}
local ready = 0
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
    redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'a', 0, 'm', maxa, 'o', 0, 'e', now,
      'u', uniq, 'meta', meta)
    redis.call('HSET', lmeta(lane), 'b', budgets, 'wk', wk, 'c', cls)
    if delay > 0 then
      redis.call('HSET', jk, 's', 'd')
      redis.call('ZADD', base .. 'delayed', now + delay, id)
    else
      make_ready(id, lane, now, false)
      ready = ready + 1
    end
    out[#out + 1] = id
  end
end
signal(ready)
return out
