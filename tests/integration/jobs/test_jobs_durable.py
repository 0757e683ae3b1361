"""Jobs across real ``lbd serve`` processes sharing a real Redis, with real workers: lbd killed
with SIGKILL mid-way and started again loses no job and answers each once; webhooks are
delivered and verified, through a receiver that fails the first two tries; two instances
drain one queue.

"Once from the client's point of view": every job ends ``succeeded`` with the answer to its
own request. A run is repeated only where an instance died during it, and the repeat shows
as one more attempt.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from lbd_worker.build import ensure_builtin
from tests.support.jobs import request, submit
from tests.support.procs import Proc, free_port, start_lbd, wait_for
from tests.support.receivers import Recorder, WebhookReceiver

SECRET = "a-test-secret-of-some-length"
CLASSIFY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                   "data": [0.5] * 8}]}).encode()

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{enabled: false}}
watch: {{enabled: false}}
log: {{access: false}}
jobs:
  store: "{redis}"
  key_prefix: "{prefix}"
  visibility_timeout: 2s
  backoff: {{base: 100ms, max: 500ms}}
  webhook: {{secret: "{secret}", timeout: 2s, retries: 5, backoff: {{base: 100ms, max: 300ms}}}}
pools:
  work:
    match: {{path_prefix: /work}}
    jobs: {{concurrency: {concurrency}}}
    backends: [{{url: "{recorder}", name: "{name}"}}]
{classifier}"""

CLASSIFIER = """  classifier:
    match: {{models: [classifier]}}
    jobs: {{concurrency: 2}}
    backends: [{{worker: w0}}]
workers:
  w0:
    listen: "127.0.0.1:{worker_port}"
    device: cpu
    intra_op_threads: 1
    model_dir: "{model_dir}"
    models: {{classifier: {{}}}}
"""


def views(port: int, ids: list[str]) -> dict[str, dict]:
    found = {}
    for job_id in ids:
        status, _, view = request("GET", f"http://127.0.0.1:{port}/v1/jobs/{job_id}")
        assert status == 200, view  # never lost: every job stays known until it expires
        found[job_id] = view
    return found


def all_finished(port: int, ids: list[str], timeout: float) -> dict[str, dict]:
    def done():
        found = views(port, ids)
        return found if all(view["state"] not in ("queued", "running") for view in found.values()) else None
    return wait_for(done, timeout=timeout, interval=0.2, what="every job finished")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("LBD_MODEL_DIR")
    directory = Path(configured) if configured else tmp_path_factory.getbasetemp().parent / "lbd-models"
    ensure_builtin("classifier", model_dir=directory)
    return directory


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.stop()


def config_text(port: int, redis_url: str, prefix: str, recorder: Recorder, *, name: str = "recorder",
                concurrency: int = 4, worker_port: int | None = None, model_dir: Path | None = None) -> str:
    classifier = CLASSIFIER.format(worker_port=worker_port, model_dir=model_dir) if worker_port else ""
    return CONFIG.format(port=port, redis=redis_url, prefix=prefix, secret=SECRET, recorder=recorder.url, name=name,
                         concurrency=concurrency, classifier=classifier)


