"""The admin API over a real daemon: backends, drain, reload, cache purge, config, auth."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbd.admin.server import AdminRefused, AdminServer
from lbd.resilience.outlier import Outcome
from tests.support.procs import free_port


class DictCache:
    """The smallest real cache behind the purge interface: entries keyed by (pool, model, tenant)."""

    def __init__(self, keys: list[tuple[str, str, str]]) -> None:
        self.entries = dict.fromkeys(keys, b"answer")

    def purge(self, pool: str | None = None, model: str | None = None, tenant: str | None = None) -> int:
        wanted = lambda key: all(v is None or v == k for k, v in zip(key, (pool, model, tenant)))  # noqa: E731
        doomed = [key for key in self.entries if wanted(key)]
        for key in doomed:
            del self.entries[key]
        return len(doomed)


class AsyncDictCache(DictCache):
    async def purge(self, pool: str | None = None, model: str | None = None, tenant: str | None = None) -> int:
        await asyncio.sleep(0)
        return super().purge(pool, model, tenant)


def test_backends_show_state_reason_ejection_breaker_and_probe_latency(harness):
    async def scenario() -> None:
        async with harness() as h:
            view = await h.get_json("/admin/backends")
            assert sorted(view["pools"]) == ["api", "web"]
            alpha = view["pools"]["web"]["backends"][0]
            assert (alpha["name"], alpha["state"], alpha["reason"]) == ("alpha", "healthy", None)
            assert alpha["breaker"]["state"] == "closed" and alpha["probe"]["ok"] is True
            assert 0 < alpha["latency_s"] < 1.0  # the last probe's
            assert view["pools"]["web"]["queue"] == {"waiting": 0, "size": 16, "admitted": 0, "shed_full": 0,
                                                     "shed_timeout": 0}
            web = h.runtime.pools["web"]
            alpha_backend, beta_backend = web.backends
            for _ in range(5):  # consecutive gateway failures: ejected for 30s
                web.outlier.on_result(alpha_backend, Outcome.GATEWAY_FAILURE)
            beta_backend.breaker.on_failure()
            beta_backend.breaker.on_failure()
            view = await h.get_json("/admin/backends")
            alpha, beta = view["pools"]["web"]["backends"]
            assert (alpha["state"], alpha["ejected"]) == ("ejected", True)
            assert alpha["reason"] == "5 consecutive gateway failures"
            assert time.time() + 25 < alpha["ejected_until"] < time.time() + 31
            assert beta["state"] == "healthy"
            assert beta["breaker"]["state"] == "open" and beta["breaker"]["reason"] == "2 consecutive failures"
            assert 25 < beta["breaker"]["reopens_in_s"] <= 30
            assert time.time() + 25 < beta["breaker"]["reopens_at"] < time.time() + 31

    asyncio.run(scenario())


def test_drain_and_undrain_flip_backend_drained_and_steer_traffic(harness):
    async def scenario() -> None:
        async with harness() as h:
            alpha = h.runtime.pools["web"].backends[0]
            answer = await h.post_json("/admin/backends/web/alpha/drain")
            assert alpha.drained is True
            assert (answer["pool"], answer["name"], answer["state"], answer["reason"]) == (
                "web", "alpha", "drained", "drained by an operator")
            for _ in range(4):
                status, headers = await h.proxy_get("/echo")
                assert (status, headers["x-lbd-backend"]) == (200, "beta")
            answer = await h.post_json("/admin/backends/web/alpha/undrain")
            assert alpha.drained is False and answer["state"] == "healthy"
            served = {(await h.proxy_get("/echo"))[1]["x-lbd-backend"] for _ in range(6)}
            assert served == {"alpha", "beta"}
            missing = await h.post_json("/admin/backends/web/nobody/drain", status=404)
            assert missing["backends"] == ["alpha", "beta"]
            await h.post_json("/admin/backends/nowhere/alpha/drain", status=404)
            async with h.http.get("/admin/backends/web/alpha/drain") as response:
                assert response.status == 405

    asyncio.run(scenario())


def test_reload_applies_a_good_file_and_says_what_changed(harness, upstreams):
    async def scenario() -> None:
        async with harness() as h:
            beta = '      - {url: "http://127.0.0.1:%d", name: beta}\n' % upstreams["b"]
            delta = '      - {url: "http://127.0.0.1:%d", name: delta}\n' % upstreams["a"]
            extra = '  extra:\n    match: {path_prefix: /extra}\n    backends: [{url: "http://127.0.0.1:%d"}]\n' % (
                upstreams["a"])
            text = h.config_path.read_text().replace(beta, beta + delta)
            text = text.replace("default_pool:", extra + "default_pool:")
            h.config_path.write_text(text)
            answer = await h.post_json("/admin/reload")
            assert answer["ok"] is True and answer["errors"] == []
            assert answer["changes"]["pools_added"] == ["extra"]
            assert answer["changes"]["pools_changed"] == {"web": {"backends_added": ["delta"]}}
            assert sorted(h.runtime.pools) == ["api", "extra", "web"]
            assert [b.name for b in h.runtime.pools["web"].backends] == ["alpha", "beta", "delta"]

    asyncio.run(scenario())


def test_the_heap_is_frozen_when_ready_thawed_by_a_reload_and_settled_again_later(harness, monkeypatch):
    monkeypatch.setattr("lbd.daemon.RESETTLE_AFTER", 0.2)

    async def scenario() -> None:
        async with harness() as h:
            assert gc.get_freeze_count() > 0  # lbd.heap.settle() when ready
            answer = await h.post_json("/admin/reload")
            assert answer["ok"] is True
            assert gc.get_freeze_count() == 0  # the replaced runtime's cycles can be collected
            await asyncio.sleep(0.5)
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0  # a stopped daemon leaves nothing frozen

    asyncio.run(scenario())


def test_reload_refuses_a_bad_file_with_path_named_errors_then_takes_the_next_good_one(harness):
    async def scenario() -> None:
        async with harness() as h:
            good = h.config_path.read_text()
            runtime = h.runtime
            h.config_path.write_text(good.replace("queue: 16}", "queue: 16}\n    retry: {attempts: 0}"))
            answer = await h.post_json("/admin/reload", status=422)
            assert answer["ok"] is False
            assert any("pools.web.retry.attempts" in error and "line" in error for error in answer["errors"])
            assert h.runtime is runtime  # nothing changed
            h.config_path.write_text(good.replace("open_for: 30s", "open_for: 20s"))
            answer = await h.post_json("/admin/reload")
            assert answer["changes"]["pools_changed"] == {"web": {"settings": ["breaker"]}}
            assert h.runtime is not runtime

    asyncio.run(scenario())


def test_cache_purge_without_a_cache_is_404(harness):
    async def scenario() -> None:
        async with harness() as h:
            answer = await h.post_json("/admin/cache/purge", status=404)
            assert answer["error"] == "no cache configured"

    asyncio.run(scenario())


@pytest.mark.parametrize("cache_type", [DictCache, AsyncDictCache])
def test_cache_purge_by_pool_model_and_tenant(harness, cache_type):
    cache = cache_type([("web", "minilm", "t1"), ("web", "minilm", "t2"), ("web", "clf", "t1"), ("api", "x", "t1")])

    async def scenario() -> None:
        async with harness(cache=cache) as h:
            answer = await h.post_json("/admin/cache/purge", json={"pool": "web", "tenant": "t1"})
            assert answer == {"purged": 2, "pool": "web", "tenant": "t1"}
            assert (await h.post_json("/admin/cache/purge?model=minilm"))["purged"] == 1
            await h.post_json("/admin/cache/purge", json={"pool": "nowhere"}, status=404)
            bad = await h.post_json("/admin/cache/purge", json={"region": "eu"}, status=400)
            assert "unknown filters: region" in bad["error"]
            await h.post_json("/admin/cache/purge", data=b"[1]", status=400)
            assert (await h.post_json("/admin/cache/purge"))["purged"] == 1  # no filter: everything left
            assert cache.entries == {}

    asyncio.run(scenario())


def test_config_is_the_effective_config_with_secrets_masked(harness, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("s3cr3t-t0ken\n")
    extra = """
  keyed:
    match: {path_prefix: /keyed, headers: {x-api-key: "abc123", authorization: "Bearer zzz"}}
    backends: [{url: "http://127.0.0.1:1", name: "only"}]
