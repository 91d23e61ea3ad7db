"""The real token service for the tests: the debug binary cargo built, serving a fresh embedded
database with the demo fixture (as .ci/schemathesis.sh runs it), with a JWKS max-age, key lead
time and reload period short enough to see a rotation within seconds."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[3]
#: The demo fixture's Acme key (config/seed.example.json): it mints and revokes.
ACME_KEY = "neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd"
ISSUER = "https://api.neoagent.io"
AUDIENCE = "https://api.neoagent.io/chat"


def binary() -> Path:
    """`NEO_SESSIONS_BIN`, else `<cargo's target directory>/debug/neo-sessions`."""
    named = os.environ.get("NEO_SESSIONS_BIN")
    if named:
        return Path(named)
    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(metadata.stdout)["target_directory"]) / "debug" / "neo-sessions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    binary: Path
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    #: A platform key that can only read the revocation feed (every tenant's), as a chat service
    #: holds one: `api-key create --tenant neo --scope revocations:read`.
    feed_key: str = ""

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    @property
    def revocations_url(self) -> str:
        return f"{self.url}/public-api/sessions/revocations"

    def mint(self, session_id: str = "s-acme-1", key: str = ACME_KEY) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/public-api/sessions",
            headers={"authorization": f"Bearer {key}"},
            json={"session_id": session_id, "end_user": "pat", "allowed_agent_ids": [101]},
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def revoke(self, jti: str, key: str = ACME_KEY) -> None:
        response = httpx.delete(
            f"{self.url}/public-api/sessions/{jti}", headers={"authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text

    def cli(self, *args: str) -> str:
        """A command of the binary on the same data directory and settings as the server."""
        done = subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")


def start() -> Iterator[Service]:
    path = binary()
    if not path.is_file():
        raise RuntimeError(
            f"no {path}: build it first (cargo build --locked --bin neo-sessions), "
            "or name it in NEO_SESSIONS_BIN"
        )
    data = Path(tempfile.mkdtemp(prefix="neo-sessions-py-"))
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("NEO_DATABASE_URL", "DATABASE_URL")
    }
    env.update(
        NEO_DATA_DIR=str(data),
        NEO_LISTEN=f"127.0.0.1:{port}",
        NEO_LOG_FILTER="warn",
        NEO_API_KEY_ENV="test",
        NEO_RATE_LIMIT_PER_MINUTE="1000000",
        NEO_RATE_LIMIT_BURST="100000",
        NEO_AUTH_FAILURE_PER_MINUTE="1000000",
        NEO_AUTH_FAILURE_BURST="100000",
        # A rotation seen within seconds: a key is published 3 s before it signs, the JWKS may
        # be cached 1 s, each replica reloads the keys every second.
        NEO_JWKS_MAX_AGE_SECONDS="1",
        NEO_SIGNING_KEY_LEAD_SECONDS="3",
        NEO_SIGNING_KEY_RELOAD_SECONDS="1",
    )
    log = data / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(path), "serve", "--demo"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    service = Service(path, f"http://127.0.0.1:{port}", env, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{service.url}/public-api/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{service.server_log()}")
            time.sleep(0.1)
        service.feed_key = service.cli(
            "api-key", "create", "--tenant", "neo", "--name", "chat", "--scope", "revocations:read"
        ).strip()
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(data, ignore_errors=True)
