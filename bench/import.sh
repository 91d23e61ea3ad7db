#!/usr/bin/env bash
# Import benchmark: generates a directory file of SESSIONS sessions (1,000,000 by default) plus a
# few tenants, end companies and agents, imports it into a fresh PostgreSQL database
# (`neo_bench_import`, recreated) with the release binary, then imports it again (every row
# unchanged), and exports it; prints each wall time and rows/s. Needs psql and python3.
#
#   bash bench/import.sh
#   SESSIONS=200000 bash bench/import.sh
#   IMPORT_BIN=/path/to/neo-sessions bash bench/import.sh   # another build (skips cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-1000000}
TENANTS=${TENANTS:-20}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
DB=${DB:-neo_bench_import}
export PGHOST PGPORT PGUSER

if [[ -z "${IMPORT_BIN:-}" ]]; then
  cargo build --release --locked --bin neo-sessions
  IMPORT_BIN=${CARGO_TARGET_DIR:-target}/release/neo-sessions
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
file=$work/directory.jsonl

python3 - "$SESSIONS" "$TENANTS" > "$file" <<'PY'
import json, sys
sessions, tenants = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout
def line(kind, entry):
    out.write(json.dumps({kind: entry}, separators=(",", ":")) + "\n")
line("tenant", {"id": "neo", "name": "Neo", "platform": True})
for t in range(tenants):
    line("tenant", {"id": f"t{t:03}", "name": f"Tenant {t}",
                    "entra_tenant_id": f"00000000-0000-4000-8000-{t:012}"})
for t in range(tenants):
    for c in range(5):
        line("end_company", {"id": f"c{c}", "tenant_id": f"t{t:03}", "name": f"Company {c}"})
    for a in range(5):
        line("agent", {"id": t * 100 + a + 1, "tenant_id": f"t{t:03}", "name": f"Agent {a}"})
for s in range(sessions):
    t = s % tenants
    entry = {"id": f"s-{s:08}", "tenant_id": f"t{t:03}"}
    if s < tenants:
        entry["kind"] = "neo_support"          # one Neo Support session per tenant
    if s % 10 == 3:
        entry["end_company_id"] = f"c{s % 5}"  # a tenth white-label
    if s % 20 == 7:
        entry["status"] = "closed"             # a twentieth closed
    line("session", entry)
PY
lines=$(wc -l < "$file")
echo "file: $lines lines ($(du -h "$file" | cut -f1)), $SESSIONS sessions, $TENANTS tenants"

psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export NEO_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
"$IMPORT_BIN" migrate > /dev/null

run() {
  local name=$1; shift
  local started ended
  started=$(date +%s.%N)
  "$@"
  ended=$(date +%s.%N)
  python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); print(f'$name: {s:.1f} s, {n/s:,.0f} rows/s')" \
    "$started" "$ended" "$lines"
}

run "import into an empty database" "$IMPORT_BIN" directory import "$file" > "$work/first.txt"
tail -3 "$work/first.txt"
run "import again (every row unchanged)" "$IMPORT_BIN" directory import "$file" > "$work/second.txt"
tail -3 "$work/second.txt"
run "export" "$IMPORT_BIN" directory export "$work/export.jsonl" 2> /dev/null
echo "export: $(wc -l < "$work/export.jsonl") lines"
psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
