"""An in-memory transport for driving the data plane's protocol objects without sockets
(the fuzz tests and bench/proxy/hotpath.py)."""

from __future__ import annotations

import asyncio

__all__ = ["MemoryTransport"]


class MemoryTransport(asyncio.Transport):
    """Counts writes and, with ``keep=True``, keeps what was written."""

    def __init__(self, keep: bool = True, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.keep = keep
        self.peer = peer
        self.data = bytearray()
        self.sent = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += 1
        if self.keep:
            self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
