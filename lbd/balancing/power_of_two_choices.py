"""``power_of_two_choices``: draw two backends by weight, keep the less loaded. Options: none.

Mitzenmacher's "power of two choices": two random candidates already cut the worst-case
load from O(log n / log log n) to O(log log n), without scanning the pool.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from lbd.balancing import _order
from lbd.balancing._sampling import WeightedSampler
from lbd.balancing.base import Backend, NoOptions, RequestView
from lbd.clock import Clock

__all__ = ["PowerOfTwoChoices"]


class PowerOfTwoChoices:
    """Two distinct weighted draws; the lower ``inflight / weight`` wins, O(log n).

    A tie keeps the first draw, so an idle pool is picked from exactly by weight. The loser
    is the first fallback, then the rest in rotation. Weights for the draws are re-read
    every ``n`` picks; the two compared scores read the live weights.
    """

    Options = NoOptions
    __slots__ = ("_backends", "_sampler")

    def __init__(
        self, backends: Sequence[Backend], options: NoOptions, *, rng: random.Random, clock: Clock
    ) -> None:
        self._backends = tuple(backends)
        self._sampler = WeightedSampler(self._backends, rng)

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        backends = self._backends
        if len(backends) == 1:
            yield backends[0]
            return
        first, second = self._sampler.two()
        a, b = backends[first], backends[second]
        if b.inflight / b.weight < a.inflight / a.weight:
            first, second = second, first
        yield backends[first]
        yield backends[second]
        yield from _order.after(backends, first, skip=second)

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Power of two choices reads in-flight counts; it does not learn from latency."""
