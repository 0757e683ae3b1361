"""A real scrape of a running daemon passes ``promtool check metrics``."""

from __future__ import annotations

import asyncio
import subprocess



def test_promtool_finds_nothing_to_complain_about(harness, promtool):
    async def scenario() -> str:
        async with harness() as h:
            for path in ("/echo", "/status/503", "/api/echo", "/nowhere/but/default"):
                await h.proxy_get(path)
            h.metrics.cache_lookup("web", "hit_exact")
            h.metrics.cache_error("timeout")
            good = h.config_path.read_text()
            h.config_path.write_text(good.replace("interval: 200ms", "interval: -1s"))
            assert not await h.daemon.reload()
            h.runtime.pools["web"].backends[1].breaker.on_failure()
            async with h.http.get("/metrics") as response:
                return await response.text()

    exposition = asyncio.run(scenario())
    for family in ("lbd_backend_state", "lbd_upstream_attempts_total", "lbd_cache_requests_total",
                   "lbd_backend_probe_latency_seconds", "lbd_config_last_reload_successful 0.0"):
        assert family in exposition
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
                             timeout=30)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
