"""When to dispatch a batch, and which requests it holds: Triton's dynamic batcher rules.

A pure function of the queue and the time, so its tests are exact:

1. The batch is built from the queue's head (oldest request of the best priority level) and
   the requests of the head's bucket behind it, high priority first, in arrival order, while
   their rows fit ``max_batch_size``.
2. It goes at once when its rows reach the largest preferred batch size (or
   ``max_batch_size`` when none are given), when the next request would not fit, or when every
   waiting request of its bucket is in it and its size is a preferred one.
3. Otherwise it goes when the head has waited ``max_queue_delay``; until then, wait.
4. Without dynamic batching, each request is its own batch, at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbd_worker.batching.queue import Entry, PendingQueue

__all__ = ["BatchRules", "Dispatch", "Wait", "plan"]


@dataclass(frozen=True)
class BatchRules:
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay: float = 0.0
    dynamic_batching: bool = True

    @property
    def target(self) -> int:
        """Rows at which a batch goes without waiting."""
        return max(self.preferred_batch_sizes, default=self.max_batch_size)


@dataclass(frozen=True)
class Dispatch:
    entries: list[Entry]

    @property
    def rows(self) -> int:
        return sum(entry.rows for entry in self.entries)


@dataclass(frozen=True)
class Wait:
    until: float | None
    """When to plan again at the latest; ``None``: only when something changes (queue empty)."""


def plan(queue: PendingQueue, now: float, rules: BatchRules) -> Dispatch | Wait:
    head = queue.head()
    if head is None:
        return Wait(None)
    if not rules.dynamic_batching:
        return Dispatch([head])
    chosen, rows, overflow = _fill(queue, head, rules.max_batch_size)
    if rows >= rules.target:
        return Dispatch(_prefix_within(chosen, rules.target))
    if overflow or rows in rules.preferred_batch_sizes:
        return Dispatch(chosen)
    ready_at = head.enqueued_at + rules.max_queue_delay
    return Dispatch(chosen) if now >= ready_at else Wait(ready_at)


def _fill(queue: PendingQueue, head: Entry, max_rows: int) -> tuple[list[Entry], int, bool]:
    """The head's bucket in batch order, while the rows fit; ``overflow``: one more did not."""
    chosen, rows = [], 0
    for entry in queue.candidates(head.bucket):
        if rows + entry.rows > max_rows:
            return chosen or [entry], rows or entry.rows, True
        chosen.append(entry)
        rows += entry.rows
    return chosen, rows, False


def _prefix_within(entries: list[Entry], rows: int) -> list[Entry]:
    """The longest prefix of ``entries`` with at most ``rows`` rows (at least one entry)."""
    total = 0
    for count, entry in enumerate(entries):
        total += entry.rows
        if total > rows:
            return entries[:max(count, 1)]
    return entries

