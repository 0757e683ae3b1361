"""A model cascade through the real proxy with real workers serving the built-in classifier,
and its stage pools falling over (drained, frozen) to a spare pool of workers.

Stage 1 is the cascade pool's own worker (``classifier``); stage 2 a larger model
(``classifier-large``; the same network under another name and version, so which stage
answered shows in ``model_name``). An input the classifier is sure of (all ones: top
probability 0.989) is answered by stage 1; one it is not (all zeros: 0.385) escalates.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct

import numpy as np
import pytest

from lbd.policies.answers import read_answer
from lbd_worker.build.classifier import reference_forward
from tests.support.lbd_client import LbdClient
from tests.support.procs import free_port, start_lbd, wait_for

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{access: false}}
pools:
  classifier:
    match: {{models: [classifier]}}
    cascade:
      stages: [{{pool: classifier}}, {{pool: large, model: classifier-large}}]
      accept: {{top_probability: 0.8}}
    backends: [{{worker: w0}}]
  checked:
    match: {{models: [classifier-checked]}}
    health: {{enabled: false}}
    cascade:
      stages: [{{pool: classifier, model: classifier}}, {{pool: large, model: classifier-large}}]
      accept: {{field: "outputs[name=probabilities].data", reduce: max, op: ">=", value: 0.8}}
    backends: [{{worker: w0}}]
  large:
    timeouts: {{per_try: 1s}}
    retry: {{attempts: 2}}
    fallback: {{chain: [{{pool: spare}}]}}
    backends: [{{worker: w1}}]
  spare:
    backends: [{{worker: w2}}]
workers:
  w0: {{listen: "127.0.0.1:{w0}", intra_op_threads: 1, models: {{classifier: {{}}}}}}
  w1: {{listen: "127.0.0.1:{w1}", intra_op_threads: 1, models: {{classifier-large: {{source: classifier, version: 2}}}}}}
  w2: {{listen: "127.0.0.1:{w2}", intra_op_threads: 1, models: {{classifier-large: {{source: classifier, version: 3}}}}}}
"""
CONFIDENT = [1.0] * 8
UNSURE = [0.0] * 8


def infer_body(*rows: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": [len(rows), 8], "datatype": "FP32",
                                   "data": [x for row in rows for x in row]}]}).encode()


def binary_body(row: list[float]) -> tuple[bytes, dict]:
    """The binary tensor extension, as tritonclient sends it (binary answer asked for)."""
    header = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 32}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + struct.pack("<8f", *row), {"inference-header-content-length": str(len(header)),
                                               "content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cascade")
    port, admin = free_port(), free_port()
    proc = start_lbd(tmp, CONFIG.format(port=port, admin=admin, w0=free_port(), w1=free_port(), w2=free_port()), port)
    client = LbdClient(port, admin)
    client.proc = proc  # type: ignore[attr-defined]
    try:
        wait_for(lambda: '"msg":"ready"' in proc.output(), 60, what="lbd ready")
        yield client
    finally:
        for pid in re.findall(r"\[worker w1\] started, pid (\d+)", proc.output()):
            try:
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                pass
        proc.stop(20)


def stage_of(client: LbdClient, model: str, body: bytes, headers: dict | None = None) -> tuple[str, str, dict]:
    response, data = client.call(f"/v2/models/{model}/infer", body, headers)
    assert response.status == 200, data[:300]
    answer = read_answer(data, response.getheader("inference-header-content-length"))
    return response.getheader("x-lbd-cascade-stage"), response.getheader("x-lbd-pool"), answer


