"""``random``: a backend drawn at random, in proportion to its weight. Options: none."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from lbd.balancing import _order
from lbd.balancing._sampling import WeightedSampler
from lbd.balancing.base import Backend, NoOptions, RequestView
from lbd.clock import Clock

__all__ = ["WeightedRandom"]


class WeightedRandom:
    """Weighted random pick, O(log n); weights are re-read every ``n`` picks.

    Randomness comes only from ``rng``: one number per call, none for the fallbacks.
    """

    Options = NoOptions
    __slots__ = ("_backends", "_sampler")

    def __init__(
        self, backends: Sequence[Backend], options: NoOptions, *, rng: random.Random, clock: Clock
    ) -> None:
        self._backends = tuple(backends)
        self._sampler = WeightedSampler(self._backends, rng)

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        pick = self._sampler.one()
        yield self._backends[pick]
        yield from _order.after(self._backends, pick)

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Random does not learn."""
