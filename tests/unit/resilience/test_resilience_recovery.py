"""A passing active health check outweighs the failures that took a backend out."""

from __future__ import annotations

from lbd.clock import ManualClock
from lbd.config.resilience import BreakerConfig, OutlierConfig
from lbd.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from lbd.resilience.outlier import Outcome, OutlierDetector


def test_recovery_sends_an_open_breaker_to_half_open_at_once():
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=2, open_for=30, half_open_requests=1), clock)
    breaker.allow(); breaker.on_failure()
    breaker.allow(); breaker.on_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.advance(1)
    breaker.on_recovered()
    assert breaker.state == HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one trial
    breaker.on_success()
    assert breaker.state == CLOSED


def test_recovery_of_a_closed_breaker_changes_nothing():
    breaker = CircuitBreaker(BreakerConfig(), ManualClock())
    breaker.on_recovered()
    assert breaker.state == CLOSED and breaker.allow()


def test_uneject_ends_an_ejection_and_its_streaks():
    clock = ManualClock()
    backends = ["a", "b", "c"]
    detector = OutlierDetector(OutlierConfig(consecutive_local_origin_failure=2, base_ejection_time=30),
                               clock, backends)
    detector.on_result("a", Outcome.LOCAL_ORIGIN_FAILURE)
    detector.on_result("a", Outcome.LOCAL_ORIGIN_FAILURE)
    assert detector.is_ejected("a")
    detector.uneject("a")
    assert not detector.is_ejected("a")
    detector.on_result("a", Outcome.LOCAL_ORIGIN_FAILURE)  # the streak starts over
    assert not detector.is_ejected("a")
