"""The dynamic batcher driving the real classifier model on executor threads.

Executions can be held at a gate (a threading.Event the test opens), which stands in for a slow
model: it controls time, nothing else. Waiting is polling with a deadline, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest

from lbd_worker.batching import DynamicBatcher
from lbd_worker.config import WorkerConfig
from lbd_worker.metrics import WorkerMetrics
from lbd_worker.models import TensorModel, Work, load_model
from lbd_worker.protocol import ExecutionFailed, QueueFull, QueueTimeout, Unavailable
from lbd_worker.runner import Device


@pytest.fixture(scope="module")
def classifier(model_dir, classifier_files) -> TensorModel:
    config = WorkerConfig.model_validate({"device": "cpu", "model_dir": str(model_dir), "models": {"classifier": {}}})
    return load_model("classifier", config.models["classifier"], config, Device("cpu", 0, "tests"))


class Harness:
    """A batcher over a copy of the model with ``settings``, whose executions wait at a gate."""

    def __init__(self, model: TensorModel, **settings) -> None:
        self.model = dataclasses.replace(model, config=model.config.model_copy(update=settings))
        self.gate = threading.Event()
        self.batches: list[list[int]] = []  # rows of each request, per execution, in order
        self.executing = threading.Event()
        run = self.model.execute

        def gated(works):
            self.executing.set()
            self.gate.wait(10)
            self.batches.append([int(work.payload["features"][0, 0]) for work in works])
            return run(works)

        self.model.execute = gated
        self.metrics = WorkerMetrics(pending=lambda _: 0, inflight=lambda: 0)
        self.batcher = DynamicBatcher(self.model, self.metrics)

    def submit(self, tag: int, **kwargs) -> asyncio.Task:
        features = np.full((1, 8), tag, dtype=np.float32)
        return asyncio.ensure_future(self.batcher.submit(Work(1, {"features": features}), **kwargs))

    async def until(self, condition, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.002)


def _run(scenario):
    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_requests_that_arrive_during_an_execution_form_the_next_batch(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.0)
        h.batcher.start()
        first = h.submit(0)
        await h.until(h.executing.is_set)
        rest = [h.submit(tag) for tag in range(1, 11)]
        await h.until(lambda: h.batcher.depth == 10)
        h.gate.set()
        results = await asyncio.gather(first, *rest)
        assert h.batches == [[0], list(range(1, 11))]
        assert all(r.outputs["probabilities"].shape == (1, 3) for r in results)
        stats = h.metrics.stats("classifier", "1")
        assert (stats.exec_count, stats.inference_count) == (2, 11)
        await h.batcher.close()
    _run(scenario)


def test_max_queue_delay_holds_a_batch_open(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.2)
        h.gate.set()
        h.batcher.start()
        started = time.monotonic()
        tasks = [h.submit(tag) for tag in range(3)]
        await asyncio.gather(*tasks)
        assert h.batches == [[0, 1, 2]]
        assert time.monotonic() - started >= 0.19
        await h.batcher.close()
    _run(scenario)


def test_queue_timeout_fires_on_time_while_a_batch_runs(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.0, default_queue_timeout=5.0)
        h.batcher.start()
        running = h.submit(0)
        await h.until(h.executing.is_set)
        started = time.monotonic()
        with pytest.raises(QueueTimeout, match="past its timeout"):
            await h.submit(1, timeout=0.1)  # the request's own timeout overrides the default
        assert 0.09 <= time.monotonic() - started < 0.5
        assert not h.gate.is_set() and not running.done()  # the batch was still running
        h.gate.set()
        await running
        assert h.batches == [[0]]
        await h.batcher.close()
    _run(scenario)


def test_a_full_queue_refuses_at_once(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.0, max_queue_size=2)
        h.batcher.start()
        running = h.submit(0)
        await h.until(h.executing.is_set)
        queued = [h.submit(1), h.submit(2)]
        await h.until(lambda: h.batcher.depth == 2)
        with pytest.raises(QueueFull, match="queue full"):
            await h.submit(3)
        h.gate.set()
        await asyncio.gather(running, *queued)
        await h.batcher.close()
    _run(scenario)


def test_high_priority_overtakes_queued_requests(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.0, max_batch_size=1)
        h.batcher.start()
        running = h.submit(0)
        await h.until(h.executing.is_set)
        normal = [h.submit(1), h.submit(2)]
        urgent = h.submit(3, priority=1)
        await h.until(lambda: h.batcher.depth == 3)
        h.gate.set()
        await asyncio.gather(running, urgent, *normal)
        assert h.batches == [[0], [3], [1], [2]]
        await h.batcher.close()
    _run(scenario)


def test_timeout_override_can_be_forbidden(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.0, default_queue_timeout=0.05, allow_timeout_override=False)
        h.batcher.start()
        running = h.submit(0)
        await h.until(h.executing.is_set)
        with pytest.raises(QueueTimeout):
            await h.submit(1, timeout=60.0)
        h.gate.set()
        await running
        await h.batcher.close()
    _run(scenario)


def test_a_cancelled_request_leaves_the_queue(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.0)
        h.batcher.start()
        running = h.submit(0)
        await h.until(h.executing.is_set)
        abandoned, kept = h.submit(1), h.submit(2)
        await h.until(lambda: h.batcher.depth == 2)
        abandoned.cancel()
        await h.until(lambda: h.batcher.depth == 1)
        h.gate.set()
        await asyncio.gather(running, kept)
        assert h.batches == [[0], [2]]
        await h.batcher.close()
    _run(scenario)


def test_drain_finishes_the_queue_and_refuses_new_work(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.0, max_batch_size=2)
        h.batcher.start()
        tasks = [h.submit(tag) for tag in range(5)]
        await h.until(h.executing.is_set)
        draining = asyncio.ensure_future(h.batcher.drain(timeout=10))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="shutting down"):
            await h.submit(9)
        h.gate.set()
        assert await draining
        assert sorted(r.outputs["label"].shape[0] for r in await asyncio.gather(*tasks)) == [1] * 5
        await h.batcher.close()
    _run(scenario)


def test_an_onnx_runtime_failure_fails_the_whole_batch(classifier):
    async def scenario():
        h = Harness(classifier, max_queue_delay=0.05)
        h.gate.set()
        h.batcher.start()
        wrong = Work(1, {"features": np.zeros((1, 8), dtype=np.float64)})  # bypasses prepare()
        good = h.submit(1)
        with pytest.raises(ExecutionFailed, match="execution failed"):
            await h.batcher.submit(wrong)
        with pytest.raises(ExecutionFailed):
            await good
        assert (await h.submit(2)).outputs["label"].shape == (1,)  # the batcher goes on
        await h.batcher.close()
    _run(scenario)
