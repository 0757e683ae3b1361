import random

import pytest

from lbd.config.resilience import HealthConfig
from lbd.health.base import ProbeResult
from lbd.health.checker import next_delay
from lbd.health.state import BackendHealth

OK, FAIL = ProbeResult(True, 0.01, "ready"), ProbeResult(False, 1.0, "GET /v2/health/ready: 503")
CANARY_OK, CANARY_FAIL = ProbeResult(True, 0.2, "canary: 200"), ProbeResult(False, 2.0, "canary: no answer within 2s")


def test_transitions_follow_rise_and_fall() -> None:
    state = BackendHealth(HealthConfig(rise=2, fall=3))
    assert [state.record(r, t) for t, r in enumerate([OK, FAIL, FAIL, FAIL, OK, OK])] == \
        [False, False, False, True, False, True]
    assert state.healthy and state.transitions == 2
    assert state.last is OK and state.last_checked == 5


def test_a_recovery_starts_slow_start_but_the_first_decision_does_not() -> None:
    state = BackendHealth(HealthConfig(rise=1, fall=1, slow_start="10s", initial_healthy=False))
    state.record(OK, 100.0)  # first decision: up at full weight
    assert state.weight_factor(100.0) == 1.0
    state.record(FAIL, 101.0)
    state.record(OK, 102.0)
    assert [state.weight_factor(t) for t in (102.0, 107.0, 112.0)] == pytest.approx([0.1, 0.55, 1.0])
    state.record(FAIL, 103.0)  # down again: the ramp ends
    assert state.weight_factor(104.0) == 1.0


def test_a_failed_canary_fails_every_round_until_the_next_canary() -> None:
    state = BackendHealth(HealthConfig(rise=2, fall=3, canary={"path": "/v2/models/m/infer", "interval": "10s"}))
    state.record(OK, 0.0)
    assert state.wants_canary(0.0)
    state.record_canary(CANARY_FAIL, 0.0)
    assert not state.wants_canary(9.9) and state.wants_canary(10.0)
    for t in (1.0, 2.0, 3.0):
        state.record(OK, t)
    assert not state.healthy and state.last is CANARY_FAIL
    state.record_canary(CANARY_OK, 10.0)
    state.record(OK, 10.0)
    state.record(OK, 11.0)
    assert state.healthy


def test_without_a_canary_interval_every_round_runs_one() -> None:
    state = BackendHealth(HealthConfig(canary={"path": "/infer"}))
    state.record_canary(CANARY_OK, 5.0)
    assert state.wants_canary(5.0)


def test_snapshot() -> None:
    state = BackendHealth(HealthConfig(fall=1))
    state.record(OK, 1.0)
    state.record(FAIL, 2.0)
    snapshot = state.snapshot(2.5)
    assert snapshot["healthy"] is False and snapshot["last_ok"] is False
    assert snapshot["last_detail"] == "GET /v2/health/ready: 503" and snapshot["last_checked_ago"] == 0.5
    assert snapshot["transitions"] == 1 and snapshot["weight_factor"] == 1.0


def test_next_delay_spreads_the_interval_by_the_jitter() -> None:
    rng = random.Random(7)
    delays = [next_delay(2.0, 0.1, rng) for _ in range(5000)]
    assert 1.8 <= min(delays) < 1.81 and 2.19 < max(delays) <= 2.2
    assert next_delay(2.0, 0.0, rng) == 2.0
