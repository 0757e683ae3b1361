"""Who may use the admin API: a bearer token, compared in constant time.

The rule: a token is required whenever one is configured, and the admin listener refuses to
bind anywhere but loopback without one (the config validator refuses such a file first).
``/healthz`` and the status page's HTML shell are public: they carry no data; the page's
script sends the token it is given (``/status#token=...`` or typed in) with every call.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["is_loopback", "TokenFile", "auth_middleware", "PUBLIC_PATHS", "REALM"]

log = logging.getLogger("lbd.admin")
PUBLIC_PATHS = frozenset({"/healthz", "/status"})
REALM = "lbd-admin"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; any other name or address is not (a name
    may resolve anywhere, and ``0.0.0.0`` is every interface)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenFile:
    """The token in a file (whitespace around it ignored), read again when the file changes.
    An unreadable or empty file denies every request (fail closed) and is logged once."""

    __slots__ = ("_path", "_seen", "_token", "_failing")

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._seen: tuple[int, int] | None = None
        self._token = b""
        self._failing = False

    @property
    def path(self) -> str | None:
        return self._path

    def current(self) -> bytes | None:
        """The token; ``None`` when none is configured; ``b""`` (matches nothing) when the
        file cannot be read or is empty."""
        if self._path is None:
            return None
        try:
            stat = os.stat(self._path)
            if (stat.st_mtime_ns, stat.st_size) != self._seen:
                with open(self._path, "rb") as handle:
                    self._token = handle.read().strip()
                self._seen = (stat.st_mtime_ns, stat.st_size)
            self._failing = False
        except OSError as exc:
            if not self._failing:
                log.error("admin token file unreadable: refusing every admin request",
                          extra={"file": self._path, "error": exc.strerror})
            self._token, self._seen, self._failing = b"", None, True
        return self._token


def auth_middleware(token_for: Callable[[], TokenFile], off_loopback: bool) -> Callable:
    """Require ``Authorization: Bearer <token>`` on every non-public path when a token is
    configured, or when the listener is off loopback (then, with no token, nothing passes)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        tokens = token_for()
        expected = tokens.current()
        if expected is None and not off_loopback:
            return await handler(request)
        given = _bearer(request.headers.get("Authorization", ""))
        if given is None or not expected or not hmac.compare_digest(given, expected):
            return _unauthorized(given is not None)
        return await handler(request)

    return authenticate


def _bearer(header: str) -> bytes | None:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode("utf-8", "replace")


def _unauthorized(token_given: bool) -> web.Response:
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if token_given else "")
    return web.json_response({"error": "a valid bearer token is required"}, status=401,
                             headers={"WWW-Authenticate": challenge})
