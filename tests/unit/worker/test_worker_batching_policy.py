"""Triton's dynamic batching rules, exactly, with a manual clock: no sleeps."""

from __future__ import annotations

import pytest

from lbd.clock import ManualClock
from lbd_worker.batching import HIGH, NORMAL, BatchRules, Dispatch, Entry, PendingQueue, Wait, plan, priority_level

DELAY = 0.002


class Scenario:
    def __init__(self, rules: BatchRules, max_size: int = 100) -> None:
        self.clock, self.queue, self.rules = ManualClock(), PendingQueue(max_size), rules

    def add(self, rows: int = 1, *, bucket: int = 0, priority: int = 0, timeout: float | None = None,
            tag: str = "") -> Entry:
        now = self.clock.now()
        entry = Entry(rows, bucket, priority_level(priority), now, None if timeout is None else now + timeout, tag)
        self.queue.push(entry)
        return entry

    def plan(self) -> Dispatch | Wait:
        return plan(self.queue, self.clock.now(), self.rules)

    def dispatch(self) -> list[str]:
        decision = self.plan()
        assert isinstance(decision, Dispatch), decision
        self.queue.take(decision.entries)
        return [entry.work for entry in decision.entries]


def test_empty_queue_waits_for_a_change():
    assert Scenario(BatchRules(8, (), DELAY)).plan() == Wait(None)


def test_waits_for_the_delay_then_sends_what_is_there():
    s = Scenario(BatchRules(8, (), DELAY))
    s.add(tag="a")
    s.clock.advance(0.001)
    s.add(tag="b")
    assert s.plan() == Wait(1000.0 + DELAY)  # measured from the oldest request
    s.clock.advance(0.001)
    assert s.dispatch() == ["a", "b"]
    assert s.plan() == Wait(None)


def test_full_batch_goes_at_once():
    s = Scenario(BatchRules(4, (), 10.0))
    for tag in "abcde":
        s.add(tag=tag)
    assert s.dispatch() == ["a", "b", "c", "d"]
    assert isinstance(s.plan(), Wait)


def test_rows_count_not_requests_and_a_request_that_does_not_fit_closes_the_batch():
    s = Scenario(BatchRules(8, (), 10.0))
    s.add(3, tag="a")
    s.add(4, tag="b")
    assert isinstance(s.plan(), Wait)
    s.add(2, tag="c")  # 3 + 4 + 2 > 8: the batch cannot grow, so it goes
    assert s.dispatch() == ["a", "b"]
    assert isinstance(s.plan(), Wait)


def test_preferred_size_goes_when_nothing_else_waits():
    s = Scenario(BatchRules(16, (4, 8), 10.0))
    for tag in "abc":
        s.add(tag=tag)
    assert isinstance(s.plan(), Wait)
    s.add(tag="d")
    assert s.dispatch() == list("abcd")


def test_largest_preferred_size_caps_the_batch():
    s = Scenario(BatchRules(16, (4, 8), 10.0))
    for index in range(11):
        s.add(tag=str(index))
    assert s.dispatch() == [str(i) for i in range(8)]
    assert isinstance(s.plan(), Wait)  # 3 left: not preferred, delay not reached
    s.clock.advance(10.0)
    assert s.dispatch() == ["8", "9", "10"]


def test_without_dynamic_batching_each_request_runs_alone():
    s = Scenario(BatchRules(8, (), 10.0, dynamic_batching=False))
    s.add(tag="a")
    s.add(tag="b")
    assert s.dispatch() == ["a"]
    assert s.dispatch() == ["b"]


def test_high_priority_goes_first_and_leads_the_batch():
    s = Scenario(BatchRules(3, (), 0.0))
    for tag in "abc":
        s.add(tag=tag)
    s.add(priority=1, tag="urgent")
    assert s.queue.head().work == "urgent" and s.queue.head().level == HIGH
    assert s.dispatch() == ["urgent", "a", "b"]
    assert s.dispatch() == ["c"]


def test_priority_levels():
    assert priority_level(1) == HIGH
    assert priority_level(0) == priority_level(2) == priority_level(9) == NORMAL


def test_buckets_do_not_mix():
    s = Scenario(BatchRules(8, (), 0.0))
    s.add(bucket=16, tag="short1")
    s.add(bucket=128, tag="long")
    s.add(bucket=16, tag="short2")
    assert s.dispatch() == ["short1", "short2"]
    assert s.dispatch() == ["long"]


def test_expiry_removes_only_overdue_entries_and_skips_them_later():
    s = Scenario(BatchRules(8, (), 10.0))
    s.add(tag="a", timeout=0.5)
    s.add(tag="b", timeout=2.0)
    s.add(tag="c")
    assert s.queue.next_deadline() == pytest.approx(1000.5)
    s.clock.advance(0.5)
    assert [e.work for e in s.queue.expire(s.clock.now())] == ["a"]
    assert len(s.queue) == 2 and s.queue.next_deadline() == pytest.approx(1002.0)
    s.clock.advance(10.0)
    assert [e.work for e in s.queue.expire(s.clock.now())] == ["b"]
    assert s.dispatch() == ["c"] and s.queue.next_deadline() is None


def test_discarded_entries_never_reach_a_batch():
    s = Scenario(BatchRules(8, (), 0.0))
    gone = s.add(tag="gone")
    s.add(tag="kept")
    assert s.queue.discard(gone) and not s.queue.discard(gone)
    assert s.dispatch() == ["kept"] and len(s.queue) == 0


def test_bound_and_drain():
    s = Scenario(BatchRules(8, (), 0.0), max_size=2)
    s.add(tag="a")
    assert not s.queue.full
    s.add(tag="b")
    assert s.queue.full
    assert sorted(e.work for e in s.queue.drain()) == ["a", "b"] and len(s.queue) == 0


def test_order_is_fifo_within_a_level_across_many_entries():
    s = Scenario(BatchRules(4, (), 0.0))
    for index in range(10):
        s.add(tag=index)
    batches = [s.dispatch() for _ in range(3)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
