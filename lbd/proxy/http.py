"""HTTP/1.1 constants and the small serializers the data plane shares.

Everything here works on ``bytes``: the data plane never decodes a header it only copies.
"""

from __future__ import annotations

import itertools
import os
from http import HTTPStatus

import orjson

__all__ = [
    "HOP_BY_HOP", "FIELDS", "connection_tokens", "strip_fields", "status_line", "error_response", "RequestIds", "chunk", "LAST_CHUNK",
    "CONTINUE_100", "reason",
]

# RFC 9110 7.6.1: connection-specific fields a proxy must not forward, plus the de facto
# ones (Keep-Alive, Proxy-Connection). Fields listed in ``Connection`` are removed too.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})

# Request and response fields the data plane acts on, looked up once per field with one
# dict probe (the common case, a field to copy, misses).
(F_HOP, F_CONNECTION, F_TRANSFER_ENCODING, F_CONTENT_LENGTH, F_HOST, F_XFF, F_REQUEST_ID, F_EXPECT,
 F_TIMEOUT, F_RETRY_AFTER, F_PREFER) = range(11)
FIELDS = {name: F_HOP for name in HOP_BY_HOP}
FIELDS.update({
    b"connection": F_CONNECTION, b"transfer-encoding": F_TRANSFER_ENCODING,
    b"content-length": F_CONTENT_LENGTH, b"host": F_HOST, b"x-forwarded-for": F_XFF,
    b"x-request-id": F_REQUEST_ID, b"expect": F_EXPECT, b"x-lbd-timeout-ms": F_TIMEOUT,
    b"retry-after": F_RETRY_AFTER, b"prefer": F_PREFER,
})


def connection_tokens(value: bytes) -> frozenset[bytes] | None:
    """Fields a ``Connection`` header names besides ``keep-alive``/``close`` (they are
    hop-by-hop too); ``None`` in the common case that it names none."""
    lowered = value.lower()
    if lowered in (b"keep-alive", b"close"):
        return None
    tokens = frozenset(t.strip() for t in lowered.split(b",")) - {b"keep-alive", b"close", b""}
    return tokens or None


def strip_fields(parts: list[bytes], start: int, names: frozenset[bytes]) -> list[bytes]:
    """``parts`` holds fields as ``name, ": ", value, CRLF`` from ``start`` on: drop the named."""
    kept = parts[:start]
    for i in range(start, len(parts), 4):
        if parts[i].lower() not in names:
            kept += parts[i:i + 4]
    return kept


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

_STATUS_LINES: dict[int, bytes] = {}


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``, cached per status code."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason(status)}\r\n".encode()
    return line


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def error_response(status: int, code: str, message: str, request_id: bytes, *,
                   keep_alive: bool = True, extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole response whose JSON body says why: ``{"error": ..., "code": ..., "request_id": ...}``."""
    body = orjson.dumps({"error": message, "code": code, "status": status,
                         "request_id": request_id.decode("latin-1")})
    head = [status_line(status),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"x-request-id: %b\r\n" % request_id]
    head.extend(b"%b: %b\r\n" % pair for pair in extra_headers)
    head.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
    head.append(body)
    return b"".join(head)


class RequestIds:
    """Unique request ids without a syscall or a UUID per request: a random per-process
    prefix and a counter (``3f9c2a1d7b6e4c05-1a``)."""

    __slots__ = ("_prefix", "_counter")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode()
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        return b"%b-%x" % (self._prefix, next(self._counter))
