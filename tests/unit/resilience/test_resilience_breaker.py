import pytest

from lbd.clock import ManualClock
from lbd.config.resilience import BreakerConfig
from lbd.resilience.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def breaker(**values) -> tuple[CircuitBreaker, ManualClock, list]:
    clock, transitions = ManualClock(1000.0), []
    cb = CircuitBreaker(BreakerConfig(**values), clock, on_transition=lambda *t: transitions.append(t))
    return cb, clock, transitions


def fail(cb: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert cb.allow()
        cb.on_failure()


def succeed(cb: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert cb.allow()
        cb.on_success()


def test_opens_on_the_fifth_consecutive_failure() -> None:
    cb, clock, transitions = breaker()
    fail(cb, 4)
    assert cb.state == CLOSED and cb.reason is None
    fail(cb, 1)
    assert cb.state == OPEN
    assert cb.reason == "5 consecutive failures"
    assert (cb.opened_at, cb.reopens_at) == (1000.0, 1010.0)
    assert not cb.allow()
    assert transitions == [(CLOSED, OPEN, "5 consecutive failures")]


def test_a_success_breaks_the_streak() -> None:
    cb, _, _ = breaker()
    fail(cb, 4)
    succeed(cb, 1)
    fail(cb, 4)
    assert cb.state == CLOSED


def test_open_until_open_for_then_half_open_with_limited_trials() -> None:
    cb, clock, _ = breaker()
    fail(cb, 5)
    clock.advance(9.999)
    assert not cb.allow() and cb.state == OPEN
    clock.advance(0.001)
    assert cb.state == HALF_OPEN
    assert [cb.allow() for _ in range(4)] == [True, True, True, False]
    assert cb.snapshot()["trials_in_flight"] == 3


def test_all_trials_succeeding_closes_it() -> None:
    cb, clock, transitions = breaker()
    fail(cb, 5)
    clock.advance(10)
    succeed(cb, 2)
    assert cb.state == HALF_OPEN
    assert not (cb.allow() and cb.allow())  # one slot left: the second is refused
    cb.on_success()
    assert cb.state == CLOSED and cb.reason is None and cb.reopens_at is None
    assert [t[1] for t in transitions] == [OPEN, HALF_OPEN, CLOSED]
    fail(cb, 4)  # the counters started over
    assert cb.state == CLOSED


def test_a_failed_trial_reopens_it_for_another_open_for() -> None:
    cb, clock, _ = breaker()
    fail(cb, 5)
    clock.advance(10)
    succeed(cb, 2)
    clock.advance(1)
    fail(cb, 1)
    assert cb.state == OPEN and cb.reason == "a trial request failed"
    assert (cb.opened_at, cb.reopens_at) == (1011.0, 1021.0)
    clock.advance(9.5)
    assert not cb.allow()


def test_release_trial_gives_the_slot_back() -> None:
    cb, clock, _ = breaker(half_open_requests=1)
    fail(cb, 5)
    clock.advance(10)
    assert cb.allow() and not cb.allow()
    cb.release_trial()
    assert cb.allow()
    cb.on_success()
    assert cb.state == CLOSED


def test_results_of_requests_admitted_before_it_opened_are_ignored() -> None:
    cb, clock, _ = breaker(half_open_requests=1)
    fail(cb, 5)
    cb.on_success()  # a slow request from before
    assert cb.state == OPEN
    clock.advance(10)
    cb.on_success()  # no trial is out yet: not a trial result
    assert cb.state == HALF_OPEN


def test_failure_ratio_opens_once_the_window_holds_minimum_requests() -> None:
    cb, _, _ = breaker(consecutive_failures=0)
    succeed(cb, 10)
    fail(cb, 9)
    assert cb.state == CLOSED  # 9 of 19: below the minimum volume
    fail(cb, 1)
    assert cb.state == OPEN
    assert cb.reason == "failure ratio 0.50 over 10s (20 requests)"


def test_a_high_ratio_below_the_minimum_volume_stays_closed() -> None:
    cb, _, _ = breaker(consecutive_failures=0, minimum_requests=20)
    fail(cb, 19)
    assert cb.state == CLOSED
    fail(cb, 1)
    assert cb.state == OPEN and cb.reason == "failure ratio 1.00 over 10s (20 requests)"


def test_a_ratio_under_the_threshold_stays_closed() -> None:
    cb, _, _ = breaker(consecutive_failures=0, failure_ratio=0.5)
    for _ in range(20):
        succeed(cb, 2)
        fail(cb, 1)  # one in three
    assert cb.state == CLOSED


def test_old_requests_leave_the_window() -> None:
    cb, clock, _ = breaker(consecutive_failures=0, minimum_requests=20)
    fail(cb, 10)
    clock.advance(10)  # a whole window later the ten failures are forgotten
    succeed(cb, 9)
    fail(cb, 10)
    assert cb.state == CLOSED  # 10 of 19 now
    fail(cb, 1)
    assert cb.state == OPEN and cb.reason == "failure ratio 0.55 over 10s (20 requests)"


def test_disabled_never_opens() -> None:
    cb, _, _ = breaker(enabled=False)
    fail(cb, 100)
    assert cb.state == CLOSED


def test_snapshot_shows_state_reason_and_reopening_time() -> None:
    cb, clock, _ = breaker()
    fail(cb, 5)
    clock.advance(4)
    snapshot = cb.snapshot()
    assert snapshot["state"] == OPEN and snapshot["reason"] == "5 consecutive failures"
    assert snapshot["opened_at"] == 1000.0 and snapshot["reopens_at"] == 1010.0
    assert snapshot["reopens_in"] == pytest.approx(6.0)
