#!/usr/bin/env bash
# Relay benchmark on loopback:
#   1. catch-up: a central server with one customer of LICENSES licenses (each bound by a
#      first check-in: 3 records per license), and a relay started empty for that customer;
#      the time until its mirror holds the customer's whole part of the log;
#   2. check-in throughput at the relay with the central load script (benches/load/checkin.lua),
#      every terminal using a terminal token of the relay.
# Each wrk run prints `p50_ms=… p99_ms=… requests_per_s=… errors=…`.
#
#   benches/load/relay.sh                        # 10,000 licenses, 64 connections, 20 s
#   LICENSES=1000 DURATION=5 benches/load/relay.sh   # a quick run
set -euo pipefail
cd "$(dirname "$0")/../.."

LICENSES=${LICENSES:-10000}
CONNECTIONS=${CONNECTIONS:-64}
DURATION=${DURATION:-20}
THREADS=${THREADS:-2}
CENTRAL_PORT=${CENTRAL_PORT:-18033}
RELAY_PORT=${RELAY_PORT:-18034}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }

cargo build --release --quiet --bin license-ledger --example load_seed
BIN=target/release/license-ledger
DATA=$(mktemp -d)
trap 'kill "${CENTRAL:-}" "${RELAY:-}" 2>/dev/null || true; rm -rf "$DATA"' EXIT

target/release/examples/load_seed "$DATA/central" "$DATA/terminals.csv" 1 "$LICENSES" > "$DATA/seed.out"
CNPJ=$(head -1 "$DATA/terminals.csv" | cut -d, -f1)
RELAY_TOKEN=$($BIN --data-dir "$DATA/central" token create --role relay --cnpj "$CNPJ" | tail -1)
# The benchmark forwards more events through one relay token than the default write quota
# lets a relay forward in a minute: its center takes them all.
printf '[quotas]\nrelay_events_per_minute = 1000000\n' > "$DATA/central.toml"
LEDGER_LOG=warn $BIN --data-dir "$DATA/central" --config "$DATA/central.toml" serve --listen "127.0.0.1:$CENTRAL_PORT" > "$DATA/central.out" 2> "$DATA/central.err" &
CENTRAL=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$CENTRAL_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# The relay's own tokens: one for the terminals, one to read its status.
TERMINAL=$($BIN --data-dir "$DATA/relay" token create --role terminal --cnpj "$CNPJ" | tail -1)
READER=$($BIN --data-dir "$DATA/relay" token create --role support | tail -1)
EXPECTED=$((1 + 3 * LICENSES))
START=$(date +%s.%N)
LEDGER_LOG=warn $BIN --data-dir "$DATA/relay" relay --upstream "http://127.0.0.1:$CENTRAL_PORT" --allow-insecure-upstream \
  --cnpj "$CNPJ" --token "$RELAY_TOKEN" --listen "127.0.0.1:$RELAY_PORT" > "$DATA/relay.out" 2> "$DATA/relay.err" &
RELAY=$!
while true; do
  RECORDS=$(curl -fsS -H "Authorization: Bearer $READER" "http://127.0.0.1:$RELAY_PORT/v1/relay/status" 2>/dev/null \
    | sed -n 's/.*"mirror_records":\([0-9]*\).*/\1/p' || true)
  [ "${RECORDS:-0}" -ge "$EXPECTED" ] && break
  sleep 0.05
done
END=$(date +%s.%N)
echo "catch-up licenses=$LICENSES records=$EXPECTED seconds=$(echo "$END - $START" | bc)"

# The central seeder's CSV with the relay's terminal token in the fifth column.
awk -F, -v t="$TERMINAL" 'BEGIN{OFS=","} {$5=t; print}' "$DATA/terminals.csv" > "$DATA/relay-terminals.csv"
wrk -t"$THREADS" -c"$CONNECTIONS" -d5s -s benches/load/checkin.lua "http://127.0.0.1:$RELAY_PORT" -- "$DATA/relay-terminals.csv" "$READER" 0 >/dev/null
line=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s benches/load/checkin.lua "http://127.0.0.1:$RELAY_PORT" -- "$DATA/relay-terminals.csv" "$READER" 0 | tail -1)
echo "relay-checkin connections=$CONNECTIONS $line"
