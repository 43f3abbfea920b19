# crm-fleet tasks. CI runs `just ci`; a new user runs `just demo` and `just test`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Start Redis and PostgreSQL locally if they are not running, and install Prometheus (apt-get where missing).
services:
    bash .ci/services.sh

# The whole fleet on this machine against the CRM sandbox, with live progress (Ctrl-C stops it).
demo *ARGS:
    cargo build --release --bins
    ./target/release/crmctl demo {{ARGS}}

# Run the whole test suite (needs Redis on 6379 and PostgreSQL on 5432; see `just services`).
test:
    cargo test --workspace --no-fail-fast

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Everything CI checks.
ci: lint test

# Apply database migrations (DATABASE_URL).
migrate:
    cargo run -q -p crm-scheduler --bin crmctl -- migrate

# Run one worker against local services.
worker:
    DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379} CRM_FLEET_TOKEN_KEY=${CRM_FLEET_TOKEN_KEY:?set CRM_FLEET_TOKEN_KEY to the key your tokens were stored with (a new one: crmctl keys generate)} cargo run -p crm-worker

# Benchmarks (release build; prints figures).
bench:
    bash scripts/bench-all.sh

# The limits acceptance figure at full scale (100 requests / 10 s, 5,000 jobs; ~9 minutes).
accept-limits:
    cargo test -p crm-worker --test worker -- --ignored full_scale --nocapture

# Validate the Dockerfile, compose file, Kubernetes manifests, Prometheus config and alerts (fetches the tools into .tmp/).
deploy-validate:
    bash deploy/validate.sh --install

# Fuzz the control-plane API with schemathesis against its /openapi.json on a live demo (~2 minutes once built; see docs/api-fuzz.md).
api-fuzz:
    bash scripts/api-fuzz.sh
