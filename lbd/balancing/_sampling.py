"""Weighted sampling shared by ``random`` and ``power_of_two_choices``.

Reading every weight on every pick would make each pick O(n). Instead the cumulative
weights are re-read once every ``n`` picks (amortised O(1)) and a pick is a binary search
(O(log n)), so a weight change (slow start) takes effect within ``n`` picks.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence

from lbd.balancing.base import Backend

__all__ = ["WeightedSampler"]


class WeightedSampler:
    """Indices drawn with probability ``weight / total``, from the injected ``rng``."""

    __slots__ = ("_backends", "_random", "_cumulative", "_weights", "_total", "_until_refresh")

    def __init__(self, backends: Sequence[Backend], rng: random.Random) -> None:
        self._backends = tuple(backends)
        self._random = rng.random
        self._refresh()

    def _refresh(self) -> None:
        self._weights = [backend.weight for backend in self._backends]
        self._cumulative = []
        total = 0.0
        for weight in self._weights:
            total += weight
            self._cumulative.append(total)
        self._total = total
        self._until_refresh = len(self._backends)

    def _tick(self) -> None:
        self._until_refresh -= 1
        if self._until_refresh <= 0:
            self._refresh()

    def one(self) -> int:
        """One index; consumes one number from ``rng``."""
        self._tick()
        return self._locate(self._random() * self._total)

    def two(self) -> tuple[int, int]:
        """Two distinct indices (``n >= 2``): the second is drawn from the others' weights.

        Exact and loop-free: the draw is made on the total less the first's weight, then
        shifted past the first's interval. Consumes two numbers from ``rng``.
        """
        first = self.one()
        weight = self._weights[first]
        interval_start = self._cumulative[first] - weight
        point = self._random() * (self._total - weight)
        if point >= interval_start:
            point += weight
        second = self._locate(point)
        if second == first:  # rounding at an interval's edge
            second = first + 1 if first + 1 < len(self._backends) else 0
        return first, second

    def _locate(self, point: float) -> int:
        index = bisect_right(self._cumulative, point)
        # A point equal to the total (rounding) belongs to the last backend.
        return index if index < len(self._cumulative) else len(self._cumulative) - 1
