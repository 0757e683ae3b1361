"""Watching the config file for changes, by polling.

Polling the path (not an inotify watch on the inode) sees every way a file changes: an
editor that saves by writing a new file and renaming it over the old one, a Kubernetes
ConfigMap's symlink swap, and a bind-mounted file edited on the host, whose events never
reach the container. A change counts once the content (not just the mtime) differs from
the last one applied and has held still for one more poll, so a file caught half-written
is not loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = ["ConfigWatcher"]

log = logging.getLogger("lbd.watch")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return None  # being replaced, or gone: try again next poll


class ConfigWatcher:
    def __init__(self, path: Path, on_change: Callable[[], Awaitable[object]], interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self._on_change = on_change
        self._applied = _digest(path)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def applied(self) -> None:
        """The daemon loaded the file by another way (SIGHUP, the admin API): remember it."""
        self._applied = _digest(self.path)

    async def _run(self) -> None:
        pending: str | None = None
        while True:
            await asyncio.sleep(self.interval)
            current = _digest(self.path)
            if current is None or current == self._applied:
                pending = None
                continue
            if current != pending:
                pending = current  # changed since the last poll: wait for it to hold still
                continue
            log.info("config file changed: reloading", extra={"path": str(self.path)})
            self._applied = current
            pending = None
            try:
                await self._on_change()
            except Exception:  # a failed reload is logged by the daemon; the watch goes on
                log.exception("reload after a file change failed")
