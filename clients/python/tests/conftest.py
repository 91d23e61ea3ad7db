"""Shared fixtures: the repository's test vectors, and a JWKS served through httpx's mock
transport."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
VECTORS = REPO / "tests" / "vectors" / "session-tokens.json"


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(VECTORS.read_text())
    return document


class FakeJwks:
    """Answers the JWKS URL with what a test says, counting hits; 503 while down."""

    def __init__(self, keys: list[dict[str, Any]], cache_control: str | None = None) -> None:
        self.keys = keys
        self.cache_control = cache_control
        self.down = False
        self.hits = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hits += 1
        if self.down:
            return httpx.Response(503)
        headers = {"cache-control": self.cache_control} if self.cache_control else {}
        return httpx.Response(200, json={"keys": self.keys}, headers=headers)
