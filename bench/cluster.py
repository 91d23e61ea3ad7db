#!/usr/bin/env python3
"""The cross-replica checks and the relay driver of bench/cluster.sh (stdlib only).

    cluster.py checks  --lb URL --replicas URL,URL,... --out FILE
        client IP through the proxy, Idempotency-Key across replicas, rate limits across
        replicas, token and API-key revocation across replicas. Writes what it saw as JSON; exits
        1 when a check failed (every check still runs).
    cluster.py relay   --lb URL --seconds N [--workers 8] --out FILE
        a Teams relay: keyed mints through the proxy at a steady pace, each failed attempt
        retried with the same Idempotency-Key; every fifth request is sent again after its answer
        (a retry after a lost answer). Writes each attempt's time and outcome.
    cluster.py records --out FILE [--loadgen FILE ...] --relay FILE --stop T --back T
        compares what the clients got with session_token_mints (psql, $DATABASE_URL).

Credentials and tenants are those bench/cluster.sh seeds (below).
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

CHECKS_KEY = "neo_sk_test_ChecksChecksChecksChecksChecks12"
LIMITED_KEY = "neo_sk_test_LimitedLimitedLimitedLimitedLim1"
RELAY_KEY = "neo_sk_test_RelayRelayRelayRelayRelayRelay12"
PLATFORM_KEY = "neo_sk_test_Np5Vw8Xc2Bz7Mq4Lt9Rf3Hs6"
LIMIT_PER_MINUTE, LIMIT_BURST = 60, 10
AUTH_FAILURE_BURST = 10  # NEO_AUTH_FAILURE_BURST's default
CLIENT_A, CLIENT_B = "127.0.0.3", "127.0.0.4"  # the two "client addresses" behind the proxy


def request(base, method, path, key=None, body=None, headers=None, source=None, timeout=10):
    """One request on its own connection (so the proxy balances each): (status, headers, json)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(
        url.hostname, url.port, timeout=timeout, source_address=(source, 0) if source else None
    )
    h = dict(headers or {})
    if key:
        h["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, doc
    finally:
        conn.close()


def mint(base, key, session, end_user="pat", idem=None, source=None):
    headers = {"Idempotency-Key": idem} if idem else None
    return request(base, "POST", "/public-api/sessions", key,
                   {"session_id": session, "end_user": end_user}, headers, source)


class Checks:
    def __init__(self, lb, replicas, logs):
        self.lb, self.replicas, self.logs = lb, replicas, logs
        self.results = []

    def check(self, name, ok, **seen):
        self.results.append({"check": name, "ok": bool(ok), **seen})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {json.dumps(seen)}", file=sys.stderr)

    def client_ip(self):
        """The proxy's X-Forwarded-For is believed (the replicas log the client's address, and
        failed authentications count against it), a forged one sent past the proxy is not."""
        bad = "neo_sk_test_" + "x" * 32
        statuses = [request(self.lb, "GET", "/public-api/sessions", bad, source=CLIENT_A)[0]
                    for _ in range(AUTH_FAILURE_BURST + 3)]
        other = request(self.lb, "GET", "/public-api/sessions", bad, source=CLIENT_B)[0]
        forged = request(self.replicas[0], "GET", "/public-api/sessions", bad,
                         headers={"X-Forwarded-For": CLIENT_A})[0]
        self.check(
            "failed authentications count per client address behind the proxy, across replicas",
            statuses.count(401) <= AUTH_FAILURE_BURST + 1 and statuses[-1] == 429
            and other == 401 and forged == 401,
            client_a=statuses, client_b=other, forged_xff_direct=forged,
        )
        time.sleep(0.3)  # the log lines are written by a background thread
        seen = {}
        for log in self.logs:
            with open(log, encoding="utf-8", errors="replace") as f:
                text = f.read()
            seen[os.path.basename(log)] = text.count(f'"client_ip":"{CLIENT_A}"')
        self.check("replicas log the client's address from X-Forwarded-For",
                   sum(seen.values()) >= len(statuses) and all(seen.values()), lines=seen)

    def idempotency(self):
        """The same Idempotency-Key sent to each replica in turn gets one token."""
        key = f"check-{uuid.uuid4()}"
        answers = [mint(r, CHECKS_KEY, "s-checks-1", idem=key) for r in self.replicas]
        jtis = [a[2]["data"]["jti"] if a[0] == 200 else a[0] for a in answers]
        replays = [any("replay" in w for w in (a[2] or {}).get("meta", {}).get("warnings", []))
                   for a in answers]
        rows = psql(f"SELECT count(*) FROM session_token_mints WHERE jti = '{jtis[0]}'")
        self.check("an Idempotency-Key retry on another replica gets the same jti",
                   len(set(jtis)) == 1 and all(replays[1:]) and rows == "1",
                   jtis=jtis, replays=replays, records=rows)
        return key

    def rate_limits(self):
        """A tenant's per-principal quota holds across replicas: burst + rate, not twice that."""
        started = time.monotonic()
        answers = [mint(self.lb, LIMITED_KEY, "s-limited-1") for _ in range(4 * LIMIT_BURST)]
        elapsed = time.monotonic() - started
        ok = [a for a in answers if a[0] == 200]
        by_replica = {}
        for a in ok:
            replica = a[1].get("x-neo-replica", "?")
            by_replica[replica] = by_replica.get(replica, 0) + 1
        allowed = LIMIT_BURST + int(elapsed * LIMIT_PER_MINUTE / 60) + 1
        limited = [a for a in answers if a[0] == 429]
        self.check(
            f"a tenant's limit ({LIMIT_PER_MINUTE}/min, burst {LIMIT_BURST}) counts across replicas",
            len(ok) <= allowed and len(by_replica) == len(self.replicas) and limited
            and all(a[1].get("retry-after") for a in limited),
            sent=len(answers), answered_200=len(ok), at_most=allowed, seconds=round(elapsed, 2),
            ok_by_replica=by_replica, refused_429=len(limited),
            retry_after=limited[0][1].get("retry-after") if limited else None,
        )

    def revocation(self):
        """A token revoked on one replica is revoked on the others: the record, introspection,
        the revocation feed; an API key revoked by the CLI is refused by every replica."""
        first, second = self.replicas[0], self.replicas[-1]
        status, _, doc = mint(first, CHECKS_KEY, "s-checks-1")
        if status != 200:
            self.check("token revocation across replicas", False, mint_status=status)
            return
        jti, token = doc["data"]["jti"], doc["data"]["token"]
        active_before = request(first, "POST", "/public-api/sessions/introspect", CHECKS_KEY,
                                {"token": token})[2]["data"].get("active")
        revoked = request(second, "DELETE", f"/public-api/sessions/{jti}", CHECKS_KEY)
        started = time.monotonic()
        record = request(first, "GET", f"/public-api/sessions/{jti}", CHECKS_KEY)
        intro = request(first, "POST", "/public-api/sessions/introspect", CHECKS_KEY, {"token": token})
        # A verifier on the first replica follows the feed by its cursor until the jti is in it.
        # The feed holds a revocation back while an older writing transaction anywhere on the
        # PostgreSQL server is open (api.md): on a shared server, say how old the oldest was.
        oldest = psql("SELECT coalesce(round(extract(epoch FROM max(now() - xact_start))::numeric, 1), 0) "
                      "FROM pg_stat_activity WHERE backend_xid IS NOT NULL")
        in_feed, polls, path = None, 0, "/public-api/sessions/revocations"
        while time.monotonic() - started < 60 and in_feed is None:
            polls += 1
            s, _, feed = request(first, "GET", path, PLATFORM_KEY)
            if s != 200:
                break
            page = feed["data"]
            if jti in [r.get("jti") for r in page["revocations"]]:
                in_feed = round((time.monotonic() - started) * 1000, 1)
            path = "/public-api/sessions/revocations?cursor=" + urllib.parse.quote(page["next_cursor"])
            if not page["has_more"]:
                time.sleep(0.05)
        self.check(
            "a token revoked on one replica is revoked on the other",
            revoked[0] == 200 and record[0] == 200 and record[2]["data"].get("revoked_at")
            and active_before is True and intro[0] == 200 and intro[2]["data"].get("active") is False
            and in_feed is not None,
            revoke_status=revoked[0], record_revoked_at=(record[2] or {}).get("data", {}).get("revoked_at"),
            oldest_writing_transaction_on_server_s=float(oldest),
            introspect_active_before=active_before,
            introspect_active_after=((intro[2] or {}).get("data") or {}).get("active"), in_feed_after_ms=in_feed, feed_polls=polls,
        )
        # An API key made and used on every replica (so each has it cached), then revoked by the
        # CLI: how long until each replica refuses it.
        made = subprocess.run([os.environ["SERVER_BIN"], "api-key", "create", "--tenant", "checks",
                               "--name", f"revoked-{uuid.uuid4().hex[:8]}"],
                              capture_output=True, text=True, check=True)
        new_key = made.stdout.strip().splitlines()[-1]
        key_id = psql("SELECT id FROM api_keys WHERE tenant_id = 'checks' AND revoked_at IS NULL "
                      "ORDER BY created_at DESC LIMIT 1")
        before = [mint(r, new_key, "s-checks-1")[0] for r in self.replicas]
        subprocess.run([os.environ["SERVER_BIN"], "api-key", "revoke", key_id],
                       capture_output=True, text=True, check=True)
        revoked_at = time.monotonic()
        refused_after = {}
        while time.monotonic() - revoked_at < 10 and len(refused_after) < len(self.replicas):
            for r in self.replicas:
                if r not in refused_after and mint(r, new_key, "s-checks-1")[0] == 401:
                    refused_after[r] = round((time.monotonic() - revoked_at) * 1000, 1)
        self.check("an API key revoked by the CLI is refused by every replica",
                   before == [200] * len(self.replicas) and len(refused_after) == len(self.replicas),
                   before=before, refused_after_ms=refused_after)


def psql(sql):
    return subprocess.run(["psql", "-tAq", os.environ["DATABASE_URL"], "-c", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


def relay(lb, seconds, out, pace=0.02, workers=8):
    """Keyed mints through the proxy, retried with the same key until answered (as a relay
    does after a timeout, a reset or a 502/503), for `seconds`."""
    stop = time.monotonic() + seconds
    t0 = time.time()
    lock, requests = threading.Lock(), []

    def attempt(key, n):
        try:
            status, headers, doc = mint(lb, RELAY_KEY, "s-relay-1", f"u-{n}", idem=key)
            outcome = str(status)
        except (OSError, http.client.HTTPException) as e:
            status, headers, doc, outcome = None, {}, None, type(e).__name__
        data = (doc or {}).get("data") or {}
        warnings = (doc or {}).get("meta", {}).get("warnings", [])
        return {"at": round(time.time() - t0, 3), "outcome": outcome, "jti": data.get("jti"),
                "replica": headers.get("x-neo-replica"), "replay": any("replay" in w for w in warnings)}

    def worker(w):
        n = 0
        while time.monotonic() < stop:
            n += 1
            key = f"relay-{w}-{n}-{uuid.uuid4().hex[:8]}"
            tries = [attempt(key, n)]
            # No answer, a 5xx, 429 or 409 (the first attempt still minting): retry, same key.
            # Any other refusal is an answer; a relay does not retry it.
            while tries[-1]["outcome"] not in ("200", "400", "401", "403", "404", "422") \
                    and len(tries) < 100:
                time.sleep(0.1)
                tries.append(attempt(key, n))
            resent = None
            if n % 5 == 0 and tries[-1]["outcome"] == "200":
                resent = attempt(key, n)  # the answer "was lost": the relay sends it again
            with lock:
                requests.append({"key": key, "tries": tries, "resent": resent})
            time.sleep(pace)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out, "w") as f:
        json.dump({"started_unix": t0, "requests": requests}, f)


def records(out, loadgen_files, relay_file, stop_at, back_at, run_started):
    """Every 200 has its record; what failed while a replica was gone."""
    report = {}
    # The realistic workload (tenants acme and globex) is minted only by loadgen.
    # loadgen sends no Idempotency-Key and keeps no jti: the counts must agree, except that a
    # request that got no answer (its replica killed after the commit) may have a record.
    ok = unanswered = 0
    for path in loadgen_files:
        with open(path) as f:
            doc = json.load(f)
        ok += int(doc.get("statusCodeDistribution", {}).get("200", 0))
        unanswered += sum(int(v) for v in doc.get("errorDistribution", {}).values())
    rows = int(psql("SELECT count(*) FROM session_token_mints WHERE tenant_id IN ('acme', 'globex')"))
    report["loadgen"] = {"answered_200": ok, "records": rows, "no_answer": unanswered,
                         "records_of_unanswered": rows - ok, "ok": ok <= rows <= ok + unanswered}
    with open(relay_file) as f:
        rel = json.load(f)
    reqs = rel["requests"]
    got = {r["key"]: r["tries"][-1]["jti"] for r in reqs if r["tries"][-1]["outcome"] == "200"}
    jtis = set(psql("SELECT jti FROM session_token_mints WHERE tenant_id = 'relay'").split())
    shift = rel["started_unix"] - run_started  # the relay's clock against the run's
    first_failures = [dict(r["tries"][0], at=r["tries"][0]["at"] + shift)
                      for r in reqs if r["tries"][0]["outcome"] != "200"]
    in_outage = [t for t in first_failures if stop_at <= t["at"] <= back_at]
    kinds = {}
    for t in first_failures:
        kinds[t["outcome"]] = kinds.get(t["outcome"], 0) + 1
    retried = [r for r in reqs if len(r["tries"]) > 1]
    resent = [r for r in reqs if r["resent"]]
    same = [r for r in resent if r["resent"]["outcome"] == "200"
            and r["resent"]["jti"] == r["tries"][-1]["jti"] and r["resent"]["replay"]]
    cross = [r for r in same if r["resent"]["replica"] != r["tries"][-1]["replica"]]
    report["relay"] = {
        "keys": len(reqs),
        "answered_200": len(got),
        "first_attempt_failures": len(first_failures),
        "first_attempt_failures_by_kind": kinds,
        "first_attempt_failures_while_replica_gone": len(in_outage),
        "keys_retried": len(retried),
        "retried_keys_ending_200": sum(1 for r in retried if r["tries"][-1]["outcome"] == "200"),
        "retries_that_replayed": sum(1 for r in retried if r["tries"][-1]["replay"]),
        "resent_after_answer": len(resent),
        "resent_same_jti_replay": len(same),
        "resent_same_jti_on_other_replica": len(cross),
        "records": len(jtis),
        "distinct_jtis_answered": len(set(got.values())),
        "answered_without_record": len(set(got.values()) - jtis),
        "records_without_answer": len(jtis - set(got.values())),
    }
    report["relay"]["ok"] = (
        report["relay"]["answered_200"] == report["relay"]["keys"]
        and report["relay"]["answered_without_record"] == 0
        and report["relay"]["records_without_answer"] == 0
        and len(same) == len(resent)
    )
    with open(out, "w") as f:
        json.dump(report, f)
    print(json.dumps(report), file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["checks", "relay", "records"])
    p.add_argument("--lb")
    p.add_argument("--replicas", default="")
    p.add_argument("--logs", default="")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--loadgen", action="append", default=[])
    p.add_argument("--relay")
    p.add_argument("--stop", type=float, default=0)
    p.add_argument("--back", type=float, default=0)
    p.add_argument("--run-started", type=float, default=0)
    a = p.parse_args()
    if a.command == "checks":
        c = Checks(a.lb, a.replicas.split(","), [l for l in a.logs.split(",") if l])
        for step in (c.client_ip, c.idempotency, c.rate_limits, c.revocation):
            try:
                step()
            except Exception as e:  # a check that crashed is a failed check, and the rest still run
                c.check(step.__name__, False, error=repr(e))
        with open(a.out, "w") as f:
            json.dump(c.results, f)
        sys.exit(0 if all(r["ok"] for r in c.results) else 1)
    elif a.command == "relay":
        relay(a.lb, a.seconds, a.out, workers=a.workers)
    else:
        records(a.out, a.loadgen, a.relay, a.stop, a.back, a.run_started)


if __name__ == "__main__":
    main()
