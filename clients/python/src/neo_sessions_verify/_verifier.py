"""`Verifier` (threads) and `AsyncVerifier` (asyncio): our session tokens checked offline against
the token service's JWKS, and the revocation feed polled in the background into a deny-list."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from datetime import datetime
from typing import Any

import httpx

from ._errors import VerifyError
from ._feed import MAX_FEED_PAGES, DenyList, FeedError, parse_page
from ._keys import (
    DEFAULT_JWKS_STALE_FOR,
    MAX_JWKS_BYTES,
    REFRESH,
    STALE,
    UNKNOWN_KID,
    UNTRUSTED,
    FetchError,
    Key,
    KeySet,
    parse_key_set,
)
from ._rules import Header, TokenRules, jti_of, read_header

log = logging.getLogger("neo_sessions_verify")

Claims = dict[str, Any]


def _seconds(at: datetime | float) -> int:
    """Whole seconds since the epoch (as the Rust crate counts them)."""
    return math.floor(at.timestamp() if isinstance(at, datetime) else at)


class _Config:
    """What both verifiers are told, and the state they share the rules of."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str | None = None,
        leeway: float = 30.0,
        unknown_kid_cooldown: float = 30.0,
        jwks_stale_for: float = DEFAULT_JWKS_STALE_FOR,
        http_timeout: float = 5.0,
        revocations_url: str | None = None,
        revocations_api_key: str | None = None,
        revocations_interval: float = 5.0,
    ) -> None:
        base = issuer.rstrip("/")
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url or f"{base}/.well-known/jwks.json"
        self.leeway = int(leeway)
        self.http_timeout = http_timeout
        self.revocations_url = revocations_url or f"{base}/public-api/sessions/revocations"
        self.revocations_api_key = revocations_api_key
        self.revocations_interval = revocations_interval
        self.rules = TokenRules(issuer=issuer, audience=audience, leeway=self.leeway)
        self.keys = KeySet(unknown_kid_cooldown=unknown_kid_cooldown, stale_for=jwks_stale_for)
        self.deny = DenyList()

    @property
    def has_feed(self) -> bool:
        return self.revocations_api_key is not None

    def check(self, header: Header, key: Key, session_id: str, now: int) -> Claims:
        claims = self.rules.validate_at(header, key.alg, key.verify, session_id, now)
        if jti_of(claims) in self.deny.revoked:
            raise VerifyError("revoked")
        return claims

    def feed_request(self) -> tuple[dict[str, str], dict[str, str]]:
        params = {} if self.deny.cursor is None else {"cursor": self.deny.cursor}
        return {"authorization": f"Bearer {self.revocations_api_key}"}, params


def _jwks_answer(response: httpx.Response) -> None:
    if not response.is_success:
        raise FetchError(f"JWKS answered {response.status_code}")
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_JWKS_BYTES:
        raise FetchError(f"JWKS is larger than {MAX_JWKS_BYTES} bytes")


def _add_chunk(body: bytearray, chunk: bytes) -> None:
    if len(body) + len(chunk) > MAX_JWKS_BYTES:
        raise FetchError(f"JWKS is larger than {MAX_JWKS_BYTES} bytes")
    body.extend(chunk)


def _failed(keys: KeySet, error: Exception, lock: threading.Lock | None) -> None:
    message = str(error) if isinstance(error, FetchError) else f"JWKS request failed: {error}"
    if lock is None:
        wait = keys.failed(message)
    else:
        with lock:
            wait = keys.failed(message)
    log.warning(
        "session-token JWKS fetch failed (%d in a row, next in %.1f s at the earliest); "
        "the key set held is kept: %s",
        keys.failures,
        wait,
        message,
    )


def _feed_page(response: httpx.Response) -> Any:
    if not response.is_success:
        raise FeedError(f"answered {response.status_code}")
    try:
        return response.json()
    except ValueError as error:
        raise FeedError(f"not JSON: {error}") from error


