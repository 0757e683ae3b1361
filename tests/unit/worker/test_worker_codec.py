"""The KServe v2 codecs against bodies that tritonclient itself builds and parses."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.http import InferResult

from lbd_worker.protocol import BadRequest, InferRequest, RequestedOutput, decode_request, encode_response
from lbd_worker.protocol.codec import decode_bytes_tensor, encode_bytes_tensor


def _triton_body(inputs, outputs=None, **kwargs) -> tuple[bytes, int | None]:
    """The exact body and header length tritonclient sends for ``infer(...)``."""
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    return bytes(body) if not isinstance(body, str) else body.encode(), json_size


def _input(name, array, datatype, binary):
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(("datatype", "array"), [
    ("FP32", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
    ("FP16", np.arange(6, dtype=np.float16).reshape(2, 3)),
    ("INT64", np.array([[-(2**40), 5]], dtype=np.int64)),
    ("BOOL", np.array([True, False, True])),
    ("UINT8", np.array([0, 255], dtype=np.uint8)),
    ("BYTES", np.array([b"hello", "h\u00e9llo w\u00f6rld".encode(), b""], dtype=object)),
])
def test_decodes_what_tritonclient_sends(binary, datatype, array):
    body, header_length = _triton_body([_input("x", array, datatype, binary)], request_id="r-1")
    request = decode_request(body, header_length)
    (tensor,) = request.inputs
    assert (request.id, tensor.name, tensor.datatype, tensor.shape) == ("r-1", "x", datatype, array.shape)
    assert tensor.array.tolist() == array.tolist()
    assert (header_length is not None) == binary


def test_two_binary_inputs_are_split_in_order():
    a, b = np.ones((2, 2), np.float32), np.array([b"x", b"yz"], dtype=object)
    body, header_length = _triton_body([_input("a", a, "FP32", True), _input("b", b, "BYTES", True)])
    request = decode_request(body, header_length)
    assert request.inputs[0].array.tolist() == a.tolist() and request.inputs[1].array.tolist() == [b"x", b"yz"]


def test_request_parameters_and_outputs():
    outputs = [triton.InferRequestedOutput("p", binary_data=False), triton.InferRequestedOutput("q")]
    body, header_length = _triton_body([_input("x", np.ones(1, np.float32), "FP32", False)], outputs,
                                       priority=1, timeout=2500)
    request = decode_request(body, header_length)
    assert request.outputs == (RequestedOutput("p", False), RequestedOutput("q", True))
    assert request.parameters["priority"] == 1 and request.parameters["timeout"] == 2500


def test_without_outputs_tritonclient_asks_for_binary():
    body, header_length = _triton_body([_input("x", np.ones(1, np.float32), "FP32", True)])
    assert decode_request(body, header_length).binary_output


def _json_body(**input_fields) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]} | input_fields
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize(("body", "header_length", "message"), [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b'{"inputs": []}', None, "non-empty 'inputs'"),
    (_json_body(datatype="FLOAT"), None, "unknown datatype 'FLOAT'"),
    (_json_body(shape=[3]), None, "shape [3] needs 3 values, got 2"),
    (_json_body(shape=[-1]), None, "'shape' must be a list of non-negative integers"),
    (_json_body(data=["a", "b"]), None, "'data' is not a list of FP32 values"),
    (_json_body(datatype="BYTES", data=[1, 2]), None, "BYTES data must be strings"),
    (_json_body(datatype="BOOL", data=[1, 0]), None, "BOOL data must be true/false"),
    (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}), None, "neither 'data'"),
    (_json_body(), 999, "does not fit a body"),
    (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                               "parameters": {"binary_data_size": 8}}]}) + b"\0" * 4, 85, "runs past"),
])
def test_bad_bodies_are_400_and_say_why(body, header_length, message):
    if header_length == 85:
        header_length = len(body) - 4
    with pytest.raises(BadRequest) as error:
        decode_request(body, header_length)
    assert message in error.value.message and error.value.status == 400


def test_binary_size_must_match_the_shape():
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                                       "parameters": {"binary_data_size": 8}}]})
    with pytest.raises(BadRequest, match=r"needs 12 bytes, got 8"):
        decode_request(header + b"\0" * 8, len(header))


def test_unclaimed_binary_bytes_are_an_error():
    body, header_length = _triton_body([_input("x", np.ones(2, np.float32), "FP32", True)])
    with pytest.raises(BadRequest, match="unclaimed"):
        decode_request(body + b"junk", header_length)


def test_bytes_tensor_round_trip_and_truncation():
    array = np.array([b"", b"abc", "\u00fc".encode()], dtype=object)
    blob = encode_bytes_tensor(array)
    assert blob[:4] == struct.pack("<I", 0)
    assert decode_bytes_tensor(blob, 3).tolist() == array.tolist()
    with pytest.raises(BadRequest, match="runs past"):
        decode_bytes_tensor(blob[:-1], 3)
    with pytest.raises(BadRequest, match="needs 2 BYTES elements, got 3"):
        decode_bytes_tensor(blob, 2)


@pytest.mark.parametrize("binary", [True, False, None])
def test_responses_parse_with_tritonclient(binary):
    request = InferRequest("id-7", (), (RequestedOutput("p", binary), RequestedOutput("label", binary)),
                           {"binary_data_output": True})
    probabilities = np.array([[0.25, 0.75]], np.float32)
    labels = np.array([1], np.int64)
    encoded = encode_response("m", "3", request, [("p", probabilities), ("label", labels)])
    result = InferResult.from_response_body(encoded.body, header_length=encoded.header_length)
    assert result.get_response()["id"] == "id-7" and result.get_response()["model_version"] == "3"
    np.testing.assert_array_equal(result.as_numpy("p"), probabilities)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    assert (encoded.header_length is not None) == (binary is not False)


def test_json_response_carries_bytes_as_text():
    request = InferRequest(None, ())
    encoded = encode_response("m", "1", request, [("s", np.array([b"a", b"b"], dtype=object))])
    assert orjson.loads(encoded.body)["outputs"][0] == {"name": "s", "datatype": "BYTES", "shape": [2],
                                                          "data": ["a", "b"]}
    assert encoded.content_type == "application/json"
