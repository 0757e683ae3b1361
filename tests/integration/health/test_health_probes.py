"""The HTTP probes against real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from lbd.config.resilience import CanaryConfig, HealthConfig
from lbd.health.checker import default_session
from lbd.health.http_probe import CanaryProbe, HttpProbe, readiness_probe


def run(scenario) -> None:
    async def main() -> None:
        async with default_session() as session:
            await scenario(session)

    asyncio.run(main())


def test_kserve_probe_checks_the_server_and_each_model(loopback) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with loopback(models=("m", "n")) as server:
            probe = readiness_probe(session, HealthConfig(), models=["m", "n"])
            result = await probe.check(server.backend())
            assert result.ok, result
            assert server.served[("/v2/health/ready", 200)] == 1
            assert server.served[("/v2/models/m/ready", 200)] == server.served[("/v2/models/n/ready", 200)] == 1
            server.model_status["n"] = 503
            result = await probe.check(server.backend())
            assert not result.ok and result.detail == "GET /v2/models/n/ready: 503"
            missing = await readiness_probe(session, HealthConfig(), models=["absent"]).check(server.backend())
            assert not missing.ok and missing.detail == "GET /v2/models/absent/ready: 404"

    run(scenario)


def test_a_server_answering_503_fails(loopback) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with loopback() as server:
            server.ready_status = 503
            result = await readiness_probe(session, HealthConfig(), models=["m"]).check(server.backend())
            assert not result.ok and result.detail == "GET /v2/health/ready: 503"
            assert server.served[("/v2/models/m/ready", 200)] == 0  # stops at the first failure

    run(scenario)


def test_a_closed_port_fails_fast(closed_backend) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        result = await readiness_probe(session, HealthConfig(timeout="5s")).check(closed_backend)
        assert not result.ok and result.detail.startswith("cannot connect")
        assert result.latency < 0.5

    run(scenario)


def test_a_silent_server_fails_at_the_timeout() -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        probe = HttpProbe(session, ["/healthz"], [200], timeout=0.2)
        target = type("T", (), {"name": "silent", "host": "127.0.0.1", "port": port})()
        result = await probe.check(target)
        assert not result.ok and result.detail == "no answer within 0.2s"
        assert 0.2 <= result.latency < 1.0
        server.close()
        for writer in accepted:
            writer.close()

    run(scenario)


def test_a_plain_path_with_its_expected_statuses(loopback) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with loopback() as server:
            config = HealthConfig(path="/v2/health/ready", expected_status=[200, 204])
            probe = readiness_probe(session, config, models=["ignored"])
            assert probe.paths == ("/v2/health/ready",)
            assert (await probe.check(server.backend())).ok
            server.ready_status = 204
            assert (await probe.check(server.backend())).ok
            server.ready_status = 500
            assert not (await probe.check(server.backend())).ok

    run(scenario)


def test_the_canary_fails_on_latency_when_inference_hangs_behind_a_ready_endpoint(loopback) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with loopback() as server:
            server.infer_hangs = True
            backend = server.backend()
            assert (await readiness_probe(session, HealthConfig(), models=["m"]).check(backend)).ok
            canary = CanaryProbe(session, CanaryConfig(path="/v2/models/m/infer", latency_limit="200ms"))
            result = await canary.check(backend)
            assert not result.ok and result.detail == "canary: no answer within 0.2s"
            assert 0.2 <= result.latency < 1.0

    run(scenario)


def test_the_canary_posts_its_body_and_passes_on_2xx(loopback) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with loopback() as server:
            body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}
            canary = CanaryProbe(session, CanaryConfig(path="/v2/models/m/infer", body=body))
            result = await canary.check(server.backend())
            assert result.ok and result.detail.startswith("canary: 200 in ")
            assert json.loads(server.infer_bodies[0]) == body
            text = CanaryProbe(session, CanaryConfig(path="/v2/models/m/infer", body='{"inputs": []}'))
            assert (await text.check(server.backend())).ok and server.infer_bodies[1] == b'{"inputs": []}'

    run(scenario)


def test_the_canary_fails_on_a_non_2xx_answer(loopback) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async with loopback() as server:
            server.infer_status = 500
            result = await CanaryProbe(session, CanaryConfig(path="/v2/models/m/infer")).check(server.backend())
            assert not result.ok and result.detail == "canary: POST /v2/models/m/infer: 500"

    run(scenario)


def test_the_canary_on_a_closed_port(closed_backend) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        result = await CanaryProbe(session, CanaryConfig(path="/infer")).check(closed_backend)
        assert not result.ok and result.detail.startswith("canary: cannot connect")

    run(scenario)
