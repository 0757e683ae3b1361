"""Real ``lbd-worker`` processes on loopback, with the real built-in models."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lbd_worker.build import ensure_builtin
from lbd_worker.cli import READY_LINE

_READY_PREFIX = READY_LINE.split("{", 1)[0]


class Worker:
    """A worker process started on a free port (``listen: 127.0.0.1:0``), ready once it says so."""

    def __init__(self, config: dict, log_path: Path, model_dir: Path) -> None:
        self.log_path = log_path
        config = {"listen": "127.0.0.1:0", "device": "cpu", "model_dir": str(model_dir)} | config
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lbd_worker", "--config-json", json.dumps(config)],
            stdout=subprocess.PIPE, stderr=self._log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stdout: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.port = 0

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.stdout.put(raw.decode().rstrip())

    def wait_ready(self, timeout: float = 60.0) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.stdout.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log()}") from None
                continue
            if line.startswith(_READY_PREFIX):
                self.port = int(line.rsplit(":", 1)[1])
                return self
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once (seconds) and reused by later runs; see tests/unit/worker/conftest.py."""
    configured = os.environ.get("LBD_MODEL_DIR")
    directory = Path(configured) if configured else tmp_path_factory.getbasetemp().parent / "lbd-models"
    for name in ("minilm", "classifier"):
        ensure_builtin(name, model_dir=directory)
    return directory


@pytest.fixture(scope="session")
def worker_factory(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(models: dict, *, ready: bool = True, **settings) -> Worker:
        worker = Worker({"models": models} | settings, logs / f"worker{len(started)}.log", model_dir)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def worker(worker_factory: Callable[..., Worker]) -> Worker:
    """One shared worker serving both built-in models with default settings."""
    return worker_factory({"minilm": {}, "classifier": {}}, intra_op_threads=1)
