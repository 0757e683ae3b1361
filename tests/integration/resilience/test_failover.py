"""Resilience through the real proxy process with real upstream processes: a backend dies,
fails, or is slow, and the client does not notice; retries stay within their budget."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time


from tests.support.procs import start_upstream, upstream_requests, wait_for

POOL = """
listen: [{{address: "127.0.0.1:{port}"}}]
pools:
  web:
    health: {{path: /echo, interval: 100ms, down_interval: 100ms, timeout: 300ms, rise: 2, fall: 2}}
    retry: {{attempts: 3, backoff: {{base: 5ms, max: 20ms}}, budget: {{ratio: 0.2, min_per_second: {floor}}}}}
    breaker: {{consecutive_failures: 3, open_for: {open_for}}}
    outlier: {{consecutive_5xx: 100, consecutive_gateway_failure: 100, consecutive_local_origin_failure: 100}}
    backends:
{backends}
"""


def backends(*ports: int) -> str:
    return "\n".join(f'      - {{url: "http://127.0.0.1:{p}"}}' for p in ports)


def call(port: int, path: str = "/echo", method: str = "POST", body: bytes = b'{"x":1}', headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body if method == "POST" else None, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


def attempts_in_log(proc) -> int:
    total = 0
    for line in proc.output().splitlines():
        if line.startswith("{") and '"type":"access"' in line:
            total += json.loads(line)["attempts"]
    return total


def test_a_killed_backend_is_taken_out_and_brought_back(lbd, tmp_path):
    a, port_a = start_upstream(tmp_path, "a")
    b, port_b = start_upstream(tmp_path, "b")
    try:
        _, port = lbd(POOL, floor=3, open_for="1s", backends=backends(port_a, port_b))
        assert {call(port)[0].getheader("x-upstream") for _ in range(6)} == {"a", "b"}
        b.signal(signal.SIGKILL)
        b.wait()
        # Every request still succeeds: retries cover the window until the checker notices.
        for _ in range(30):
            response, _ = call(port)
            assert response.status == 200 and response.getheader("x-upstream") == "a"
        b, _ = start_upstream(tmp_path, "b", port_b)
        wait_for(lambda: call(port)[0].getheader("x-upstream") == "b", 10, what="b back in rotation")
    finally:
        a.stop()
        b.stop()


def test_a_failing_backend_is_retried_elsewhere_within_the_budget(lbd, tmp_path):
    good, port_good = start_upstream(tmp_path, "good")
    bad, port_bad = start_upstream(tmp_path, "bad", None, "--fail-status", "503")
    try:
        config = POOL.replace("health: {{path: /echo", "health: {{enabled: false, path: /echo")
        proc, port = lbd(config, floor=3, open_for="30s", backends=backends(port_good, port_bad))
        for _ in range(40):
            response, _ = call(port)
            assert response.status == 200 and response.getheader("x-upstream") == "good"
        # The breaker opened after 3 failures: the bad backend saw only those.
        assert upstream_requests(port_bad) == 3
        assert upstream_requests(port_good) == 40
    finally:
        good.stop()
        bad.stop()


def test_retry_budget_caps_upstream_attempts_when_everything_fails(lbd, tmp_path):
    bad = [start_upstream(tmp_path, f"bad{i}", None, "--fail-status", "503") for i in range(2)]
    try:
        config = POOL.replace("health: {{path: /echo", "health: {{enabled: false, path: /echo").replace(
            "breaker: {{consecutive_failures: 3", "breaker: {{enabled: false, consecutive_failures: 3")
        _, port = lbd(config, floor=0, open_for="30s", backends=backends(*(p for _, p in bad)))
        requests = 100
        statuses = [call(port)[0].status for _ in range(requests)]
        assert set(statuses) == {503}  # the backends' own answer, passed on
        attempts = sum(upstream_requests(p) for _, p in bad)
        # ratio 0.2, no floor: at most 20 retries for 100 requests (and some were made)
        assert requests < attempts <= requests * 1.2
    finally:
        for proc, _ in bad:
            proc.stop()


def test_retry_after_is_honoured_and_not_idempotent_requests_are_not_resent(lbd, tmp_path):
    good, port_good = start_upstream(tmp_path, "good")
    busy, port_busy = start_upstream(tmp_path, "busy", None, "--fail-status", "503", "--retry-after", "1")
    try:
        config = POOL.replace("health: {{path: /echo", "health: {{enabled: false, path: /echo").replace(
            "breaker: {{consecutive_failures: 3", "breaker: {{enabled: false, consecutive_failures: 3")
        _, port = lbd(config, floor=3, open_for="30s", backends=backends(port_busy, port_good))
        for _ in range(2):  # round robin: one of the two meets the busy backend first
            started = time.monotonic()
            response, _ = call(port)
            assert response.status == 200 and response.getheader("x-upstream") == "good"
            # Retry-After speaks for the busy backend only: the retry elsewhere does not wait.
            assert time.monotonic() - started < 0.5
        _, alone = lbd(config.replace("attempts: 3", "attempts: 2"), floor=3, open_for="30s",
                       backends=backends(port_busy))
        before = upstream_requests(port_busy)
        started = time.monotonic()
        response, _ = call(alone)
        assert response.status == 503  # nowhere else to go: waited 1 s, tried again, still busy
        assert time.monotonic() - started >= 0.95
        assert upstream_requests(port_busy) == before + 2
        config = config.replace("retry: {{attempts: 3,", "retry: {{attempts: 3, idempotent: false,")
        _, port = lbd(config, floor=3, open_for="30s", backends=backends(port_busy, port_good))
        statuses = sorted(call(port)[0].status for _ in range(2))
        assert statuses == [200, 503]  # the one that met the busy backend was not sent again
        before = upstream_requests(port_busy)
        gets = [call(port, method="GET")[0] for _ in range(2)]
        assert [r.status for r in gets] == [200, 200]  # GET is idempotent whatever the pool says
        assert upstream_requests(port_busy) > before  # ...and did meet the busy backend first
    finally:
        good.stop()
        busy.stop()


def test_deadline_header_cuts_the_request_short(lbd, upstreams):
    _, port = lbd(POOL, floor=3, open_for="30s", backends=backends(upstreams["a"]))
    started = time.monotonic()
    response, body = call(port, "/slow?delay=3", method="GET", headers={"x-lbd-timeout-ms": "300"})
    assert response.status == 504 and json.loads(body)["code"] == "timeout"
    assert 0.25 < time.monotonic() - started < 1.0


def test_graceful_shutdown_finishes_requests_in_flight(lbd, upstreams):
    proc, port = lbd(POOL, floor=3, open_for="30s", backends=backends(upstreams["a"]))
    results = {}

    def slow() -> None:
        results["response"] = call(port, "/slow?delay=1", method="GET")

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    proc.signal(signal.SIGTERM)
    wait_for(lambda: not _accepts(port), 5, what="listener closed")
    thread.join(5)
    response, body = results["response"]
    assert response.status == 200 and json.loads(body) == {"slept": True}
    assert proc.wait(10) == 0


def _accepts(port: int) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
