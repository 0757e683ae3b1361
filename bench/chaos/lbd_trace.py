"""`lbd` with its resilience decisions logged: `python bench/chaos/lbd_trace.py serve --config F`.

lbd logs health transitions but not (yet) its circuit breaker transitions, outlier ejections
or panic routing, which decide where retries go. This wrapper hooks the callbacks those
classes already have (``CircuitBreaker(on_transition=)``, ``OutlierDetector(on_eject=)``)
and wraps ``Pool.refresh`` (which recomputes panic mode), then runs lbd's own ``main``. Only
these rare events are touched, never the per-request path, and lbd's code is not changed.
Each event is one JSON line on stderr from the logger ``lbd.trace``:

    {"msg": "breaker open", "backend": "w0", "reason": "5 consecutive failures", ...}
    {"msg": "ejected", "backend": "w2", "reason": "5 consecutive gateway failures", "seconds": 30.0}
    {"msg": "panic on", "pool": "classifier", "usable": 1, "total": 3}
"""

from __future__ import annotations

import logging
import sys

from lbd.cli import main
from lbd.proxy.pool import Pool

log = logging.getLogger("lbd.trace")
_init, _refresh = Pool.__init__, Pool.refresh


def _traced_init(self: Pool, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    pool = self.name
    for backend in self.backends:
        breaker = backend.breaker
        if breaker is not None and breaker._on_transition is None:
            breaker._on_transition = (
                lambda old, new, reason, name=backend.name: log.info(
                    f"breaker {new}", extra={"pool": pool, "backend": name, "was": old, "reason": reason}))
    if self.outlier._on_eject is None:
        self.outlier._on_eject = lambda backend, reason, seconds: log.info(
            "ejected", extra={"pool": pool, "backend": getattr(backend, "name", str(backend)),
                              "reason": reason, "seconds": seconds})


def _traced_refresh(self: Pool) -> None:
    before = self.panic
    _refresh(self)
    if self.panic != before:
        usable = sum(1 for backend in self.backends if self.usable(backend))
        log.info(f"panic {'on' if self.panic else 'off'}",
                 extra={"pool": self.name, "usable": usable, "total": len(self.backends)})


Pool.__init__ = _traced_init
Pool.refresh = _traced_refresh

if __name__ == "__main__":
    sys.exit(main())
