"""The model builders: safetensors reading, the standard-ops BERT variant, and build caching."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from lbd_worker.build import ensure_builtin, minilm_package_dir
from lbd_worker.build.bert import build_bert
from lbd_worker.build.safetensors import read_safetensors

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


def test_safetensors_reader(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, -1], dtype=np.int64)}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        raw = array.tobytes()
        header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[str(array.dtype)], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    loaded = read_safetensors(path)
    assert set(loaded) == {"a", "b"}
    np.testing.assert_array_equal(loaded["a"], tensors["a"])
    np.testing.assert_array_equal(loaded["b"], tensors["b"])


def test_standard_ops_variant_matches_the_reference():
    """``fused=False`` (plain ONNX ops, for runtimes without ONNX Runtime's contrib ops)."""
    source = minilm_package_dir()
    model = build_bert(read_safetensors(source / "model.safetensors"),
                       json.loads((source / "config.json").read_text()), fused=False)
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(REFERENCE["sentences"][:3])
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, :len(encoding.ids)], mask[row, :len(encoding.ids)] = encoding.ids, 1
    (vectors,) = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask,
                                                      "token_type_ids": np.zeros_like(ids)})
    reference = np.array(REFERENCE["embeddings"][:3])
    assert ((vectors * reference).sum(1)).min() >= 1 - 1e-3


def test_builds_are_reused_and_unknown_names_refused(tmp_path):
    first = ensure_builtin("classifier", model_dir=tmp_path)
    built_at = first.onnx_path.stat().st_mtime_ns
    again = ensure_builtin("classifier", model_dir=tmp_path)
    assert again == first and again.onnx_path.stat().st_mtime_ns == built_at
    (first.onnx_path.parent / "BUILD.json").write_text("{}")  # a stale stamp: rebuilt
    ensure_builtin("classifier", model_dir=tmp_path)
    assert json.loads((first.onnx_path.parent / "BUILD.json").read_text())["model"] == "classifier"
    with pytest.raises(ValueError, match="no built-in model 'bert'"):
        ensure_builtin("bert", model_dir=tmp_path)
