"""Priority tiers inside a pool: Envoy's priority levels with its overprovisioning factor.

Every backend has a tier (0 first). A tier's health is the share of its backends that are
usable times the overprovisioning factor, capped at 100 (percent). Tier 0 takes
``min(100, health0)`` percent of the requests, tier 1 the rest up to its own health, and so
on; when the healths add up to less than 100 (every tier degraded) they are scaled up to
100 (Envoy's normalized total availability). So traffic stays in tier 0 while it has the
capacity and leaves it gradually, in proportion to what it lost, never all at once. The
percentages are integers, as Envoy's, so the split is exact.

A request's tier is drawn with those weights from the injected ``rng`` (no draw while tier
0 takes everything). That tier's own balancer orders its backends, and the other tiers
follow in priority order, each by its balancer: a pick the pool filters out (down, ejected,
saturated, breaker open) or a retry falls through to another tier. (Envoy draws the tier of
a hashing balancer from the request's hash, so a key keeps to one tier during a spill; here
the draw is random, so a key alternates between its owners in the two tiers.)
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lbd.balancing.base import Backend, Balancer, RequestView, needs_body

__all__ = ["Tiers", "priority_loads"]


def priority_loads(usable: Sequence[int], totals: Sequence[int], overprovisioning: int) -> list[int]:
    """Percent of requests per tier (summing to 100) from the usable and total backend
    counts of each; ``overprovisioning`` in percent (140 for a factor of 1.4)."""
    health = [min(100, overprovisioning * up // total) for up, total in zip(usable, totals)]
    available = min(100, sum(health))
    if available == 0:
        return [100] + [0] * (len(health) - 1)  # nothing usable anywhere: panic routing decides
    loads = []
    remaining = 100
    for tier_health in health:
        load = min(remaining, tier_health * 100 // available)
        loads.append(load)
        remaining -= load
    if remaining:  # what integer division left over goes to the first tier that takes any
        first = next(index for index, load in enumerate(loads) if load)
        loads[first] += remaining
    return loads


class Tiers:
    """The tiers of one pool, each with its balancer, and the current split. It is itself a
    balancer (``candidates``, ``observe``), so ``Pool.select`` is the same for one tier or
    many; a pool of one tier does not have one."""

    __slots__ = ("levels", "members", "loads", "needs_body", "_balancers", "_balancer_of", "_overprovisioning",
                 "_random", "_bounds", "_usable")

    def __init__(self, levels: Sequence[int], members: Sequence[Sequence[Backend]], balancers: Sequence[Balancer],
                 *, overprovisioning_factor: float, rng: random.Random) -> None:
        self.levels = tuple(levels)
        """The configured tier numbers, in priority order (gaps allowed)."""
        self.members = tuple(tuple(backends) for backends in members)
        self._balancers = tuple(balancers)
        self._balancer_of = {backend: balancer for backends, balancer in zip(self.members, self._balancers)
                             for backend in backends}
        self.needs_body = any(needs_body(balancer) for balancer in self._balancers)
        self._overprovisioning = round(overprovisioning_factor * 100)
        self._random = rng.random
        self._usable = [len(backends) for backends in self.members]
        self._set_loads([100] + [0] * (len(self.members) - 1))  # all usable until refreshed

    def refresh(self, usable: Callable[[Backend], bool], in_panic: Callable[[int, int], bool]) -> bool:
        """Recount each tier's usable backends and split the traffic again; whether the pool
        is in panic: every tier is, each on its own (one healthy tier is enough to route)."""
        self._usable = [sum(1 for backend in backends if usable(backend)) for backends in self.members]
        totals = [len(backends) for backends in self.members]
        self._set_loads(priority_loads(self._usable, totals, self._overprovisioning))
        return all(in_panic(up, total) for up, total in zip(self._usable, totals))

    def _set_loads(self, loads: list[int]) -> None:
        self.loads = loads
        bounds, total = [], 0
        for load in loads:
            total += load
            bounds.append(total)
        self._bounds = None if loads[0] == 100 else bounds

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        bounds = self._bounds
        balancers = self._balancers
        chosen = 0 if bounds is None else min(bisect_right(bounds, self._random() * 100.0), len(balancers) - 1)
        yield from balancers[chosen].candidates(request)
        for index, balancer in enumerate(balancers):
            if index != chosen:
                yield from balancer.candidates(request)

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        balancer = self._balancer_of.get(backend)
        if balancer is not None:  # a backend of a previous runtime
            balancer.observe(backend, latency, ok)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each tier: its number, backends, usable count and share of requests (percent)."""
        return [{"tier": level, "backends": [backend.name for backend in backends], "usable": usable, "load": load}
                for level, backends, usable, load in zip(self.levels, self.members, self._usable, self.loads)]
