"""The token service's JWKS in memory, keyed by ``kid``: when to fetch it and what a fetched set
holds. The I/O is the verifiers' (a thread or a task per fetch); the decisions are here, as the
Rust crate's ``jwks::KeySetCache`` makes them.

A fetched set is current for as long as its ``Cache-Control: max-age`` says (5 minutes without
one, a day at most). Past that it is stale: for a bounded ``stale_for`` (1 hour) its keys are
still served at once while one refresh runs in the background; then they are not served at all
(``jwks_unavailable``). A ``kid`` the set lacks causes a refetch at most once per cool-down, and
the caller waits for it. Fetches are single-flight; after a failure no fetch starts for a
back-off that doubles with each consecutive failure, from 1 s up to 60 s, with jitter; a success
ends it.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import jwt

from ._errors import VerifyError
from ._rules import OUR_ALGS

#: Used when the JWKS response says nothing about caching.
DEFAULT_MAX_AGE: Final = 300.0
#: The longest a set is current, whatever the response says.
LONGEST_MAX_AGE: Final = 24 * 3600.0
#: How long past its max-age a set is still trusted while it cannot be refreshed (default).
DEFAULT_JWKS_STALE_FOR: Final = 3600.0
#: The first back-off after a failed fetch; it doubles with each further failure...
JWKS_RETRY: Final = 1.0
#: ...up to this (with jitter).
JWKS_RETRY_CAP: Final = 60.0

CURRENT: Final = "current"
#: Past its max-age, within ``stale_for``: served, and refreshed in the background.
STALE: Final = "stale"
#: None held, or past ``stale_for``: not served.
UNTRUSTED: Final = "untrusted"

#: Why a fetch is wanted (an unknown kid has a cool-down of its own).
REFRESH: Final = "refresh"
UNKNOWN_KID: Final = "unknown_kid"
#: A JWKS larger than this is refused rather than parsed.
MAX_JWKS_BYTES: Final = 1024 * 1024

_MAX_AGE: Final = re.compile(r"\+?[0-9]+")
#: The curve each of our algorithms' keys is on (RSA keys have none).
_CURVES: Final = {"ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519"), "RS256": ("RSA", None)}


class FetchError(Exception):
    """Why one fetch of the JWKS failed (kept as text for ``jwks_unavailable``)."""


@dataclass(frozen=True)
class Key:
    """One usable key: the algorithm it verifies (the key's own, never a token header's)."""

    alg: str
    verify: Callable[[bytes, bytes], bool]


def max_age(cache_control: str | None) -> float | None:
    """``max-age=N`` of a ``Cache-Control`` value."""
    for directive in (cache_control or "").split(","):
        directive = directive.strip()
        if directive.startswith("max-age="):
            seconds = directive[len("max-age=") :].strip()
            if _MAX_AGE.fullmatch(seconds):
                return float(int(seconds))
    return None


def _usable(jwk: Any) -> tuple[str, Key] | None:
    """The key of a JWK we sign with, as the JWK states its algorithm; None for any other."""
    if not isinstance(jwk, dict):
        return None
    alg, kid = jwk.get("alg"), jwk.get("kid")
    if alg not in OUR_ALGS or not isinstance(kid, str):
        return None
    kty, crv = _CURVES[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        return None
    try:
        parsed = jwt.PyJWK(jwk, algorithm=alg)
    except Exception:  # noqa: BLE001 - any JWK the library cannot load is simply not used
        return None
    algorithm, public = parsed.Algorithm, parsed.key

    def verify(message: bytes, signature: bytes) -> bool:
        try:
            return bool(algorithm.verify(message, public, signature))
        except Exception:  # noqa: BLE001 - a signature the library cannot read is a bad one
            return False

    return kid, Key(alg=alg, verify=verify)


def parse_key_set(cache_control: str | None, body: bytes) -> tuple[dict[str, Key], float]:
    """The usable keys of a JWKS response and how long they are current."""
    current_for = min(
        (age if (age := max_age(cache_control)) is not None else DEFAULT_MAX_AGE),
        LONGEST_MAX_AGE,
    )
    try:
        document = json.loads(body)
    except ValueError as error:
        raise FetchError(f"JWKS is not a JWK set: {error}") from error
    jwks = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(jwks, list):
        raise FetchError("JWKS is not a JWK set: no keys")
    keys = dict(usable for jwk in jwks if (usable := _usable(jwk)) is not None)
    if not keys:
        raise FetchError("JWKS has no usable signing key")
    return keys, current_for


def back_off(retry: float, cap: float, failures: int) -> float:
    """The wait after `failures` consecutive failed fetches: doubling from `retry`, at most
    `cap`, the upper half of that at random, never less than `retry`."""
    ceiling = min(retry * float(2 ** min(max(failures - 1, 0), 16)), max(cap, retry))
    return max(ceiling / 2 + ceiling / 2 * random.random(), retry)


@dataclass
class KeySet:
    """The set held and the fetch flight's memory; callers hold a lock around ``start``."""

    unknown_kid_cooldown: float
    stale_for: float = DEFAULT_JWKS_STALE_FOR
    retry: float = JWKS_RETRY
    retry_cap: float = JWKS_RETRY_CAP
    clock: Callable[[], float] = time.monotonic
    keys: dict[str, Key] = field(default_factory=dict)
    fetched_at: float | None = None
    current_for: float = 0.0
    last_error: str | None = None
    running: bool = False
    last_unknown_kid_fetch: float | None = None
    #: Failed fetches since the last success.
    failures: int = 0
    #: After a failure: no fetch starts before this.
    not_before: float | None = None

    def freshness(self) -> str:
        if self.fetched_at is None:
            return UNTRUSTED
        age = self.clock() - self.fetched_at
        if age < self.current_for:
            return CURRENT
        if age < self.current_for + self.stale_for:
            return STALE
        return UNTRUSTED

    def cached(self, kid: str) -> tuple[Key | None, str]:
        """The key held for `kid` if the set may be served, and how far the set is trusted."""
        freshness = self.freshness()
        return (None if freshness == UNTRUSTED else self.keys.get(kid)), freshness

    def start(self, want: str) -> bool:
        """Whether a fetch for `want` may start now (then it is running): not while one runs,
        within the back-off, or (for an unknown kid) within the cool-down."""
        if self.running:
            return False
        now = self.clock()
        if self.not_before is not None and now < self.not_before:
            return False
        if want == UNKNOWN_KID:
            last = self.last_unknown_kid_fetch
            if last is not None and now - last < self.unknown_kid_cooldown:
                return False
            self.last_unknown_kid_fetch = now
        self.running = True
        return True

    def fetched(self, keys: dict[str, Key], current_for: float) -> None:
        """A fetch succeeded: its set replaces the old one (rolled-over keys go)."""
        self.keys, self.current_for = keys, current_for
        self.fetched_at = self.clock()
        self.last_error = None
        self.failures = 0
        self.not_before = None

    def failed(self, error: str) -> float:
        """A fetch failed: the set held is kept; returns the back-off."""
        self.last_error = error
        self.failures += 1
        wait = back_off(self.retry, self.retry_cap, self.failures)
        self.not_before = self.clock() + wait
        return wait

    def lookup(self, kid: str) -> Key:
        """The key for `kid` from the set held, fetching nothing: ``unknown_key`` when a set that
        may be served lacks it, ``jwks_unavailable`` when none may be."""
        key, freshness = self.cached(kid)
        if freshness == UNTRUSTED:
            raise VerifyError("jwks_unavailable", self.unavailable_reason())
        if key is None:
            raise VerifyError("unknown_key", kid)
        return key

    def unavailable_reason(self) -> str:
        """How old the set held is (or that none was fetched) and why the last fetch failed."""
        if self.fetched_at is None:
            held = "no key set fetched yet"
        else:
            held = (
                f"the key set held is {self.clock() - self.fetched_at:.1f} s old, past the "
                f"{self.current_for + self.stale_for:.1f} s it is trusted without a refresh"
            )
        return f"{held}; last fetch: {self.last_error}" if self.last_error else held

    def age(self) -> float | None:
        """Seconds since the set held was fetched (None: none held)."""
        return None if self.fetched_at is None else self.clock() - self.fetched_at
