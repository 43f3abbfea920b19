#!/usr/bin/env bash
# Every crm-fleet benchmark and the peer benchmark, in one session, then our ratios to the peers.
#
#   1. builds the benchmark binaries (release);
#   2. crm-bench-queue: crm-queue next to stock apalis-redis 1.0 (default settings, and with
#      lock_tasks=false), no-op jobs, W1/W2/W3, on a dedicated redis-server (free port from 6391);
#   3. crm-bench-sync: records/s of a full sync of 100,000 contacts from the in-process sandbox
#      into a scratch database (HubSpot and Salesforce as shipped; then what-if runs with a
#      partial index on local_pending, see docs/benchmarks.md);
#   4. crm-bench-limits: limiter precision (production HubSpot quota seeds, a contended
#      concurrency budget, fast rate budgets) with 3 worker processes;
#   5. the peer benchmark, ../shared/bench/peers/run-all.sh (ideal raw-Redis reliable queue,
#      BullMQ, Celery, RQ, redis-benchmark) on its own dedicated redis-server (port 6390);
#   6. prints our W1/W2/W3/RSS medians next to the peers', with ratios, and the other benchmarks'
#      tables (all of it also in $OUT/combined.md).
#
#   scripts/bench-all.sh                  # the recorded session: ~15 min ours + 35-45 min peers
#   scripts/bench-all.sh --quick          # smoke run of everything (~10 min)
#   scripts/bench-all.sh --reduced        # full size, but peers with 1 repetition and no RQ
#   scripts/bench-all.sh --skip-peers     # ours only (no Node/Python needed)
#   scripts/bench-all.sh --only queue,limits            # a subset of ours: queue, sync, limits
#   scripts/bench-all.sh --peers-args "--peers ideal,bullmq,celery"   # passed to run-all.sh
#   scripts/bench-all.sh --report DIR     # only print the combined report of an earlier run's DIR
#   scripts/bench-all.sh -- --systems ours,apalis-redis-nolock        # passed to crm-bench-queue
#
# Results go to $CRM_BENCH_OUT (default /tmp/crm-bench-all/<timestamp>):
#   queue/results.json, queue/table.md    the queue benchmark (every repetition, and its tables)
#   sync/*.json, limits/results.json      the sync and limiter benchmarks
#   peers/raw-results.json, peers/table.md the peers (the shared folder is read-only, so
#                                          run-all.sh is given --out here)
#   combined.md                            everything printed at the end
#
# Cargo: the binaries are built with `cargo build --release` into $CARGO_TARGET_DIR (default
# <repo>/target). Nothing here touches the shared Redis on 6379: each benchmark starts its own
# redis-server and creates (and drops) its own scratch PostgreSQL database
# ($CRM_BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test, is only the
# server to create them on).
#
# Priority: like run-all.sh, every benchmark runs at nice -15 in a session of its own whose CFS
# autogroup is also nice -15 (root only; PEERBENCH_NICE=0 turns it off), so ours and the peers
# are measured at the same priority on a machine shared with other work.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/bench/peers}
[ -d "$PEERS_DIR" ] || PEERS_DIR=/work/shared/bench/peers
OUT=${CRM_BENCH_OUT:-/tmp/crm-bench-all/$(date +%Y%m%d-%H%M%S)}
DB_URL=${CRM_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
QUICK=()
REDUCED=0
SKIP_PEERS=0
ONLY="queue,sync,limits"
PEER_ARGS=()
OUR_ARGS=()
REPORT_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=(--quick); shift ;;
    --reduced) REDUCED=1; shift ;;
    --skip-peers) SKIP_PEERS=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --report) OUT=$2; REPORT_ONLY=1; shift 2 ;;
    --peers-args) read -r -a PEER_ARGS <<< "$2"; shift 2 ;;
    --) shift; OUR_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "bench-all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$REDUCED" = "1" ] && [ ${#PEER_ARGS[@]} -eq 0 ]; then
  PEER_ARGS=(--reps 1 --peers ideal,bullmq,celery)
fi
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
mkdir -p "$OUT/queue" "$OUT/sync" "$OUT/limits" "$OUT/peers"
echo "bench-all.sh: results in $OUT" >&2
if [ "$REPORT_ONLY" = "1" ]; then
  ONLY=""
  SKIP_PEERS=1
fi

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [ "$REPORT_ONLY" = "0" ]; then
  echo "== building the benchmarks (release)" >&2
  (cd "$ROOT" && cargo build --release -p crm-fleet-tests --bins)
fi

# ---------------------------------------------------------------- priority, as the peers get it
NICE=${PEERBENCH_NICE:--15}
if [ "$NICE" != "0" ] && ! nice -n "$NICE" true 2>/dev/null; then
  echo "bench-all.sh: cannot set nice $NICE (not root?); running at normal priority" >&2
  NICE=0
fi
PIDFILE="$OUT/driver.pid"
# Runs one benchmark driver at the benchmarks' priority; Ctrl-C / SIGTERM reach the driver,
# which stops its workers, its redis-server and drops its database before exiting.
prio() {
  if [ "$NICE" != "0" ] && [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = "1" ]; then
    # A session of its own (setsid) gets its own autogroup, whose priority we raise; the
    # driver replaces the shell (exec), so PIDFILE holds the driver's pid.
    setsid -w bash -c 'echo $$ > "$1"; shift; echo "$1" > /proc/self/autogroup 2>/dev/null || true; n=$1; shift; exec nice -n "$n" "$@"' \
      _ "$PIDFILE" "$NICE" "$@" &
  else
    bash -c 'echo $$ > "$1"; shift; n=$1; shift; exec nice -n "$n" "$@"' _ "$PIDFILE" "$NICE" "$@" &
  fi
  local child=$!
  trap '[ -s "$PIDFILE" ] && kill -TERM "$(cat "$PIDFILE")" 2>/dev/null || true' INT TERM
  local rc=0
  while kill -0 "$child" 2>/dev/null; do wait "$child" && rc=0 || rc=$?; done
  trap - INT TERM
  rm -f "$PIDFILE"
  return "$rc"
}

# ---------------------------------------------------------------- ours
if wants queue; then
  echo "== crm-bench-queue -> $OUT/queue" >&2
  prio "$BIN/crm-bench-queue" "${QUICK[@]}" --database-url "$DB_URL" --out "$OUT/queue/results.json" \
    --run-dir "$OUT/queue/run" "${OUR_ARGS[@]}"
fi
if wants sync; then
  # As shipped: HubSpot (200-record search pages, the issue's provider) and Salesforce (2,000-record
  # query batches); HubSpot at 10,000 too (how the imitation's search scales); then what-if runs
  # (the partial index they once measured is now migration 0008).
  SYNC_RUNS=(
    "hubspot-100k|--provider hubspot --reps 2"
    "salesforce-100k|--provider salesforce --reps 2"
    "hubspot-10k|--provider hubspot --records 10000 --reps 3"
    "hubspot-100k-synchronous-commit-off|--provider hubspot --reps 1 --pg-setting synchronous_commit=off"
  )
  [ ${#QUICK[@]} -gt 0 ] && SYNC_RUNS=("hubspot-quick|--provider hubspot --quick")
  for run in "${SYNC_RUNS[@]}"; do
    name=${run%%|*}
    read -r -a args <<< "${run#*|}"
    echo "== crm-bench-sync $name -> $OUT/sync/$name.json" >&2
    prio "$BIN/crm-bench-sync" "${args[@]}" --database-url "$DB_URL" --out "$OUT/sync/$name.json" \
      --run-dir "$OUT/sync/run" > "$OUT/sync/$name.md"
    cat "$OUT/sync/$name.md"
  done
fi
if wants limits; then
  echo "== crm-bench-limits -> $OUT/limits" >&2
  prio "$BIN/crm-bench-limits" "${QUICK[@]}" --database-url "$DB_URL" --out "$OUT/limits/results.json" \
    --run-dir "$OUT/limits/run" > "$OUT/limits/table.md"
  cat "$OUT/limits/table.md"
fi

# ---------------------------------------------------------------- peers
if [ "$SKIP_PEERS" = "0" ]; then
  echo "== peers: $PEERS_DIR/run-all.sh -> $OUT/peers" >&2
  # run-all.sh raises its own priority the same way.
  bash "$PEERS_DIR/run-all.sh" "${QUICK[@]}" --out "$OUT/peers/raw-results.json" "${PEER_ARGS[@]}"
fi

# ---------------------------------------------------------------- combined report
python3 - "$OUT" > "$OUT/combined.md" <<'PY'
import glob, json, os, statistics, sys

out = sys.argv[1]

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def fmt(v, d=0):
    if v is None:
        return "n/a"
    return "{:,.0f}".format(v) if d == 0 else ("{:.%df}" % d).format(v)

ours = load(os.path.join(out, "queue", "results.json"))
peers = load(os.path.join(out, "peers", "raw-results.json"))
rows = []  # (label, medians dict)
if ours:
    for name, sr in sorted(ours["systems"].items(), key=lambda kv: (kv[0] != "ours", kv[0])):
        m = ours.get("medians", {}).get(name, {})
        rows.append((sr["label"], {
            "w1s": m.get("w1_single"), "w1b": m.get("w1_bulk"), "w2": m.get("w2"),
            "p50": m.get("w3_p50"), "p99": m.get("w3_p99"), "off": m.get("w3_offered"),
            "rss": m.get("rss_mib"), "cmds": m.get("w2_cmds"), "rcpu": m.get("w2_redis_cpu"),
            "wcpu": m.get("w2_worker_cpu"), "name": name}))
if peers:
    for name, pr in peers["peers"].items():
        w2 = pr.get("w2", [])
        note = " (W2 n=%s)" % "/".join(sorted({"{:,}".format(x["n"]) for x in w2})) if name == "rq" and w2 else ""
        rows.append((pr["label"] + note, {
            "w1s": med([x["rate"] for x in pr.get("w1_single", [])]),
            "w1b": med([x["rate"] for x in pr.get("w1_bulk", [])]),
            "w2": med([x["rate"] for x in w2]),
            "p50": med([x["p50_ms"] for x in pr.get("w3", [])]),
            "p99": med([x["p99_ms"] for x in pr.get("w3", [])]),
            "off": med([x["producer"]["achieved_rate"] for x in pr.get("w3", [])]),
            "rss": med([max(x["peak_rss_mib"]) for x in w2 if x.get("peak_rss_mib")]),
            "cmds": med([x.get("redis_cmds_per_job") for x in w2]),
            "rcpu": med([x.get("redis_cpu_us_per_job") for x in w2]),
            "wcpu": med([x.get("worker_cpu_us_per_job") for x in w2]),
            "name": name}))

print("# crm-fleet benchmarks, one session")
print()
if ours:
    print("Queue: %s, %s repetition(s), n=%s; peers: %s." % (
        ours["env"].get("date", "?"), ours["config"].get("reps"), "{:,}".format(ours["config"].get("n", 0)),
        "%s, %s repetition(s)" % (peers["env"].get("date", "?"), peers["config"].get("reps")) if peers else "not run"))
    mem = ours["env"].get("mem_total", "?")
    if mem.endswith(" kB"):
        mem = "%.0f GiB RAM" % (int(mem[:-3]) / 1024 / 1024)
    print("Machine: %s, %s CPUs, %s, kernel %s; ours at nice %s (autogroup %s)." % (
        ours["env"].get("cpu_model", "?"), ours["env"].get("cpus", "?"), mem, ours["env"].get("kernel", "?"),
        ours["env"].get("nice", "?"), ours["env"].get("autogroup", "?")))
    if ours["env"].get("git_head"):
        print("crm-fleet commit %s%s." % (ours["env"]["git_head"],
              "; uncommitted queue/ changes: " + ours["env"]["git_queue_changes"] if ours["env"].get("git_queue_changes") else ""))
    print()
    print("| Queue (medians) | W1 single, jobs/s | W1 bulk, jobs/s | W2, jobs/s | W3 p50 ms | W3 p99 ms | W3 offered, jobs/s | Peak RSS/worker proc, MiB | W2 Redis cmds/job | W2 CPU µs/job: workers + Redis |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, m in rows:
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s + %s |" % (
            label, fmt(m["w1s"]), fmt(m["w1b"]), fmt(m["w2"]), fmt(m["p50"], 2), fmt(m["p99"], 2), fmt(m["off"]),
            fmt(m["rss"]), fmt(m["cmds"], 1), fmt(m["wcpu"]), fmt(m["rcpu"])))
    base = next((m for _, m in rows if m["name"] == "ours"), None)
    if base:
        def r(a, b):
            if a is None or not b:
                return "n/a"
            x = a / b
            return ("%.2fx" if x >= 0.1 else "%.3fx") % x
        print()
        print("Ratios ours / other. Throughput (W1, W2): above 1 means ours is faster. Latency (W3), RSS and Redis cost: below 1 means ours is lower (better).")
        print()
        print("| ours / ... | W1 single | W1 bulk | W2 | W3 p50 | W3 p99 | Peak RSS per worker | W2 Redis cmds/job | W2 Redis CPU/job |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, m in rows:
            if m is base:
                continue
            print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (label, r(base["w1s"], m["w1s"]), r(base["w1b"], m["w1b"]),
                  r(base["w2"], m["w2"]), r(base["p50"], m["p50"]), r(base["p99"], m["p99"]), r(base["rss"], m["rss"]),
                  r(base["cmds"], m["cmds"]), r(base["rcpu"], m["rcpu"])))
    print()

for path in sorted(glob.glob(os.path.join(out, "sync", "*.md")), key=os.path.getmtime):
    print("## Sync ingest: %s" % os.path.basename(path)[:-3])
    print()
    print(open(path).read().strip())
    print()
lim = os.path.join(out, "limits", "table.md")
if os.path.exists(lim):
    print("## Limiter precision")
    print()
    print(open(lim).read().strip())
PY
echo
cat "$OUT/combined.md"
echo
echo "bench-all.sh: results in $OUT (combined.md, queue/, sync/, limits/, peers/)" >&2
