"""The one exception a verifier raises, with the refusal's stable code."""

from __future__ import annotations

from typing import Final

#: Every code :class:`VerifyError` may carry, as the Rust crate's ``VerifyError::code`` names them.
CODES: Final = frozenset(
    {
        "malformed",
        "wrong_type",
        "unknown_key",
        "algorithm_mismatch",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "bad_claims",
        "wrong_session",
        "revoked",
        "jwks_unavailable",
        "revocation_feed_unavailable",
    }
)

_MESSAGES: Final = {
    "malformed": "not a JWT",
    "wrong_type": "not a session token (wrong typ)",
    "unknown_key": "signed by a key that is not published",
    "algorithm_mismatch": "the header's alg is not the key's algorithm",
    "bad_signature": "bad signature",
    "expired": "expired",
    "not_yet_valid": "not valid yet",
    "wrong_issuer": "issued by another issuer",
    "wrong_audience": "meant for another audience",
    "bad_claims": "claims missing or malformed",
    "wrong_session": "for another session",
    "revoked": "revoked",
    "jwks_unavailable": "the JWKS is unavailable",
    "revocation_feed_unavailable": "the revocation feed is unavailable",
}


class VerifyError(Exception):
    """Why a token was refused: do not serve the request.

    ``code`` is one of :data:`CODES`; ``detail`` says more for logs (never show it to the
    caller: it may name a key or an upstream error).
    """

    code: str
    detail: str | None

    def __init__(self, code: str, detail: str | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown VerifyError code {code!r}")
        self.code = code
        self.detail = detail
        message = _MESSAGES[code]
        super().__init__(f"{message}: {detail}" if detail else message)

    @property
    def unavailable(self) -> bool:
        """True when the verifier could not decide (the JWKS could not be had): retry later."""
        return self.code in ("jwks_unavailable", "revocation_feed_unavailable")

    def __repr__(self) -> str:
        return f"VerifyError({self.code!r}, {self.detail!r})"
