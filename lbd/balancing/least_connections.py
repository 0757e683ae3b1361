"""``least_connections``: the backend with the fewest requests in flight per unit of weight.

Options: none.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from lbd.balancing.base import Backend, NoOptions, RequestView
from lbd.clock import Clock

__all__ = ["LeastConnections"]


class LeastConnections:
    """Lowest ``inflight / weight`` wins; O(n) per pick, like nginx's ``least_conn``.

    The scan starts just after the previous pick and keeps the first of equal scores, so
    backends that tie (an idle pool, equal weights) take strict turns instead of the first
    in the list taking every request. Weights are read at pick time.
    """

    Options = NoOptions
    __slots__ = ("_backends", "_ring", "_start")

    def __init__(
        self, backends: Sequence[Backend], options: NoOptions, *, rng: random.Random, clock: Clock
    ) -> None:
        self._backends = tuple(backends)
        # The list twice over, so a scan from any start reads it without wrapping an index.
        self._ring = self._backends * 2
        self._start = rng.randrange(len(self._backends))

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        count = len(self._backends)
        pick = self._least_loaded(self._start, count)
        # Resuming after the pick (not after the previous start) is what makes ties fair
        # when they are not neighbours: with b0, b1 idle and b2 busy, b0 and b1 alternate.
        self._start = pick + 1 if pick + 1 < count else 0
        yield self._backends[pick]
        # Fallbacks by load too: the pick may be filtered out (down, ejected, breaker open,
        # all of which leave it idle and so "least loaded"), and a fixed order after it
        # would send everything to its neighbour.
        rest = [b for i, b in enumerate(self._backends) if i != pick]
        rest.sort(key=_load)
        yield from rest

    def _least_loaded(self, start: int, count: int) -> int:
        ring = self._ring
        pick = start
        best = ring[start].inflight / ring[start].weight
        for position in range(start + 1, start + count):
            backend = ring[position]
            score = backend.inflight / backend.weight
            if score < best:
                pick, best = position, score
        return pick - count if pick >= count else pick

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Least connections reads in-flight counts; it does not learn from latency."""


def _load(backend: Backend) -> float:
    return backend.inflight / backend.weight
