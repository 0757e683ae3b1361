"""Bulkheads and the admission queue: a saturated pool queues, sheds with Retry-After when
full, answers 503 on time when a request waited too long, and admits high priority first."""

from __future__ import annotations

import http.client
import json
import threading
import time

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
pools:
  web:
    health: {{enabled: false}}
    limits: {{max_inflight_per_backend: 1, queue: {queue}, queue_timeout: {timeout}, retry_after: 2s}}
    backends: [{{url: "http://127.0.0.1:{a}"}}]
"""


def fire(port: int, path: str, results: list, headers: dict | None = None) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        results.append((path, response.status, response.getheader("retry-after"), body,
                        time.monotonic() - started, time.monotonic()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_queue_full_sheds_at_once_and_queue_timeout_fires_on_time(lbd, upstreams):
    _, port = lbd(CONFIG, queue=2, timeout="300ms", a=upstreams["a"])
    results: list = []
    threads = [fire(port, "/slow?delay=1.2", results)]
    time.sleep(0.2)  # the first holds the only slot
    threads += [fire(port, f"/slow?delay=0.1&q={i}", results) for i in range(2)]
    time.sleep(0.05)
    threads.append(fire(port, "/slow?delay=0.1&shed", results))
    for thread in threads:
        thread.join(10)
    by_path = {path: (status, retry_after, json.loads(body), elapsed) for path, status, retry_after, body, elapsed, _ in results}
    status, retry_after, body, elapsed = by_path["/slow?delay=0.1&shed"]
    assert (status, retry_after, body["code"]) == (503, "2", "queue_full")
    assert elapsed < 0.1  # shed at once, not after a wait
    for i in range(2):
        status, retry_after, body, elapsed = by_path[f"/slow?delay=0.1&q={i}"]
        assert (status, retry_after, body["code"]) == (503, "2", "queue_timeout")
        assert 0.29 < elapsed < 0.36, elapsed  # the deadline, to within a few milliseconds
    assert by_path["/slow?delay=1.2"][0] == 200


def test_queued_requests_are_admitted_high_priority_first(lbd, upstreams):
    _, port = lbd(CONFIG, queue=10, timeout="5s", a=upstreams["a"])
    results: list = []
    threads = [fire(port, "/slow?delay=0.4&first", results)]
    time.sleep(0.15)
    for name in ("n1", "n2"):
        threads.append(fire(port, f"/slow?delay=0.05&{name}", results))
        time.sleep(0.05)
    threads.append(fire(port, "/slow?delay=0.05&high", results, {"x-lbd-priority": "high"}))
    for thread in threads:
        thread.join(10)
    finished = [path.rsplit("&", 1)[1] for path, status, *_ in sorted(results, key=lambda r: r[5]) if status == 200]
    assert finished == ["first", "high", "n1", "n2"]
