"""A reader for the safetensors format with numpy alone (no torch, no safetensors package).

The format: an 8-byte little-endian header length, a JSON header mapping each tensor to its
dtype, shape and byte range, then the raw little-endian data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

__all__ = ["read_safetensors"]

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "F64": np.float64}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor in the file, by name, as a read-only array over one memory map."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (header_size,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8:8 + header_size].tobytes())
    data = raw[8 + header_size:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = data[start:end].view(dtype).reshape(entry["shape"])
    return tensors
