#!/usr/bin/env bash
# The year benchmark (issue 14): how each cost grows with the log. For each size it seeds a
# history with `load_seed` (CUSTOMERS × PER_CUSTOMER licenses, DAYS days of daily check-ins,
# renewals and incidents), then on the file store:
#   1. first start: the server builds its derived data (log index, snapshots) from the log;
#   2. a restart (SIGTERM, then start again): ready = /healthz 200 and a decided check-in
#      answered; resident memory after that and after the probes;
#   3. benches/year/probe.rs: Histórico first page, one license as of a moment, the table as
#      of a moment, search by customer + type + 30-day range, check-ins idle and during 32
#      concurrent as-of requests (p50/p99; every answer checked);
#   4. the server stopped: CLI `history ID` wall time, `verify` and `export` rate and memory;
#   5. bytes on disk per record (log, derived data).
# Appends one JSON line per size to benches/results/year.jsonl (machine and commit included)
# and draws benches/results/year.png (python3 with matplotlib).
#
#   benches/year/run.sh                              # 1 M, 3 M, 10 M and 36 M records (hours)
#   SIZES="100:100:100" benches/year/run.sh           # about 1 M records
#   SIZES="20:50:30" RESULTS=/tmp/y.jsonl benches/year/run.sh   # a quick try
#
# SIZES: space-separated CUSTOMERS:PER_CUSTOMER:DAYS. WORK: where data goes (default a
# temporary directory, removed at the end; KEEP=1 keeps it). REUSE=1 with a kept WORK of one
# size: the seeded log there is measured again (its derived data removed first, so the first
# start builds it with the binaries of now); seed_s is then null. STORES="file postgres" also
# measures PostgreSQL (DATABASE_URL, default the local test database): the seeded log is
# exported and imported into a fresh schema (import rate recorded), then served from there.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES=${SIZES:-"100:100:100 300:100:100 1000:100:100 1000:100:365"}
RESULTS=${RESULTS:-benches/results/year.jsonl}
CHART=${CHART:-benches/results/year.png}
PORT=${PORT:-18123}
STORES=${STORES:-file}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
BIN=target/release/license-ledger

