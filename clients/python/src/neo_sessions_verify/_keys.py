"""The token service's JWKS in memory, keyed by ``kid``: when to fetch it and what a fetched set
holds. The I/O is the verifiers' (sync or async); the decisions are here, as the Rust crate's
``jwks::KeySetCache`` makes them.

A fetched set is current for as long as its ``Cache-Control: max-age`` says (5 minutes without
one, a day at most). A ``kid`` the current set lacks causes a refetch at most once per cool-down.
A set that is no longer current is refetched on the next verification that needs it; while that
fails, its keys are still served for at most a day past its age, and then not at all.
"""

from __future__ import annotations

import json
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
#: The longest a set is current; and how long past that it still serves its keys while the JWKS
#: cannot be fetched.
LONGEST_MAX_AGE: Final = 24 * 3600.0
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


@dataclass
class KeySet:
    """The set held and the fetch gate's memory (callers serialise fetches with a lock)."""

    unknown_kid_cooldown: float
    stale_for: float = LONGEST_MAX_AGE
    #: After a failed fetch, a set that is not current is not fetched again for this long
    #: (0: the next verification that needs it tries again, as the Rust verifier does).
    retry: float = 0.0
    clock: Callable[[], float] = time.monotonic
    keys: dict[str, Key] = field(default_factory=dict)
    fetched_at: float | None = None
    current_for: float = 0.0
    last_error: str | None = None
    last_unknown_kid_fetch: float | None = None
    last_failed_fetch: float | None = None

    def _status(self) -> tuple[bool, bool]:
        """Whether the set is current, and whether its keys may still be served."""
        if self.fetched_at is None:
            return False, False
        age = self.clock() - self.fetched_at
        return age < self.current_for, age < self.current_for + self.stale_for

    def current_key(self, kid: str) -> Key | None:
        """The key if a current set holds it: no fetch needed."""
        current, _ = self._status()
        return self.keys.get(kid) if current else None

    def needs_fetch(self, kid: str) -> bool:
        """Whether to fetch before answering for `kid` (under the fetch lock; records the
        unknown-kid fetch it allows)."""
        if self.current_key(kid) is not None:
            return False
        now = self.clock()

        def recently(at: float | None, period: float) -> bool:
            return at is not None and now - at < period

        current, _ = self._status()
        if current:
            if recently(self.last_unknown_kid_fetch, self.unknown_kid_cooldown):
                return False
            self.last_unknown_kid_fetch = now
            return True
        return not recently(self.last_failed_fetch, self.retry)

    def fetched(self, keys: dict[str, Key], current_for: float) -> None:
        """A fetch succeeded: its set replaces the old one (rolled-over keys go)."""
        self.keys, self.current_for = keys, current_for
        self.fetched_at = self.clock()
        self.last_error = None
        self.last_failed_fetch = None

    def failed(self, error: str) -> None:
        self.last_error = error
        self.last_failed_fetch = self.clock()

    def lookup(self, kid: str) -> Key:
        """The key for `kid` from the set held, fetching nothing: ``unknown_key`` when a set that
        may be served lacks it, ``jwks_unavailable`` when none may be."""
        _, servable = self._status()
        if not servable:
            raise VerifyError("jwks_unavailable", self.last_error or "no key set held")
        key = self.keys.get(kid)
        if key is None:
            raise VerifyError("unknown_key", kid)
        return key

    def age(self) -> float | None:
        """Seconds since the set held was fetched (None: none held)."""
        return None if self.fetched_at is None else self.clock() - self.fetched_at
