"""``round_robin``: each backend in turn, ignoring weights. Options: none."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from lbd.balancing import _order
from lbd.balancing.base import Backend, NoOptions, RequestView
from lbd.clock import Clock

__all__ = ["RoundRobin"]


class RoundRobin:
    """Backends in a fixed rotation; O(1) per pick.

    The rotation starts at a random offset (from ``rng``) so that several proxies, or the
    runtime built by a reload, do not all send their first request to the same backend.
    """

    Options = NoOptions
    __slots__ = ("_backends", "_next")

    def __init__(
        self, backends: Sequence[Backend], options: NoOptions, *, rng: random.Random, clock: Clock
    ) -> None:
        self._backends = tuple(backends)
        self._next = rng.randrange(len(self._backends))

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        backends = self._backends
        pick = self._next
        # Advanced here, before the first yield: the generator body runs on the first next().
        self._next = pick + 1 if pick + 1 < len(backends) else 0
        yield backends[pick]
        yield from _order.after(backends, pick)

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Round robin does not learn."""
