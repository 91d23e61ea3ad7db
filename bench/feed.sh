#!/usr/bin/env bash
# The revocation feed's poll cost with a million mint records: loads ROWS mint records (the last
# 24 h of mints, 15 min tokens, REVOKED_PERCENT of them revoked) into a fresh PostgreSQL database
# in one INSERT ... SELECT generate_series, starts the release binary on it, and measures
# GET /public-api/sessions/revocations with the platform key (every tenant's revocations):
#   - a first poll (no cursor: a verifier starting up; by time, from the start),
#   - a steady poll from a recent cursor (the `next_cursor` after paging to the end: what a
#     running verifier sends every interval),
# POLLS sequential requests each over one keep-alive connection (curl), p50/p99/max in ms, and
# EXPLAIN (ANALYZE, BUFFERS) of the feed's statement for both, to show which index serves it.
# Raw outputs go to bench/results/feed-<UTC time>.txt.
#
#   bash bench/feed.sh                          # ROWS=1000000 REVOKED_PERCENT=2 POLLS=500
#   ROWS=100000 bash bench/feed.sh              # a quicker look
#   SERVER_BIN=/path/to/neo-sessions bash bench/feed.sh   # another build (no cargo build then)
#
# Takes a few minutes on 2 cores (the load is about a minute of it).
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-1000000}
REVOKED_PERCENT=${REVOKED_PERCENT:-2}
POLLS=${POLLS:-500}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
DB_URL=${DB_URL:-postgres://postgres@127.0.0.1:5432/neo_feed_bench}
PORT=${PORT:-18190}
# The platform tenant's key of config/seed.example.json: it reads every tenant's revocations.
PLATFORM_KEY=neo_sk_test_Np5Vw8Xc2Bz7Mq4Lt9Rf3Hs6

command -v psql >/dev/null || { echo "psql is needed to load the benchmark database" >&2; exit 1; }
if [ -z "${SERVER_BIN:-}" ]; then
  cargo build --release --locked --bin neo-sessions
  SERVER_BIN=${CARGO_TARGET_DIR:-target}/release/neo-sessions
fi

work=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/feed-$stamp.txt
log() { echo "$@" | tee -a "$out"; }

psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS neo_feed_bench WITH (FORCE)"
export NEO_DATABASE_URL=$DB_URL NEO_DATA_DIR=$work/data NEO_LISTEN=127.0.0.1:$PORT
export NEO_KEY_ENCRYPTION_KEY=${NEO_KEY_ENCRYPTION_KEY:-$(openssl rand -base64 32)}
export NEO_LOG_FORMAT=json NEO_LOG_FILTER=warn NEO_AUDIT_RETENTION_DAYS=0
export NEO_RATE_LIMIT_PER_MINUTE=1000000000 NEO_RATE_LIMIT_BURST=1000000
"$SERVER_BIN" seed config/seed.example.json >/dev/null

# One statement: ROWS mints spread evenly over the last 24 h across the fixture's sessions, each
# token living 15 minutes; every (100 / REVOKED_PERCENT)th revoked a minute after it was minted.
# revoked_seq is what the revoking transaction's id would be (increasing with the revocation
# time, below the feed's horizon); the insert trigger that stamps it (with the loading
# transaction's one id) is off for the load only.
log "# feed poll cost: $ROWS mint records, $REVOKED_PERCENT% revoked ($(date -u +%FT%TZ))"
# Below the feed's horizon (the oldest transaction in flight), as every committed one is.
horizon_now=$(psql -qtA "$DB_URL" -c "SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)")
load_start=$(date +%s.%N)
psql -q -v ON_ERROR_STOP=1 "$DB_URL" <<SQL
ALTER TABLE session_token_mints DISABLE TRIGGER session_token_mints_revoked_seq_insert;
WITH s AS (
  SELECT id, tenant_id, row_number() OVER (ORDER BY id) - 1 AS i, count(*) OVER () AS n
  FROM chat_sessions
)
INSERT INTO session_token_mints (jti, session_id, tenant_id, minted_by_kind, minted_by,
    minted_by_tenant, end_user, issued_at, expires_at, revoked_at, revoked_by, revoked_seq)
SELECT gen_random_uuid(), s.id, s.tenant_id, 'api_key', 'k-bench', s.tenant_id,
       'user-' || (g % 5000), t.issued_at, t.issued_at + interval '15 minutes',
       CASE WHEN revoked THEN t.issued_at + interval '1 minute' END,
       CASE WHEN revoked THEN 'api_key:k-bench' END,
       CASE WHEN revoked THEN 1 + g::bigint * ($horizon_now - 2) / $ROWS END
FROM generate_series(1, $ROWS) g
CROSS JOIN LATERAL (
  SELECT now() - interval '24 hours' + g * (interval '24 hours' / $ROWS) AS issued_at,
         g % (100 / $REVOKED_PERCENT) = 0 AS revoked
) t
JOIN s ON s.i = g % s.n;
ALTER TABLE session_token_mints ENABLE TRIGGER session_token_mints_revoked_seq_insert;
VACUUM ANALYZE session_token_mints;
SQL
load_end=$(date +%s.%N)
log "$(psql -qtA "$DB_URL" -c "SELECT format('loaded %s rows (%s revoked, %s of them unexpired) in %s s; table %s, feed index %s',
    count(*), count(revoked_at), count(*) FILTER (WHERE revoked_at IS NOT NULL AND expires_at > now()),
    round(($load_end - $load_start)::numeric, 1),
    pg_size_pretty(pg_total_relation_size('session_token_mints')),
    pg_size_pretty(pg_relation_size('session_token_mints_revoked_seq_idx')))
  FROM session_token_mints")"

"$SERVER_BIN" serve > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/public-api/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/public-api/health" >/dev/null || { cat "$work/server.log"; exit 1; }

feed=http://127.0.0.1:$PORT/public-api/sessions/revocations
# Page to the end, as a verifier does at start: the last next_cursor is a recent cursor.
cursor=
pages=0
while :; do
  page=$(curl -sf -H "Authorization: Bearer $PLATFORM_KEY" "$feed${cursor:+?cursor=$cursor}")
  pages=$((pages + 1))
  read -r count more cursor < <(python3 -c 'import json, sys
d = json.load(sys.stdin)["data"]
print(len(d["revocations"]), d["has_more"], d["next_cursor"])' <<< "$page")
  [ "$more" = True ] || break
done
log "paging from the start to the end: $pages page(s), the last with $count revocation(s)"

# POLLS requests over one connection; curl prints each one's time.
poll() {
  local url=$1 label=$2
  for _ in $(seq 1 "$POLLS"); do
    printf 'url = "%s"\noutput = /dev/null\n' "$url"
  done > "$work/curl.cfg"
  curl -s -H "Authorization: Bearer $PLATFORM_KEY" -K "$work/curl.cfg" \
    -w '%{http_code} %{time_total}\n' > "$work/times.txt"
  python3 - "$label" "$work/times.txt" <<'PY' | tee -a "$out"
import sys
label, path = sys.argv[1], sys.argv[2]
rows = [line.split() for line in open(path)]
bad = sum(1 for code, _ in rows if code != "200")
ms = sorted(float(t) * 1000 for _, t in rows)
q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
print(f"{label}: {len(ms)} polls, p50 {q(0.50):.2f} ms, p99 {q(0.99):.2f} ms, max {ms[-1]:.2f} ms, non-200 {bad}")
PY
}
poll "$feed" "first poll (no cursor)"
poll "$feed?cursor=$cursor" "steady poll (recent cursor)"

# The feed's statement as the store sends it (src/store/queries.rs, revocations_after), prepared
# as sqlx prepares it and run six times before it is explained: from the sixth execution
# PostgreSQL may switch to a generic plan, which the server's connections then keep. The
# platform key's parameters: by time from the start (a first poll), then by position after the
# last revocation (a steady poll).
explain() {
  local label=$1 params=$2 order=$3
  log ""
  log "## EXPLAIN (ANALYZE, BUFFERS), 7th execution of the prepared statement: $label"
  psql -qtA "$DB_URL" <<SQL | tee -a "$out"
PREPARE feed(bigint, bigint, uuid, timestamptz, uuid, timestamptz, text, bigint) AS
  SELECT CAST(jti AS TEXT) AS jti, expires_at, revoked_at, revoked_seq
  FROM session_token_mints
  WHERE revoked_seq IS NOT NULL AND revoked_seq < \$1 AND revoked_at IS NOT NULL
    AND (\$2 IS NULL OR revoked_seq > \$2 OR (revoked_seq = \$2 AND jti > \$3))
    AND (\$4 IS NULL OR revoked_at > \$4 OR (revoked_at = \$4 AND jti > \$5))
    AND expires_at > COALESCE(\$6, CURRENT_TIMESTAMP)
    AND (\$7 IS NULL OR tenant_id = \$7)
  ORDER BY $order LIMIT \$8;
\o /dev/null
EXECUTE feed($params); EXECUTE feed($params); EXECUTE feed($params);
EXECUTE feed($params); EXECUTE feed($params); EXECUTE feed($params);
\o
EXPLAIN (ANALYZE, BUFFERS) EXECUTE feed($params);
SQL
}
horizon=$(psql -qtA "$DB_URL" -c "SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)")
explain "first poll (by time, from the start)" \
  "$horizon, NULL, NULL, '1970-01-01T00:00:00Z', NULL, NULL, NULL, 1001" "revoked_at, jti"
last=$(psql -qtA "$DB_URL" -c "SELECT revoked_seq || ', ''' || jti || '''' FROM session_token_mints
  WHERE revoked_seq IS NOT NULL ORDER BY revoked_seq DESC, jti DESC LIMIT 1")
explain "steady poll (by position, after the last revocation)" \
  "$horizon, $last, NULL, NULL, NULL, NULL, 1001" "revoked_seq, jti"
echo "raw output: $out" >&2
