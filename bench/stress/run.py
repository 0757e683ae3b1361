"""Hostile traffic beside normal traffic (issue 7's stress run).

    python bench/stress/run.py [--seconds 15] [--slowloris 1000] [--malformed 10000]

Starts an nginx upstream and lbd, then measures normal keep-alive traffic (fixed
concurrency) twice: alone, and while 1,000 slow-loris connections trickle header bytes and
10,000 malformed requests arrive from a corpus of framing attacks. Reports the normal
traffic's p50/p99 in both phases, its errors, lbd's memory (RSS before, peak, after), what
the malformed requests got, and whether lbd survived. Target: never crashes or stops
serving, memory bounded, p99 under attack within 2x of p99 without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.integration.proxy.test_hostile import CORPUS  # noqa: E402  the same corpus the tests use
from tests.support.procs import free_port, wait_port  # noqa: E402

NGINX = """
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 '{{"ok":true}}'; }} }} }}
"""
LBD = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
client: {{header_timeout: 10s, max_connections: 20000, max_url_size: 1KiB, max_header_size: 4KiB,
          max_headers: 20, max_body_size: 1MiB}}
pools:
  web:
    health: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
"""
REQUEST = b"POST /infer HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"inputs\":[]}"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def normal_traffic(port: int, seconds: float, concurrency: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors


async def slowloris(port: int, count: int, seconds: float) -> int:
    """Connections that send a request head one field every few seconds and never finish."""
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            writers.append(writer)
        except OSError:
            pass
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(2)
        for writer in writers:
            if not writer.is_closing():
                writer.write(b"X-Slow: 1\r\n")
    opened = len(writers)
    for writer in writers:
        writer.close()
    return opened


async def malformed(port: int, total: int, concurrency: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    queue = list(range(total))

    async def sender() -> None:
        while queue:
            index = queue.pop()
            raw = CORPUS[index % len(CORPUS)][1]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                answer = await asyncio.wait_for(reader.read(64), 10)
                writer.close()
                key = answer[9:12].decode(errors="replace") if answer.startswith(b"HTTP/1.1 ") else "closed"
            except (OSError, asyncio.TimeoutError):
                key = "error"
            outcomes[key] = outcomes.get(key, 0) + 1

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return outcomes


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1e3


async def attack_phase(port: int, args) -> tuple[list[float], int, int, dict[str, int]]:
    loris = asyncio.create_task(slowloris(port, args.slowloris, args.seconds + 2))
    await asyncio.sleep(1.0)  # the slow connections are open before the measurement starts
    (latencies, errors), outcomes = await asyncio.gather(
        normal_traffic(port, args.seconds, args.concurrency), malformed(port, args.malformed, 50))
    opened = await loris
    return latencies, errors, opened, outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--slowloris", type=int, default=1000)
    parser.add_argument("--malformed", type=int, default=10000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp = Path(tempfile.mkdtemp(prefix="lbd-stress-"))
    upstream_port, port = free_port(), free_port()
    (tmp / "nginx.conf").write_text(NGINX.format(tmp=tmp, port=upstream_port))
    (tmp / "lbd.yaml").write_text(LBD.format(port=port, upstream=upstream_port))
    # Pinned as the proxy benchmark is: lbd alone on CPU 0; nginx and every client on CPU 1.
    upstream = subprocess.Popen(["taskset", "-c", "1", nginx, "-c", str(tmp / "nginx.conf")], stderr=subprocess.DEVNULL)
    lbd = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "lbd", "serve", "--config",
                            str(tmp / "lbd.yaml")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / "lbd.log", "wb"))
    os.sched_setaffinity(0, {1})
    try:
        wait_port(upstream_port)
        wait_port(port)
        asyncio.run(normal_traffic(port, 3, args.concurrency))  # warm-up
        rss_before = rss_kib(lbd.pid)
        calm, calm_errors = asyncio.run(normal_traffic(port, args.seconds, args.concurrency))
        peak = [rss_kib(lbd.pid)]

        async def sample() -> None:
            while True:
                peak.append(rss_kib(lbd.pid))
                await asyncio.sleep(0.2)

        async def attacked():
            sampler = asyncio.create_task(sample())
            try:
                return await attack_phase(port, args)
            finally:
                sampler.cancel()

        stormy, stormy_errors, opened, outcomes = asyncio.run(attacked())
        time.sleep(2)
        alive = lbd.poll() is None
        after, after_errors = asyncio.run(normal_traffic(port, 3, args.concurrency))
        rss_after = rss_kib(lbd.pid) if alive else 0
        print(report(args, calm, calm_errors, stormy, stormy_errors, opened, outcomes, alive, after, after_errors,
                     rss_before, max(peak), rss_after))
    finally:
        for proc in (lbd, upstream):
            proc.terminate()
            proc.wait(10)


def report(args, calm, calm_errors, stormy, stormy_errors, opened, outcomes, alive, after, after_errors,
           rss_before, rss_peak, rss_after) -> str:
    calm_p99, stormy_p99 = percentile(calm, 0.99), percentile(stormy, 0.99)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        f"# Stress: hostile traffic beside normal traffic, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- command: `python bench/stress/run.py --seconds {args.seconds:g} --slowloris {args.slowloris} "
        f"--malformed {args.malformed}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}",
        f"- normal traffic: {args.concurrency} keep-alive clients posting a small JSON body through lbd to nginx;"
        " lbd pinned to CPU 0, nginx and all clients (normal and hostile) to CPU 1; the malformed requests are"
        " tests/integration/proxy/test_hostile.py's corpus, under the same limits",
        "",
        "| phase | requests | errors | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        f"| normal traffic alone | {len(calm)} | {calm_errors} | {statistics.median(calm) * 1e3:.2f} | {calm_p99:.2f} |",
        f"| with {opened} slow-loris connections and {args.malformed} malformed requests | {len(stormy)} | "
        f"{stormy_errors} | {statistics.median(stormy) * 1e3:.2f} | {stormy_p99:.2f} |",
        f"| after the attack | {len(after)} | {after_errors} | {statistics.median(after) * 1e3:.2f} | "
        f"{percentile(after, 0.99):.2f} |",
        "",
        f"- p99 under attack / p99 alone: **{stormy_p99 / calm_p99:.2f}x** (target <= 2x)",
        f"- lbd alive and serving after the attack: **{'yes' if alive and after else 'NO'}**",
        f"- lbd RSS: {rss_before / 1024:.1f} MiB before, {rss_peak / 1024:.1f} MiB peak, {rss_after / 1024:.1f} MiB after",
        f"- what the malformed requests got: {', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
