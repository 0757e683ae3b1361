"""A lean closed-loop HTTP/1.1 load generator: one asyncio Protocol per connection, requests
pre-encoded as whole byte strings, responses framed by Content-Length alone.

It costs the load-generating machine several times less CPU per request than aiohttp's client,
which matters when the load generator shares the CPUs with the workers it measures (the GPU
machine): with aiohttp, the clients and not the workers set the ceiling at tens of thousands
of requests/s. Each of ``concurrency`` connections sends its next request when the last
answer arrived (keep-alive), like ``bench_worker._load``.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["run_load", "encode_request"]


def encode_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if not any(name.lower() == "content-type" for name in headers):
        head.append("Content-Type: application/json")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Client(asyncio.Protocol):
    def __init__(self, requests: list[bytes], first: int, step: int, window: tuple[float, float],
                 results: dict, finished: asyncio.Future) -> None:
        self.requests, self.index, self.step = requests, first, step
        self.measure_from, self.stop_at = window
        self.results, self.finished = results, finished
        self.buffer = b""
        self.need = -1  # bytes of the whole response once its head is parsed
        self.status = 0
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        if self.sent >= self.stop_at:
            self.transport.close()
            return
        self.transport.write(self.requests[self.index % len(self.requests)])
        self.index += self.step

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17:head.find(b"\r\n", at + 2)]) if at >= 0 else 0
                if self.status == 100:  # an interim answer: the real one follows
                    self.buffer = self.buffer[end + 4:]
                    continue
                self.need = end + 4 + length
            if len(self.buffer) < self.need:
                return
            self.buffer = self.buffer[self.need:]
            self.need = -1
            done = time.perf_counter()
            if self.measure_from <= done < self.stop_at:
                if self.status == 200:
                    self.results["latencies"].append(done - self.sent)
                else:
                    self.results["errors"] += 1
            self._send()

    def connection_lost(self, exc) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def run_load(ports: list[int], concurrency: int, duration: float, bodies: list[tuple[bytes, dict]],
                   warmup: float, model: str) -> tuple[list[float], int]:
    """``(latencies of the requests completed in the window, errors)``."""
    loop = asyncio.get_running_loop()
    path = f"/v2/models/{model}/infer"
    per_port = {port: [encode_request(port, path, body, headers) for body, headers in bodies] for port in ports}
    start = time.perf_counter()
    window = (start + warmup, start + warmup + duration)
    results: dict = {"latencies": [], "errors": 0}
    finished = []
    for slot in range(concurrency):
        port = ports[slot % len(ports)]
        done = loop.create_future()
        finished.append(done)
        await loop.create_connection(
            lambda port=port, slot=slot, done=done: _Client(per_port[port], slot, concurrency, window, results, done),
            "127.0.0.1", port)
    await asyncio.wait_for(asyncio.gather(*finished), warmup + duration + 60)
    return results["latencies"], results["errors"]
