#!/usr/bin/env bash
# A/B figure for one checkout: bash bench/ab.sh [REPO_DIR] (its release binary built).
# Prints key-mint req/s (10 s, 32 connections), the service's CPU ticks over those 10 s, and liveness req/s.
# Run it for the two checkouts in turn, twice each: the machine is noisy.
set -euo pipefail
repo=$(cd "${1:-.}" && pwd)
cd "$repo"
PORT=18191
work=$(mktemp -d)
psql -q postgres://postgres@127.0.0.1:5432/postgres -c "DROP DATABASE IF EXISTS neo_ab WITH (FORCE)" 2>/dev/null
export NEO_DATABASE_URL=postgres://postgres@127.0.0.1:5432/neo_ab NEO_DATA_DIR=$work/data NEO_LISTEN=127.0.0.1:$PORT
export NEO_LOG_FORMAT=json NEO_LOG_FILTER=info NEO_RATE_LIMIT_PER_MINUTE=1000000000 NEO_RATE_LIMIT_BURST=1000000
./target/release/neo-sessions seed config/seed.example.json >/dev/null 2>&1
./target/release/neo-sessions serve > $work/server.log 2>&1 &
pid=$!
sleep 1.5
KEY=neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd
oha --no-tui -n 3000 -c 8 -m POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"session_id":"s-acme-1"}' http://127.0.0.1:$PORT/public-api/sessions >/dev/null
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
mint=$(oha --no-tui --output-format json -z 10s -c 32 -m POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"session_id":"s-acme-1","end_user":"pat"}' http://127.0.0.1:$PORT/public-api/sessions | python3 -c "import json,sys; d=json.load(sys.stdin)['summary']; print(round(d['requestsPerSec']), d['successRate'])")
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
live=$(oha --no-tui --output-format json -z 5s -c 32 http://127.0.0.1:$PORT/public-api/health/live | python3 -c "import json,sys; print(round(json.load(sys.stdin)['summary']['requestsPerSec']))")
echo "$(basename "$repo") mint=$mint ticks=$((t1-t0)) live=$live"
kill $pid
rm -rf $work
