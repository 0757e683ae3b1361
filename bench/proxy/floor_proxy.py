"""The floor under any proxy built on uvloop protocols: no HTTP at all.

Not a proxy anyone should run: it parses nothing. Each client connection gets an upstream
connection of its own (the upstreams taken in turn, per connection) and bytes are relayed
blindly both ways. That is two ``data_received`` calls and two ``transport.write`` calls per
request, with the syscalls and event-loop work every proxy on uvloop pays and no per-request
Python beyond the relay. Its req/s is what the loop and the kernel allow on this machine;
the gap between it and a real proxy is the cost of that proxy's own per-request work.

Usage: python floor_proxy.py LISTEN_PORT HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import uvloop


class UpstreamSide(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class ClientSide(asyncio.Protocol):
    def __init__(self, targets: itertools.cycle) -> None:
        self.targets = targets
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        host, port = next(self.targets)
        asyncio.get_running_loop().create_task(self._connect(host, port))

    async def _connect(self, host: str, port: int) -> None:
        try:
            upstream, _ = await asyncio.get_running_loop().create_connection(
                lambda: UpstreamSide(self.transport), host, port)
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for data in self.pending:
            upstream.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def main(port: int, addresses: list[str]) -> None:
    targets = itertools.cycle([(host, int(p)) for host, p in (a.rsplit(":", 1) for a in addresses)])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientSide(targets), "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    uvloop.run(main(int(sys.argv[1]), sys.argv[2:]))
