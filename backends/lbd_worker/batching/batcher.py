"""The dynamic batcher: one asyncio task per model that turns queued requests into executions.

The task sleeps until the earliest of: a new request, a finished batch (an instance became
free), the head's ``max_queue_delay``, or the next queue deadline. So a request's queue timeout
fires on time even while every instance is busy: execution happens on executor threads
(ONNX Runtime releases the GIL), never on the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lbd.clock import MONOTONIC, Clock
from lbd_worker.batching.policy import BatchRules, Dispatch, plan
from lbd_worker.batching.queue import Entry, PendingQueue, priority_level
from lbd_worker.metrics import ModelStats, WorkerMetrics
from lbd_worker.models import ComputeTimes, Model, Work
from lbd_worker.protocol import ExecutionFailed, QueueFull, QueueTimeout, Unavailable

__all__ = ["DynamicBatcher", "Result", "Waiter"]

_log = logging.getLogger("lbd_worker.batcher")


@dataclass(frozen=True)
class Result:
    outputs: dict[str, np.ndarray]
    queue_seconds: float


class Waiter(Protocol):
    """What a queued request is resolved through: an :class:`asyncio.Future`, or the server's
    own lighter object that answers the HTTP request directly from :meth:`set_result`."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, error: BaseException) -> None: ...


