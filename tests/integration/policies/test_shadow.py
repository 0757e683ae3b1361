"""Shadow traffic through the real proxy with real workers (and stubs): copies fill their
counters while the primary answers as if they were not there, even when the shadow pool
hangs or fails."""

from __future__ import annotations

import json
import os
import re
import signal

import numpy as np
import pytest

from lbd.policies.answers import read_answer
from lbd_worker.build.classifier import reference_forward
from tests.support.lbd_client import LbdClient
from tests.support.procs import free_port, start_lbd, start_upstream, wait_for

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{access: false}}
pools:
  classifier:
    match: {{models: [classifier]}}
    shadow: {{pool: canary, model: classifier-v2, share: 1.0}}
    backends: [{{worker: w0}}]
  canary:
    backends: [{{worker: w1}}]
  to-frozen:
    match: {{models: [classifier-a]}}
    shadow: {{pool: frozen, model: classifier, share: 1.0, max_inflight: 2, timeout: 5s}}
    backends: [{{worker: w0}}]
  frozen:
    health: {{enabled: false}}
    retry: {{attempts: 1}}
    backends: [{{worker: w2}}]
  to-failing:
    match: {{models: [classifier-b]}}
    shadow: {{pool: failing, share: 1.0}}
    backends: [{{worker: w0}}]
  failing:
    health: {{enabled: false}}
    retry: {{attempts: 1}}
    backends: [{{url: "http://127.0.0.1:{failing}"}}]
  to-echo:
    match: {{models: [classifier-c]}}
    shadow: {{pool: echo, share: 1.0}}
    backends: [{{worker: w0}}]
  echo:
    health: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{echo}"}}]
  sampled:
    match: {{models: [classifier-d]}}
    shadow: {{pool: canary, model: classifier-v2, share: 0.5}}
    backends: [{{worker: w0}}]
workers:
  w0:
    listen: "127.0.0.1:{w0}"
    intra_op_threads: 1
    models:
      classifier: {{}}
      classifier-a: {{source: classifier}}
      classifier-b: {{source: classifier}}
      classifier-c: {{source: classifier}}
      classifier-d: {{source: classifier}}
  w1: {{listen: "127.0.0.1:{w1}", intra_op_threads: 1, models: {{classifier-v2: {{source: classifier, version: 2}}}}}}
  w2: {{listen: "127.0.0.1:{w2}", intra_op_threads: 1, models: {{classifier: {{}}}}}}
"""


def body_for(features: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                   "data": features.tolist()}]}).encode()


class Shadowed(LbdClient):
    def infer(self, model: str, features: np.ndarray) -> None:
        """One primary request: answered 200 by its own pool with the right probabilities."""
        response, data = self.call(f"/v2/models/{model}/infer", body_for(features))
        assert response.status == 200, data[:300]
        answer = read_answer(data)
        assert answer["model_name"] == model
        expected = reference_forward(features.reshape(1, 8).astype(np.float32))[0].reshape(-1)
        assert np.allclose(answer["outputs"][0]["data"], expected, atol=1e-6)

    def shadow(self, name: str, pool: str, shadow: str, **labels: str) -> float:
        return self.metric(f"lbd_shadow_{name}_total", pool=pool, shadow=shadow, **labels)


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow")
    failing, failing_port = start_upstream(tmp, "failing", None, "--fail-status", "500")
    echo, echo_port = start_upstream(tmp, "echo")
    port, admin = free_port(), free_port()
    proc = start_lbd(tmp, CONFIG.format(port=port, admin=admin, failing=failing_port, echo=echo_port,
                                        w0=free_port(), w1=free_port(), w2=free_port()), port)
    client = Shadowed(port, admin)
    client.proc = proc  # type: ignore[attr-defined]
    try:
        wait_for(lambda: '"msg":"ready"' in proc.output(), 60, what="lbd ready")
        yield client
    finally:
        for pid in re.findall(r"\[worker w2\] started, pid (\d+)", proc.output()):
            try:
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                pass
        proc.stop(20)
        failing.stop()
        echo.stop()


def test_copies_of_a_new_version_fill_the_counters_and_match(shadowed: Shadowed):
    rng = np.random.default_rng(7)
    for _ in range(20):
        shadowed.infer("classifier", rng.normal(0, 2, 8))
    wait_for(lambda: shadowed.shadow("responses", "classifier", "canary") == shadowed.shadow(
        "requests", "classifier", "canary", result="sent"), 10, what="every copy answered")
    sent = shadowed.shadow("requests", "classifier", "canary", result="sent")
    assert sent >= 1 and sent + shadowed.shadow("requests", "classifier", "canary", result="dropped") == 20
    assert shadowed.shadow("responses", "classifier", "canary", code="200") == sent
    # model_version differs ("2"); the outputs, which are compared, do not
    assert shadowed.shadow("comparisons", "classifier", "canary", result="match") == sent
    assert shadowed.metric("lbd_shadow_duration_seconds_count", pool="classifier", shadow="canary") == sent
    assert shadowed.metric("lbd_requests_total", pool="canary", code="200") == sent


def test_a_hanging_shadow_neither_delays_the_primary_nor_holds_more_than_its_bound(shadowed: Shadowed):
    frozen = int(re.findall(r"\[worker w2\] started, pid (\d+)", shadowed.proc.output())[-1])  # type: ignore[attr-defined]
    os.kill(frozen, signal.SIGSTOP)
    try:
        for index in range(6):
            shadowed.infer("classifier-a", np.full(8, index / 3))
        # Every primary answer came while the first copies were still waiting on the frozen
        # worker (5s): none of them waited for a copy.
        assert shadowed.shadow("responses", "to-frozen", "frozen") == 0
        assert shadowed.shadow("requests", "to-frozen", "frozen", result="sent") == 2
        assert shadowed.shadow("requests", "to-frozen", "frozen", result="dropped") == 4
        wait_for(lambda: shadowed.shadow("responses", "to-frozen", "frozen") == 2, 15, what="copies timed out")
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert shadowed.shadow("responses", "to-frozen", "frozen", code="504") == 2  # lbd's deadline, 5s
    assert shadowed.shadow("comparisons", "to-frozen", "frozen", result="skipped") == 2
    shadowed.infer("classifier-a", np.ones(8))  # room again
    assert shadowed.shadow("requests", "to-frozen", "frozen", result="sent") == 3


def test_a_failing_shadow_is_counted_and_the_primary_does_not_notice(shadowed: Shadowed):
    for index in range(5):
        shadowed.infer("classifier-b", np.full(8, index - 2.0))
    wait_for(lambda: shadowed.shadow("responses", "to-failing", "failing") == 5, 10, what="copies answered")
    assert shadowed.shadow("responses", "to-failing", "failing", code="500") == 5
    assert shadowed.shadow("comparisons", "to-failing", "failing", result="skipped") == 5


def test_different_answers_are_counted_as_mismatches(shadowed: Shadowed):
    for index in range(3):
        shadowed.infer("classifier-c", np.full(8, float(index)))
    wait_for(lambda: shadowed.shadow("comparisons", "to-echo", "echo") == 3, 10, what="copies compared")
    assert shadowed.shadow("comparisons", "to-echo", "echo", result="mismatch") == 3


def test_only_a_share_is_copied(shadowed: Shadowed):
    for index in range(40):
        shadowed.infer("classifier-d", np.full(8, index / 20))
    sent = shadowed.shadow("requests", "sampled", "canary")  # sent, or dropped when busy
    assert 5 <= sent <= 35  # half of 40 on average; outside this range with p < 1e-6
