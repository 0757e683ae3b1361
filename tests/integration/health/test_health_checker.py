"""The health checker against real loopback servers: short intervals, conditions polled
with a deadline."""

from __future__ import annotations

import asyncio
import random

from lbd.config.resilience import HealthConfig
from lbd.health.checker import HealthChecker

FAST = {"interval": "20ms", "down_interval": "20ms", "jitter": 0.0, "timeout": "500ms"}


def checker_for(backends, transitions: list | None = None, models=("m",), **values) -> HealthChecker:
    config = HealthConfig(**{**FAST, **values})
    record = (lambda b, healthy, result: transitions.append((b.name, healthy, result.detail))) \
        if transitions is not None else None
    return HealthChecker("pool", backends, config, models=models, rng=random.Random(1), on_transition=record)


def test_down_after_fall_failures_and_up_after_rise_passes(loopback, poll) -> None:
    async def scenario() -> None:
        async with loopback() as server:
            backend = server.backend()
            seen: list[tuple[bool, int, int]] = []

            def on_transition(b, healthy, result) -> None:
                seen.append((healthy, server.served[("/v2/health/ready", 503)],
                             server.served[("/v2/health/ready", 200)]))

            checker = HealthChecker("pool", [backend], HealthConfig(**FAST, rise=2, fall=3), models=["m"],
                                    rng=random.Random(1), on_transition=on_transition)
            await checker.first_round()
            assert backend.available and seen == []
            try:
                oks_before = server.served[("/v2/health/ready", 200)]
                server.ready_status = 503
                await poll(lambda: not backend.available, what="backend down")
                assert seen[0][:2] == (False, 3)  # exactly fall failed probes
                server.ready_status = 200
                await poll(lambda: backend.available, what="backend up")
                healthy, _, oks = seen[1]
                assert healthy and oks - oks_before == 2  # exactly rise passing probes
                snapshot = checker.snapshot()["backends"]["b"]
                assert snapshot["healthy"] and snapshot["transitions"] == 2
            finally:
                await checker.stop()

    asyncio.run(scenario())


def test_first_round_decides_each_backend_at_once(loopback, poll, closed_backend) -> None:
    async def scenario() -> None:
        async with loopback() as server:
            live, transitions = server.backend("live"), []
            checker = checker_for([live, closed_backend], transitions, interval="10s", down_interval="10s")
            await asyncio.wait_for(checker.first_round(), 2.0)
            try:
                assert live.available and not closed_backend.available
                assert transitions == [("closed", False, transitions[0][2])]
                assert transitions[0][2].startswith("cannot connect")
                snapshot = checker.snapshot()["backends"]
                assert snapshot["closed"]["last_ok"] is False and snapshot["live"]["last_ok"] is True
            finally:
                await checker.stop()

    asyncio.run(scenario())


def test_initially_unhealthy_backends_wait_for_their_first_probe(loopback) -> None:
    async def scenario() -> None:
        async with loopback() as server:
            backend = server.backend()
            checker = checker_for([backend], initial_healthy=False, interval="10s")
            checker.start()
            assert not backend.available
            await checker.first_round()
            assert backend.available
            await checker.stop()

    asyncio.run(scenario())


def test_a_hung_inference_path_takes_the_backend_out(loopback, poll) -> None:
    async def scenario() -> None:
        async with loopback() as server:
            backend, transitions = server.backend(), []
            checker = checker_for([backend], transitions, fall=2,
                                  canary={"path": "/v2/models/m/infer", "latency_limit": "100ms"})
            await checker.first_round()
            assert backend.available
            server.infer_hangs = True
            try:
                await poll(lambda: not backend.available, what="backend down")
                assert transitions[-1][1:] == (False, "canary: no answer within 0.1s")
                assert server.served[("/v2/health/ready", 200)] >= 2  # readiness kept answering
                assert checker.snapshot()["backends"]["b"]["canary_ok"] is False
            finally:
                await checker.stop()

    asyncio.run(scenario())


def test_a_recovered_backend_ramps_its_weight_up(loopback, poll) -> None:
    async def scenario() -> None:
        async with loopback() as server:
            backend = server.backend()
            checker = checker_for([backend], rise=1, fall=1, slow_start="1s")
            await checker.first_round()
            assert backend.weight == backend.config_weight  # the first decision does not ramp
            try:
                server.ready_status = 503
                await poll(lambda: not backend.available, what="backend down")
                server.ready_status = 200
                await poll(lambda: backend.available, what="backend up")
                await poll(lambda: backend.weight < backend.config_weight, what="ramp start")
                assert backend.weight < 0.5 * backend.config_weight
                await poll(lambda: backend.weight == backend.config_weight, timeout=3.0, what="ramp end")
            finally:
                await checker.stop()

    asyncio.run(scenario())


def test_stop_ends_every_task(loopback) -> None:
    async def scenario() -> None:
        async with loopback() as server:
            checker = checker_for([server.backend("a"), server.backend("b")])
            await checker.first_round()
            await checker.stop()
            names = {task.get_name() for task in asyncio.all_tasks()}
            assert not any(name.startswith(("health ", "slow start ")) for name in names)
            count = sum(server.served.values())
            await asyncio.sleep(0.1)  # no probe may run after stop: nothing to poll for
            assert sum(server.served.values()) == count

    asyncio.run(scenario())


def test_a_reload_keeps_the_health_of_carried_backends(closed_backend) -> None:
    async def scenario() -> None:
        old = checker_for([closed_backend], interval="10s", down_interval="10s")
        await old.first_round()
        await old.stop()
        new = checker_for([closed_backend], interval="10s", down_interval="10s")
        new.inherit(old)
        assert new.health[closed_backend] is old.health[closed_backend]
        assert new.snapshot()["backends"]["closed"]["healthy"] is False
        changed = checker_for([closed_backend], interval="10s", down_interval="10s", rise=5)
        changed.inherit(old)
        assert changed.health[closed_backend].policy.rise == 5
        assert changed.snapshot()["backends"]["closed"]["healthy"] is False
        assert changed.snapshot()["backends"]["closed"]["decided"] is True

    asyncio.run(scenario())


def test_disabled_checks_do_nothing(loopback) -> None:
    async def scenario() -> None:
        async with loopback() as server:
            backend = server.backend()
            checker = checker_for([backend], enabled=False)
            await asyncio.wait_for(checker.first_round(), 1.0)
            assert backend.available and sum(server.served.values()) == 0
            await checker.stop()

    asyncio.run(scenario())


def test_a_down_backend_is_probed_at_the_down_interval(loopback, poll) -> None:
    async def scenario() -> None:
        async with loopback() as up, loopback() as down:
            down.ready_status = 503
            checker = checker_for([up.backend("up"), down.backend("down")], interval="10s", down_interval="20ms")
            await checker.first_round()
            try:
                await poll(lambda: down.served[("/v2/health/ready", 503)] >= 5, what="five probes of the down one")
                assert up.served[("/v2/health/ready", 200)] == 1
            finally:
                await checker.stop()

    asyncio.run(scenario())