class DynamicBatcher:
    """Queues :class:`Work` for one model and executes it in batches (Triton's rules, see
    :mod:`lbd_worker.batching.policy`). ``clock`` must be the loop's time base (monotonic)."""

    def __init__(self, model: Model, metrics: WorkerMetrics, *, clock: Clock = MONOTONIC,
                 executor: ThreadPoolExecutor | None = None) -> None:
        config = model.config
        self.model = model
        self._rules = BatchRules(model.max_batch_size, config.preferred_batch_sizes, config.max_queue_delay,
                                 config.dynamic_batching and model.batching)
        self._queue = PendingQueue(config.max_queue_size)
        self._clock = clock
        self._executor = executor or ThreadPoolExecutor(config.instances, thread_name_prefix=f"run-{model.name}")
        self._metrics = metrics
        self._stats: ModelStats = metrics.stats(model.name, model.version)
        self._free_instances = config.instances
        self._batches: set[asyncio.Task] = set()
        self._wakeup: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._accepting = True

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or bool(self._batches)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model.name}")

    async def submit(self, work: Work, *, priority: int = 0, timeout: float | None = None) -> Result:
        """Queues ``work`` and returns its outputs once its batch ran.

        ``timeout`` (seconds) replaces the model's ``default_queue_timeout`` when the model
        allows it. Raises :class:`QueueFull`, :class:`QueueTimeout`, :class:`Unavailable`
        (draining) or :class:`ExecutionFailed`.
        """
        waiter = asyncio.get_running_loop().create_future()
        entry = self.enqueue(work, waiter, priority=priority, timeout=timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._queue.discard(entry)
            raise

    def enqueue(self, work: Work, waiter: Waiter, *, priority: int = 0, timeout: float | None = None) -> Entry:
        """Queues ``work`` without a coroutine: the batcher later calls, on the loop, either
        ``waiter.set_result(Result)`` or ``waiter.set_exception(error)`` (once, and not when
        ``waiter.done()``). Raises :class:`QueueFull` or :class:`Unavailable` at once.
        :meth:`discard` takes the entry back out while it waits."""
        if not self._accepting:
            raise Unavailable(f"model '{self.model.name}' is shutting down")
        if self._queue.full:
            raise QueueFull(f"model '{self.model.name}': queue full ({self._queue.max_size} requests waiting)")
        now = self._clock.now()
        limit = self._queue_timeout(timeout)
        entry = Entry(work.rows, work.bucket, priority_level(priority), now,
                      None if limit is None else now + limit, work, waiter)
        self._queue.push(entry)
        self._wake()
        return entry

    def discard(self, entry: Entry) -> bool:
        """Removes a waiting entry whose client went away; ``False`` once it left the queue."""
        return self._queue.discard(entry)

    def _queue_timeout(self, requested: float | None) -> float | None:
        config = self.model.config
        if requested is not None and requested > 0 and config.allow_timeout_override:
            return requested
        return config.default_queue_timeout

    def hurry(self) -> None:
        """From now on, queued requests no longer wait for a batch to fill (shutdown)."""
        self._rules = dataclasses.replace(self._rules, max_queue_delay=0.0)
        self._wake()

    async def drain(self, timeout: float) -> bool:
        """Stops taking requests and waits up to ``timeout`` for the queue and batches to finish."""
        self._accepting = False
        self.hurry()
        deadline = self._clock.now() + timeout
        while self.busy and self._clock.now() < deadline:
            await asyncio.sleep(0.005)
        return not self.busy

    async def close(self) -> None:
        """Fails whatever is still queued and stops the task (after :meth:`drain`)."""
        self._accepting = False
        for entry in self._queue.drain():
            _fail(entry, Unavailable(f"model '{self.model.name}' shut down before the request ran"))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        self._executor.shutdown(wait=False)

    async def run_warmup(self) -> None:
        """Executes the model's warm-up batches directly (not through the queue)."""
        loop = asyncio.get_running_loop()
        for works in self.model.warmup_works():
            await loop.run_in_executor(self._executor, self.model.execute, works)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wake_at = self._step()
            self._wakeup = loop.create_future()
            timer = None
            if wake_at is not None:
                timer = loop.call_later(max(0.0, wake_at - self._clock.now()), self._wake)
            await self._wakeup
            if timer is not None:
                timer.cancel()

    def _step(self) -> float | None:
        """Expires, dispatches what is due; returns when to look again (``None``: on a change)."""
        while True:
            now = self._clock.now()
            for entry in self._queue.expire(now):
                _fail(entry, QueueTimeout(f"model '{self.model.name}': the request waited "
                                          f"{now - entry.enqueued_at:.3f}s in the queue, past its timeout"))
            next_deadline = self._queue.next_deadline()
            if self._free_instances == 0:
                return next_deadline
            decision = plan(self._queue, now, self._rules)
            if not isinstance(decision, Dispatch):
                return _earliest(next_deadline, decision.until)
            self._dispatch(decision.entries, now)

    def _dispatch(self, entries: list[Entry], now: float) -> None:
        self._queue.take(entries)
        live = [entry for entry in entries if not entry.waiter.done()]
        if not live:
            return
        self._free_instances -= 1
        task = asyncio.get_running_loop().create_task(self._execute(live, now))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _execute(self, entries: list[Entry], started: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            outputs, times = await loop.run_in_executor(
                self._executor, self.model.execute, [entry.work for entry in entries])
        except Exception as error:  # noqa: BLE001 - every request of the batch learns why
            self._release()
            _log.error("model %s: execution of a batch of %d failed: %s", self.model.name, len(entries), error)
            for entry in entries:
                _fail(entry, ExecutionFailed(f"model '{self.model.name}': execution failed: {error}"))
            return
        except BaseException:
            self._release()
            raise
        # The next batch goes to the free instance before this one's answers are written, so
        # the device does not idle while the loop encodes and sends them.
        self._release()
        self._record(entries, started, times)
        for entry, output in zip(entries, outputs):
            if not entry.waiter.done():
                entry.waiter.set_result(Result(output, started - entry.enqueued_at))

    def _release(self) -> None:
        self._free_instances += 1
        self._step()
        self._wake()

    def _record(self, entries: list[Entry], started: float, times: ComputeTimes) -> None:
        stats, labels = self._stats, (self.model.name, self.model.version)
        rows = sum(entry.rows for entry in entries)
        stats.exec_count += 1
        stats.inference_count += rows
        stats.queue_duration_us += sum(started - entry.enqueued_at for entry in entries) * 1e6
        stats.compute_input_duration_us += times.input * 1e6 * len(entries)
        stats.compute_infer_duration_us += times.infer * 1e6 * len(entries)
        stats.compute_output_duration_us += times.output * 1e6 * len(entries)
        self._metrics.batch_rows.labels(*labels).observe(rows)
        self._metrics.batch_requests.labels(*labels).observe(len(entries))


def _earliest(first: float | None, second: float | None) -> float | None:
    candidates = [t for t in (first, second) if t is not None]
    return min(candidates) if candidates else None


def _fail(entry: Entry, error: Exception) -> None:
    if not entry.waiter.done():
        entry.waiter.set_exception(error)

