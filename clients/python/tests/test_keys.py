"""The key set, as the Rust crate keeps it: cached as its Cache-Control says; a stale set served
at once while one refresh runs in the background, for at most `jwks_stale_for`; an unknown kid
refetched at most once per cool-down; single-flight fetches; a back-off after failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from neo_sessions_verify import AsyncVerifier, Verifier, VerifyError
from neo_sessions_verify._keys import back_off, max_age

from .conftest import FakeJwks
from .keys import AUDIENCE, ISSUER, JWKS_URL, Clock, TestKey


def verifier(fake: FakeJwks, clock: Clock, **settings: Any) -> Verifier:
    made = Verifier(
        ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(fake), **settings
    )
    made._config.keys.clock = clock
    return made


def settled(v: Verifier) -> None:
    """Waits for the background fetch under way, if any."""
    flight = v._flight
    if flight is not None:
        assert flight.wait(10)


def code(v: Verifier, token: str, session: str = "s-1") -> str:
    with pytest.raises(VerifyError) as error:
        v.verify(token, session)
    return error.value.code


def test_max_age_is_read_from_cache_control_and_the_back_off_grows_to_its_cap() -> None:
    assert max_age("public, max-age=300") == 300
    assert max_age("no-cache") is None
    assert max_age("max-age=-5") is None
    assert back_off(1.0, 60.0, 1) == 1.0
    assert all(2.0 <= back_off(1.0, 60.0, 3) <= 4.0 for _ in range(100))
    assert all(30.0 <= back_off(1.0, 60.0, 30) <= 60.0 for _ in range(100))


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


def test_a_stale_set_is_served_at_once_and_refreshed_in_the_background() -> None:
    k1, k2 = TestKey("k1"), TestKey("k2")
    fake, clock = FakeJwks([k1.jwk], "public, max-age=60"), Clock()
    v = verifier(fake, clock)
    v.verify(k1.sign(), "s-1")
    v.verify(k1.sign(), "s-1")
    assert fake.hits == 1, "current after one fetch"
    fake.keys = [k2.jwk]
    clock.now += 61
    assert v.verify(k1.sign(), "s-1"), "stale: served from memory"
    settled(v)
    assert fake.hits == 2, "and refreshed once in the background"
    assert code(v, k1.sign()) == "unknown_key", "the refreshed set no longer holds k1"
    assert v.verify(k2.sign(), "s-1")


def test_while_the_jwks_fails_a_stale_set_is_trusted_for_a_bounded_time_and_fetches_back_off() -> None:
    key = TestKey("k1")
    fake, clock = FakeJwks([key.jwk], "max-age=60"), Clock()
    v = verifier(fake, clock, jwks_stale_for=600)
    v.verify(key.sign(), "s-1")
    fake.down = True
    clock.now += 61
    assert v.verify(key.sign(), "s-1"), "stale, still served"
    settled(v)
    assert fake.hits == 2
    for _ in range(10):
        assert v.verify(key.sign(), "s-1")
    assert code(v, TestKey("k2").sign()) == "unknown_key"
    assert fake.hits == 2, "no fetch within the back-off"

    clock.now += 600
    with pytest.raises(VerifyError) as outage:
        v.verify(key.sign(), "s-1")
    assert outage.value.code == "jwks_unavailable"
    assert outage.value.detail is not None
    assert "661.0 s old, past the 660.0 s" in outage.value.detail and "503" in outage.value.detail
    fake.down = False
    assert code(v, key.sign()) == "jwks_unavailable", "the back-off holds the next fetch"
    clock.now += 61
    assert v.verify(key.sign(), "s-1"), "back once the JWKS answers"


def test_never_fetched_is_unavailable_not_unknown() -> None:
    key = TestKey("k1")
    fake = FakeJwks([key.jwk])
    fake.down = True
    v = verifier(fake, Clock())
    with pytest.raises(VerifyError) as outage:
        v.verify(key.sign(), "s-1")
    assert outage.value.code == "jwks_unavailable"
    assert outage.value.detail == "no key set fetched yet; last fetch: JWKS answered 503"
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
    # The refresh fails (no usable key); the last good set is kept, stale.
    assert v.verify(key.sign(), "s-1")
    settled(v)
    assert v._config.keys.last_error == "JWKS has no usable signing key"
    assert v.verify(key.sign(), "s-1")


def test_a_huge_jwks_is_refused() -> None:
    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * (2 * 1024 * 1024))

    v = Verifier(ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(huge))
    with pytest.raises(VerifyError) as error:
        v.verify(TestKey("k1").sign(), "s-1")
    assert error.value.code == "jwks_unavailable"
    assert "larger" in str(error.value)


def test_a_hanging_jwks_does_not_hold_up_verifications_with_a_held_key() -> None:
    key = TestKey("k1")
    fake = FakeJwks([key.jwk], "max-age=0")
    release = asyncio.Event()

    async def hanging(request: httpx.Request) -> httpx.Response:
        if fake.hits >= 1:
            fake.hits += 1
            await release.wait()
            return httpx.Response(200, json={"keys": fake.keys})
        return fake(request)

    async def main() -> None:
        async with AsyncVerifier(
            ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(hanging)
        ) as v:
            await v.verify(key.sign(), "s-1")
            started = time.monotonic()
            claims = await asyncio.wait_for(
                asyncio.gather(*(v.verify(key.sign(), "s-1") for _ in range(32))), 5
            )
            assert len(claims) == 32 and time.monotonic() - started < 5
            assert fake.hits == 2, "one refresh in flight for 32 verifications"
            release.set()

    asyncio.run(main())


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