cargo build --release --quiet --bin license-ledger --example load_seed --example year_probe
# The commit the binaries were built from (later commits must not relabel these results).
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src events projections || echo -dirty)
trap 'kill "${SERVER:-}" 2>/dev/null || true
      [ -n "${schema:-}" ] && psql "$DATABASE_URL" -qc "drop schema if exists $schema cascade" 2>/dev/null
      [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

now_ms() { date +%s%3N; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# Starts the server on $DATA; sets SERVER and READY_MS (healthz 200 and one decided check-in).
start_server() {
  local t0 line
  t0=$(now_ms)
  LEDGER_LOG=${LEDGER_LOG:-info,fjall=warn,lsm_tree=warn} "$BIN" "${STORE_ARGS[@]}" --data-dir "$DATA" serve --listen "127.0.0.1:$PORT" > "$WORK/serve.out" 2>> "$WORK/serve.err" &
  SERVER=$!
  until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    kill -0 "$SERVER" 2>/dev/null || { echo "the server died:" >&2; tail -20 "$WORK/serve.err" >&2; exit 1; }
    sleep 0.05
  done
  line=$(head -1 "$WORK/terminals.csv")
  IFS=, read -r cnpj hw key _ token <<< "$line"
  curl -fsS -X POST "http://127.0.0.1:$PORT/v1/checkin" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d "{\"cnpj\":\"$cnpj\",\"product\":\"easycash\",\"hardware_id\":\"$hw\",\"hardware_key\":\"$key\",\"nonce\":\"ready-$(now_ms)\"}" \
    | grep -q '"VALID"' || { echo "the first check-in was not VALID" >&2; exit 1; }
  READY_MS=$(( $(now_ms) - t0 ))
}

stop_server() {
  kill -TERM "$SERVER"
  wait "$SERVER" || true
  SERVER=
}

for size in $SIZES; do
  IFS=: read -r customers per_customer days <<< "$size"
  DATA="$WORK/data"
  echo "== $customers customers × $per_customer licenses, $days days" >&2
  if [ -n "${REUSE:-}" ] && [ -f "$WORK/seed.out" ] && [ -d "$DATA" ]; then
    rm -rf "$DATA/derived" "$WORK/pgdata" "$WORK/serve.err"
    seed_s=None
  else
    rm -rf "$DATA" "$WORK/pgdata" "$WORK/terminals.csv" "$WORK/serve.err"
    t0=$(now_ms)
    target/release/examples/load_seed "$DATA" "$WORK/terminals.csv" "$customers" "$per_customer" "$days" > "$WORK/seed.out"
    seed_s=$(( ($(now_ms) - t0) / 1000 ))
  fi
  admin=$(sed -n 's/^admin_token=//p' "$WORK/seed.out")
  records=$(sed -n 's/.*head position \([0-9]*\)$/\1/p' "$WORK/seed.out" | tail -1)
  to=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  from=$(date -u -d "-$days days" +%Y-%m-%dT%H:%M:%SZ)

  for store in $STORES; do
  STORE_ARGS=()
  import_per_s=None
  if [ "$store" = postgres ]; then
    schema="year_${records}_$$"
    STORE_ARGS=(--store postgres --database-url "$DATABASE_URL" --database-schema "$schema")
    mkdir -p "$WORK/pgdata"
    cp "$DATA/secrets.toml" "$WORK/pgdata/"
    # Piped: an export of a year is larger than the log itself.
    t0=$(now_ms)
    "$BIN" --data-dir "$DATA" export --format jsonl \
      | "$BIN" "${STORE_ARGS[@]}" --data-dir "$WORK/pgdata" import /dev/stdin > /dev/null
    import_per_s=$(( records * 1000 / ( $(now_ms) - t0 + 1 ) ))
    DATA="$WORK/pgdata"
  fi
  start_server; first_ready_ms=$READY_MS; stop_server
  start_server; ready_ms=$READY_MS
  rss_ready=$(rss_kb "$SERVER")
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  probe=$(target/release/examples/year_probe "http://127.0.0.1:$PORT" "$admin" "$WORK/terminals.csv" "$from" "$to")
  load_after=$(cut -d' ' -f1 /proc/loadavg)
  rss_after=$(rss_kb "$SERVER"); hwm=$(hwm_kb "$SERVER")
  stop_server

  license=$(head -1 "$WORK/terminals.csv" | cut -d, -f4)
  t0=$(now_ms); "$BIN" "${STORE_ARGS[@]}" --data-dir "$DATA" history "$license" > /dev/null; history_cli_ms=$(( $(now_ms) - t0 ))
  t0=$(now_ms); /usr/bin/time -f '%M' -o "$WORK/verify.kb" "$BIN" "${STORE_ARGS[@]}" --data-dir "$DATA" verify > /dev/null; verify_ms=$(( $(now_ms) - t0 ))
  t0=$(now_ms); /usr/bin/time -f '%M' -o "$WORK/export.kb" "$BIN" "${STORE_ARGS[@]}" --data-dir "$DATA" export --format jsonl > /dev/null; export_ms=$(( $(now_ms) - t0 ))
  if [ "$store" = postgres ]; then
    log_bytes=$(psql "$DATABASE_URL" -Atc "select pg_total_relation_size('$schema.ledger_events')")
    psql "$DATABASE_URL" -qc "drop schema $schema cascade"
    schema=
  else
    log_bytes=$(du -sb --exclude=derived --exclude=index "$DATA" | cut -f1)
  fi
  derived_bytes=$(du -sb "$DATA/derived" | cut -f1)
  index_bytes=$( [ -d "$DATA/index" ] && du -sb "$DATA/index" | cut -f1 || echo 0)
  licenses=$(( customers * per_customer ))
  python3 - "$RESULTS" <<PY
import json, sys, platform, subprocess, os
probe = json.loads('''$probe''')
line = {
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$COMMIT",
  "machine": f"{platform.machine()} {os.cpu_count()} cores {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB",
  "store": "$store",
  "licenses": $licenses, "days": $days, "records": $records, "seed_s": $seed_s,
  "import_records_per_s": $import_per_s,
  "first_start_ready_ms": $first_ready_ms, "ready_ms": $ready_ms,
  "load_average_1m_before_after_probes": [$load_before, $load_after],
  "rss_ready_mib": $rss_ready / 1024, "rss_after_probe_mib": $rss_after / 1024, "rss_peak_mib": $hwm / 1024,
  "history_cli_ms": $history_cli_ms,
  "verify_records_per_s": round($records / max($verify_ms, 1) * 1000), "verify_max_rss_mib": int(open("$WORK/verify.kb").read()) / 1024,
  "export_records_per_s": round($records / max($export_ms, 1) * 1000), "export_max_rss_mib": int(open("$WORK/export.kb").read()) / 1024,
  "log_bytes_per_record": round($log_bytes / $records, 1),
  "derived_bytes_per_record": round($derived_bytes / $records, 1),
  "store_index_bytes_per_record": round($index_bytes / $records, 1),
  **probe,
}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(line) + "\n")
print(json.dumps(line, indent=1))
PY
  DATA="$WORK/data"
  done
done
python3 benches/year/chart.py "$RESULTS" "$CHART"
