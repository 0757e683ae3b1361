"""The chaos load client: fixed concurrency, keep-alive HTTP/1.1 POSTs, every request recorded.

    python bench/chaos/load.py --port 8080 --duration 20 --concurrency 16 --out records.json

A small raw asyncio client (uvloop when installed) rather than aiohttp or wrk: aiohttp costs a
whole core at these rates on a 2-core machine, and wrk cannot tie a latency to a status or
time a request out on its own. Each of ``--concurrency`` clients sends one request at a time
on its own keep-alive connection and records, for every request, when it started (seconds
since the load began), its latency and its outcome: the HTTP status, or ``timeout`` (no
complete answer within ``--timeout``), ``connect`` (the connection could not be opened),
``reset`` (the connection broke or closed before a complete answer) or ``protocol`` (an
answer that is not HTTP). A request that failed without a status closes its connection; the
next request opens a new one. Requests still in flight when the time is up are waited for
(up to ``--timeout``) and counted. ``backend`` is the answer's ``x-lbd-backend`` header, which
lbd sets and the HAProxy and nginx configs of this benchmark set too (the server that answered;
nginx: every address tried), followed by ``#N`` when lbd's ``x-lbd-attempts`` says it took N
tries.

It prints ``GO <CLOCK_MONOTONIC seconds>`` on stdout the moment the load starts, so the
driver can run the chaos timeline on the same clock, and writes the records as JSON to
``--out`` at the end: {"t0": ..., "records": [[start_s, latency_s, outcome, backend], ...],
"reasons": {"503 no_backend": n, ...}} where a reason is a non-2xx answer's short cause (the
``code`` of a JSON error body, the <title> or <h1> of an HTML one, else its first words), or
for a failure without an answer, what went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter

PATH = "/v2/models/classifier/infer"
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4]}]},
                  separators=(",", ":")).encode()


class ProtocolError(Exception):
    pass


def request_bytes(port: int) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool, str]:
    """(status, body, keep-alive, x-lbd-backend) of one response; 1xx answers are skipped."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(lines[0][:80])
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        backend = headers.get("x-lbd-backend", "")
        if "x-lbd-attempts" in headers:        # lbd: tries, when there was more than one
            backend += "#" + headers["x-lbd-attempts"]
        keep_alive = "close" not in headers.get("connection", "").lower() and parts[0] == "HTTP/1.1"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                body += await reader.readexactly(size + 2)
                del body[-2:]
            return status, bytes(body), keep_alive, backend
        if "content-length" in headers:
            return status, await reader.readexactly(int(headers["content-length"])), keep_alive, backend
        if status in (204, 304):
            return status, b"", keep_alive, backend
        return status, await reader.read(), False, backend   # delimited by the close


def reason_of(status: int, body: bytes) -> str:
    text = body[:2000].decode("utf-8", "replace")
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            if "code" in data:
                return f"{status} {data['code']}"
            if "error" in data:
                return f"{status} {str(data['error'])[:60]}"
    except ValueError:
        pass
    title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
    if title:
        return f"{status} {title.group(1).strip()[:60]}"
    if re.search(r"<h1>(.*?)</h1>", text, re.I | re.S):
        return f"{status} {re.search(r'<h1>(.*?)</h1>', text, re.I | re.S).group(1).strip()[:60]}"
    return f"{status} {' '.join(text.split())[:60] or '(empty body)'}"


async def run(port: int, duration: float, concurrency: int, timeout: float) -> dict:
    payload = request_bytes(port)
    records: list[tuple[float, float, object]] = []
    reasons: Counter[str] = Counter()
    t0 = time.monotonic()
    end = t0 + duration
    print(f"GO {t0:.6f}", flush=True)

    async def client() -> None:
        reader = writer = None
        while time.monotonic() < end:
            start = time.monotonic()
            backend = ""
            try:
                async with asyncio.timeout(timeout):
                    if writer is None:
                        try:
                            reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        except OSError as error:
                            raise ConnectionRefusedError(str(error)) from None
                    writer.write(payload)
                    status, body, keep_alive, backend = await read_response(reader)
                outcome = status
                if not 200 <= status < 300:
                    reasons[reason_of(status, body)] += 1
                if not keep_alive:
                    writer.close()
                    reader = writer = None
            except TimeoutError:
                outcome = "timeout"
                reasons["timeout"] += 1
            except ConnectionRefusedError as error:
                outcome = "connect"
                reasons[f"connect {error}"[:80]] += 1
            except ProtocolError as error:
                outcome = "protocol"
                reasons[f"protocol {error}"[:80]] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
                outcome = "reset"
                if isinstance(error, asyncio.IncompleteReadError):
                    what = f"connection closed after {len(error.partial)} bytes of the answer"
                else:
                    what = f"{type(error).__name__}: {error}"
                reasons[f"reset ({what})"[:80]] += 1
            if not isinstance(outcome, int) and writer is not None:
                writer.close()
                reader = writer = None
            now = time.monotonic()
            records.append((round(start - t0, 6), round(now - start, 6), outcome, backend))
            if outcome == "connect":
                await asyncio.sleep(0.001)   # do not spin on a refused port
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"t0": t0, "duration": duration, "concurrency": concurrency, "timeout": timeout,
            "elapsed": time.monotonic() - t0, "records": records, "reasons": dict(reasons)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds (5)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.port, args.duration, args.concurrency, args.timeout))
    with open(args.out, "w") as out:
        json.dump(result, out, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
