"""The shared test vectors (tests/vectors/session-tokens.json, rebuilt by
`cargo run -p neo-sessions-verify --example vectors`): both verifiers give every token exactly
the expected answer, and a valid one exactly its claims. The Rust crate runs the same file."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from neo_sessions_verify import CODES, AsyncVerifier, Verifier, VerifyError

from .conftest import FakeJwks


def outcome(run: Any, vector: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", run(vector["token"], vector["session_id"], vector["at"])
    except VerifyError as error:
        return error.code, None


def check_all(document: dict[str, Any], run: Any) -> None:
    failures = []
    for vector in document["vectors"]:
        got, claims = outcome(run, vector)
        if got != vector["expected"]:
            failures.append(f"{vector['name']}: {got}, expected {vector['expected']}")
        elif got == "ok" and claims != vector["claims"]:
            failures.append(f"{vector['name']}: claims {claims} != {vector['claims']}")
    assert not failures, "\n".join(failures)


def settings(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "issuer": document["issuer"],
        "audience": document["audience"],
        "jwks_url": "https://tokens.test/.well-known/jwks.json",
        "leeway": document["leeway_seconds"],
    }


def test_the_vectors_cover_what_the_issue_lists(vectors: dict[str, Any]) -> None:
    names = {v["name"] for v in vectors["vectors"]}
    for name in [
        "valid_es256",
        "valid_eddsa",
        "valid_rs256",
        "expired",
        "not_yet_valid",
        "expired_inside_leeway",
        "wrong_typ",
        "alg_none",
        "hs256_public_key_as_secret",
        "header_alg_differs_from_key",
        "unknown_kid",
        "bad_signature_other_key",
        "wrong_issuer",
        "wrong_audience",
        "wrong_session",
        "missing_session_id",
        "entra_shaped",
    ]:
        assert name in names
    assert {v["expected"] for v in vectors["vectors"]} <= CODES | {"ok"}


def test_every_vector_gets_its_expected_answer(vectors: dict[str, Any]) -> None:
    fake = FakeJwks(vectors["jwks"]["keys"], "public, max-age=300")
    with Verifier(**settings(vectors), transport=httpx.MockTransport(fake)) as verifier:
        check_all(vectors, verifier.verify_at)
    # One fetch, and one refetch for the unknown kid (then the cool-down holds).
    assert fake.hits == 2


def test_every_vector_gets_its_expected_answer_async(vectors: dict[str, Any]) -> None:
    fake = FakeJwks(vectors["jwks"]["keys"], "public, max-age=300")

    async def main() -> list[tuple[str, Any]]:
        async with AsyncVerifier(
            **settings(vectors), transport=httpx.MockTransport(fake)
        ) as verifier:
            results: list[tuple[str, Any]] = []
            for vector in vectors["vectors"]:
                try:
                    claims = await verifier.verify_at(
                        vector["token"], vector["session_id"], vector["at"]
                    )
                    results.append(("ok", claims))
                except VerifyError as error:
                    results.append((error.code, None))
            return results

    results = iter(asyncio.run(main()))
    check_all(vectors, lambda *_: _replay(next(results)))


def _replay(result: tuple[str, Any]) -> Any:
    code, claims = result
    if code != "ok":
        raise VerifyError(code)
    return claims


@pytest.mark.parametrize("shift", [-1, 1])
def test_the_time_decides_at_the_leeway_edge(vectors: dict[str, Any], shift: int) -> None:
    """exp exactly `leeway` ago passes; one second later it does not: the comparison is strict."""
    edge = next(v for v in vectors["vectors"] if v["name"] == "expired_at_leeway_edge")
    fake = FakeJwks(vectors["jwks"]["keys"])
    with Verifier(**settings(vectors), transport=httpx.MockTransport(fake)) as verifier:
        at = edge["at"] + shift
        if shift > 0:
            with pytest.raises(VerifyError) as refused:
                verifier.verify_at(edge["token"], edge["session_id"], at)
            assert refused.value.code == "expired"
        else:
            assert verifier.verify_at(edge["token"], edge["session_id"], at)["session_id"]
