#!/usr/bin/env bash
# Per-mint costs for the capacity model (docs/scaling.md): service CPU, PostgreSQL CPU, WAL bytes
# (and records, full-page images, WAL fsyncs), rows and index entries written per table, heap and
# index bytes, Redis calls, each per mint of the realistic workload (examples/loadgen.rs, as
# bench/load.sh). CPU is CPU time from /proc (utime + stime), not wall clock, so other work on the
# machine inflates it less than it does req/s.
#
# By default it runs its own PostgreSQL (initdb in a temp dir, PostgreSQL's defaults with
# synchronous_commit = on) and its own Redis on spare ports, so that nothing else on the machine
# counts in the WAL, the backends' CPU or Redis's command counts; PRIVATE=0 uses
# PG_ADMIN/REDIS_URL instead (then the WAL and Redis figures include whatever else runs there).
#
#   bash bench/costs.sh
#   RUNS="realistic:closed realistic:1000 idempotent:closed" DURATION=20 bash bench/costs.sh
#   KEEP=1 bash bench/costs.sh
#
# A run is WORKLOAD:RATE: WORKLOAD realistic (load.sh's mix) or idempotent (the same, each request
# with its own Idempotency-Key, as a relay that retries sends); RATE closed (CONNECTIONS
# connections as fast as they go) or requests per second. Each run gets a fresh service process
# (warmed for 3 s, then 11 s idle so PostgreSQL's statistics are flushed before the first
# snapshot); the service is stopped after the run so its backends flush their statistics.
# Prints one table; writes bench/results/costs-<UTC time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-realistic:closed realistic:1000 idempotent:closed}
DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-32}
SESSIONS=${SESSIONS:-100000}
PRIVATE=${PRIVATE:-1}
PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
PORT=${PORT:-18380}
target=${CARGO_TARGET_DIR:-target}
SERVER_BIN=${SERVER_BIN:-$target/release/neo-sessions}
LOADGEN=$target/release/examples/loadgen
KEY=neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd
GLOBEX_KEY=neo_sk_test_Gx7Lb2Qm9Tz4Wc8Nv3Kd6Rp1
AUDIENCE=api://neo-sessions-bench
SCOPE=Sessions.Mint

