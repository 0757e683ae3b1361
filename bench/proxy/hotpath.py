"""The data plane's Python cost per request, without sockets.

Drives the real ClientConnection / Exchange / UpstreamConnection objects with in-memory
transports: a request in, the upstream's response in, the client's response out. What is
left when syscalls are taken away is what lbd's own code costs, so a change to the hot path
can be judged on a busy machine too:

    python bench/proxy/hotpath.py [--requests 200000] [--access-log] [--plane python|lane]

``--plane lane`` drives the compiled lane (``lbd/proxy/_lane.pyx`` and its Python glue) the
same way: what is left is the C side plus the glue's calls per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import uvloop

from lbd import heap
from lbd.config import load_config_text
from lbd.log import AccessLog
from lbd.proxy.downstream import ClientConnection
from lbd.proxy.server import ProxyServer
from lbd.proxy.upstream import UpstreamConnection
from lbd.runtime import Runtime

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.memory import MemoryTransport  # noqa: E402  the one the fuzz tests use

CONFIG = """
pools:
  bench:
    balancer: {algorithm: %s}
    backends: [{url: "http://127.0.0.1:1"}, {url: "http://127.0.0.1:2"}]
"""
REQUEST = (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
           b"Content-Type: application/json\r\nContent-Length: 99\r\n\r\n" + b"x" * 99)
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 21:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n{\"ok\":true}")


async def main(requests: int, access_log: bool, algorithm: str, rounds: int = 5, plane: str = "python") -> None:
    runtime = Runtime.build(load_config_text(CONFIG % algorithm))
    server = ProxyServer(runtime, asyncio.get_running_loop(), AccessLog(access_log, open(os.devnull, "wb")))
    heap.settle()  # as the daemon does once it is ready
    if plane == "lane":
        return await lane_main(server, runtime, requests, rounds, access_log, algorithm)
    client = ClientConnection(server)
    client_transport = MemoryTransport(keep=False)
    client.connection_made(client_transport)
    upstreams = []
    for backend in runtime.pools["bench"].backends:
        conn = UpstreamConnection(backend)
        conn.connection_made(MemoryTransport(keep=False))
        backend.put_idle(conn, 0.0)
        upstreams.append(conn)
    best = min(run_round(client, upstreams, server, requests) for _ in range(rounds))
    assert client_transport.sent == requests * rounds, (client_transport.sent, requests)
    sends = client_transport.sent + sum(u.transport.sent for u in upstreams)
    report("Python", best, requests, rounds, sends / requests / rounds, access_log, algorithm)


def report(what: str, best: float, requests: int, rounds: int, sends: float, access_log: bool,
           algorithm: str) -> None:
    print(f"{best / requests * 1e6:.2f} µs/request of {what}, best of {rounds} rounds of {requests} "
          f"(CPU time; {sends:.1f} sends/request, access log {'on' if access_log else 'off'}, {algorithm})")


def run_round(client, upstreams, server, requests: int) -> float:
    started = time.process_time()
    for index in range(requests):
        client.data_received(REQUEST)
        upstream = upstreams[index % 2] if upstreams[0].exchange is None and upstreams[1].exchange is None else \
            (upstreams[0] if upstreams[0].exchange is not None else upstreams[1])
        upstream.data_received(RESPONSE)
        if index % 4096 == 0:
            server.access_log.flush()
    return time.process_time() - started


async def lane_main(server, runtime, requests: int, rounds: int, access_log: bool, algorithm: str) -> None:
    from lbd.proxy import _lane
    from lbd.proxy.lane import Glue

    glue = Glue(server, _lane)

    async def no_connect(conn, backend, timeout):  # the bench hands each upstream its transport
        return None

    glue._connect = no_connect
    made = []
    connect_new = glue._connect_new
    glue._connect_new = lambda req, backend, pool: made.append(connect_new(req, backend, pool)) or made[-1]
    client = glue.protocol()
    client_transport = MemoryTransport(keep=False)
    client.connection_made(client_transport)
    upstreams = {}
    pool = runtime.pools["bench"]
    if not pool.lane_ok:
        sys.exit("the bench pool is not lane-eligible")
    for _ in pool.backends:       # the first request to each backend makes its connection
        client.data_received(REQUEST)
        backend = client.req.backend
        conn = made[-1]
        conn.connection_made(MemoryTransport(keep=False))
        conn.connected()  # what the glue's connect task does once create_connection returned
        upstreams[backend] = conn
        conn.data_received(RESPONSE)
    del glue._connect_new
    best = min(lane_round(client, upstreams, server, requests) for _ in range(rounds))
    assert client_transport.sent == requests * rounds + len(upstreams), (client_transport.sent, requests)
    sends = client_transport.sent + sum(u.transport.sent for u in upstreams.values())
    report("the lane (C and glue)", best, requests, rounds, sends / (requests * rounds + len(upstreams)),
           access_log, algorithm)


def lane_round(client, upstreams, server, requests: int) -> float:
    started = time.process_time()
    for index in range(requests):
        client.data_received(REQUEST)
        upstreams[client.req.backend].data_received(RESPONSE)
        if index % 4096 == 0:
            server.access_log.flush()
    return time.process_time() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--algorithm", default="round_robin")
    parser.add_argument("--plane", choices=("python", "lane"), default="python")
    args = parser.parse_args()
    uvloop.run(main(args.requests, args.access_log, args.algorithm, args.rounds, args.plane))