def test_a_confident_answer_stays_at_stage_one_and_an_unsure_one_escalates(cascade: LbdClient):
    stage, pool, answer = stage_of(cascade, "classifier", infer_body(CONFIDENT))
    assert (stage, pool, answer["model_name"]) == ("1", "classifier", "classifier")
    expected = reference_forward(np.array([CONFIDENT], np.float32))[0]
    assert np.allclose(answer["outputs"][0]["data"], expected.reshape(-1), atol=1e-6)

    stage, pool, answer = stage_of(cascade, "classifier", infer_body(UNSURE))
    assert (stage, pool, answer["model_name"], answer["model_version"]) == ("2", "large", "classifier-large", "2")
    # a batch is only as sure as its least sure row
    stage, _, answer = stage_of(cascade, "classifier", infer_body(CONFIDENT, UNSURE))
    assert stage == "2" and answer["outputs"][0]["shape"] == [2, 3]
    assert cascade.metric("lbd_cascade_answers_total", pool="classifier", stage="1", stage_pool="classifier") == 1
    assert cascade.metric("lbd_cascade_answers_total", pool="classifier", stage="2", stage_pool="large") == 2
    assert cascade.metric("lbd_cascade_escalations_total", pool="classifier", stage="1", reason="rejected") == 2


def test_binary_answers_are_judged_too(cascade: LbdClient):
    for row, expected in ((CONFIDENT, "1"), (UNSURE, "2")):
        body, headers = binary_body(row)
        stage, _, answer = stage_of(cascade, "classifier", body, headers)
        assert stage == expected
        assert answer["model_name"] == ("classifier" if expected == "1" else "classifier-large")
        assert answer["outputs"][0]["datatype"] == "FP32" and len(answer["outputs"][0]["data"]) == 3


def test_a_json_field_rule_and_stages_as_other_models(cascade: LbdClient):
    stage, pool, answer = stage_of(cascade, "classifier-checked", infer_body(CONFIDENT))
    assert (stage, pool, answer["model_name"]) == ("1", "classifier", "classifier")
    stage, pool, answer = stage_of(cascade, "classifier-checked", infer_body(UNSURE))
    assert (stage, pool, answer["model_name"]) == ("2", "large", "classifier-large")
    assert cascade.metric("lbd_cascade_answers_total", pool="checked") == 2


def test_stages_fall_over_and_a_failing_stage_is_passed_over(cascade: LbdClient):
    # The large model's worker is drained: its pool's fallback chain answers stage 2.
    cascade.admin_post("/admin/backends/large/w1/drain")
    try:
        stage, pool, answer = stage_of(cascade, "classifier", infer_body(UNSURE))
        assert (stage, pool, answer["model_version"]) == ("2", "spare", "3")
        assert cascade.metric("lbd_fallbacks_total", pool="large", to="spare", reason="no_backend") >= 1
    finally:
        cascade.admin_post("/admin/backends/large/w1/undrain")
    # The small model's worker is drained: stage 1 cannot answer, so even a sure input goes on.
    cascade.admin_post("/admin/backends/classifier/w0/drain")
    try:
        stage, pool, _ = stage_of(cascade, "classifier", infer_body(CONFIDENT))
        assert (stage, pool) == ("2", "large")
        assert cascade.metric("lbd_cascade_escalations_total", pool="classifier", stage="1", reason="error") == 1
    finally:
        cascade.admin_post("/admin/backends/classifier/w0/undrain")


def test_a_frozen_large_model_times_out_and_its_pool_falls_over(cascade: LbdClient):
    frozen = int(re.findall(r"\[worker w1\] started, pid (\d+)", cascade.proc.output())[-1])  # type: ignore[attr-defined]
    os.kill(frozen, signal.SIGSTOP)
    try:
        stage, pool, answer = stage_of(cascade, "classifier", infer_body(UNSURE))
        assert (stage, pool, answer["model_version"]) == ("2", "spare", "3")
        assert cascade.metric("lbd_fallbacks_total", pool="large", to="spare", reason="timeout") == 1
    finally:
        os.kill(frozen, signal.SIGCONT)


def test_a_bad_request_is_answered_by_the_last_stage(cascade: LbdClient):
    response, data = cascade.call("/v2/models/classifier/infer", b'{"inputs": []}')
    assert response.status == 400 and response.getheader("x-lbd-cascade-stage") == "2"
    assert response.getheader("x-request-id")
