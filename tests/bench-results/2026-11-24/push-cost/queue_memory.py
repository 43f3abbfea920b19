#!/usr/bin/env python3
"""Redis memory per queued job (docs/operations.md, "Redis settings").

Pushes 20,000 scheduler-like sync jobs (push_cost.jobs) through queue/lua/push.lua into a
*private* Redis (it is flushed: never point this at a shared server) and prints the growth of
`used_memory` per job, then `MEMORY USAGE` per key family. Run it with the server's default
`hash-max-listpack-value` (64) and again after `CONFIG SET hash-max-listpack-value 1024`.

    redis-server --port 6395 --save '' --appendonly no --daemonize yes
    python3 queue_memory.py --port 6395
"""
import argparse, pathlib, sys
import redis
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import push_cost
REPO = HERE.parents[3]
ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
r = redis.Redis(port=ap.parse_args().port)
r.flushall()
script = (REPO/"queue/lua/common.lua").read_text() + "\n" + (REPO/"queue/lua/push.lua").read_text()
sha = r.script_load(script)
base = "bench:{crm}:"
N = 20000
before = r.info("memory")["used_memory"]
for start in range(0, N, 250):
    args = push_cost.jobs(start, 250)
    r.evalsha(sha, 1, base + "route", base, 250, *args)
after = r.info("memory")["used_memory"]
print("per job bytes", (after - before) / N)
# per key type
import collections
tot = collections.Counter(); cnt = collections.Counter()
for k in r.scan_iter(count=10000):
    k = k.decode()
    t = k[len(base):].split(":")[0]
    tot[t] += r.memory_usage(k, samples=0) or 0
    cnt[t] += 1
for t in tot:
    print(t, cnt[t], "keys", round(tot[t] / N), "B/job")
jk = next(k for k in r.scan_iter(match=base + "job:*"))
print(r.hgetall(jk))
lk = next(k for k in r.scan_iter(match=base + "lane:*"))
print(r.hgetall(lk))
