"""Against the real token service (the debug binary on a fresh embedded database): tokens it
mints verify, for their session only; across a signing-key rotation tokens of both keys verify;
a revoked token is refused within two polls of the revocation feed; the FastAPI dependency
answers as the service does."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from neo_sessions_verify import AsyncVerifier, Verifier, VerifyError
from neo_sessions_verify.fastapi import install, lifespan, session_token

from . import service as svc

INTERVAL = 1.0


@pytest.fixture(scope="module")
def service() -> Iterator[svc.Service]:
    yield from svc.start()


def feed_settings(service: svc.Service) -> dict[str, Any]:
    return {
        "issuer": svc.ISSUER,
        "audience": svc.AUDIENCE,
        "jwks_url": service.jwks_url,
        "revocations_url": service.revocations_url,
        "revocations_api_key": service.feed_key,
        "revocations_interval": INTERVAL,
    }


def header_of(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def refused(verify: Any, *args: Any) -> str:
    with pytest.raises(VerifyError) as error:
        verify(*args)
    return error.value.code


def test_a_minted_token_verifies_for_its_session_only(service: svc.Service) -> None:
    minted = service.mint("s-acme-1")
    with Verifier(svc.ISSUER, svc.AUDIENCE, jwks_url=service.jwks_url) as verifier:
        claims = verifier.verify(minted["token"], session_id="s-acme-1")
        assert (claims["jti"], claims["client_id"], claims["allowed_agent_ids"]) == (
            minted["jti"],
            "acme",
            [101],
        )
        assert refused(verifier.verify, minted["token"], "s-acme-2") == "wrong_session"
    with Verifier(svc.ISSUER, "https://elsewhere", jwks_url=service.jwks_url) as other:
        assert refused(other.verify, minted["token"], "s-acme-1") == "wrong_audience"


def test_tokens_of_both_keys_verify_across_a_rotation(service: svc.Service) -> None:
    before = service.mint()
    old_kid = header_of(before["token"])["kid"]
    with Verifier(svc.ISSUER, svc.AUDIENCE, jwks_url=service.jwks_url) as verifier:
        assert verifier.verify(before["token"], "s-acme-1")["jti"] == before["jti"]
        service.cli("signing-key", "rotate", "--algorithm", "EdDSA")
        # Published at once (within a reload), signing after the 3 s lead time.
        deadline = time.monotonic() + 20
        while True:
            after = service.mint()
            if header_of(after["token"])["kid"] != old_kid:
                break
            assert time.monotonic() < deadline, "the rotated key never signed"
            time.sleep(0.25)
        assert header_of(after["token"])["alg"] == "EdDSA"
        assert verifier.verify(after["token"], "s-acme-1")["jti"] == after["jti"]
        assert verifier.verify(before["token"], "s-acme-1")["jti"] == before["jti"]


def seconds_until_refused(verify: Any, token: str) -> float:
    """How long after now `verify` first refuses `token` as revoked (checked every 50 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < 3 * INTERVAL:
        try:
            verify(token, "s-acme-1")
        except VerifyError as error:
            assert error.code == "revoked"
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still accepted {3 * INTERVAL} s after its revocation")


def test_the_feed_key_reads_the_feed_and_can_mint_nothing(service: svc.Service) -> None:
    assert service.feed_key.startswith("neo_sk_test_")
    refused = httpx.post(
        f"{service.url}/public-api/sessions",
        headers={"authorization": f"Bearer {service.feed_key}"},
        json={"session_id": "s-acme-1"},
    )
    assert refused.status_code == 403, refused.text
    feed = httpx.get(
        service.revocations_url, headers={"authorization": f"Bearer {service.feed_key}"}
    )
    assert feed.status_code == 200, feed.text


def test_a_revoked_token_is_refused_within_two_poll_intervals(service: svc.Service) -> None:
    revoked, kept = service.mint(), service.mint()
    with Verifier(**feed_settings(service)) as verifier:
        verifier.verify(revoked["token"], "s-acme-1")
        deadline = time.monotonic() + 5
        while verifier.revocations_age is None:
            assert time.monotonic() < deadline, "the feed was never read"
            time.sleep(0.05)
        service.revoke(revoked["jti"])
        took = seconds_until_refused(verifier.verify, revoked["token"])
        print(f"revocation refused by Verifier after {took:.2f} s (interval {INTERVAL} s)")
        assert took <= 2 * INTERVAL
        assert verifier.verify(kept["token"], "s-acme-1")["jti"] == kept["jti"]


def test_the_async_verifier_polls_the_feed_too(service: svc.Service) -> None:
    minted = service.mint()

    async def main() -> float:
        async with AsyncVerifier(**feed_settings(service)) as verifier:
            await verifier.verify(minted["token"], "s-acme-1")
            while verifier.revocations_age is None:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(service.revoke, minted["jti"])
            start = time.monotonic()
            while time.monotonic() - start < 3 * INTERVAL:
                try:
                    await verifier.verify(minted["token"], "s-acme-1")
                except VerifyError as error:
                    assert error.code == "revoked"
                    return time.monotonic() - start
                await asyncio.sleep(0.05)
            raise AssertionError("never refused")

    took = asyncio.run(main())
    print(f"revocation refused by AsyncVerifier after {took:.2f} s (interval {INTERVAL} s)")
    assert took <= 2 * INTERVAL


def test_the_fastapi_dependency_answers_as_the_service_does(service: svc.Service) -> None:
    verifier = AsyncVerifier(**feed_settings(service))
    app = FastAPI(lifespan=lifespan(verifier))
    install(app)
    session = session_token(verifier)

    @app.get("/chat/sessions/{session_id}/messages")
    async def messages(session_id: str, claims: dict[str, Any] = Depends(session)) -> Any:
        return {"session_id": session_id, "end_user": claims["end_user"], "messages": []}

    minted = service.mint()
    bearer = {"authorization": f"Bearer {minted['token']}"}
    with TestClient(app) as client:
        ok = client.get("/chat/sessions/s-acme-1/messages", headers=bearer)
        assert ok.status_code == 200, ok.text
        assert ok.json()["end_user"] == "pat"

        other = client.get("/chat/sessions/s-acme-2/messages", headers=bearer)
        assert other.status_code == 403
        assert other.json()["error"] == {
            "code": "forbidden",
            "message": "The session token is for another session.",
            "details": {"reason": "wrong_session"},
        }
        assert other.headers["cache-control"] == "no-store"
        assert other.json()["meta"]["request_id"] == other.headers["x-request-id"]

        missing = client.get("/chat/sessions/s-acme-1/messages")
        assert (missing.status_code, missing.json()["error"]["code"]) == (
            401,
            "missing_credentials",
        )
        assert missing.headers["www-authenticate"] == 'Bearer realm="neo-sessions"'

        request_id = "3f0c8a52-1d4e-4b7a-9c3e-2a1b0c9d8e7f"
        forged = client.get(
            "/chat/sessions/s-acme-1/messages",
            headers={"authorization": "Bearer not.a.token", "x-request-id": request_id},
        )
        assert forged.status_code == 401
        assert forged.json() == {
            "error": {
                "code": "invalid_credentials",
                "message": "The bearer credentials are invalid.",
            },
            "meta": {"request_id": request_id},
        }
        assert forged.headers["www-authenticate"] == (
            'Bearer realm="neo-sessions", error="invalid_token"'
        )

        service.revoke(minted["jti"])
        start = time.monotonic()
        while client.get("/chat/sessions/s-acme-1/messages", headers=bearer).status_code == 200:
            assert time.monotonic() - start <= 2 * INTERVAL, "revoked token still served"
            time.sleep(0.05)
        gone = client.get("/chat/sessions/s-acme-1/messages", headers=bearer)
        assert (gone.status_code, gone.json()["error"]["code"]) == (401, "invalid_credentials")
