"""KServe v2 inference bodies: JSON tensors and the binary tensor extension.

A binary request is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the
raw tensors, in input order, of every input whose ``parameters.binary_data_size`` is set.
``BYTES`` elements are each a 4-byte little-endian length and the bytes. Responses are binary
for an output whose request asked ``binary_data: true``, or, when the request names no such
setting, when the request parameter ``binary_data_output`` is true (tritonclient's default).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from lbd_worker.protocol.datatypes import NUMPY_BY_DATATYPE, datatype_of
from lbd_worker.protocol.errors import BadRequest

__all__ = ["InputTensor", "RequestedOutput", "InferRequest", "EncodedResponse",
           "decode_request", "encode_response", "encode_bytes_tensor", "decode_bytes_tensor"]

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray
    """Of ``shape``; ``BYTES`` tensors are ``object`` arrays of ``bytes``."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """``None``: the request did not say, so ``binary_data_output`` decides."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def binary_output(self) -> bool:
        return bool(self.parameters.get("binary_data_output", False))


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    content_type: str
    header_length: int | None
    """The JSON part's length when binary tensors follow it (for ``Inference-Header-Content-Length``)."""


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """The request in ``body``; ``header_length`` from the header, when the extension is used.

    Raises :class:`BadRequest` naming the problem.
    """
    json_part, binary = _split_body(body, header_length)
    document = _parse_json(json_part)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("the request needs a non-empty 'inputs' list")
    inputs, offset = [], 0
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, index, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the inputs unclaimed")
    return InferRequest(_request_id(document), tuple(inputs), _decode_outputs(document.get("outputs")),
                        _parameters(document, "request"))


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not 0 < header_length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:header_length]), view[header_length:]


def _parse_json(text: bytes) -> dict:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest("the request body must be a JSON object")
    return document


def _request_id(document: dict) -> str | None:
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return request_id


def _parameters(document: dict, where: str) -> dict:
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where} 'parameters' must be an object")
    return parameters


def _decode_input(raw: Any, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise BadRequest(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{index}] needs a 'name'")
    datatype, shape = _datatype_and_shape(raw, name)
    size = _parameters(raw, f"input '{name}'").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest(f"input '{name}': binary_data_size {size!r} runs past the body's end")
        array = _from_binary(binary[offset:offset + size], datatype, shape, name)
        offset += size
    elif "data" in raw:
        array = _from_json(raw["data"], datatype, shape, name)
    else:
        raise BadRequest(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return InputTensor(name, datatype, shape, array), offset


def _datatype_and_shape(raw: dict, name: str) -> tuple[str, tuple[int, ...]]:
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if datatype != "BYTES" and datatype not in NUMPY_BY_DATATYPE:
        raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers, not {shape!r}")
    return datatype, tuple(shape)


def _from_binary(blob: memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(blob, count, name).reshape(shape)
    dtype = NUMPY_BY_DATATYPE[datatype]
    if len(blob) != count * dtype.itemsize:
        raise BadRequest(f"input '{name}': shape {list(shape)} of {datatype} needs "
                         f"{count * dtype.itemsize} bytes, got {len(blob)}")
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten_strings(data, name)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        try:
            array = np.asarray(data, dtype=NUMPY_BY_DATATYPE[datatype]).reshape(-1)
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(f"input '{name}': 'data' is not a list of {datatype} values") from None
        if datatype == "BOOL" and not _all_booleans(data):
            raise BadRequest(f"input '{name}': BOOL data must be true/false")
    if array.size != count:
        raise BadRequest(f"input '{name}': shape {list(shape)} needs {count} values, got {array.size}")
    return array.reshape(shape)


def _flatten_strings(data: Any, name: str) -> list[bytes]:
    if isinstance(data, str):
        return [data.encode()]
    if isinstance(data, list):
        return [item for element in data for item in _flatten_strings(element, name)]
    raise BadRequest(f"input '{name}': BYTES data must be strings, not {type(data).__name__}")


def _all_booleans(data: Any) -> bool:
    if isinstance(data, list):
        return all(_all_booleans(element) for element in data)
    return isinstance(data, bool)


def decode_bytes_tensor(blob: memoryview | bytes, count: int, name: str = "") -> np.ndarray:
    """``count`` length-prefixed elements as an ``object`` array of ``bytes``."""
    view, offset, elements = memoryview(blob), 0, []
    while offset < len(view):
        if offset + 4 > len(view):
            raise BadRequest(f"input '{name}': BYTES element length cut off at byte {offset}")
        (length,) = struct.unpack_from("<I", view, offset)
        if offset + 4 + length > len(view):
            raise BadRequest(f"input '{name}': BYTES element of {length} bytes runs past the data's end")
        elements.append(bytes(view[offset + 4:offset + 4 + length]))
        offset += 4 + length
    if len(elements) != count:
        raise BadRequest(f"input '{name}': the shape needs {count} BYTES elements, got {len(elements)}")
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    """The binary form of a ``BYTES`` tensor: each element's length (uint32 LE) then its bytes."""
    parts = []
    for element in array.reshape(-1):
        data = element if isinstance(element, bytes) else str(element).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _decode_outputs(raw: Any) -> tuple[RequestedOutput, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{index}] must be an object with a 'name'")
        binary = _parameters(item, f"output '{item['name']}'").get("binary_data")
        outputs.append(RequestedOutput(item["name"], None if binary is None else bool(binary)))
    return tuple(outputs)


def encode_response(model_name: str, model_version: str, request: InferRequest,
                    outputs: Sequence[tuple[str, np.ndarray]]) -> EncodedResponse:
    """The response for ``outputs`` (name, array) in the order given."""
    wanted = {output.name: output.binary for output in request.outputs}
    described, blobs = [], []
    for name, array in outputs:
        binary = wanted.get(name)
        binary = request.binary_output if binary is None else binary
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(array, datatype)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": described}
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return EncodedResponse(header, "application/json", None)
    return EncodedResponse(header + b"".join(blobs), "application/octet-stream", len(header))


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_tensor(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # C order, whatever the array's layout


def _to_json(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [element.decode(errors="replace") if isinstance(element, bytes) else str(element)
                for element in array.reshape(-1)]
    if array.dtype in (np.float16, np.bool_):  # orjson does not serialize these numpy types
        return array.reshape(-1).tolist()
    return np.ascontiguousarray(array.reshape(-1))
