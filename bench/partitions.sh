#!/usr/bin/env bash
# The mint records by day (issue 24): does a month of records cost the hot paths anything, and
# what does retention by partition cost against deleting the same rows?
#
#   bash bench/partitions.sh            # ROWS=10000000 DAYS=30 DROP_ROWS=1000000 DURATION=10s
#   ROWS=1000000 bash bench/partitions.sh               # a quicker look
#   SERVER_BIN=/path/to/neo-sessions bash bench/partitions.sh   # no cargo build then
#   bash bench/partitions.sh migrate    # only: migration 13 on MIGRATE_ROWS (1,000,000) records
#
# 1. Two databases with the example fixture: `neo_part_empty`, and `neo_part_full` with ROWS mint
#    records spread over the DAYS days before today, one partition a day (made as the service
#    makes them), loaded in SQL (generate_series, UUIDv7 jtis whose time is issued_at, 2% revoked,
#    15-minute tokens: all expired, as a month of history is).
# 2. On each, in turn, twice (empty, full, empty, full): the API-key mint (DURATION, 32
#    connections), GET of one record by its jti, and a revocation feed poll (the tenant's key, no
#    cursor, 100 live revoked tokens in both), each with oha: req/s, p50, p99.
# 3. Retention: DROP_ROWS records in a day partition 120 days old, removed while the first server
#    mints at half its saturation (--latency-correction): once by a replica starting with a 90-day
#    retention (it drops the partition: detach + drop), once by one DELETE of the same rows (a
#    new copy of them). Time taken, and the mint p50/p99 meanwhile against the same rate without.
# Everything (oha, the service, PostgreSQL) shares this machine. Results are printed and written
# to bench/results/partitions-<UTC time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-10000000}
DAYS=${DAYS:-30}
DROP_ROWS=${DROP_ROWS:-1000000}
MIGRATE_ROWS=${MIGRATE_ROWS:-1000000}
DURATION=${DURATION:-10}  # seconds
CONNECTIONS=${CONNECTIONS:-32}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
PORT=${PORT:-18170}
KEY=neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd

# oha as bench/load.sh uses it; without it, ApacheBench (`ab`, Debian's apache2-utils): then the
# latencies are whole milliseconds and the runs during retention are closed-loop (4 connections)
# instead of a fixed rate.
if [ -z "${1:-}" ] && ! command -v oha >/dev/null && ! command -v ab >/dev/null; then
  cargo install oha --locked
fi
command -v psql >/dev/null || { echo "psql is needed" >&2; exit 1; }
if [ -z "${SERVER_BIN:-}" ]; then
  cargo build --release --locked --bin neo-sessions
  SERVER_BIN=${CARGO_TARGET_DIR:-target}/release/neo-sessions
fi
SERVER_BIN=$(realpath "$SERVER_BIN")

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/partitions-$stamp.txt
log() { echo "$@" | tee -a "$out"; }
now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 2))"; }

export NEO_KEY_ENCRYPTION_KEY=${NEO_KEY_ENCRYPTION_KEY:-$(openssl rand -base64 32)}
export NEO_LOG_FORMAT=json NEO_LOG_FILTER=warn NEO_AUDIT_RETENTION_DAYS=0
export NEO_RATE_LIMIT_PER_MINUTE=1000000000 NEO_RATE_LIMIT_BURST=1000000

# A UUIDv7 whose time is `t` (to the second, as the service makes them) and 74 random bits.
UUID7="CREATE OR REPLACE FUNCTION pg_temp.uuid7(t timestamptz) RETURNS uuid LANGUAGE sql AS \$\$
  SELECT CAST(lpad(to_hex(CAST(floor(extract(epoch FROM t)) AS bigint) * 1000), 12, '0') || '7'
         || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15) AS uuid)
\$\$;"

fresh() {  # fresh DBNAME: a new database, migrated, with the example fixture
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
  NEO_DATABASE_URL=$PG/$1 NEO_DATA_DIR=$work/data-$1 "$SERVER_BIN" seed config/seed.example.json >/dev/null
}