class Verifier:
    """Verifies session tokens in a threaded (or plain synchronous) service.

    With ``revocations_api_key`` (an API key that may read the revocation feed), a daemon thread
    polls the feed every ``revocations_interval`` seconds from construction until :meth:`close`
    (or pass ``poll_revocations=False`` and call :meth:`refresh_revocations` yourself). A revoked
    token is refused at most one interval (plus a request) after its revocation.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str | None = None,
        leeway: float = 30.0,
        unknown_kid_cooldown: float = 30.0,
        jwks_stale_for: float = DEFAULT_JWKS_STALE_FOR,
        http_timeout: float = 5.0,
        revocations_url: str | None = None,
        revocations_api_key: str | None = None,
        revocations_interval: float = 5.0,
        poll_revocations: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = _Config(
            issuer,
            audience,
            jwks_url=jwks_url,
            leeway=leeway,
            unknown_kid_cooldown=unknown_kid_cooldown,
            jwks_stale_for=jwks_stale_for,
            http_timeout=http_timeout,
            revocations_url=revocations_url,
            revocations_api_key=revocations_api_key,
            revocations_interval=revocations_interval,
        )
        self._client = httpx.Client(
            timeout=http_timeout, follow_redirects=False, transport=transport
        )
        self._fetching = threading.Lock()
        self._flight: threading.Event | None = None
        self._refreshing = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if self._config.has_feed and poll_revocations:
            self._poller = threading.Thread(
                target=_poll_in_thread,
                args=(weakref.ref(self), self._stop, revocations_interval),
                name="neo-sessions-revocations",
                daemon=True,
            )
            self._poller.start()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops polling and closes the HTTP client."""
        self._stop.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=self._config.http_timeout + 1)
        self._client.close()

    def verify(self, token: str, session_id: str) -> Claims:
        """The token's claims if it is a valid session token of ours for `session_id`; raises
        :class:`VerifyError` otherwise."""
        return self.verify_at(token, session_id, time.time())

    def verify_at(self, token: str, session_id: str, at: datetime | float) -> Claims:
        """:meth:`verify` with ``exp`` and ``nbf`` compared with `at` (a datetime or seconds since
        the epoch) instead of the clock; the key set and revocations are as of now. For the
        shared test vectors and for replaying a decision."""
        header = read_header(token)
        key = self._key(header.kid)
        return self._config.check(header, key, session_id, _seconds(at))

    def _key(self, kid: str) -> Key:
        """A current set answers from memory; a stale one too, with a refresh started in the
        background. Waits for a fetch only when no set may be served, or the set lacks `kid`."""
        keys = self._config.keys
        key, freshness = keys.cached(kid)
        if freshness == STALE:
            self._start_fetch(REFRESH)
        if key is not None:
            return key
        done = self._start_fetch(REFRESH if freshness == UNTRUSTED else UNKNOWN_KID)
        if done is not None:
            done.wait()
        return keys.lookup(kid)

    def _start_fetch(self, want: str) -> threading.Event | None:
        """Joins the fetch under way, or starts one in a thread of its own when `want` allows it
        now; None when no fetch runs. The event is set when the fetch has ended."""
        with self._fetching:
            if self._flight is None:
                if not self._config.keys.start(want):
                    return None
                self._flight = threading.Event()
                threading.Thread(
                    target=self._fetch_keys, name="neo-sessions-jwks", daemon=True
                ).start()
            return self._flight

    def _fetch_keys(self) -> None:
        try:
            self._fetch_once()
        finally:
            with self._fetching:
                flight, self._flight = self._flight, None
                self._config.keys.running = False
            if flight is not None:
                flight.set()

    def _fetch_once(self) -> None:
        keys = self._config.keys
        try:
            with self._client.stream("GET", self._config.jwks_url) as response:
                _jwks_answer(response)
                body = bytearray()
                for chunk in response.iter_bytes():
                    _add_chunk(body, chunk)
                cache_control = response.headers.get("cache-control")
            parsed = parse_key_set(cache_control, bytes(body))
        except (FetchError, httpx.HTTPError) as error:
            _failed(keys, error, self._fetching)
            return
        with self._fetching:
            keys.fetched(*parsed)
        log.info("fetched the session-token JWKS (%d keys)", len(parsed[0]))

    def refresh_revocations(self) -> int:
        """Reads the feed from where the last refresh left it, to its end, and drops entries whose
        tokens have expired. Returns how many revocations are held; raises
        ``VerifyError("revocation_feed_unavailable")`` when the feed cannot be read."""
        config = self._config
        if not config.has_feed:
            return 0
        with self._refreshing:
            try:
                for _ in range(MAX_FEED_PAGES):
                    headers, params = config.feed_request()
                    response = self._client.get(
                        config.revocations_url, headers=headers, params=params
                    )
                    page = parse_page(_feed_page(response))
                    config.deny.add(page)
                    if not page.has_more:
                        break
            except (FeedError, httpx.HTTPError) as error:
                raise VerifyError("revocation_feed_unavailable", str(error)) from error
            return config.deny.read_to_end(config.leeway)

    @property
    def revocations_age(self) -> float | None:
        """Seconds since the feed was last read to its end (None: never)."""
        return self._config.deny.age()

    @property
    def keys_age(self) -> float | None:
        """Seconds since the key set held was fetched (None: none held)."""
        return self._config.keys.age()


def _poll_in_thread(
    verifier: weakref.ref[Verifier], stop: threading.Event, interval: float
) -> None:
    while not stop.is_set():
        live = verifier()
        if live is None:
            return
        try:
            live.refresh_revocations()
        except VerifyError as error:
            log.warning("revocation feed not read; keeping the deny-list held: %s", error)
        except Exception:  # noqa: BLE001 - polling goes on whatever one poll met
            if stop.is_set():
                return  # closed under us
            log.exception("revocation feed poll failed; keeping the deny-list held")
        del live
        stop.wait(interval)


