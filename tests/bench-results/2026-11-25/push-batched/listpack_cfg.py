import sys, os
sys.argv = [sys.argv[0]]
import push_variants as pv
r = pv.r
sha = pv.load('/work/main/queue/lua/push.lua')
for rep in range(int(os.environ.get("REPS", "3"))):
    for val in ["64", "1024"]:
        r.config_set("hash-max-listpack-value", val)
        js = pv.jobs(100000, f"{rep}{val}")
        prefix = f"h{rep}:{{q}}:{val}:"
        ms, wall = pv.run(sha, js, prefix)
        mem = r.info("memory")["used_memory"] / 1e6
        some = r.keys(prefix + "j*")[:1]
        enc = r.object("encoding", some[0]) if some else None
        print(f"rep {rep} listpack-value {val}: server {ms:.0f} ms, wall {wall*1000:.0f} ms, used {mem:.0f} MB, job enc {enc}", flush=True)
        r.flushdb()
r.config_set("hash-max-listpack-value", "64")
