#!/usr/bin/env bash
# Fuzzes the control-plane HTTP API with schemathesis against its own /openapi.json, end to end:
# builds the binaries, starts `crmctl demo` (sandbox CRMs, scheduler + API, two workers, live
# traffic) on a free port, creates an API key with both scopes, runs every schemathesis check
# over every phase (examples, coverage, fuzzing, stateful), then stops the demo and removes its
# database and Redis keys. Exits non-zero when schemathesis reports a failure.
#
# Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (see `just services`; the demo
# starts private ones otherwise), python3 and PyPI (schemathesis is installed into
# target/api-fuzz/venv, pinned).
#
# Environment: API_FUZZ_EXAMPLES (test cases per operation and phase, default 100),
# API_FUZZ_SEED (reproduce a run), API_FUZZ_NAME (database and Redis prefix, default
# crm_fleet_fuzz), SCHEMATHESIS_VERSION (default below). Results: target/api-fuzz/.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
out=$root/target/api-fuzz
version=${SCHEMATHESIS_VERSION:-4.32.5}
examples=${API_FUZZ_EXAMPLES:-100}
name=${API_FUZZ_NAME:-crm_fleet_fuzz}
prefix=${name//_/-}
postgres=postgres://postgres@127.0.0.1:5432
mkdir -p "$out"

venv=$out/venv
if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *" $version" ]]; then
    echo "api-fuzz: installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build --bins

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$out/demo.log
demo_pid=
cleanup() {
    local rc=$?
    if [[ -n "$demo_pid" ]] && kill -0 "$demo_pid" 2>/dev/null; then
        kill -INT "$demo_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$demo_pid" 2>/dev/null && kill -KILL "$demo_pid" 2>/dev/null
    fi
    psql -q "$postgres/postgres" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli --scan --pattern "$prefix:*" | xargs -r redis-cli unlink >/dev/null 2>&1 || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "api-fuzz: starting the demo on 127.0.0.1:$port (log: $log)"
target/debug/crmctl demo --api-addr "127.0.0.1:$port" --duration 30m --database "$name" --prefix "$prefix" \
    >"$log" 2>&1 &
demo_pid=$!
api=
for _ in $(seq 240); do
    api=$(sed -n 's/^  API  *\(http:[^ ]*\).*/\1/p' "$log" | head -n1)
    [[ -n "$api" ]] && break
    kill -0 "$demo_pid" 2>/dev/null || { cat "$log"; echo "api-fuzz: the demo exited" >&2; exit 1; }
    sleep 0.5
done
[[ -n "$api" ]] || { cat "$log"; echo "api-fuzz: the demo did not start in 2 minutes" >&2; exit 1; }
# Let the demo's traffic make jobs, dead letters and schedules for the stateful phase to find.
sleep 20

key=$(DATABASE_URL="$postgres/$name" target/debug/crmctl api-keys create --name api-fuzz --scopes enqueue,admin \
    | grep -o '^cf_[A-Za-z0-9_-]*')

# Positive-data acceptance (a schema-valid request must not be rejected) holds everywhere but
# where the server checks what a schema cannot say: a cron expression that fires, an IANA time
# zone, an action's parameters, a dead-letter filter's times and cursor, a replay's edits, the
# connection named in a body. Those operations may answer 422 (naming the field) to valid data.
config=$out/schemathesis.toml
cat >"$config" <<'EOF'
[[operations]]
include-operation-id = ["post_action", "create_schedule", "update_schedule", "list_dead_letters",
                        "replay_dead_letter", "replay_dead_letters"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[phases.stateful]
max-steps = 100
EOF

seed=()
[[ -n "${API_FUZZ_SEED:-}" ]] && seed=(--seed "$API_FUZZ_SEED")
echo "api-fuzz: schemathesis $version against $api/openapi.json"
# One worker: with several, CPython 3.11's parser can fail under Hypothesis' threads
# ("AST constructor recursion depth mismatch").
cd "$out"
set +e
"$venv/bin/schemathesis" --config-file "$config" run "$api/openapi.json" \
    -H "Authorization: Bearer $key" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples" \
    --workers 1 \
    --suppress-health-check too_slow,filter_too_much \
    --report junit,ndjson --report-dir "$out/report" \
    --no-color "${seed[@]}" 2>&1 | tee "$out/schemathesis.txt"
rc=${PIPESTATUS[0]}
set -e
echo "api-fuzz: schemathesis exited $rc (output: $out/schemathesis.txt, reports: $out/report)"
exit "$rc"
