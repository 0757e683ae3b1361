"""Open-loop load: KServe POSTs at a fixed rate, whatever the answers' pace.

    python bench/policies/openloop.py --port 8080 --path /v2/models/classifier/infer \
        --rate 300 --duration 20 --out records.json

Request ``i`` is due at ``i / rate`` seconds after the start; it takes an idle keep-alive
connection (or opens one, up to ``--connections``) and its latency is counted from when it
was due, not from when it could be sent, so a proxy that stalls is charged for the requests
queued behind the stall (no coordinated omission, unlike a closed-loop client such as wrk or
bench/chaos/load.py). The answer is read with bench/chaos/load.py's parser. Writes
{"rate", "duration", "records": [[due_s, latency_s, status or error], ...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from load import ProtocolError, read_response  # noqa: E402

BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4]}]},
                  separators=(",", ":")).encode()


async def run(port: int, path: str, rate: float, duration: float, connections: int, timeout: float) -> dict:
    payload = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    slots = asyncio.Semaphore(connections)
    records: list[tuple[float, float, object]] = []

    async def one(due: float) -> None:
        async with slots:
            reader, writer = idle.pop() if idle else (None, None)
            outcome: object
            try:
                async with asyncio.timeout(timeout):
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(payload)
                    status, _, keep_alive, _ = await read_response(reader)
                outcome = status
                if keep_alive:
                    idle.append((reader, writer))
                else:
                    writer.close()
            except (TimeoutError, OSError, ProtocolError, asyncio.IncompleteReadError, ValueError) as error:
                outcome = type(error).__name__
                if writer is not None:
                    writer.close()
            records.append((round(due - t0, 6), round(time.monotonic() - due, 6), outcome))

    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    tasks = []
    total = int(rate * duration)
    for index in range(total):
        due = t0 + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(due)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return {"rate": rate, "duration": duration, "elapsed": time.monotonic() - t0, "records": records}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--rate", type=float, default=300.0, help="requests a second (300)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (20)")
    parser.add_argument("--connections", type=int, default=64, help="at most this many at once (64)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds (5)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.port, args.path, args.rate, args.duration, args.connections, args.timeout))
    Path(args.out).write_text(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
