"""Write coalescing: one ``send`` per connection per event-loop callback.

On loopback and in VMs the send syscall dominates a proxy's cost (each one runs the
receiver's TCP processing too). A request's head and body, and a response's head, body and
last chunk, usually arrive within one ``data_received``; writing each piece as it is
produced would cost three or four syscalls where one does.

So connections buffer what they are given (:meth:`Corked.write`) and register themselves
here; every callback that enters the data plane from the event loop ends with
:func:`flush`. The entry points are the protocols' ``data_received`` and
``connection_lost``, the exchange's connect completion and timeout, and the janitor.
"""

from __future__ import annotations

import asyncio

__all__ = ["Corked", "flush"]

_dirty: list[Corked] = []


class Corked:
    """Mixin for a protocol with ``transport``; buffers writes until :func:`flush`."""

    __slots__ = ()
    _out: list[bytes] | None
    transport: asyncio.Transport | None

    def write(self, data: bytes) -> None:
        out = self._out
        if out is None:
            self._out = [data]
            _dirty.append(self)
        else:
            out.append(data)

    def flush_out(self) -> None:
        out = self._out
        if out is None:
            return
        self._out = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))


def flush() -> None:
    """Send everything buffered since the last flush."""
    while _dirty:
        _dirty.pop().flush_out()
