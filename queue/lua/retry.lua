-- Return a leased job for another attempt. ARGV: base, id, lease, delay ms, history entry
-- (JSON, may be empty), refund ("1": this attempt does not count), front ("1": head of lane).
-- Returns 1, or 0 when the lease is stale (fencing).
local id, lease, delay, entry = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local refund, front = ARGV[6] == '1', ARGV[7] == '1'
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'k', 'hb', 'l')
if f[1] ~= lease then return 0 end
local now = now_ms()
if entry ~= '' then redis.call('RPUSH', hkey(id), entry) end
release(id, f[2])
redis.call('ZREM', base .. 'leased', id)
redis.call('HDEL', jk, 'k', 'w', 'x', 'hb')
if refund then redis.call('HINCRBY', jk, 'a', -1) end
if delay <= 0 then
  make_ready(id, f[3], now, front)
  signal(1)
else
  redis.call('HSET', jk, 's', 'd')
  redis.call('ZADD', base .. 'delayed', now + delay, id)
end
return 1
