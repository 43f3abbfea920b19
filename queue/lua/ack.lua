-- Complete jobs. ARGV[2] = n, then n pairs (id, lease). A pair whose lease is not the job's
-- current lease is refused (fencing). Returns one integer per pair: 1 acked, 0 refused.
local n = tonumber(ARGV[2])
local out = {}
for i = 0, n - 1 do
  local id, lease = ARGV[3 + i * 2], ARGV[4 + i * 2]
  local jk = jkey(id)
  local f = redis.call('HMGET', jk, 'k', 'hb', 'u')
  if f[1] ~= lease then
    out[#out + 1] = 0
  else
    release(id, f[2])
    redis.call('ZREM', base .. 'leased', id)
    drop_unique(id, f[3])
    redis.call('DEL', jk, hkey(id))
    out[#out + 1] = 1
  end
end
return out
