"""A FastAPI dependency guarding ``/chat/sessions/{session_id}/...`` with a session token
(``pip install 'neo-sessions-verify[fastapi]'``).

    from fastapi import Depends, FastAPI
    from neo_sessions_verify import AsyncVerifier
    from neo_sessions_verify.fastapi import install, lifespan, session_token

    verifier = AsyncVerifier(issuer=..., audience=..., revocations_api_key=...)
    app = FastAPI(lifespan=lifespan(verifier))  # polls the revocation feed while the app runs
    install(app)                                # refusals in the token service's envelope
    SessionToken = session_token(verifier)

    @app.get("/chat/sessions/{session_id}/messages")
    async def messages(session_id: str, claims: dict = Depends(SessionToken)) -> dict: ...

Refusals are answered as the token service answers them (``docs/api.md``): the envelope
``{"error": {"code", "message"}, "meta": {"request_id"}}`` with ``Cache-Control: no-store`` and

- 401 ``missing_credentials`` without ``Authorization: Bearer``;
- 401 ``invalid_credentials`` for a token that is not a valid session token (forged, expired,
  revoked, of another issuer or audience, ...), with
  ``WWW-Authenticate: Bearer realm="...", error="invalid_token"``; why is logged, not told;
- 403 ``forbidden`` for a valid token of another session (``details.reason: wrong_session``);
- 503 ``jwks_unavailable`` (``Retry-After``) while no key set can be had: the token may be good.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ._errors import VerifyError
from ._verifier import AsyncVerifier, Verifier

log = logging.getLogger("neo_sessions_verify")

_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)
#: Seconds a client is told to wait while the JWKS cannot be had.
RETRY_AFTER_SECONDS = 5


class SessionTokenRefused(Exception):
    """Raised by the dependency; :func:`install` renders it as the token service would."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def _request_id(request: Request) -> str:
    """The incoming ``X-Request-Id`` when it is a UUID (as the token service keeps it), else a
    new one."""
    incoming = request.headers.get("x-request-id", "")
    try:
        return str(uuid.UUID(incoming)) if len(incoming) == 36 else str(uuid.uuid4())
    except ValueError:
        return str(uuid.uuid4())


def error_response(request: Request, refused: SessionTokenRefused) -> JSONResponse:
    """The token service's error envelope for `refused`."""
    request_id = _request_id(request)
    error: dict[str, Any] = {"code": refused.code, "message": refused.message}
    if refused.details is not None:
        error["details"] = refused.details
    headers = {"cache-control": "no-store", "x-request-id": request_id, **refused.headers}
    return JSONResponse(
        {"error": error, "meta": {"request_id": request_id}},
        status_code=refused.status,
        headers=headers,
    )


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, SessionTokenRefused):  # pragma: no cover - registered for it alone
        raise exc
    return error_response(request, exc)


def install(app: FastAPI) -> None:
    """Renders the dependency's refusals in the token service's envelope. Without it FastAPI
    answers them 500."""
    app.add_exception_handler(SessionTokenRefused, _handle)


def lifespan(
    verifier: AsyncVerifier | Verifier,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI ``lifespan`` that polls the revocation feed while the app runs and closes the
    verifier when it stops."""

    @asynccontextmanager
    async def run(_: FastAPI) -> AsyncIterator[None]:
        if isinstance(verifier, AsyncVerifier):
            verifier.start()
        try:
            yield
        finally:
            if isinstance(verifier, AsyncVerifier):
                await verifier.aclose()
            else:
                verifier.close()

    return run


def refusal(error: VerifyError, realm: str = "neo-sessions") -> SessionTokenRefused:
    """How a service answers a token `error` refused."""
    if error.code == "jwks_unavailable":
        return SessionTokenRefused(
            503,
            "jwks_unavailable",
            "The token service's signing keys are unavailable; retry later.",
            headers={"retry-after": str(RETRY_AFTER_SECONDS)},
        )
    if error.code == "wrong_session":
        return SessionTokenRefused(
            403,
            "forbidden",
            "The session token is for another session.",
            details={"reason": "wrong_session"},
        )
    return SessionTokenRefused(
        401,
        "invalid_credentials",
        "The bearer credentials are invalid.",
        headers={"www-authenticate": f'Bearer realm="{realm}", error="invalid_token"'},
    )


def session_token(
    verifier: AsyncVerifier | Verifier,
    *,
    path_param: str = "session_id",
    realm: str = "neo-sessions",
) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    """A dependency answering the claims of the request's session token, which must be valid and
    for the session named by the path parameter `path_param`; refused otherwise (see the module
    docs; call :func:`install` on the app once)."""

    async def dependency(request: Request) -> dict[str, Any]:
        session_id = request.path_params.get(path_param)
        if not isinstance(session_id, str):
            raise RuntimeError(f"the route has no path parameter {path_param!r}")
        if len(request.headers.getlist("authorization")) > 1:
            raise refusal(VerifyError("malformed", "more than one Authorization header"), realm)
        match = _BEARER.fullmatch(request.headers.get("authorization", ""))
        if match is None:
            raise SessionTokenRefused(
                401,
                "missing_credentials",
                "Missing bearer credentials.",
                headers={"www-authenticate": f'Bearer realm="{realm}"'},
            )
        try:
            if isinstance(verifier, AsyncVerifier):
                return await verifier.verify(match.group(1), session_id)
            return await run_in_threadpool(verifier.verify, match.group(1), session_id)
        except VerifyError as error:
            log.info("session token refused on %s: %s", request.url.path, error)
            raise refusal(error, realm) from error

    return dependency
