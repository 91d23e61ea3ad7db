#!/usr/bin/env bash
# Schemathesis (from PyPI) against the document the server serves, with all its checks: every
# schema-valid request must be handled as documented, every invalid one refused. Deterministic,
# so a run that passed passes again. Runs the debug binary cargo built (in the target directory
# cargo reports, so `CARGO_TARGET_DIR` is honoured), on the embedded database with the demo
# fixture, with limits out of the way (the fuzzer sends thousands of requests, many with bad
# credentials; the limits have tests of their own).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
binary="$target_dir/debug/neo-sessions"
if [ ! -x "$binary" ]; then
  echo "no $binary: build it first (cargo build --bin neo-sessions)" >&2
  exit 1
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
env -u NEO_DATABASE_URL -u DATABASE_URL \
  NEO_DATA_DIR="$data" NEO_LISTEN="127.0.0.1:$port" NEO_LOG_FILTER=warn NEO_API_KEY_ENV=test \
  NEO_RATE_LIMIT_PER_MINUTE=1000000 NEO_RATE_LIMIT_BURST=100000 \
  NEO_AUTH_FAILURE_PER_MINUTE=1000000 NEO_AUTH_FAILURE_BURST=100000 \
  "$binary" serve --demo > "$data/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
up=false
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/public-api/health/live" >/dev/null && up=true && break
  sleep 0.1
done
if [ "$up" != true ]; then
  echo "the server did not start:" >&2
  cat "$data/server.log" >&2
  exit 1
fi
python3 -m schemathesis.cli --config-file .ci/schemathesis.toml run "http://127.0.0.1:$port/public-api/openapi.json" \
  --checks all --max-examples 100 --generation-deterministic \
  -H "Authorization: Bearer neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd"
