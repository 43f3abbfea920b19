#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, trust auth for user
# postgres, database "test") are reachable; installs them with apt-get and starts them where
# they are not; installs Prometheus (the telemetry tests run promtool and a server of their
# own). Idempotent: on a machine that already has all three, it only checks.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y --no-install-recommends "$@" >/dev/null
  fi
}

redis_ok() { command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_ok() { command -v psql >/dev/null && psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; }

# --- Redis (the cluster tests also need redis-server and redis-cli on PATH) ---
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  log "installing redis-server"
  apt_install redis-server redis-tools
fi
if ! redis_ok; then
  log "starting redis-server on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis_ok && break; sleep 0.1; done
fi
redis_ok || { log "redis is not reachable"; exit 1; }
log "redis ok"

# --- PostgreSQL ---
if ! pg_ok; then
  if ! command -v pg_ctlcluster >/dev/null; then
    log "installing postgresql"
    apt_install postgresql postgresql-client
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    log "no PostgreSQL cluster found"; exit 1
  fi
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    log "allowing trust auth on loopback for tests"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
  for _ in $(seq 1 100); do
    psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.1
  done
  psql -h 127.0.0.1 -U postgres -d postgres -Atc "select 1 from pg_database where datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
fi
pg_ok || { log "postgres is not reachable"; exit 1; }
log "postgres ok"

# --- Prometheus (promtool and a server for the telemetry tests; not left running) ---
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  log "installing prometheus (promtool)"
  apt_install prometheus
  # Debian's package may start a system instance; the tests start their own.
  (service prometheus stop || pkill -x prometheus || true) >/dev/null 2>&1
fi
log "prometheus $(prometheus --version 2>&1 | head -n 1 | awk '{print $3}') ok"
