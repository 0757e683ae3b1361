"""A rolling window of counters in fixed time buckets: O(1) per event, no timers.

The window covers the current bucket and the ``buckets - 1`` before it, so an event counts
for between ``window - width`` and ``window`` seconds (``width = window / buckets``). Buckets
are cleared lazily as time moves forward.
"""

from __future__ import annotations

import math

__all__ = ["RollingWindow"]


class RollingWindow:
    """``fields`` counters summed over the last ``window`` seconds (default 10 buckets)."""

    __slots__ = ("width", "_buckets", "_counts", "_totals", "_head", "_head_ends")

    def __init__(self, window: float, fields: int = 2, buckets: int = 10) -> None:
        if window <= 0 or buckets < 1 or fields < 1:
            raise ValueError("window must be > 0, buckets and fields >= 1")
        self.width = window / buckets
        self._buckets = buckets
        self._counts = [[0] * fields for _ in range(buckets)]
        self._totals = [0] * fields
        self._head: int | None = None  # the absolute index of the newest bucket
        self._head_ends = float("-inf")  # when the newest bucket ends: before that, no work

    def add(self, now: float, field: int, amount: int = 1) -> None:
        # Once per request (the retry budget, the breaker): the current bucket without a call.
        index = self._head if now < self._head_ends else self._advance(now)
        self._counts[index % self._buckets][field] += amount  # type: ignore[operator]
        self._totals[field] += amount

    def total(self, now: float, field: int) -> int:
        self._advance(now)
        return self._totals[field]

    def clear(self) -> None:
        for counts in self._counts:
            counts[:] = [0] * len(counts)
        self._totals = [0] * len(self._totals)

    def _advance(self, now: float) -> int:
        head = self._head
        if now < self._head_ends:
            return head  # type: ignore[return-value]
        index = math.floor(now / self.width)
        if head is None or index - head >= self._buckets:
            self.clear()
        elif index > head:
            # Buckets between the old head and the new one are older than the window.
            for stale in range(head + 1, index + 1):
                self._drop(stale % self._buckets)
        else:
            return head  # rounding at a bucket edge, or a clock that went back
        self._head = index
        self._head_ends = (index + 1) * self.width
        return index

    def _drop(self, slot: int) -> None:
        counts, totals = self._counts[slot], self._totals
        for field, count in enumerate(counts):
            totals[field] -= count
            counts[field] = 0
