"""The cyclic garbage collector, tuned for a long-running proxy.

At start the daemon holds some 75,000 objects that live as long as it does (modules, the
config, the runtime, the cache's embedder). CPython's full collection walks all of them
(about 40 ms on the bench machine, the loop stalled) whenever enough new objects have
survived, which under load is every few seconds. :func:`settle` collects once and then
freezes what is alive (``gc.freeze``), so later collections walk only what came after; the
young generation's threshold is raised from 700 so that the requests in flight (and the
access log's pending entries) do not set a collection off every few hundred requests.

A reload builds a new runtime and retires the old one, which may hold reference cycles:
:func:`thaw` puts the frozen objects back in the collector's reach at once, and the daemon
settles the heap again once the old runtime's connections have had time to drain.
"""

from __future__ import annotations

import gc

__all__ = ["settle", "thaw", "YOUNG_THRESHOLD"]

YOUNG_THRESHOLD = 20_000
"""Allocations of tracked objects (net of those freed) between young collections."""


def settle() -> None:
    """Collect everything collectable, then keep what is left out of later collections."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def thaw() -> None:
    """Let the collector see the frozen objects again (some may be garbage by now)."""
    gc.unfreeze()
