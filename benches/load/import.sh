#!/usr/bin/env bash
# `import` throughput into a fresh file store and a fresh PostgreSQL schema (issue 14 targets:
# >= 300,000 records/s into the file store, >= 50,000 records/s into PostgreSQL, hashes
# checked), on an export of a seeded log. Prints one line per run: records, wall seconds,
# records/s, user and system CPU seconds, maximum RSS; checks every import's head against
# the source's `verify`.
#
# usage: benches/load/import.sh [WORK_DIR] [CUSTOMERS=1000] [PER_CUSTOMER=100] [DAYS] [RUNS=3]
#   DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test); needs psql to drop the
#   schema it creates. The defaults give 100,000 licenses and 301,000 records.
set -euo pipefail

work=${1:-/tmp/ledger-import-bench}
customers=${2:-1000}
per_customer=${3:-100}
days=${4:-}
runs=${5:-3}
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
bin=${CARGO_TARGET_DIR:-target}/release

cargo build --release --bin license-ledger --example load_seed
rm -rf "$work"
mkdir -p "$work"
# shellcheck disable=SC2086 # DAYS is optional
"$bin/examples/load_seed" "$work/src" "$work/terminals.csv" "$customers" "$per_customer" $days \
    > "$work/seed.txt"
"$bin/license-ledger" --data-dir "$work/src" export --format jsonl > "$work/log.jsonl"
head=$("$bin/license-ledger" --data-dir "$work/src" verify | tail -n 1)
records=$(grep -c . "$work/log.jsonl")
echo "export: $records records, $(du -b "$work/log.jsonl" | cut -f1) bytes; $head"

measure() { # label, then the command
    local label=$1
    shift
    /usr/bin/time -f "%e %U %S %M" -o "$work/time.txt" "$@" > "$work/out.txt" 2> "$work/err.txt"
    local got
    got=$(tail -n 1 "$work/out.txt")
    if [ "$got" != "$head" ]; then
        echo "$label: head differs: $got" >&2
        exit 1
    fi
    read -r wall user sys rss < "$work/time.txt"
    awk -v l="$label" -v n="$records" -v w="$wall" -v u="$user" -v s="$sys" -v m="$rss" \
        -v la="$(cut -d' ' -f1 /proc/loadavg)" \
        'BEGIN { printf "%s: %d records in %.2f s = %.0f records/s (user %.2f s, sys %.2f s, max RSS %d MB, load %s)\n", l, n, w, n / w, u, s, m / 1024, la }'
}

for run in $(seq 1 "$runs"); do
    rm -rf "$work/file"
    measure "file store, run $run" "$bin/license-ledger" --data-dir "$work/file" import "$work/log.jsonl"
done
rm -rf "$work/file"
for run in $(seq 1 "$runs"); do
    schema="ledger_import_bench_$$"
    psql "$url" -qc "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE"
    measure "PostgreSQL, run $run" "$bin/license-ledger" --data-dir "$work/keys" --store postgres \
        --database-url "$url" --database-schema "$schema" import "$work/log.jsonl"
    psql "$url" -qc "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE"
done
