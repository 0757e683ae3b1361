"""HTTP/1.1 constants and the small serializers the data plane shares.

Everything here works on ``bytes``: the data plane never decodes a header it only copies.
"""

from __future__ import annotations

import itertools
import os
from http import HTTPStatus

import orjson

__all__ = [
    "HOP_BY_HOP", "status_line", "error_response", "RequestIds", "chunk", "LAST_CHUNK",
    "CONTINUE_100", "reason",
]

# RFC 9110 7.6.1: connection-specific fields a proxy must not forward, plus the de facto
# ones (Keep-Alive, Proxy-Connection). Fields listed in ``Connection`` are removed too.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})

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