"""

    async def scenario() -> None:
        async with harness(token_file=token_file, extra_pools=extra,
                           headers={"Authorization": "Bearer s3cr3t-t0ken"}) as h:
            async with h.http.get("/admin/config") as response:
                raw = await response.text()
                answer = await response.json()
            assert "s3cr3t" not in raw and "abc123" not in raw and "zzz" not in raw
            config = answer["config"]
            assert answer["path"] == str(h.config_path)
            assert config["admin"]["token_file"] == "***"
            assert config["pools"]["keyed"]["match"]["headers"] == {"x-api-key": "***", "authorization": "***"}
            assert config["pools"]["web"]["retry"]["attempts"] == 3  # defaults are filled in
            assert config["pools"]["web"]["breaker"]["open_for"] == "30s"

    asyncio.run(scenario())


def test_a_configured_token_is_required_everywhere_but_healthz_and_the_page_shell(harness, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("right-token\n")

    async def scenario() -> None:
        async with harness(token_file=token_file) as h:
            for path in ("/admin/backends", "/admin/summary", "/admin/config", "/metrics"):
                async with h.http.get(path) as response:
                    assert response.status == 401, path
                    assert response.headers["WWW-Authenticate"] == 'Bearer realm="lbd-admin"'
            async with h.http.post("/admin/reload", headers={"Authorization": "Bearer wrong-token"}) as response:
                assert response.status == 401
                assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
            async with h.http.post("/admin/backends/web/alpha/drain", headers={"Authorization": "Basic cmlnaHQ="}) as r:
                assert r.status == 401
            assert h.runtime.pools["web"].backends[0].drained is False
            good = {"Authorization": "Bearer right-token"}
            await h.post_json("/admin/backends/web/alpha/drain", headers=good)
            assert h.runtime.pools["web"].backends[0].drained is True
            for path in ("/healthz", "/status"):
                async with h.http.get(path) as response:
                    assert response.status == 200, path
            token_file.write_text("rotated\n")  # read again when it changes
            await h.get_json("/admin/summary", status=401, headers=good)
            await h.get_json("/admin/summary", headers={"Authorization": "Bearer rotated"})
            token_file.unlink()  # unreadable: nothing passes
            await h.get_json("/admin/summary", status=401, headers={"Authorization": "Bearer rotated"})

    asyncio.run(scenario())


def test_without_a_token_the_admin_listener_binds_only_to_loopback(harness, tmp_path: Path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("wide-open-no-more")

    async def scenario() -> None:
        async with harness() as h:
            port = free_port()
            wide = h.daemon.config.model_copy(update={"admin": h.daemon.config.admin.model_copy(
                update={"address": f"0.0.0.0:{port}"})})
            h.daemon.config = wide
            with pytest.raises(AdminRefused, match="not a loopback address"):
                await AdminServer(h.daemon, h.metrics).start()
            h.daemon.config = wide.model_copy(update={"admin": wide.admin.model_copy(
                update={"token_file": str(token_file)})})
            server = AdminServer(h.daemon, h.metrics)
            await server.start()
            try:
                async with aiohttp.ClientSession(base_url=server.url) as session:
                    async with session.get("/admin/backends") as response:
                        assert response.status == 401
                    async with session.get("/admin/backends",
                                           headers={"Authorization": "Bearer wide-open-no-more"}) as response:
                        assert response.status == 200
            finally:
                await server.stop()

    asyncio.run(scenario())


def test_metrics_summary_and_healthz(harness):
    async def scenario() -> None:
        async with harness() as h:
            h.metrics.cache_lookup("web", "hit_exact")
            h.metrics.cache_lookup("web", "miss")
            async with h.http.get("/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                families = {f.name for f in text_string_to_metric_families(await response.text())}
            assert {"lbd_requests", "lbd_backend_state", "lbd_backend_probe_latency_seconds",
                    "lbd_build_info", "process_cpu_seconds"} <= families
            async with h.http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
                assert r.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await r.text()).endswith("# EOF\n")
            summary = await h.get_json("/admin/summary")
            assert summary["cache"] == {"hits": 1, "misses": 1, "hit_ratio": 0.5}
            assert summary["pools"]["web"] == {"requests": summary["pools"]["web"]["requests"], "backends": 2,
                                               "usable": 2, "panic": False, "queue_waiting": 0}
            assert summary["last_reload"] is None
            assert await h.get_json("/healthz") == {"status": "ok"}

    asyncio.run(scenario())
