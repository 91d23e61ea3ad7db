"""Verifies neo-sessions session tokens offline, in the service that serves the chat (or any
other): the token service's JWKS, the claims, the session binding and the revocation feed, with
the same checks and answers as the Rust crate ``neo-sessions-verify``.

    from neo_sessions_verify import Verifier, VerifyError
    v = Verifier(issuer="https://api.neoagent.io", audience="https://api.neoagent.io/chat",
                 jwks_url="https://api.neoagent.io/.well-known/jwks.json",
                 revocations_api_key="neo_sk_live_...", revocations_interval=5.0)
    claims = v.verify(token, session_id="s-acme-1")   # or raises VerifyError

``AsyncVerifier`` is the same for asyncio; ``neo_sessions_verify.fastapi`` holds a FastAPI
dependency (install the ``[fastapi]`` extra).
"""

from ._errors import CODES, VerifyError
from ._rules import SESSION_TOKEN_TYP
from ._verifier import AsyncVerifier, Verifier

__all__ = ["CODES", "SESSION_TOKEN_TYP", "AsyncVerifier", "Verifier", "VerifyError"]
