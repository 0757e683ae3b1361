"""lbd.fleet.Fleet with real worker processes: start, readiness, log prefixes, restart with
backoff, and stop (SIGTERM, then SIGKILL after the timeout)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from lbd.fleet import Fleet
from lbd_worker.config import WorkerConfig


def _config(model_dir: Path) -> WorkerConfig:
    return WorkerConfig.model_validate({"listen": "127.0.0.1:0", "device": "cpu", "model_dir": str(model_dir),
                                        "models": {"classifier": {}}})


def _infer(host: str, port: int) -> np.ndarray:
    tensor = triton.InferInput("features", [1, 8], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 8), np.float32))
    with triton.InferenceServerClient(f"{host}:{port}") as client:
        return client.infer("classifier", [tensor]).as_numpy("label")


async def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_fleet_starts_prefixes_restarts_and_stops(model_dir):
    async def scenario():
        lines: list[str] = []
        fleet = Fleet({"w0": _config(model_dir), "w1": _config(model_dir)}, log=lines.append, restart_backoff=0.05)
        await fleet.start()
        await fleet.wait_ready(60)
        for name in ("w0", "w1"):
            assert (await asyncio.to_thread(_infer, *fleet.address(name))).shape == (1,)
        assert any(line.startswith("[worker w0] lbd-worker ready on") for line in lines)
        # Several workers on one host: each tokenizes on its own thread, not on every core.
        environ = Path(f"/proc/{fleet.workers['w1'].pid}/environ").read_bytes().split(b"\0")
        assert b"TOKENIZERS_PARALLELISM=false" in environ
        assert any(line.startswith("[worker w1] ") and "execution provider" in line for line in lines)

        crashed = fleet.workers["w0"].pid
        os.kill(crashed, signal.SIGKILL)
        await _until(lambda: fleet.workers["w0"].restarts == 1 and fleet.workers["w0"].ready.is_set())
        assert fleet.workers["w0"].pid != crashed and fleet.workers["w0"].last_exit == -signal.SIGKILL
        assert any("[worker w0] exited with status -9; restarting in 0.05s" in line for line in lines)
        assert (await asyncio.to_thread(_infer, *fleet.address("w0"))).shape == (1,)

        await fleet.stop(timeout=15)
        assert {name: state.last_exit for name, state in fleet.workers.items()} == {"w0": 0, "w1": 0}
        assert any(line.startswith("[worker w1] ") and line.endswith("stopped") for line in lines)
    asyncio.run(scenario())


@pytest.fixture
def stubborn_python(tmp_path: Path) -> str:
    """An interpreter stand-in that ignores SIGTERM and never gets ready: a real process that
    exercises the SIGKILL path."""
    script = tmp_path / "stubborn"
    script.write_text("#!/bin/sh\ntrap '' TERM\necho not a worker\nwhile true; do sleep 0.05; done\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_wait_ready_times_out_naming_the_worker_and_stop_kills(model_dir, stubborn_python):
    async def scenario():
        lines: list[str] = []
        fleet = Fleet({"stuck": _config(model_dir)}, log=lines.append, python=stubborn_python)
        await fleet.start()
        with pytest.raises(TimeoutError, match="stuck"):
            await fleet.wait_ready(0.3)
        started = time.monotonic()
        await fleet.stop(timeout=0.3)
        assert time.monotonic() - started < 5
        assert fleet.workers["stuck"].last_exit == -signal.SIGKILL
        assert "[worker stuck] not a worker" in lines
        assert any("SIGKILL" in line for line in lines)
    asyncio.run(scenario())


@pytest.fixture
def crashing_python(tmp_path: Path) -> str:
    script = tmp_path / "crashing"
    script.write_text("#!/bin/sh\necho crashing\nexit 3\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_restart_backoff_doubles(model_dir, crashing_python):
    async def scenario():
        lines: list[str] = []
        fleet = Fleet({"bad": _config(model_dir)}, log=lines.append, python=crashing_python,
                      restart_backoff=0.02, restart_backoff_max=0.08)
        await fleet.start()
        await _until(lambda: fleet.workers["bad"].restarts >= 4, timeout=10)
        await fleet.stop(timeout=1)
        delays = [line.rsplit(" ", 1)[1] for line in lines if "restarting in" in line]
        assert delays[:4] == ["0.02s", "0.04s", "0.08s", "0.08s"]
        assert fleet.workers["bad"].last_exit == 3
    asyncio.run(scenario())
