#!/usr/bin/env bash
# A/B figures for one build: bash bench/ab.sh BINARY [CONFIG_FILE]
# Starts BINARY on a fresh PostgreSQL database with the example fixture (an older build can be
# given its own default.toml as CONFIG_FILE), then prints the key mint's and the agents mint's
# req/s (10 s, 32 connections each) and the service's CPU µs per mint. Run two builds in turn,
# several times each: the machine is noisy.
set -euo pipefail
bin=$(realpath "$1")
cfg=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
PORT=${PORT:-18191}
work=$(mktemp -d)
psql -q postgres://postgres@127.0.0.1:5432/postgres -c "DROP DATABASE IF EXISTS neo_ab WITH (FORCE)" 2>/dev/null
export NEO_DATABASE_URL=postgres://postgres@127.0.0.1:5432/neo_ab NEO_DATA_DIR=$work/data NEO_LISTEN=127.0.0.1:$PORT
export NEO_KEY_ENCRYPTION_KEY=${NEO_KEY_ENCRYPTION_KEY:-$(openssl rand -base64 32)}  # required on PostgreSQL
export NEO_LOG_FORMAT=json NEO_LOG_FILTER=info NEO_AUDIT_RETENTION_DAYS=0
export NEO_RATE_LIMIT_PER_MINUTE=1000000000 NEO_RATE_LIMIT_BURST=1000000
if [ -n "$cfg" ]; then export NEO_CONFIG=$cfg; fi
"$bin" seed config/seed.example.json >/dev/null 2>&1
"$bin" serve > "$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/public-api/health" >/dev/null && break; sleep 0.1; done
KEY=neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd
URL=http://127.0.0.1:$PORT/public-api/sessions
oha --no-tui -n 3000 -c 8 -m POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"session_id":"s-acme-1"}' "$URL" >/dev/null
line="$(basename "$bin"):"
for body in '{"session_id":"s-acme-1","end_user":"pat"}' \
            '{"session_id":"s-acme-1","end_user":"pat","allowed_agent_ids":[101,102]}'; do
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  read -r rps ok < <(oha --no-tui --output-format json -z 10s -c 32 -m POST -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d "$body" "$URL" | python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['summary']['requestsPerSec']), sum(v for k, v in d['statusCodeDistribution'].items() if k.startswith('2')))")
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  line="$line rps=$rps cpu_us=$(python3 -c "print(round(($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / $ok, 1))")"
done
echo "$line"