class AsyncVerifier:
    """:class:`Verifier` for asyncio services: the same arguments, ``await v.verify(...)``.

    With a feed configured, polling starts with ``async with verifier:`` (or :meth:`start`, or at
    the first verification) and stops with :meth:`aclose`.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str | None = None,
        leeway: float = 30.0,
        unknown_kid_cooldown: float = 30.0,
        jwks_stale_for: float = DEFAULT_JWKS_STALE_FOR,
        http_timeout: float = 5.0,
        revocations_url: str | None = None,
        revocations_api_key: str | None = None,
        revocations_interval: float = 5.0,
        poll_revocations: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = _Config(
            issuer,
            audience,
            jwks_url=jwks_url,
            leeway=leeway,
            unknown_kid_cooldown=unknown_kid_cooldown,
            jwks_stale_for=jwks_stale_for,
            http_timeout=http_timeout,
            revocations_url=revocations_url,
            revocations_api_key=revocations_api_key,
            revocations_interval=revocations_interval,
        )
        self._client = httpx.AsyncClient(
            timeout=http_timeout, follow_redirects=False, transport=transport
        )
        self._poll = self._config.has_feed and poll_revocations
        self._flight: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Lock | None = None
        self._poller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncVerifier:
        self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Starts polling the feed on the running loop (no-op without one configured, or when
        polling already)."""
        if self._poll and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_forever(), name="neo-sessions-revocations"
            )

    async def aclose(self) -> None:
        """Stops polling and closes the HTTP client."""
        self._poll = False
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.refresh_revocations()
            except VerifyError as error:
                log.warning("revocation feed not read; keeping the deny-list held: %s", error)
            except Exception:  # noqa: BLE001 - polling goes on whatever one poll met
                log.exception("revocation feed poll failed; keeping the deny-list held")
            await asyncio.sleep(self._config.revocations_interval)

    async def verify(self, token: str, session_id: str) -> Claims:
        """The token's claims if it is a valid session token of ours for `session_id`; raises
        :class:`VerifyError` otherwise."""
        return await self.verify_at(token, session_id, time.time())

    async def verify_at(self, token: str, session_id: str, at: datetime | float) -> Claims:
        """:meth:`verify` as of `at` for ``exp`` and ``nbf`` (see :meth:`Verifier.verify_at`)."""
        if self._poll and self._poller is None:
            self.start()
        header = read_header(token)
        key = await self._key(header.kid)
        return self._config.check(header, key, session_id, _seconds(at))

    async def _key(self, kid: str) -> Key:
        """As :meth:`Verifier._key`, the fetch in a task of its own."""
        keys = self._config.keys
        key, freshness = keys.cached(kid)
        if freshness == STALE:
            self._start_fetch(REFRESH)
        if key is not None:
            return key
        done = self._start_fetch(REFRESH if freshness == UNTRUSTED else UNKNOWN_KID)
        if done is not None:
            await done.wait()
        return keys.lookup(kid)

    def _start_fetch(self, want: str) -> asyncio.Event | None:
        if self._flight is None:
            if not self._config.keys.start(want):
                return None
            self._flight = asyncio.Event()
            task = asyncio.get_running_loop().create_task(
                self._fetch_keys(), name="neo-sessions-jwks"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self._flight

    async def _fetch_keys(self) -> None:
        try:
            await self._fetch_once()
        finally:
            flight, self._flight = self._flight, None
            self._config.keys.running = False
            if flight is not None:
                flight.set()

    async def _fetch_once(self) -> None:
        keys = self._config.keys
        try:
            async with self._client.stream("GET", self._config.jwks_url) as response:
                _jwks_answer(response)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    _add_chunk(body, chunk)
                cache_control = response.headers.get("cache-control")
            parsed = parse_key_set(cache_control, bytes(body))
        except (FetchError, httpx.HTTPError) as error:
            _failed(keys, error, None)
            return
        keys.fetched(*parsed)
        log.info("fetched the session-token JWKS (%d keys)", len(parsed[0]))

    async def refresh_revocations(self) -> int:
        """See :meth:`Verifier.refresh_revocations`."""
        config = self._config
        if not config.has_feed:
            return 0
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            try:
                for _ in range(MAX_FEED_PAGES):
                    headers, params = config.feed_request()
                    response = await self._client.get(
                        config.revocations_url, headers=headers, params=params
                    )
                    page = parse_page(_feed_page(response))
                    config.deny.add(page)
                    if not page.has_more:
                        break
            except (FeedError, httpx.HTTPError) as error:
                raise VerifyError("revocation_feed_unavailable", str(error)) from error
            return config.deny.read_to_end(config.leeway)

    @property
    def revocations_age(self) -> float | None:
        """Seconds since the feed was last read to its end (None: never)."""
        return self._config.deny.age()

    @property
    def keys_age(self) -> float | None:
        """Seconds since the key set held was fetched (None: none held)."""
        return self._config.keys.age()
