"""Asynchronous jobs under load: jobs/s and queue latency at a steady submission rate, and the
p99 of interactive requests alone and while a large batch drains.

    python bench/jobs/run.py                      # Redis store (a redis-server of its own), ~3 min
    python bench/jobs/run.py --store memory --rate 40 --batch 4000 --interactive-rate 50

One ``lbd serve`` with two CPU workers serving the built-in ``classifier`` (the cheap real
model), the pool's job concurrency ``--concurrency`` per instance. Phases, each after the
last one's jobs are done:

1. steady: ``--rate`` jobs/s submitted (open loop, one POST /v1/jobs/... each) for
   ``--duration`` s; queue latency = a job's first run start - its submission (from the job
   records), end-to-end = finished - submitted, jobs/s = jobs finished / the window;
2. capacity: one batch of ``--batch`` jobs, drained as fast as the runner goes (jobs/s);
3. ``--rounds`` rounds of: interactive alone (``--interactive-rate`` synchronous
   inferences/s, open loop, for ``--duration`` s), then the same load started just after a
   batch of ``--batch`` jobs (priority low) was accepted, while it drains. Alternating the
   two puts the machine's noise on both alike; the medians of the rounds are compared.

``--job-rate`` sets the pool's ``jobs.rate`` (runs started per second), the knob beside
``jobs.concurrency`` that bounds what a batch takes from interactive traffic.

The report (markdown and JSON) goes to stdout and ``bench/out/jobs-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
INFER = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]})
PATH = "/v2/models/classifier/infer"

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{enabled: false}}
watch: {{enabled: false}}
log: {{access: false, level: warning}}
jobs:
  store: "{store}"
  max_queue: 1000000
  visibility_timeout: 30s
pools:
  classifier:
    match: {{models: [classifier]}}
    balancer: {{algorithm: least_connections}}
    jobs: {{concurrency: {concurrency}, rate: {job_rate}}}
    backends: [{{worker: w0}}, {{worker: w1}}]
workers:
  w0: {{listen: "127.0.0.1:{w0}", device: cpu, intra_op_threads: 1, models: {{classifier: {{}}}}}}
  w1: {{listen: "127.0.0.1:{w1}", device: cpu, intra_op_threads: 1, models: {{classifier: {{}}}}}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} not open in {timeout}s")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def submit(self) -> str:
        async with self.session.post(f"{self.base}/v1/jobs{PATH}", data=INFER,
                                     headers={"content-type": "application/json"}) as response:
            assert response.status == 202, await response.text()
            return (await response.json())["id"]

    async def submit_batch(self, count: int) -> list[str]:
        body = json.dumps({"requests": [json.loads(INFER)] * count})
        async with self.session.post(f"{self.base}/v1/jobs/batch{PATH}", data=body,
                                     headers={"content-type": "application/json", "x-lbd-priority": "low"}) as response:
            assert response.status == 202, await response.text()
            return (await response.json())["jobs"]

    async def records(self, ids: list[str], poll: float = 0.25) -> list[dict]:
        """Every job's record once all are finished."""
        pending, done = set(ids), {}
        while pending:
            for job_id in list(pending):
                async with self.session.get(f"{self.base}/v1/jobs/{job_id}") as response:
                    view = await response.json()
                if view["state"] not in ("queued", "running"):
                    done[job_id] = view
                    pending.discard(job_id)
                else:
                    break  # still working: look again later, from this one on
            if pending:
                await asyncio.sleep(poll)
        return [done[job_id] for job_id in ids]

    async def steady(self, rate: float, duration: float) -> dict:
        ids, start = [], time.monotonic()
        tasks = []
        for index in range(int(rate * duration)):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.submit()))
        ids = await asyncio.gather(*tasks)
        records = await self.records(ids)
        return summarize(records)

    async def interactive(self, rate: float, duration: float) -> dict:
        latencies: list[float] = []
        statuses: dict[int, int] = {}

        async def one() -> None:
            began = time.monotonic()
            async with self.session.post(f"{self.base}{PATH}", data=INFER,
                                         headers={"content-type": "application/json"}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.monotonic() - began)

        start, tasks = time.monotonic(), []
        for index in range(int(rate * duration)):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        return {"requests": len(latencies), "statuses": statuses, "p50_ms": percentile(latencies, 0.5) * 1e3,
                "p99_ms": percentile(latencies, 0.99) * 1e3, "max_ms": max(latencies) * 1e3}


def summarize(records: list[dict]) -> dict:
    waits = [r["started_at"] - r["submitted_at"] for r in records if r["started_at"]]
    totals = [r["finished_at"] - r["submitted_at"] for r in records]
    first = min(r["submitted_at"] for r in records)
    last = max(r["finished_at"] for r in records)
    states: dict[str, int] = {}
    for record in records:
        states[record["state"]] = states.get(record["state"], 0) + 1
    return {"jobs": len(records), "states": states, "jobs_per_s": len(records) / (last - first),
            "queue_p50_ms": percentile(waits, 0.5) * 1e3, "queue_p99_ms": percentile(waits, 0.99) * 1e3,
            "total_p50_ms": percentile(totals, 0.5) * 1e3, "total_p99_ms": percentile(totals, 0.99) * 1e3,
            "attempts_max": max(r["attempts"] for r in records)}


