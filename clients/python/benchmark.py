"""How long one verification takes with a warm cache (the key set held, nothing fetched): each
valid token of the shared vectors verified N times (default 10000) in a loop.

    python clients/python/benchmark.py [N]

The Rust crate's counterpart: cargo run --release -p neo-sessions-verify --example verify_speed
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

from neo_sessions_verify import Verifier

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors" / "session-tokens.json"


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    document = json.loads(VECTORS.read_text())
    jwks = document["jwks"]
    transport = httpx.MockTransport(
        lambda _: httpx.Response(200, json=jwks, headers={"cache-control": "max-age=3600"})
    )
    verifier = Verifier(
        document["issuer"],
        document["audience"],
        jwks_url="https://tokens.test/.well-known/jwks.json",
        leeway=document["leeway_seconds"],
        transport=transport,
    )
    for vector in document["vectors"]:
        if not vector["name"].startswith("valid_"):
            continue
        token, session, at = vector["token"], vector["session_id"], vector["at"]
        verifier.verify_at(token, session, at)  # warm: the key set is fetched here
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            verifier.verify_at(token, session, at)
        each = (time.perf_counter() - start) / rounds
        cpu = (time.process_time() - cpu_start) / rounds
        print(
            f"{vector['name']}: {each * 1e6:.1f} µs per verification, "
            f"{cpu * 1e6:.1f} µs of CPU ({rounds} rounds)"
        )
    verifier.close()


if __name__ == "__main__":
    main()
