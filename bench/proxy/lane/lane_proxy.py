"""cython-lane: the compiled data-plane lane (lane.pyx) behind a Python round-robin balancer.

A benchmark prototype that answers "how fast can a compiled request path on uvloop be with
lbd's per-request features on?" lane.pyx's docstring says exactly what it does and does not
do: strict HTTP/1.1 request and response heads parsed in C, hop-by-hop headers dropped,
X-Forwarded-For/-Proto and X-Request-ID (propagated or generated) added upstream,
x-lbd-backend and X-Request-ID added to the response, pooled keep-alive upstream connections,
a per-request deadline timer (504), 502 on an unreachable upstream, counters in a Stats
object. Here: the balancer (RoundRobin, plain Python, called once per request) and the server.

Usage: python lane_proxy.py LISTEN_PORT HOST:PORT [HOST:PORT ...]

The extension is built first when it is missing or older than lane.pyx (build.py). On
SIGTERM/SIGINT it prints the lane's counters to stderr and exits.
Correctness checks (raw sockets, test upstreams): python check.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
# Per-request deadline (nginx's proxy_read_timeout default); LANE_TIMEOUT_S for tests.
TIMEOUT_S = float(os.environ.get("LANE_TIMEOUT_S", "60"))


class RoundRobin:
    """The "Python decides" part: one call per request picks the backend."""

    def __init__(self, backends: list) -> None:
        self._backends = list(backends)
        self._next = 0

    def pick(self):
        index = self._next
        self._next = (index + 1) % len(self._backends)
        return self._backends[index]


def _import_lane():
    build = subprocess.run([sys.executable, str(HERE / "build.py")])
    if build.returncode != 0:
        sys.exit(f"lane.pyx could not be built (build.py status {build.returncode})")
    sys.path.insert(0, str(HERE))
    import lane
    return lane


async def _serve(port: int, addresses: list[tuple[str, int]]) -> None:
    lane_module = _import_lane()
    loop = asyncio.get_running_loop()
    lane = lane_module.Lane(loop, addresses, TIMEOUT_S)
    lane.balancer = RoundRobin(lane.backends)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    server = await loop.create_server(lane.client, "127.0.0.1", port, backlog=4096,
                                      reuse_address=True)
    async with server:
        await stop
    print(f"lane stats: {lane.stats.as_dict()}", file=sys.stderr)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    uvloop.run(_serve(int(argv[0]), [_address(a) for a in argv[1:]]))


if __name__ == "__main__":
    main(sys.argv[1:])
