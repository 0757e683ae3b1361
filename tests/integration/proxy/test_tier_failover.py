"""Priority tiers through the real proxy process, with real upstream processes: killing
backends of the first tier moves traffic to the second in proportion, step by step, and
restarting them brings it back once their health checks pass."""

from __future__ import annotations

import http.client
import json
import signal
import urllib.request
from collections import Counter

from tests.support.procs import free_port, start_upstream, wait_for

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{access: false}}
pools:
  web:
    health: {{path: /echo, interval: 100ms, down_interval: 100ms, timeout: 500ms, rise: 2, fall: 2}}
    # Health alone takes backends out here, so the split is exactly the one computed.
    outlier: {{consecutive_5xx: 0, consecutive_gateway_failure: 0, consecutive_local_origin_failure: 0}}
    breaker: {{enabled: false}}
    tiers: {{overprovisioning_factor: 1.4}}
    backends:
{backends}
"""
TIER0 = ["a0", "a1", "a2", "a3"]
TIER1 = ["b0", "b1"]
REQUESTS = 600


def tier_loads(admin: int) -> list[int] | None:
    """The pool's split as the admin API reports it (None until the admin API answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/admin/backends", timeout=2) as response:
            tiers = json.load(response)["pools"]["web"]["tiers"]
    except OSError:
        return None
    return [tier["load"] for tier in tiers]


def tier_counts(port: int, count: int = REQUESTS) -> Counter:
    """Which tier answered ``count`` requests on one keep-alive connection; every answer 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    counts: Counter = Counter()
    try:
        for _ in range(count):
            conn.request("GET", "/echo")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            counts[response.getheader("x-upstream")[0]] += 1  # "a..." is tier 0, "b..." tier 1
    finally:
        conn.close()
    return counts


def test_killing_first_tier_backends_spills_traffic_gradually_and_back(lbd, tmp_path):
    upstreams = {name: start_upstream(tmp_path, name) for name in TIER0 + TIER1}
    ports = {name: port for name, (_, port) in upstreams.items()}
    try:
        backends = "\n".join(
            f'      - {{url: "http://127.0.0.1:{ports[name]}", name: {name}, tier: {0 if name in TIER0 else 1}}}'
            for name in TIER0 + TIER1)
        admin = free_port()
        _, port = lbd(CONFIG, admin=admin, backends=backends)

        def settled(loads: list[int]) -> None:
            wait_for(lambda: tier_loads(admin) == loads, 15, what=f"tier loads {loads}")

        settled([100, 0])
        assert tier_counts(port, 200) == {"a": 200}

        for name in ("a0", "a1"):
            upstreams[name][0].signal(signal.SIGKILL)
            upstreams[name][0].wait()
        settled([70, 30])  # 2/4 x 1.4: not everything moves, 30% does
        counts = tier_counts(port)
        assert 0.2 <= counts["b"] / REQUESTS <= 0.4, counts

        upstreams["a2"][0].signal(signal.SIGKILL)
        upstreams["a2"][0].wait()
        settled([35, 65])  # 1/4 x 1.4
        counts = tier_counts(port)
        assert 0.55 <= counts["b"] / REQUESTS <= 0.75, counts

        for name in ("a0", "a1", "a2"):
            upstreams[name] = start_upstream(tmp_path, name, ports[name])
        settled([100, 0])  # back once two probes in a row pass
        assert tier_counts(port, 200) == {"a": 200}
    finally:
        for proc, _ in upstreams.values():
            proc.stop()
