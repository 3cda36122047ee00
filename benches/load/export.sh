#!/usr/bin/env bash
# `export` and `verify` throughput on the file store and on PostgreSQL (issue 14 targets:
# >= 1,000,000 records/s in <= 100 MiB on this 2-core machine). Seeds a log with
# `load_seed DIR CSV CUSTOMERS PER_CUSTOMER DAYS` (defaults 300 100 30: about 991,000
# records), imports it into a fresh PostgreSQL schema, then runs `verify`, `export --format
# jsonl` and `export --format csv` RUNS times on each store (output to /dev/null) and prints
# records/s, CPU and max RSS from /usr/bin/time. Checks that both stores' exports are
# byte-identical and that `verify` names the same head.
#
# usage: benches/load/export.sh [WORK_DIR] [CUSTOMERS=300] [PER_CUSTOMER=100] [DAYS=30] [RUNS=3]
#   DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test); SKIP_PG=1 skips
#   PostgreSQL; needs psql to drop the schema it creates.
set -euo pipefail

work=${1:-/tmp/ledger-export-bench}
customers=${2:-300}
per_customer=${3:-100}
days=${4:-30}
runs=${5:-3}
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
bin=${CARGO_TARGET_DIR:-target}/release
schema="ledger_export_bench_$$"

cargo build --release --bin license-ledger --example load_seed
if [ ! -f "$work/seeded-$customers-$per_customer-$days" ]; then
    rm -rf "$work"
    mkdir -p "$work"
    "$bin/examples/load_seed" "$work/src" "$work/terminals.csv" "$customers" "$per_customer" \
        "$days" > "$work/seed.txt"
    touch "$work/seeded-$customers-$per_customer-$days"
fi
head=$("$bin/license-ledger" --data-dir "$work/src" verify | tail -n 1)
records=$(echo "$head" | sed 's/^count=\([0-9]*\) .*/\1/')
echo "log: $records records; $head; commit $(git rev-parse --short HEAD)"

measure() { # label, then the command (stdout to /dev/null)
    local label=$1
    shift
    /usr/bin/time -f "%e %U %S %M" -o "$work/time.txt" "$@" > /dev/null 2> "$work/err.txt" || {
        cat "$work/err.txt" >&2
        exit 1
    }
    read -r wall user sys rss < "$work/time.txt"
    awk -v l="$label" -v n="$records" -v w="$wall" -v u="$user" -v s="$sys" -v m="$rss" \
        -v la="$(cut -d' ' -f1 /proc/loadavg)" \
        'BEGIN { printf "%s: %d records in %.2f s = %.0f records/s (user %.2f s, sys %.2f s, max RSS %d MiB, load %s)\n", l, n, w, n / w, u, s, m / 1024, la }'
}

stores=(file)
file=(--data-dir "$work/src")
pg=(--data-dir "$work/keys" --store postgres --database-url "$url" --database-schema "$schema")
if [ -z "${SKIP_PG:-}" ]; then
    trap 'psql "$url" -qc "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE"' EXIT
    "$bin/license-ledger" "${file[@]}" export --format jsonl > "$work/log.jsonl"
    "$bin/license-ledger" "${pg[@]}" import "$work/log.jsonl" > /dev/null
    pg_head=$("$bin/license-ledger" "${pg[@]}" verify | tail -n 1)
    [ "$pg_head" = "$head" ] || { echo "PostgreSQL head differs: $pg_head" >&2; exit 1; }
    cmp <("$bin/license-ledger" "${pg[@]}" export --format jsonl) "$work/log.jsonl"
    rm -f "$work/log.jsonl"
    stores+=(pg)
fi

for store in "${stores[@]}"; do
    declare -n args=$store
    for command in "verify" "export --format jsonl" "export --format csv"; do
        for run in $(seq 1 "$runs"); do
            # shellcheck disable=SC2086 # the command's words
            measure "$store $command, run $run" "$bin/license-ledger" "${args[@]}" $command
        done
    done
done
