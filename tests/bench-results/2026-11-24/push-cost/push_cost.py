#!/usr/bin/env python3
"""Where the Redis server time of a bulk push goes (issue 5's tick: 100,000 jobs).

Loads variants of `push.lua` (with the prelude) into a *private* Redis (it is flushed: never
point this at a shared server), pushes 100,000 scheduler-like jobs through each in calls of
250 jobs (as `Queue::push_bulk` does), and prints the server time of EVALSHA per job with the
time of the commands the scripts ran (`INFO commandstats`).

    redis-server --port 6395 --save '' --appendonly no --daemonize yes
    pip install redis
    python3 push_cost.py --port 6395 [variant ...]

Variants: `current` (queue/lua/push.lua), `no-job-hset`, `no-rpush`, `no-zadd`,
`no-per-job-commands` (all three removed), `args-only` (a script that only reads its 13
arguments a job and returns the ids), `empty` (returns at once: the cost of passing the
arguments), and `batched` (`batched-push.patch` applied to a copy of queue/lua: the
two-calls-a-job version tried and not kept, see docs/benchmarks.md; the patch is against
commit f11a74f).
"""
import argparse, json, pathlib, shutil, subprocess, tempfile, uuid

import redis

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[3]


def jobs(start, count):
    args = []
    for i in range(start, start + count):
        conn = uuid.uuid4()
        args += [
            str(uuid.uuid5(uuid.NAMESPACE_OID, f"tick:{i}")), "sync", f"1:hubspot:bench{i}",
            f"c:p:hubspot c:t:hubspot:bench{i} r:a:hubspot:acct{i}", f"hubspot:bench{i}", "1",
            json.dumps({"type": "sync", "connection_id": str(conn), "object": "contact",
                        "mode": "incremental", "trigger": "schedule", "tick": "2026-11-24T08:57:12Z"}),
            "5", f"sync:{conn}:contact", "0", "", f"tick:{uuid.uuid4()}:contact:1795510180", "86400000",
        ]
    return args


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("variants", nargs="*")
    a = ap.parse_args()
    r = redis.Redis(port=a.port)
    prelude = (REPO / "queue/lua/common.lua").read_text()
    push = (REPO / "queue/lua/push.lua").read_text()
    hset = "redis.call('HSET', jk, 'p', payload, 't', typ, 'l', lane, 'a', 0, 'm', maxa, 'o', 0, 'e', now,\n        'u', uniq, 'meta', meta, 's', 'r')"
    rpush = "redis.call('RPUSH', lqueue(lane), id)"
    nozadd = ("local function zadd(key, score, member)", "local function zadd(key, score, member)\n  do return end")
    assert hset in push and rpush in push and nozadd[0] in push, "push.lua changed: update the variants"
    args_only = """local n = tonumber(ARGV[2])
local out = {}
for k = 1, n do
  local o = 3 + (k - 1) * 13
  local id, typ, lane, budgets, wk, cls = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4], ARGV[o + 5]
  out[k] = id
end
return out"""
    variants = {
        "current": prelude + push,
        "no-job-hset": prelude + push.replace(hset, ""),
        "no-rpush": prelude + push.replace(rpush, ""),
        "no-zadd": prelude + push.replace(*nozadd),
        "no-per-job-commands": prelude + push.replace(hset, "").replace(rpush, "").replace(*nozadd),
        "args-only": prelude + args_only,
        "empty": prelude + "return 1",
    }
    if not a.variants or "batched" in a.variants:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(REPO / "queue/lua", pathlib.Path(tmp) / "queue/lua")
            subprocess.run(["patch", "-s", "-p1", "-d", tmp, "-i", str(HERE / "batched-push.patch")], check=True)
            lua = pathlib.Path(tmp) / "queue/lua"
            variants["batched"] = (lua / "common.lua").read_text() + (lua / "push.lua").read_text()
    base = "crm-fleet:{crm}:"
    for name in a.variants or variants:
        r.flushall()
        r.config_resetstat()
        sha = r.script_load(variants[name])
        for s in range(0, a.jobs, 250):
            r.evalsha(sha, 1, base + "x", base, "250", *jobs(s, 250))
        stats = r.info("commandstats")
        ev = stats.get("cmdstat_evalsha", {}).get("usec", 0)
        cmds = {k[8:]: round(v["usec"] / 1000) for k, v in stats.items()
                if k != "cmdstat_evalsha" and v["usec"] >= 1000 and k != "cmdstat_script|load"}
        print(f"{name:22s} {ev / a.jobs:5.1f} µs a job in scripts ({ev / 1000:5.0f} ms), "
              f"of which commands {sum(cmds.values()):5.0f} ms {cmds}", flush=True)


if __name__ == "__main__":
    main()
