#!/usr/bin/env bash
# HTTP load benchmark on loopback: seeds CUSTOMERS × PER_CUSTOMER bound licenses, starts the
# server, then measures with wrk (Debian package `wrk`):
#   1. GET /healthz            — the ceiling of the HTTP stack
#   2. POST /v1/checkin        — random seeded terminals (the hot path), after a warm-up pass
#                                 (WARMUP seconds) so that most terminals have checked in once
#   3. POST /v1/checkin with a nonce — every answer decided and signed afresh (a terminal's
#                                 first check-in of the day; no answer reuse)
#   4. mixed: 1% support commands (PUT /v1/licenses/{id}/resources), 99% check-ins
# Each run prints `p50_ms=… p99_ms=… requests_per_s=… errors=…`.
#
#   benches/load/run.sh                       # 1000 × 100 = 100,000 licenses, 64 connections, 20 s
#   CUSTOMERS=100 PER_CUSTOMER=10 DURATION=5 benches/load/run.sh   # a quick run
#
# wrk and the server share this machine's cores; the ratio to /healthz is the figure to read.
set -euo pipefail
cd "$(dirname "$0")/../.."

CUSTOMERS=${CUSTOMERS:-1000}
PER_CUSTOMER=${PER_CUSTOMER:-100}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-10}
THREADS=${THREADS:-2}
PORT=${PORT:-18023}
WORKERS=${WORKERS:-}   # the server's HTTP workers; empty: its default
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }

cargo build --release --quiet --bin license-ledger --example load_seed
DATA=$(mktemp -d)
trap 'kill "${SERVER:-}" 2>/dev/null || true; rm -rf "$DATA"' EXIT

target/release/examples/load_seed "$DATA/data" "$DATA/terminals.csv" "$CUSTOMERS" "$PER_CUSTOMER" | tee "$DATA/seed.out"
LEDGER_LOG=warn target/release/license-ledger --data-dir "$DATA/data" serve ${WORKERS:+--workers "$WORKERS"} --listen "127.0.0.1:$PORT" > "$DATA/serve.out" 2> "$DATA/serve.err" &
SERVER=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
TOKEN=$(sed -n 's/^admin_token=//p' "$DATA/seed.out")
[ -n "$TOKEN" ] || { echo "no admin token in the seeder's output" >&2; exit 1; }

run() {
  local name=$1; shift
  local line
  line=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" | tail -1)
  echo "$name connections=$CONNECTIONS $line"
}
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s benches/load/checkin.lua "http://127.0.0.1:$PORT" -- "$DATA/terminals.csv" "$TOKEN" 0 >/dev/null
run healthz -s benches/load/healthz.lua "http://127.0.0.1:$PORT/healthz"
run checkin -s benches/load/checkin.lua "http://127.0.0.1:$PORT" -- "$DATA/terminals.csv" "$TOKEN" 0
run checkin-signed -s benches/load/checkin.lua "http://127.0.0.1:$PORT" -- "$DATA/terminals.csv" "$TOKEN" 0 nonce
run mixed -s benches/load/checkin.lua "http://127.0.0.1:$PORT" -- "$DATA/terminals.csv" "$TOKEN" 1
