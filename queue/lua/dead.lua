-- Begin dead-lettering a leased job: it moves to the `dying` outbox (still in Redis) until its
-- PostgreSQL record is written and `finalize` removes it. ARGV: base, id, lease, history entry,
-- reason. Returns the job record (see job_record), or an empty list when the lease is stale.
local id, lease, entry, reason = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = jkey(id)
local f = redis.call('HMGET', jk, 'k', 'hb')
if f[1] ~= lease then return {} end
local now = now_ms()
if entry ~= '' then redis.call('RPUSH', hkey(id), entry) end
release(id, f[2])
redis.call('ZREM', base .. 'leased', id)
begin_dying(id, reason, now)
return job_record(id)
