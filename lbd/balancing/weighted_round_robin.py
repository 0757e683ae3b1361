"""``weighted_round_robin``: nginx's smooth weighted round robin. Options: none.

Each pick adds every backend's weight to its ``current`` score, takes the highest score and
subtracts the total weight from it (``ngx_http_upstream_get_peer``). Weights 5, 1, 1 give
``a a b a c a a``, not ``a a a a a b c``.

Guarantees, with fixed weights ``w`` (total ``W``, ``n`` backends) and ``x_i(t)`` the picks
of backend ``i`` among the first ``t``:

- ``current_i(t) = t * w_i - W * x_i(t)``, and a picked score is at least the mean ``W / n``,
  so ``current_i >= -W (n - 1) / n`` always: **no backend is ever more than (n - 1) / n
  picks ahead of its exact share**, ``x_i(t) <= t * w_i / W + (n - 1) / n``.
- A run of ``k`` consecutive picks of ``i`` therefore has ``k <= (n - 1) * W / (W - w_i)``
  (for two backends: ``k <= ceil(w_i / w_j)``).
- Integer weights: every ``W`` picks from the start hold exactly ``w_i`` picks of ``i``.

The shorter bound ``ceil(w_i / (W - w_i))`` does not hold for three or more backends: 5, 1, 1
repeats ``a a b a c a a``, so ``a`` runs four times across the cycle boundary.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from lbd.balancing import _order
from lbd.balancing.base import Backend, NoOptions, RequestView
from lbd.clock import Clock

__all__ = ["WeightedRoundRobin"]


class WeightedRoundRobin:
    """Smooth weighted round robin; O(n) per pick, like nginx (``n`` is the pool's size).

    ``backend.weight`` is read at every pick, so slow start's ramp takes effect at once.
    """

    Options = NoOptions
    __slots__ = ("_backends", "_current")

    def __init__(
        self, backends: Sequence[Backend], options: NoOptions, *, rng: random.Random, clock: Clock
    ) -> None:
        self._backends = tuple(backends)
        # All scores start at zero, as in nginx, so the sequence is the documented one.
        self._current = [0.0] * len(self._backends)

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        backends = self._backends
        pick = self._advance()
        yield backends[pick]
        yield from _order.after(backends, pick)

    def _advance(self) -> int:
        """One step of the algorithm; the index of the backend picked."""
        current = self._current
        total = 0.0
        pick = 0
        best = float("-inf")
        for index, backend in enumerate(self._backends):
            weight = backend.weight
            score = current[index] + weight
            current[index] = score
            total += weight
            # Strictly greater: ties go to the earlier backend, as in nginx.
            if score > best:
                pick, best = index, score
        current[pick] = best - total
        return pick

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Weighted round robin does not learn."""
