"""A ``redis-server`` of the tests' own on a free port (no persistence unless asked), which a
test may kill and start again; the integration tests fail, never skip, without one."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import free_port, wait_port

__all__ = ["RedisServer"]


class RedisServer:
    def __init__(self, folder: Path, port: int | None = None, *, appendonly: bool = False) -> None:
        self.folder, self.port, self.appendonly = folder, port or free_port(), appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (`make test` installs it)")
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--enable-debug-command", "local",  # DEBUG SLEEP: a test's stalled server
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=10)
        return self

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None


async def silent_server() -> tuple[asyncio.AbstractServer, str]:
    """A server that accepts connections and reads every command but never answers (a Redis
    that hangs): the server, to close, and its ``redis://`` URL."""
    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1 << 16):
            pass
        writer.close()
    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
