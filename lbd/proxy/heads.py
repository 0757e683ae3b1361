"""Building the heads the proxy sends: the request upstream, the response to the client.

One pass over the fields each, one dict probe per field; hop-by-hop fields (and those a
``Connection`` header names) are dropped, forwarding fields added.
"""

from __future__ import annotations

from lbd.proxy.http import (
    F_CONNECTION, F_CONTENT_LENGTH, F_EXPECT, F_HOST, F_PREFER, F_REQUEST_ID, F_RETRY_AFTER, F_TIMEOUT,
    F_TRANSFER_ENCODING, F_XFF, FIELDS, connection_tokens, status_line, strip_fields,
)

__all__ = ["RequestFields", "request_head", "response_head", "without_field"]

BODY_NONE, BODY_LENGTH, BODY_CHUNKED = 0, 1, 2


class RequestFields:
    """What the data plane learned from a request's fields while building its head."""

    __slots__ = ("head", "body_mode", "content_length", "host", "request_id", "expect_continue", "timeout_ms",
                 "problem", "prefer")

    def __init__(self) -> None:
        self.head = b""
        self.body_mode = BODY_NONE
        self.content_length = 0
        self.host: bytes | None = None
        self.request_id: bytes | None = None
        self.expect_continue = False
        self.timeout_ms: int | None = None
        self.problem: tuple[int, str, str] | None = None
        """Why the request must be refused (status, code, message), if it must."""
        self.prefer: bytes | None = None
        """The ``Prefer`` fields (RFC 7240), joined; forwarded as they are."""


def request_head(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], client_ip: bytes,
                 scheme: bytes, new_request_id) -> RequestFields:
    """The request head as sent upstream, and the fields the proxy acts on.

    ``x-lbd-timeout-ms`` (the client's overall deadline) is consumed, not forwarded.
    """
    found = RequestFields()
    authority = None
    if url[:1] != b"/" and url[:7].lower() in (b"http://", b"https:/"):
        # Absolute form (RFC 9112 3.2.2): the target's authority replaces the Host field,
        # and the backend gets the origin form.
        scheme_end = url.index(b"//") + 2
        authority, slash, rest = url[scheme_end:].partition(b"/")
        url = slash + rest if slash else b"/"
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    forwarded_for = named = None
    fields = FIELDS
    for name, value in headers:
        kind = fields.get(name.lower())
        if kind is None:
            out += (name, b": ", value, b"\r\n")
        elif kind == F_CONTENT_LENGTH:
            found.content_length = int(value)  # llhttp already checked the digits
            found.body_mode = BODY_LENGTH if found.content_length else BODY_NONE
            out += (name, b": ", value, b"\r\n")
        elif kind == F_HOST:
            if found.host is not None:
                found.problem = (400, "bad_request", "more than one Host field")  # RFC 9112 3.2
            found.host = value
            if authority is None:
                out += (name, b": ", value, b"\r\n")
        elif kind == F_TRANSFER_ENCODING:
            found.body_mode = BODY_CHUNKED
            if value.strip().lower() != b"chunked":
                # llhttp refused codings after chunked; any other coding ("identity, chunked",
                # "gzip, chunked") is one a backend might frame differently: refuse it.
                found.problem = (501, "unsupported_transfer_coding",
                                 f"transfer coding {value.decode('latin-1')!r} is not supported; use chunked")
        elif kind == F_CONNECTION:
            named = connection_tokens(value)
        elif kind == F_XFF:
            forwarded_for = value
        elif kind == F_REQUEST_ID:
            found.request_id = value
        elif kind == F_EXPECT:
            found.expect_continue = value.lower() == b"100-continue"
        elif kind == F_TIMEOUT:
            found.timeout_ms = int(value) if value.strip().isdigit() else None
        elif kind == F_RETRY_AFTER:
            out += (name, b": ", value, b"\r\n")
        elif kind == F_PREFER:
            found.prefer = value if found.prefer is None else found.prefer + b", " + value
            out += (name, b": ", value, b"\r\n")
    if named is not None:
        out = strip_fields(out, 4, named)
    if authority is not None:
        found.host = authority
        out += (b"host: ", authority, b"\r\n")
    request_id = found.request_id = found.request_id or new_request_id()
    out += (b"x-forwarded-for: ", forwarded_for + b", " + client_ip if forwarded_for else client_ip,
            b"\r\nx-forwarded-proto: ", scheme, b"\r\nx-request-id: ", request_id,
            b"\r\ntransfer-encoding: chunked\r\n\r\n" if found.body_mode == BODY_CHUNKED else b"\r\n\r\n")
    found.head = b"".join(out)
    return found


def response_head(status: int, headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes], bool, bool, bytes | None]:
    """The response's status line and end-to-end fields (no final CRLF), whether it had a
    ``Content-Length``, whether it had an ``X-Request-ID``, and its ``Retry-After``."""
    out = [status_line(status)]
    has_length = request_id_seen = False
    named = retry_after = None
    fields = FIELDS
    for name, value in headers:
        kind = fields.get(name.lower())
        if kind is None:
            out += (name, b": ", value, b"\r\n")
        elif kind == F_CONTENT_LENGTH:
            has_length = True
            out += (name, b": ", value, b"\r\n")
        elif kind == F_REQUEST_ID:
            request_id_seen = True
            out += (name, b": ", value, b"\r\n")
        elif kind == F_CONNECTION:
            named = connection_tokens(value)
        elif kind == F_RETRY_AFTER:
            retry_after = value
            out += (name, b": ", value, b"\r\n")
        elif kind in (F_HOST, F_XFF, F_EXPECT, F_TIMEOUT, F_PREFER):
            out += (name, b": ", value, b"\r\n")
        # other hop-by-hop fields, transfer-encoding included, are dropped: the framing
        # towards the client is the proxy's own
    if named is not None:
        out = strip_fields(out, 1, named)
    return out, has_length, request_id_seen, retry_after


def without_field(head: bytes, name: bytes) -> bytes:
    """``head`` without its ``name`` field lines (``name`` lower-case)."""
    lines = head.split(b"\r\n")
    kept = [line for line in lines[1:] if line.partition(b":")[0].strip().lower() != name]
    return b"\r\n".join([lines[0], *kept])
