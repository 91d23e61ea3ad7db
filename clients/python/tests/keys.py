"""Keys and tokens for the unit tests (the vectors and the real service cover the rest)."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = "https://api.example"
AUDIENCE = "https://api.example/chat"
JWKS_URL = "https://tokens.test/.well-known/jwks.json"
FEED_URL = "https://tokens.test/public-api/sessions/revocations"


class TestKey:
    """An Ed25519 key pair, its public JWK, and tokens signed with it."""

    __test__ = False

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes_raw()
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}

    def sign(self, **changes: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "pat",
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "session_id": "s-1",
            "client_id": "acme",
            "end_company_id": None,
            "end_user": "pat",
            "end_user_email": None,
            "allowed_agent_ids": [7],
            "scope": "chat:session",
        }
        claims.update(changes)
        return jwt.encode(
            claims,
            self.private,
            algorithm="EdDSA",
            headers={"kid": self.kid, "typ": "neo-session+jwt"},
        )


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
