import pytest

from lbd.health.policy import StreakPolicy


def run(policy: StreakPolicy, results: str) -> list[bool]:
    """Feed ``+`` (pass) and ``-`` (fail); return ``healthy`` after each."""
    states = []
    for mark in results:
        policy.observe(mark == "+")
        states.append(policy.healthy)
    return states


def test_the_first_result_decides_at_once() -> None:
    assert run(StreakPolicy(2, 3, initial_healthy=True), "-") == [False]
    assert run(StreakPolicy(2, 3, initial_healthy=False), "+") == [True]


def test_fall_failures_in_a_row_take_it_down() -> None:
    policy = StreakPolicy(rise=2, fall=3)
    assert run(policy, "+--+---") == [True, True, True, True, True, True, False]


def test_rise_passes_in_a_row_bring_it_back() -> None:
    policy = StreakPolicy(rise=2, fall=3)
    run(policy, "-")
    assert run(policy, "+-++") == [False, False, False, True]


def test_observe_reports_transitions_only() -> None:
    policy = StreakPolicy(rise=1, fall=1, initial_healthy=True)
    assert [policy.observe(ok) for ok in (True, True, False, False, True)] == [False, False, True, False, True]


def test_streak_counts_results_against_the_current_state() -> None:
    policy = StreakPolicy(rise=2, fall=3)
    run(policy, "+--")
    assert policy.streak == 2
    run(policy, "+")
    assert policy.streak == 0


def test_rise_and_fall_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StreakPolicy(0, 3)
