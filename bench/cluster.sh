#!/usr/bin/env bash
# Replicas behind a real load balancer: starts REPLICAS (2) replicas of the release binary on one
# PostgreSQL (a fresh database of their own) and one Redis (a key prefix of their own) behind
# HAProxy (Debian's package; installed when missing), which adds X-Forwarded-For and health-checks
# each replica on its readiness route; the replicas trust it (server.trusted_proxies). Then:
#
#   1. cross-replica checks (bench/cluster.py checks): the client address through the proxy, an
#      Idempotency-Key retry on another replica, a tenant's rate limit across replicas, a token
#      and an API key revoked on one replica and refused on the other;
#   2. the realistic workload (examples/loadgen.rs, as bench/load.sh) through HAProxy for
#      DURATION seconds, with a relay (keyed mints, retried with the same key) alongside; at
#      STOP_AT seconds the last replica gets SIGTERM (STOP_SIGNAL=KILL: SIGKILL), and DOWN_FOR
#      seconds later it is started again;
#   3. every 200 has its record (answers vs session_token_mints), what failed while the replica
#      was gone, HAProxy's retries and redispatches.
#
#   bash bench/cluster.sh
#   REPLICAS=3 DURATION=40 STOP_AT=10 DOWN_FOR=15 STOP_SIGNAL=KILL bash bench/cluster.sh
#   REDIS=0 bash bench/cluster.sh    # limits in each replica's memory: the limits check must fail
#   TRUSTED_PROXIES= bash bench/cluster.sh  # the proxy not trusted: the client-address checks must fail
#   RATE=2000 bash bench/cluster.sh  # the main run at a fixed rate instead of closed loop
#   KEEP=1 bash bench/cluster.sh     # keep the logs and raw outputs (path printed)
#
# Prints a summary and writes bench/results/cluster-<UTC time>.json. Exits 1 when a check failed.
# Everything (HAProxy, the replicas, the load generator, PostgreSQL, Redis) shares this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICAS=${REPLICAS:-2}
DURATION=${DURATION:-30}
STOP_AT=${STOP_AT:-10}
DOWN_FOR=${DOWN_FOR:-8}
STOP_SIGNAL=${STOP_SIGNAL:-TERM}
CONNECTIONS=${CONNECTIONS:-32}
RELAY_WORKERS=${RELAY_WORKERS:-8}
RATE=${RATE:-}
SESSIONS=${SESSIONS:-100000}
REDIS=${REDIS:-1}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PG_ADMIN=${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
DB_NAME=${DB_NAME:-neo_cluster}
PORT=${PORT:-18280}          # HAProxy; the replicas listen on PORT+1 ..., the JWKS on PORT+90
target=${CARGO_TARGET_DIR:-target}
SERVER_BIN=${SERVER_BIN:-$target/release/neo-sessions}
LOADGEN=$target/release/examples/loadgen
KEY=neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd
GLOBEX_KEY=neo_sk_test_Gx7Lb2Qm9Tz4Wc8Nv3Kd6Rp1
AUDIENCE=api://neo-sessions-bench
SCOPE=Sessions.Mint
# HAProxy connects to the replicas from this address, and only it is trusted for X-Forwarded-For.
PROXY_ADDR=127.0.0.2

command -v haproxy >/dev/null || apt-get install -y haproxy
command -v psql >/dev/null || { echo "psql is needed to reset the benchmark database" >&2; exit 1; }
command -v redis-cli >/dev/null || [ "$REDIS" = 0 ] || { echo "redis-cli is needed (or REDIS=0)" >&2; exit 1; }
cargo build --release --locked --bin neo-sessions --example entra_fixture --example loadgen

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "raw outputs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)

# A fresh database; the example fixture plus three tenants of the checks: "checks" (no limit),
# "limited" (60/min, burst 10), "relay" (the relay driver's mints).
psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB_NAME
python3 - config/seed.example.json > "$work/seed.json" <<'PY'
import json, sys
seed = json.load(open(sys.argv[1]))
for tenant, key, limit in [("checks", "ChecksChecksChecksChecksChecks12", None),
                           ("limited", "LimitedLimitedLimitedLimitedLim1", {"per_minute": 60, "burst": 10}),
                           ("relay", "RelayRelayRelayRelayRelayRelay12", None)]:
    t = {"id": tenant, "name": tenant.title()}
    if limit:
        t["rate_limit"] = limit
    seed["tenants"].append(t)
    seed["sessions"].append({"id": f"s-{tenant}-1", "tenant_id": tenant})
    seed["api_keys"].append({"id": f"k-{tenant}", "tenant_id": tenant, "name": tenant,
                             "secret": f"neo_sk_test_{key}"})
print(json.dumps(seed))
PY
"$target/release/examples/entra_fixture" "$work" "$AUDIENCE" "$SCOPE" > "$work/entra-token"
python3 -m http.server $((PORT + 90)) --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
pids+=($!)

export NEO_DATABASE_URL=$DATABASE_URL
export NEO_KEY_ENCRYPTION_KEY=${NEO_KEY_ENCRYPTION_KEY:-$(openssl rand -base64 32)}
export NEO_LOG_FORMAT=json NEO_LOG_FILTER=info
export NEO_ENTRA_AUDIENCE=$AUDIENCE NEO_ENTRA_REQUIRED_SCOPE=$SCOPE
export NEO_ENTRA_JWKS_URL=http://127.0.0.1:$((PORT + 90))/jwks.json
# Throughput runs measure minting, not refusals: the default quota is huge; the "limited"
# tenant's own quota is what the limits check exceeds.
export NEO_RATE_LIMIT_PER_MINUTE=1000000000 NEO_RATE_LIMIT_BURST=1000000
export NEO_AUDIT_RETENTION_DAYS=0
# Behind the proxy: its address is trusted for X-Forwarded-For, and every connection comes
# from it, so no per-address connection cap.
export NEO_SERVER_MAX_CONNECTIONS_PER_ADDRESS=0
TRUSTED_PROXIES=${TRUSTED_PROXIES-$PROXY_ADDR}
[ -n "$TRUSTED_PROXIES" ] && export NEO_TRUSTED_PROXIES=$TRUSTED_PROXIES
if [ "$REDIS" != 0 ]; then
  export NEO_RATE_LIMIT_REDIS_URL=$REDIS_URL NEO_RATE_LIMIT_REDIS_PREFIX="neo-cluster:$stamp:rl:"
fi
export SERVER_BIN
"$SERVER_BIN" seed "$work/seed.json" >/dev/null
psql -q "$DATABASE_URL" -c "INSERT INTO chat_sessions (id, tenant_id)
  SELECT 'b-' || i, CASE WHEN i % 5 < 3 THEN 'acme' ELSE 'globex' END
  FROM generate_series(0, $SESSIONS - 1) i" -c "ANALYZE chat_sessions"

declare -A replica_pid
start_replica() { # start_replica N: serves on PORT+N, logs to r<N>.log (appended across restarts)
  local n=$1
  NEO_LISTEN=127.0.0.1:$((PORT + n)) NEO_DATA_DIR=$work/data-$n \
    "$SERVER_BIN" serve >> "$work/r$n.log" 2>&1 &
  replica_pid[$n]=$!
  pids+=($!)
}
wait_ready() { # wait_ready URL: its readiness route answers 200 (10 s at most)
  for _ in $(seq 1 100); do curl -sf "$1/public-api/health" >/dev/null && return 0; sleep 0.1; done
  echo "$1 never became ready" >&2; return 1
}
replicas=()
logs=()
for n in $(seq 1 "$REPLICAS"); do
  start_replica "$n"
  replicas+=("http://127.0.0.1:$((PORT + n))")
  logs+=("$work/r$n.log")
done
for r in "${replicas[@]}"; do wait_ready "$r" || { tail -20 "$work"/r*.log; exit 1; }; done

# HAProxy in the foreground, its config generated here. Retries: a connection refused (a replica
# gone) is retried on another replica for every request; a request sent and never answered
# (empty response: the replica died mid-request) only when it carries an Idempotency-Key, the
# one POST this service makes safe to replay.
servers=""
for n in $(seq 1 "$REPLICAS"); do
  servers+="    server r$n 127.0.0.1:$((PORT + n)) check"$'\n'
done
cat > "$work/haproxy.cfg" <<CFG
global
    maxconn 4096
    nbthread 1
    stats socket $work/haproxy.sock mode 600 level admin
    log stdout format raw local0 notice

defaults
    mode http
    log global
    option dontlog-normal
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout http-keep-alive 30s

frontend neo
    bind 127.0.0.1:$PORT
    option forwardfor
    default_backend replicas

backend replicas
    balance roundrobin
    source $PROXY_ADDR
    option httpchk GET /public-api/health
    http-check expect status 200
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    http-request disable-l7-retry if METH_POST !{ req.hdr(idempotency-key) -m found }
    http-response set-header X-Neo-Replica %s
$servers
CFG
haproxy -c -q -f "$work/haproxy.cfg"
# Its output with the time of each line (for when it saw the replica go and come back).
haproxy -db -f "$work/haproxy.cfg" > >(python3 -uc 'import sys, time
for line in sys.stdin: print(f"{time.time():.3f} {line}", end="")' > "$work/haproxy.log") 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")
lb="http://127.0.0.1:$PORT"
for _ in $(seq 1 50); do curl -sf "$lb/public-api/health" >/dev/null && break; sleep 0.1; done
sleep 1.5 # every server through its first health checks

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
stat_csv() { python3 - "$work/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
print(out.decode())
PY
}

echo "checks across $REPLICAS replicas" >&2
checks_ok=1
python3 bench/cluster.py checks --lb "$lb" --replicas "$(IFS=,; echo "${replicas[*]}")" \
  --logs "$(IFS=,; echo "${logs[*]}")" --out "$work/checks.json" || checks_ok=0

# The realistic workload's plan (as bench/load.sh).
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
echo "warm-up: 3 s through HAProxy" >&2
"$LOADGEN" --plan "$work/plan.json" --url "$lb/public-api/sessions" --duration 3 \
  --connections "$CONNECTIONS" > "$work/warmup.json"

last=$REPLICAS
echo "main run: ${DURATION}s, $CONNECTIONS connections${RATE:+ at $RATE/s}; replica r$last gets SIG$STOP_SIGNAL at ${STOP_AT}s, back at $((STOP_AT + DOWN_FOR))s" >&2
stat_csv > "$work/haproxy-stat-before.csv"
r1_before=$(ticks "${replica_pid[1]}"); lb_before=$(ticks "$haproxy_pid")
python3 bench/cluster.py relay --lb "$lb" --seconds "$DURATION" --workers "$RELAY_WORKERS" \
  --out "$work/relay.json" &
relay_pid=$!
"$LOADGEN" --plan "$work/plan.json" --url "$lb/public-api/sessions" --duration "$DURATION" \
  --connections "$CONNECTIONS" ${RATE:+--rate "$RATE"} > "$work/main.json" &
loadgen_pid=$!
run_started=$(date +%s.%N)
echo "$run_started" > "$work/run_started"
# Seconds since the run started (bash and awk only: a Python start-up takes a while here).
since() { awk -v t0="$run_started" -v now="$(date +%s.%N)" 'BEGIN {printf "%.3f", now - t0}'; }
sleep "$STOP_AT"
stopped_pid=${replica_pid[$last]}
kill -s "$STOP_SIGNAL" "$stopped_pid"
stop_at=$(since)
exit_code=0; wait "$stopped_pid" || exit_code=$?
exited_at=$(since)
echo "  r$last: SIG$STOP_SIGNAL at ${stop_at}s, exited ($exit_code) at ${exited_at}s" >&2
sleep "$DOWN_FOR"
start_replica "$last"
started_at=$(since)
wait_ready "${replicas[$((last - 1))]}"
ready_at=$(since)
echo "  r$last: started at ${started_at}s, ready at ${ready_at}s" >&2
wait "$loadgen_pid"
r1_ticks=$(( $(ticks "${replica_pid[1]}") - r1_before ))
lb_ticks=$(( $(ticks "$haproxy_pid") - lb_before ))
wait "$relay_pid"
stat_csv > "$work/haproxy-stat.csv"

python3 bench/cluster.py records --out "$work/records.json" --loadgen "$work/warmup.json" \
  --loadgen "$work/main.json" --relay "$work/relay.json" --stop "$stop_at" --back "$ready_at" \
  --run-started "$run_started" || true

mkdir -p bench/results
python3 - "$work" "$stamp" "$REPLICAS" "$STOP_SIGNAL" "$stop_at" "$exited_at" "$started_at" \
  "$ready_at" "$exit_code" "$r1_ticks" "$lb_ticks" "$(getconf CLK_TCK)" \
  "$checks_ok" "${RATE:-closed loop}" "$CONNECTIONS" "$DURATION" "bench/results/cluster-$stamp.json" <<'PY'
import csv, json, os, sys
(work, stamp, replicas, signal, stop_at, exited_at, started_at, ready_at, exit_code, r1_ticks,
 lb_ticks, hz, checks_ok, rate, connections, duration, out) = sys.argv[1:]
stop_at, exited_at, started_at, ready_at = map(float, (stop_at, exited_at, started_at, ready_at))
hz = int(hz)
load = lambda name: json.load(open(os.path.join(work, name)))
main, checks, records = load("main.json"), load("checks.json"), load("records.json")
t0 = float(open(os.path.join(work, "run_started")).read())
statuses = main["statusCodeDistribution"]
errors = main.get("errorDistribution", {})
ok = int(statuses.get("200", 0))
total = sum(int(v) for v in statuses.values()) + sum(int(v) for v in errors.values())
seconds = main["summary"]["total"]
# Failures by second of the schedule, and those in the seconds the replica was gone.
by_second = main.get("latencyPercentilesBySecond", [])
def failed(outcomes):
    return {k: v for k, v in outcomes.items() if k != "200"}
failures_by_second = {i: failed(s.get("outcomes", {})) for i, s in enumerate(by_second) if failed(s.get("outcomes", {}))}
# loadgen's seconds count from its own start (after it read its plan), not the run's.
offset = main["summary"].get("startedUnix", t0) - t0
gone = range(int(stop_at - offset), int(ready_at - offset) + 1)
failed_while_gone = sum(sum(v.values()) for i, v in failures_by_second.items() if i in gone)
def servers(name):
    rows = csv.DictReader(open(os.path.join(work, name)).read().lstrip("# ").splitlines())
    return {row["svname"]: {k: int(row.get(k) or 0) for k in ("stot", "wretr", "wredis", "econ", "eresp", "hrsp_5xx", "chkdown", "downtime")}
            for row in rows if row.get("pxname") == "replicas"}
# HAProxy's counters over the main run (the checks and the warm-up taken out).
after, before = servers("haproxy-stat.csv"), servers("haproxy-stat-before.csv")
stat = {s: {k: v - before.get(s, {}).get(k, 0) for k, v in c.items()} for s, c in after.items()}
# HAProxy writes each state change twice (stderr and the log): keep the log's, its time made
# seconds into the run.
lb_log = []
for l in open(os.path.join(work, "haproxy.log")):
    at, _, text = l.partition(" ")
    if ("is DOWN" in text or "is UP" in text) and not text.startswith("["):
        lb_log.append(f"{float(at) - t0:.2f} s: {text.split(', reason')[0].strip()}: {text.split('reason: ')[-1].split(',')[0]}")
mints = ok / seconds
result = {
    "stamp": stamp, "replicas": int(replicas), "connections": int(connections), "rate": rate,
    "duration_s": float(duration),
    "stop": {"signal": signal, "at_s": stop_at, "exited_at_s": exited_at, "exit_code": int(exit_code),
             "restarted_at_s": started_at, "ready_at_s": ready_at},
    "main": {"mints_per_s": round(mints, 1), "requests": total, "ok_200": ok,
             "statuses": statuses, "errors": errors,
             "p50_ms": round(main["latencyPercentiles"]["p50"] * 1000, 2),
             "p99_ms": round(main["latencyPercentiles"]["p99"] * 1000, 2),
             "p99_9_ms": round(main["latencyPercentiles"]["p99.9"] * 1000, 2),
             "failed_while_replica_gone": failed_while_gone,
             "failures_by_second": failures_by_second,
             "p99_ms_of_each_second": [round((s.get("p99") or 0) * 1000, 1) for s in by_second]},
    # CPU time (not wall clock: the machine is shared): r1 (never stopped) per request it
    # served, HAProxy per request it passed.
    "cpu_us_per_request": {
        "replica_r1": round(int(r1_ticks) / hz * 1e6 / stat["r1"]["stot"], 1) if stat.get("r1", {}).get("stot") else None,
        "haproxy": round(int(lb_ticks) / hz * 1e6 / stat["BACKEND"]["stot"], 1) if stat.get("BACKEND", {}).get("stot") else None},
    "haproxy": {"servers": stat, "log": [l.strip() for l in lb_log]},
    "checks": checks, "records": records,
}
json.dump(result, open(out, "w"), indent=1)
m, rel = result["main"], records.get("relay", {})
print(f"\n{replicas} replicas behind HAProxy, realistic workload, {duration} s, {connections} connections ({rate})")
print(f"  mints/s {m['mints_per_s']:,}   p50 {m['p50_ms']} ms   p99 {m['p99_ms']} ms   p99.9 {m['p99_9_ms']} ms")
print(f"  answers {json.dumps(statuses)}   no answer {json.dumps(errors)}")
print(f"  r{replicas} SIG{signal} at {stop_at:.1f} s (exit {exit_code} at {exited_at:.1f} s), started at {started_at:.1f} s, ready at {ready_at:.1f} s")
print(f"  loadgen requests failed while r{replicas} was gone (its seconds {gone.start}..{gone.stop - 1}): {failed_while_gone}; failures by loadgen second: {json.dumps(failures_by_second)}")
print(f"  HAProxy: " + "; ".join(f"{k}: {v['stot']} requests, {v['wretr']} retries, {v['wredis']} redispatched, {v['hrsp_5xx']} 5xx, down {v['chkdown']}x" for k, v in stat.items() if k != "BACKEND"))
for l in lb_log:
    print(f"    {l.strip()}")
print(f"  relay (Idempotency-Key, retried): {rel.get('keys')} keys, {rel.get('answered_200')} answered 200, "
      f"first attempts failed {rel.get('first_attempt_failures')} ({json.dumps(rel.get('first_attempt_failures_by_kind'))}; "
      f"{rel.get('first_attempt_failures_while_replica_gone')} while the replica was gone), "
      f"{rel.get('retried_keys_ending_200')}/{rel.get('keys_retried')} retried keys ended 200 ({rel.get('retries_that_replayed')} as replays)")
print(f"  relay resent after its answer: {rel.get('resent_same_jti_replay')}/{rel.get('resent_after_answer')} got the same jti "
      f"({rel.get('resent_same_jti_on_other_replica')} from the other replica)")
lg = records.get("loadgen", {})
print(f"  every 200 has its record: loadgen {lg.get('answered_200')} answers / {lg.get('records')} records "
      f"({lg.get('records_of_unanswered')} of the {lg.get('no_answer')} requests that got no answer; "
      f"{'ok' if lg.get('ok') else 'MISMATCH'}); relay {rel.get('distinct_jtis_answered')} jtis / {rel.get('records')} records, "
      f"{rel.get('answered_without_record')} without a record, {rel.get('records_without_answer')} records nobody got "
      f"({'ok' if rel.get('ok') else 'MISMATCH'})")
c = result["cpu_us_per_request"]
print(f"  CPU per request (main run, /proc ticks): replica r1 {c['replica_r1']} µs per request it served, HAProxy {c['haproxy']} µs per request")
print("  checks:")
for ch in checks:
    print(f"    {'ok  ' if ch['ok'] else 'FAIL'} {ch['check']}")
print(f"  results: {out}")
all_ok = int(checks_ok) and lg.get("ok") and rel.get("ok")
sys.exit(0 if all_ok else 1)
PY
