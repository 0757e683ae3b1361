"""Differential fuzzing of the compiled lane against the Python data plane.

Generated request heads (and small bodies) go, each followed by a plain pipelined request on
the same connection, through two proxies in this process: one with the lane on, one with it
off, each in front of its own capturing upstream. What the client gets back (request ids
masked), whether the connection closed, what reached the upstream (whole requests, head and
body), and the access log's entries must be the same.

The danger this rules out is the lane serving something llhttp (the Python plane's parser)
would refuse or read differently: request smuggling (bare LF, obs-fold, whitespace before the
colon, odd or duplicate Content-Length, Transfer-Encoding, control bytes, ...) or a body
framed differently, which the pipelined request behind it shows. The lane's job on anything
outside its subset is to hand the connection over, so both planes must answer alike.

The requests come from a grammar of valid pieces and targeted mutations (byte insertions,
deletions, replacements, case flips, duplicated lines). The client limits are set small so
their edges (URL, head and body size, field count) are reachable with small requests.
``LBD_FUZZ_EXAMPLES`` sets how many examples run (default 500, some 10 s)."""

from __future__ import annotations

import asyncio
import os
import re

import pytest
import uvloop
from hypothesis import HealthCheck, event, example, given, settings

from lbd.proxy.http import RequestIds
from tests.support.lane import Capture, access_entries, start_proxy
from tests.support.request_grammar import LIMITS_CONFIG, PLAIN, requests

pytestmark = pytest.mark.usefixtures("compiled_lane")

EXAMPLES = int(os.environ.get("LBD_FUZZ_EXAMPLES", "500"))
TRAILER = b"GET /close HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
ID = re.compile(rb"[0-9a-f]{16}(?=-[0-9a-f]+)")   # a request id's per-process prefix


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("LBD_LANE", raising=False)


# --------------------------------------------------------------------------- the two planes

class Client(asyncio.Protocol):
    """One client connection: everything it received, and whether the proxy closed it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.got = b""
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> None:
        self.closed = True

    def connection_lost(self, exc) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    @property
    def outcome(self) -> tuple[bytes, bool]:
        return ID.sub(b"ID", self.got), self.closed


class Plane:
    """A proxy (lane on or off) and its capturing upstream."""

    def __init__(self, lane: str) -> None:
        self.lane = lane
        self.cap = Capture("cap")
        self.server = None
        self.port = 0
        self.logged = 0

    async def start(self) -> None:
        await self.cap.start()
        self.server, self.port = await start_proxy(self.lane, [self.cap], extra=LIMITS_CONFIG)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown(0.5)
        await self.cap.stop()

    async def connect(self) -> Client:
        return (await asyncio.get_running_loop().create_connection(Client, "127.0.0.1", self.port))[1]

    def quiet(self) -> bool:
        """Does every connection wait for its client (idle, or reading a head or a body)? Then
        nothing more happens without the client: no upstream request, no byte to the client.
        (A connection the proxy closes is there until it is closed.)"""
        later = asyncio.get_running_loop().time() + 1
        return all((conn.current is None or conn.body_stalled_for(later) > 0) and not getattr(conn, "closing", False)
                   for conn in self.server.connections)

    async def send(self, client: Client, data: bytes) -> None:
        """Write ``data`` and wait until the proxy has done all it does with it."""
        client.write(data)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 10
        await asyncio.sleep(0.002)   # on loopback the bytes are there: the next poll reads them
        while not self.quiet() and loop.time() < give_up:
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.002)   # and what the proxy wrote, the FIN included, is read here

    async def settled(self) -> None:
        """Every client connection gone: nothing more of this example reaches the upstream."""
        for _ in range(1000):
            if not self.server.connections:
                break
            await asyncio.sleep(0.002)
        await asyncio.sleep(0)

    def upstream(self, since: int) -> list[bytes]:
        """The requests the upstream got, ids masked, and its own address too: lbd names it
        in the Host it adds to an HTTP/1.0 request without one, and each plane has its own."""
        own = b"127.0.0.1:%d" % self.cap.port
        return [ID.sub(b"ID", r).replace(own, b"127.0.0.1:UPSTREAM") for r in self.cap.requests[since:]]

    def log(self) -> list[tuple]:
        entries = access_entries(self.server)
        new, self.logged = entries[self.logged:], len(entries)
        return new


async def through(plane: Plane, data: bytes, split: int) -> tuple[bytes, bool]:
    """What the client got for ``data`` (in two writes when ``split``), and whether the proxy
    closed the connection."""
    client = await plane.connect()
    if split:  # the first part alone, and all the proxy does with it, first
        await plane.send(client, data[:split])
        data = data[split:]
    await plane.send(client, data)
    outcome = client.outcome
    client.transport.abort()
    return outcome


async def compare(lane: Plane, python: Plane, raw: bytes, split: int) -> int:
    """Send ``raw`` and the pipelined TRAILER through both planes and assert they agree; the
    number of requests the lane served itself."""
    served = lane.server.lane.served
    before = len(lane.cap.requests), len(python.cap.requests)
    for plane in (lane, python):  # ids counted from 1 each time: the same ids, of the same length
        plane.server.request_ids = RequestIds()
    data = raw + TRAILER
    outcomes = await asyncio.gather(through(lane, data, split), through(python, data, split))
    await asyncio.gather(lane.settled(), python.settled())
    seen_lane = (outcomes[0], lane.upstream(before[0]), lane.log())
    seen_python = (outcomes[1], python.upstream(before[1]), python.log())
    assert seen_lane[0] == seen_python[0], f"the client saw different answers to {data!r}"
    assert seen_lane[1] == seen_python[1], f"the upstream got different requests for {data!r}"
    assert seen_lane[2] == seen_python[2], f"the access log differs for {data!r}"
    return lane.server.lane.served - served


def test_the_lane_answers_generated_requests_as_the_python_plane_does():
    loop = uvloop.new_event_loop()
    lane, python = Plane("auto"), Plane("off")
    counts = {"examples": 0, "lane served": 0, "handed over": 0}

    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=requests())
    # what the fuzzer found, and what it is about
    @example(case=(PLAIN + b"hello", 0))  # a refusal behind: Python closes after the first answer
    @example(case=(PLAIN + PLAIN + b"hello", 0))  # ... two requests ahead: Python drops the one between
    @example(case=(b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 0))  # data after close
    @example(case=(b"GET /plain HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\n", 0))  # llhttp: close
    @example(case=(b"GET /keyed HTTP/1.1\r\nHost: h\r\nContent-Length: 4096\r\n\r\nhello", 0))  # 401 at the head
    @example(case=(b"POST /plain HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET", 0))
    @example(case=(b"GET /plain HTTP/1.0\r\n\r\n", 0))  # no Host: lbd adds the upstream's address
    def check(case: tuple[bytes, int]) -> None:
        raw, split = case
        served = loop.run_until_complete(compare(lane, python, raw, split))
        counts["examples"] += 1
        counts["lane served" if served else "handed over"] += 1
        event("the lane served the request" if served else "the lane handed the connection over")

    try:
        loop.run_until_complete(lane.start())
        loop.run_until_complete(python.start())
        check()
    finally:
        loop.run_until_complete(lane.stop())
        loop.run_until_complete(python.stop())
        loop.close()
    # the examples reached both sides of the lane's decision
    assert counts["lane served"] >= counts["examples"] // 10, counts
    assert counts["handed over"] >= counts["examples"] // 10, counts
