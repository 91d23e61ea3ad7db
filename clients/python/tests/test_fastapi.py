"""The FastAPI dependency beyond what the real service shows: an unavailable JWKS is 503 (the
token may be good), a sync Verifier works too, and request ids are kept only when UUIDs."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from neo_sessions_verify import AsyncVerifier, Verifier
from neo_sessions_verify.fastapi import install, lifespan, session_token

from .conftest import FakeJwks
from .keys import AUDIENCE, ISSUER, JWKS_URL, Clock, TestKey


def app_for(verifier: AsyncVerifier | Verifier) -> FastAPI:
    app = FastAPI(lifespan=lifespan(verifier))
    install(app)
    session = session_token(verifier, path_param="sid")

    @app.get("/chat/sessions/{sid}/messages")
    def messages(sid: str, claims: dict[str, Any] = Depends(session)) -> Any:
        return {"sid": sid, "sub": claims["sub"]}

    return app


def test_an_unavailable_jwks_is_503_and_a_sync_verifier_serves_too() -> None:
    key = TestKey("k1")
    fake = FakeJwks([key.jwk])
    fake.down = True
    verifier = Verifier(ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(fake))
    clock = Clock()
    verifier._config.keys.clock = clock
    bearer = {"authorization": f"Bearer {key.sign()}"}
    with TestClient(app_for(verifier)) as client:
        down = client.get("/chat/sessions/s-1/messages", headers=bearer)
        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"
        assert down.json()["error"]["code"] == "jwks_unavailable"
        fake.down = False
        clock.now += 61  # past the back-off after the failed fetch
        up = client.get("/chat/sessions/s-1/messages", headers=bearer)
        assert up.json() == {"sid": "s-1", "sub": "pat"}


def test_request_ids_and_repeated_credentials() -> None:
    key = TestKey("k1")
    verifier = AsyncVerifier(
        ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(FakeJwks([key.jwk]))
    )
    with TestClient(app_for(verifier)) as client:
        refused = client.get(
            "/chat/sessions/s-1/messages",
            headers={"authorization": "Bearer x", "x-request-id": "not-a-uuid"},
        )
        request_id = refused.json()["meta"]["request_id"]
        assert request_id != "not-a-uuid" and uuid.UUID(request_id)
        twice = client.get(
            "/chat/sessions/s-1/messages",
            headers=[("authorization", f"Bearer {key.sign()}")] * 2,
        )
        assert (twice.status_code, twice.json()["error"]["code"]) == (401, "invalid_credentials")
        expired = client.get(
            "/chat/sessions/s-1/messages",
            headers={"authorization": f"Bearer {key.sign(exp=1_000_000)}"},
        )
        assert (expired.status_code, expired.json()["error"]["code"]) == (
            401,
            "invalid_credentials",
        )
