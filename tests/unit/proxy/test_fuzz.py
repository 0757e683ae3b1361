"""Fuzzing the request parser and the config loader (hypothesis; brief in CI).

Invariants for any bytes a client sends: nothing escapes the protocol callbacks, what the
client gets back is HTTP/1.1 responses, and what reaches a backend parses strictly as
well-framed requests (the proxy never forwards framing it could not be certain of).
"""

from __future__ import annotations

import asyncio

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.config import ConfigError, load_config_text
from lbd.log import AccessLog
from lbd.proxy.downstream import ClientConnection
from lbd.proxy.server import ProxyServer
from lbd.proxy.upstream import UpstreamConnection
from lbd.runtime import Runtime
from tests.support.memory import MemoryTransport

CONFIG = """
pools:
  web:
    health: {enabled: false}
    backends: [{url: "http://127.0.0.1:1"}]
"""


class Requests:
    """Counts the complete requests a backend would see; raises on any framing error."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


PLAIN_FIELDS = [
    b"Connection: close", b"Connection: keep-alive, x-a", b"x-a: 1", b"X-Forwarded-For: 1.2.3.4",
    b"x-lbd-timeout-ms: 5000", b"Keep-Alive: 5", b"TE: trailers", b"X-Request-ID: abc", b"Accept: */*",
]
RISKY_FIELDS = [
    b"Content-Length: 3", b"Content-Length: 5", b"Content-Length: 0", b"Content-Length: 3, 3",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity, chunked", b"Transfer-Encoding: chunked, gzip",
    b"Expect: 100-continue", b"Upgrade: h2c", b"X-Folded: a\r\n b", b"Host: y",
]
FIELDS = PLAIN_FIELDS * 3 + RISKY_FIELDS
request_line = st.tuples(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"get", b"TRACE", b"POST", b"GET", b"POST"]),
    st.sampled_from([b"/echo", b"/v2/models/m/infer", b"http://h:8/x?q", b"*", b"/a b", b"/echo", b"/v2/models/m"]),
    st.sampled_from([b" HTTP/1.1"] * 5 + [b" HTTP/1.0", b" HTTP/2.0", b""]),
).map(lambda parts: parts[0] + b" " + parts[1] + parts[2])
body = st.one_of(st.just(b""), st.just(b""), st.lists(st.sampled_from(
    [b"abc", b"abcde", b"3\r\nabc\r\n", b"0\r\n\r\n", b"zz\r\n"]), max_size=3).map(b"".join))
request = st.builds(
    lambda line, host, fields, eol, payload: line + eol + b"".join(f + eol for f in host + fields) + eol + payload,
    request_line, st.sampled_from([[b"Host: x"], [b"Host: x"], [b"Host: x"], []]),
    st.lists(st.sampled_from(FIELDS), max_size=4), st.sampled_from([b"\r\n"] * 5 + [b"\n"]), body)


@st.composite
def messages(draw) -> bytes:
    """One to three requests in a row, sometimes with random bytes spliced in."""
    raw = b"".join(draw(st.lists(request, min_size=1, max_size=3)))
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=6)) + raw[at:]
    return raw


def drive(raw: bytes, splits: list[int]) -> tuple[bytes, bytes]:
    async def main() -> tuple[bytes, bytes]:
        runtime = Runtime.build(load_config_text(CONFIG))
        server = ProxyServer(runtime, asyncio.get_running_loop(), AccessLog(False))
        client, client_out = ClientConnection(server), MemoryTransport()
        client.connection_made(client_out)
        backend = runtime.pools["web"].backends[0]
        upstream, upstream_out = UpstreamConnection(backend), MemoryTransport()
        upstream.connection_made(upstream_out)
        backend.put_idle(upstream, 0.0)
        position = 0
        for cut in sorted(splits) + [len(raw)]:
            if cut > position and not client_out.closed:
                client.data_received(raw[position:cut])
                position = cut
        client.connection_lost(None)
        return bytes(client_out.data), bytes(upstream_out.data)

    return asyncio.run(main())


FORWARDED: list[bool] = []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.lists(st.integers(min_value=0, max_value=200), max_size=4))
def test_any_bytes_give_http_answers_and_only_well_framed_requests_upstream(raw, splits):
    to_client, to_backend = drive(raw, splits)
    FORWARDED.append(bool(to_backend))
    if to_client:
        assert to_client.startswith(b"HTTP/1.1 "), to_client[:80]
    if to_backend:
        parsed = Requests()
        parser = httptools.HttpRequestParser(parsed)
        parser.feed_data(to_backend)  # raises on anything malformed or ambiguous


def test_the_fuzzer_reached_the_backend():
    """Guards the test above against being vacuous: a fair share of the generated requests
    must have been well-formed enough to be forwarded."""
    assert sum(FORWARDED) >= 10, (sum(FORWARDED), len(FORWARDED))  # about 5-8% of 400 are


KEYS = ["listen", "address", "pools", "web", "backends", "url", "worker", "weight", "balancer", "algorithm",
        "timeouts", "connect", "per_try", "health", "retry", "attempts", "limits", "queue", "match", "models",
        "workers", "w", "default_pool", "client", "max_body_size", "breaker", "hash_on", "key", "bogus"]
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=12),
              st.sampled_from(["2s", "250ms", "64KiB", "round_robin", "consistent_hash", "http://127.0.0.1:9000",
                               "127.0.0.1:8080", "auto", "-1s", "1x"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_any_config_document_is_accepted_or_refused_with_messages(document):
    import yaml
    text = yaml.safe_dump(document)
    try:
        load_config_text(text)
    except ConfigError as exc:
        assert exc.messages and all(isinstance(m, str) and m for m in exc.messages)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_accepted_or_refused_with_messages(text):
    try:
        load_config_text(text)
    except ConfigError as exc:
        assert exc.messages
