"""Jobs through a real proxy listener in this process (the in-memory store), in front of the
real test upstreams: submission in both forms, batches, polling, results, cancel, tenants,
the queue bound, retries, priorities, and that a job's run is an ordinary request."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import uvloop

from lbd.cache import build_cache
from lbd.config import load_config_text
from lbd.jobs import Jobs
from lbd.proxy.server import ProxyServer
from lbd.runtime import Runtime
from tests.support.procs import free_port, upstream_requests

KEY, OTHER_KEY = "test", "other"  # SHA-256 below
CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
log: {{access: false}}
jobs:
  visibility_timeout: 1s
  max_attempts: 3
  backoff: {{base: 10ms, max: 50ms}}
  max_body_size: 4KiB
pools:
  web:
    match: {{path_prefix: /echo}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
  failing:
    match: {{path_prefix: /status}}
    retry: {{attempts: 1}}
    outlier: {{enabled: false}}
    breaker: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
  cached:
    match: {{path_prefix: /v2/cached}}
    cache: {{exact: {{ttl: 1h}}}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
  slow:
    match: {{path_prefix: /slow}}
    jobs: {{concurrency: 1}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
  held:
    match: {{path_prefix: /held}}
    jobs: {{concurrency: 0, max_queue: 2}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
  sync:
    match: {{path_prefix: /sync}}
    jobs: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
  keyed:
    match: {{path_prefix: /v2/keyed}}
    auth:
      keys:
        - {{tenant: acme, sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}
        - {{tenant: umbrella, sha256: "d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa"}}
    rate_limit: {{rate: 0.001, burst: 3}}
    backends: [{{url: "http://127.0.0.1:{upstream}"}}]
"""


def run(upstream: int, scenario) -> None:
    async def main() -> None:
        port = free_port()
        config = load_config_text(CONFIG.format(port=port, upstream=upstream))
        server = ProxyServer(Runtime.build(config), asyncio.get_running_loop())
        server.cache = build_cache(config.cache)
        await server.cache.start()
        await server.start()
        server.jobs = jobs = Jobs(config.jobs, events=server.metrics)
        await jobs.start(server, {name: pool.jobs for name, pool in config.pools.items()})
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
                await scenario(session, server)
        finally:
            await jobs.stop(1.0)
            await server.shutdown(0.5)
            await server.cache.close()

    uvloop.run(main())


