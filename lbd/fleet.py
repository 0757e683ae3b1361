"""The local worker fleet: ``lbd serve`` starts one ``lbd-worker`` process per ``workers:`` entry
and supervises it.

Each worker runs as ``python -m lbd_worker --config-json ... --exit-with-parent`` in its own
session (a Ctrl-C in lbd's terminal reaches lbd, which then stops the workers in order; a
worker whose lbd died exits by itself). Its stdout and stderr lines are passed on prefixed with
``[worker NAME]``. A worker that exits while the fleet is running is restarted after an
exponential backoff (``restart_backoff`` doubling up to ``restart_backoff_max``), which resets
once a worker has stayed ready for ``stable_after`` seconds.

Workers get ``TOKENIZERS_PARALLELISM=false`` unless lbd's environment sets it: each worker
already tokenizes a batch on its own thread, and several workers each spreading tokenization
over every core oversubscribe the host (measured on the H100 host: one-sentence requests
from 46.7% to 51.4% of the ceiling with it). Two or more workers on one CUDA device get an
MPS daemon of the fleet's own (:mod:`lbd.mps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lbd.mps import CONTROL, MpsDaemon, shared_devices
from lbd_worker.cli import READY_LINE
from lbd_worker.config import WorkerConfig

__all__ = ["Fleet", "WorkerState"]

_READY_PREFIX = READY_LINE.split("{", 1)[0]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class WorkerState:
    """What the fleet knows of one worker; read it, do not change it."""

    name: str
    config: WorkerConfig
    host: str
    port: int
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)


class Fleet:
    """Starts, supervises and stops local workers.

    ``log`` receives each prefixed output line and the fleet's own messages (default: stderr).
    Defaults: ``restart_backoff=0.5`` s, ``restart_backoff_max=30`` s, ``stable_after=30`` s.
    """

    def __init__(self, workers: Mapping[str, WorkerConfig], *, log: Callable[[str], None] = _to_stderr,
                 python: str = sys.executable, restart_backoff: float = 0.5,
                 restart_backoff_max: float = 30.0, stable_after: float = 30.0,
                 env: Mapping[str, str] | None = None, mps: str = "off") -> None:
        self._mps_mode = mps
        self._mps: MpsDaemon | None = None
        self._states = {name: WorkerState(name, config, config.host, config.port)
                        for name, config in workers.items()}
        self._log, self._python, self._env = log, python, env
        self._backoff, self._backoff_max, self._stable_after = restart_backoff, restart_backoff_max, stable_after
        self._tasks: dict[str, asyncio.Task] = {}
        self._stopping = asyncio.Event()

    @property
    def workers(self) -> Mapping[str, WorkerState]:
        return self._states

    def address(self, name: str) -> tuple[str, int]:
        """Where worker ``name`` listens (with ``listen: host:0``, the port it got, once ready)."""
        state = self._states[name]
        return state.host, state.port

    async def start(self) -> None:
        """Spawns every worker; returns once all are started (not necessarily ready)."""
        await self._start_mps()
        for name, state in self._states.items():
            await self._spawn(state)
            self._tasks[name] = asyncio.create_task(self._supervise(state), name=f"fleet-{name}")

    async def apply(self, workers: Mapping[str, WorkerConfig], timeout: float = 30.0) -> list[str]:
        """Follow a reloaded config: stop workers no longer declared or declared differently
        (SIGTERM: each finishes its queue), start the new and changed ones. Returns the
        names started; wait for them with :meth:`wait_ready`."""
        changed = [name for name, state in self._states.items() if workers.get(name) != state.config]
        await asyncio.gather(*(self._retire(name, timeout) for name in changed))
        started = [name for name in workers if name not in self._states]
        for name in started:
            config = workers[name]
            state = self._states[name] = WorkerState(name, config, config.host, config.port)
            await self._spawn(state)
            self._tasks[name] = asyncio.create_task(self._supervise(state), name=f"fleet-{name}")
        return started

    async def _retire(self, name: str, timeout: float) -> None:
        state = self._states.pop(name)
        state.retired = True
        await self._terminate(state, timeout)
        task = self._tasks.pop(name, None)
        if task is not None:
            await asyncio.wait([task], timeout=5.0)
            task.cancel()
        self._log(f"[worker {name}] stopped: no longer in the config as it was")

    async def wait_ready(self, timeout: float) -> None:
        """Waits until every worker reported ready; ``TimeoutError`` names those that did not."""
        waits = [asyncio.create_task(state.ready.wait()) for state in self._states.values()]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            late = [f"{s.name} (restarts {s.restarts}, last exit {s.last_exit})"
                    for s in self._states.values() if not s.ready.is_set()]
            raise TimeoutError(f"workers not ready after {timeout:g}s: {', '.join(late)}")

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every worker (they finish their queues), SIGKILL to those still running
        after ``timeout`` seconds; no restarts from here on."""
        self._stopping.set()
        await asyncio.gather(*(self._terminate(state, timeout) for state in self._states.values()))
        if self._tasks:  # they end once the workers' last lines are passed on
            await asyncio.wait(self._tasks.values(), timeout=5.0)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._mps is not None:
            await self._mps.stop()  # after its clients, the workers, are gone
            self._mps = None

    async def _start_mps(self) -> None:
        if self._mps_mode == "off":
            return
        shared = shared_devices({name: state.config for name, state in self._states.items()})
        if not shared:
            return
        daemon = MpsDaemon()
        if daemon.binary is None and self._mps_mode == "auto":
            self._log(f"[fleet] workers share CUDA device(s) {shared}; {CONTROL} is not installed, so they "
                      "will take turns on the GPU (install it, or set fleet.mps: off to silence this)")
            return
        await daemon.start()  # fleet.mps: on without the binary raises MpsUnavailable
        self._mps = daemon
        self._log(f"[fleet] MPS daemon started for CUDA device(s) {shared} ({daemon.directory})")

    @property
    def mps_env(self) -> dict[str, str]:
        """What workers need to use the fleet's MPS daemon (empty without one)."""
        return self._mps.env if self._mps is not None else {}

    async def _spawn(self, state: WorkerState) -> None:
        env = dict(os.environ if self._env is None else self._env, PYTHONUNBUFFERED="1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.update(self.mps_env)
        process = await asyncio.create_subprocess_exec(
            self._python, "-m", "lbd_worker", "--config-json", state.config.model_dump_json(),
            "--exit-with-parent", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        state.process, state.pid = process, process.pid
        state.ready.clear()
        self._log(f"[worker {state.name}] started, pid {process.pid}")

    async def _supervise(self, state: WorkerState) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            status = await self._follow(state)
            state.last_exit = status
            if self._stopping.is_set() or state.retired:
                return
            failures = 0 if loop.time() - started >= self._stable_after else failures + 1
            delay = min(self._backoff * 2 ** max(failures - 1, 0), self._backoff_max)
            self._log(f"[worker {state.name}] exited with status {status}; restarting in {delay:g}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set() or state.retired:
                return
            state.restarts += 1
            await self._spawn(state)

    async def _follow(self, state: WorkerState) -> int:
        """Passes the worker's output on until it exits; its exit status."""
        process = state.process
        assert process is not None and process.stdout is not None and process.stderr is not None
        await asyncio.gather(self._pump(state, process.stdout, watch_ready=True),
                             self._pump(state, process.stderr, watch_ready=False))
        status = await process.wait()
        state.ready.clear()
        return status

    async def _pump(self, state: WorkerState, stream: asyncio.StreamReader, *, watch_ready: bool) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if watch_ready and line.startswith(_READY_PREFIX):
                state.port = int(line.rsplit(":", 1)[1])
                state.ready.set()
            self._log(f"[worker {state.name}] {line}")

    async def _terminate(self, state: WorkerState, timeout: float) -> None:
        process = state.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            self._log(f"[worker {state.name}] still running {timeout:g}s after SIGTERM; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        state.last_exit = process.returncode
        state.ready.clear()
