"""The revocation feed: followed by its cursor page after page, each revoked jti kept until its
token expires, the deny-list kept and applied while the feed is down."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from neo_sessions_verify import Verifier, VerifyError
from neo_sessions_verify._feed import parse_time

from .conftest import FakeJwks
from .keys import AUDIENCE, FEED_URL, ISSUER, JWKS_URL, TestKey


def stamp(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%S.%f123Z")


class FakeFeed:
    """Pages keyed by the cursor asked for (None: the first poll); 503 while down."""

    def __init__(self, jwks: FakeJwks) -> None:
        self.jwks = jwks
        self.pages: dict[str | None, dict[str, Any]] = {}
        self.asked: list[str | None] = []
        self.auth: list[str | None] = []
        self.down = False

    def page(self, cursor: str | None, jtis: list[tuple[str, timedelta]], then: str, more: bool) -> None:
        self.pages[cursor] = {
            "data": {
                "revocations": [
                    {"jti": jti, "expires_at": stamp(left), "revoked_at": stamp(timedelta())}
                    for jti, left in jtis
                ],
                "next_cursor": then,
                "next_since": stamp(timedelta()),
                "next_after": None,
                "has_more": more,
            },
            "meta": {"request_id": str(uuid.uuid4())},
        }

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("jwks.json"):
            return self.jwks(request)
        cursor = request.url.params.get("cursor")
        self.asked.append(cursor)
        self.auth.append(request.headers.get("authorization"))
        if self.down:
            return httpx.Response(503)
        page = self.pages.get(cursor)
        if page is None:  # at the end: nothing new, same cursor
            return httpx.Response(
                200,
                json={
                    "data": {
                        "revocations": [],
                        "next_cursor": cursor,
                        "next_since": stamp(timedelta()),
                        "next_after": None,
                        "has_more": False,
                    }
                },
            )
        return httpx.Response(200, json=page)


def test_the_feed_is_followed_by_its_cursor_and_revoked_tokens_are_refused() -> None:
    key = TestKey("k1")
    feed = FakeFeed(FakeJwks([key.jwk]))
    revoked_jti, later_jti, expired_jti = (str(uuid.uuid4()) for _ in range(3))
    feed.page(None, [(revoked_jti.upper(), timedelta(minutes=10))], "c1", True)
    feed.page("c1", [(expired_jti, timedelta(minutes=-10))], "c2", False)
    v = Verifier(
        ISSUER,
        AUDIENCE,
        jwks_url=JWKS_URL,
        revocations_url=FEED_URL,
        revocations_api_key="neo_sk_test_feed",
        poll_revocations=False,
        transport=httpx.MockTransport(feed),
    )
    assert v.revocations_age is None
    assert v.refresh_revocations() == 1, "the expired one is not kept"
    assert feed.asked == [None, "c1"], "has_more: the next page at once, with next_cursor"
    assert feed.auth == ["Bearer neo_sk_test_feed"] * 2
    with pytest.raises(VerifyError) as error:
        v.verify(key.sign(jti=revoked_jti), "s-1")
    assert error.value.code == "revoked"
    assert v.verify(key.sign(jti=later_jti), "s-1")

    # The next poll goes on from where the last left off, and a revocation that commits late
    # (on the feed after c2) is still delivered.
    feed.page("c2", [(later_jti, timedelta(minutes=10))], "c3", False)
    assert v.refresh_revocations() == 2
    assert feed.asked[2:] == ["c2"]
    with pytest.raises(VerifyError):
        v.verify(key.sign(jti=later_jti), "s-1")

    # Down: the refresh fails, the deny-list held is still applied.
    feed.down = True
    with pytest.raises(VerifyError) as outage:
        v.refresh_revocations()
    assert outage.value.code == "revocation_feed_unavailable"
    with pytest.raises(VerifyError):
        v.verify(key.sign(jti=revoked_jti), "s-1")
    assert v.revocations_age is not None


def test_without_a_feed_nothing_is_refused_as_revoked() -> None:
    key = TestKey("k1")
    v = Verifier(ISSUER, AUDIENCE, jwks_url=JWKS_URL, transport=httpx.MockTransport(FakeJwks([key.jwk])))
    assert v.refresh_revocations() == 0
    assert v.verify(key.sign(), "s-1")


def test_feed_times_are_read_as_the_server_writes_them() -> None:
    assert parse_time("2026-12-02T10:00:00.123456789Z") == datetime(
        2026, 12, 2, 10, 0, 0, 123456, tzinfo=timezone.utc
    )
    assert parse_time("2026-12-02T12:00:00+02:00") == datetime(2026, 12, 2, 10, tzinfo=timezone.utc)
