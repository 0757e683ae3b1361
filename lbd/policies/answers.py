"""Reading an answer's JSON: plain JSON bodies, and KServe v2 answers in the binary tensor
extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw tensors
of the outputs whose ``parameters.binary_data_size`` is set), whose tensors are read into
``data`` lists as the JSON form carries them. ``binary_data_size`` is dropped, so the two
forms of one answer read the same."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["read_answer", "HEADER_LENGTH"]

HEADER_LENGTH = "inference-header-content-length"


def read_answer(body: bytes, header_length: str | None = None) -> Any | None:
    """The answer as JSON values, or ``None`` when it is not JSON (or its tensors do not fit)."""
    length = int(header_length) if header_length is not None and header_length.strip().isdigit() else None
    try:
        if length is None:
            return orjson.loads(body) if body[:1] in (b"{", b"[") else None
        document = orjson.loads(body[:length])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or not _read_tensors(document, memoryview(body)[length:]):
        return None
    return document


def _read_tensors(document: dict, blob: memoryview) -> bool:
    offset = 0
    for output in document.get("outputs") or ():
        parameters = output.get("parameters") if isinstance(output, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        size = parameters.pop("binary_data_size")
        if not parameters:
            del output["parameters"]
        if not isinstance(size, int) or offset + size > len(blob):
            return False
        data = _tensor(blob[offset:offset + size], output.get("datatype"), output.get("shape"))
        if data is None:
            return False
        output["data"] = data
        offset += size
    return True


def _tensor(blob: memoryview, datatype: Any, shape: Any) -> list | None:
    import math

    import numpy as np
    from lbd_worker.protocol import BadRequest
    from lbd_worker.protocol.codec import decode_bytes_tensor
    from lbd_worker.protocol.datatypes import NUMPY_BY_DATATYPE

    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            return [element.decode(errors="replace") for element in decode_bytes_tensor(blob, count)]
        except BadRequest:
            return None
    dtype = NUMPY_BY_DATATYPE.get(datatype)  # type: ignore[arg-type]
    if dtype is None or len(blob) != count * dtype.itemsize:
        return None
    array = np.frombuffer(blob, dtype=dtype)
    if array.dtype.kind in "fiu" and array.dtype != np.float16:
        # as the JSON form writes them (orjson's shortest FP32 digits), so both read the same
        return orjson.loads(orjson.dumps(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")),
                                         option=orjson.OPT_SERIALIZE_NUMPY))
    return array.tolist()
