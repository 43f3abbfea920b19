-- Renew leases (and the concurrency slots they hold) for a live worker.
-- ARGV: base, worker, ttl ms, n, then n pairs (id, lease). Returns the ids whose lease was lost.
local worker, ttl, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
redis.call('ZADD', base .. 'workers', now, worker)
local exp = now + ttl
local lost = {}
for i = 0, n - 1 do
  local id, lease = ARGV[5 + i * 2], ARGV[6 + i * 2]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'k', 'hb')
  if f[1] == lease then
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