# load DBNAME ROWS FIRST_DAY_AGO NDAYS: ROWS records evenly over NDAYS days from FIRST_DAY_AGO days
# ago, a partition a day (as the service makes them).
load() {
  local db=$1 rows=$2 first=$3 ndays=$4
  psql -q -v ON_ERROR_STOP=1 "$PG/$db" <<SQL
SET synchronous_commit = off;
$UUID7
DO \$\$
DECLARE d date;
BEGIN
  FOR i IN 0..($ndays - 1) LOOP
    d := (now() AT TIME ZONE 'UTC')::date - $first + i;
    EXECUTE format('CREATE TABLE IF NOT EXISTS session_token_mints_p%s PARTITION OF session_token_mints
                    FOR VALUES FROM (%L) TO (%L)', to_char(d, 'YYYYMMDD'),
                   d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
  END LOOP;
END \$\$;
ALTER TABLE session_token_mints DISABLE TRIGGER session_token_mints_revoked_seq_insert;
INSERT INTO session_token_mints (jti, session_id, tenant_id, minted_by_kind, minted_by,
    minted_by_tenant, end_user, issued_at, expires_at, revoked_at, revoked_by, revoked_seq,
    allowed_agent_ids)
SELECT pg_temp.uuid7(t.issued_at), 's-acme-1', 'acme', 'api_key', 'k-acme', 'acme',
       'user-' || (g % 5000), t.issued_at, t.issued_at + interval '15 minutes',
       CASE WHEN g % 50 = 0 THEN t.issued_at + interval '1 minute' END,
       CASE WHEN g % 50 = 0 THEN 'k-acme' END,
       CASE WHEN g % 50 = 0 THEN 1 END, ','
FROM generate_series(0, $rows - 1) g
CROSS JOIN LATERAL (
  SELECT date_trunc('second', date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
         - interval '$first days' + g * (interval '$ndays days' / $rows)) AS issued_at
) t;
ALTER TABLE session_token_mints ENABLE TRIGGER session_token_mints_revoked_seq_insert;
ANALYZE session_token_mints;
SQL
}

serve() {  # serve DBNAME PORT [env...]: starts the service, waits until it answers
  local db=$1 port=$2; shift 2
  env NEO_DATABASE_URL=$PG/$db NEO_DATA_DIR=$work/data-$db NEO_LISTEN=127.0.0.1:$port "$@" \
    "$SERVER_BIN" serve >> "$work/server-$db.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/public-api/health" >/dev/null && return; sleep 0.05; done
  echo "the server on $db did not start" >&2; exit 1
}

# load_line LABEL SECONDS CONNECTIONS URL [JSON_BODY]: "label req/s p50 p99 non2xx" (ms), by oha,
# else by ab. A body makes it a POST.
load_line() {
  local label=$1 secs=$2 conns=$3 url=$4 body=${5:-}
  if command -v oha >/dev/null; then
    local post=()
    if [ -n "$body" ]; then post=(-m POST -H 'Content-Type: application/json' -d "$body"); fi
    oha --no-tui --output-format json -z "${secs}s" -c "$conns" "${post[@]}" \
      -H "Authorization: Bearer $KEY" "$url" | python3 -c "
import json, sys
d = json.load(sys.stdin)
p = d['latencyPercentiles']
bad = sum(v for k, v in d['statusCodeDistribution'].items() if not k.startswith('2'))
print(f\"$label req/s={d['summary']['requestsPerSec']:.0f} p50={p['p50']*1000:.2f}ms p99={p['p99']*1000:.2f}ms non2xx={bad}\")"
  else
    local post=()
    if [ -n "$body" ]; then echo "$body" > "$work/body.json"; post=(-p "$work/body.json" -T application/json); fi
    ab -k -q -t "$secs" -n 100000000 -c "$conns" "${post[@]}" -H "Authorization: Bearer $KEY" "$url" \
      2>/dev/null | python3 -c "
import re, sys
t = sys.stdin.read()
rps = float(re.search(r'Requests per second:\s+([\d.]+)', t).group(1))
pct = dict(re.findall(r'^\s+(\d+)%\s+(\d+)', t, re.M))
bad = re.search(r'Non-2xx responses:\s+(\d+)', t)
print(f\"$label req/s={rps:.0f} p50={pct['50']}ms p99={pct['99']}ms non2xx={bad.group(1) if bad else 0} (ab)\")"
  fi
}

mint_body='{"session_id":"s-acme-1","end_user":"pat"}'
measure() {  # measure DBNAME PORT RUN
  local db=$1 port=$2 run=$3 base=http://127.0.0.1:$2/public-api/sessions
  log "$(load_line "$db run$run mint" "$DURATION" "$CONNECTIONS" "$base" "$mint_body")"
  local jti
  jti=$(curl -s "$base" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$mint_body" \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['data']['jti'])")
  log "$(load_line "$db run$run get-one" "$DURATION" "$CONNECTIONS" "$base/$jti")"
  log "$(load_line "$db run$run feed-poll" "$DURATION" 8 "$base/revocations")"
}

revoke_live() {  # revoke_live DBNAME PORT N: mints and revokes N tokens (the feed's live rows)
  local base=http://127.0.0.1:$2/public-api/sessions
  for _ in $(seq 1 "$3"); do
    jti=$(curl -s "$base" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$mint_body" \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['data']['jti'])")
    curl -s -o /dev/null -X DELETE "$base/$jti" -H "Authorization: Bearer $KEY"
  done
}

if [ "${1:-}" = migrate ]; then
  # Migration 13 on MIGRATE_ROWS records of a database at migration 11 (v4 jtis, 2% revoked).
  db=neo_part_migrate
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  for f in migrations/postgres/*.sql; do
    case $f in *20261202000013*) break ;; esac
    psql -q -v ON_ERROR_STOP=1 "$PG/$db" -f "$f"
  done
  psql -q -v ON_ERROR_STOP=1 "$PG/$db" <<SQL
INSERT INTO tenants (id, name) VALUES ('acme', 'Acme');
INSERT INTO chat_sessions (id, tenant_id) VALUES ('s-acme-1', 'acme');
INSERT INTO session_token_mints (jti, session_id, tenant_id, minted_by_kind, minted_by, issued_at,
    expires_at, revoked_at)
SELECT gen_random_uuid(), 's-acme-1', 'acme', 'api_key', 'k-acme', now() - g * interval '1 s',
       now() - g * interval '1 s' + interval '15 minutes',
       CASE WHEN g % 50 = 0 THEN now() END
FROM generate_series(1, $MIGRATE_ROWS) g;
VACUUM ANALYZE session_token_mints;
CHECKPOINT;
SQL
  started=$(now)
  psql -q -v ON_ERROR_STOP=1 "$PG/$db" -f migrations/postgres/20261202000013_mint_partitions.sql
  log "migration 13 on $MIGRATE_ROWS records: $(since "$started") s"
  psql -q "$PG/postgres" -c "DROP DATABASE $db WITH (FORCE)"
  exit 0
fi

log "# partitions: $ROWS records over $DAYS days; $(date -u +%FT%TZ); $("$SERVER_BIN" --version 2>/dev/null || true)"
fresh neo_part_empty
# `bash bench/partitions.sh load` loads the full database only (e.g. while the release build
# runs); REUSE_FULL=1 then measures on it as it is.
if [ "${REUSE_FULL:-0}" != 1 ]; then
  fresh neo_part_full
  started=$(now)
  load neo_part_full "$ROWS" "$DAYS" "$DAYS"
  log "loaded $ROWS records in $(since "$started") s; $(psql -tA "$PG/neo_part_full" -c "SELECT count(*) FROM pg_inherits WHERE inhparent = 'session_token_mints'::regclass") partitions"
  psql -q "$PG/neo_part_full" -c "VACUUM ANALYZE session_token_mints" -c CHECKPOINT
fi
if [ "${1:-}" = load ]; then exit 0; fi

for db in neo_part_empty neo_part_full; do
  serve $db $PORT
  revoke_live $db $PORT 100
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done
for run in 1 2; do
  for db in neo_part_empty neo_part_full; do
    serve $db $PORT
    measure $db $PORT $run
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
done

# Retention: a day of DROP_ROWS records 120 days old, past a 90-day retention.
serve neo_part_full $PORT
base=http://127.0.0.1:$PORT/public-api/sessions
if command -v oha >/dev/null; then
  saturation=$(oha --no-tui --output-format json -z 5s -c "$CONNECTIONS" -m POST -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d "$mint_body" "$base" \
    | python3 -c "import json,sys; print(int(json.load(sys.stdin)['summary']['requestsPerSec']))")
  rate=$((saturation / 2))
  log "retention: mint saturation $saturation/s, measured at $rate/s"
  at_half() { oha --no-tui --output-format json -z "${DURATION}s" -c "$CONNECTIONS" -q "$rate" --latency-correction \
    -m POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$mint_body" "$base" \
    | python3 -c "
import json, sys
d = json.load(sys.stdin); p = d['latencyPercentiles']
print(f\"$1 req/s={d['summary']['requestsPerSec']:.0f} p50={p['p50']*1000:.2f}ms p99={p['p99']*1000:.2f}ms\")"; }
else
  log "retention: closed loop, 4 connections (no oha)"
  at_half() { load_line "$1" "$DURATION" 4 "$base" "$mint_body"; }
fi
old_day=$(psql -tA "$PG/neo_part_full" -c "SELECT to_char((now() AT TIME ZONE 'UTC')::date - 120, 'YYYYMMDD')")
log "$(at_half "mint at 50%, nothing else")"

load neo_part_full "$DROP_ROWS" 120 1
psql -q "$PG/neo_part_full" -c "VACUUM ANALYZE session_token_mints_p$old_day" -c CHECKPOINT
at_half "mint at 50%, during the partition drop" > "$work/drop.txt" &
oha_pid=$!
sleep 2
started=$(now)
serve neo_part_full $((PORT + 1)) NEO_AUDIT_RETENTION_DAYS=90
until [ "$(psql -tA "$PG/neo_part_full" -c "SELECT to_regclass('session_token_mints_p$old_day') IS NULL")" = t ]; do sleep 0.05; done
dropped_in=$(since "$started")
wait $oha_pid
log "$(cat "$work/drop.txt")"
log "partition of $DROP_ROWS records dropped by a starting replica in $dropped_in s (start-up included)"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

load neo_part_full "$DROP_ROWS" 120 1
psql -q "$PG/neo_part_full" -c "VACUUM ANALYZE session_token_mints_p$old_day" -c CHECKPOINT
at_half "mint at 50%, during the DELETE" > "$work/delete.txt" &
oha_pid=$!
sleep 2
started=$(now)
psql -q "$PG/neo_part_full" -c "DELETE FROM session_token_mints
  WHERE issued_at >= (now() AT TIME ZONE 'UTC')::date - 120 AND issued_at < (now() AT TIME ZONE 'UTC')::date - 119"
deleted_in=$(since "$started")
wait $oha_pid
log "$(cat "$work/delete.txt")"
log "the same $DROP_ROWS records deleted by one DELETE in $deleted_in s"
log "results: $out"
