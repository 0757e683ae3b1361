"""NVIDIA MPS for local workers that share a GPU.

Without MPS, the CUDA contexts of several processes on one GPU take turns (time slicing):
measured on an H100 with eight MiniLM workers, a batch took ~11.5 ms of wall time per worker
against 1.1-1.4 ms in process, and 32-sentence requests reached 76% of the in-process
ceiling; under MPS their kernels run side by side and the same load reached 84%
(bench/RESULTS.md, section 4). So when two or more of lbd's workers use the same CUDA device,
the fleet starts an MPS control daemon of its own, under a private pipe directory (only
processes given that directory use it, so other users of the GPU are not affected), hands
the directory to the workers, and stops the daemon after the workers.

``fleet.mps``: ``auto`` (default: when two or more workers share a CUDA device and
``nvidia-cuda-mps-control`` is installed), ``on`` (the same, and lbd refuses to start
without the binary), ``off``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from lbd_worker.config import WorkerConfig

__all__ = ["shared_devices", "MpsDaemon", "MpsUnavailable", "CONTROL"]

log = logging.getLogger("lbd.mps")
CONTROL = "nvidia-cuda-mps-control"


class MpsUnavailable(RuntimeError):
    """``fleet.mps: on`` without the MPS control binary."""


def _cuda_index(device: str, gpu_present: bool) -> int | None:
    if device == "auto":
        return 0 if gpu_present else None
    if device == "cuda":
        return 0
    if device.startswith("cuda:"):
        return int(device.partition(":")[2])
    return None


def shared_devices(workers: Mapping[str, WorkerConfig], gpu_present: bool | None = None) -> list[int]:
    """CUDA device indices that two or more workers use (``device: auto`` counts as
    ``cuda:0`` when this host has an NVIDIA GPU)."""
    if gpu_present is None:
        gpu_present = Path("/dev/nvidia0").exists()
    counts = Counter(index for config in workers.values()
                     if (index := _cuda_index(config.device, gpu_present)) is not None)
    return sorted(index for index, count in counts.items() if count >= 2)


class MpsDaemon:
    """An MPS control daemon under a private pipe directory; :attr:`env` is what a worker
    needs to use it."""

    def __init__(self, directory: Path | None = None, binary: str | None = None) -> None:
        self.binary = binary or shutil.which(CONTROL)
        self.directory = directory
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        if not self.running or self.directory is None:
            return {}
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.directory / "pipe"),
                "CUDA_MPS_LOG_DIRECTORY": str(self.directory / "log")}

    async def start(self) -> None:
        if self.binary is None:
            raise MpsUnavailable(f"{CONTROL} is not installed (NVIDIA's CUDA toolkit or driver utilities)")
        if self.directory is None:
            base = os.environ.get("RUNTIME_DIRECTORY")  # systemd's RuntimeDirectory=, else /tmp
            self.directory = Path(tempfile.mkdtemp(prefix="lbd-mps-", dir=base))
        for sub in ("pipe", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.running = True
        status = await self._control("-d")
        if status != 0:
            self.running = False
            raise RuntimeError(f"{CONTROL} -d exited with {status} (log: {self.directory / 'log'})")
        log.info("MPS daemon started for workers sharing a GPU", extra={"pipe": self.env["CUDA_MPS_PIPE_DIRECTORY"]})

    async def stop(self) -> None:
        """After the workers: ``quit`` waits for its clients to go."""
        if not self.running:
            return
        status = await self._control(stdin=b"quit\n")
        self.running = False
        if status != 0:
            log.warning("MPS daemon did not quit cleanly", extra={"status": status})

    async def _control(self, *args: str, stdin: bytes | None = None) -> int:
        process = await asyncio.create_subprocess_exec(
            self.binary, *args, env={**os.environ, **self.env},  # type: ignore[arg-type]
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await process.communicate(stdin)
        return process.returncode or 0
