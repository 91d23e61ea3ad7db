#!/usr/bin/env bash
# Load benchmark: builds the release binary, starts it against the local PostgreSQL with the
# example fixture, drives it over keep-alive connections, and prints one table; the same figures
# go to bench/results/<UTC time>.json. First the realistic workload (examples/loadgen.rs: 100,000
# sessions across the example tenants, Zipf popularity s = 1.1, a fifth of the requests with
# allowed_agent_ids, API keys and Entra tokens mixed) and its reference, a route with exactly one
# database round trip; then the single-session runs (oha).
#
#   bash bench/load.sh                     # defaults below
#   DURATION=20s CONNECTIONS=64 SOAK_MINTS=1000000 bash bench/load.sh
#   PRUNE_ROWS=1000000 bash bench/load.sh  # also: mint p99 at 50% while retention deletes that many rows
#   KEEP=1 bash bench/load.sh              # keep the raw outputs and the server log (path printed)
#   SERVER_BIN=/tmp/neo-sessions-before bash bench/load.sh   # bench another build (A/B)
#
# Everything (oha, the service, PostgreSQL) shares this machine, as it would on one 2-core host.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
SOAK_MINTS=${SOAK_MINTS:-1000000}
SESSIONS=${SESSIONS:-100000}
PRUNE_ROWS=${PRUNE_ROWS:-0}
SERVER_BIN=${SERVER_BIN:-./target/release/neo-sessions}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
DB_URL=${DB_URL:-postgres://postgres@127.0.0.1:5432/neo_bench}
PORT=${PORT:-18180}
JWKS_PORT=${JWKS_PORT:-18181}
KEY=neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd
GLOBEX_KEY=neo_sk_test_Gx7Lb2Qm9Tz4Wc8Nv3Kd6Rp1
AUDIENCE=api://neo-sessions-bench
SCOPE=Sessions.Mint

command -v oha >/dev/null || cargo install oha --locked
command -v psql >/dev/null || { echo "psql is needed to reset the benchmark database" >&2; exit 1; }
cargo build --release --locked --bin neo-sessions --example entra_fixture --example loadgen

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "raw outputs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A fresh database, the fixture, and a local Entra (a JWKS served from a file).
psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS neo_bench WITH (FORCE)"
./target/release/examples/entra_fixture "$work" "$AUDIENCE" "$SCOPE" > "$work/entra-token"
python3 -m http.server "$JWKS_PORT" --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
pids+=($!)

export NEO_DATABASE_URL=$DB_URL NEO_DATA_DIR=$work/data NEO_LISTEN=127.0.0.1:$PORT
# Required on PostgreSQL; a throwaway one for this run.
export NEO_KEY_ENCRYPTION_KEY=${NEO_KEY_ENCRYPTION_KEY:-$(openssl rand -base64 32)}
export NEO_LOG_FORMAT=json NEO_LOG_FILTER=info
export NEO_ENTRA_AUDIENCE=$AUDIENCE NEO_ENTRA_REQUIRED_SCOPE=$SCOPE
export NEO_ENTRA_JWKS_URL=http://127.0.0.1:$JWKS_PORT/jwks.json
# The benchmark measures minting, not the limiter's refusals.
export NEO_RATE_LIMIT_PER_MINUTE=1000000000 NEO_RATE_LIMIT_BURST=1000000
# Retention runs only where the prune run below asks for it.
export NEO_AUDIT_RETENTION_DAYS=0
"$SERVER_BIN" seed config/seed.example.json >/dev/null
# The realistic workload's sessions: b-0 (most popular) to b-<SESSIONS-1>, 3 in 5 Acme's.
psql -q "$DB_URL" -c "INSERT INTO chat_sessions (id, tenant_id)
  SELECT 'b-' || i, CASE WHEN i % 5 < 3 THEN 'acme' ELSE 'globex' END
  FROM generate_series(0, $SESSIONS - 1) i" -c "ANALYZE chat_sessions"
"$SERVER_BIN" serve > "$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/public-api/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/public-api/health" >/dev/null || { cat "$work/server.log"; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
# All PostgreSQL processes (the server shares the cores; its cost per mint matters as much). A
# backend that exits between pgrep and awk is skipped (awk would fail the pipeline).
pg_ticks() { for p in $(pgrep -x postgres); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server/status"; }
base="http://127.0.0.1:$PORT"
mint_url="$base/public-api/sessions"
entra_token=$(cat "$work/entra-token")

# measure NAME COMMAND...: runs a load generator; saves its JSON and the CPU ticks the service
# and PostgreSQL spent meanwhile.
measure() {
  local name=$1; shift
  local before after pg_before pg_after
  before=$(cpu_ticks); pg_before=$(pg_ticks)
  "$@" > "$work/$name.json"
  after=$(cpu_ticks); pg_after=$(pg_ticks)
  echo $((after - before)) > "$work/$name.ticks"
  echo $((pg_after - pg_before)) > "$work/$name.pgticks"
  echo "  $name done" >&2
}
run() { local name=$1; shift; measure "$name" oha --no-tui --output-format json "$@"; }
loadgen() { local name=$1; shift; measure "$name" ./target/release/examples/loadgen "$@"; }
mint() { # mint NAME AUTH BODY OHA-ARGS...
  local name=$1 auth=$2 body=$3; shift 3
  run "$name" -m POST -H "Authorization: Bearer $auth" -H 'Content-Type: application/json' -d "$body" "$@" "$mint_url"
}

sleep 1
rss_idle=$(rss_kib)
# Warm-up: caches, connections, the JWKS.
mint warmup "$KEY" '{"session_id":"s-acme-1"}' -n 2000 -c 8 >/dev/null

secs=${DURATION%s}
# The plan: sessions in popularity order, each tenant's credentials and agents.
python3 - "$SESSIONS" "$KEY" "$entra_token" "$GLOBEX_KEY" > "$work/plan.json" <<'PY'
import json, sys
n, acme_key, entra, globex_key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
print(json.dumps({
    "sessions": [[f"b-{i}", "acme" if i % 5 < 3 else "globex"] for i in range(n)],
    "credentials": {"acme": [acme_key, entra], "globex": [globex_key]},
    "agents": {"acme": [101, 102], "globex": [201]},
    "zipf_s": 1.1, "agents_share": 0.2,
}))
PY
# The reference: an authenticated read of one mint record, one indexed SELECT. (The issue's
# DB-ping route, /public-api/health, answers from a one-second readiness cache: no round trip.)
jti=$(curl -sf -X POST "$mint_url" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"session_id":"s-acme-1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["jti"])')
echo "realistic workload: $SESSIONS sessions, $DURATION each, $CONNECTIONS connections" >&2
./target/release/examples/loadgen --plan "$work/plan.json" --url "$mint_url" --duration 3 \
  --connections "$CONNECTIONS" > /dev/null
loadgen one_trip --get "$base/public-api/sessions/$jti" --bearer "$KEY" \
  --duration "$secs" --connections "$CONNECTIONS"
loadgen mint_realistic --plan "$work/plan.json" --url "$mint_url" --duration "$secs" --connections "$CONNECTIONS"
realistic=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['summary']['requestsPerSec'])" "$work/mint_realistic.json")
rate=$(python3 -c "print(max(1, int($realistic * 50 / 100)))")
echo "fixed rate 50% of realistic saturation: $rate req/s" >&2
loadgen mint_realistic_at_50pct --plan "$work/plan.json" --url "$mint_url" --duration "$secs" \
  --connections "$CONNECTIONS" --rate "$rate"

echo "single-session runs, $DURATION each, $CONNECTIONS connections" >&2
run liveness -z "$DURATION" -c "$CONNECTIONS" "$base/public-api/health/live"
mint mint_key "$KEY" '{"session_id":"s-acme-1","end_user":"pat"}' -z "$DURATION" -c "$CONNECTIONS"
mint mint_entra "$entra_token" '{"session_id":"s-acme-1","end_user":"pat"}' -z "$DURATION" -c "$CONNECTIONS"
mint mint_agents "$KEY" '{"session_id":"s-acme-1","end_user":"pat","allowed_agent_ids":[101,102]}' -z "$DURATION" -c "$CONNECTIONS"

saturation=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['summary']['requestsPerSec'])" "$work/mint_key.json")
for pct in 50 80; do
  rate=$(python3 -c "print(max(1, int($saturation * $pct / 100)))")
  echo "fixed rate $pct% of key-mint saturation: $rate req/s" >&2
  mint "mint_key_at_${pct}pct" "$KEY" '{"session_id":"s-acme-1","end_user":"pat"}' \
    -z "$DURATION" -c "$CONNECTIONS" -q "$rate" --latency-correction
done

if [ "$PRUNE_ROWS" -gt 0 ]; then
  # Records of tokens that expired 200 days ago, then a second replica with the default 90-day
  # retention: its start-up round deletes them (batches of 1000) while the first one serves the
  # 50% rate. Both replicas on this machine, as everything else.
  echo "retention: inserting $PRUNE_ROWS expired records" >&2
  psql -q "$DB_URL" -c "INSERT INTO session_token_mints
      (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at, expires_at)
    SELECT gen_random_uuid(), 's-acme-1', 'acme', 'api_key', 'k-acme', 'pat',
           now() - interval '200 days' + i * interval '1 ms',
           now() - interval '200 days' + i * interval '1 ms' + interval '15 minutes'
    FROM generate_series(1, $PRUNE_ROWS) i" -c "VACUUM ANALYZE session_token_mints"
  old_rows() { psql -tA "$DB_URL" -c "SELECT count(*) FROM session_token_mints WHERE expires_at < now() - interval '90 days'"; }
  NEO_LISTEN=127.0.0.1:$((PORT + 2)) NEO_AUDIT_RETENTION_DAYS=90 \
    "$SERVER_BIN" serve > "$work/pruner.log" 2>&1 &
  pids+=($!)
  prune_started=$(date +%s.%N)
  rate=$(python3 -c "print(max(1, int($saturation * 50 / 100)))")
  mint prune_at_50pct "$KEY" '{"session_id":"s-acme-1","end_user":"pat"}' \
    -z "$DURATION" -c "$CONNECTIONS" -q "$rate" --latency-correction
  left_after_run=$(old_rows)
  for _ in $(seq 1 600); do [ "$(old_rows)" -eq 0 ] && break; sleep 1; done
  prune_seconds=$(python3 -c "import time; print(round(time.time() - $prune_started, 1))")
  left=$(old_rows)
  echo "{\"rows\": $PRUNE_ROWS, \"left_after_run\": $left_after_run, \"left\": $left, \"seconds_to_finish\": $prune_seconds}" > "$work/prune.json"
fi

if [ "$SOAK_MINTS" -gt 0 ]; then
  # Every session of the plan once (the session cache full), then the soak on the realistic mix.
  echo "soak: every session once, then $SOAK_MINTS realistic mints" >&2
  ./target/release/examples/loadgen --plan "$work/plan.json" --url "$mint_url" --sweep \
    --connections "$CONNECTIONS" > /dev/null
  loadgen soak --plan "$work/plan.json" --url "$mint_url" --requests "$SOAK_MINTS" --connections "$CONNECTIONS"
fi
rss_after=$(rss_kib)
recorded=$(psql -tA "$DB_URL" -c "SELECT count(*) FROM session_token_mints")

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 bench/report.py "$work" "$rss_idle" "$rss_after" "$recorded" "$(getconf CLK_TCK)" \
  "bench/results/$stamp.json"