async def measure(args: argparse.Namespace, port: int) -> dict:
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        bench = Bench(session, f"http://127.0.0.1:{port}")
        for _ in range(50):  # warm the workers and the connections
            await bench.interactive(50, 0.2)
        report = {"steady": await bench.steady(args.rate, args.duration)}
        started = time.monotonic()
        report["capacity"] = summarize(await bench.records(await bench.submit_batch(args.batch)))
        report["capacity"]["wall_s"] = time.monotonic() - started
        report["rounds"] = []
        for _ in range(args.rounds):  # alternated, so machine noise falls on both alike
            alone = await bench.interactive(args.interactive_rate, args.duration)
            ids = await bench.submit_batch(args.batch)
            during = await bench.interactive(args.interactive_rate, args.duration)
            async with session.get(f"{bench.base}/v1/jobs/{ids[0]}") as response:
                batch_of = (await response.json()).get("batch")
            async with session.get(f"{bench.base}/v1/jobs/{batch_of}") as response:
                during["batch_left_after_window"] = (await response.json())["counts"]["queued"]
            report["rounds"].append({"alone": alone, "during": during, "batch": summarize(await bench.records(ids))})
    return report


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(), "python": platform.python_version(),
            "load_1m": os.getloadavg()[0]}


def markdown(args: argparse.Namespace, report: dict) -> str:
    s, c = report["steady"], report["capacity"]
    lines = [
        f"`{' '.join(sys.argv)}` on {report['machine']['cpus']} CPUs ({report['machine']['cpu']}), "
        f"{report['date']}, store {args.store}, job concurrency {args.concurrency}, job rate "
        f"{args.job_rate or 'unlimited'}",
        "", "| phase | jobs | jobs/s | queue p50 ms | queue p99 ms | end-to-end p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| steady {args.rate:g} jobs/s | {s['jobs']} | {s['jobs_per_s']:.1f} | {s['queue_p50_ms']:.1f} | "
        f"{s['queue_p99_ms']:.1f} | {s['total_p50_ms']:.1f} | {s['total_p99_ms']:.1f} |",
        f"| batch of {args.batch}, alone | {c['jobs']} | {c['jobs_per_s']:.1f} | {c['queue_p50_ms']:.0f} | "
        f"{c['queue_p99_ms']:.0f} | {c['total_p50_ms']:.0f} | {c['total_p99_ms']:.0f} |",
    ]
    for index, round_ in enumerate(report["rounds"], 1):
        b = round_["batch"]
        lines.append(f"| batch of {args.batch} beside interactive, round {index} | {b['jobs']} | {b['jobs_per_s']:.1f} | "
                     f"{b['queue_p50_ms']:.0f} | {b['queue_p99_ms']:.0f} | {b['total_p50_ms']:.0f} | "
                     f"{b['total_p99_ms']:.0f} |")
    lines += ["", f"| interactive, {args.interactive_rate:g} req/s for {args.duration:g} s | requests | p50 ms | "
              "p99 ms | max ms | statuses | batch jobs still queued after |", "|---|---:|---:|---:|---:|---|---:|"]
    for index, round_ in enumerate(report["rounds"], 1):
        for name, key in (("alone", "alone"), ("while the batch drains", "during")):
            r = round_[key]
            lines.append(f"| round {index}, {name} | {r['requests']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['max_ms']:.1f} | {r['statuses']} | {r.get('batch_left_after_window', '')} |")
    for name, key in (("alone", "alone"), ("while the batch drains", "during")):
        p99s = [round_[key]["p99_ms"] for round_ in report["rounds"]]
        p50s = [round_[key]["p50_ms"] for round_ in report["rounds"]]
        lines.append(f"| **median of rounds, {name}** | | {statistics.median(p50s):.2f} | "
                     f"**{statistics.median(p99s):.2f}** | | | |")
    lines.append(f"\nLoad average (1 min) before: {report['machine']['load_1m']:.2f}, after: "
                 f"{os.getloadavg()[0]:.2f} (other processes share this machine).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("redis", "memory"), default="redis")
    parser.add_argument("--rate", type=float, default=50.0, help="steady submissions per second")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=8000, help="jobs in each batch (enough to outlast a window)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interactive-rate", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=2, help="the pool's jobs.concurrency")
    parser.add_argument("--job-rate", type=float, default=0, help="the pool's jobs.rate (0: none)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lbd-bench-jobs-"))
    procs: list[subprocess.Popen] = []
    try:
        store = "memory"
        if args.store == "redis":
            binary = shutil.which("redis-server") or sys.exit("redis-server is not installed")
            redis_port = free_port()
            procs.append(subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(work)],
                                          stdout=subprocess.DEVNULL))
            wait_port(redis_port)
            store = f"redis://127.0.0.1:{redis_port}/0"
        port = free_port()
        config = work / "lbd.yaml"
        config.write_text(CONFIG.format(port=port, store=store, concurrency=args.concurrency,
                                        job_rate=args.job_rate if args.job_rate else "null", w0=free_port(),
                                        w1=free_port()))
        log = open(work / "lbd.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "lbd", "serve", "--config", str(config)], stdout=log,
                                      stderr=subprocess.STDOUT, cwd=ROOT))
        wait_port(port)
        before = machine()
        report = asyncio.run(measure(args, port))
        report["machine"] = before
        report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        report["args"] = vars(args)
        text = markdown(args, report)
        print(text)
        out = ROOT / "bench" / "out"
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (out / f"jobs-{stamp}.md").write_text(text + "\n")
        (out / f"jobs-{stamp}.json").write_text(json.dumps(report, indent=2))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
