"""Dynamic batching, the bounded queue and queue timeouts, and SIGTERM, through real HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def _features(rows: int = 1, value: float = 0.5) -> triton.InferInput:
    tensor = triton.InferInput("features", [rows, 8], "FP32")
    tensor.set_data_from_numpy(np.full((rows, 8), value, np.float32))
    return tensor


def _metric(worker, series: str) -> float:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    raise AssertionError(f"{series} not exposed")


def _status(url: str, body: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_concurrent_requests_are_batched(worker_factory):
    worker = worker_factory({"classifier": {"max_queue_delay": "50ms", "max_batch_size": 64}})
    with triton.InferenceServerClient(worker.address, concurrency=32) as client:
        pending = [client.async_infer("classifier", [_features(1, i)]) for i in range(32)]
        results = [p.get_result() for p in pending]
    assert all(r.as_numpy("probabilities").shape == (1, 3) for r in results)
    labels = 'model="classifier",version="1"'
    assert _metric(worker, f"nv_inference_count{{{labels}}}") == 32
    assert _metric(worker, f"nv_inference_exec_count{{{labels}}}") <= 8  # 32 requests in few batches
    assert _metric(worker, 'lbd_worker_batch_size_bucket{le="1.0",model="classifier",version="1"}') <= 4


@pytest.fixture(scope="module")
def slow_worker(worker_factory):
    """A classifier whose batches wait 3 s to fill: requests sit in its queue of 2 meanwhile."""
    return worker_factory({"classifier": {"max_queue_delay": "3s", "max_queue_size": 2, "max_batch_size": 8}})


def test_full_queue_is_503_at_once_and_timeouts_fire_on_time(slow_worker):
    with triton.InferenceServerClient(slow_worker.address, concurrency=4) as client:
        first = client.async_infer("classifier", [_features()])
        started = time.monotonic()
        with pytest.raises(InferenceServerException, match="past its timeout") as timed_out:
            client.infer("classifier", [_features()], timeout=200_000)  # microseconds, as Triton
        assert 0.19 <= time.monotonic() - started < 1.5 and timed_out.value.status() == "503"
        second = client.async_infer("classifier", [_features()])
        deadline = time.monotonic() + 5
        while _metric(slow_worker, 'nv_inference_pending_request_count{model="classifier",version="1"}') < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(InferenceServerException, match="queue full") as full:
            client.infer("classifier", [_features()])
        assert full.value.status() == "503" and time.monotonic() - started < 1.0
        assert first.get_result().as_numpy("label").shape == (1,)
        assert second.get_result().as_numpy("label").shape == (1,)
    rejected = _metric(slow_worker, 'nv_inference_request_failure{model="classifier",version="1",reason="REJECTED"}')
    assert rejected == 2


def test_sigterm_stops_readiness_finishes_the_queue_and_exits_0(worker_factory):
    worker = worker_factory({"classifier": {"max_queue_delay": "5s"}}, drain_timeout="20s")
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                                   "data": [0.5] * 8}]}).encode()
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(
        _status(worker.url + "/v2/models/classifier/infer", body))) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while _metric(worker, 'nv_inference_pending_request_count{model="classifier",version="1"}') < 6:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    worker.terminate()
    for thread in threads:
        thread.join(10)
    assert statuses == [200] * 6  # the queue was finished, without waiting out the 5 s delay
    assert worker.process.wait(10) == 0
    assert time.monotonic() - started < 4
    assert "not ready; finishing the queue" in worker.log()


def test_not_ready_and_refusing_while_draining(worker_factory):
    worker = worker_factory({"minilm": {"max_batch_size": 16}}, intra_op_threads=1)
    long_texts = ["a long sentence that goes on " * 40] * 16  # 16 x 256 tokens: about a second of CPU
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [16], "data": long_texts}]})
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(
        _status(worker.url + "/v2/models/minilm/infer", body.encode())))
    thread.start()
    deadline = time.monotonic() + 5
    while _metric(worker, "lbd_worker_inflight_requests") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    worker.terminate()
    deadline = time.monotonic() + 5
    while _status(worker.url + "/v2/health/ready") != 503:  # the signal is handled between polls
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert thread.is_alive(), "the long request should still be running"
    small = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]})
    assert _status(worker.url + "/v2/models/minilm/infer", small.encode()) == 503
    thread.join(30)
    assert statuses == [200]
    assert worker.process.wait(10) == 0


def test_a_client_that_goes_away_leaves_the_queue(worker_factory):
    import socket

    worker = worker_factory({"classifier": {"max_queue_delay": "3s", "max_batch_size": 8}})
    body = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8],
                                   "data": [0.5] * 8}]}).encode()
    pending = 'nv_inference_pending_request_count{model="classifier",version="1"}'
    with socket.create_connection(("127.0.0.1", worker.port)) as client:
        client.sendall(b"POST /v2/models/classifier/infer HTTP/1.1\r\nHost: w\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body))
        deadline = time.monotonic() + 5
        while _metric(worker, pending) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 5
    while _metric(worker, pending) > 0:  # out of the queue long before its 3 s delay
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _metric(worker, 'nv_inference_request_failure{model="classifier",version="1",reason="CANCELED"}') == 1
    assert _metric(worker, "lbd_worker_inflight_requests") == 0
