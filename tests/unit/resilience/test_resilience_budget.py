from lbd.clock import ManualClock
from lbd.config.resilience import BudgetConfig
from lbd.resilience.retry import RetryBudget


def budget(**values) -> tuple[RetryBudget, ManualClock]:
    clock = ManualClock(1000.0)
    return RetryBudget(BudgetConfig(**values), clock), clock


def spend(b: RetryBudget, tries: int) -> int:
    return sum(b.try_spend() for _ in range(tries))


def requests(b: RetryBudget, count: int) -> None:
    for _ in range(count):
        b.record_request()


def test_retries_are_at_most_the_ratio_of_requests() -> None:
    b, _ = budget(ratio=0.2, min_per_second=0)
    requests(b, 10)
    assert spend(b, 5) == 2
    assert (b.spent, b.exhausted) == (2, 3)
    requests(b, 5)
    assert spend(b, 5) == 1


def test_the_floor_allows_retries_with_no_traffic() -> None:
    b, _ = budget(ratio=0.2, min_per_second=1, window="10s")
    assert spend(b, 20) == 10
    requests(b, 50)
    assert spend(b, 20) == 10


def test_retries_and_requests_leave_the_window() -> None:
    b, clock = budget(ratio=0.2, min_per_second=0, window="10s")
    requests(b, 10)
    assert spend(b, 3) == 2
    clock.advance(9.999)
    assert spend(b, 1) == 0
    clock.advance(0.001)  # everything is 10s old now: the window is empty
    assert spend(b, 1) == 0
    requests(b, 5)
    assert spend(b, 2) == 1


def test_spent_retries_free_up_as_they_age() -> None:
    b, clock = budget(ratio=0.5, min_per_second=0, window="10s")
    requests(b, 4)
    clock.advance(5)
    requests(b, 4)
    assert spend(b, 4) == 4  # 0.5 * 8
    clock.advance(5)  # the first four requests leave; the four retries are still in
    requests(b, 4)
    assert spend(b, 1) == 0  # 0.5 * 8 - 4
    clock.advance(5)  # the retries and their requests leave: 4 requests remain
    assert spend(b, 10) == 2


def test_fractional_products_do_not_lose_a_retry() -> None:
    b, _ = budget(ratio=0.29, min_per_second=0)
    requests(b, 100)
    assert spend(b, 40) == 29


def test_snapshot() -> None:
    b, _ = budget(ratio=0.2, min_per_second=0)
    requests(b, 10)
    spend(b, 3)
    assert b.snapshot() == {"requests": 10, "retries": 2, "available": 0.0, "spent": 2, "exhausted": 1}