@pytest.mark.timeout(240)
def test_sigkill_mid_way_loses_nothing_and_each_job_completes_once(tmp_path, redis_url, key_prefix, recorder,
                                                                   model_dir):
    receiver = WebhookReceiver(SECRET.encode(), fail_first=2)
    port, worker_port = free_port(), free_port()
    text = config_text(port, redis_url, prefix=key_prefix, recorder=recorder, worker_port=worker_port,
                       model_dir=model_dir)
    first: Proc | None = start_lbd(tmp_path, text, port, name="first")
    second: Proc | None = None
    try:
        hook = f"{receiver.url}/hook"
        work = {submit(port, "/work", json.dumps({"token": f"t{i}", "delay": 0.4}).encode(), hook): f"t{i}"
                for i in range(24)}
        classified = [submit(port, "/v2/models/classifier/infer", CLASSIFY, hook) for _ in range(12)]
        receiver.flaky = set(classified)  # these callbacks fail twice, then succeed
        wait_for(lambda: sum(recorder.completed.values()) >= 6 and recorder.in_flight(), timeout=60,
                 what="some jobs done and some running")
        done_before = {job_id for job_id, view in views(port, list(work)).items() if view["state"] == "succeeded"}
        first.signal(signal.SIGKILL)
        first.wait(10)
        first = None
        started_before = set(recorder.started)  # runs cut short, or answered but not yet recorded
        second = start_lbd(tmp_path, text, port, name="second")
        ids = [*work, *classified]
        found = all_finished(port, ids, timeout=120)
        for job_id, view in found.items():
            assert view["state"] == "succeeded", view
            body = json.loads(view["response"]["body"])
            if job_id in work:  # the answer is its own request's
                assert body == {"token": work[job_id]}
                executions = recorder.started[work[job_id]]
                assert 1 <= executions <= view["attempts"], view  # a repeat shows as an attempt
                if executions > 1:  # only a run the kill interrupted is repeated
                    assert work[job_id] in started_before and job_id not in done_before, view
                if job_id in done_before:
                    assert executions == 1 and view["attempts"] == 1, view
            else:
                assert "label" in {output["name"] for output in body["outputs"]}  # a real classification
        assert any(view["attempts"] > 1 for view in found.values()), "the kill interrupted no run"

        def delivered():
            return all(job_id in receiver.accepted for job_id in ids)
        wait_for(delivered, timeout=60, what="every callback delivered")
        assert receiver.rejected == []  # every delivery was signed and fresh
        for job_id in ids:
            accepted = receiver.accepted[job_id]
            assert accepted["state"] == "succeeded" and accepted["id"] == job_id
        assert all(receiver.tries[job_id] >= 3 for job_id in classified)
        hooks = {job_id: view.get("webhook") for job_id, view in views(port, classified).items()}
        wait_for(lambda: all(v["webhook"]["state"] == "delivered" for v in views(port, classified).values()),
                 timeout=30, what="deliveries recorded on the jobs")
        final = views(port, classified)
        for view in final.values():
            assert view["webhook"]["attempts"] >= 3 and view["webhook"]["last_status"] == 200, hooks
    finally:
        receiver.stop()
        for proc in (first, second):
            if proc is not None:
                proc.stop()


@pytest.mark.timeout(120)
def test_a_replayed_or_forged_callback_is_refused_by_the_receiver(tmp_path, redis_url, key_prefix, recorder):
    receiver = WebhookReceiver(SECRET.encode(), tolerance=1.0)
    port = free_port()
    proc = start_lbd(tmp_path, config_text(port, redis_url, key_prefix, recorder), port)
    try:
        job_id = submit(port, "/work", b'{"token": "r1"}', f"{receiver.url}/hook")
        wait_for(lambda: job_id in receiver.accepted, timeout=30, what="the callback")
        body = json.dumps(receiver.accepted[job_id]).encode()
        forged = request("POST", f"{receiver.url}/hook", body, {"x-lbd-signature": f"t={int(time.time())},v1=00"})
        assert forged[0] == 400
        time.sleep(1.5)
        status, _, view = request("GET", f"http://127.0.0.1:{port}/v1/jobs/{job_id}")
        assert view["webhook"]["state"] == "delivered"
        assert receiver.rejected == ["bad signature"]
    finally:
        receiver.stop()
        proc.stop()


@pytest.mark.timeout(120)
def test_two_instances_drain_one_queue(tmp_path, redis_url, key_prefix, recorder):
    ports = [free_port(), free_port()]
    procs = [start_lbd(tmp_path, config_text(port, redis_url, key_prefix, recorder, name=f"via-{name}",
                                             concurrency=2), port, name=name)
             for name, port in zip("ab", ports)]
    try:
        tokens = {submit(ports[0], "/work", json.dumps({"token": f"d{i}", "delay": 0.05}).encode()): f"d{i}"
                  for i in range(40)}
        found = all_finished(ports[1], list(tokens), timeout=60)  # either instance answers for all
        runners = {dict(view["response"]["headers"])["x-lbd-backend"] for view in found.values()}
        assert runners == {"via-a", "via-b"}  # both instances ran jobs
        for job_id, view in found.items():
            assert view["state"] == "succeeded" and view["attempts"] == 1
            assert json.loads(view["response"]["body"]) == {"token": tokens[job_id]}
        assert all(recorder.started[token] == 1 for token in tokens.values())  # nothing ran twice
    finally:
        for proc in procs:
            proc.stop()