async def finished(session: aiohttp.ClientSession, location: str, headers=None, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(location, headers=headers) as response:
            assert response.status == 200, await response.text()
            view = await response.json()
        if view["state"] not in ("queued", "running"):
            return view
        assert time.monotonic() < deadline, f"still {view['state']}: {view}"
        await asyncio.sleep(0.02)


def sent_headers(view: dict) -> dict[str, str]:
    import json

    return {name.lower(): value for name, value in json.loads(view["response"]["body"])["headers"]}


def test_prefer_respond_async_and_the_jobs_path_both_submit(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        before = upstream_requests(upstreams["a"])
        async with session.post("/echo/a?q=1", data=b'{"x": 1}', headers={"Prefer": "respond-async, wait=5",
                                                                         "x-trace": "t1"}) as response:
            assert response.status == 202
            assert response.headers["preference-applied"] == "respond-async"
            accepted = await response.json()
            assert response.headers["location"] == accepted["location"] == f"/v1/jobs/{accepted['id']}"
        view = await finished(session, accepted["location"])
        assert (view["state"], view["attempts"], view["pool"]) == ("succeeded", 1, "web")
        assert view["request"] == {"method": "POST", "target": "/echo/a?q=1"}
        sent = sent_headers(view)
        assert sent["x-trace"] == "t1" and "prefer" not in sent  # respond-async was for lbd
        assert sent["x-request-id"] == f"{accepted['id']}.1"
        async with session.post("/v1/jobs/echo/b", data=b"payload") as response:
            assert response.status == 202 and "preference-applied" not in response.headers
            location = response.headers["location"]
        await finished(session, location)
        async with session.get(location + "/result") as response:  # the backend's answer, as sent
            assert response.status == 200 and response.headers["x-lbd-backend"] == f"127.0.0.1:{upstreams['a']}"
            assert (await response.json())["body"] == "payload"
        assert upstream_requests(upstreams["a"]) == before + 2  # each job ran once
        async with session.post("/sync/x", headers={"Prefer": "respond-async"}) as response:
            assert "x-lbd-backend" in response.headers  # a pool without jobs ignores the preference:
            assert "preference-applied" not in response.headers  # the backend answered at once
        async with session.post("/v1/jobs/sync/x") as response:
            assert response.status == 403 and (await response.json())["code"] == "jobs_disabled"
    run(upstreams["a"], scenario)


def test_a_batch_is_one_job_per_body_and_one_id_follows_them(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        async with session.post("/v1/jobs/batch/echo/batch", json={"requests": [{"n": i} for i in range(5)]}) as response:
            assert response.status == 202
            accepted = await response.json()
        assert accepted["id"].startswith("b") and len(accepted["jobs"]) == 5
        batch = await finished(session, accepted["location"])
        assert batch["state"] == "succeeded" and batch["counts"]["succeeded"] == 5
        for index, job_id in enumerate(batch["jobs"]):
            async with session.get(f"/v1/jobs/{job_id}/result") as response:
                assert (await response.json())["body"] == f'{{"n":{index}}}'
        async with session.post("/v1/jobs/batch/echo/batch", data=b'{"requests": []}') as response:
            assert response.status == 400 and (await response.json())["code"] == "bad_batch"
    run(upstreams["a"], scenario)


def test_queued_jobs_can_be_cancelled_and_the_queue_is_bounded(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        locations = []
        for _ in range(2):  # this pool's runner takes none (concurrency 0): they wait
            async with session.post("/v1/jobs/held/x") as response:
                assert response.status == 202
                locations.append(response.headers["location"])
        async with session.post("/v1/jobs/held/x") as response:
            assert response.status == 503 and response.headers["retry-after"] == "5"
            assert (await response.json())["code"] == "job_queue_full"
        async with session.delete(locations[0]) as response:
            assert response.status == 200 and (await response.json())["state"] == "cancelled"
        async with session.delete(locations[0]) as response:
            assert response.status == 409 and (await response.json())["code"] == "job_finished"
        async with session.get(locations[0] + "/result") as response:
            assert response.status == 409
        async with session.post("/v1/jobs/held/x") as response:
            assert response.status == 202  # the cancelled job left room
        async with session.get("/v1/jobs/jnothing") as response:
            assert response.status == 404 and (await response.json())["code"] == "job_not_found"
        async with session.put("/v1/jobs/held/x", data=b"x" * 5000) as response:
            assert response.status == 413
        assert server.metrics.job_counts[("held", "rejected")] == 1
        assert server.metrics.job_counts[("held", "cancelled")] == 1
    run(upstreams["a"], scenario)


def test_a_job_runs_as_its_tenant_without_its_key_and_only_its_tenant_sees_it(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        acme, umbrella = {"authorization": f"Bearer {KEY}"}, {"authorization": f"Bearer {OTHER_KEY}"}
        async with session.post("/v1/jobs/v2/keyed/x") as response:
            assert response.status == 401  # submitting is admitted like any request
        locations = []
        for _ in range(3):  # the burst is 3: every submission takes one token, the runs none
            async with session.post("/v1/jobs/v2/keyed/x", headers={**acme, "cookie": "s=1"}) as response:
                assert response.status == 202, await response.text()
                locations.append(response.headers["location"])
        async with session.post("/v1/jobs/v2/keyed/x", headers=acme) as response:
            assert response.status == 429
        for location in locations:
            view = await finished(session, location, headers=acme)
            assert view["state"] == "succeeded"
            sent = sent_headers(view)
            assert "authorization" not in sent and "cookie" not in sent  # the key never left lbd
        for headers in (umbrella, {}):
            async with session.get(locations[0], headers=headers) as response:
                assert response.status in (401, 404)  # another tenant's job does not exist for it
            async with session.delete(locations[0], headers=headers) as response:
                assert response.status in (401, 404)
    run(upstreams["a"], scenario)


def test_retriable_failures_are_retried_then_the_job_fails_with_why(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        async with session.post("/v1/jobs/status/503") as response:
            retried = response.headers["location"]
        async with session.post("/v1/jobs/status/404") as response:
            final = response.headers["location"]
        view = await finished(session, retried)
        assert (view["state"], view["attempts"]) == ("failed", 3)
        assert view["error"] == "gave up after 3 attempts: answered 503" and view["response"]["status"] == 503
        view = await finished(session, final)
        assert (view["state"], view["attempts"], view["error"]) == ("failed", 1, "answered 404")
        async with session.get(final + "/result") as response:
            assert response.status == 404  # the backend's answer, kept
        assert server.metrics.job_counts[("failing", "retried")] == 2
        assert server.metrics.job_counts[("failing", "failed")] == 2
    run(upstreams["a"], scenario)


def test_higher_priority_jobs_run_first(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        wait = {"prefer": "respond-async"}
        async with session.get("/slow?delay=0.5", headers=wait) as response:  # takes the pool's one slot
            first = response.headers["location"]
        await asyncio.sleep(0.2)
        locations = {}
        for priority in ("low", "normal", "high"):
            async with session.get("/slow?delay=0.01", headers={**wait, "x-lbd-priority": priority}) as response:
                locations[priority] = response.headers["location"]
        started = {name: (await finished(session, location))["started_at"] for name, location in locations.items()}
        assert (await finished(session, first))["state"] == "succeeded"
        assert started["high"] < started["normal"] < started["low"]
    run(upstreams["a"], scenario)


def test_callbacks_need_a_secret_and_an_allowed_url(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        async with session.post("/v1/jobs/echo/x", headers={"x-lbd-callback": "http://127.0.0.1:9/"}) as response:
            assert response.status == 400 and "secret" in (await response.json())["error"]
    run(upstreams["a"], scenario)


def test_a_jobs_run_goes_through_the_cache_like_any_request(upstreams):
    async def scenario(session: aiohttp.ClientSession, server: ProxyServer) -> None:
        before = upstream_requests(upstreams["a"])
        body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}'
        views = []
        for _ in range(2):
            async with session.post("/v1/jobs/v2/cached/infer", data=body,
                                    headers={"content-type": "application/json"}) as response:
                views.append(await finished(session, response.headers["location"]))
        caching = [dict(map(tuple, view["response"]["headers"]))["x-lbd-cache"] for view in views]
        assert caching == ["miss", "hit"] and views[0]["response"]["body"] == views[1]["response"]["body"]
        assert upstream_requests(upstreams["a"]) == before + 1
    run(upstreams["a"], scenario)
