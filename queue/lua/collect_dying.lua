-- Records of dying jobs that have waited at least `grace` ms (their writer presumably died),
-- up to `limit`. ARGV: base, grace ms, limit. Returns a list of job records.
-- Each one collected is scored `now` again: the sweeper is its writer from here, so it gets a
-- writer's grace, and a record whose write keeps failing goes behind the others instead of
-- filling every sweep's `limit` for good.
local grace, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', base .. 'dying', '-inf', now - grace, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', jkey(id)) == 1 then
    out[#out + 1] = job_record(id)
    redis.call('ZADD', base .. 'dying', 'XX', now, id)
  else
    redis.call('ZREM', base .. 'dying', id)
  end
end
return out
