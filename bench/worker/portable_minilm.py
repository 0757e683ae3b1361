"""all-MiniLM-L6-v2 in a form small enough to carry to a machine without the weights package
(the GPU machine, whose calls carry at most 64 MiB): its weights in float16 (43 MiB instead of
87 MiB; cosine to the float32 model > 0.99999), with config.json and tokenizer.json.

    python bench/worker/portable_minilm.py export DIR      # here: DIR/{weights-f16.safetensors,...}
    python bench/worker/portable_minilm.py build DIR       # there: DIR/model.onnx, DIR/model-fp16.onnx
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import onnx

from lbd_worker.build.bert import build_bert
from lbd_worker.build.safetensors import read_safetensors


def export(folder: Path) -> None:
    from lbd_worker.build import minilm_package_dir

    source = minilm_package_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.asarray(value, dtype=np.float16) for name, value in
               read_safetensors(source / "model.safetensors").items() if value.dtype.kind == "f"}
    _write_safetensors(folder / "weights-f16.safetensors", tensors)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, folder / name)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset = {}, 0
    for name, array in tensors.items():
        header[name] = {"dtype": "F16", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for array in tensors.values():
            handle.write(np.ascontiguousarray(array).tobytes())


def build(folder: Path) -> tuple[Path, Path, Path]:
    """``(model.onnx, model-fp16.onnx, tokenizer.json)``: float32 and float16 graphs."""
    weights = {name: np.asarray(value, dtype=np.float32)
               for name, value in read_safetensors(folder / "weights-f16.safetensors").items()}
    config = json.loads((folder / "config.json").read_text())
    for fp16, name in ((False, "model.onnx"), (True, "model-fp16.onnx")):
        if not (folder / name).exists():
            onnx.save(build_bert(weights, config, fp16=fp16), folder / name)
    return folder / "model.onnx", folder / "model-fp16.onnx", folder / "tokenizer.json"


if __name__ == "__main__":
    command, target = sys.argv[1], Path(sys.argv[2])
    export(target) if command == "export" else print(build(target))
