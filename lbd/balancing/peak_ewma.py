"""``peak_ewma``: prefer the backend expected to answer soonest, as Finagle and Linkerd do.

Each backend keeps an exponentially weighted moving average of its latency that reacts to
peaks at once: a sample above the estimate replaces it, a sample below is blended in with
weight ``1 - exp(-elapsed / decay)``. With no samples the estimate decays toward zero, so
a backend that was slow once is tried again after a while instead of starved for ever.

Cost is ``estimate * (inflight + 1) / weight``: the expected wait if one more request were
sent. Two distinct backends are drawn uniformly (power of two choices) and the cheaper one
is the pick: O(1), and robust to stale estimates, unlike always taking the global minimum.

Options (defaults): ``decay: 10s``, the time constant of the average (the weight of old
samples falls by ``e`` every ``decay``); ``default_rtt: 0``, the estimate before a backend's
first sample. With ``0``, an idle new backend costs nothing (it is tried at once) but,
while that first probe is in flight, costs more than any measured backend, so one request
finds out how fast it is rather than a burst.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Annotated

from pydantic import Field

from lbd.balancing import _order
from lbd.balancing.base import Backend, BalancerOptions, RequestView
from lbd.clock import Clock
from lbd.units import Duration

__all__ = ["PeakEwma", "PeakEwmaOptions"]

# Finagle's penalty for a backend with no sample and a probe in flight: above any real cost.
_UNPROBED_PENALTY = 1e9


class PeakEwmaOptions(BalancerOptions):
    decay: Annotated[Duration, Field(gt=0)] = 10.0
    default_rtt: Duration = 0.0


class PeakEwma:
    """Peak-sensitive EWMA of latency, times load, chosen by power of two choices."""

    Options = PeakEwmaOptions
    __slots__ = ("_backends", "_index", "_rng", "_clock", "_inverse_decay", "_default_rtt",
                 "_estimate", "_stamp", "_sampled")

    def __init__(
        self, backends: Sequence[Backend], options: PeakEwmaOptions, *,
        rng: random.Random, clock: Clock,
    ) -> None:
        self._backends = tuple(backends)
        # Keyed by identity: backends need not be hashable, and feedback from a backend of
        # an older runtime (after a reload) simply finds no entry.
        self._index = {id(backend): index for index, backend in enumerate(self._backends)}
        self._rng = rng
        self._clock = clock
        self._inverse_decay = 1.0 / options.decay
        self._default_rtt = options.default_rtt
        count = len(self._backends)
        self._estimate = [options.default_rtt] * count
        self._stamp = [clock.now()] * count
        self._sampled = [False] * count

    def candidates(self, request: RequestView) -> Iterator[Backend]:
        backends = self._backends
        count = len(backends)
        if count == 1:
            yield backends[0]
            return
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:  # distinct, uniformly over the others
            second += 1
        now = self._clock.now()
        if self._cost(second, now) < self._cost(first, now):
            first, second = second, first
        yield backends[first]
        yield backends[second]
        yield from _order.after(backends, first, skip=second)

    def _cost(self, index: int, now: float) -> float:
        backend = self._backends[index]
        inflight = backend.inflight
        if not self._sampled[index] and self._default_rtt == 0.0:
            return _UNPROBED_PENALTY + inflight if inflight else 0.0
        return self._current(index, now) * (inflight + 1) / backend.weight

    def _current(self, index: int, now: float) -> float:
        """The estimate decayed toward zero for the time since the last sample."""
        if not self._sampled[index]:
            return self._default_rtt
        elapsed = max(now - self._stamp[index], 0.0)
        return self._estimate[index] * math.exp(-elapsed * self._inverse_decay)

    def observe(self, backend: Backend, latency: float, ok: bool) -> None:
        """Learn from one attempt; a failure can raise the estimate but never lower it, so
        a backend that fails fast does not look fast (ejection deals with failures)."""
        index = self._index.get(id(backend))
        if index is None:
            return
        now = self._clock.now()
        current = self._current(index, now)
        if not ok:
            latency = max(latency, current)
        if not self._sampled[index] or latency > current:
            estimate = latency  # the peak: slowness is believed at once
        else:
            # current is the old estimate times w; blend in the sample with weight 1 - w.
            weight_kept = math.exp(-max(now - self._stamp[index], 0.0) * self._inverse_decay)
            estimate = current + latency * (1.0 - weight_kept)
        self._estimate[index] = estimate
        self._stamp[index] = now
        self._sampled[index] = True
