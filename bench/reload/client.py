"""A steady HTTP/1.1 load that records every answer: status, latency and when it came, and
every socket error with its kind and time (so the report can say which reload it followed).

    client.py --port 8080 --rate 3000 --connections 32 --duration 24 --out result.json

Each of --connections keep-alive connections sends the POST that bench/proxy/post.lua sends,
paced so that all together send --rate requests a second (closed loop: a connection waits for
its answer before the next request; a slot it missed is skipped, not made up in a burst). A
connection that fails is counted once, with the error's kind, and opened again; the request
is not retried (it is a POST, and a retry would hide exactly what this measures). The
standard library only (uvloop when importable); run it pinned, in its own process.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import json
import re
import sys
import time
from pathlib import Path

BODY = re.search(rb"wrk.body = '(.*)'",
                 (Path(__file__).resolve().parent.parent / "proxy" / "post.lua").read_bytes()).group(1)
REQUEST = (b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.latency_us = array.array("I")
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors: list[tuple[float, str]] = []      # (wall time, kind)
        self.non2xx: list[tuple[float, int]] = []      # (wall time, status)
        self.connects = 0
        self.idle_closed = 0
        self.error_kinds: collections.Counter[str] = collections.Counter()

    async def run(self) -> None:
        start = time.monotonic() + 0.05
        self.end = start + self.args.duration
        self.wall_offset = time.time() - time.monotonic()
        await asyncio.gather(*(self.connection(index, start) for index in range(self.args.connections)))

    async def connection(self, index: int, start: float) -> None:
        interval = self.args.connections / self.args.rate
        slot = start + index * interval / self.args.connections
        reader = writer = None
        while True:
            now = time.monotonic()
            if now >= self.end:
                break
            if slot > now:
                await asyncio.sleep(slot - now)
            slot += interval
            if slot < time.monotonic() - interval:
                slot = time.monotonic()                 # behind: skip the missed slots
            if reader is not None and reader.at_eof():
                # The server closed this idle keep-alive connection (nginx's old worker does on
                # reload) and the FIN is already here: reopen, as urllib3 and browsers check
                # before reusing a connection. Counted, but not an error: nothing was sent.
                self.idle_closed += 1
                writer.close()
                reader = writer = None
            if reader is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.args.port), self.args.timeout)
                    self.connects += 1
                    fresh = True
                except (OSError, asyncio.TimeoutError) as error:
                    self.error("connect " + _kind(error))
                    await asyncio.sleep(0.01)
                    continue
            sent = time.perf_counter()
            got_head = False
            try:
                writer.write(REQUEST)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.args.timeout)
                got_head = True
                status, close = await asyncio.wait_for(_read_rest(head, reader), self.args.timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ValueError) as error:
                where = "after head" if got_head else ("fresh connection" if fresh else "reused connection")
                self.error(f"{_kind(error)} ({where})")
                writer.close()
                reader = writer = None
                continue
            fresh = False
            self.latency_us.append(min(int((time.perf_counter() - sent) * 1e6), 2**32 - 1))
            self.statuses[status] += 1
            if not 200 <= status < 300:
                self.non2xx.append((self.wall(), status))
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    def wall(self) -> float:
        return self.wall_offset + time.monotonic()

    def error(self, kind: str) -> None:
        self.error_kinds[kind] += 1
        if len(self.errors) < 100_000:
            self.errors.append((self.wall(), kind))

    def summary(self) -> dict:
        ordered = sorted(self.latency_us)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1000 if ordered else 0.0

        return {"requests": len(ordered), "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "non2xx": len(self.non2xx), "socket_errors": len(self.errors),
                "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "p999_ms": pct(99.9),
                "max_ms": ordered[-1] / 1000 if ordered else 0.0,
                "connects": self.connects, "idle_closed": self.idle_closed,
                "error_kinds": dict(self.error_kinds.most_common()),
                "errors": self.errors, "non2xx_at": self.non2xx[:100_000],
                "rate": self.args.rate, "connections": self.args.connections, "duration": self.args.duration}


async def _read_rest(head: bytes, reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read the body after ``head``; return (status, the server will close)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name:
            fields[name.strip().lower()] = value.strip().lower()
    if fields.get(b"transfer-encoding", b"").endswith(b"chunked"):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(fields.get(b"content-length", b"0")))
    return status, fields.get(b"connection") == b"close" or parts[0] == b"HTTP/1.0"


def _kind(error: BaseException) -> str:
    if isinstance(error, asyncio.IncompleteReadError):
        return "eof"
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionResetError):
        return "reset"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    return type(error).__name__


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=24)
    parser.add_argument("--timeout", type=float, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    load = Load(args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(load.run())
    else:
        uvloop.run(load.run())
    args.out.write_text(json.dumps(load.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
