"""KServe v2 tensor datatypes and their numpy and ONNX counterparts."""

from __future__ import annotations

import numpy as np

__all__ = ["NUMPY_BY_DATATYPE", "DATATYPE_BY_ONNX", "datatype_of", "element_size"]

NUMPY_BY_DATATYPE: dict[str, np.dtype] = {
    name: np.dtype(kind).newbyteorder("<") for name, kind in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}
"""Fixed-size datatypes; ``BYTES`` is the variable-length one (numpy ``object`` of ``bytes``)."""

DATATYPE_BY_ONNX = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_DATATYPE_BY_KIND = {dtype.newbyteorder("="): name for name, dtype in NUMPY_BY_DATATYPE.items()}


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype name of a numpy array (``object`` arrays are ``BYTES``)."""
    dtype = array.dtype
    name = _DATATYPE_BY_KIND.get(dtype)  # native byte order: one lookup
    if name is not None:
        return name
    if dtype == object or dtype.kind in "SU":
        return "BYTES"
    try:
        return _DATATYPE_BY_KIND[dtype.newbyteorder("=")]
    except KeyError:
        raise TypeError(f"no KServe datatype for numpy {dtype}") from None


def element_size(datatype: str) -> int:
    return NUMPY_BY_DATATYPE[datatype].itemsize
