import redis, uuid, json, sys, time
r = redis.Redis(port=6391)
COMMON = open('/work/main/queue/lua/common.lua').read()
def load(path):
    return r.script_load(COMMON + "\n" + open(path).read())

def jobs(n, seed):
    out = []
    for i in range(n):
        conn = str(uuid.uuid4()); tenant = f"bench{seed}-{i}"; acct = f"acct{i}"
        sched = str(uuid.uuid4())
        budgets = " ".join([f"x:provider:hubspot", f"x:conn:{conn}", f"x:account:hubspot:{acct}", "c:provider:hubspot",
                            f"c:tenant:hubspot:{tenant}", f"c:conn:{conn}", f"r:account:hubspot:{acct}"])
        payload = json.dumps({"type":"sync","connection_id":conn,"object":"contact","mode":"incremental","trigger":"schedule","tick":"2026-11-24T23:30:00Z"})
        meta = ""
        out.append([str(uuid.uuid4()), "sync", f"1:hubspot/{conn}:{tenant}", budgets, f"tenant:{tenant}", "1",
                    payload, "8", f"sync:{conn}:contact", "0", meta, f"tick:{sched}:contact", "@1795995000000"])
    return out

def run(sha, js, prefix, chunk=250):
    r.execute_command("CONFIG", "RESETSTAT")
    p = r.pipeline(transaction=False)
    for k in range(0, len(js), chunk):
        c = js[k:k+chunk]
        args = [prefix, str(len(c))] + [a for j in c for a in j]
        p.evalsha(sha, 1, prefix + "route", *args)
    t = time.time()
    res = p.execute()
    wall = time.time() - t
    info = r.info("commandstats")["cmdstat_evalsha"]
    return info["usec"] / 1000.0, wall

if __name__ == "__main__":
    variants = sys.argv[1:]
    shas = {v: load(v) for v in variants}
    n = 100000
    for rep in range(int(__import__("os").environ.get("REPS","3"))):
        for v in variants:
            js = jobs(n, f"{rep}{v[-8:]}")
            prefix = f"h{rep}:{{q}}:{abs(hash(v))}:"
            ms, wall = run(shas[v], js, prefix)
            print(f"rep {rep} {v}: server {ms:.0f} ms, wall {wall*1000:.0f} ms", flush=True)
            r.flushdb()