command -v psql >/dev/null || { echo "psql is needed" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli is needed" >&2; exit 1; }
cargo build --release --locked --bin neo-sessions --example entra_fixture --example loadgen

work=$(mktemp -d)
pids=()
pgroot=""
pgdir=""
as_pg=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$pgdir" ]; then
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$pgroot"
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "raw outputs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

if [ "$PRIVATE" = 1 ]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pgbin/initdb" ] || { echo "initdb not found (install postgresql, or PRIVATE=0)" >&2; exit 1; }
  pgroot=$(mktemp -d /tmp/neo-costs-pg.XXXXXX)
  if [ "$(id -u)" = 0 ]; then chown postgres: "$pgroot"; as_pg=(runuser -u postgres --); else as_pg=(env); fi
  pgdir=$pgroot/data
  "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir" -A trust -U postgres >/dev/null
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir" -l "$pgroot/log" -w start \
    -o "-p $PG_PORT -k $pgroot -c listen_addresses=127.0.0.1 -c synchronous_commit=on" >/dev/null
  PG_ADMIN=postgres://postgres@127.0.0.1:$PG_PORT/postgres
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$work/redis.log" 2>&1 &
  pids+=($!)
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
else
  PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
  REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
fi
redis_host_port=${REDIS_URL#redis://}
redis_cli() { redis-cli -h "${redis_host_port%%:*}" -p "${redis_host_port##*:}" "$@"; }
DB_URL=${PG_ADMIN%/*}/neo_costs
psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS neo_costs WITH (FORCE)"

"$target/release/examples/entra_fixture" "$work" "$AUDIENCE" "$SCOPE" > "$work/entra-token"
python3 -m http.server $((PORT + 1)) --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
pids+=($!)
export NEO_DATABASE_URL=$DB_URL NEO_DATA_DIR=$work/data NEO_LISTEN=127.0.0.1:$PORT
export NEO_KEY_ENCRYPTION_KEY=${NEO_KEY_ENCRYPTION_KEY:-$(openssl rand -base64 32)}
export NEO_LOG_FORMAT=json NEO_LOG_FILTER=info
export NEO_ENTRA_AUDIENCE=$AUDIENCE NEO_ENTRA_REQUIRED_SCOPE=$SCOPE
export NEO_ENTRA_JWKS_URL=http://127.0.0.1:$((PORT + 1))/jwks.json
export NEO_RATE_LIMIT_PER_MINUTE=1000000000 NEO_RATE_LIMIT_BURST=1000000
export NEO_RATE_LIMIT_REDIS_URL=$REDIS_URL NEO_RATE_LIMIT_REDIS_PREFIX="neo-costs:$(date +%s):rl:"
export NEO_AUDIT_RETENTION_DAYS=0
"$SERVER_BIN" seed config/seed.example.json >/dev/null
psql -q "$DB_URL" -c "INSERT INTO chat_sessions (id, tenant_id)
  SELECT 'b-' || i, CASE WHEN i % 5 < 3 THEN 'acme' ELSE 'globex' END
  FROM generate_series(0, $SESSIONS - 1) i" -c "VACUUM ANALYZE"
python3 - "$SESSIONS" "$KEY" "$(cat "$work/entra-token")" "$GLOBEX_KEY" > "$work/plan.json" <<'PY'
import json, sys
n, acme_key, entra, globex_key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
print(json.dumps({
    "sessions": [[f"b-{i}", "acme" if i % 5 < 3 else "globex"] for i in range(n)],
    "credentials": {"acme": [acme_key, entra], "globex": [globex_key]},
    "agents": {"acme": [101, 102], "globex": [201]},
    "zipf_s": 1.1, "agents_share": 0.2,
}))
PY

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# PostgreSQL's CPU: the postmaster and every child (backends, WAL writer, checkpointer, ...) of
# the private server; with PRIVATE=0, the backends connected to neo_costs only.
pg_pids() {
  if [ "$PRIVATE" = 1 ]; then
    local pm; pm=$(head -1 "$pgdir/postmaster.pid"); echo "$pm"; pgrep -P "$pm" || true
  else
    psql -tA "$PG_ADMIN" -c "SELECT pid FROM pg_stat_activity WHERE datname = 'neo_costs' AND pid <> pg_backend_pid()"
  fi
}
pg_ticks() { for p in $(pg_pids); do ticks "$p"; done | awk '{s += $1} END {print s + 0}'; }
snapshot() { # snapshot FILE: the database's counters as JSON
  psql -tAq "$DB_URL" -c "SELECT json_build_object(
    'lsn', pg_current_wal_lsn()::text,
    'wal', (SELECT row_to_json(w) FROM (SELECT wal_records, wal_fpi, wal_bytes::bigint, wal_write, wal_sync FROM pg_stat_wal) w),
    'xact_commit', (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
    'tables', (SELECT json_object_agg(relname, json_build_object(
        'ins', n_tup_ins, 'upd', n_tup_upd, 'hot_upd', n_tup_hot_upd, 'del', n_tup_del,
        'reads', coalesce(idx_scan, 0) + seq_scan,
        'heap_bytes', pg_relation_size(relid), 'index_bytes', pg_indexes_size(relid),
        'indexes', (SELECT count(*) FROM pg_index i WHERE i.indrelid = relid AND i.indpred IS NULL),
        'partial_indexes', (SELECT count(*) FROM pg_index i WHERE i.indrelid = relid AND i.indpred IS NOT NULL)))
      FROM pg_stat_user_tables))" > "$1"
}
# Redis: calls per command, and its CPU seconds (used_cpu_sys/user, as cmdstat lines).
cmdstats() {
  { redis_cli info commandstats | tr -d '\r' | grep '^cmdstat_'
    redis_cli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {print "cpu_" $1 ":calls=" int($2 * 1000000)}'
  } > "$1"
}

for spec in $RUNS; do
  workload=${spec%%:*} rate=${spec##*:}
  name="$workload-$rate"
  extra=()
  [ "$workload" = idempotent ] && extra+=(--idempotency-keys "$name-$(date +%s)")
  [ "$rate" != closed ] && extra+=(--rate "$rate")
  "$SERVER_BIN" serve > "$work/server-$name.log" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/public-api/health" >/dev/null && break; sleep 0.1; done
  "$LOADGEN" --plan "$work/plan.json" --url "http://127.0.0.1:$PORT/public-api/sessions" \
    --duration 3 --connections "$CONNECTIONS" "${extra[@]}" > /dev/null
  sleep 11  # PostgreSQL backends flush their statistics within 10 s of going idle
  snapshot "$work/$name.before.json"; cmdstats "$work/$name.redis.before"
  s_before=$(ticks "$server"); p_before=$(pg_ticks)
  echo "$name: ${DURATION}s" >&2
  "$LOADGEN" --plan "$work/plan.json" --url "http://127.0.0.1:$PORT/public-api/sessions" \
    --duration "$DURATION" --connections "$CONNECTIONS" "${extra[@]}" > "$work/$name.json"
  echo $(( $(ticks "$server") - s_before )) > "$work/$name.service_ticks"
  echo $(( $(pg_ticks) - p_before )) > "$work/$name.pg_ticks"
  cmdstats "$work/$name.redis.after"
  kill -TERM "$server"; wait "$server" || true
  sleep 1
  snapshot "$work/$name.after.json"
done

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 - "$work" "$(getconf CLK_TCK)" "$PRIVATE" "bench/results/costs-$stamp.json" $RUNS <<'PY'
import json, os, sys
work, hz, private, out, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)
def redis(path):
    calls = {}
    for line in open(path):
        name, fields = line.strip().split(":", 1)
        name = name[len("cmdstat_"):] if name.startswith("cmdstat_") else name
        calls[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    return calls
results = {}
for spec in runs:
    name = spec.replace(":", "-")
    j = lambda suffix: json.load(open(os.path.join(work, name + suffix)))
    lg, before, after = j(".json"), j(".before.json"), j(".after.json")
    mints = int(lg["statusCodeDistribution"].get("200", 0))
    other = {k: v for k, v in lg["statusCodeDistribution"].items() if k != "200"}
    per = lambda x: round(x / mints, 3) if mints else None
    svc = int(open(os.path.join(work, name + ".service_ticks")).read()) / hz * 1e6
    pg = int(open(os.path.join(work, name + ".pg_ticks")).read()) / hz * 1e6
    wal_b, wal_a = before["wal"], after["wal"]
    tables = {}
    for t, a in (after["tables"] or {}).items():
        b = (before["tables"] or {}).get(t, {})
        d = {k: a[k] - b.get(k, 0) for k in ("ins", "upd", "hot_upd", "del", "reads", "heap_bytes", "index_bytes")}
        if not any(d[k] >= 0.01 * max(mints, 1) for k in ("ins", "upd", "del", "reads")):
            continue
        d["index_entries"] = (d["ins"] + d["upd"] - d["hot_upd"]) * a["indexes"]
        tables[t] = {"rows_inserted": per(d["ins"]), "rows_updated": per(d["upd"]),
                     "of_which_hot": per(d["hot_upd"]), "rows_deleted": per(d["del"]),
                     "index_entries": per(d["index_entries"]), "indexes": a["indexes"],
                     "partial_indexes": a["partial_indexes"], "reads": per(d["reads"]),
                     "heap_bytes": per(d["heap_bytes"]), "index_bytes": per(d["index_bytes"])}
        # Inserts write every full index, non-HOT updates too; partial indexes only when the
        # row matches (not counted: the revoked-rows index gets nothing from a mint).
    rb, ra = redis(os.path.join(work, name + ".redis.before")), redis(os.path.join(work, name + ".redis.after"))
    rcalls = {k: per(v - rb.get(k, 0)) for k, v in ra.items()
              if v - rb.get(k, 0) and k != "info" and not k.startswith("cpu_")}
    rcpu = per(sum(v - rb.get(k, 0) for k, v in ra.items() if k.startswith("cpu_")))
    results[spec] = {
        "mints": mints, "other_statuses": other, "errors": lg.get("errorDistribution", {}),
        "mints_per_s_wall": round(mints / lg["summary"]["total"], 1),
        "p99_ms": round((lg["latencyPercentiles"]["p99"] or 0) * 1000, 2),
        "service_cpu_us": per(svc), "postgres_cpu_us": per(pg),
        "wal_bytes": per(lsn(after["lsn"]) - lsn(before["lsn"])),
        "wal_records": per(wal_a["wal_records"] - wal_b["wal_records"]),
        "wal_full_page_images": per(wal_a["wal_fpi"] - wal_b["wal_fpi"]),
        "wal_fsyncs": per(wal_a["wal_sync"] - wal_b["wal_sync"]),
        "transactions": per(after["xact_commit"] - before["xact_commit"]),
        "tables": tables, "redis_calls": rcalls, "redis_cpu_us": rcpu,
    }
json.dump({"private_servers": private == "1", "runs": results}, open(out, "w"), indent=1)
cols = list(results)
rows = [
    ("mints (200) in the run", lambda r: f"{r['mints']:,}"),
    ("mints/s (wall clock, noisy)", lambda r: f"{r['mints_per_s_wall']:,}"),
    ("p99 ms", lambda r: r["p99_ms"]),
    ("service CPU µs / mint", lambda r: r["service_cpu_us"]),
    ("PostgreSQL CPU µs / mint", lambda r: r["postgres_cpu_us"]),
    ("WAL bytes / mint", lambda r: r["wal_bytes"]),
    ("WAL records / mint", lambda r: r["wal_records"]),
    ("WAL full-page images / mint", lambda r: r["wal_full_page_images"]),
    ("WAL fsyncs / mint", lambda r: r["wal_fsyncs"]),
    ("transactions / mint (reads included)", lambda r: r["transactions"]),
]
tables = sorted({t for r in results.values() for t in r["tables"]})
for t in tables:
    rows.append((f"{t}: index or table reads (scans)", lambda r, t=t: r["tables"].get(t, {}).get("reads", 0)))
    rows.append((f"{t}: rows ins/upd(hot)/del", lambda r, t=t: "/".join(str(r["tables"].get(t, {}).get(k, 0)) for k in ("rows_inserted", "rows_updated", "of_which_hot", "rows_deleted"))))
    rows.append((f"{t}: index entries written", lambda r, t=t: r["tables"].get(t, {}).get("index_entries", 0)))
    rows.append((f"{t}: heap / index bytes", lambda r, t=t: f"{r['tables'].get(t, {}).get('heap_bytes', 0)} / {r['tables'].get(t, {}).get('index_bytes', 0)}"))
cmds = sorted({c for r in results.values() for c in r["redis_calls"]})
for c in cmds:
    rows.append((f"Redis {c} calls / mint", lambda r, c=c: r["redis_calls"].get(c, 0)))
rows.append(("Redis CPU µs / mint", lambda r: r["redis_cpu_us"]))
w = max(len(r[0]) for r in rows)
print("\n" + "per mint".ljust(w) + " | " + " | ".join(cols))
for label, f in rows:
    print(label.ljust(w) + " | " + " | ".join(str(f(results[c])) for c in cols))
print(f"\nresults: {out}")
PY
