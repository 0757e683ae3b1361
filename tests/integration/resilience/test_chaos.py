"""The chaos scenario of issue 4 with three real workers under steady load.

lbd supervises three lbd-worker processes serving the classifier. While clients send a
steady stream of inference requests: one worker is killed with SIGKILL (the fleet restarts
it), one is frozen with SIGSTOP and thawed later, and the third is overloaded into answering
503 (a one-request queue without batching). Clients must see no failure, and the upstream
attempts must stay within (1 + budget ratio) of the client requests.

One failure at a time: the freeze waits until the killed worker is back in the pool. On a
loaded machine its restart can outlast the pause before the freeze, and with w0 still down
and w1 frozen, w2 alone (a one-request queue) cannot answer twelve clients, whatever the
retries do (the failures seen once in a full-suite run were those).

The clients keep their connections alive; with the compiled lane on, each connection is
handed to the Python data plane at its first retried 503 (within the first second) and stays
there. The second variant opens a connection per request, so that the lane (``LBD_LANE=auto``)
makes every first try through the chaos and hands the failed ones over.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import aiohttp
import pytest

from tests.support.procs import free_port, start_lbd, wait_for

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
pools:
  classifier:
    match: {{models: [classifier]}}
    balancer: {{algorithm: least_connections}}
    timeouts: {{connect: 200ms, per_try: 400ms, total: 5s}}
    health: {{interval: 200ms, down_interval: 200ms, timeout: 300ms, rise: 2, fall: 2}}
    retry: {{attempts: 3, backoff: {{base: 5ms, max: 50ms}}, budget: {{ratio: 0.2, min_per_second: 3, window: 10s}}}}
    breaker: {{consecutive_failures: 5, open_for: 1s}}
    backends: [{{worker: w0}}, {{worker: w1}}, {{worker: w2}}]
workers:
  w0: {{listen: "127.0.0.1:{p0}", intra_op_threads: 1, models: {{classifier: {{}}}}}}
  w1: {{listen: "127.0.0.1:{p1}", intra_op_threads: 1, models: {{classifier: {{}}}}}}
  w2: {{listen: "127.0.0.1:{p2}", intra_op_threads: 1, models: {{classifier: {{dynamic_batching: false, max_queue_size: 1}}}}}}
"""
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4]}]}).encode()


def worker_pid(proc, name: str) -> int:
    found = re.findall(rf"\[worker {name}\] started, pid (\d+)", proc.output())
    return int(found[-1]) if found else 0


def backend_ups(proc, name: str) -> int:
    """How many times lbd's health checker has seen backend ``name`` come back up."""
    return len(re.findall(rf'"msg":"backend up","pool":"classifier","backend":"{name}"', proc.output()))


async def load(port: int, done: asyncio.Event, concurrency: int, fresh: bool) -> list[int]:
    statuses: list[int] = []
    url = f"http://127.0.0.1:{port}/v2/models/classifier/infer"
    connector = aiohttp.TCPConnector(force_close=fresh)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), connector=connector) as session:
        async def client() -> None:
            while not done.is_set():
                try:
                    async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as response:
                        await response.read()
                        statuses.append(response.status)
                except aiohttp.ClientError:
                    statuses.append(0)
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


async def chaos(proc, done: asyncio.Event) -> None:
    await asyncio.sleep(1.5)
    ups = backend_ups(proc, "w0")
    os.kill(worker_pid(proc, "w0"), signal.SIGKILL)  # the fleet restarts it
    await asyncio.sleep(2.0)
    deadline = time.monotonic() + 20
    while backend_ups(proc, "w0") == ups:  # back in the pool before the next failure
        assert time.monotonic() < deadline, "the killed worker did not come back"
        await asyncio.sleep(0.1)
    frozen = worker_pid(proc, "w1")
    os.kill(frozen, signal.SIGSTOP)
    await asyncio.sleep(2.5)
    os.kill(frozen, signal.SIGCONT)
    await asyncio.sleep(3.0)  # the load goes on while w1 comes back
    done.set()


@pytest.mark.parametrize("clients", ["keep-alive", "lane, a connection per request"])
def test_no_client_failures_while_workers_die_freeze_and_shed(tmp_path, clients, compiled_lane):
    fresh = clients != "keep-alive"
    port, ports = free_port(), [free_port() for _ in range(3)]
    config = CONFIG.format(port=port, p0=ports[0], p1=ports[1], p2=ports[2])
    proc = start_lbd(tmp_path, config, port, env={"LBD_LANE": "auto"} if fresh else None)
    try:
        wait_for(lambda: all(worker_pid(proc, name) for name in ("w0", "w1", "w2")), 30, what="workers started")
        first_w0 = worker_pid(proc, "w0")

        async def scenario() -> list[int]:
            done = asyncio.Event()
            statuses, _ = await asyncio.gather(load(port, done, 12, fresh), chaos(proc, done))
            return statuses

        statuses = asyncio.run(scenario())
        assert worker_pid(proc, "w0") != first_w0, "the killed worker was restarted"
        if fresh:
            assert "compiled lane on" in proc.output()
        failures = [s for s in statuses if s != 200]
        assert len(statuses) > 200
        assert failures == [], f"{len(failures)} of {len(statuses)} client requests failed: {sorted(set(failures))}"
        time.sleep(1.2)  # the access log is flushed once a second
        entries = [json.loads(line) for line in proc.output().splitlines() if '"type":"access"' in line]
        attempts = sum(entry["attempts"] for entry in entries)
        retried = sum(1 for entry in entries if entry["attempts"] > 1)
        assert len(entries) == len(statuses)
        assert retried > 0, "the chaos should have caused retries"
        assert attempts <= 1.2 * len(statuses), (attempts, len(statuses))
    finally:
        for name in ("w0", "w1", "w2"):
            pid = worker_pid(proc, name)
            if pid:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        proc.stop(20)
