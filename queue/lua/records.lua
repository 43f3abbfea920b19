-- Job records for the given ids (missing ids are skipped). ARGV: base, ids...
local out = {}
for i = 2, #ARGV do
  if redis.call('EXISTS', jkey(ARGV[i])) == 1 then out[#out + 1] = job_record(ARGV[i]) end
end
return out
