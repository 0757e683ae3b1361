"""Which workers share a GPU, and what the fleet does about it (lbd.mps)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from lbd.fleet import Fleet
from lbd.mps import CONTROL, MpsUnavailable, shared_devices
from lbd_worker.config import WorkerConfig


def workers(*devices: str) -> dict[str, WorkerConfig]:
    return {f"w{i}": WorkerConfig.model_validate({"listen": f"127.0.0.1:{9001 + i}", "device": device,
                                                  "models": {"classifier": {}}})
            for i, device in enumerate(devices)}


def test_devices_shared_by_two_or_more_workers() -> None:
    assert shared_devices(workers("cuda:0", "cuda:0", "cuda:1"), gpu_present=True) == [0]
    assert shared_devices(workers("cuda:0", "cuda:1"), gpu_present=True) == []
    assert shared_devices(workers("auto", "cuda", "cpu"), gpu_present=True) == [0]  # auto and cuda mean cuda:0
    assert shared_devices(workers("auto", "auto"), gpu_present=False) == []  # auto on a host without a GPU: the CPU
    assert shared_devices(workers("cpu", "cpu"), gpu_present=True) == []


def test_mps_on_without_the_binary_refuses_to_start_the_workers(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a host without NVIDIA's utilities
    assert shutil.which(CONTROL) is None

    async def scenario() -> None:
        lines: list[str] = []
        fleet = Fleet(workers("cuda:0", "cuda:0"), log=lines.append, mps="on")
        with pytest.raises(MpsUnavailable, match=CONTROL):
            await fleet.start()
        assert fleet.workers["w0"].pid is None  # nothing was spawned
        quiet = Fleet(workers("cuda:0", "cuda:0"), log=lines.append, mps="auto")
        await quiet._start_mps()
        assert quiet.mps_env == {} and any("take turns on the GPU" in line for line in lines)
    asyncio.run(scenario())
