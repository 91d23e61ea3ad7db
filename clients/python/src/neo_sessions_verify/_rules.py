"""What a session token must be, checked in the same order and with the same answers as the Rust
crate (``clients/rust/src/claims.rs``): the header's ``typ`` and ``kid``, its ``alg`` against the
key's own, the signature, the claims' presence and types, ``exp``, ``nbf``, ``iss``, ``aud``, the
session. The shared vectors (``tests/vectors/``) pin every answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Final

from ._errors import VerifyError

#: The explicit ``typ`` of our session tokens (RFC 8725 section 3.11): no other JWT carries it.
SESSION_TOKEN_TYP: Final = "neo-session+jwt"

#: The JWS algorithms a header may name and still be a JWT (any other, ``none`` included, is not).
_KNOWN_ALGS: Final = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "ES256",
        "ES384",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
    }
)
#: The algorithms our keys sign with; a key stating any other is never used.
OUR_ALGS: Final = frozenset({"ES256", "EdDSA", "RS256"})

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_UUID_HYPHENATED: Final = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID: Final = re.compile(
    rf"{_UUID_HYPHENATED}|[0-9a-fA-F]{{32}}|\{{{_UUID_HYPHENATED}\}}|urn:uuid:{_UUID_HYPHENATED}"
)
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_U64_MAX: Final = 2**64 - 1

_HEADER_STRINGS: Final = ("typ", "cty", "jku", "kid", "x5u", "x5t", "x5t#S256", "enc")
_HEADER_STRING_LISTS: Final = ("x5c", "crit")
_CLAIM_FIELDS: Final = frozenset(
    {
        "iss",
        "aud",
        "sub",
        "jti",
        "iat",
        "nbf",
        "exp",
        "session_id",
        "client_id",
        "end_company_id",
        "end_user",
        "end_user_email",
        "allowed_agent_ids",
        "scope",
    }
)


def b64url_decode(part: str) -> bytes:
    """Unpadded base64url, strictly: no padding, no stray characters, no non-zero spare bits."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not base64url")
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error as error:
        raise ValueError("not base64url") from error
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != part:
        raise ValueError("not canonical base64url")
    return decoded


def _object_without_duplicates(names: frozenset[str] | None) -> Any:
    """A JSON object hook refusing a repeated name (of `names`, or any when None), as serde does
    for the fields of a struct."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, value in pairs:
            if name in seen and (names is None or name in names):
                raise ValueError(f"duplicate field {name}")
            seen[name] = value
        return seen

    return hook


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_object(raw: bytes, names: frozenset[str] | None) -> dict[str, Any]:
    value = json.loads(
        raw,
        object_pairs_hook=_object_without_duplicates(names),
        parse_constant=_no_constant,
    )
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _is_int(value: Any, low: int, high: int) -> bool:
    """A JSON integer (not a boolean, not a float) within [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_str_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


@dataclass(frozen=True)
class Header:
    """The parts of a token once its header has been read."""

    alg: str
    kid: str
    header: dict[str, Any]
    signing_input: bytes
    payload: str
    signature: str


_HEADER_FIELDS: Final = frozenset({"alg", "jwk", *_HEADER_STRINGS, *_HEADER_STRING_LISTS})


def read_header(token: str) -> Header:
    """The header of a token that says it is a session token, and its `kid` (the caller finds the
    key): ``malformed``, ``wrong_type`` or ``unknown_key`` (no ``kid``) otherwise."""
    parts = token.split(".")
    if len(parts) != 3:
        raise VerifyError("malformed")
    try:
        header = _load_object(b64url_decode(parts[0]), _HEADER_FIELDS)
    except ValueError as error:
        raise VerifyError("malformed") from error
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _KNOWN_ALGS:
        raise VerifyError("malformed")
    for name in _HEADER_STRINGS:
        if not _is_str_or_null(header.get(name)):
            raise VerifyError("malformed")
    for name in _HEADER_STRING_LISTS:
        value = header.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise VerifyError("malformed")
    if header.get("jwk") is not None and not isinstance(header["jwk"], dict):
        raise VerifyError("malformed")
    if header.get("typ") != SESSION_TOKEN_TYP:
        raise VerifyError("wrong_type")
    kid = header.get("kid")
    if kid is None:
        raise VerifyError("unknown_key", "no kid")
    return Header(
        alg=alg,
        kid=kid,
        header=header,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        payload=parts[1],
        signature=parts[2],
    )


def _claims_well_formed(claims: dict[str, Any]) -> bool:
    """The claims every session token carries, each of its type (what the Rust crate's
    ``SessionClaims`` accepts; further claims are ignored)."""
    for name in ("exp", "nbf"):
        if not _is_int(claims.get(name), 0, _U64_MAX):
            return False
    for name in ("iat", "nbf", "exp"):
        if not _is_int(claims.get(name), _I64_MIN, _I64_MAX):
            return False
    for name in ("iss", "aud", "sub", "session_id", "client_id", "scope"):
        if not isinstance(claims.get(name), str):
            return False
    for name in ("end_company_id", "end_user", "end_user_email"):
        if not _is_str_or_null(claims.get(name)):
            return False
    jti = claims.get("jti")
    if not (isinstance(jti, str) and _UUID.fullmatch(jti)):
        return False
    agents = claims.get("allowed_agent_ids")
    return isinstance(agents, list) and all(_is_int(a, _I64_MIN, _I64_MAX) for a in agents)


def jti_of(claims: dict[str, Any]) -> uuid.UUID:
    """The token's ``jti`` as a UUID (its claims are well formed)."""
    return uuid.UUID(str(claims["jti"]))


@dataclass(frozen=True)
class TokenRules:
    """The rules a session token of one issuer and audience must pass."""

    issuer: str
    audience: str
    #: Clock skew tolerated on ``exp`` and ``nbf``, in whole seconds.
    leeway: int

    def validate_at(
        self,
        header: Header,
        key_alg: str,
        verify_signature: Any,
        session_id: str | None,
        now: int,
    ) -> dict[str, Any]:
        """The token's claims if it passes every rule as of `now` (seconds since the epoch) with
        the key its ``kid`` names, whose own algorithm `key_alg` it must use;
        `verify_signature(signing_input, signature) -> bool` checks the signature with it."""
        if header.alg != key_alg or key_alg not in OUR_ALGS:
            raise VerifyError("algorithm_mismatch")
        try:
            signature = b64url_decode(header.signature)
        except ValueError as error:
            raise VerifyError("malformed") from error
        if not verify_signature(header.signing_input, signature):
            raise VerifyError("bad_signature")
        try:
            raw = b64url_decode(header.payload)
        except ValueError as error:
            raise VerifyError("malformed") from error
        try:
            claims = _load_object(raw, _CLAIM_FIELDS)
        except ValueError as error:
            raise VerifyError("bad_claims") from error
        if not _claims_well_formed(claims):
            raise VerifyError("bad_claims")
        # As the Rust crate compares them: expired once exp is more than the leeway past.
        if claims["exp"] < now - self.leeway:
            raise VerifyError("expired")
        if claims["nbf"] > now + self.leeway:
            raise VerifyError("not_yet_valid")
        if claims["iss"] != self.issuer:
            raise VerifyError("wrong_issuer")
        if claims["aud"] != self.audience:
            raise VerifyError("wrong_audience")
        if session_id is not None and claims["session_id"] != session_id:
            raise VerifyError("wrong_session")
        return claims
