import pytest

from lbd.clock import ManualClock
from lbd.config.resilience import OutlierConfig
from lbd.resilience.outlier import Outcome, OutlierDetector, in_panic, outcome_of_status, routable

GATEWAY, HTTP_5XX, LOCAL, OK = (Outcome.GATEWAY_FAILURE, Outcome.HTTP_5XX, Outcome.LOCAL_ORIGIN_FAILURE,
                                Outcome.SUCCESS)


class Node:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def detector(count: int = 4, **values) -> tuple[OutlierDetector, ManualClock, list[Node], list]:
    clock, nodes, ejections = ManualClock(1000.0), [Node(f"b{i}") for i in range(count)], []
    found = OutlierDetector(OutlierConfig(**values), clock, nodes,
                            on_eject=lambda b, reason, seconds: ejections.append((b.name, reason, seconds)))
    return found, clock, nodes, ejections


def feed(d: OutlierDetector, node: Node, *outcomes: Outcome) -> None:
    for outcome in outcomes:
        d.on_result(node, outcome)


def test_five_gateway_failures_eject_for_the_base_time() -> None:
    d, clock, (a, *_), ejections = detector()
    feed(d, a, *[GATEWAY] * 4)
    assert not d.is_ejected(a)
    feed(d, a, GATEWAY)
    assert d.is_ejected(a)
    assert ejections == [("b0", "5 consecutive gateway failures", 30.0)]
    clock.advance(29.999)
    assert d.is_ejected(a)
    clock.advance(0.001)
    assert not d.is_ejected(a)


def test_a_success_resets_the_streaks() -> None:
    d, _, (a, *_), _ = detector()
    feed(d, a, *[GATEWAY] * 4, OK, *[GATEWAY] * 4, OK, *[LOCAL] * 4)
    assert not d.is_ejected(a)


def test_a_plain_5xx_breaks_the_gateway_streak_but_counts_as_5xx() -> None:
    d, _, (a, b, *_), ejections = detector(consecutive_5xx=0)
    feed(d, a, *[GATEWAY] * 4, HTTP_5XX, *[GATEWAY] * 4)
    assert not d.is_ejected(a)
    feed(d, a, GATEWAY)
    assert d.is_ejected(a)
    d2, _, (c, *_), ejections2 = detector()
    feed(d2, c, *[GATEWAY] * 4, HTTP_5XX)
    assert d2.is_ejected(c) and ejections2[0][1] == "5 consecutive 5xx"


def test_local_origin_failures_are_counted_apart_from_upstream_errors() -> None:
    d, _, (a, *_), ejections = detector()
    feed(d, a, *[LOCAL, GATEWAY] * 4)
    assert not d.is_ejected(a)
    feed(d, a, LOCAL)
    assert d.is_ejected(a) and ejections[0][1] == "5 consecutive local-origin failures"


def test_a_zero_limit_turns_a_rule_off() -> None:
    d, _, (a, *_), _ = detector(consecutive_local_origin_failure=0)
    feed(d, a, *[LOCAL] * 50)
    assert not d.is_ejected(a)


def test_ejection_time_grows_with_each_ejection_up_to_the_maximum() -> None:
    d, clock, (a, *_), ejections = detector(base_ejection_time="30s", max_ejection_time="100s")
    for _ in range(4):
        feed(d, a, *[GATEWAY] * 5)
        clock.advance(ejections[-1][2])
        assert not d.is_ejected(a)
    assert [seconds for *_, seconds in ejections] == [30.0, 60.0, 90.0, 100.0]


@pytest.mark.parametrize(("healthy_for", "next_ejection"), [(9.999, 60.0), (10.0, 30.0), (25.0, 30.0)])
def test_each_decay_interval_back_in_rotation_forgets_one_ejection(healthy_for, next_ejection) -> None:
    d, clock, (a, *_), ejections = detector(decay_interval="10s")
    feed(d, a, *[GATEWAY] * 5)
    clock.advance(30 + healthy_for)
    feed(d, a, *[GATEWAY] * 5)
    assert ejections[-1][2] == next_ejection


