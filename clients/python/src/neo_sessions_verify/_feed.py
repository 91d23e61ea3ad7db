"""The revocation feed (``GET /public-api/sessions/revocations``) read into a deny-list: each
revoked ``jti`` kept until its token expires, the feed followed by its opaque ``next_cursor``
(which delivers every revocation, however late it commits), as the Rust crate does.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from ._rules import _UUID

#: Pages read in one refresh at most (1000 revocations each).
MAX_FEED_PAGES: Final = 100

_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)


class FeedError(Exception):
    """Why the feed could not be read."""


def parse_time(text: Any) -> datetime:
    """An RFC 3339 time as the server writes it (nanoseconds allowed), in UTC."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise FeedError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        at = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=timezone.utc,
        )
    except ValueError as error:
        raise FeedError(f"not an RFC 3339 time: {text!r}") from error
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        at -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    return at


@dataclass(frozen=True)
class Page:
    revoked: list[tuple[uuid.UUID, datetime]]
    next_cursor: str
    has_more: bool


def parse_page(body: Any) -> Page:
    """One answer of the feed, in the success envelope (its ``meta`` is not read)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise FeedError("no data in the feed's answer")
    entries, cursor, has_more = data.get("revocations"), data.get("next_cursor"), data.get("has_more")
    if not isinstance(entries, list) or not isinstance(cursor, str) or not isinstance(has_more, bool):
        raise FeedError("the feed's answer lacks revocations, next_cursor or has_more")
    revoked = []
    for entry in entries:
        jti = entry.get("jti") if isinstance(entry, dict) else None
        if not (isinstance(jti, str) and _UUID.fullmatch(jti)):
            raise FeedError(f"a revoked jti is not a UUID: {jti!r}")
        revoked.append((uuid.UUID(jti), parse_time(entry.get("expires_at"))))
    return Page(revoked=revoked, next_cursor=cursor, has_more=has_more)


@dataclass
class DenyList:
    """The revoked jtis held, each until its token expires, and where the feed was left."""

    revoked: dict[uuid.UUID, datetime] = field(default_factory=dict)
    #: Where the feed goes on (``next_cursor``); None before the first page.
    cursor: str | None = None
    refreshed_at: float | None = None

    def add(self, page: Page) -> None:
        now = datetime.now(timezone.utc)
        for jti, expires_at in page.revoked:
            if expires_at > now:
                self.revoked[jti] = expires_at
        self.cursor = page.next_cursor

    def read_to_end(self, leeway: float) -> int:
        """The feed was read to its end: drop the entries whose tokens have expired (past the
        leeway a verifier still accepts them for). Returns how many are held."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=leeway)
        self.revoked = {jti: at for jti, at in self.revoked.items() if at > cutoff}
        self.refreshed_at = time.monotonic()
        return len(self.revoked)

    def age(self) -> float | None:
        return None if self.refreshed_at is None else time.monotonic() - self.refreshed_at
