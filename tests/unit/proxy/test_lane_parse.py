"""The compiled lane's request parser against llhttp (httptools), the Python data plane's, on
generated requests (hypothesis; no sockets, so many examples).

Whatever the lane serves itself, llhttp must read the same way: the same method, target and
fields, the same keep-alive, the request ending at the same byte (a body framed alike, so
what is pipelined behind it is read alike); and the Python path would take it (no refusal:
Host, limits). Bytes pipelined behind a request the lane lets go upstream must be ones llhttp
reads without refusing (the Python path's answer to a request depends on what follows it).

``LBD_FUZZ_EXAMPLES`` sets how many examples run (default 1000)."""

from __future__ import annotations

import os

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings

from lbd.proxy.heads import request_head
from tests.support.request_grammar import LIMITS, PLAIN, requests

pytestmark = pytest.mark.usefixtures("compiled_lane")

TRAILER = b"GET /close HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
EXAMPLES = int(os.environ.get("LBD_FUZZ_EXAMPLES", "1000"))


class Messages:
    """What llhttp makes of bytes: each message's head, body and end, and the error if any."""

    def __init__(self, data: bytes) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.messages: list[dict] = []
        self.error: Exception | None = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc

    def on_message_begin(self) -> None:
        self.messages.append({"url": b"", "fields": [], "body": b"", "complete": False, "head": None})

    def on_url(self, url: bytes) -> None:
        self.messages[-1]["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.messages[-1]["fields"].append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.messages[-1]["head"] = (parser.get_method(), parser.should_keep_alive(), parser.get_http_version())

    def on_body(self, body: bytes) -> None:
        self.messages[-1]["body"] += body

    def on_message_complete(self) -> None:
        self.messages[-1]["complete"] = True


def python_takes(message: dict) -> bool:
    """Would the Python path take this request (whole or not) as llhttp read it, or refuse it?
    (ClientConnection's limits and on_headers_complete, request_head's problems.)"""
    url, fields = message["url"], message["fields"]
    if len(url) > LIMITS["max_url"] or len(fields) > LIMITS["max_headers"]:
        return False
    if len(url) + sum(len(n) + len(v) for n, v in fields) > LIMITS["max_head"]:
        return False
    if message["head"] is None:
        return True  # not whole yet: nothing else refuses it so far
    method, _, version = message["head"]
    if version != "1.1" and version != "1.0" or method in (b"TRACE", b"TRACK"):
        return False
    found = request_head(method, url, fields, b"127.0.0.1", b"http", lambda: b"id")
    return (found.problem is None and (found.host is not None or version == "1.0")
            and not (found.body_mode and found.content_length > LIMITS["max_body"]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=requests())
@example(case=(b"GET /plain HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\n", 0))
@example(case=(b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\t\r\n\r\n", 0))
@example(case=(PLAIN + b"hello", 0))
@example(case=(PLAIN + PLAIN + b"hello", 0))
def test_what_the_lane_serves_llhttp_reads_alike(case):
    from lbd.proxy import _lane

    data = case[0] + TRAILER
    read = _lane.read_head(data, **LIMITS)
    if read is None or read == "more":
        return  # handed over (or waiting): the Python path reads it, no lane behaviour to compare
    method, target, fields, keep_alive, end = read
    llhttp = Messages(data[:end])
    assert llhttp.error is None and len(llhttp.messages) == 1, (data, llhttp.error)
    first = llhttp.messages[0]
    assert (first["url"], first["fields"], first["head"]) == (target, fields, (method, keep_alive, "1.1")), data
    assert python_takes(first), data
    if end > len(data):  # the body is still to come, for both
        assert not first["complete"], data
        return
    assert first["complete"], data  # ends where the lane says ...
    assert not Messages(data[:end - 1]).messages[0]["complete"], data  # ... and not a byte before
    lengths = [int(v) for n, v in fields if n.lower() == b"content-length"]
    assert first["body"] == data[end - (lengths[0] if lengths else 0):end]

    rest = data[end:]
    if keep_alive and _lane.next_ok(rest, **LIMITS):
        # the lane lets the request go with these behind it: llhttp must not refuse them
        behind = Messages(data)
        assert behind.error is None, (data, behind.error)
        assert all(python_takes(m) for m in behind.messages[1:]), data


def test_the_lane_hands_over_what_llhttp_reads_differently():
    from lbd.proxy import _lane

    for raw in (
        b"GET /plain HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\n",  # llhttp: close
        b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\t\r\n\r\n",  # llhttp versions differ
    ):
        assert _lane.read_head(raw, **LIMITS) is None, raw
    # behind a request about to go: requests the lane serves, and the start of one
    assert _lane.next_ok(PLAIN + PLAIN + b"GET /pl", **LIMITS)
    for rest in (
        b"hello",  # llhttp refuses it: Python closes after the request before
        PLAIN + b"hello",  # the same, one request further
        b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" + PLAIN,  # data after close
        b"GET /" + b"u" * 600,  # past the URL limit before the head is whole
        b"GET /plain HTTP/1.1\r\n" + b"X: y\r\n" * 17,  # past the field count
        b"GET /plain HTTP/1.1\r\nBad Name: x",
        b"GET /plain HTTP/1.0\r\n\r\n",
    ):
        assert not _lane.next_ok(rest, **LIMITS), rest