def test_never_more_than_max_ejection_percent_of_the_pool() -> None:
    d, clock, (a, b, c, _), ejections = detector(4, max_ejection_percent=50)
    for node in (a, b, c):
        feed(d, node, *[GATEWAY] * 5)
    assert [d.is_ejected(n) for n in (a, b, c)] == [True, True, False]
    assert d.ejections_refused == 1
    clock.advance(30)  # a and b come back; c's next failure ejects it
    feed(d, c, GATEWAY)
    assert d.is_ejected(c) and len(ejections) == 3


def test_max_percent_rounds_down() -> None:
    d, _, nodes, _ = detector(3, max_ejection_percent=50)
    for node in nodes:
        feed(d, node, *[GATEWAY] * 5)
    assert sum(d.is_ejected(n) for n in nodes) == 1


def test_an_ejected_backend_is_not_ejected_again_while_out() -> None:
    d, _, (a, *_), ejections = detector()
    feed(d, a, *[GATEWAY] * 12)
    assert len(ejections) == 1


def test_disabled_and_unknown_backends_change_nothing() -> None:
    d, _, (a, *_), _ = detector(enabled=False)
    feed(d, a, *[GATEWAY] * 10)
    assert not d.is_ejected(a)
    d2, _, _, _ = detector()
    stranger = Node("x")
    feed(d2, stranger, *[GATEWAY] * 10)
    assert not d2.is_ejected(stranger)


def test_outcomes_may_be_given_as_text_and_bad_ones_are_refused() -> None:
    d, _, (a, *_), _ = detector()
    feed(d, a, *["gateway_failure"] * 5)  # type: ignore[list-item]
    assert d.is_ejected(a)
    with pytest.raises(ValueError):
        d.on_result(a, "bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "outcome"), [
    (200, OK), (404, OK), (429, OK), (500, HTTP_5XX), (501, HTTP_5XX), (502, GATEWAY), (503, GATEWAY),
    (504, GATEWAY), (599, HTTP_5XX),
])
def test_outcome_of_status(status, outcome) -> None:
    assert outcome_of_status(status) is outcome


@pytest.mark.parametrize(("usable", "total", "threshold", "panic"), [
    (2, 4, 50, False), (1, 4, 50, True), (0, 4, 50, True), (0, 0, 50, False), (0, 4, 0, False),
    (3, 4, 80, True), (4, 4, 100, False),
])
def test_in_panic(usable, total, threshold, panic) -> None:
    assert in_panic(usable, total, threshold) is panic


def test_routable_routes_to_all_in_panic() -> None:
    d, _, nodes, _ = detector(4)
    for node in nodes[:3]:
        feed(d, node, *[GATEWAY] * 5)  # only two may go: 50%
    assert routable(nodes, lambda n: not d.is_ejected(n), 50) == (nodes[2:], False)
    down = {nodes[2]}
    assert routable(nodes, lambda n: not d.is_ejected(n) and n not in down, 50) == (nodes, True)
    assert d.in_panic(1, 4) and not d.in_panic(2, 4)


def test_inherit_keeps_state_of_backends_carried_over() -> None:
    d, clock, (a, b, *_), _ = detector()
    feed(d, a, *[GATEWAY] * 5)
    feed(d, b, *[GATEWAY] * 4)
    fresh = OutlierDetector(OutlierConfig(), clock, [a, b, Node("new"), Node("newer")])
    fresh.inherit(d)
    assert fresh.is_ejected(a)
    fresh.on_result(b, GATEWAY)
    assert fresh.is_ejected(b)


def test_snapshot() -> None:
    d, clock, (a, *_), _ = detector()
    feed(d, a, *[GATEWAY] * 5)
    clock.advance(10)
    snapshot = d.snapshot()
    assert snapshot["ejected"] == 1 and snapshot["ejections_total"] == 1
    assert snapshot["backends"]["b0"]["ejected_for"] == pytest.approx(20.0)
    assert snapshot["backends"]["b0"]["reason"] == "5 consecutive gateway failures"
    assert snapshot["backends"]["b1"]["ejected"] is False
