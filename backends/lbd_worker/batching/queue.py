"""The pending-request queue: two priority levels, length buckets, a bound, and deadlines.

Pure data structure, no asyncio and no clock of its own: callers pass ``now``. Entries leave
the queue in three ways: taken into a batch (:meth:`PendingQueue.take`), expired
(:meth:`PendingQueue.expire`), or abandoned by their client (:meth:`PendingQueue.discard`).
Removal from the middle is lazy: an entry is flagged and skipped when it reaches a head, so every
operation is O(1) amortized.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HIGH", "NORMAL", "Entry", "PendingQueue", "priority_level"]

HIGH, NORMAL = 0, 1
"""Priority levels, best first. Triton's request ``priority`` 1 is HIGH; 0 (the default) and
any larger value are NORMAL."""


def priority_level(priority: int) -> int:
    return HIGH if priority == 1 else NORMAL


@dataclass(eq=False)
class Entry:
    """One queued request. ``waiter`` is whatever the caller resolves when the entry leaves."""

    rows: int
    bucket: int
    level: int
    enqueued_at: float
    deadline: float | None
    work: Any = None
    waiter: Any = None
    sequence: int = 0
    queued: bool = field(default=True, compare=False)


class PendingQueue:
    """Bounded FIFO queues, one per (priority level, bucket); ``len()`` counts live entries."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._lanes: dict[tuple[int, int], deque[Entry]] = {}
        self._deadlines: list[tuple[float, int, Entry]] = []
        self._size = 0
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return self._size

    @property
    def full(self) -> bool:
        return self._size >= self.max_size

    def push(self, entry: Entry) -> None:
        """Appends ``entry``; the caller checks :attr:`full` first (the bound is the caller's 503)."""
        entry.sequence = next(self._sequence)
        self._lanes.setdefault((entry.level, entry.bucket), deque()).append(entry)
        if entry.deadline is not None:
            heapq.heappush(self._deadlines, (entry.deadline, entry.sequence, entry))
        self._size += 1

    def head(self) -> Entry | None:
        """The entry that goes next: the oldest of the best priority level with any."""
        best: Entry | None = None
        for (level, _), lane in self._lanes.items():
            entry = self._live_head(lane)
            if entry is not None and (best is None or (level, entry.sequence) < (best.level, best.sequence)):
                best = entry
        return best

    def candidates(self, bucket: int) -> Iterator[Entry]:
        """Live entries of ``bucket``, in the order they should join a batch."""
        for level in (HIGH, NORMAL):
            for entry in self._lanes.get((level, bucket), ()):
                if entry.queued:
                    yield entry

    def take(self, entries: list[Entry]) -> None:
        """Removes ``entries`` (from :meth:`candidates`) for a batch."""
        for entry in entries:
            self._remove(entry)
        for lane in {(e.level, e.bucket) for e in entries}:
            self._live_head(self._lanes[lane])

    def discard(self, entry: Entry) -> bool:
        """Removes an entry whose client went away; ``False`` if it had already left."""
        if not entry.queued:
            return False
        self._remove(entry)
        return True

    def expire(self, now: float) -> list[Entry]:
        """Removes and returns the entries whose deadline is at or before ``now``."""
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, entry = heapq.heappop(self._deadlines)
            if entry.queued:
                self._remove(entry)
                expired.append(entry)
        return expired

    def next_deadline(self) -> float | None:
        while self._deadlines and not self._deadlines[0][2].queued:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def drain(self) -> list[Entry]:
        """Removes and returns every live entry (shutdown)."""
        entries = [e for lane in self._lanes.values() for e in lane if e.queued]
        for entry in entries:
            self._remove(entry)
        return entries

    def _remove(self, entry: Entry) -> None:
        entry.queued = False
        self._size -= 1

    @staticmethod
    def _live_head(lane: deque[Entry]) -> Entry | None:
        while lane and not lane[0].queued:
            lane.popleft()
        return lane[0] if lane else None
