"""A pool's admission queue: requests wait here, in priority order, for a backend below its
in-flight limit. Bounded in size and in time; a request that cannot wait gets 503 with
``Retry-After`` at once, and one that waited too long gets it at its deadline (a timer per
waiting request, so it fires on time whatever else the loop is doing)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbd.proxy.exchange import Exchange

__all__ = ["AdmissionQueue", "HIGH", "NORMAL"]

HIGH, NORMAL = 0, 1


class AdmissionQueue:
    __slots__ = ("size", "timeout", "retry_after", "_waiting", "shed_full", "shed_timeout", "admitted")

    def __init__(self, size: int, timeout: float, retry_after: float) -> None:
        self.size = size
        self.timeout = timeout
        self.retry_after = retry_after
        self._waiting: tuple[deque[Exchange], deque[Exchange]] = (deque(), deque())
        self.shed_full = 0
        self.shed_timeout = 0
        self.admitted = 0

    def __len__(self) -> int:
        return len(self._waiting[HIGH]) + len(self._waiting[NORMAL])

    def push(self, exchange: Exchange, priority: int, *, front: bool = False) -> bool:
        """Queue ``exchange``; False when the queue is full (the caller sheds it)."""
        if not front and len(self) >= self.size:
            self.shed_full += 1
            return False
        waiting = self._waiting[priority]
        if front:
            waiting.appendleft(exchange)
        else:
            waiting.append(exchange)
        return True

    def pop(self) -> Exchange | None:
        for waiting in self._waiting:
            if waiting:
                self.admitted += 1
                return waiting.popleft()
        return None

    def remove(self, exchange: Exchange) -> bool:
        for waiting in self._waiting:
            try:
                waiting.remove(exchange)
                return True
            except ValueError:
                continue
        return False


def priority_of(value: str | None) -> int:
    """``high`` (or a number above 0) from the priority header; anything else is normal."""
    if value is None:
        return NORMAL
    value = value.strip().lower()
    if value == "high" or (value.isdigit() and int(value) > 0):
        return HIGH
    return NORMAL
