"""The key set: cached as its Cache-Control says, refetched for an unknown kid at most once per
cool-down, served stale for a bounded time while the JWKS is down (as the Rust crate does)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from neo_sessions_verify import AsyncVerifier, Verifier, VerifyError
from neo_sessions_verify._keys import LONGEST_MAX_AGE, max_age

from .conftest import FakeJwks
from .keys import AUDIENCE, ISSUER, JWKS_URL, Clock, TestKey


def verifier(fake: FakeJwks, clock: Clock, **settings: Any) -> Verifier:
    made = Verifier(ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(fake), **settings)
    made._config.keys.clock = clock
    return made


def code(verifier: Verifier, token: str, session: str = "s-1") -> str:
    with pytest.raises(VerifyError) as error:
        verifier.verify(token, session)
    return error.value.code


def test_max_age_is_read_from_cache_control() -> None:
    assert max_age("public, max-age=300") == 300
    assert max_age("no-cache") is None
    assert max_age("max-age=-5") is None


def test_a_current_set_answers_from_memory_and_an_unknown_kid_refetches_once_per_cooldown() -> None:
    k1, k2 = TestKey("k1"), TestKey("k2")
    fake, clock = FakeJwks([k1.jwk], "max-age=300"), Clock()
    v = verifier(fake, clock, unknown_kid_cooldown=30)
    assert v.verify(k1.sign(), "s-1")["client_id"] == "acme"
    v.verify(k1.sign(), "s-1")
    assert fake.hits == 1

    # A rolled key: one refetch finds it; then unknown kids wait for the cool-down.
    fake.keys = [k1.jwk, k2.jwk]
    v.verify(k2.sign(), "s-1")
    assert fake.hits == 2
    for _ in range(10):
        assert code(v, TestKey("nope").sign()) == "unknown_key"
    assert fake.hits == 2
    clock.now += 31
    assert code(v, TestKey("nope").sign()) == "unknown_key"
    assert fake.hits == 3, "one refetch once the cool-down passed"


def test_cache_control_decides_how_long_a_set_is_current() -> None:
    key = TestKey("k1")
    fake, clock = FakeJwks([key.jwk], "public, max-age=0"), Clock()
    v = verifier(fake, clock)
    v.verify(key.sign(), "s-1")
    v.verify(key.sign(), "s-1")
    assert fake.hits == 2, "max-age=0: every verification refetches"
    fake.cache_control = "public, max-age=60"
    v.verify(key.sign(), "s-1")
    v.verify(key.sign(), "s-1")
    assert fake.hits == 3
    clock.now += 61
    v.verify(key.sign(), "s-1")
    assert fake.hits == 4, "refetched once no longer current"


def test_a_stale_set_serves_its_keys_for_a_bounded_time_while_fetches_fail() -> None:
    key = TestKey("k1")
    fake, clock = FakeJwks([key.jwk], "max-age=60"), Clock()
    v = verifier(fake, clock)
    v.verify(key.sign(), "s-1")
    fake.down = True
    clock.now += 61
    assert v.verify(key.sign(), "s-1"), "stale, still served"
    assert code(v, TestKey("k2").sign()) == "unknown_key"
    clock.now += LONGEST_MAX_AGE
    with pytest.raises(VerifyError) as outage:
        v.verify(key.sign(), "s-1")
    assert outage.value.code == "jwks_unavailable"
    assert outage.value.detail is not None and "503" in outage.value.detail
    fake.down = False
    assert v.verify(key.sign(), "s-1"), "back once the JWKS answers"


def test_never_fetched_is_unavailable_not_unknown() -> None:
    key = TestKey("k1")
    fake = FakeJwks([key.jwk])
    fake.down = True
    v = verifier(fake, Clock())
    assert code(v, key.sign()) == "jwks_unavailable"
    assert v.keys_age is None


def test_only_our_algorithms_keys_are_used_and_a_set_without_one_is_refused() -> None:
    key = TestKey("k1")
    fake, clock = FakeJwks([key.jwk], "max-age=0"), Clock()
    v = verifier(fake, clock)
    v.verify(key.sign(), "s-1")
    hmac = {"kty": "oct", "k": "c2VjcmV0", "kid": "k1", "alg": "HS256"}
    mislabelled = {**key.jwk, "alg": "ES256"}
    unstated = {**key.jwk, "alg": None}
    fake.keys = [hmac, mislabelled, unstated, "not a key"]  # type: ignore[list-item]
    # The refetch fails (no usable key); the last good set is kept, stale.
    assert v.verify(key.sign(), "s-1")
    assert v._config.keys.last_error == "JWKS has no usable signing key"


def test_a_huge_jwks_is_refused() -> None:
    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * (2 * 1024 * 1024))

    v = Verifier(ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(huge))
    with pytest.raises(VerifyError) as error:
        v.verify(TestKey("k1").sign(), "s-1")
    assert error.value.code == "jwks_unavailable"
    assert "larger" in str(error.value)


def test_concurrent_async_verifications_share_one_fetch() -> None:
    key = TestKey("k1")
    fake = FakeJwks([key.jwk], "max-age=300")

    async def main() -> None:
        async with AsyncVerifier(
            ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(fake)
        ) as v:
            tokens = [key.sign() for _ in range(20)]
            claims = await asyncio.gather(*(v.verify(t, "s-1") for t in tokens))
            assert len(claims) == 20
            unknown = await asyncio.gather(
                *(v.verify(TestKey("k9").sign(), "s-1") for _ in range(5)),
                return_exceptions=True,
            )
            assert {e.code for e in unknown if isinstance(e, VerifyError)} == {"unknown_key"}

    asyncio.run(main())
    assert fake.hits == 2, "one fetch, one refetch for the unknown kid"
