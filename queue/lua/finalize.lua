-- Remove dead-lettered jobs whose PostgreSQL record is durable. ARGV: base, ids...
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local jk = jkey(id)
  if redis.call('HGET', jk, 's') == 'z' then
    drop_unique(id, redis.call('HGET', jk, 'u'))
    redis.call('DEL', jk, hkey(id))
    redis.call('ZREM', base .. 'dying', id)
    removed = removed + 1
  else
    redis.call('ZREM', base .. 'dying', id)
  end
end
return removed
