"""Real processes on loopback for the integration tests: free ports, start, wait, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "support" / "upstream.py"

__all__ = ["ROOT", "free_port", "wait_for", "wait_port", "Proc", "start_upstream", "start_lbd", "upstream_requests"]


def upstream_requests(port: int) -> int:
    """How many requests the test upstream on ``port`` answered."""
    import json
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)["requests"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 15.0) -> None:
    wait_for(lambda: _port_open(port), timeout, what=f"port {port} open")


class Proc:
    """A child process with its output captured to a file, stopped on exit."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def start_upstream(tmp: Path, name: str, port: int | None = None, *extra: str) -> tuple[Proc, int]:
    port = port or free_port()
    proc = Proc([sys.executable, str(UPSTREAM), "--port", str(port), "--name", name, *extra],
                tmp / f"upstream-{name}-{port}.log")
    wait_port(port)
    return proc, port


def start_lbd(tmp: Path, config_text: str, port: int, name: str = "lbd", *, env: dict[str, str] | None = None,
              timeout: float = 15.0) -> Proc:
    config = tmp / f"{name}.yaml"
    config.write_text(config_text)
    proc = Proc([sys.executable, "-m", "lbd", "serve", "--config", str(config)], tmp / f"{name}.log", env=env)
    try:
        wait_port(port, timeout)
    except TimeoutError:
        proc.stop()
        raise AssertionError(f"lbd did not start:\n{proc.output()}") from None
    return proc
