#!/usr/bin/env bash
# schemathesis (PyPI) against a live server, checked against the server's own description
# (GET /openapi.json): no 5xx, every status documented, every answer (errors included) in
# its documented schema and content type, and schema-invalid input refused.
#
#   tests/schemathesis/run.sh              # CI: ~2 minutes
#   ST_MAX_TIME=900 tests/schemathesis/run.sh   # longer: more fuzzing and stateful runs
#
# The server is the debug binary (`cargo build` first; LEDGER_BIN to use another) on a
# fresh data directory filled by `demo`, on a free loopback port. Runs as admin over every
# route but the relay's (a relay token runs those); the two event streams are left out
# (they never end; tests/api.rs and tests/relay.rs cover them). Exits non-zero on any
# failure, or if the server died or logged a panic.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${LEDGER_BIN:-$root/target/debug/license-ledger}
st=${ST:-st}
max_time=${ST_MAX_TIME:-90}
relay_time=$(( max_time / 3 > 10 ? max_time / 3 : 10 ))
examples=${ST_EXAMPLES:-30}
seed=${ST_SEED:-$RANDOM}
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection

command -v "$st" >/dev/null || { echo "schemathesis is not installed: pip install schemathesis==4.32.5" >&2; exit 2; }
[ -x "$bin" ] || { echo "no server binary at $bin: run cargo build first" >&2; exit 2; }

work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" --data-dir "$work/data" demo > "$work/demo.out" 2>&1
admin=$(grep -o '^llt_[0-9a-f]*' "$work/demo.out")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
"$bin" --data-dir "$work/data" serve --listen "127.0.0.1:$port" > "$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -fs "$base/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
# The description's example CNPJ, so that examples reach a real customer (with a license,
# and a relay).
post() {
    curl -fsS -X POST "$base$1" -H "Authorization: Bearer $admin" \
        -H 'Content-Type: application/json' -d "$2"
}
post /v1/customers '{"cnpj": "12345678000195", "trade_name": "Loja Exemplo"}' >/dev/null
post /v1/licenses '{"cnpj": "12345678000195", "product": "easycash", "expires_on": "2030-01-31"}' >/dev/null
relay=$(post /v1/tokens '{"name": "relay-exemplo", "role": "relay", "cnpj": "12345678000195"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

status=0
run() {
    local name=$1 token=$2 time=$3
    shift 3
    echo "== schemathesis: $name (seed $seed, at most $time s)"
    (cd "$work" && "$st" run "$base/openapi.json" \
        -H "Authorization: Bearer $token" \
        --checks "$checks" --max-examples "$examples" --max-time "$time" \
        --request-timeout 10 --seed "$seed" --no-color \
        --generation-database none --report-dir "$work/report" "$@") > "$work/$name.out" 2>&1 || status=1
    grep -v '^\s*$' "$work/$name.out" | sed -n '/^Test Phases:/,$p;/FAILURES/,/WARNINGS/p' | grep -v '^    curl' || true
}
run admin "$admin" "$max_time" --exclude-path-regex '/stream$|^/v1/relay/'
run relay "$relay" "$relay_time" --include-path-regex '^/v1/relay/(feed|certificate|events)$'

if ! kill -0 "$server" 2>/dev/null; then
    echo "the server died during the run:" >&2
    tail -20 "$work/serve.log" >&2
    status=1
fi
if grep -q 'panicked' "$work/serve.log"; then
    echo "the server logged a panic:" >&2
    grep -m5 -A3 'panicked' "$work/serve.log" >&2
    status=1
fi
generated=$(grep -ho '[0-9]* generated' "$work"/admin.out "$work"/relay.out | awk '{n += $1} END {print n + 0}')
echo "schemathesis: $generated test cases, seed $seed, $( [ $status = 0 ] && echo passed || echo FAILED )"
exit $status
