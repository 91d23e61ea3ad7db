"""Turns the oha JSON files of one bench/load.sh run into the table and the results JSON."""

import json
import os
import platform
import subprocess
import sys

work, rss_idle, rss_after, recorded, clk_tck, out = sys.argv[1:7]
clk_tck = int(clk_tck)

RUNS = [
    ("one_trip", "reference: one DB round trip"),
    ("mint_realistic", "mint, realistic workload"),
    ("mint_realistic_at_50pct", "mint, realistic, fixed rate 50%"),
    ("liveness", "liveness (touches nothing)"),
    ("mint_key", "mint, API key (ES256)"),
    ("mint_entra", "mint, Entra token (RS256 verify)"),
    ("mint_agents", "mint, API key + allowed_agent_ids"),
    ("mint_key_at_50pct", "mint, API key, fixed rate 50%"),
    ("mint_key_at_80pct", "mint, API key, fixed rate 80%"),
    ("prune_at_50pct", "mint, API key, 50%, during a prune"),
    ("soak", "soak: mint, realistic workload"),
]


def load(name):
    path = os.path.join(work, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    with open(os.path.join(work, f"{name}.ticks")) as f:
        ticks = int(f.read())
    with open(os.path.join(work, f"{name}.pgticks")) as f:
        pg_ticks = int(f.read())
    summary = data["summary"]
    pct = data.get("latencyPercentiles", {})
    statuses = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    total = sum(statuses.values())
    # oha ends a timed run by aborting what is in flight: those are not the server's errors.
    aborted = {k: v for k, v in data.get("errorDistribution", {}).items() if "deadline" in k}
    errors = sum(data.get("errorDistribution", {}).values()) - sum(aborted.values()) + (total - ok)
    cpu_us = ticks * 1_000_000 / clk_tck / ok if ok else None
    pg_us = pg_ticks * 1_000_000 / clk_tck / ok if ok else None
    ms = lambda v: None if v is None else round(v * 1000, 3)
    # loadgen's runs also give the tail of each credential kind, and the worst second's p99.
    by_credential = {
        kind: ms(p.get("p99")) for kind, p in data.get("latencyPercentilesByCredential", {}).items()
    }
    by_second = [s.get("p99") for s in data.get("latencyPercentilesBySecond", []) if s.get("p99")]
    return {
        "requests_per_sec": round(summary["requestsPerSec"], 1),
        "p99_ms_by_credential": by_credential or None,
        "p99_ms_of_each_second": [ms(v) for v in by_second] or None,
        "ok": ok,
        "errors": errors,
        "p50_ms": ms(pct.get("p50")),
        "p99_ms": ms(pct.get("p99")),
        "p99_9_ms": ms(pct.get("p99.9")),
        "server_cpu_us_per_request": None if cpu_us is None else round(cpu_us, 1),
        "postgres_cpu_us_per_request": None if pg_us is None else round(pg_us, 1),
    }


results = {name: load(name) for name, _ in RUNS}
rps = lambda name: (results.get(name) or {}).get("requests_per_sec") or 0
ratios = {
    "realistic_mint_over_one_trip": round(rps("mint_realistic") / rps("one_trip"), 3) if rps("one_trip") else None,
    "mint_over_liveness": round(rps("mint_key") / rps("liveness"), 3) if rps("liveness") else None,
    "entra_over_key_mint": round(rps("mint_entra") / rps("mint_key"), 3) if rps("mint_key") else None,
}
try:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
except OSError:
    cpu = "unknown"
report = {
    "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
    "runs": results,
    "ratios": ratios,
    "rss_mib": {"idle": round(int(rss_idle) / 1024, 1), "after": round(int(rss_after) / 1024, 1)},
    "mints_recorded": int(recorded),
}
prune_path = os.path.join(work, "prune.json")
if os.path.exists(prune_path):
    with open(prune_path) as f:
        report["prune"] = json.load(f)
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")

print(f"\nneo-sessions load benchmark on {cpu}, {os.cpu_count()} cores (oha, service and PostgreSQL share them)\n")
print(f"| {'run':<38} | {'req/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'p99.9 ms':>8} | {'errors':>6} | {'CPU µs/req':>10} | {'PG µs/req':>9} |")
print(f"|{'-' * 40}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 12}|{'-' * 11}|")
for name, label in RUNS:
    r = results.get(name)
    if not r:
        continue
    fmt = lambda v: "-" if v is None else f"{v}"
    print(f"| {label:<38} | {r['requests_per_sec']:>9} | {fmt(r['p50_ms']):>7} | {fmt(r['p99_ms']):>7} | "
          f"{fmt(r['p99_9_ms']):>8} | {r['errors']:>6} | {fmt(r['server_cpu_us_per_request']):>10} | "
          f"{fmt(r['postgres_cpu_us_per_request']):>9} |")
for name, label in RUNS:
    r = results.get(name) or {}
    if r.get("p99_ms_by_credential"):
        kinds = ", ".join(f"{k} {v}" for k, v in r["p99_ms_by_credential"].items())
        print(f"{label}: p99 ms by credential: {kinds}; p99 ms of each second: {r['p99_ms_of_each_second']}")
print(f"\nrealistic mint ÷ one-round-trip route: {ratios['realistic_mint_over_one_trip']}   "
      f"mint ÷ liveness: {ratios['mint_over_liveness']}   Entra mint ÷ key mint: {ratios['entra_over_key_mint']}")
print(f"RSS: {report['rss_mib']['idle']} MiB idle, {report['rss_mib']['after']} MiB after the runs; "
      f"{report['mints_recorded']} mints recorded")
if "prune" in report:
    p = report["prune"]
    print(f"retention: {p['rows']} expired records; {p['left_after_run']} left after the 50% run, "
          f"{p['left']} at the end, {p['seconds_to_finish']} s from the pruner's start")
print(f"written: {out}")
