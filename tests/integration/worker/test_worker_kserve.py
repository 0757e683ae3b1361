"""The KServe v2 REST protocol, driven by tritonclient.http in its default (binary) settings and
with ``binary_data=False`` (JSON), and by plain HTTP for the error cases."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from lbd_worker.build.classifier import reference_forward
from lbd_worker.server import INFLIGHT_HEADER, QUEUE_DEPTH_HEADER

REFERENCE = json.loads((Path(__file__).parents[2] / "unit/worker/data/minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def client(worker):
    with triton.InferenceServerClient(worker.address, concurrency=4) as client:
        yield client


def http(worker, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """``(status, headers, parsed JSON or raw bytes)`` of one plain HTTP request."""
    request = urllib.request.Request(worker.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, head, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, error.headers, error.read()
    if head.get("Content-Type", "").startswith("application/json"):
        return status, head, json.loads(raw)
    return status, head, raw


def _text_input(sentences: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(sentences)], "BYTES")
    tensor.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_minilm_embeddings_match_the_reference(client, binary):
    outputs = [triton.InferRequestedOutput("embedding", binary_data=binary)]
    result = client.infer("minilm", [_text_input(REFERENCE["sentences"], binary)], outputs=outputs)
    vectors, reference = result.as_numpy("embedding"), np.array(REFERENCE["embeddings"])
    assert vectors.shape == (8, 384)
    cosines = (vectors * reference).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(vectors, axis=1)
    assert cosines.min() >= 1 - 1e-3
    assert ("data" in result.get_output("embedding")) == (not binary)


def test_default_tritonclient_call_gets_binary_outputs(client):
    result = client.infer("minilm", [_text_input(["hello"], True)])
    assert "parameters" in result.get_output("embedding") and result.as_numpy("embedding").shape == (1, 384)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classifier(client, binary):
    features = np.random.default_rng(5).normal(0, 2, (4, 8)).astype(np.float32)
    tensor = triton.InferInput("features", [4, 8], "FP32")
    tensor.set_data_from_numpy(features, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    result = client.infer("classifier", [tensor], outputs=outputs, request_id="req-1", model_version="1")
    probabilities, labels = reference_forward(features)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    response = result.get_response()
    assert response["id"] == "req-1" and [o["name"] for o in response["outputs"]] == ["label", "probabilities"]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("minilm") and client.is_model_ready("classifier", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata("classifier", "1")["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    config = client.get_model_config("minilm")
    assert config["max_batch_size"] == 64 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert {m["name"] for m in client.get_model_repository_index()} == {"minilm", "classifier"}


def _infer_body(inputs: list[dict]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


FEATURES = {"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v2/models/classifier/infer", b"{oops", 400, "not valid JSON"),
    ("/v2/models/classifier/infer", _infer_body([FEATURES | {"shape": [1, 7], "data": [0.5] * 7}]), 400,
     "input 'features': shape [1, 7] does not match [-1, 8]"),
    ("/v2/models/classifier/infer", _infer_body([FEATURES | {"datatype": "INT32", "data": [1] * 8}]), 400,
     "input 'features': datatype INT32, expected FP32"),
    ("/v2/models/classifier/infer", _infer_body([FEATURES | {"name": "feature"}]), 400, "no input 'feature'"),
    ("/v2/models/classifier/infer", _infer_body([FEATURES | {"shape": [2, 8]}]), 400, "needs 16 values, got 8"),
    ("/v2/models/minilm/infer", _infer_body([{"name": "text", "datatype": "BYTES", "shape": [1], "data": [3]}]),
     400, "BYTES data must be strings"),
    ("/v2/models/resnet/infer", _infer_body([FEATURES]), 404, "unknown model 'resnet'"),
    ("/v2/models/classifier/versions/2/infer", _infer_body([FEATURES]), 404, "has no version '2'"),
])
def test_errors_are_kserve_bodies_naming_the_problem(worker, path, body, status, message):
    code, headers, document = http(worker, "POST", path, body, {"Content-Type": "application/json"})
    assert code == status and message in document["error"], document
    assert QUEUE_DEPTH_HEADER in headers and INFLIGHT_HEADER in headers


def test_tritonclient_sees_the_error_message(client):
    tensor = triton.InferInput("features", [1, 9], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 9), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 9\] does not match \[-1, 8\]") as error:
        client.infer("classifier", [tensor])
    assert error.value.status() == "400"


def test_bad_binary_header_length(worker):
    code, _, document = http(worker, "POST", "/v2/models/classifier/infer", _infer_body([FEATURES]),
                             {"Inference-Header-Content-Length": "abc"})
    assert code == 400 and "Inference-Header-Content-Length" in document["error"]


def test_unknown_route_and_method_are_json_errors(worker):
    assert http(worker, "GET", "/v3")[0] == 404
    code, _, document = http(worker, "GET", "/v2/models/classifier/infer")
    assert code == 405 and "error" in document


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/minilm",
                                  "/v2/models/minilm/versions/1", "/v2/models/minilm/ready", "/metrics"])
def test_every_response_carries_the_load_headers(worker, path):
    code, headers, _ = http(worker, "GET", path)
    assert code == 200
    assert int(headers[QUEUE_DEPTH_HEADER]) >= 0 and int(headers[INFLIGHT_HEADER]) >= 0


def test_metrics_use_tritons_names(worker, client):
    client.infer("classifier", [_features(3)])
    _, headers, body = http(worker, "GET", "/metrics")
    text = body.decode() if isinstance(body, bytes) else body
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_queue_duration_us", "nv_inference_request_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_pending_request_count",
                 "lbd_worker_batch_size_bucket"):
        assert f"\n{name}{{" in text, name
    assert '# TYPE nv_inference_request_success counter' in text
    assert _sample(text, 'nv_inference_count{model="classifier",version="1"}') >= 3
    assert _sample(text, 'nv_inference_request_failure{model="classifier",version="1",reason="OTHER"}') >= 0


def _features(rows: int) -> triton.InferInput:
    tensor = triton.InferInput("features", [rows, 8], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 8), np.float32))
    return tensor


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


@pytest.mark.parametrize(("request_compression", "response_compression"),
                         [("gzip", None), ("deflate", None), (None, "gzip")])
def test_compressed_bodies(client, request_compression, response_compression):
    result = client.infer("classifier", [_features(2)], request_compression_algorithm=request_compression,
                          response_compression_algorithm=response_compression)
    assert result.as_numpy("label").shape == (2,)
